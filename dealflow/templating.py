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

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

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
    env.filters["money"] = i18n.format_money
    env.filters["number"] = i18n.format_number
    env.filters["when"] = i18n.format_when
    return env


def render_template(name: str, **context: Any) -> str:
    """The template `name` (a path under `dealflow/templates/`) rendered with `context`."""
    return environment().get_template(name).render(**context)
