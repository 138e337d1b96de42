"""What a deal waits for, for whom, by when: the desk's to-do list."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from dealflow.models import Action, DocumentKind, PendingAction, Role, Stage, fmt_money
from dealflow.rules.documents import checklist_complete, describe_missing
from dealflow.rules.funding import funding_uploader, is_funding_document
from dealflow.rules.money import required_down_payment
from dealflow.rules.permissions import ACTION_ROLES
from dealflow.rules.schedule import loan_schedule
from dealflow.rules.stipulations import candidates, collecting
from dealflow.rules.unwind import UNWIND_STEP_ROLES, describe_step, is_staff_step, next_unwind_step
from dealflow.rules.view import DealView, follow_up_due, stalled_disbursement

# Whose desk an action lands on when several roles may take it (docs/architecture.md §1,
# "who acts"): the customer's documents are collected by sales.
_OWNER: dict[Action, Role] = {
    Action.RECORD_DOCUMENT: Role.SALES,
    Action.CANCEL: Role.SALES,
    Action.UNWIND: Role.FINANCE,
}


def owner_role(action: Action) -> Role:
    return _OWNER.get(action) or sorted(ACTION_ROLES[action])[0]


def document_uploader(kind: DocumentKind) -> Role:
    """Whose desk an upload of `kind` lands on: a funding document's own team,
    the customer's documents sales."""
    return (
        funding_uploader(kind) if is_funding_document(kind) else owner_role(Action.RECORD_DOCUMENT)
    )


def pending_actions(view: DealView, due: datetime | None) -> list[PendingAction]:
    """What the deal waits for, for whom, by when."""
    list_for_stage = _BY_STAGE.get(view.state.stage)
    return list_for_stage(view, due) if list_for_stage is not None else []


def _staff(action: Action, what: str, due: datetime | None) -> PendingAction:
    return PendingAction(action=action.value, role=owner_role(action), what=what, due=due)


def _lender(action: str, what: str, due: datetime | None) -> PendingAction:
    # Nobody can act for the lender; credit answers for the deal while it waits.
    return PendingAction(action=action, role=Role.CREDIT, what=what, due=due)


def _contract(view: DealView, due: datetime | None) -> list[PendingAction]:
    what = "sign the sales contract and route the three copies"
    return [_staff(Action.SIGN_SALES_CONTRACT, what, due)]


def _documents(view: DealView, due: datetime | None) -> list[PendingAction]:
    items = view.checklist()
    # The lender's conditions that are no documents wait for credit's note.
    conditions = [
        _staff(
            Action.ANSWER_STIPULATION,
            f"answer the lender's condition {item.code}: {item.description}",
            due,
        )
        for item in candidates(Action.ANSWER_STIPULATION, collecting(view.state))
    ]
    if conditions and checklist_complete(items):
        return conditions
    return [_staff(Action.RECORD_DOCUMENT, "collect: " + describe_missing(items), due), *conditions]


def _application(view: DealView, due: datetime | None) -> list[PendingAction]:
    return [_staff(Action.SUBMIT_APPLICATION, "complete the loan application form", due)]


def _underwriting(view: DealView, due: datetime | None) -> list[PendingAction]:
    if view.open_counter_offer() is not None:
        return [_staff(Action.ACCEPT_COUNTER_OFFER, "answer the lender's counter-offer", due)]
    return [_lender("lender-decision", "waiting for the lender's decision", due)]


def _down_payment(view: DealView, due: datetime | None) -> list[PendingAction]:
    amount = required_down_payment(view.deal, view.approved_amount)
    what = f"receive the down payment of {fmt_money(amount)}"
    return [_staff(Action.CONFIRM_DOWN_PAYMENT, what, due)]


def _invoicing(view: DealView, due: datetime | None) -> list[PendingAction]:
    what = "issue the invoice and file the certificate request"
    return [_staff(Action.RECORD_INVOICE, what, due)]


def _insurance(view: DealView, due: datetime | None) -> list[PendingAction]:
    what = f"bind the policy with {view.lender_legal_name} as first beneficiary"
    return [_staff(Action.RECORD_INSURANCE, what, due)]


def _loan_contract(view: DealView, due: datetime | None) -> list[PendingAction]:
    state = view.state
    steps: list[tuple[object | None, Action, str]] = [
        (
            state.repayment_account,
            Action.RECORD_REPAYMENT_ACCOUNT,
            "open the repayment bank account",
        ),
        (state.loan_contract, Action.SIGN_LOAN_CONTRACT, "sign the loan contract in three copies"),
    ]
    terms = view.approved_terms
    if view.terms_confirmation and terms is not None:
        schedule = loan_schedule(terms)
        what = (
            f"have the customer confirm {terms.apr}% a year over {terms.term_months} months "
            f"({terms.method.value}): {fmt_money(schedule.first_payment)} first, "
            f"{fmt_money(schedule.total_repayable)} in all"
        )
        steps.insert(1, (state.loan_terms_confirmed, Action.CONFIRM_LOAN_TERMS, what))
    pending = [_staff(action, what, due) for done, action, what in steps if done is None]
    return pending + _funding_documents(view, due)


def _funding_documents(view: DealView, due: datetime | None) -> list[PendingAction]:
    """The funding package's missing documents, each on its uploader's desk."""
    return [
        PendingAction(
            action=Action.RECORD_DOCUMENT.value,
            role=item.role,
            what=f"upload the {item.label} ({item.kind.value}) for the funding package",
            due=due,
        )
        for item in view.funding()
        if not item.satisfied
    ]


def _disbursement(view: DealView, due: datetime | None) -> list[PendingAction]:
    stalled = stalled_disbursement(view.state)
    if stalled is None:
        return [_lender("lender-disbursement", "waiting for the lender's disbursement", due)]
    why = stalled.mismatch or stalled.failure_reason or stalled.status
    return [
        _staff(Action.RETRY_DISBURSEMENT, f"disbursement stalled ({why}): request it again", due),
        _staff(Action.RECONCILE_DISBURSEMENT, "or record what the lender actually paid", due),
        _staff(Action.UNWIND, "or unwind the deal", due),
    ]


def _registration(view: DealView, due: datetime | None) -> list[PendingAction]:
    state = view.state
    steps = [
        (state.certificate, Action.RECORD_CERTIFICATE, "receive the certificate of conformity"),
        (state.purchase_tax, Action.RECORD_PURCHASE_TAX, "pay the purchase tax"),
        (state.plate, Action.RECORD_PLATE, "register the plate"),
        (
            state.mortgage,
            Action.RECORD_MORTGAGE,
            "register the mortgage for the lender (it funds once registered)"
            if view.mortgage_before_funding and not view.funded
            else "register the mortgage for the lender",
        ),
    ]
    return [_staff(action, what, due) for done, action, what in steps if done is None]


def _delivery(view: DealView, due: datetime | None) -> list[PendingAction]:
    state = view.state
    steps = [
        (state.stock_out, Action.RECORD_STOCK_OUT, "fill in the stock-out form"),
        (state.settlement, Action.RECORD_SETTLEMENT, "final settlement with finance"),
    ]
    pending = [_staff(action, what, due) for done, action, what in steps if done is None]
    return [*pending, _staff(Action.DELIVER, "hand the vehicle over", due)]


def _follow_up(view: DealView, due: datetime | None) -> list[PendingAction]:
    state = view.state
    if state.delivered_at is None:
        return []
    return [
        _staff(Action.RECORD_FOLLOW_UP, f"{call} follow-up call", follow_up_due(view, call))
        for call in ("day3", "day30")
        if call not in state.follow_ups
    ]


def _unwinding(view: DealView, due: datetime | None) -> list[PendingAction]:
    step = next_unwind_step(view.state.compensations)
    if step is None:
        return []
    what = describe_step(step)
    if is_staff_step(step):
        return [
            PendingAction(
                action=Action.RECORD_UNWIND_STEP.value,
                role=UNWIND_STEP_ROLES[step.kind],
                what=f"unwind: {what}, and record the evidence ({step.kind})",
                due=due,
            )
        ]
    if step.kind == "repay_lender":
        # DealFlow pays the lender back; finance answers for the money.
        return [
            PendingAction(
                action="lender-repayment",
                role=Role.FINANCE,
                what=f"unwind: waiting for the lender to confirm: {what}",
                due=due,
            )
        ]
    return []


_BY_STAGE: dict[Stage, Callable[[DealView, datetime | None], list[PendingAction]]] = {
    Stage.CONTRACT: _contract,
    Stage.DOCUMENTS: _documents,
    Stage.APPLICATION: _application,
    Stage.UNDERWRITING: _underwriting,
    Stage.DOWN_PAYMENT: _down_payment,
    Stage.INVOICING: _invoicing,
    Stage.INSURANCE: _insurance,
    Stage.LOAN_CONTRACT: _loan_contract,
    Stage.DISBURSEMENT: _disbursement,
    Stage.REGISTRATION: _registration,
    Stage.DELIVERY: _delivery,
    Stage.FOLLOW_UP: _follow_up,
    Stage.UNWINDING: _unwinding,
}
