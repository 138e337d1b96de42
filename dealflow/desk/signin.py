"""Signing in to the desk and out again.

Three ways in, all ending in the same server-side session:
- development (`make up`, the public development JWT secret): pick a staff id
  and a role — the page says this is the development sign-in;
- a bearer token, the same JWT the API accepts (identity-provider tokens,
  automation);
- the organisation's OpenID Connect provider, when one is configured
  (dealflow/desk/oidc_signin.py).
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData

from dealflow.api.deps import services
from dealflow.api.errors import Problem
from dealflow.api.security import AuthError, Principal
from dealflow.desk.oidc import provider_name
from dealflow.desk.pages import render_page
from dealflow.desk.session import (
    MAX_FORM_FIELDS,
    SignedIn,
    checked_form,
    close_session,
    open_session,
    safe_next,
    set_signin_cookie,
    signin_form_matches,
    signin_form_token,
)
from dealflow.models import Role

router = APIRouter()

STAFF_ID = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


@router.get("/desk/login", include_in_schema=False)
async def signin_page(request: Request, next: str = "/desk/") -> Response:
    return signin_form(request, safe_next(next), error=None)


def signin_form(
    request: Request, next_path: str, error: str | None, status_code: int | None = None
) -> Response:
    """The sign-in page, with the reason the last attempt failed (401 unless told)."""
    settings = services(request).settings
    token = signin_form_token(request)
    response = render_page(
        request,
        "desk/login.html",
        None,
        status_code=status_code or (401 if error else 200),
        next_path=next_path,
        error=error,
        development=settings.development_signin,
        oidc_name=provider_name(settings) if settings.oidc_configured else None,
        roles=[role.value for role in Role],
        form_token=token,
    )
    set_signin_cookie(request, response, token)
    return response


@router.post("/desk/login", include_in_schema=False)
async def sign_in(request: Request) -> Response:
    form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
    next_path = safe_next(form.get("next"))
    if not signin_form_matches(request, form.get("form_token")):
        return signin_form(request, next_path, "The sign-in form expired; please try again.")
    try:
        principal = await _principal_from_form(request, form.get("method"), form)
    except (AuthError, Problem) as refusal:
        return signin_form(request, next_path, str(refusal))
    response = RedirectResponse(next_path, status_code=303)
    await open_session(request, response, principal)
    return response


async def _principal_from_form(request: Request, method: object, form: FormData) -> Principal:
    svc = services(request)
    if method == "development":
        if not svc.settings.development_signin:
            raise AuthError("the development sign-in is off on this deployment")
        staff_id, role = form.get("staff_id"), form.get("role")
        if not isinstance(staff_id, str) or not STAFF_ID.match(staff_id):
            raise AuthError("staff id: 1-64 letters, digits or ._@-")
        if role not in {role.value for role in Role}:
            raise AuthError("choose a role")
        return Principal(sub=staff_id, roles=(Role(str(role)),))
    if method == "token":
        token = form.get("token")
        if not isinstance(token, str) or not token.strip() or len(token) > 8192:
            raise AuthError("paste a bearer token (a JWT)")
        if svc.auth is None:
            raise AuthError("staff tokens are not configured on this deployment")
        return await svc.auth.verify(token.strip())
    raise AuthError("choose a way to sign in")


@router.post("/desk/logout", include_in_schema=False)
async def sign_out(request: Request, user: SignedIn) -> Response:
    await checked_form(request, user)
    response = RedirectResponse("/desk/login", status_code=303)
    await close_session(request, response)
    return response
