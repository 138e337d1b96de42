"""The codec endpoint (docs/architecture.md §3.6): the Temporal UI and CLI decrypt payloads here.

    POST /codec/decode   {"payloads": [{"metadata": {k: base64}, "data": base64}, ...]}
    POST /codec/encode   same shape, the other way

This is the remote-codec protocol of the Temporal UI (`--ui-codec-endpoint`, or
the UI's codec-server setting) and CLI (`--codec-endpoint`, `--codec-auth`):
the endpoint URL is `http://HOST:PORT/codec` and the tools append `/decode` or
`/encode`. The codec is exactly the one the API's own Temporal client uses
(`dealflow.codec`), so whatever the worker encrypted, this decrypts.

`auditor` and `admin` may decode; only `admin` may encode (ciphertext under
the production key is what the worker takes for DealFlow's own). A token
scoped to dealers (DEALFLOW_DEALERS_CLAIM) may do neither (403): a payload
names no deal, and the UI asks for a page of them at once, so the endpoint
cannot tell one dealer's from another's; decoding is for the group's
unscoped auditors. The token
comes from `Authorization: Bearer <JWT>` (CLI: `--codec-auth "Bearer $TOKEN"`),
or — for the Temporal UI of the dev server, which has no login of its own and
therefore no access token to pass — from a server-side session that
`POST /codec/login` opens after checking a pasted token: the browser holds an
opaque session id (HttpOnly, SameSite=Strict, `Secure` unless
`DEALFLOW_ENV=development`), never the token, and `/codec/logout` ends the
session everywhere. The sessions are the desk's (`desk_sessions`): the same
person with the same roles, ended the same way. The UI sends the cookie when
"include cross-origin credentials" is on.

Cross-site requests: a browser's POST to login, logout, encode or decode is
refused (403) unless it comes from this origin or a configured UI origin
(`Origin`, or `Sec-Fetch-Site: same-origin`); clients that are no browser send
neither header and are judged by their token alone. Encode and decode take
`application/json` only (415 otherwise), so no "simple" cross-site form or
`text/plain` post reaches them without a preflight.

CORS: only the configured UI origins (`DEALFLOW_UI_ORIGIN`, comma separated,
default `http://localhost:8233,http://127.0.0.1:8233`) get
`Access-Control-Allow-Origin` (with credentials); the preflight allows
`Authorization`, `Content-Type` and `X-Namespace`. Errors carry the CORS
headers too, so the UI shows "401"/"403" rather than an opaque network error.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from google.protobuf import json_format
from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio.api.common.v1 import Payloads
from temporalio.converter import PayloadCodec

from dealflow.api.errors import Problem
from dealflow.api.problems import problem_response
from dealflow.api.security import (
    AuthError,
    Principal,
    RoleRequirement,
    bearer_scheme,
    bearer_token,
    require_roles,
)
from dealflow.codec import AesGcmCodec, CodecError
from dealflow.models import Role
from dealflow.storage import db

log = logging.getLogger("dealflow.api.codec")

# bearer_scheme only documents the token in OpenAPI; the checks are `_principal`.
router = APIRouter(prefix="/codec", tags=["codec"], dependencies=[Depends(bearer_scheme)])

CODEC_ROLES = frozenset({Role.AUDITOR, Role.ADMIN})
# Checked in `_principal` and at sign-in rather than as a route dependency:
# the token may come from the sign-in cookie, and a refusal carries CORS headers.
CODEC_ACCESS = require_roles(CODEC_ROLES, "use the codec endpoint")
# Encoding makes ciphertext the worker cannot tell from DealFlow's own.
ENCODE_ACCESS = require_roles({Role.ADMIN}, "encode payloads with the production key")
COOKIE = "dealflow_codec_session"
# The raw JWT the sign-in once stored: cleared wherever it is still held.
LEGACY_COOKIE = "dealflow_codec_token"
COOKIE_PATH = "/codec"
JSON = "application/json"
MAX_BODY_BYTES = 32 * 1024 * 1024
# Standard or URL-safe base64, padding optional: what protobuf's JSON reading
# decodes, and nothing it would silently drop or fail on.
B64_PATTERN = r"^([A-Za-z0-9+/_-]{4})*([A-Za-z0-9+/_-]{2}(==)?|[A-Za-z0-9+/_-]{3}=?)?$"
_B64 = {"type": "string", "pattern": B64_PATTERN, "description": "base64"}
PAYLOADS_SHAPE = '{"payloads": [{"metadata": {...}, "data": "..."}]} with base64 values'

PAYLOADS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "payloads": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "metadata": {"type": "object", "additionalProperties": _B64},
                    "data": _B64,
                },
            },
        }
    },
    "example": {"payloads": [{"metadata": {"encoding": "anNvbi9wbGFpbg=="}, "data": "IkhpIg=="}]},
}
_DOCS: dict[str, Any] = {
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PAYLOADS_SCHEMA}},
        }
    },
    "responses": {
        200: {"content": {"application/json": {"schema": PAYLOADS_SCHEMA}}},
        401: {},
        403: {},
        413: {},
        415: {},
        422: {},
    },
}


class CodecSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEALFLOW_", extra="ignore")

    # The Temporal UI's origin(s): scheme://host:port, comma separated.
    ui_origin: str = "http://localhost:8233,http://127.0.0.1:8233"

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(
            origin.strip().rstrip("/") for origin in self.ui_origin.split(",") if origin.strip()
        )


def _settings(request: Request) -> CodecSettings:
    cached = getattr(request.app.state, "codec_settings", None)
    if isinstance(cached, CodecSettings):
        return cached
    settings = CodecSettings()
    request.app.state.codec_settings = settings
    return settings


def _cors(request: Request, preflight: bool = False) -> dict[str, str]:
    origin = request.headers.get("origin")
    headers = {"Vary": "Origin"}
    if not origin or origin.rstrip("/") not in _settings(request).origins:
        return headers
    headers["Access-Control-Allow-Origin"] = origin
    headers["Access-Control-Allow-Credentials"] = "true"
    if preflight:
        headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
        headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, X-Namespace"
        headers["Access-Control-Max-Age"] = "600"
    return headers


def _problem(request: Request, status: int, detail: str, **headers: str) -> JSONResponse:
    return problem_response(status, detail, headers={**_cors(request), **headers})


def _codec(request: Request) -> PayloadCodec:
    codec = request.app.state.services.client.data_converter.payload_codec
    if codec is None:
        raise Problem(503, "the API's Temporal client has no payload codec configured")
    return codec


async def _decode(auth: Any, token: str) -> Principal:
    principal: Principal = await auth.verify(token)
    return principal


async def _session_principal(request: Request, session_id: str) -> Principal:
    """Who signed in at /codec/login, while that session lasts; AuthError otherwise."""
    row = None
    if len(session_id) <= 128:
        engine = request.app.state.services.engine
        row = await asyncio.to_thread(db.live_desk_session, engine, session_id, datetime.now(UTC))
    if row is None:
        raise AuthError("the codec session has ended or expired; sign in at /codec/login again")
    return Principal(
        sub=row.staff_id,
        roles=tuple(Role(name) for name in row.role_names),
        dealers=row.dealer_scope,
    )


def check_unscoped(principal: Principal) -> None:
    """403 for a token scoped to dealers: a payload names no deal, so the codec
    cannot keep one dealer's customers from another's staff."""
    if principal.dealers is not None:
        raise Problem(
            403,
            "a token scoped to dealers may not use the codec endpoint: payloads name no "
            "deal, so decoding is for unscoped auditors and admins",
        )


async def _principal(request: Request, access: RoleRequirement = CODEC_ACCESS) -> Principal:
    """The caller from the bearer token, else from the codec session; 401/403 otherwise."""
    auth = request.app.state.services.auth
    try:
        if request.headers.get("authorization"):
            principal: Principal = await _decode(auth, bearer_token(request))
        elif request.cookies.get(COOKIE):
            principal = await _session_principal(request, request.cookies[COOKIE])
        else:
            raise AuthError(
                "missing Authorization header; send 'Authorization: Bearer <token>' of an "
                "auditor or admin (Temporal UI: sign in at /codec/login first)"
            )
    except AuthError as e:
        raise Problem(
            401, str(e), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        ) from None
    access.actor_of(principal)  # 403 unless a role `access` allows
    check_unscoped(principal)
    return principal


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}".lower()


def _check_origin(request: Request) -> None:
    """403 for a browser's request from a page of another site than this API or
    a configured Temporal UI. A request with neither `Origin` nor
    `Sec-Fetch-Site` comes from no browser: its credentials alone decide."""
    if request.headers.get("sec-fetch-site") == "same-origin":
        return
    origin = request.headers.get("origin")
    if origin is None:
        if request.headers.get("sec-fetch-site") in (None, "none"):
            return
        raise Problem(403, "cross-site request refused: it names no Origin")
    origin = origin.strip().rstrip("/")
    if origin in _settings(request).origins or origin.lower() == _own_origin(request):
        return
    raise Problem(
        403,
        f"cross-site request refused: origin {origin[:100]!r} is neither this API nor a "
        "Temporal UI origin of DEALFLOW_UI_ORIGIN",
    )


def _check_json(request: Request) -> None:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != JSON:
        raise Problem(415, f"send the payloads as Content-Type: {JSON}")


def _is_base64(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(B64_PATTERN, value) is not None


def _check_payloads(body: bytes) -> None:
    """The body against PAYLOADS_SCHEMA, before protobuf reads it: protobuf
    takes a bare JSON string or an empty body as no payloads, and drops
    characters that are not base64."""
    if not body:
        raise ValueError("the body is required")
    document = json.loads(body)
    payloads = document.get("payloads", []) if isinstance(document, dict) else None
    if not isinstance(payloads, list):
        raise ValueError("not an object with a list of payloads")
    for payload in payloads:
        if not isinstance(payload, dict):
            raise ValueError("a payload is not an object")
        metadata = payload.get("metadata", {})
        if not isinstance(metadata, dict) or not all(map(_is_base64, metadata.values())):
            raise ValueError("metadata values must be base64")
        if not _is_base64(payload.get("data", "")):
            raise ValueError("data must be base64")


async def _transcode(request: Request, op: str) -> Response:
    try:
        _check_origin(request)
        _check_json(request)
        principal = await _principal(request, ENCODE_ACCESS if op == "encode" else CODEC_ACCESS)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _problem(request, 413, f"the request is larger than {MAX_BODY_BYTES} bytes")
        try:
            _check_payloads(body)
            payloads = json_format.Parse(body, Payloads(), ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError, TypeError, AttributeError, RecursionError) as e:
            return _problem(request, 422, f"the body must be {PAYLOADS_SHAPE}: {e}")
        codec = _codec(request)
        try:
            out = await (codec.decode if op == "decode" else codec.encode)(payloads.payloads)
        except CodecError as e:
            return _problem(request, 422, str(e))
    except Problem as problem:
        return _problem(request, problem.status, problem.detail, **(problem.headers or {}))
    log.info(
        "codec %s",
        op,
        extra={
            "payloads": len(payloads.payloads),
            "staff_id": principal.sub,
            "namespace": request.headers.get("x-namespace", ""),
        },
    )
    result: dict[str, Any] = json_format.MessageToDict(Payloads(payloads=out))
    result.setdefault("payloads", [])
    return JSONResponse(result, headers=_cors(request))


@router.post(
    "/decode",
    summary="Decrypt payloads (Temporal UI / CLI remote codec); auditor or admin",
    **_DOCS,
)
async def decode(request: Request) -> Response:
    return await _transcode(request, "decode")


@router.post(
    "/encode",
    summary="Encrypt payloads with the current key (Temporal remote codec); admin only",
    **_DOCS,
)
async def encode(request: Request) -> Response:
    return await _transcode(request, "encode")


@router.options("/decode", include_in_schema=False)
@router.options("/encode", include_in_schema=False)
async def preflight(request: Request) -> Response:
    headers = _cors(request, preflight=True)
    if "Access-Control-Allow-Origin" not in headers:
        return Response(status_code=403, headers=headers)
    return Response(status_code=204, headers=headers)


@router.get(
    "/keys",
    summary="Key ids the codec knows (no key material); auditor or admin",
    responses={
        200: {
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "current": {"type": ["string", "null"]},
                            "key_ids": {"type": "array", "items": {"type": "string"}},
                        },
                    }
                }
            }
        },
        401: {},
        403: {},
    },
)
async def keys(request: Request) -> Response:
    try:
        await _principal(request)
        codec = _codec(request)
    except Problem as problem:
        return _problem(request, problem.status, problem.detail, **(problem.headers or {}))
    ids = codec.key_ids if isinstance(codec, AesGcmCodec) else []
    return JSONResponse({"current": ids[0] if ids else None, "key_ids": ids})


# --------------------------------------------------------------------------- UI sign-in

_LOGIN_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>DealFlow codec sign-in</title>
<style>body{{font-family:sans-serif;max-width:40em;margin:3em auto}}
textarea{{width:100%;height:8em}}</style></head>
<body><h1>DealFlow codec sign-in</h1>
<p>{message}</p>
<form method="post" action="login">
<p>Paste an <b>auditor</b> or <b>admin</b> token (<code>starter.py token --sub YOU
--role auditor</code>):</p>
<textarea name="token" required></textarea>
<p><button type="submit">Sign in</button></p>
</form>
<form method="post" action="logout"><button type="submit">Sign out</button></form>
<p>Then, in the Temporal UI, set the codec server to <code>{endpoint}</code> and turn on
<i>Include cross-origin credentials</i>.</p>
</body></html>
"""


def _endpoint(request: Request) -> str:
    return str(request.url_for("decode")).rsplit("/", 1)[0]


def _page(request: Request, message: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        _LOGIN_PAGE.format(message=message, endpoint=html.escape(_endpoint(request))),
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


@router.get("/login", include_in_schema=False)
async def login_page(request: Request) -> HTMLResponse:
    return _page(request, "Sign in so the Temporal UI in this browser can decrypt payloads.")


async def _open_session(request: Request, principal: Principal, token: str) -> tuple[str, datetime]:
    """A server-side session for `principal`, lasting as long as the token but
    no longer than a desk session; its opaque id goes in the cookie."""
    services = request.app.state.services
    now = datetime.now(UTC)
    token_exp = int(jwt.decode(token, options={"verify_signature": False}).get("exp", 0))
    limit = now + timedelta(hours=services.settings.desk_session_hours)
    expires_at = min(datetime.fromtimestamp(token_exp, UTC), limit) if token_exp else limit
    session_id, _ = await asyncio.to_thread(
        db.open_desk_session,
        services.engine,
        staff_id=principal.sub,
        roles=[role.value for role in principal.roles],
        dealers=principal.dealers,
        now=now,
        expires_at=expires_at,
    )
    return session_id, expires_at


def _set_session_cookie(
    request: Request, response: Response, session_id: str, seconds: int
) -> None:
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=max(seconds, 0),
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        # Plain http only on a development stack (the UI on http://localhost).
        secure=request.app.state.services.settings.env != "development",
    )
    response.delete_cookie(LEGACY_COOKIE, path=COOKIE_PATH)


@router.post("/login", include_in_schema=False)
async def login(request: Request) -> Response:
    try:
        _check_origin(request)
    except Problem as problem:
        return _page(request, f"Not signed in: {html.escape(problem.detail)}", problem.status)
    form = await request.form()
    token = str(form.get("token") or "").strip()
    auth = request.app.state.services.auth
    try:
        principal = await _decode(auth, token)
        CODEC_ACCESS.actor_of(principal)
        check_unscoped(principal)
    except AuthError as e:
        return _page(request, f"Not signed in: {html.escape(str(e))}", 401)
    except Problem as problem:
        return _page(request, f"Not signed in: {html.escape(problem.detail)}", problem.status)
    session_id, expires_at = await _open_session(request, principal, token)
    response = _page(
        request,
        f"Signed in as <b>{html.escape(principal.sub)}</b> until "
        f"{expires_at.strftime('%Y-%m-%d %H:%M:%S UTC')}.",
    )
    seconds = int((expires_at - datetime.now(UTC)).total_seconds())
    _set_session_cookie(request, response, session_id, seconds)
    return response


@router.post("/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    try:
        _check_origin(request)
    except Problem as problem:
        return _page(request, f"Still signed in: {html.escape(problem.detail)}", problem.status)
    session_id = request.cookies.get(COOKIE)
    if session_id and len(session_id) <= 128:
        engine = request.app.state.services.engine
        await asyncio.to_thread(db.end_desk_session, engine, session_id, datetime.now(UTC))
    response = _page(request, "Signed out.")
    response.delete_cookie(COOKIE, path=COOKIE_PATH)
    response.delete_cookie(LEGACY_COOKIE, path=COOKIE_PATH)
    return response
