"""Per-deal scripts: how the simulated lender answers a deal's submissions and
disbursement requests, instead of its underwriting rules (PUT /_sim/scripts/{deal_id})."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dealflow.models import ApplicationPackage, Decision, Money, Reason, Stipulation, money
from sim.lender import underwriting
from sim.lender.webhook_events import DECIDED

Delay = Annotated[float, Field(ge=0, le=3600)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DecisionStep(_Strict):
    """How the lender answers one submission of the deal. A conditional one
    may name several stipulations, each a document (the default) or, with
    `"kind": "condition"`, a condition that is no document."""

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
    # Pay out only against a funding package (unset: as the lender is configured).
    require_funding_package: bool | None = None
    decision_delay: Delay | None = None
    extra_events: list[ExtraEvent] = Field(default_factory=list)
    # Refuse a repayment of this deal (409) with this reason: a lender
    # disputing an unwind.
    repayment_refusal: Annotated[str, Field(min_length=1, max_length=500)] | None = None


def fresh_script_state() -> dict[str, Any]:
    return {"lenders": {}, "disbursements": 0, "extra_fired": []}


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
    # A document stipulation goes out without a `kind`, as lenders sent them
    # before the field existed (DealFlow reads it as a document); one that is
    # no document says "kind": "condition".
    stips = [s.model_dump(exclude_defaults=True) for s in step.stipulations]
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
