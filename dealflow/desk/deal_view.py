"""What the deal page shows, computed from the deal's status and application:
the stage bar with the time spent in each stage, the money with the loan's
ratio, terms and repayment schedule, the customer as the role may see them,
the document checklist per party, and the actions on offer. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel

from dealflow import rules
from dealflow.api.routes.deals import ACTION_BODIES, body_model
from dealflow.desk.forms import ActionForm, form_fields
from dealflow.models import (
    STAGE_ORDER,
    Action,
    ChecklistItem,
    Compensation,
    DealInput,
    DealStatus,
    DocumentRecord,
    FundingItem,
    Instalment,
    LoanSchedule,
    MoneySummary,
    Party,
    PendingAction,
    Role,
    Stage,
    StipulationChange,
    StipulationItem,
    fmt_money,
)
from dealflow.samples import EXAMPLES, example_action

# --------------------------------------------------------------------------- stages

StepState = Literal["done", "current", "ahead"]


@dataclass(frozen=True)
class StageStep:
    stage: Stage
    state: StepState
    # Time spent in the stage, every visit added up (None for an outcome reached).
    spent: timedelta | None
    visits: int


def time_in_stages(status: DealStatus, now: datetime) -> dict[Stage, timedelta]:
    """How long the deal has been in each stage it entered, visits added up;
    the current stage counts until `now` (an outcome is not a stay)."""
    spent: dict[Stage, timedelta] = {}
    moves = sorted(status.transitions, key=lambda move: move.at)
    for move, after in zip(moves, [*moves[1:], None], strict=True):
        if move.to_stage.terminal:
            continue
        left = after.at if after is not None else now
        spent[move.to_stage] = spent.get(move.to_stage, timedelta()) + max(
            left - move.at, timedelta()
        )
    return spent


def process_order(status: DealStatus) -> list[Stage]:
    """The stages in the order this deal goes through them: a lender that
    funds once its mortgage is registered has registration first."""
    order = list(STAGE_ORDER)
    if status.mortgage_before_funding:
        at = order.index(Stage.DISBURSEMENT)
        order[at], order[at + 1] = Stage.REGISTRATION, Stage.DISBURSEMENT
    return order


def stage_bar(status: DealStatus, now: datetime) -> tuple[list[StageStep], list[StageStep]]:
    """The working stages in order, then the outcomes, each marked done,
    current or ahead, with the time spent in it."""
    spent = time_in_stages(status, now)
    visits: dict[Stage, int] = {}
    for move in status.transitions:
        visits[move.to_stage] = visits.get(move.to_stage, 0) + 1

    def step(stage: Stage) -> StageStep:
        state: StepState = (
            "current" if stage is status.stage else "done" if stage in visits else "ahead"
        )
        return StageStep(stage, state, spent.get(stage), visits.get(stage, 0))

    # Unwinding is off the happy path: shown only for a deal that went there.
    path = [
        step(stage)
        for stage in process_order(status)
        if not stage.terminal and (stage is not Stage.UNWINDING or stage in visits)
    ]
    outcomes = [step(stage) for stage in STAGE_ORDER if stage.terminal]
    return path, outcomes


# --------------------------------------------------------------------------- money


@dataclass(frozen=True)
class Terms:
    """The lender's terms the deal goes ahead on."""

    lender_id: str
    decision: str
    approved_amount: Decimal | None
    apr: Decimal | None
    term_months: int | None


@dataclass(frozen=True)
class MoneyView:
    summary: MoneySummary
    # Amount financed ÷ vehicle price, in percent (rules.loan_to_value).
    loan_to_value: Decimal | None
    terms: Terms | None
    schedule: list[Instalment]
    # The approved terms' schedule with its totals and the customer's confirmation.
    loan: LoanSchedule | None = None

    @property
    def schedule_rows(self) -> list[tuple[int, str, str, str, str]]:
        """The schedule's amounts as the table shows them: grouped, two places
        (the same in both languages; formatting each per locale would cost more
        than the rest of the page)."""
        return [
            (
                row.number,
                fmt_money(row.payment),
                fmt_money(row.interest),
                fmt_money(row.principal),
                fmt_money(row.balance),
            )
            for row in self.schedule
        ]


def money_view(status: DealStatus) -> MoneyView:
    summary = status.money
    ratio = (
        rules.loan_to_value(summary.amount_financed, summary.vehicle_price)
        if summary.vehicle_price > 0
        else None
    )
    approved = rules.approved_submission(status.submissions)
    terms = None
    if approved is not None and approved.current is not None:
        decision = approved.current
        terms = Terms(
            approved.lender_id,
            decision.decision.value,
            decision.approved_amount,
            decision.apr,
            decision.term_months,
        )
    schedule = status.loan.instalments if status.loan is not None else []
    return MoneyView(summary, ratio, terms, schedule, status.loan)


# --------------------------------------------------------------------------- customer


@dataclass(frozen=True)
class PersonView:
    party: Party
    full_name: str
    id_number: str  # masked: only the last four characters show
    phone: str


def mask_id_number(number: str) -> str:
    """All but the last four characters hidden: enough to tell two customers apart."""
    return "•" * max(len(number) - 4, 0) + number[-4:]


# ID numbers (15 or 18 characters, the last maybe X) and bank account numbers
# (12 to 19 digits) in free text.
_LONG_NUMBER = re.compile(r"\b\d{11,18}[\dXx]\b")


def mask_numbers(text: str) -> str:
    """`text` with every ID or account number masked but its last four characters."""
    return _LONG_NUMBER.sub(lambda found: mask_id_number(found.group(0)), text)


def customer_view(deal: DealInput, show_names: bool) -> list[PersonView]:
    """The applicant (and spouse) for a role that may see customers' names; no one else."""
    if not show_names:
        return []
    customer = deal.customer
    people: list[tuple[Party, Any]] = [(Party.APPLICANT, customer.applicant)]
    if customer.spouse is not None:
        people.append((Party.SPOUSE, customer.spouse))
    return [
        PersonView(party, person.full_name, mask_id_number(person.id_number), person.phone)
        for party, person in people
    ]


# --------------------------------------------------------------------------- documents


@dataclass(frozen=True)
class ChecklistRow:
    item: ChecklistItem
    documents: list[DocumentRecord]


@dataclass(frozen=True)
class PartyChecklist:
    party: Party
    rows: list[ChecklistRow]


def _documents_for(
    item: ChecklistItem, documents: Iterable[DocumentRecord]
) -> list[DocumentRecord]:
    return [
        doc
        for doc in documents
        if doc.kind is item.kind
        and doc.party is item.party
        and (item.stipulation_code is None or doc.stipulation_code == item.stipulation_code)
    ]


def checklist_by_party(status: DealStatus) -> tuple[list[PartyChecklist], list[DocumentRecord]]:
    """The checklist per party with the documents recorded for each item, and
    the documents no item asks for."""
    groups: list[PartyChecklist] = []
    matched: set[str] = set()
    for party in Party:
        rows = [
            ChecklistRow(item, _documents_for(item, status.documents))
            for item in status.checklist
            if item.party is party
        ]
        if rows:
            groups.append(PartyChecklist(party, rows))
        matched |= {doc.doc_id for row in rows for doc in row.documents}
    return groups, documents_outside_the_lists(status, matched)


@dataclass(frozen=True)
class FundingRow:
    """One document of the funding package as the documents region shows it."""

    item: FundingItem
    # The earlier uploads of its kind, replaced by the one the package carries.
    replaced: list[DocumentRecord]


def funding_rows(status: DealStatus) -> list[FundingRow]:
    return [
        FundingRow(
            item,
            [
                doc
                for doc in status.documents
                if doc.kind is item.kind and item.document and doc.doc_id != item.document.doc_id
            ],
        )
        for item in status.funding
    ]


def documents_outside_the_lists(status: DealStatus, matched: set[str]) -> list[DocumentRecord]:
    """The documents neither the checklist nor the funding package shows."""
    funding = {item.kind for item in status.funding}
    return [d for d in status.documents if d.doc_id not in matched and d.kind not in funding]


def stipulations_met(status: DealStatus) -> dict[str, bool]:
    """Stipulation code → whether a document satisfying it is on file (deals
    whose conditions came before their lifecycle; see `conditions`)."""
    return {
        item.stipulation_code: item.satisfied
        for item in status.checklist
        if item.stipulation_code is not None
    }


@dataclass(frozen=True)
class ConditionRow:
    """One lender condition as the lenders region shows it."""

    item: StipulationItem
    # What answers it: the document (file name) or the staff note.
    answer: str
    last: StipulationChange | None


def conditions(status: DealStatus) -> dict[int, list[ConditionRow]]:
    """Submission number → its conditions, with what answers each and the last
    change (who, when, why)."""
    rows: dict[int, list[ConditionRow]] = {}
    for item in status.stipulations:
        answer = rules.answered_by(item, status.documents) if item.doc_id or item.note else ""
        last = item.changes[-1] if item.changes else None
        rows.setdefault(item.submission_no, []).append(ConditionRow(item, answer, last))
    return rows


def answering(status: DealStatus) -> list[StipulationItem]:
    """The conditions the deal is answering now (in DOCUMENTS, before the
    resubmission carries them)."""
    return rules.unsent(status.stipulations) if status.stage is Stage.DOCUMENTS else []


# --------------------------------------------------------------------------- actions

PanelKind = Literal["form", "upload", "lender", "not-yours", "gone"]

# Actions a deal offers beside its pending ones: the other answer to a
# counter-offer, and cancelling (until the disbursement is requested).
COMPANIONS: dict[Action, tuple[Action, str]] = {
    Action.ACCEPT_COUNTER_OFFER: (
        Action.DECLINE_COUNTER_OFFER,
        "decline the lender's counter-offer",
    ),
}
ALWAYS_OFFERED: tuple[tuple[Action, str], ...] = (
    (Action.CANCEL, "cancel the deal (possible until the disbursement is requested)"),
)


@dataclass
class ActionPanel:
    """One action on the deal page: a form for a role that may take it, else
    what it is and whose it is."""

    action: str
    what: str
    owner: Role
    due: datetime | None
    kind: PanelKind
    optional: bool = False
    form: ActionForm | None = None
    # Why the last post of this action was refused (a panel without a form).
    detail: str = ""


def _known_action(name: str) -> Action | None:
    try:
        return Action(name)
    except ValueError:
        return None


def offered(status: DealStatus) -> list[tuple[PendingAction, bool]]:
    """The actions the deal offers now, once each (pending first), and whether
    each is optional (not waited for)."""
    found: dict[str, tuple[PendingAction, bool]] = {}
    for pending in status.pending:
        if pending.action in found:
            first, _ = found[pending.action]
            merged = first.model_copy(update={"what": f"{first.what}; {pending.what}"})
            found[pending.action] = (merged, False)
            continue
        found[pending.action] = (pending, False)
        action = _known_action(pending.action)
        if action in COMPANIONS:
            other, what = COMPANIONS[action]
            owner = rules.owner_role(other)
            companion = PendingAction(action=other, role=owner, what=what, due=pending.due)
            found.setdefault(other.value, (companion, False))
    for action, what in condition_steps(status):
        if action.value not in found:
            owner = rules.owner_role(action)
            found[action.value] = (PendingAction(action=action, role=owner, what=what), True)
    if _unwindable(status) and Action.UNWIND.value not in found:
        what = "unwind the deal: the customer rescinded after funding, before delivery"
        owner = rules.owner_role(Action.UNWIND)
        found[Action.UNWIND.value] = (
            PendingAction(action=Action.UNWIND, role=owner, what=what),
            True,
        )
    for action, what in ALWAYS_OFFERED:
        if status.stage in rules.ACTION_STAGES[action] and action.value not in found:
            owner = rules.owner_role(action)
            found[action.value] = (PendingAction(action=action, role=owner, what=what), True)
    return list(found.values())


def _unwindable(status: DealStatus) -> bool:
    """Funded and not delivered: the facts the unwind rule reads."""
    funded = any(d.status == "completed" for d in status.disbursements)
    return funded and status.stage in (Stage.REGISTRATION, Stage.DELIVERY)


@dataclass(frozen=True)
class UnwindRow:
    """One step of an unwind, in the order it is undone."""

    step: Compensation
    what: str
    owner: Role | None


def unwind_steps(status: DealStatus) -> list[UnwindRow]:
    """The steps of an unwind after funding, newest first (none unless the
    deal went into UNWINDING); who does each (None: DealFlow itself)."""
    if not any(t.to_stage is Stage.UNWINDING for t in status.transitions):
        return []
    return [
        UnwindRow(step, rules.describe_step(step), rules.UNWIND_STEP_ROLES.get(step.kind))
        for step in reversed(status.compensations)
        if step.status != "void"
    ]


def _unwind_step_known(status: DealStatus) -> dict[str, str]:
    step = rules.next_unwind_step(status.compensations)
    return {"step": step.kind} if step is not None and rules.is_staff_step(step) else {}


_CONDITION_STEPS: dict[Action, str] = {
    Action.ANSWER_STIPULATION: "answer with a note",
    Action.CLEAR_STIPULATION: "clear what answers it",
    Action.WAIVE_STIPULATION: "waive, with the reason",
    Action.REJECT_STIPULATION_DOCUMENT: "reject its document, with the reason",
}


def condition_steps(status: DealStatus) -> list[tuple[Action, str]]:
    """The steps credit may take on the conditions the deal is answering, each
    with the conditions it fits (the rules' own test)."""
    items = answering(status)
    steps = []
    for action, what in _CONDITION_STEPS.items():
        fits = rules.candidates(action, items)
        if fits:
            steps.append((action, f"{what}: " + ", ".join(item.code for item in fits)))
    return steps


def condition_code(status: DealStatus, action: Action) -> str | None:
    """The one condition a step fits, to fill in its form (None: several or none)."""
    if action not in rules.STIPULATION_ACTIONS:
        return None
    fits = rules.candidates(action, answering(status))
    return fits[0].code if len(fits) == 1 else None


@cache
def action_model(action: Action) -> type[BaseModel]:
    """The form's model: the API body of the action (its input without `actor`)."""
    return ACTION_BODIES.get(action) or body_model(action)


def new_form(action: Action, today: date, known: dict[str, str] | None = None) -> ActionForm:
    """An empty form for `action`, its example's values as placeholders, the
    fields the deal itself answers (`known`) filled in."""
    has_example = (EXAMPLES / "actions" / f"{action.value}.json").exists()
    example = example_action(action.value, today) if has_example else {}
    fields = form_fields(action_model(action), example)
    names = {item.name for item in fields}
    initial = {name: value for name, value in (known or {}).items() if name in names}
    return ActionForm(action.value, fields, initial=initial)


def known_values(status: DealStatus) -> dict[str, str]:
    """Field values the deal itself answers, whatever action asks for them:
    which application and which of its decisions an answer is about. (Amounts
    are never filled in: typing them is the clerk's check of the paperwork.)"""
    if not status.submissions:
        return {}
    submission = status.submissions[-1]
    known: dict[str, str] = {}
    if submission.application_ref:
        known["application_ref"] = submission.application_ref
    if submission.current is not None:
        known["decision_seq"] = str(submission.current.decision_seq)
    return known


def _known_for(status: DealStatus, action: str, known: dict[str, str]) -> dict[str, str]:
    """The deal's known values, and the condition a step on conditions fits
    when it fits one only."""
    step = _known_action(action)
    if step is Action.RECORD_UNWIND_STEP:
        return {**known, **_unwind_step_known(status)}
    code = condition_code(status, step) if step is not None else None
    return {**known, "code": code} if code is not None else known


def _panel(
    pending: PendingAction,
    optional: bool,
    may: Callable[[frozenset[Role]], bool],
    today: date,
    known: dict[str, str],
) -> ActionPanel:
    panel = ActionPanel(pending.action, pending.what, pending.role, pending.due, "lender")
    panel.optional = optional
    action = _known_action(pending.action)
    if action is None:
        return panel  # the lender's move: nobody at the desk can make it
    # Each step of an unwind is its own role's (the pending action names it).
    roles = (
        frozenset({pending.role})
        if action is Action.RECORD_UNWIND_STEP
        else rules.ACTION_ROLES[action]
    )
    if not may(roles):
        panel.kind = "not-yours"
    elif action is Action.RECORD_DOCUMENT:
        panel.kind = "upload"
    else:
        panel.kind = "form"
        panel.form = new_form(action, today, known)
    return panel


def action_panels(
    status: DealStatus,
    may: Callable[[frozenset[Role]], bool],
    today: date,
    posted: ActionForm | None = None,
    shown: Iterable[str] = (),
) -> list[ActionPanel]:
    """The panels of the actions on offer for a user (`may(roles)`: whether
    they may act for those roles); `posted` is the form just refused, kept as
    typed; an action in `shown` (the page's) that is no longer on offer, or
    the refused one, says so."""
    known = known_values(status)
    panels = [
        _panel(pending, optional, may, today, _known_for(status, pending.action, known))
        for pending, optional in offered(status)
    ]
    names = {panel.action for panel in panels}
    gone = [name for name in shown if name not in names and _known_action(name) is not None]
    if posted is not None and posted.action not in names and posted.action not in gone:
        gone.append(posted.action)
    for name in gone:
        panels.append(ActionPanel(name, "", rules.owner_role(Action(name)), None, "gone"))
    if posted is not None:
        for panel in panels:
            if panel.action != posted.action:
                continue
            if panel.kind == "form":
                panel.form = posted
            else:
                # No form to mark: the refusal says it all, field by field.
                marks = [f"{name}: {message}" for name, message in posted.errors.items()]
                panel.detail = "; ".join([posted.detail, *marks])
    return panels


def signature(panels: Iterable[ActionPanel]) -> str:
    """The actions a page shows forms or notices for, as the live poll sends them back."""
    return ",".join(sorted({panel.action for panel in panels if panel.kind != "gone"}))
