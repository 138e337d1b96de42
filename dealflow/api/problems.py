"""Errors as `application/problem+json` (RFC 9457), with a `detail` a clerk can act on.

Every error the API answers goes through here — its own (`Problem`), a rule's
refusal (`RuleError`: invalid→422, conflict→409, forbidden→403), a malformed
request (FastAPI's validation, 422), an unknown route (404), Temporal or the
document store being down (503) and, as a last resort, an unexpected error (500).
"""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from temporalio.service import RPCError, RPCStatusCode

from dealflow import rules
from dealflow.api.errors import Problem
from dealflow.api.security import authenticate, needs_bearer_token, route_requirement
from dealflow.client import WorkflowStuck
from dealflow.storage.documents import DocumentStoreError, DocumentStoreUnavailable
from dealflow.stuck import heal_command

log = logging.getLogger("dealflow.api")

RULE_STATUS = {"invalid": 422, "conflict": 409, "forbidden": 403}
PROBLEM_JSON = "application/problem+json"


class ProblemDetail(BaseModel):
    """An error (RFC 9457). `detail` says what is wrong and what to do about it."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "about:blank",
                    "title": "Unprocessable Entity",
                    "status": 422,
                    "detail": "down payment 30,000.00 does not match the contract's 35,000.00",
                }
            ]
        },
    )

    type: str = Field("about:blank", description="always about:blank: the status says it all")
    title: str = Field(description="the HTTP status phrase")
    status: int = Field(description="the HTTP status code")
    detail: str = Field(description="what is wrong, in words a clerk can act on")


def problem_response(
    status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

# --------------------------------------------------------------------------- OpenAPI

_DESCRIPTIONS = {
    400: "the request body could not be read",
    401: "no bearer token, or a malformed, badly signed or expired one",
    403: "the token's roles may not do this",
    404: "unknown deal (or document)",
    409: "not allowed in the deal's current stage (or already done)",
    408: "the upload was too slow: it stalled, or took longer than its deadline",
    413: "the body is larger than the limit",
    415: "the body is not of the documented content type",
    429: "too many uploads of yours at once; retry after Retry-After seconds",
    422: "the request is invalid; `detail` names each problem",
    503: "Temporal or the document store is unavailable; retry later",
}
_EXAMPLES = {
    400: "the client disconnected before the upload finished",
    401: "missing Authorization header; send 'Authorization: Bearer <token>'",
    403: "role 'finance' may not sign-sales-contract; allowed: admin, sales",
    404: "deal 20261128-3f9a0c1e does not exist",
    409: "confirm-down-payment is not allowed in stage DOCUMENTS (only in DOWN_PAYMENT)",
    408: "the upload stalled: no data arrived for 15 s; nothing was stored. Send the file again",
    413: "statements.pdf is larger than the limit of 20,971,520 bytes",
    415: "send the document as multipart/form-data",
    429: "you have 2 uploads in progress, the most one person may have at once; send this "
    "file when one of them has finished",
    422: "down payment 30,000.00 does not match the contract's 35,000.00",
    503: "Temporal is unavailable; retry in a few seconds (reference err-3f9a0c1e5b7d)",
}


def responses(*codes: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the given error statuses, as problem+json with an example.

    `descriptions` overrides a default text: `responses(404, 422, d404="unknown document")`.
    """
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {
            "description": descriptions.get(f"d{code}", _DESCRIPTIONS[code]),
            "content": {
                PROBLEM_JSON: {
                    "schema": {"$ref": "#/components/schemas/ProblemDetail"},
                    "example": {
                        "type": "about:blank",
                        "title": HTTPStatus(code).phrase,
                        "status": code,
                        "detail": _EXAMPLES[code],
                    },
                }
            },
        }
    return out


# --------------------------------------------------------------------------- handlers


def internal_problem(
    status: int, detail: str, internals: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A problem whose cause is DealFlow's own (Temporal, the store, a bug):
    `detail` says what the clerk can do; `internals` — addresses, buckets,
    Temporal's words — go only to the log, under a reference the problem
    carries too, so support can find them without the client seeing them."""
    reference = f"err-{uuid.uuid4().hex[:12]}"
    log.error("%s (reference %s)", internals, reference, extra={"reference": reference})
    return problem_response(
        status, f"{detail} (reference {reference})", headers, reference=reference
    )


async def on_problem(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return problem_response(exc.status, exc.detail, exc.headers, **exc.extra)


async def on_rule_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, rules.RuleError)
    return problem_response(RULE_STATUS[exc.kind], exc.message)


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = "no such endpoint; see /docs"
    if exc.status_code == 400 and detail == "There was an error parsing the body":
        # FastAPI's answer to a body that is not UTF-8: an invalid body, 422 —
        # after the token and the role, like every other invalid body.
        denied = await _auth_first(request)
        if denied is not None:
            return denied
        return problem_response(422, "the body could not be read: send UTF-8 JSON")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    return problem_response(exc.status_code, detail, headers or None)


def allowed_methods(request: Request) -> str:
    """Every method some route serves on this path. Starlette's own `Allow`
    names only the first route that matched the path, and a path such as
    /api/deals/{deal_id}/documents has one route for GET and one for POST."""
    served = [
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    ]
    return ", ".join(served)


def describe_validation_errors(errors: Any) -> str:
    parts = []
    for err in errors:
        loc_parts = [str(part) for part in err.get("loc", ())]
        if loc_parts and loc_parts[0] == "body":
            loc_parts = loc_parts[1:]
        loc = ".".join(loc_parts) or "body"
        if err.get("type") == "extra_forbidden" and loc == "actor":
            parts.append("actor: who acted comes from the bearer token; remove actor from the body")
        elif err.get("type") == "json_invalid":
            why = err.get("ctx", {}).get("error", "syntax")
            parts.append(f"the body is not valid JSON ({why})")
        else:
            parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request"


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    denied = await _auth_first(request)
    if denied is not None:
        return denied
    return problem_response(422, describe_validation_errors(exc.errors()))


async def _auth_first(request: Request) -> JSONResponse | None:
    """FastAPI parses a JSON body before it runs the route's dependencies: answer
    an unauthenticated or unauthorised caller 401/403 all the same, so the
    order of checks does not depend on whether the body happens to parse."""
    if not needs_bearer_token(request.url.path):
        return None
    requirement = route_requirement(request.scope.get("route"))
    try:
        if requirement is not None:
            await requirement(request)
        else:
            await authenticate(request)
    except Problem as problem:
        return await on_problem(request, problem)
    return None


async def on_rpc_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RPCError)
    if exc.status in (
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
    ):
        return internal_problem(
            503,
            "Temporal is unavailable; retry in a few seconds",
            f"Temporal unavailable: {exc.message} ({exc.status.name})",
            {"Retry-After": "5"},
        )
    if "Workflow Task in failed state" in exc.message:
        # The deal's worker died mid-task; another worker retries it in seconds.
        return problem_response(
            503,
            "the deal is being recovered by another worker; retry shortly",
            {"Retry-After": "3"},
        )
    return internal_problem(
        502,
        "Temporal refused the call; an operator can look it up by its reference",
        f"Temporal call failed: {exc.message} ({exc.status.name if exc.status else None})",
    )


async def on_outcome_unknown(_: Request, exc: Exception) -> JSONResponse:
    # Said as it is: the action may still be applied, so a blind retry is wrong.
    detail = (
        "Temporal has not confirmed the action yet and it may still be applied: read the "
        "deal before taking it again"
    )
    return problem_response(503, detail, {"Retry-After": "10"})


async def on_stuck(_: Request, exc: Exception) -> JSONResponse:
    # A stuck deal refuses every action until an operator heals it: say so,
    # instead of the "retry shortly" that fits a deal a worker is recovering.
    assert isinstance(exc, WorkflowStuck)
    detail = (
        f"{exc}. An operator must heal it ({heal_command(exc.deal_id)}); "
        "then take the action again."
    )
    return problem_response(503, detail, {"Retry-After": "300"})


async def on_store_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DocumentStoreError)
    if isinstance(exc, DocumentStoreUnavailable):
        return internal_problem(
            503,
            "the document store is unavailable; retry in a few seconds",
            f"document store unavailable: {exc}",
            {"Retry-After": "5"},
        )
    return internal_problem(
        502,
        "the document store failed; an operator can look it up by its reference",
        f"document store error: {exc}",
    )


async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
    reference = f"err-{uuid.uuid4().hex[:12]}"
    log.exception("unexpected error (reference %s)", reference, exc_info=exc)
    return problem_response(
        500, f"unexpected error; it has been logged (reference {reference})", reference=reference
    )
