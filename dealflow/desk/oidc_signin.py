"""Signing in to the desk through the organisation's OpenID Connect provider.

`GET /desk/login/oidc` sends the browser to the provider with a fresh state,
nonce and PKCE challenge; `GET /desk/login/oidc/callback` takes the answer,
trades the code for tokens, checks the ID token (dealflow/desk/oidc.py) and
opens the same server-side session as every other sign-in.

The state, nonce and PKCE verifier wait between the two legs in a short-lived
HttpOnly cookie scoped to these two paths, signed with the deployment's
secrets, rather than in the database: a sign-in that is started and never
finished (a closed tab, a bot following the link) then leaves nothing behind
to clean up, and any API process can finish a sign-in another one started.
The cookie is worth nothing to anyone else: the provider hands the code only
to the registered redirect address, the state must match, and the code is
useless without the verifier. It is used once; the callback deletes it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import asdict

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from dealflow.api.deps import services
from dealflow.config import Settings
from dealflow.desk.oidc import OidcProvider, PendingSignIn, ProviderError, SignInRefused
from dealflow.desk.session import open_session, safe_next
from dealflow.desk.signin import signin_form

router = APIRouter()

PENDING_COOKIE = "dealflow_desk_oidc"
PENDING_COOKIE_PATH = "/desk/login/oidc"
# Time enough to type a password and a second factor at the provider.
PENDING_SECONDS = 600
MAX_COOKIE_CHARS = 2048
NOT_SET_UP = "Sign-in through an identity provider is not set up on this deployment."
# The error codes of RFC 6749 §4.1.2.1 and OpenID Connect Core §3.1.2.6.
PROVIDER_ERROR_CODES = frozenset(
    {
        "invalid_request",
        "unauthorized_client",
        "access_denied",
        "unsupported_response_type",
        "invalid_scope",
        "server_error",
        "temporarily_unavailable",
        "interaction_required",
        "login_required",
        "account_selection_required",
        "consent_required",
        "invalid_request_uri",
        "invalid_request_object",
        "request_not_supported",
        "request_uri_not_supported",
        "registration_not_supported",
    }
)


def provider_of(request: Request) -> OidcProvider | None:
    """The app's provider client (its discovery and keys cached), None when not configured."""
    settings = services(request).settings
    if not settings.oidc_configured:
        return None
    provider = getattr(request.app.state, "desk_oidc_provider", None)
    if not isinstance(provider, OidcProvider):
        provider = OidcProvider(settings)
        request.app.state.desk_oidc_provider = provider
    return provider


@router.get("/desk/login/oidc", include_in_schema=False)
async def start_oidc_sign_in(request: Request, next: str = "/desk/") -> Response:
    next_path = safe_next(next)
    provider = provider_of(request)
    if provider is None:
        return signin_form(request, next_path, NOT_SET_UP, status_code=404)
    try:
        metadata = await provider.metadata()
    except ProviderError as e:
        return signin_form(request, next_path, f"Sign-in is not possible right now: {e}.", 502)
    pending = PendingSignIn.start(next_path)
    response = RedirectResponse(
        provider.authorization_url(metadata, pending, _redirect_uri(request)), status_code=303
    )
    response.set_cookie(
        PENDING_COOKIE,
        _seal(services(request).settings, pending),
        max_age=PENDING_SECONDS,
        path=PENDING_COOKIE_PATH,
        httponly=True,
        # Lax: the provider sends the browser back with a top-level GET.
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


@router.get("/desk/login/oidc/callback", name="desk_oidc_callback", include_in_schema=False)
async def finish_oidc_sign_in(
    request: Request,
    state: str = "",
    code: str = "",
    error: str = "",
    error_description: str = "",
) -> Response:
    settings = services(request).settings
    provider = provider_of(request)
    if provider is None:
        return _refused(request, "/desk/", NOT_SET_UP, 404)
    pending = _unseal(settings, request.cookies.get(PENDING_COOKIE, ""))
    matches = pending is not None and hmac.compare_digest(state.encode(), pending.state.encode())
    if error:
        # Only an answer to this browser's own sign-in may put the provider's
        # words on the page; a forged link gets a registered error code at most.
        said = f"{error}: {error_description}" if matches and error_description else error
        known = matches or error in PROVIDER_ERROR_CODES
        reason = f" ({said[:300]})" if known else ""
        next_path = pending.next_path if pending is not None and matches else "/desk/"
        return _refused(request, next_path, f"{provider.name} did not sign you in{reason}.", 401)
    if pending is None or not matches:
        return _refused(
            request,
            "/desk/",
            "This sign-in answer does not belong to a sign-in started in this browser in "
            "the last ten minutes. Nothing was signed in; please start again.",
            400,
        )
    if not code or len(code) > 2048:
        return _refused(request, pending.next_path, "The provider sent no sign-in code.", 400)
    try:
        principal = await provider.exchange(code, pending, _redirect_uri(request))
    except SignInRefused as refusal:
        return _refused(request, pending.next_path, f"{refusal}.", refusal.status_code)
    except ProviderError as e:
        return _refused(request, pending.next_path, f"Sign-in is not possible right now: {e}.", 502)
    response = RedirectResponse(pending.next_path, status_code=303)
    await open_session(request, response, principal)
    response.delete_cookie(PENDING_COOKIE, path=PENDING_COOKIE_PATH)
    return response


def _refused(request: Request, next_path: str, message: str, status_code: int) -> Response:
    """The sign-in page with the reason; the pending sign-in is spent."""
    response = signin_form(request, next_path, message, status_code=status_code)
    response.delete_cookie(PENDING_COOKIE, path=PENDING_COOKIE_PATH)
    return response


def _redirect_uri(request: Request) -> str:
    """Where the provider sends the browser back: the address staff use for the
    desk (DEALFLOW_API_BASE_URL when set); it must be registered at the provider."""
    base = services(request).settings.api_base_url.rstrip("/")
    if base:
        return f"{base}{PENDING_COOKIE_PATH}/callback"
    return str(request.url_for("desk_oidc_callback"))


def _key(settings: Settings) -> bytes:
    secret = f"{settings.jwt_secret}\0{settings.oidc_client_secret or ''}".encode()
    return hmac.new(secret, b"dealflow desk oidc pending sign-in", hashlib.sha256).digest()


def _seal(settings: Settings, pending: PendingSignIn) -> str:
    payload = dict(asdict(pending), expires=int(time.time()) + PENDING_SECONDS)
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    signature = hmac.new(_key(settings), body.encode(), hashlib.sha256).hexdigest()
    return f"{body}.{signature}"


def _unseal(settings: Settings, sealed: str) -> PendingSignIn | None:
    """The pending sign-in of an intact, unexpired cookie; None for anything else."""
    body, _, signature = sealed.partition(".")
    if not body or len(sealed) > MAX_COOKIE_CHARS:
        return None
    expected = hmac.new(_key(settings), body.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        expires = int(payload.pop("expires"))
        pending = PendingSignIn(**payload)
    except (ValueError, TypeError, KeyError):
        return None
    if expires < time.time() or not all(
        isinstance(value, str) for value in asdict(pending).values()
    ):
        return None
    return pending
