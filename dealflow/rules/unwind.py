"""Unwinding a funded deal the customer rescinded before delivery
(docs/architecture.md §1, "Unwind after funding").

Every step done is undone, strictly newest first, one at a time: DealFlow
repays the lender and releases the vehicle itself; the other steps are done
by a person outside DealFlow and recorded with their evidence
(record-unwind-step), each by its role.
"""

from __future__ import annotations

from bisect import insort
from datetime import datetime

from dealflow.models import (
    UNWIND_STAFF_STEPS,
    Compensation,
    DealState,
    Disbursement,
    Role,
    fmt_money,
)

# Who does each step of an unwind that happens outside DealFlow.
UNWIND_STEP_ROLES: dict[str, Role] = {
    "release_mortgage": Role.REGISTRATION,
    "reverse_invoice": Role.FINANCE,
    "cancel_insurance": Role.INSURANCE,
    "refund_down_payment": Role.FINANCE,
}

_OPEN = ("pending", "running")


def funded_disbursement(state: DealState) -> Disbursement | None:
    """The disbursement the lender paid (or finance reconciled), if any."""
    return next((d for d in reversed(state.disbursements) if d.status == "completed"), None)


def next_unwind_step(compensations: list[Compensation]) -> Compensation | None:
    """The step to undo now: the newest one not yet done, refused or void."""
    return next((c for c in reversed(compensations) if c.status in _OPEN), None)


def is_staff_step(comp: Compensation) -> bool:
    return comp.kind in UNWIND_STAFF_STEPS


def register_step(compensations: list[Compensation], comp: Compensation) -> None:
    """Add a step in the order its fact was recorded (compensations run newest
    first). A mortgage release is undone after the repayment: the lender, as
    lienholder, consents to the release only once it has its money back."""
    insort(compensations, comp, key=lambda c: c.registered_at)
    kinds = [c.kind for c in compensations]
    if "release_mortgage" not in kinds or "repay_lender" not in kinds:
        return
    release, repay = kinds.index("release_mortgage"), kinds.index("repay_lender")
    if release > repay:
        compensations.insert(repay, compensations.pop(release))


def repayment_step(
    deal_id: str, lender_id: str, ref: str, paid: Disbursement, at: datetime
) -> Compensation:
    assert paid.amount is not None and paid.transaction_ref is not None
    return Compensation(
        kind="repay_lender",
        key=f"{deal_id}:repay_lender",
        registered_at=at,
        detail={
            "lender_id": lender_id,
            "application_ref": ref,
            "amount": str(paid.amount),
            "transaction_ref": paid.transaction_ref,
        },
    )


def describe_step(comp: Compensation) -> str:
    """What a person (or DealFlow) must do to undo one step."""
    d = comp.detail
    match comp.kind:
        case "repay_lender":
            return (
                f"repay {d.get('lender_id', 'the lender')} "
                f"{fmt_money(d.get('amount', '0'))} (transaction {d.get('transaction_ref', '')})"
            )
        case "release_mortgage":
            return f"release the mortgage registration {d.get('registration_no', '')}".strip()
        case "reverse_invoice":
            return f"issue the red-letter invoice reversing invoice {d.get('invoice_no', '')}"
        case "cancel_insurance":
            return f"cancel policy {d.get('policy_no', '')} with {d.get('insurer', 'the insurer')}"
        case "refund_down_payment":
            return f"refund the down payment of {fmt_money(d.get('amount', '0'))}"
        case "release_vehicle":
            return f"release vehicle {d.get('vin', '')}"
        case _:
            return f"withdraw application {d.get('application_ref', '')}"


def unwind_step_problem(state: DealState, step: str, actor_role: Role) -> str | None:
    """Why a staff step of the unwind cannot be recorded now (None: it can).
    Returns "forbidden: ..." for the wrong role."""
    comps = [c for c in state.compensations if c.kind == step]
    if not comps:
        return f"conflict: this deal has no {step} to undo"
    comp = comps[-1]
    if comp.status == "done":
        return (
            f"conflict: {step} is already recorded ({comp.evidence} by {comp.done_by} "
            f"at {comp.done_at.isoformat() if comp.done_at else '?'})"
        )
    if comp.status in ("void", "refused"):
        return f"conflict: {step} is {comp.status}; there is nothing to record"
    owner = UNWIND_STEP_ROLES[step]
    if actor_role not in (owner, Role.ADMIN):
        return f"forbidden: {step} is recorded by {owner.value}, not {actor_role.value}"
    nxt = next_unwind_step(state.compensations)
    if nxt is not comp:
        who = UNWIND_STEP_ROLES.get(nxt.kind) if nxt else None
        by = who.value if who else "DealFlow"
        what = describe_step(nxt) if nxt else "nothing"
        return (
            f"conflict: {step} is not next: steps are undone newest first; "
            f"next is {nxt.kind if nxt else '-'} ({what}), by {by}"
        )
    return None
