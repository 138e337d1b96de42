"""Rendering a desk page: the layout, the signed-in user, the language."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse

from dealflow import i18n
from dealflow.desk.session import DeskUser
from dealflow.i18n import N_
from dealflow.templating import render_template

# Pages hold personal data and per-user CSRF tokens: never cached or framed.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "Referrer-Policy": "same-origin",
}


NAVIGATION = (
    ("work", "/desk/", N_("My work")),
    ("deals", "/desk/deals", N_("Deals")),
    ("new", "/desk/deals/new", N_("New deal")),
    ("reports", "/desk/reports", N_("Reports")),
)


def render_page(
    request: Request,
    template: str,
    user: DeskUser | None,
    *,
    status_code: int = 200,
    section: str = "",
    **context: Any,
) -> HTMLResponse:
    """`template` (under dealflow/templates/) in the request's language."""
    language = i18n.negotiate(request)
    token = i18n.current_language.set(language)
    try:
        html = render_template(
            template,
            user=user,
            language=language,
            languages=i18n.LANGUAGES,
            navigation=NAVIGATION,
            section=section,
            path=request.url.path,
            **context,
        )
    finally:
        i18n.current_language.reset(token)
    return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)
