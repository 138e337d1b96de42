"""The lender simulator's HTTP service (FastAPI).

Lender side of docs/architecture.md §3.5, one process for every lender of the lenders file:

    POST /lenders/{lender_id}/applications                               -> 202 {application_ref}
    GET  /lenders/{lender_id}/applications/{ref}                         -> 200 status
    POST /lenders/{lender_id}/applications/{ref}/disbursement-requests   -> 202 {request_id}
    POST /lenders/{lender_id}/applications/{ref}/withdrawal              -> 202

Test/demo controls:

    PUT|GET|DELETE /_sim/scripts/{deal_id}   per-deal scripted answers
    GET /_sim/ledger?deal_id=                 what was received and sent
    PUT|POST|GET|DELETE /_sim/faults          lender-API fault injection (faults.py)
    GET /_sim/outbox                          webhook outbox counts by status
    GET /healthz

Answers go out as signed webhooks (docs/architecture.md §3.4) from a durable outbox; see
`delivery.py`. Errors are RFC 9457 problem JSON.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from dealflow.config import LenderConfig
from dealflow.models import (
    ApplicationPackage,
    Decision,
    DisbursementRequestInput,
    Money,
    Reason,
    Stipulation,
    money,
)
from sim.lender import underwriting
from sim.lender.config import SimConfig
from sim.lender.delivery import Dispatcher, build_body
from sim.lender.faults import Endpoint, FaultRule, Faults, FaultsBody, hold
from sim.lender.ledger import Ledger, iso, utcnow

DECIDED = "application.decided"
COMPLETED = "disbursement.completed"
FAILED = "disbursement.failed"

Delay = Annotated[float, Field(ge=0, le=3600)]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


# --------------------------------------------------------------------------- scripts


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DecisionStep(_Strict):
    """How the lender answers one submission of the deal."""

    decision: Literal["approved", "conditional", "counter_offer", "declined", "silent"]
    approved_amount: Money | None = None
    apr: Annotated[Decimal, Field(ge=0, le=100, decimal_places=2)] | None = None
    term_months: Annotated[int, Field(ge=1, le=120)] | None = None
    stipulations: list[Stipulation] = Field(default_factory=list)
    reasons: list[Reason] = Field(default_factory=list)
    # After the real decision (seq N) also send an older one (seq N-1) that
    # says something else: the receiver must ignore it.
    also_send_stale: bool = False
    # Deliver the decision twice: same webhook-id, same body.
    duplicate: bool = False
    delay: Delay | None = None


class DisbursementStep(_Strict):
    result: Literal["completed", "failed", "silent"]
    reason: Annotated[str, Field(min_length=1, max_length=500)] = "disbursement rejected by bank"
    # Pay a different amount than requested (a lender error to detect).
    amount: Money | None = None
    duplicate: bool = False
    delay: Delay | None = None


class ExtraEvent(_Strict):
    """An additional webhook for chaos tests, sent once: at PUT time (`now`, needs
    `lender_id`) or after the first matching application / disbursement request
    of the deal (`lender_id` and `submission_no` filter when set), after the
    main answer. `data` is merged over {deal_id, application_ref} (the matched
    application's); `body` replaces the whole body verbatim (e.g. malformed);
    `webhook_id` reuses an id; `bad_signature` signs with a wrong key;
    `max_attempts` bounds retries of an event the receiver is meant to refuse."""

    when: Literal["application", "disbursement", "now"] = "application"
    lender_id: str | None = None
    submission_no: int | None = None
    type: Annotated[str, Field(min_length=1, max_length=100)] = DECIDED
    data: dict[str, Any] = Field(default_factory=dict)
    body: str | None = None
    webhook_id: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    bad_signature: bool = False
    max_attempts: Annotated[int, Field(ge=1)] | None = None
    delay: Delay | None = None


class Script(_Strict):
    lenders: dict[str, list[DecisionStep]] = Field(default_factory=dict)
    disbursements: list[DisbursementStep] = Field(default_factory=list)
    decision_delay: Delay | None = None
    extra_events: list[ExtraEvent] = Field(default_factory=list)


def _fresh_state() -> dict[str, Any]:
    return {"lenders": {}, "disbursements": 0, "extra_fired": []}


class WithdrawalBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    reason: Annotated[str, Field(min_length=1, max_length=500)]


# --------------------------------------------------------------------------- errors


class Problem(Exception):
    TITLES = {
        400: "Bad Request",
        404: "Not Found",
        409: "Conflict",
        422: "Unprocessable Content",
        500: "Internal Server Error",
        503: "Service Unavailable",
        504: "Gateway Timeout",
    }

    def __init__(self, status: int, detail: str, errors: list[Any] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors


def problem_response(status: int, detail: str, errors: list[Any] | None = None) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": Problem.TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def _validation_errors(e: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(err["loc"]), "msg": err["msg"]} for err in e.errors()]


def _parse(model: type[M], raw: bytes) -> tuple[M, str]:
    """Parse a JSON body into `model`; returns the model and a canonical hash for
    idempotency checks. JSON numbers become Decimal, never float."""
    try:
        data = json.loads(raw, parse_float=Decimal)
    except ValueError as e:
        raise Problem(422, f"body is not valid JSON: {e}") from e
    try:
        obj = model.model_validate(data)
    except ValidationError as e:
        raise Problem(422, f"invalid {model.__name__}", _validation_errors(e)) from e
    canonical = json.dumps(obj.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return obj, hashlib.sha256(canonical.encode()).hexdigest()


def _idempotency_key(request: Request) -> str:
    key = request.headers.get("idempotency-key", "").strip()
    if not key:
        raise Problem(400, "the Idempotency-Key header is required")
    if len(key) > 255:
        raise Problem(400, "the Idempotency-Key header is longer than 255 characters")
    return key


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


# --------------------------------------------------------------------------- simulator


def _decided_data(
    deal_id: str, ref: str, seq: int, outcome: underwriting.RuleDecision
) -> dict[str, Any]:
    return {
        "deal_id": deal_id,
        "application_ref": ref,
        "decision_seq": seq,
        "decision": outcome.decision.value,
        "approved_amount": (
            None if outcome.approved_amount is None else str(money(outcome.approved_amount))
        ),
        "apr": str(money(outcome.apr)),
        "term_months": outcome.term_months,
        "stipulations": list(outcome.stipulations),
        "reasons": list(outcome.reasons),
    }


def scripted_outcome(
    step: DecisionStep, package: ApplicationPackage, apr: Decimal
) -> underwriting.RuleDecision | None:
    """The decision a script step asks for (None: silent); unset figures default
    to the request's."""
    if step.decision == "silent":
        return None
    apr = step.apr if step.apr is not None else apr
    term = step.term_months or package.term_months
    requested = money(package.amount_requested)
    stips = [s.model_dump() for s in step.stipulations]
    reasons = [r.model_dump() for r in step.reasons]
    amount: Decimal | None = step.approved_amount if step.approved_amount is not None else requested
    if step.decision == "conditional":
        stips = stips or [
            {
                "code": "STIP-INCOME",
                "description": "Additional proof of income for the last 6 months",
            }
        ]
    elif step.decision == "counter_offer" and step.approved_amount is None:
        amount = underwriting.counter_offer_amount(package, apr)
    elif step.decision == "declined":
        amount = None
        reasons = reasons or [{"code": "SCRIPTED", "text": "Declined by the lender's policy"}]
    return underwriting.RuleDecision(Decision(step.decision), amount, apr, term, stips, reasons)


def stale_outcome(real: underwriting.RuleDecision, requested: Decimal) -> underwriting.RuleDecision:
    """A different decision, to be sent with a lower decision_seq than `real`."""
    if real.decision == Decision.DECLINED:
        return underwriting.RuleDecision(Decision.APPROVED, requested, real.apr, real.term_months)
    return underwriting.RuleDecision(
        Decision.DECLINED,
        None,
        real.apr,
        real.term_months,
        [],
        [{"code": "STALE", "text": "Superseded earlier assessment"}],
    )


class LenderSim:
    """The simulator's request handling. Methods are synchronous and run in a
    worker thread; each is one ledger transaction."""

    def __init__(self, config: SimConfig, ledger: Ledger) -> None:
        self.config = config
        self.ledger = ledger

    def lender(self, lender_id: str) -> LenderConfig:
        lender = self.config.lenders.get(lender_id)
        if lender is None:
            raise Problem(404, f"unknown lender {lender_id!r}")
        return lender

    def target(self, lender_id: str) -> str:
        return f"{self.config.webhook_base_url.rstrip('/')}/webhooks/lenders/{lender_id}"

    def _script(self, deal_id: str) -> tuple[Script | None, dict[str, Any]]:
        found = self.ledger.get_script(deal_id)
        if found is None:
            return None, _fresh_state()
        return Script.model_validate(found[0]), found[1]

    def _enqueue(
        self,
        *,
        lender_id: str,
        deal_id: str,
        ref: str,
        type: str,
        body: str,
        due_at: float,
        copies: int = 1,
        webhook_id: str | None = None,
        sign_ok: bool = True,
        max_attempts: int | None = None,
    ) -> str:
        webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
        for _ in range(copies):
            self.ledger.enqueue_webhook(
                webhook_id=webhook_id,
                lender_id=lender_id,
                deal_id=deal_id,
                application_ref=ref,
                type=type,
                target=self.target(lender_id),
                body=body,
                due_at=due_at,
                max_attempts=max_attempts or self.config.max_attempts,
                sign_ok=sign_ok,
            )
        return webhook_id

    def _fire_extra(
        self,
        script: Script | None,
        state: dict[str, Any],
        *,
        when: str,
        deal_id: str,
        lender_id: str | None,
        ref: str,
        submission_no: int | None,
        default_delay: float,
    ) -> None:
        if script is None:
            return
        for i, ev in enumerate(script.extra_events):
            if i in state["extra_fired"] or ev.when != when:
                continue
            if ev.lender_id is not None and lender_id is not None and ev.lender_id != lender_id:
                continue
            if ev.submission_no is not None and ev.submission_no != submission_no:
                continue
            target_lender = ev.lender_id or lender_id
            if target_lender is None:
                continue
            event_ref = str(ev.data.get("application_ref", ref))
            now = time.time()
            delay = ev.delay if ev.delay is not None else default_delay
            body = ev.body
            if body is None:
                data = {"deal_id": deal_id, "application_ref": event_ref, **ev.data}
                body = build_body(ev.type, data, datetime.fromtimestamp(now + delay, UTC))
            self._enqueue(
                lender_id=target_lender,
                deal_id=deal_id,
                ref=event_ref,
                type=ev.type,
                body=body,
                due_at=now + delay,
                webhook_id=ev.webhook_id,
                sign_ok=not ev.bad_signature,
                max_attempts=ev.max_attempts,
            )
            state["extra_fired"].append(i)

    # ------------------------------------------------------------------ applications

    def submit_application(
        self, lender_id: str, key: str, package: ApplicationPackage, body_hash: str
    ) -> tuple[str, bool]:
        """Record an application and schedule its decision: (ref, newly created)."""
        self.lender(lender_id)
        with self.ledger.tx():
            existing = self.ledger.find_application(lender_id, key)
            if existing is not None:
                if existing["body_hash"] != body_hash:
                    raise Problem(
                        422,
                        f"Idempotency-Key {key!r} was already used with a different "
                        "application package",
                    )
                return str(existing["ref"]), False

            script, state = self._script(package.deal_id)
            step: DecisionStep | None = None
            step_index: int | None = None
            if script is not None:
                steps = script.lenders.get(lender_id, [])
                i = int(state["lenders"].get(lender_id, 0))
                if i < len(steps):
                    step, step_index = steps[i], i
                    state["lenders"][lender_id] = i + 1

            delay = self.config.decision_delay
            if script is not None and script.decision_delay is not None:
                delay = script.decision_delay
            if step is not None and step.delay is not None:
                delay = step.delay

            apr = self.config.apr_for(lender_id)
            outcome = (
                scripted_outcome(step, package, apr)
                if step is not None
                else underwriting.decide(package, apr)
            )
            ref = _new_id("app")
            now = time.time()
            due = now + delay
            requested = money(package.amount_requested)
            seq = 0
            if outcome is not None:
                stale_seq = None
                if step is not None and step.also_send_stale:
                    stale_seq, seq = 1, 2
                else:
                    seq = 1
                body = build_body(
                    DECIDED,
                    _decided_data(package.deal_id, ref, seq, outcome),
                    datetime.fromtimestamp(due, UTC),
                )
                self._enqueue(
                    lender_id=lender_id,
                    deal_id=package.deal_id,
                    ref=ref,
                    type=DECIDED,
                    body=body,
                    due_at=due,
                    copies=2 if step is not None and step.duplicate else 1,
                )
                if stale_seq is not None:
                    stale = stale_outcome(outcome, requested)
                    # Dated a second before the real decision: an older assessment.
                    stale_body = build_body(
                        DECIDED,
                        _decided_data(package.deal_id, ref, stale_seq, stale),
                        datetime.fromtimestamp(due - 1, UTC),
                    )
                    self._enqueue(
                        lender_id=lender_id,
                        deal_id=package.deal_id,
                        ref=ref,
                        type=DECIDED,
                        body=stale_body,
                        due_at=due,
                    )

            self.ledger.insert_application(
                {
                    "ref": ref,
                    "lender_id": lender_id,
                    "deal_id": package.deal_id,
                    "submission_no": package.submission_no,
                    "idempotency_key": key,
                    "body_hash": body_hash,
                    "body": package.model_dump_json(),
                    "amount_requested": str(requested),
                    "decision": outcome.decision.value if outcome is not None else "silent",
                    "decision_source": "script" if step is not None else "rules",
                    "script_step": step_index,
                    "approved_amount": (
                        None
                        if outcome is None or outcome.approved_amount is None
                        else str(money(outcome.approved_amount))
                    ),
                    "last_decision_seq": seq,
                    "created_at": iso(now),
                }
            )
            self._fire_extra(
                script,
                state,
                when="application",
                deal_id=package.deal_id,
                lender_id=lender_id,
                ref=ref,
                submission_no=package.submission_no,
                default_delay=delay,
            )
            if script is not None:
                self.ledger.save_script_state(package.deal_id, state)
            return ref, True

    def application_status(self, lender_id: str, ref: str) -> dict[str, Any]:
        self.lender(lender_id)
        app = self.ledger.get_application(lender_id, ref)
        if app is None:
            raise Problem(404, f"unknown application {ref!r} at lender {lender_id!r}")
        return {
            "application_ref": ref,
            "deal_id": app["deal_id"],
            "submission_no": app["submission_no"],
            "status": "withdrawn" if app["withdrawn"] else "received",
            "created_at": app["created_at"],
        }

    # ------------------------------------------------------------------ disbursements

    def request_disbursement(
        self, lender_id: str, ref: str, key: str, req: DisbursementRequestInput, body_hash: str
    ) -> tuple[str, bool]:
        self.lender(lender_id)
        with self.ledger.tx():
            existing = self.ledger.find_disbursement(lender_id, key)
            if existing is not None:
                if existing["body_hash"] != body_hash or existing["application_ref"] != ref:
                    raise Problem(
                        422,
                        f"Idempotency-Key {key!r} was already used with a different "
                        "disbursement request",
                    )
                return str(existing["request_id"]), False
            app = self.ledger.get_application(lender_id, ref)
            if app is None:
                raise Problem(404, f"unknown application {ref!r} at lender {lender_id!r}")
            if app["withdrawn"]:
                raise Problem(409, f"application {ref!r} was withdrawn")
            if app["decision"] in ("declined", "silent"):
                raise Problem(409, f"application {ref!r} was not approved")
            mismatch = [
                name
                for name, got, want in (
                    ("application_ref", req.application_ref, ref),
                    ("lender_id", req.lender_id, lender_id),
                    ("deal_id", req.deal_id, app["deal_id"]),
                )
                if got != want
            ]
            if mismatch:
                raise Problem(
                    422,
                    f"disbursement request does not match application {ref!r}: "
                    + ", ".join(mismatch),
                )

            script, state = self._script(app["deal_id"])
            step: DisbursementStep | None = None
            step_index: int | None = None
            if script is not None:
                i = int(state["disbursements"])
                if i < len(script.disbursements):
                    step, step_index = script.disbursements[i], i
                    state["disbursements"] = i + 1
            delay = self.config.decision_delay
            if script is not None and script.decision_delay is not None:
                delay = script.decision_delay
            if step is not None and step.delay is not None:
                delay = step.delay

            result = step.result if step is not None else "completed"
            now = time.time()
            due = now + delay
            at = datetime.fromtimestamp(due, UTC)
            event: tuple[str, dict[str, Any]] | None = None
            if result == "completed":
                amount = step.amount if step is not None and step.amount is not None else req.amount
                event = (
                    COMPLETED,
                    {
                        "deal_id": app["deal_id"],
                        "application_ref": ref,
                        "amount": str(money(amount)),
                        "transaction_ref": _new_id("txn"),
                        "disbursed_at": at.isoformat(),
                    },
                )
            elif result == "failed" and step is not None:
                event = (
                    FAILED,
                    {
                        "deal_id": app["deal_id"],
                        "application_ref": ref,
                        "reason": step.reason,
                    },
                )
            if event is not None:
                self._enqueue(
                    lender_id=lender_id,
                    deal_id=app["deal_id"],
                    ref=ref,
                    type=event[0],
                    body=build_body(event[0], event[1], at),
                    due_at=due,
                    copies=2 if step is not None and step.duplicate else 1,
                )
            request_id = _new_id("dsb")
            self.ledger.insert_disbursement(
                {
                    "request_id": request_id,
                    "lender_id": lender_id,
                    "deal_id": app["deal_id"],
                    "application_ref": ref,
                    "attempt": req.attempt,
                    "amount": str(money(req.amount)),
                    "idempotency_key": key,
                    "body_hash": body_hash,
                    "body": req.model_dump_json(),
                    "result": result,
                    "script_step": step_index,
                    "created_at": iso(now),
                }
            )
            self._fire_extra(
                script,
                state,
                when="disbursement",
                deal_id=app["deal_id"],
                lender_id=lender_id,
                ref=ref,
                submission_no=app["submission_no"],
                default_delay=delay,
            )
            if script is not None:
                self.ledger.save_script_state(app["deal_id"], state)
            return request_id, True

    # ------------------------------------------------------------------ withdrawals

    def withdraw(
        self, lender_id: str, ref: str, key: str, reason: str, body_hash: str
    ) -> dict[str, Any]:
        self.lender(lender_id)
        with self.ledger.tx():
            existing = self.ledger.find_withdrawal(lender_id, key)
            if existing is not None:
                if existing["body_hash"] != body_hash or existing["application_ref"] != ref:
                    raise Problem(
                        422,
                        f"Idempotency-Key {key!r} was already used with a different withdrawal",
                    )
                return self._withdrawal_reply(existing)
            app = self.ledger.get_application(lender_id, ref)
            if app is None:
                raise Problem(404, f"unknown application {ref!r} at lender {lender_id!r}")
            prior = self.ledger.withdrawal_of(lender_id, ref)
            if prior is not None:
                # Withdrawing a withdrawn application is a no-op, whatever the key.
                return self._withdrawal_reply(prior)
            now = iso(utcnow())
            row = {
                "withdrawal_id": _new_id("wdr"),
                "lender_id": lender_id,
                "deal_id": app["deal_id"],
                "application_ref": ref,
                "idempotency_key": key,
                "body_hash": body_hash,
                "reason": reason,
                "created_at": now,
            }
            self.ledger.insert_withdrawal(row)
            self.ledger.update_application(ref, withdrawn=1, withdrawn_at=now)
            # A withdrawn application sends no further decisions.
            self.ledger.cancel_webhooks(lender_id, ref, DECIDED)
            return self._withdrawal_reply(row)

    @staticmethod
    def _withdrawal_reply(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "application_ref": row["application_ref"],
            "withdrawal_id": row["withdrawal_id"],
            "status": "withdrawn",
            "withdrawn_at": row["created_at"],
        }

    # ------------------------------------------------------------------ scripts

    def put_script(self, deal_id: str, script: Script) -> dict[str, Any]:
        unknown = sorted(
            {*script.lenders, *(e.lender_id for e in script.extra_events if e.lender_id)}
            - set(self.config.lenders)
        )
        if unknown:
            raise Problem(422, f"script names unknown lenders: {', '.join(unknown)}")
        if any(e.when == "now" and not e.lender_id for e in script.extra_events):
            raise Problem(422, "an extra event with when='now' needs a lender_id")
        state = _fresh_state()
        with self.ledger.tx():
            self.ledger.put_script(deal_id, script.model_dump(mode="json"), state)
            self._fire_extra(
                script,
                state,
                when="now",
                deal_id=deal_id,
                lender_id=None,
                ref="-",
                submission_no=None,
                default_delay=(
                    script.decision_delay
                    if script.decision_delay is not None
                    else self.config.decision_delay
                ),
            )
            self.ledger.save_script_state(deal_id, state)
        return {"deal_id": deal_id, "script": script.model_dump(mode="json"), "state": state}

    def get_script(self, deal_id: str) -> dict[str, Any]:
        found = self.ledger.get_script(deal_id)
        if found is None:
            raise Problem(404, f"no script for deal {deal_id!r}")
        return {"deal_id": deal_id, "script": found[0], "state": found[1]}

    def delete_script(self, deal_id: str) -> None:
        with self.ledger.tx():
            self.ledger.delete_script(deal_id)


# --------------------------------------------------------------------------- app


def create_app(config: SimConfig) -> FastAPI:
    ledger = Ledger(config.db_path)
    sim = LenderSim(config, ledger)
    dispatcher = Dispatcher(config, ledger)
    faults = Faults()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ledger.open()
        await dispatcher.start()
        try:
            yield
        finally:
            await dispatcher.stop()
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

    async def run(fn: Callable[..., T], *args: Any) -> T:
        result = await asyncio.to_thread(fn, *args)
        dispatcher.wake()
        return result

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def guarded(
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

    @app.post("/lenders/{lender_id}/applications", status_code=202)
    async def submit_application(lender_id: str, request: Request) -> JSONResponse:
        sim.lender(lender_id)
        key = _idempotency_key(request)
        package, digest = _parse(ApplicationPackage, await request.body())

        async def handle() -> JSONResponse:
            ref, _ = await run(sim.submit_application, lender_id, key, package, digest)
            return JSONResponse({"application_ref": ref}, status_code=202)

        return await guarded("applications", lender_id, package.deal_id, handle)

    @app.get("/lenders/{lender_id}/applications/{ref}")
    async def application_status(lender_id: str, ref: str) -> dict[str, Any]:
        return await asyncio.to_thread(sim.application_status, lender_id, ref)

    @app.post("/lenders/{lender_id}/applications/{ref}/disbursement-requests", status_code=202)
    async def request_disbursement(lender_id: str, ref: str, request: Request) -> JSONResponse:
        sim.lender(lender_id)
        key = _idempotency_key(request)
        req, digest = _parse(DisbursementRequestInput, await request.body())

        async def handle() -> JSONResponse:
            request_id, _ = await run(sim.request_disbursement, lender_id, ref, key, req, digest)
            return JSONResponse({"request_id": request_id, "application_ref": ref}, status_code=202)

        return await guarded("disbursement-requests", lender_id, req.deal_id, handle)

    @app.post("/lenders/{lender_id}/applications/{ref}/withdrawal", status_code=202)
    async def withdraw(lender_id: str, ref: str, request: Request) -> JSONResponse:
        sim.lender(lender_id)
        key = _idempotency_key(request)
        body, digest = _parse(WithdrawalBody, await request.body())
        app_row = await asyncio.to_thread(ledger.get_application, lender_id, ref)

        async def handle() -> JSONResponse:
            reply = await run(sim.withdraw, lender_id, ref, key, body.reason, digest)
            return JSONResponse(reply, status_code=202)

        deal_id = str(app_row["deal_id"]) if app_row is not None else None
        return await guarded("withdrawal", lender_id, deal_id, handle)

    @app.put("/_sim/faults")
    async def put_faults(request: Request) -> dict[str, Any]:
        body, _ = _parse(FaultsBody, await request.body())
        faults.replace(body)
        return faults.snapshot()

    @app.post("/_sim/faults", status_code=201)
    async def add_fault(request: Request) -> dict[str, Any]:
        rule, _ = _parse(FaultRule, await request.body())
        return faults.add(rule)

    @app.get("/_sim/faults")
    async def get_faults(deal_id: str | None = None) -> dict[str, Any]:
        return faults.snapshot(deal_id)

    @app.get("/_sim/outbox")
    async def outbox() -> dict[str, int]:
        return await asyncio.to_thread(ledger.outbox_counts, time.time())

    @app.delete("/_sim/faults", status_code=204)
    async def delete_faults() -> Response:
        faults.clear()
        return Response(status_code=204)

    @app.put("/_sim/scripts/{deal_id}")
    async def put_script(deal_id: str, request: Request) -> dict[str, Any]:
        script, _ = _parse(Script, await request.body())
        return await run(sim.put_script, deal_id, script)

    @app.get("/_sim/scripts/{deal_id}")
    async def get_script(deal_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(sim.get_script, deal_id)

    @app.delete("/_sim/scripts/{deal_id}", status_code=204)
    async def delete_script(deal_id: str) -> Response:
        await asyncio.to_thread(sim.delete_script, deal_id)
        return Response(status_code=204)

    @app.get("/_sim/ledger")
    async def get_ledger(deal_id: str | None = None) -> dict[str, Any]:
        return await asyncio.to_thread(ledger.snapshot, deal_id)

    return app
