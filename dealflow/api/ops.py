"""The operator's pages: Prometheus metrics and the interactive API docs.

Neither needs a token, so neither belongs on the listener the staff, the
desk and the lenders' webhooks reach: the metrics name stages, lenders and
routes, and the docs are a map of every door. Where they are served:

- `DEALFLOW_API_OPS_PORT` set: on a listener of their own
  (`DEALFLOW_API_OPS_HOST`, loopback by default; compose gives Prometheus the
  container's port on the stack's network, never published), and not on the
  public one;
- else, in development: on the public listener, as `make up` always had them;
- else (production): nowhere — the process says so once at start.

`/openapi.json` stays on the public listener: integrators generate their
clients from it (docs/architecture.md §3.3). The docs page is Swagger UI from
the vendored npm package (`dealflow/static/vendor/swagger-ui/`), no CDN.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dealflow.api.deps import Services
from dealflow.config import Settings

SWAGGER_DIR = Path(__file__).resolve().parent.parent / "static" / "vendor" / "swagger-ui"
DOCS_STATIC = "/docs/static"


def ops_on_public_listener(settings: Settings) -> bool:
    """Whether the public listener serves /metrics and /docs (module docstring)."""
    return not settings.api_ops_port and settings.env == "development"


def add_ops_routes(app: FastAPI, services: Services, public: FastAPI) -> None:
    """/metrics (of `services`) and /docs (of `public`'s OpenAPI) on `app`."""
    app.mount(DOCS_STATIC, StaticFiles(directory=SWAGGER_DIR), name="docs-static")

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/docs/openapi.json",
            title=f"{public.title} — docs",
            swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url="data:,",
        )

    @app.get("/docs/openapi.json", include_in_schema=False)
    async def docs_schema(_: Request) -> JSONResponse:
        return JSONResponse(public.openapi())


def create_ops_app(services: Services, public: FastAPI) -> FastAPI:
    """The operator's own listener: metrics, docs and liveness."""
    app = FastAPI(
        title="DealFlow API — operations", docs_url=None, redoc_url=None, openapi_url=None
    )
    add_ops_routes(app, services, public)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
