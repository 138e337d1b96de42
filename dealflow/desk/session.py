"""Who is signed in to the desk, and the CSRF check on what they post.

The browser holds an opaque random token in an HttpOnly, SameSite=Lax cookie
scoped to /desk; the session (staff id, roles, CSRF token, expiry) lives in
the database, so signing out ends it everywhere and nothing in the cookie can
be forged into a role or a dealer scope. Every form post carries the session's CSRF token.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Request, Response
from starlette.datastructures import FormData

from dealflow.api.deps import services
from dealflow.api.security import Principal
from dealflow.models import Actor, Role
from dealflow.storage import db

COOKIE = "dealflow_desk"
# Before sign-in there is no session: the sign-in form is tied to this
# cookie instead, so another site cannot sign a browser in as someone else.
SIGNIN_COOKIE = "dealflow_desk_signin"
COOKIE_PATH = "/desk"
# Form posts are small (uploads go to their own streamed endpoint).
MAX_FORM_FIELDS = 200


class SignInRequired(Exception):
    """No live session: the page answers with a redirect to the sign-in page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class CsrfRefused(Exception):
    """A form post without the session's CSRF token: refused, nothing applied."""

    status = 403


@dataclass(frozen=True)
class DeskUser:
    staff_id: str
    roles: tuple[Role, ...]
    csrf_token: str
    expires_at: datetime
    # The dealers whose deals the desk shows (None: every dealer), from the
    # sign-in's token; a deal of another dealer is "not found".
    dealers: frozenset[str] | None = None

    @property
    def principal(self) -> Principal:
        return Principal(sub=self.staff_id, roles=self.roles, dealers=self.dealers)

    @property
    def role(self) -> Role:
        """The role the desk works as: the first the sign-in granted."""
        return self.roles[0]

    def actor(self, allowed: Iterable[Role], what: str) -> Actor:
        """The actor for an operation open to `allowed`, or a 403 Problem."""
        return self.principal.actor(allowed, what)

    def may(self, allowed: Iterable[Role]) -> bool:
        allowed = frozenset(allowed)
        return Role.ADMIN in self.roles or any(role in allowed for role in self.roles)


def _is_secure(request: Request) -> bool:
    return request.url.scheme == "https"


# Only paths inside the desk: a link must not send staff to another site.
SAFE_NEXT = re.compile(r"^/desk/[A-Za-z0-9/_.?=&%-]{0,300}$")


def safe_next(raw: object) -> str:
    """Where to go after a form: `raw` if it is a desk path, else My work."""
    return raw if isinstance(raw, str) and SAFE_NEXT.match(raw) else "/desk/"


def signin_path(next_path: str) -> str:
    return "/desk/login?next=" + quote(next_path, safe="/")


async def current_user(request: Request) -> DeskUser:
    """The signed-in user of this request, or SignInRequired."""
    cached = getattr(request.state, "desk_user", None)
    if isinstance(cached, DeskUser):
        return cached
    token = request.cookies.get(COOKIE)
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if not token or len(token) > 128:
        raise SignInRequired(path)
    svc = services(request)
    row = await asyncio.to_thread(db.live_desk_session, svc.engine, token, datetime.now(UTC))
    if row is None:
        raise SignInRequired(path)
    roles = tuple(Role(name) for name in row.role_names)
    user = DeskUser(row.staff_id, roles, row.csrf_token, row.expires_at, row.dealer_scope)
    request.state.desk_user = user
    return user


SignedIn = Annotated[DeskUser, Depends(current_user)]


async def checked_form(request: Request, user: DeskUser) -> FormData:
    """The posted form, once its CSRF token matches the session's."""
    form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
    sent = form.get("csrf")
    if not isinstance(sent, str) or not secrets.compare_digest(sent, user.csrf_token):
        raise CsrfRefused()
    return form


async def open_session(request: Request, response: Response, principal: Principal) -> None:
    """Sign `principal` in: a new server-side session and its cookie."""
    svc = services(request)
    now = datetime.now(UTC)
    token, _ = await asyncio.to_thread(
        db.open_desk_session,
        svc.engine,
        staff_id=principal.sub,
        roles=[role.value for role in principal.roles],
        dealers=principal.dealers,
        now=now,
        expires_at=now + timedelta(hours=svc.settings.desk_session_hours),
    )
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(svc.settings.desk_session_hours * 3600),
        path=COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=_is_secure(request),
    )
    response.delete_cookie(SIGNIN_COOKIE, path=COOKIE_PATH)


async def close_session(request: Request, response: Response) -> None:
    token = request.cookies.get(COOKIE)
    if token:
        svc = services(request)
        await asyncio.to_thread(db.end_desk_session, svc.engine, token, datetime.now(UTC))
    response.delete_cookie(COOKIE, path=COOKIE_PATH)


def signin_form_token(request: Request) -> str:
    """The token the sign-in form carries: the browser's, or a new one."""
    token = request.cookies.get(SIGNIN_COOKIE)
    if not token or len(token) > 128:
        token = secrets.token_urlsafe(24)
    return token


def set_signin_cookie(request: Request, response: Response, token: str) -> None:
    """Pair the sign-in form with this browser (double submit)."""
    response.set_cookie(
        SIGNIN_COOKIE,
        token,
        max_age=3600,
        path=COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=_is_secure(request),
    )


def signin_form_matches(request: Request, sent: object) -> bool:
    expected = request.cookies.get(SIGNIN_COOKIE)
    return isinstance(sent, str) and bool(expected) and secrets.compare_digest(sent, expected or "")
