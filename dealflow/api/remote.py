"""A thin client of the back-office API (docs/architecture.md §3.3), for `starter.py --api URL`.

Every call sends the bearer token and returns the API's JSON; an error answer
becomes `ApiError` with the problem's status and detail, so the CLI can print
exactly what the API said. Uploads stream the file from disk.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

import httpx

from dealflow import tracing

# CLI exit codes for API answers (the same as the direct mode's, plus 6).
EXIT_CODES = {422: 2, 413: 2, 415: 2, 409: 3, 404: 4, 403: 5, 401: 6}


class ApiError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.status, 1)


class DealFlowAPI:
    def __init__(self, base_url: str, token: str, timeout: float = 60) -> None:
        if not token:
            raise ApiError(
                401,
                "no token: pass --token or set DEALFLOW_API_TOKEN "
                "(starter.py token --sub ID --role ROLE mints one)",
            )
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            trust_env=False,
            headers={"Authorization": f"Bearer {token}"},
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> DealFlowAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self, method: str, path: str, ok: tuple[int, ...] = (200,), *, route: str, **kw: Any
    ) -> Any:
        """One request's JSON body (see `_response`)."""
        r = self._response(method, path, ok, route=route, **kw)
        return r.json() if r.content else None

    def _response(
        self, method: str, path: str, ok: tuple[int, ...] = (200,), *, route: str, **kw: Any
    ) -> httpx.Response:
        """One request; with tracing on, in a client span named by `route` (the
        path's template) whose `traceparent` the API continues."""
        with tracing.http_client_span(method, route) as trace_headers:
            headers = {**kw.pop("headers", {}), **trace_headers}
            try:
                r = self.http.request(method, path, headers=headers, **kw)
            except httpx.HTTPError as e:
                raise ApiError(0, f"cannot reach the API at {self.http.base_url}: {e}") from None
        if r.status_code not in ok:
            try:
                detail = r.json().get("detail") or r.text
            except ValueError:
                detail = r.text or r.reason_phrase
            raise ApiError(r.status_code, str(detail))
        return r

    def start(self, deal: Any, idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        result: dict[str, Any] = self._call(
            "POST", "/api/deals", (201,), route="/api/deals", json=deal, headers=headers
        )
        return result

    def status(self, deal_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "GET", f"/api/deals/{deal_id}", route="/api/deals/{deal_id}"
        )
        return result

    def next_status(
        self,
        deal_id: str,
        *,
        after_stage: str | None = None,
        after_version: int | None = None,
        wait: float = 30,
    ) -> tuple[dict[str, Any], bool]:
        """The deal's status once it leaves `after_stage` or passes `after_version`,
        or after `wait` seconds as it is; and whether it changed (long poll)."""
        params: dict[str, Any] = {"wait": wait}
        if after_stage is not None:
            params["after_stage"] = after_stage
        if after_version is not None:
            params["after_version"] = after_version
        r = self._response(
            "GET",
            f"/api/deals/{deal_id}/next-status",
            route="/api/deals/{deal_id}/next-status",
            params=params,
            timeout=wait + self.http.timeout.read if self.http.timeout.read else None,
        )
        status: dict[str, Any] = r.json()
        return status, r.headers.get("Wait-Outcome") == "changed"

    def list(self, **params: Any) -> dict[str, Any]:
        query = {k: v for k, v in params.items() if v not in (None, False)}
        result: dict[str, Any] = self._call("GET", "/api/deals", route="/api/deals", params=query)
        return result

    def act(self, deal_id: str, action: str, payload: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "POST",
            f"/api/deals/{deal_id}/actions/{action}",
            route=f"/api/deals/{{deal_id}}/actions/{action}",
            json=payload,
        )
        return result

    def upload(self, deal_id: str, path: Path, fields: dict[str, str]) -> dict[str, Any]:
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        with path.open("rb") as f:
            result: dict[str, Any] = self._call(
                "POST",
                f"/api/deals/{deal_id}/documents",
                (201,),
                route="/api/deals/{deal_id}/documents",
                data={k: v for k, v in fields.items() if v},
                files={"file": (path.name, f, content_type)},
            )
        return result
