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


@cache
def environment() -> Environment:
    return Environment(
        loader=PackageLoader("dealflow", "templates"),
        autoescape=select_autoescape(["html", "htm", "xml"], default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_template(name: str, **context: Any) -> str:
    """The template `name` (a path under `dealflow/templates/`) rendered with `context`."""
    return environment().get_template(name).render(**context)
