"""Who may take each staff action, and in which stages."""

from __future__ import annotations

from collections.abc import Iterable

from dealflow.models import (
    STAGE_ORDER,
    Action,
    Actor,
    DealStatus,
    DocumentKind,
    DocumentRecord,
    Role,
    Stage,
)
from dealflow.rules.errors import RuleError, conflict

# Who records each document: the customer's documents, sales and credit, who
# collect them; each document of the funding package, the team whose step it
# evidences (docs/architecture.md, "the funding package").
_FUNDING_DOCUMENT_ROLES: dict[DocumentKind, frozenset[Role]] = {
    DocumentKind.SIGNED_LOAN_CONTRACT: frozenset({Role.CREDIT}),
    DocumentKind.INSURANCE_POLICY_PAGE: frozenset({Role.INSURANCE}),
    DocumentKind.VEHICLE_INVOICE: frozenset({Role.FINANCE}),
}
DOCUMENT_ROLES: dict[DocumentKind, frozenset[Role]] = {
    kind: _FUNDING_DOCUMENT_ROLES.get(kind, frozenset({Role.SALES, Role.CREDIT}))
    for kind in DocumentKind
}

# Who may do what: the one permission table (README shows it). `admin` may do
# everything; `auditor` only reads.
ACTION_ROLES: dict[Action, frozenset[Role]] = {
    Action.SIGN_SALES_CONTRACT: frozenset({Role.SALES}),
    Action.RECORD_DOCUMENT: frozenset().union(*DOCUMENT_ROLES.values()),
    Action.SUBMIT_APPLICATION: frozenset({Role.CREDIT}),
    Action.ACCEPT_COUNTER_OFFER: frozenset({Role.CREDIT}),
    Action.DECLINE_COUNTER_OFFER: frozenset({Role.CREDIT}),
    Action.CONFIRM_DOWN_PAYMENT: frozenset({Role.FINANCE}),
    Action.RECORD_INVOICE: frozenset({Role.FINANCE}),
    Action.RECORD_INSURANCE: frozenset({Role.INSURANCE}),
    Action.RECORD_REPAYMENT_ACCOUNT: frozenset({Role.CREDIT}),
    Action.CONFIRM_LOAN_TERMS: frozenset({Role.CREDIT}),
    Action.SIGN_LOAN_CONTRACT: frozenset({Role.CREDIT}),
    Action.RECORD_CERTIFICATE: frozenset({Role.REGISTRATION}),
    Action.RECORD_PURCHASE_TAX: frozenset({Role.REGISTRATION}),
    Action.RECORD_PLATE: frozenset({Role.REGISTRATION}),
    Action.RECORD_MORTGAGE: frozenset({Role.REGISTRATION}),
    Action.RECORD_STOCK_OUT: frozenset({Role.DELIVERY}),
    Action.RECORD_SETTLEMENT: frozenset({Role.FINANCE}),
    Action.DELIVER: frozenset({Role.DELIVERY}),
    Action.RECORD_FOLLOW_UP: frozenset({Role.SALES}),
    Action.CANCEL: frozenset({Role.SALES, Role.CREDIT}),
    Action.RETRY_DISBURSEMENT: frozenset({Role.FINANCE}),
    Action.RECONCILE_DISBURSEMENT: frozenset({Role.FINANCE}),
    Action.UNWIND: frozenset({Role.FINANCE, Role.CREDIT}),
    # Each step by its own role (rules/unwind.py UNWIND_STEP_ROLES).
    Action.RECORD_UNWIND_STEP: frozenset({Role.REGISTRATION, Role.FINANCE, Role.INSURANCE}),
    Action.ANSWER_STIPULATION: frozenset({Role.CREDIT}),
    Action.CLEAR_STIPULATION: frozenset({Role.CREDIT}),
    Action.WAIVE_STIPULATION: frozenset({Role.CREDIT}),
    Action.REJECT_STIPULATION_DOCUMENT: frozenset({Role.CREDIT}),
}

START_DEAL_ROLES = frozenset({Role.SALES, Role.ADMIN})
READ_ROLES = frozenset(Role)
# Who sees customers' names in lists and may search by them: the staff who
# serve the customer. Auditors read deals by id.
NAME_ROLES = READ_ROLES - {Role.AUDITOR}
# Who reads the reports (funnel, time in stage, overdue work, lenders, why deals
# closed): the staff who steer the pipeline — sales, who open deals; credit,
# who route them to lenders; finance, who take the money — and the auditors.
# The others see their own work in My work. Close reasons are staff's free text.
REPORT_ROLES = frozenset({Role.SALES, Role.CREDIT, Role.FINANCE, Role.AUDITOR, Role.ADMIN})
# Who may read customer documents (personal data), and in a deal's status the
# documents' names and hashes: who collects and checks them, the auditors, and
# admin. The other teams see only whether their funding document is in.
DOCUMENT_READ_ROLES = frozenset({Role.SALES, Role.CREDIT, Role.AUDITOR})


# Which dealers' deals a person may see and touch: the dealer ids their token
# lists (DEALFLOW_DEALERS_CLAIM), or None for all of them (the group's back
# office). A deal outside the scope does not exist for them: the API and the
# desk answer 404, as for an unknown id, so ids do not leak.
DealerScope = frozenset[str] | None
ALL_DEALERS: DealerScope = None


def in_dealer_scope(dealer_id: str, scope: DealerScope) -> bool:
    """Whether a deal of `dealer_id` is visible to someone of `scope`."""
    return scope is None or dealer_id in scope


def check_start_dealer(dealer_id: str, scope: DealerScope) -> None:
    """A scoped clerk starts deals only for the dealers they work for."""
    if not in_dealer_scope(dealer_id, scope):
        assert scope is not None
        mine = ", ".join(sorted(scope)) or "none"
        raise RuleError(
            "forbidden",
            f"you may start deals only for your dealers ({mine}); dealer_id {dealer_id!r} "
            "is not one of them",
        )


def may_read_documents(role: Role) -> bool:
    return role is Role.ADMIN or role in DOCUMENT_READ_ROLES


def document_kinds_shown(roles: Iterable[Role]) -> frozenset[DocumentKind]:
    """The kinds of document whose details (name, hash) a deal's status shows
    to someone with `roles`: every kind to a reader of documents, else the
    kinds their team uploads (insurance sees its policy page, not the ID card)."""
    roles = tuple(roles)
    if any(may_read_documents(role) for role in roles):
        return frozenset(DocumentKind)
    return frozenset(kind for kind, uploaders in DOCUMENT_ROLES.items() if uploaders & set(roles))


def status_for_roles(status: DealStatus, roles: Iterable[Role]) -> DealStatus:
    """`status` as someone with `roles` may see it: the details of the
    documents of the kinds `document_kinds_shown`, only whether the others are
    in, and no storage key at all (where the store keeps a file is nobody's
    business, and a key is what a forged link would name)."""
    shown = document_kinds_shown(roles)

    def keyless(doc: DocumentRecord) -> DocumentRecord:
        return doc.model_copy(update={"storage_key": ""})

    return status.model_copy(
        update={
            "documents": [keyless(doc) for doc in status.documents if doc.kind in shown],
            "funding": [
                item.model_copy(
                    update={
                        "document": keyless(item.document)
                        if item.document and item.kind in shown
                        else None
                    }
                )
                for item in status.funding
            ],
        }
    )


def check_role(action: Action, actor: Actor) -> None:
    allowed = ACTION_ROLES[action]
    if actor.role is not Role.ADMIN and actor.role not in allowed:
        names = ", ".join(sorted(r.value for r in allowed | {Role.ADMIN}))
        raise RuleError(
            "forbidden", f"role '{actor.role.value}' may not {action.value}; allowed: {names}"
        )


# Stages in which each action is accepted. Cancellation is possible until the
# disbursement has been requested: after that the lender's money is moving. A
# lender that funds after the mortgage is registered is asked for the money
# only after REGISTRATION, so there cancel is allowed too, before funding
# (rules.actions checks that nothing was requested yet).
_PRE_DISBURSEMENT = frozenset(STAGE_ORDER[: STAGE_ORDER.index(Stage.DISBURSEMENT)])
ACTION_STAGES: dict[Action, frozenset[Stage]] = {
    Action.SIGN_SALES_CONTRACT: frozenset({Stage.CONTRACT}),
    # The customer's documents up to underwriting, the funding package's from
    # the stage of each one's fact to disbursement (rules.check_document_stage).
    Action.RECORD_DOCUMENT: frozenset(
        STAGE_ORDER[: STAGE_ORDER.index(Stage.DOWN_PAYMENT)]
        + STAGE_ORDER[STAGE_ORDER.index(Stage.INVOICING) : STAGE_ORDER.index(Stage.REGISTRATION)]
    ),
    Action.SUBMIT_APPLICATION: frozenset({Stage.APPLICATION}),
    Action.ACCEPT_COUNTER_OFFER: frozenset({Stage.UNDERWRITING}),
    Action.DECLINE_COUNTER_OFFER: frozenset({Stage.UNDERWRITING}),
    Action.CONFIRM_DOWN_PAYMENT: frozenset({Stage.DOWN_PAYMENT}),
    Action.RECORD_INVOICE: frozenset({Stage.INVOICING}),
    Action.RECORD_INSURANCE: frozenset({Stage.INSURANCE}),
    Action.RECORD_REPAYMENT_ACCOUNT: frozenset({Stage.LOAN_CONTRACT}),
    Action.CONFIRM_LOAN_TERMS: frozenset({Stage.LOAN_CONTRACT}),
    Action.SIGN_LOAN_CONTRACT: frozenset({Stage.LOAN_CONTRACT}),
    Action.RECORD_CERTIFICATE: frozenset({Stage.REGISTRATION}),
    Action.RECORD_PURCHASE_TAX: frozenset({Stage.REGISTRATION}),
    Action.RECORD_PLATE: frozenset({Stage.REGISTRATION}),
    Action.RECORD_MORTGAGE: frozenset({Stage.REGISTRATION}),
    Action.RECORD_STOCK_OUT: frozenset({Stage.DELIVERY}),
    Action.RECORD_SETTLEMENT: frozenset({Stage.DELIVERY}),
    Action.DELIVER: frozenset({Stage.DELIVERY}),
    Action.RECORD_FOLLOW_UP: frozenset({Stage.FOLLOW_UP}),
    Action.CANCEL: _PRE_DISBURSEMENT | {Stage.REGISTRATION},
    Action.RETRY_DISBURSEMENT: frozenset({Stage.DISBURSEMENT}),
    Action.RECONCILE_DISBURSEMENT: frozenset({Stage.DISBURSEMENT}),
    # A stalled disbursement, or a funded loan before delivery (the facts
    # decide: rules/actions.py).
    Action.UNWIND: frozenset({Stage.DISBURSEMENT, Stage.REGISTRATION, Stage.DELIVERY}),
    Action.RECORD_UNWIND_STEP: frozenset({Stage.UNWINDING}),
    # The lender's conditions are answered while the deal collects them.
    Action.ANSWER_STIPULATION: frozenset({Stage.DOCUMENTS}),
    Action.CLEAR_STIPULATION: frozenset({Stage.DOCUMENTS}),
    Action.WAIVE_STIPULATION: frozenset({Stage.DOCUMENTS}),
    Action.REJECT_STIPULATION_DOCUMENT: frozenset({Stage.DOCUMENTS}),
}


def check_document_role(kind: DocumentKind, actor: Actor) -> None:
    allowed = DOCUMENT_ROLES[kind]
    if actor.role is not Role.ADMIN and actor.role not in allowed:
        names = ", ".join(sorted(r.value for r in allowed | {Role.ADMIN}))
        raise RuleError(
            "forbidden",
            f"role '{actor.role.value}' may not record-document of {kind.value}; allowed: {names}",
        )


# Why an action is refused in a stage, where the stage alone says more than
# the list of stages it is allowed in.
_STAGE_REFUSALS: dict[tuple[Action, Stage], str] = {
    (Action.UNWIND, Stage.FOLLOW_UP): "the vehicle was delivered: a delivered deal is not unwound",
    (Action.UNWIND, Stage.UNWINDING): "the deal is already unwinding",
    **{
        (Action.UNWIND, stage): "the loan is not funded: nothing was paid out to unwind; "
        "cancel instead"
        for stage in _PRE_DISBURSEMENT
    },
}


def check_stage(action: Action, stage: Stage) -> None:
    if stage not in ACTION_STAGES[action]:
        if stage.terminal:
            raise conflict(f"the deal is {stage.value}; no further actions are possible")
        if (action, stage) in _STAGE_REFUSALS:
            raise conflict(_STAGE_REFUSALS[(action, stage)])
        allowed = ", ".join(s.value for s in STAGE_ORDER if s in ACTION_STAGES[action])
        raise conflict(f"{action.value} is not allowed in stage {stage.value} (only in {allowed})")
