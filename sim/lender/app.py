"""The lender simulator's HTTP service (FastAPI).

Lender side of docs/architecture.md §3.5, one process for every lender of the lenders file:

    POST /lenders/{lender_id}/applications                               -> 202 {application_ref}
    GET  /lenders/{lender_id}/applications/{ref}                         -> 200 status
    POST /lenders/{lender_id}/applications/{ref}/disbursement-requests   -> 202 {request_id}
    POST /lenders/{lender_id}/applications/{ref}/withdrawal              -> 202
    POST /lenders/{lender_id}/applications/{ref}/repayment               -> 200 {repayment_ref}

A request under an Idempotency-Key already used is the same one, answered as the
first was, when its body matches; for an application or a disbursement request
"matches" leaves out the documents' `url`s (`inbound.application_fingerprint`,
`inbound.disbursement_fingerprint`), because DealFlow signs the links afresh at
every attempt. Another body under a used key is 422.

A new disbursement request's `funding_package` is checked (funding.py): each
document fetched by its link and matched to its sha256 and size; a missing or
different document is 422 naming it. A request without a package is taken as
before, unless the lender or the deal's script requires one.

Test/demo controls:

    PUT|GET|DELETE /_sim/scripts/{deal_id}   per-deal scripted answers
    GET /_sim/ledger?deal_id=                 what was received (each application request
                                              with its links) and sent
    PUT|POST|GET|DELETE /_sim/faults          lender-API fault injection (faults.py)
    GET /_sim/outbox                          webhook outbox counts by status
    GET /healthz

Answers go out as signed webhooks (docs/architecture.md §3.4) from a durable outbox; see
`delivery.py`. Errors are RFC 9457 problem JSON.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from dealflow.models import ApplicationPackage, DisbursementRequest
from sim.lender.config import SimConfig
from sim.lender.delivery import Dispatcher
from sim.lender.faults import Endpoint, FaultRule, Faults, FaultsBody, hold
from sim.lender.funding import check_funding_package
from sim.lender.inbound import (
    RepaymentBody,
    WithdrawalBody,
    application_fingerprint,
    disbursement_fingerprint,
    idempotency_key,
    parse_body,
)
from sim.lender.ledger import Ledger
from sim.lender.problems import Problem, problem_response
from sim.lender.scripts import Script
from sim.lender.simulator import LenderSim

T = TypeVar("T")


def create_app(config: SimConfig) -> FastAPI:
    ledger = Ledger(config.db_path)
    sim = LenderSim(config, ledger)
    dispatcher = Dispatcher(config, ledger)
    faults = Faults()
    # Fetches the funding documents of disbursement requests by their links.
    http = httpx.AsyncClient(timeout=config.delivery_timeout)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ledger.open()
        await dispatcher.start()
        try:
            yield
        finally:
            await dispatcher.stop()
            await http.aclose()
            ledger.close()

    app = FastAPI(
        title="DealFlow lender simulator",
        version="1.0",
        lifespan=lifespan,
        description=(
            "The lender side of DealFlow's lender contracts (docs/architecture.md §3.4, §3.5)."
        ),
    )
    app.state.config = config
    app.state.sim = sim
    app.state.ledger = ledger
    app.state.dispatcher = dispatcher
    app.state.faults = faults
    _add_problem_handlers(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(_lender_api(sim, ledger, dispatcher, faults, http))
    app.include_router(_controls(sim, ledger, dispatcher, faults))
    return app


def _add_problem_handlers(app: FastAPI) -> None:
    """Every error as problem JSON, also FastAPI's own 404/405/422."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.detail, exc.errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        return problem_response(422, "invalid request", errors)


async def _run_and_wake(dispatcher: Dispatcher, fn: Callable[..., T], *args: Any) -> T:
    """Run a simulator method in a worker thread, then wake the outbox: the method may have
    queued webhooks."""
    result = await asyncio.to_thread(fn, *args)
    dispatcher.wake()
    return result


async def _under_faults(
    faults: Faults,
    endpoint: Endpoint,
    lender_id: str,
    deal_id: str | None,
    handle: Callable[[], Awaitable[JSONResponse]],
) -> JSONResponse:
    """Handle one lender-API request under the fault rules (faults.py)."""
    with faults.request(endpoint, lender_id, deal_id):
        strike = faults.strike(endpoint, lender_id, deal_id)
        if strike is None:
            return await handle()
        if strike.mode == "slow":
            await hold(strike.delay)
            return await handle()
        what = f"simulated {strike.mode} fault (rule {strike.rule_id})"
        if strike.mode == "4xx":
            return problem_response(strike.status, f"{what}: request refused")
        if strike.phase == "after":
            await handle()  # processed and recorded; only the reply is lost
        if strike.mode == "timeout":
            await hold(strike.delay)
        return problem_response(strike.status, f"{what}, phase {strike.phase}")


def _lender_api(
    sim: LenderSim, ledger: Ledger, dispatcher: Dispatcher, faults: Faults, http: httpx.AsyncClient
) -> APIRouter:
    """The lender side of docs/architecture.md §3.5, what DealFlow's activities call."""
    router = APIRouter()

    @router.post("/lenders/{lender_id}/applications", status_code=202)
    async def submit_application(lender_id: str, request: Request) -> JSONResponse:
        sim.lender(lender_id)
        key = idempotency_key(request)
        package, digest = parse_body(ApplicationPackage, await request.body())
        fingerprint = application_fingerprint(package)

        async def handle() -> JSONResponse:
            ref, _ = await _run_and_wake(
                dispatcher, sim.submit_application, lender_id, key, package, fingerprint, digest
            )
            return JSONResponse({"application_ref": ref}, status_code=202)

        return await _under_faults(faults, "applications", lender_id, package.deal_id, handle)

    @router.get("/lenders/{lender_id}/applications/{ref}")
    async def application_status(lender_id: str, ref: str) -> dict[str, Any]:
        return await asyncio.to_thread(sim.application_status, lender_id, ref)

    @router.post("/lenders/{lender_id}/applications/{ref}/disbursement-requests", status_code=202)
    async def request_disbursement(lender_id: str, ref: str, request: Request) -> JSONResponse:
        sim.lender(lender_id)
        key = idempotency_key(request)
        req, _ = parse_body(DisbursementRequest, await request.body())
        digest = disbursement_fingerprint(req)

        async def handle() -> JSONResponse:
            # A new request's documents are fetched and checked before it is
            # recorded; a repeat is answered as the first was.
            if not await asyncio.to_thread(sim.is_repeat_disbursement, lender_id, key):
                required = await asyncio.to_thread(
                    sim.funding_package_required, lender_id, req.deal_id
                )
                await check_funding_package(http, req, required)
            request_id, _ = await _run_and_wake(
                dispatcher, sim.request_disbursement, lender_id, ref, key, req, digest
            )
            return JSONResponse({"request_id": request_id, "application_ref": ref}, status_code=202)

        return await _under_faults(faults, "disbursement-requests", lender_id, req.deal_id, handle)

    @router.post("/lenders/{lender_id}/applications/{ref}/withdrawal", status_code=202)
    async def withdraw(lender_id: str, ref: str, request: Request) -> JSONResponse:
        sim.lender(lender_id)
        key = idempotency_key(request)
        body, digest = parse_body(WithdrawalBody, await request.body())
        app_row = await asyncio.to_thread(ledger.get_application, lender_id, ref)

        async def handle() -> JSONResponse:
            reply = await _run_and_wake(
                dispatcher, sim.withdraw, lender_id, ref, key, body.reason, digest
            )
            return JSONResponse(reply, status_code=202)

        deal_id = str(app_row["deal_id"]) if app_row is not None else None
        return await _under_faults(faults, "withdrawal", lender_id, deal_id, handle)

    @router.post("/lenders/{lender_id}/applications/{ref}/repayment")
    async def repay(lender_id: str, ref: str, request: Request) -> JSONResponse:
        sim.lender(lender_id)
        key = idempotency_key(request)
        body, digest = parse_body(RepaymentBody, await request.body())

        async def handle() -> JSONResponse:
            reply = await asyncio.to_thread(sim.repay, lender_id, ref, key, body, digest)
            return JSONResponse(reply)

        return await _under_faults(faults, "repayment", lender_id, body.deal_id, handle)

    return router


def _controls(sim: LenderSim, ledger: Ledger, dispatcher: Dispatcher, faults: Faults) -> APIRouter:
    """The test and demo controls under /_sim: faults, scripts, ledger, outbox."""
    router = APIRouter()

    @router.put("/_sim/faults")
    async def put_faults(request: Request) -> dict[str, Any]:
        body, _ = parse_body(FaultsBody, await request.body())
        faults.replace(body)
        return faults.snapshot()

    @router.post("/_sim/faults", status_code=201)
    async def add_fault(request: Request) -> dict[str, Any]:
        rule, _ = parse_body(FaultRule, await request.body())
        return faults.add(rule)

    @router.get("/_sim/faults")
    async def get_faults(deal_id: str | None = None) -> dict[str, Any]:
        return faults.snapshot(deal_id)

    @router.get("/_sim/outbox")
    async def outbox() -> dict[str, int]:
        return await asyncio.to_thread(ledger.outbox_counts, time.time())

    @router.delete("/_sim/faults", status_code=204)
    async def delete_faults() -> Response:
        faults.clear()
        return Response(status_code=204)

    @router.put("/_sim/scripts/{deal_id}")
    async def put_script(deal_id: str, request: Request) -> dict[str, Any]:
        script, _ = parse_body(Script, await request.body())
        return await _run_and_wake(dispatcher, sim.put_script, deal_id, script)

    @router.get("/_sim/scripts/{deal_id}")
    async def get_script(deal_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(sim.get_script, deal_id)

    @router.delete("/_sim/scripts/{deal_id}", status_code=204)
    async def delete_script(deal_id: str) -> Response:
        await asyncio.to_thread(sim.delete_script, deal_id)
        return Response(status_code=204)

    @router.get("/_sim/ledger")
    async def get_ledger(deal_id: str | None = None) -> dict[str, Any]:
        return await asyncio.to_thread(ledger.snapshot, deal_id)

    return router
