"""The API service: lender webhooks, health and metrics (and, with the back-office
issue, the staff deal desk)."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from dealflow import rules
from dealflow.api import problems, webhooks
from dealflow.api.deps import Services


def create_app(services: Services) -> FastAPI:
    app = FastAPI(
        title="DealFlow API",
        version="0.1.0",
        description="Car-finance deals on Temporal: back-office desk and lender webhooks.",
    )
    app.state.services = services
    app.add_exception_handler(problems.Problem, problems.on_problem)
    app.add_exception_handler(rules.RuleError, problems.on_rule_error)
    app.add_exception_handler(StarletteHTTPException, problems.on_http_error)
    app.add_exception_handler(RequestValidationError, problems.on_validation_error)
    app.include_router(webhooks.router)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", tags=["operations"])
    async def metrics(request: Request) -> Response:
        svc: Services = request.app.state.services
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
