"""The one Jinja2 environment for the HTML DealFlow renders.

Templates live in `dealflow/templates/`: `base.html` is the page layout,
`audit/` holds the audit timeline (the page `dealflow-audit timeline --format
html` writes, and the fragment other pages include). Autoescaping is on for
HTML; a name a template uses but the caller did not pass is an error, not an
empty string.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, pass_context, select_autoescape
from jinja2.runtime import Context
from markupsafe import Markup

from dealflow import i18n


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("dealflow", "templates"),
        autoescape=select_autoescape(["html", "htm", "xml"], default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        extensions=["jinja2.ext.i18n"],
    )
    # `_()` in a template translates into the language of the request being
    # rendered (a context variable), English when nothing set one.
    env.install_gettext_callables(  # type: ignore[attr-defined]
        i18n.gettext, i18n.ngettext, newstyle=True
    )
    env.globals["gettext"] = env.globals["_"] = _gettext
    env.filters["money"] = i18n.format_money
    env.filters["number"] = i18n.format_number
    env.filters["when"] = i18n.format_when
    return env


@pass_context
def _gettext(context: Context, message: str, **variables: Any) -> str:
    """Jinja's new-style `_()`, minus its cost: a 50-row table spent more time
    in Jinja's generic gettext wrapper than in its query. The same result: the
    translation, escaped when autoescaping, formatted with `variables` (a text
    without "%" is unchanged by formatting, so it is skipped)."""
    text = i18n.gettext(message)
    if context.eval_ctx.autoescape:
        text = Markup(text)
    return text % variables if "%" in text else text


def render_template(name: str, **context: Any) -> str:
    """The template `name` (a path under `dealflow/templates/`) rendered with `context`."""
    return environment().get_template(name).render(**context)
