"""The API service: the back-office deal desk (staff, JWT), documents, lender
webhooks, health and metrics. OpenAPI at /openapi.json, rendered at /docs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError

from dealflow import rules, stuck, tracing
from dealflow.api import problems
from dealflow.api.body_limits import BodyLimitMiddleware
from dealflow.api.deps import Metrics, Services
from dealflow.api.ops import add_ops_routes, ops_on_public_listener
from dealflow.api.readiness import readiness
from dealflow.api.routes import codec_server, deals, documents, files, reports, webhooks
from dealflow.client import WorkflowStuck
from dealflow.desk import router as desk
from dealflow.storage.documents import DocumentStoreError

DESCRIPTION = """\
Car-finance deals on Temporal: the back-office deal desk and the lender webhooks.

**Authentication.** `Authorization: Bearer <JWT>` — HS256 with `DEALFLOW_JWT_SECRET`
(or the identity provider's keys with `DEALFLOW_JWKS_URL`), claims `sub` (staff id),
`roles` (list) and `exp`. `starter.py token --sub li --role sales` mints a development
token. Who acted is always the token's `sub`; a body cannot change it.

**Permissions.** Starting deals: sales. Each action lists its roles. Uploading
documents: sales, credit. Reading documents: sales, credit, auditor. Reading deals:
every role. Reports: sales, credit, finance, auditor. `admin` may do everything;
`auditor` only reads.

**Errors** are `application/problem+json` (RFC 9457): 401 no/bad token, 403 wrong
role, 404 unknown deal, 408 upload too slow, 409 not allowed in the deal's stage,
413 body too large, 422 invalid request (the `detail` names each problem), 429 too
many uploads at once (Retry-After), 503 Temporal or the document store unavailable.
Nothing is half-applied on error.

**Bodies are bounded.** The token (401) and the role (403) are checked before a byte
of the body is read. By default JSON bodies and forms: 64 KiB; lender webhooks: 256 KiB;
the codec endpoint: 4 MiB; uploads: the document limit (20 MiB) — a larger
Content-Length is 413 at once, a larger stream 413 when it passes the limit, and the
connection is then closed. An upload must keep sending (15 s idle at most) and end
within 120 s (408); one person may have 2 uploads running at once (429).
"""

log = logging.getLogger("dealflow.api")

TAGS = [
    {"name": "deals", "description": "start, list and read deals"},
    {"name": "actions", "description": "staff steps: each is a Temporal Update"},
    {"name": "documents", "description": "customer documents in the document store"},
    {"name": "lender webhooks", "description": "signed lender events (Standard Webhooks)"},
    {"name": "reports", "description": "the pipeline's figures for a period (the desk's reports)"},
    {"name": "operations", "description": "health and metrics"},
]


class MetricsMiddleware:
    """Request durations by route template (never the concrete path: it holds ids)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(
                method=scope.get("method", ""), route=route, status=str(status)
            ).observe(time.perf_counter() - start)


def _errors_as_problems(schema: dict[str, Any]) -> None:
    """Every error response is documented as what it is: application/problem+json
    (FastAPI's generated 422 says application/json with its own error model)."""
    problem = {problems.PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDetail"}}}
    for ops in schema.get("paths", {}).values():
        for operation in ops.values():
            for code, resp in operation.get("responses", {}).items():
                if not str(code).isdigit() or int(code) < 400:
                    continue
                content = resp.get("content") or {}
                if problems.PROBLEM_JSON not in content:
                    resp["content"] = dict(problem)
                    if int(code) == 422 and resp.get("description") == "Validation Error":
                        resp["description"] = "the request is invalid; `detail` names each problem"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    svc: Services = app.state.services
    tasks = [
        # Webhooks stored just before a crash, never marked delivered: deliver them.
        asyncio.create_task(webhooks.redelivery_loop(svc)),
        asyncio.create_task(watch_stuck_deals(svc)),
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await svc.inbox.aclose()
        svc.uploads.close()


async def watch_stuck_deals(svc: Services, every: float = 30.0) -> None:
    """Keep `dealflow_deals_stuck` current (one visibility count per period)
    and heal the stuck deals that are safe to heal unattended."""
    tried: set[str] = set()
    while True:
        try:
            count = await stuck.count_stuck(svc.client)
            svc.metrics.deals_stuck.set(count)
            if count and svc.settings.auto_heal:
                healed = await stuck.heal_automatically(svc.client, tried)
                svc.metrics.deals_healed.inc(len(healed))
                count -= len(healed)
            if count:
                log.warning("stuck deals: %d (python starter.py stuck)", count)
        except RPCError:
            svc.metrics.deals_stuck.set(-1)
        except Exception:  # noqa: BLE001 - the watcher must outlive any one failure
            log.exception("stuck-deal watcher pass failed")
        await asyncio.sleep(every)


def create_app(services: Services) -> FastAPI:
    app = FastAPI(
        title="DealFlow API",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        # The docs page is the operator's (dealflow/api/ops.py), without a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    # Inside the metrics, so its refusals are measured too.
    app.add_middleware(BodyLimitMiddleware, services=services, routes=app.router.routes)
    app.add_middleware(MetricsMiddleware, metrics=services.metrics)
    tracing.instrument_app(app)
    app.add_exception_handler(problems.Problem, problems.on_problem)
    app.add_exception_handler(rules.RuleError, problems.on_rule_error)
    app.add_exception_handler(StarletteHTTPException, problems.on_http_error)
    app.add_exception_handler(RequestValidationError, problems.on_validation_error)
    app.add_exception_handler(RPCError, problems.on_rpc_error)
    app.add_exception_handler(WorkflowStuck, problems.on_stuck)
    app.add_exception_handler(WorkflowUpdateRPCTimeoutOrCancelledError, problems.on_outcome_unknown)
    app.add_exception_handler(DocumentStoreError, problems.on_store_error)
    app.add_exception_handler(Exception, problems.on_unexpected)
    app.include_router(deals.router)
    app.include_router(documents.router)
    app.include_router(files.router)
    app.include_router(webhooks.router)
    app.include_router(codec_server.router)
    app.include_router(reports.router)
    desk.install(app)

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="Readiness: Temporal, the database and the document store answer",
        responses={503: {"description": "a dependency does not answer; the body names it"}},
    )
    async def readyz(request: Request) -> JSONResponse:
        checks = await readiness(request.app.state.services)
        ready = all(answer == "ok" for answer in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "unready", "checks": checks},
            status_code=200 if ready else 503,
        )

    if ops_on_public_listener(services.settings):
        add_ops_routes(app, services, app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components["ProblemDetail"] = problems.ProblemDetail.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            _errors_as_problems(schema)
            for unused in ("HTTPValidationError", "ValidationError"):
                components.pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
