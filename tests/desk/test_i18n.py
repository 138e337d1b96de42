"""The desk speaks English and Chinese: every string in one catalogue, the
language from the switch or the browser, amounts and dates per language."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import get_args

import pytest
from babel.messages.extract import extract_from_dir
from markupsafe import escape

from dealflow import i18n, templating
from dealflow.desk import labels
from dealflow.models import (
    Action,
    Decision,
    DocumentKind,
    Party,
    Product,
    RepaymentMethod,
    Role,
    Stage,
    StipulationKind,
    StipulationStatus,
)

ROOT = Path(__file__).resolve().parents[2]


def desk_strings() -> set[str]:
    """Every msgid the desk shows: template strings and marked Python strings
    (the names of stages, roles and other codes among them)."""
    found: set[str] = set()
    templates = extract_from_dir(
        ROOT / "dealflow" / "templates" / "desk",
        method_map=[("**.html", "jinja2")],
        options_map={"**.html": {"extensions": "jinja2.ext.i18n", "trimmed": "true"}},
    )
    python = extract_from_dir(
        ROOT / "dealflow" / "desk",
        method_map=[("**.py", "python")],
        keywords={"N_": None, "_": None},
    )
    for _file, _line, message, _comments, _context in (*templates, *python):
        found.update([message] if isinstance(message, str) else message[:1])
    return found


@pytest.fixture
def language() -> Iterator[None]:
    token = i18n.current_language.set("zh")
    yield
    i18n.current_language.reset(token)


def test_every_desk_string_has_a_chinese_translation() -> None:
    catalogue = i18n.catalogue("zh")
    missing = sorted(message for message in desk_strings() if not catalogue.get(message))
    assert not missing, f"{len(missing)} desk strings lack Chinese: {missing}"


def test_the_catalogue_holds_no_string_the_desk_no_longer_shows() -> None:
    stale = sorted(set(i18n.catalogue("zh")) - desk_strings())
    assert not stale, f"translations nobody uses (run pybabel update): {stale}"


@pytest.mark.usefixtures("language")
def test_chinese_pages_translate_and_format_for_china() -> None:
    assert i18n.gettext("My work") != "My work"
    assert i18n.format_money(Decimal("105000")) == "¥105,000.00"
    assert i18n.format_when(datetime(2026, 12, 1, 9, 30, tzinfo=UTC)).startswith("2026年12月1日")


def test_every_code_a_page_shows_has_a_name_in_both_languages() -> None:
    """A clerk reads "Down payment" / "首付款", never DOWN_PAYMENT; the codes of
    different kinds never share a value, so one table names them all."""
    codes = [str(code) for group in labels._GROUPS for code in group]
    assert len(codes) == len(set(codes))
    for kind in (Stage, Role, DocumentKind, Party, Product, RepaymentMethod, Decision, Action):
        for code in kind:
            assert labels.label(code) != code.value, code
    for literal in (StipulationStatus, StipulationKind):
        for value in get_args(literal):
            assert labels.label(value) != value, value
    token = i18n.current_language.set("zh")
    try:
        assert labels.label(Stage.DOWN_PAYMENT) == "首付款"
        assert labels.label("sales") == "销售顾问"
    finally:
        i18n.current_language.reset(token)
    assert labels.label(Stage.DOWN_PAYMENT) == "Down payment"
    assert labels.label("no-such-code") == "no-such-code"


def test_english_is_the_default_and_its_msgids_stand_as_written() -> None:
    assert i18n.gettext("My work") == "My work"
    assert i18n.format_money(Decimal("105000.5")) == "CN¥105,000.50"
    assert i18n.format_money(None) == "—"


@pytest.mark.parametrize("language", sorted(i18n.LANGUAGES))
def test_labels_translated_as_templates_compile_read_as_gettext_gives_them(
    language: str,
) -> None:
    """`_("literal")` is translated when a template compiles (per language);
    what shows is what `_()` gives when the page renders: the translation,
    escaped. An attribute named `_`, a value to translate, and a text with
    variables are left to render time."""
    source = (
        '{{ _("My work") }}|<a title="{{ _("Stages") }}">|{{ _("<b> & co") }}|{{ _(stage) }}|'
        '{{ _("%(action)s: applied.", action="<i>") }}|{{ box._("My work") }}'
    )
    env = templating.environment(language)
    token = i18n.current_language.set(language)
    try:
        shown = env.from_string(source).render(stage="CONTRACT", box={"_": "not {}".format})
        expected = "|".join(
            [
                str(escape(i18n.gettext("My work"))),
                f'<a title="{escape(i18n.gettext("Stages"))}">',
                "&lt;b&gt; &amp; co",
                str(escape(i18n.gettext("CONTRACT"))),
                str(escape(i18n.gettext("%(action)s: applied."))).replace(
                    "%(action)s", "&lt;i&gt;"
                ),
                "not My work",
            ]
        )
    finally:
        i18n.current_language.reset(token)
    assert shown == expected
    compiled = env.compile(source, raw=True)
    assert repr(i18n.catalogue(language).get("Stages", "Stages"))[1:-1] in compiled
