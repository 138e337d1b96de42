"""The desk's routes, static files and error pages, installed on the API app."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from dealflow import i18n
from dealflow.desk import (
    deal_documents,
    deal_page,
    deals,
    new_deal,
    oidc_signin,
    reports,
    signin,
    work,
)
from dealflow.desk.pages import render_page
from dealflow.desk.session import CsrfRefused, SignInRequired, safe_next, signin_path

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def install(app: FastAPI) -> None:
    # new_deal before deal_page: its /desk/deals/{deal_id} would take "new".
    for module in (signin, oidc_signin, work, new_deal, deals, reports, deal_page, deal_documents):
        app.include_router(module.router)
    app.add_api_route("/desk/language", switch_language, methods=["POST"], include_in_schema=False)
    app.mount("/desk/static", StaticFiles(directory=STATIC_DIR), name="desk-static")
    app.add_exception_handler(SignInRequired, _to_signin)
    app.add_exception_handler(CsrfRefused, _csrf_refused)


async def _to_signin(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    if request.headers.get("hx-request"):
        # htmx follows a redirect into the fragment; this makes it reload the page.
        return Response(status_code=401, headers={"HX-Redirect": signin_path(exc.next_path)})
    return RedirectResponse(signin_path(exc.next_path), status_code=303)


async def _csrf_refused(request: Request, exc: Exception) -> HTMLResponse:
    return render_page(
        request,
        "desk/error.html",
        None,
        status_code=403,
        title="Form refused",
        message="This form was not sent from your desk session (its security token is "
        "missing or old). Nothing was changed. Reload the page and try again.",
    )


async def switch_language(request: Request) -> Response:
    """Remember the chosen language in a cookie and go back to the page."""
    form = await request.form(max_files=0, max_fields=10)
    language = form.get("language")
    response = RedirectResponse(safe_next(form.get("next")), status_code=303)
    if isinstance(language, str) and language in i18n.LANGUAGES:
        response.set_cookie(
            i18n.LANGUAGE_COOKIE, language, max_age=365 * 86400, samesite="lax", path="/desk"
        )
    return response
