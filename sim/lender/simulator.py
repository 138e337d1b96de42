"""The simulated lender's request handling: applications, disbursement requests,
withdrawals and scripts. Methods are synchronous and run in a worker thread;
each is one ledger transaction."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

from dealflow.config import LenderConfig
from dealflow.models import ApplicationPackage, DisbursementRequest, money
from sim.lender import underwriting
from sim.lender.config import SimConfig
from sim.lender.delivery import build_body
from sim.lender.inbound import RepaymentBody
from sim.lender.ledger import Ledger, iso, utcnow
from sim.lender.problems import Problem
from sim.lender.scripts import (
    DecisionStep,
    DisbursementStep,
    Script,
    fresh_script_state,
    scripted_outcome,
    stale_outcome,
)
from sim.lender.webhook_events import COMPLETED, DECIDED, FAILED, decided_data


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


def _next_decision_step(
    script: Script | None, state: dict[str, Any], lender_id: str
) -> tuple[DecisionStep | None, int | None]:
    """The script's next answer to this lender's submission (consumed), if any is left."""
    if script is None:
        return None, None
    steps = script.lenders.get(lender_id, [])
    index = int(state["lenders"].get(lender_id, 0))
    if index >= len(steps):
        return None, None
    state["lenders"][lender_id] = index + 1
    return steps[index], index


def _next_disbursement_step(
    script: Script | None, state: dict[str, Any]
) -> tuple[DisbursementStep | None, int | None]:
    """The script's next answer to a disbursement request (consumed), if any is left."""
    if script is None:
        return None, None
    index = int(state["disbursements"])
    if index >= len(script.disbursements):
        return None, None
    state["disbursements"] = index + 1
    return script.disbursements[index], index


def _disbursement_event(
    app: dict[str, Any],
    ref: str,
    req: DisbursementRequest,
    step: DisbursementStep | None,
    result: str,
    at: datetime,
) -> tuple[str, dict[str, Any]] | None:
    """The webhook answering a disbursement request: (type, data), or None when silent."""
    echo = {"request_id": req.request_id} if req.request_id else {}
    if result == "completed":
        amount = step.amount if step is not None and step.amount is not None else req.amount
        return (
            COMPLETED,
            {
                "deal_id": app["deal_id"],
                "application_ref": ref,
                **echo,
                "amount": str(money(amount)),
                "transaction_ref": new_id("txn"),
                "disbursed_at": at.isoformat(),
            },
        )
    if result == "failed" and step is not None:
        return (
            FAILED,
            {
                "deal_id": app["deal_id"],
                "application_ref": ref,
                **echo,
                "reason": step.reason,
            },
        )
    return None


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
            return None, fresh_script_state()
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

    def _answer_delay(self, script: Script | None, step_delay: float | None) -> float:
        """Seconds until an answer's webhook: the step's, else the script's, else the config's."""
        delay = self.config.decision_delay
        if script is not None and script.decision_delay is not None:
            delay = script.decision_delay
        if step_delay is not None:
            delay = step_delay
        return delay

    # ------------------------------------------------------------------ applications

    def submit_application(
        self,
        lender_id: str,
        key: str,
        package: ApplicationPackage,
        fingerprint: str,
        body_hash: str,
    ) -> tuple[str, bool]:
        """Record an application and schedule its decision: (ref, newly created).

        A request under a key already used is the same application when its
        fingerprint matches (`inbound.application_fingerprint`: everything but
        the documents' links); else it is refused with 422. `body_hash`, the
        whole body's, matches rows recorded before the fingerprint existed."""
        self.lender(lender_id)
        documents = [d.model_dump(mode="json") for d in package.documents]
        with self.ledger.tx():
            existing = self.ledger.find_application(lender_id, key)
            if existing is not None:
                if existing["body_hash"] not in (fingerprint, body_hash):
                    raise Problem(
                        422,
                        f"Idempotency-Key {key!r} was already used with a different "
                        "application package",
                    )
                self.ledger.record_application_request(
                    lender_id=lender_id,
                    deal_id=package.deal_id,
                    ref=str(existing["ref"]),
                    key=key,
                    outcome="repeat",
                    documents=documents,
                )
                return str(existing["ref"]), False

            script, state = self._script(package.deal_id)
            step, step_index = _next_decision_step(script, state, lender_id)
            delay = self._answer_delay(script, step.delay if step is not None else None)
            apr = self.config.apr_for(lender_id)
            outcome = (
                scripted_outcome(step, package, apr)
                if step is not None
                else underwriting.decide(package, apr)
            )
            ref = new_id("app")
            now = time.time()
            seq = self._schedule_decision(lender_id, package, ref, outcome, step, due=now + delay)
            self.ledger.insert_application(
                {
                    "ref": ref,
                    "lender_id": lender_id,
                    "deal_id": package.deal_id,
                    "submission_no": package.submission_no,
                    "idempotency_key": key,
                    "body_hash": fingerprint,
                    "body": package.model_dump_json(),
                    "amount_requested": str(money(package.amount_requested)),
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
            self.ledger.record_application_request(
                lender_id=lender_id,
                deal_id=package.deal_id,
                ref=ref,
                key=key,
                outcome="created",
                documents=documents,
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

    def _schedule_decision(
        self,
        lender_id: str,
        package: ApplicationPackage,
        ref: str,
        outcome: underwriting.RuleDecision | None,
        step: DecisionStep | None,
        *,
        due: float,
    ) -> int:
        """Queue the decision's webhook (and a stale one when the step asks); its decision_seq,
        0 when the lender stays silent."""
        if outcome is None:
            return 0
        stale_seq = None
        if step is not None and step.also_send_stale:
            stale_seq, seq = 1, 2
        else:
            seq = 1
        body = build_body(
            DECIDED,
            decided_data(package.deal_id, ref, seq, outcome),
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
            stale = stale_outcome(outcome, money(package.amount_requested))
            # Dated a second before the real decision: an older assessment.
            stale_body = build_body(
                DECIDED,
                decided_data(package.deal_id, ref, stale_seq, stale),
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
        return seq

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
        self, lender_id: str, ref: str, key: str, req: DisbursementRequest, body_hash: str
    ) -> tuple[str, bool]:
        """Record a disbursement request and schedule its result: (request id, newly created)."""
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
            app = self._disbursable_application(lender_id, ref, req)
            script, state = self._script(app["deal_id"])
            step, step_index = _next_disbursement_step(script, state)
            delay = self._answer_delay(script, step.delay if step is not None else None)
            result = step.result if step is not None else "completed"
            now = time.time()
            due = now + delay
            at = datetime.fromtimestamp(due, UTC)
            event = _disbursement_event(app, ref, req, step, result, at)
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
            request_id = new_id("dsb")
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

    def funding_package_required(self, lender_id: str, deal_id: str) -> bool:
        """Whether this lender pays this deal out only against a funding package."""
        script, _ = self._script(deal_id)
        if script is not None and script.require_funding_package is not None:
            return script.require_funding_package
        return lender_id in self.config.funding_package_required

    def is_repeat_disbursement(self, lender_id: str, key: str) -> bool:
        return self.ledger.find_disbursement(lender_id, key) is not None

    def _disbursable_application(
        self, lender_id: str, ref: str, req: DisbursementRequest
    ) -> dict[str, Any]:
        """The application a disbursement request names: known, not withdrawn, approved, and
        matching the request; a Problem otherwise."""
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
                f"disbursement request does not match application {ref!r}: " + ", ".join(mismatch),
            )
        if self.lender(lender_id).mortgage_before_funding and not req.mortgage_registration_no:
            raise Problem(
                422,
                f"lender {lender_id!r} funds only once its mortgage is registered: the "
                "request names no mortgage_registration_no",
            )
        approved = app["approved_amount"]
        if approved is not None and money(req.amount) != money(approved):
            raise Problem(
                422,
                f"disbursement of {money(req.amount)} requested, but application {ref!r} "
                f"was approved for {money(approved)}",
            )
        if self.ledger.paid_out(lender_id, ref):
            raise Problem(409, f"application {ref!r} was already paid out")
        return app

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
                "withdrawal_id": new_id("wdr"),
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

    # ------------------------------------------------------------------ repayments

    def repay(
        self, lender_id: str, ref: str, key: str, body: RepaymentBody, body_hash: str
    ) -> dict[str, Any]:
        """Take back what was paid out on an application: exactly that amount,
        once per application; the same request again gets the same receipt."""
        self.lender(lender_id)
        with self.ledger.tx():
            existing = self.ledger.find_repayment(lender_id, key)
            if existing is not None:
                if existing["body_hash"] != body_hash or existing["application_ref"] != ref:
                    raise Problem(
                        422,
                        f"Idempotency-Key {key!r} was already used with a different repayment",
                    )
                return self._repayment_reply(existing)
            app = self.ledger.get_application(lender_id, ref)
            if app is None or app["deal_id"] != body.deal_id:
                raise Problem(404, f"unknown application {ref!r} at lender {lender_id!r}")
            prior = self.ledger.repayment_of(lender_id, ref)
            if prior is not None:
                # Repaid already, under another key: no second repayment.
                return self._repayment_reply(prior)
            self._repayable(app, ref, body)
            row = {
                "repayment_ref": new_id("rpy"),
                "lender_id": lender_id,
                "deal_id": app["deal_id"],
                "application_ref": ref,
                "idempotency_key": key,
                "body_hash": body_hash,
                "amount": str(money(body.amount)),
                "transaction_ref": body.transaction_ref,
                "reason": body.reason,
                "created_at": iso(utcnow()),
            }
            self.ledger.insert_repayment(row)
            return self._repayment_reply(row)

    def _repayable(self, app: dict[str, Any], ref: str, body: RepaymentBody) -> None:
        """A repayment names an application this lender funded and the amount it paid."""
        script, _ = self._script(app["deal_id"])
        if script is not None and script.repayment_refusal is not None:
            raise Problem(409, script.repayment_refusal)
        payout = self.ledger.payout_of(app["lender_id"], ref)
        if payout is None:
            raise Problem(409, f"application {ref!r} was never funded: nothing to repay")
        paid = money(payout["amount"])
        if money(body.amount) != paid:
            raise Problem(
                422,
                f"repayment of {money(body.amount)} does not match the {paid} paid out "
                f"on application {ref!r} (transaction {payout['transaction_ref']})",
            )

    @staticmethod
    def _repayment_reply(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "application_ref": row["application_ref"],
            "repayment_ref": row["repayment_ref"],
            "amount": row["amount"],
            "transaction_ref": row["transaction_ref"],
            "status": "repaid",
            "repaid_at": row["created_at"],
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
        state = fresh_script_state()
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
