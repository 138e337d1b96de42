"""The codec endpoint (docs/architecture.md §3.6): the Temporal UI and CLI decrypt payloads here.

    POST /codec/decode   {"payloads": [{"metadata": {k: base64}, "data": base64}, ...]}
    POST /codec/encode   same shape, the other way

This is the remote-codec protocol of the Temporal UI (`--ui-codec-endpoint`, or
the UI's codec-server setting) and CLI (`--codec-endpoint`, `--codec-auth`):
the endpoint URL is `http://HOST:PORT/codec` and the tools append `/decode` or
`/encode`. The codec is exactly the one the API's own Temporal client uses
(`dealflow.codec`), so whatever the worker encrypted, this decrypts.

Only the `auditor` and `admin` roles may use it. The token comes from
`Authorization: Bearer <JWT>` (CLI: `--codec-auth "Bearer $TOKEN"`), or — for
the Temporal UI of the dev server, which has no login of its own and therefore
no access token to pass — from an HttpOnly cookie that `GET /codec/login` sets
after checking a pasted token; the UI then sends it when "include cross-origin
credentials" is on.

CORS: only the configured UI origins (`DEALFLOW_UI_ORIGIN`, comma separated,
default `http://localhost:8233,http://127.0.0.1:8233`) get
`Access-Control-Allow-Origin` (with credentials); the preflight allows
`Authorization`, `Content-Type` and `X-Namespace`. Errors carry the CORS
headers too, so the UI shows "401"/"403" rather than an opaque network error.
"""

from __future__ import annotations

import html
import logging
import time
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
    bearer_scheme,
    bearer_token,
    require_roles,
)
from dealflow.codec import AesGcmCodec, CodecError
from dealflow.models import Role

log = logging.getLogger("dealflow.api.codec")

# bearer_scheme only documents the token in OpenAPI; the checks are `_principal`.
router = APIRouter(prefix="/codec", tags=["codec"], dependencies=[Depends(bearer_scheme)])

CODEC_ROLES = frozenset({Role.AUDITOR, Role.ADMIN})
# Checked in `_principal` and at sign-in rather than as a route dependency:
# the token may come from the sign-in cookie, and a refusal carries CORS headers.
CODEC_ACCESS = require_roles(CODEC_ROLES, "use the codec endpoint")
COOKIE = "dealflow_codec_token"
MAX_BODY_BYTES = 32 * 1024 * 1024
_B64 = {"type": "string", "pattern": "^[A-Za-z0-9+/_-]*={0,2}$", "description": "base64"}
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


async def _principal(request: Request) -> Principal:
    """The caller from the bearer token, else from the codec cookie; 401/403 otherwise."""
    auth = request.app.state.services.auth
    try:
        if request.headers.get("authorization"):
            token = bearer_token(request)
        elif request.cookies.get(COOKIE):
            token = request.cookies[COOKIE]
        else:
            raise AuthError(
                "missing Authorization header; send 'Authorization: Bearer <token>' of an "
                "auditor or admin (Temporal UI: sign in at /codec/login first)"
            )
        principal: Principal = await _decode(auth, token)
    except AuthError as e:
        raise Problem(
            401, str(e), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        ) from None
    CODEC_ACCESS.actor_of(principal)  # 403 unless auditor/admin
    return principal


async def _transcode(request: Request, op: str) -> Response:
    try:
        principal = await _principal(request)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _problem(request, 413, f"the request is larger than {MAX_BODY_BYTES} bytes")
        try:
            payloads = json_format.Parse(body or b"{}", Payloads(), ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError, TypeError, AttributeError) as e:
            return _problem(
                request,
                422,
                f'the body must be {{"payloads": [{{"metadata": {{...}}, "data": "..."}}]}} '
                f"with base64 values: {e}",
            )
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
    summary="Encrypt payloads with the current key (Temporal remote codec); auditor or admin",
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


@router.post("/login", include_in_schema=False)
async def login(request: Request) -> Response:
    form = await request.form()
    token = str(form.get("token") or "").strip()
    auth = request.app.state.services.auth
    try:
        principal = await _decode(auth, token)
        CODEC_ACCESS.actor_of(principal)
        exp = int(jwt.decode(token, options={"verify_signature": False}).get("exp", 0))
    except AuthError as e:
        return _page(request, f"Not signed in: {html.escape(str(e))}", 401)
    except Problem as problem:
        return _page(request, f"Not signed in: {html.escape(problem.detail)}", problem.status)
    response = _page(
        request,
        f"Signed in as <b>{html.escape(principal.sub)}</b> until "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(exp))}.",
    )
    response.set_cookie(
        COOKIE,
        token,
        max_age=max(exp - int(time.time()), 0),
        path="/codec",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    response = _page(request, "Signed out.")
    response.delete_cookie(COOKIE, path="/codec")
    return response
