"""The one Jinja2 environment for the HTML DealFlow renders.

Templates live in `dealflow/templates/`: `base.html` is the page layout,
`audit/` holds the audit timeline (the page `dealflow-audit timeline --format
html` writes, and the fragment other pages include). Autoescaping is on for
HTML; a name a template uses but the caller did not pass is an error, not an
empty string.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, pass_context, select_autoescape
from jinja2.ext import Extension
from jinja2.lexer import Token, TokenStream
from jinja2.runtime import Context
from markupsafe import Markup, escape

from dealflow import i18n
from dealflow.desk.labels import label


# Jinja trusts what gettext returns as HTML, and a template may translate a
# value (a stage, a label, an error's detail that quotes what was sent): the
# translation is escaped here, so `_()` never lets markup through.
def _escaped_gettext(message: str) -> Markup:
    return escape(i18n.gettext(message))


def _escaped_ngettext(singular: str, plural: str, count: int) -> Markup:
    return escape(i18n.ngettext(singular, plural, count))


class ConstantGettext(Extension):
    """`_("text")` of a literal without variables, translated as the template is
    compiled: a page holds a hundred or more such labels, and calling `_()` for
    each, then escaping what it returned, was a large part of rendering one.
    Jinja escapes a constant it outputs when it compiles it, so the page is
    the same. Each language has its own environment (`environment`);
    a text with "%" is left to `_()`, which formats it."""

    def filter_stream(self, stream: TokenStream) -> Iterator[Token]:
        language: str = self.environment.dealflow_language  # type: ignore[attr-defined]
        translations = i18n.catalogue(language)
        window: list[Token] = []
        before = ""  # the type of the token before the window (a "." makes `_` an attribute)
        for token in stream:
            window.append(token)
            if len(window) < 4:
                continue
            name, opened, text, closed = window
            if (
                name.test("name:_")
                and before != "dot"
                and opened.type == "lparen"
                and text.type == "string"
                and closed.type == "rparen"
            ):
                translated = translations.get(text.value, text.value)
                if "%" not in text.value and "%" not in translated:
                    yield Token(name.lineno, "string", translated)
                    before = "string"
                    window.clear()
                    continue
            first = window.pop(0)
            before = first.type
            yield first
        yield from window


@cache
def environment(language: str = i18n.DEFAULT_LANGUAGE) -> Environment:
    """The environment for pages in `language` (the labels its templates
    translate are part of the compiled templates)."""
    env = Environment(
        loader=PackageLoader("dealflow", "templates"),
        autoescape=select_autoescape(["html", "htm", "xml"], default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        extensions=["jinja2.ext.i18n", ConstantGettext],
        # Templates ship with the code and change only with a restart, as the
        # code does: no file is looked at again for each template a page includes.
        auto_reload=False,
    )
    env.extend(dealflow_language=language)
    # `_()` in a template translates into the language of the request being
    # rendered (a context variable), English when nothing set one.
    env.install_gettext_callables(  # type: ignore[attr-defined]
        _escaped_gettext, _escaped_ngettext, newstyle=True
    )
    env.globals["gettext"] = env.globals["_"] = _gettext
    env.filters["money"] = i18n.format_money
    env.filters["number"] = i18n.format_number
    env.filters["percent"] = i18n.format_percent
    env.filters["when"] = i18n.format_when
    env.filters["duration"] = i18n.format_duration
    env.filters["label"] = label
    return env


@pass_context
def _gettext(context: Context, message: str, **variables: Any) -> str:
    """Jinja's new-style `_()`, minus its cost: a 50-row table spent more time
    in Jinja's generic gettext wrapper than in its query. The translation is
    escaped when autoescaping (a template may translate a value that quotes
    what a caller sent), then formatted with `variables`, escaped in turn by
    Markup's `%` (a text without "%" is unchanged by formatting, so skipped)."""
    text: str = i18n.gettext(message)
    if context.eval_ctx.autoescape:
        text = escape(text)
    return text % variables if "%" in text else text


def render_template(name: str, **context: Any) -> str:
    """The template `name` (a path under `dealflow/templates/`) rendered with `context`."""
    return environment(i18n.current_language.get()).get_template(name).render(**context)
