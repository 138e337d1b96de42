"""The business rules, as pure functions.

Used unchanged by the workflow's update validators, the HTTP API and the CLI,
so a rule lives once and every entry point rejects the same input with the same
message. Deterministic: no clock (callers pass `now`), no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Literal

from stdnum.cn import ric
from stdnum.exceptions import ValidationError as StdnumError

from dealflow.models import (
    STAGE_ORDER,
    AcceptCounterOfferInput,
    Action,
    ActionInput,
    Actor,
    ChecklistItem,
    ConfirmDownPaymentInput,
    DealInput,
    DealPolicy,
    DealState,
    Decision,
    DeclineCounterOfferInput,
    DeliverInput,
    DocumentKind,
    DocumentRecord,
    LenderRef,
    Party,
    PendingAction,
    Product,
    RecordCertificateInput,
    RecordDocumentInput,
    RecordFollowUpInput,
    RecordInsuranceInput,
    RecordInvoiceInput,
    RecordMortgageInput,
    RecordPlateInput,
    RecordPurchaseTaxInput,
    RecordRepaymentAccountInput,
    RecordSettlementInput,
    RecordStockOutInput,
    Role,
    SignLoanContractInput,
    SignSalesContractInput,
    Stage,
    Submission,
    SubmitApplicationInput,
    fmt_money,
    money,
)

RuleKind = Literal["invalid", "conflict", "forbidden"]


class RuleError(ValueError):
    """A rule said no. `kind` maps to HTTP: invalid→422, conflict→409, forbidden→403."""

    def __init__(self, kind: RuleKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def invalid(message: str) -> RuleError:
    return RuleError("invalid", message)


def conflict(message: str) -> RuleError:
    return RuleError("conflict", message)


# --------------------------------------------------------------------------- permissions

# Who may do what: the one permission table (README shows it). `admin` may do
# everything; `auditor` only reads.
ACTION_ROLES: dict[Action, frozenset[Role]] = {
    Action.SIGN_SALES_CONTRACT: frozenset({Role.SALES}),
    Action.RECORD_DOCUMENT: frozenset({Role.SALES, Role.CREDIT}),
    Action.SUBMIT_APPLICATION: frozenset({Role.CREDIT}),
    Action.ACCEPT_COUNTER_OFFER: frozenset({Role.CREDIT}),
    Action.DECLINE_COUNTER_OFFER: frozenset({Role.CREDIT}),
    Action.CONFIRM_DOWN_PAYMENT: frozenset({Role.FINANCE}),
    Action.RECORD_INVOICE: frozenset({Role.FINANCE}),
    Action.RECORD_INSURANCE: frozenset({Role.INSURANCE}),
    Action.RECORD_REPAYMENT_ACCOUNT: frozenset({Role.CREDIT}),
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
}

START_DEAL_ROLES = frozenset({Role.SALES, Role.ADMIN})
READ_ROLES = frozenset(Role)


def check_role(action: Action, actor: Actor) -> None:
    allowed = ACTION_ROLES[action]
    if actor.role is not Role.ADMIN and actor.role not in allowed:
        names = ", ".join(sorted(r.value for r in allowed | {Role.ADMIN}))
        raise RuleError(
            "forbidden", f"role '{actor.role.value}' may not {action.value}; allowed: {names}"
        )


# Stages in which each action is accepted. Cancellation is possible until the
# disbursement has been requested: after that the lender's money is moving.
_PRE_DISBURSEMENT = frozenset(STAGE_ORDER[: STAGE_ORDER.index(Stage.DISBURSEMENT)])
ACTION_STAGES: dict[Action, frozenset[Stage]] = {
    Action.SIGN_SALES_CONTRACT: frozenset({Stage.CONTRACT}),
    Action.RECORD_DOCUMENT: frozenset(
        {Stage.CONTRACT, Stage.DOCUMENTS, Stage.APPLICATION, Stage.UNDERWRITING}
    ),
    Action.SUBMIT_APPLICATION: frozenset({Stage.APPLICATION}),
    Action.ACCEPT_COUNTER_OFFER: frozenset({Stage.UNDERWRITING}),
    Action.DECLINE_COUNTER_OFFER: frozenset({Stage.UNDERWRITING}),
    Action.CONFIRM_DOWN_PAYMENT: frozenset({Stage.DOWN_PAYMENT}),
    Action.RECORD_INVOICE: frozenset({Stage.INVOICING}),
    Action.RECORD_INSURANCE: frozenset({Stage.INSURANCE}),
    Action.RECORD_REPAYMENT_ACCOUNT: frozenset({Stage.LOAN_CONTRACT}),
    Action.SIGN_LOAN_CONTRACT: frozenset({Stage.LOAN_CONTRACT}),
    Action.RECORD_CERTIFICATE: frozenset({Stage.REGISTRATION}),
    Action.RECORD_PURCHASE_TAX: frozenset({Stage.REGISTRATION}),
    Action.RECORD_PLATE: frozenset({Stage.REGISTRATION}),
    Action.RECORD_MORTGAGE: frozenset({Stage.REGISTRATION}),
    Action.RECORD_STOCK_OUT: frozenset({Stage.DELIVERY}),
    Action.RECORD_SETTLEMENT: frozenset({Stage.DELIVERY}),
    Action.DELIVER: frozenset({Stage.DELIVERY}),
    Action.RECORD_FOLLOW_UP: frozenset({Stage.FOLLOW_UP}),
    Action.CANCEL: _PRE_DISBURSEMENT,
}


def check_stage(action: Action, stage: Stage) -> None:
    if stage not in ACTION_STAGES[action]:
        if stage.terminal:
            raise conflict(f"the deal is {stage.value}; no further actions are possible")
        allowed = ", ".join(s.value for s in STAGE_ORDER if s in ACTION_STAGES[action])
        raise conflict(f"{action.value} is not allowed in stage {stage.value} (only in {allowed})")


# --------------------------------------------------------------------------- identity


def validate_id_number(number: str, whose: str) -> str:
    """A PRC resident ID number: 18 characters, valid birth date, ISO 7064 check digit."""
    try:
        return str(ric.validate(number))
    except StdnumError as e:
        raise invalid(f"{whose} ID number is not valid: {str(e).lower()}") from e


_VIN_VALUES = {
    **{str(i): i for i in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMN", range(1, 6), strict=True)),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


def validate_vin(vin: str) -> None:
    """17 characters without I, O, Q; position 9 is the check digit (GB 16735 / ISO 3779)."""
    bad = sorted({c for c in vin if c not in _VIN_VALUES})
    if len(vin) != 17 or bad:
        raise invalid(f"VIN {vin!r} must be 17 characters from 0-9 and A-Z without I, O, Q")
    total = sum(_VIN_VALUES[c] * w for c, w in zip(vin, _VIN_WEIGHTS, strict=True)) % 11
    expected = "X" if total == 10 else str(total)
    if vin[8] != expected:
        raise invalid(f"VIN {vin} fails its check digit (position 9 should be {expected})")


# --------------------------------------------------------------------------- money


def max_loan_ratio(product: Product, policy: DealPolicy) -> Decimal:
    return policy.max_loan_ratio[product]


def max_amount_financed(deal: DealInput, policy: DealPolicy) -> Decimal:
    return money(deal.vehicle.price * max_loan_ratio(deal.product, policy))


def required_down_payment(deal: DealInput, approved_amount: Decimal | None) -> Decimal:
    """The contract's down payment, or what a counter-offer's smaller loan leaves to pay."""
    if approved_amount is None:
        return money(deal.down_payment)
    return money(deal.vehicle.price - approved_amount)


def validate_deal(deal: DealInput, policy: DealPolicy, known_lenders: Iterable[str]) -> None:
    """Everything about a new deal that must hold before a workflow is started."""
    problems: list[str] = []

    def collect(check: object) -> None:
        try:
            if callable(check):
                check()
        except RuleError as e:
            problems.append(e.message)

    applicant = deal.customer.applicant
    spouse = deal.customer.spouse
    collect(lambda: validate_id_number(applicant.id_number, "applicant"))
    if applicant.married and spouse is None:
        problems.append("a married applicant needs the spouse's details (customer.spouse)")
    if not applicant.married and spouse is not None:
        problems.append("customer.spouse is given but the applicant is not married")
    if spouse is not None:
        collect(lambda: validate_id_number(spouse.id_number, "spouse"))
        if spouse.id_number == applicant.id_number:
            problems.append("the spouse's ID number is the applicant's")
    collect(lambda: validate_vin(deal.vehicle.vin))

    v = deal.vehicle
    if deal.product is Product.USED_CAR and v.condition != "used":
        problems.append("product used_car needs a vehicle with condition 'used'")
    if deal.product in (Product.NEW_CAR, Product.NEW_ENERGY_CAR) and v.condition != "new":
        problems.append(f"product {deal.product.value} needs a vehicle with condition 'new'")
    if deal.product is Product.NEW_ENERGY_CAR and not v.new_energy:
        problems.append("product new_energy_car needs a new-energy vehicle (new_energy: true)")

    if deal.down_payment >= v.price:
        problems.append(
            f"down payment {fmt_money(deal.down_payment)} leaves nothing to finance on a "
            f"price of {fmt_money(v.price)}"
        )
    else:
        limit = max_amount_financed(deal, policy)
        if deal.amount_financed > limit:
            ratio = max_loan_ratio(deal.product, policy) * 100
            problems.append(
                f"amount financed {fmt_money(deal.amount_financed)} exceeds {ratio:.0f}% of the "
                f"price {fmt_money(v.price)} ({fmt_money(limit)}) allowed for {deal.product.value};"
                f" the down payment must be at least {fmt_money(v.price - limit)}"
            )

    known = set(known_lenders)
    seen: set[str] = set()
    for lid in deal.lender_ids:
        if lid in seen:
            problems.append(f"lender {lid!r} appears twice in lender_ids")
        seen.add(lid)
        if lid not in known:
            problems.append(f"unknown lender {lid!r} (known: {', '.join(sorted(known))})")
    if problems:
        raise invalid("; ".join(problems))


# --------------------------------------------------------------------------- documents

_LABELS = {
    DocumentKind.ID_CARD: "resident ID card",
    DocumentKind.DRIVERS_LICENCE: "driver's licence (registered owner)",
    DocumentKind.BANK_STATEMENT: "bank statements",
    DocumentKind.PROOF_OF_RESIDENCE: "proof of residence",
    DocumentKind.PROOF_OF_INCOME: "proof of income",
    DocumentKind.HOUSEHOLD_REGISTER: "household register",
    DocumentKind.MARRIAGE_CERTIFICATE: "marriage certificate",
    DocumentKind.STIPULATION: "lender stipulation",
}

_APPLICANT_DOCS = (
    DocumentKind.ID_CARD,
    DocumentKind.DRIVERS_LICENCE,
    DocumentKind.BANK_STATEMENT,
    DocumentKind.PROOF_OF_RESIDENCE,
    DocumentKind.PROOF_OF_INCOME,
    DocumentKind.HOUSEHOLD_REGISTER,
)


def _month_start(d: date, back: int) -> date:
    m = d.year * 12 + (d.month - 1) - back
    return date(m // 12, m % 12 + 1, 1)


def statement_window(as_of: date, months: int) -> tuple[date, date]:
    """The last `months` complete calendar months before `as_of`."""
    return _month_start(as_of, months), _month_start(as_of, 0) - timedelta(days=1)


def bank_statement_gaps(
    statements: Iterable[DocumentRecord], as_of: date, months: int
) -> list[tuple[date, date]]:
    """Spans of the required window that no statement covers (empty: covered)."""
    start, end = statement_window(as_of, months)
    periods = sorted(
        (s.period_start, s.period_end)
        for s in statements
        if s.period_start is not None and s.period_end is not None
    )
    gaps: list[tuple[date, date]] = []
    cursor = start
    for p_start, p_end in periods:
        if p_end < cursor:
            continue
        if p_start > cursor:
            gaps.append((cursor, min(p_start - timedelta(days=1), end)))
        cursor = max(cursor, p_end + timedelta(days=1))
        if cursor > end:
            break
    if cursor <= end:
        gaps.append((cursor, end))
    return [g for g in gaps if g[0] <= end]


def checklist(
    deal: DealInput, state: DealState, policy: DealPolicy, as_of: date
) -> list[ChecklistItem]:
    docs = state.documents

    def have(kind: DocumentKind, party: Party) -> bool:
        return any(d.kind is kind and d.party is party for d in docs)

    items: list[ChecklistItem] = []
    for kind in _APPLICANT_DOCS:
        if kind is DocumentKind.BANK_STATEMENT:
            statements = [d for d in docs if d.kind is kind and d.party is Party.APPLICANT]
            gaps = bank_statement_gaps(statements, as_of, policy.bank_statement_months)
            detail = (
                "missing " + ", ".join(f"{a.isoformat()}..{b.isoformat()}" for a, b in gaps)
                if gaps
                else ""
            )
            items.append(
                ChecklistItem(
                    kind=kind,
                    party=Party.APPLICANT,
                    label=f"bank statements covering the last {policy.bank_statement_months} "
                    "months",
                    satisfied=bool(statements) and not gaps,
                    detail=detail,
                )
            )
            continue
        items.append(
            ChecklistItem(
                kind=kind,
                party=Party.APPLICANT,
                label=_LABELS[kind],
                satisfied=have(kind, Party.APPLICANT),
            )
        )
    if deal.customer.applicant.married:
        items.append(
            ChecklistItem(
                kind=DocumentKind.MARRIAGE_CERTIFICATE,
                party=Party.APPLICANT,
                label=_LABELS[DocumentKind.MARRIAGE_CERTIFICATE],
                satisfied=have(DocumentKind.MARRIAGE_CERTIFICATE, Party.APPLICANT),
            )
        )
        items.append(
            ChecklistItem(
                kind=DocumentKind.ID_CARD,
                party=Party.SPOUSE,
                label="spouse's resident ID card",
                satisfied=have(DocumentKind.ID_CARD, Party.SPOUSE),
            )
        )
    for stip in state.stipulations:
        items.append(
            ChecklistItem(
                kind=DocumentKind.STIPULATION,
                party=Party.APPLICANT,
                label=f"{stip.code}: {stip.description}",
                stipulation_code=stip.code,
                satisfied=any(
                    d.kind is DocumentKind.STIPULATION and d.stipulation_code == stip.code
                    for d in docs
                ),
            )
        )
    return items


def checklist_complete(items: list[ChecklistItem]) -> bool:
    return all(i.satisfied for i in items)


def describe_missing(items: list[ChecklistItem]) -> str:
    return "; ".join(
        i.label + (f" ({i.detail})" if i.detail else "") for i in items if not i.satisfied
    )


def find_duplicate(state: DealState, inp: RecordDocumentInput) -> DocumentRecord | None:
    return next((d for d in state.documents if d.sha256 == inp.sha256), None)


def validate_document(
    deal: DealInput, state: DealState, policy: DealPolicy, inp: RecordDocumentInput, today: date
) -> None:
    if inp.content_type not in policy.allowed_content_types:
        raise invalid(
            f"content type {inp.content_type!r} is not accepted; use one of "
            + ", ".join(policy.allowed_content_types)
        )
    if inp.size <= 0:
        raise invalid(f"{inp.file_name} is empty")
    if inp.size > policy.max_document_bytes:
        raise invalid(
            f"{inp.file_name} is {inp.size:,} bytes; the limit is {policy.max_document_bytes:,}"
        )
    dup = find_duplicate(state, inp)
    if dup is not None and (dup.kind, dup.party) != (inp.kind, inp.party):
        raise invalid(
            f"this file (sha256 {inp.sha256[:12]}…) is already on file as the "
            f"{dup.party.value}'s {dup.kind.value}; upload the {inp.kind.value} itself"
        )
    spouse = deal.customer.spouse
    if inp.party is Party.SPOUSE:
        if spouse is None:
            raise invalid("the deal has no spouse; party must be 'applicant'")
        if inp.kind not in (DocumentKind.ID_CARD, DocumentKind.STIPULATION):
            raise invalid(f"a {inp.kind.value} is the applicant's document, not the spouse's")
    if inp.kind is DocumentKind.ID_CARD:
        if not inp.id_number:
            raise invalid("an ID card needs the id_number printed on it")
        number = validate_id_number(inp.id_number, inp.party.value)
        person = deal.customer.applicant if inp.party is Party.APPLICANT else spouse
        if person is not None and number != person.id_number:
            raise invalid(
                f"the ID card's number does not match the {inp.party.value}'s ID number on the deal"
            )
    if inp.kind is DocumentKind.BANK_STATEMENT:
        if inp.period_start is None or inp.period_end is None:
            raise invalid("a bank statement needs period_start and period_end")
        if inp.period_start > inp.period_end:
            raise invalid("bank statement period_start is after period_end")
        if inp.period_end > today:
            raise invalid(f"bank statement period_end {inp.period_end} is in the future")
    if inp.kind is DocumentKind.STIPULATION:
        codes = {s.code for s in state.stipulations}
        if inp.stipulation_code not in codes:
            open_codes = ", ".join(sorted(codes)) or "none"
            raise invalid(
                f"stipulation_code {inp.stipulation_code!r} is not an open stipulation "
                f"(open: {open_codes})"
            )


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class DealView:
    """What an action check needs to know about a deal."""

    deal: DealInput
    policy: DealPolicy
    lenders: list[LenderRef]
    state: DealState
    now: datetime

    def lender(self, lender_id: str) -> LenderRef:
        return next(lender for lender in self.lenders if lender.id == lender_id)

    @property
    def current_submission(self) -> Submission | None:
        return self.state.submissions[-1] if self.state.submissions else None

    @property
    def approved_submission(self) -> Submission | None:
        for s in reversed(self.state.submissions):
            cur = s.current
            if cur is None:
                continue
            if cur.decision is Decision.APPROVED or (
                cur.decision is Decision.COUNTER_OFFER and s.counter_offer_response == "accepted"
            ):
                return s
        return None

    @property
    def approved_amount(self) -> Decimal | None:
        s = self.approved_submission
        return s.current.approved_amount if s and s.current else None

    @property
    def financed_amount(self) -> Decimal:
        return money(self.approved_amount or self.deal.amount_financed)

    @property
    def lender_legal_name(self) -> str | None:
        s = self.approved_submission
        return self.lender(s.lender_id).legal_name if s else None

    def checklist_as_of(self) -> date:
        # Statements are judged as of the application: the list must not turn
        # incomplete again while the deal waits weeks for the lender.
        if self.state.application is not None:
            submitted = next(
                (a.at for a in self.state.actions if a.action == Action.SUBMIT_APPLICATION.value),
                None,
            )
            if submitted is not None:
                return submitted.date()
        return self.now.date()

    def checklist(self) -> list[ChecklistItem]:
        return checklist(self.deal, self.state, self.policy, self.checklist_as_of())

    def open_counter_offer(self) -> Submission | None:
        s = self.current_submission
        if (
            s is not None
            and s.current is not None
            and s.current.decision is Decision.COUNTER_OFFER
            and s.counter_offer_response is None
            and s.status == "decided"
        ):
            return s
        return None


def _eq_money(label: str, got: Decimal, want: Decimal) -> None:
    if money(got) != money(want):
        raise invalid(f"{label} {fmt_money(got)} does not match {fmt_money(want)}")


def check_action(action: Action, inp: ActionInput, view: DealView) -> None:
    """Role, stage and content of one staff action. Raises RuleError."""
    check_role(action, inp.actor)
    check_stage(action, view.state.stage)
    state, deal = view.state, view.deal
    match inp:
        case SignSalesContractInput():
            missing = sorted(
                {"information_clerk", "finance", "sales_consultant"} - set(inp.copies_routed_to)
            )
            if missing:
                raise invalid(
                    "the three contract copies must be routed; missing: " + ", ".join(missing)
                )
            _eq_money("the contract's down payment", inp.down_payment, deal.down_payment)
        case RecordDocumentInput():
            validate_document(deal, state, view.policy, inp, view.now.date())
        case SubmitApplicationInput():
            items = view.checklist()
            if not checklist_complete(items):
                raise conflict("documents are incomplete: " + describe_missing(items))
            if inp.applicant_id_number != deal.customer.applicant.id_number:
                raise invalid("applicant_id_number does not match the applicant's ID card")
            declared = deal.customer.applicant.monthly_income
            _eq_money("declared monthly income", inp.monthly_income, declared)
        case AcceptCounterOfferInput() | DeclineCounterOfferInput():
            sub = view.open_counter_offer()
            if sub is None or sub.current is None:
                raise conflict("there is no open counter-offer to answer")
            if (inp.application_ref, inp.decision_seq) != (
                sub.application_ref,
                sub.current.decision_seq,
            ):
                raise conflict(
                    f"the open counter-offer is {sub.application_ref} #{sub.current.decision_seq};"
                    f" got {inp.application_ref} #{inp.decision_seq}"
                )
        case ConfirmDownPaymentInput():
            want = required_down_payment(deal, view.approved_amount)
            if money(inp.amount) != want:
                raise invalid(
                    f"down payment {fmt_money(inp.amount)} does not match the contract's "
                    f"{fmt_money(want)}"
                )
        case RecordInvoiceInput():
            _eq_money("invoice amount", inp.amount, deal.vehicle.price)
        case RecordInsuranceInput():
            legal = view.lender_legal_name
            if legal is not None and inp.first_beneficiary.strip() != legal:
                raise invalid(
                    f"first beneficiary must be the lender {legal!r}, not {inp.first_beneficiary!r}"
                )
            if inp.cover_amount < view.financed_amount:
                raise invalid(
                    f"cover {fmt_money(inp.cover_amount)} is below the amount financed "
                    f"{fmt_money(view.financed_amount)}"
                )
            if inp.ends_on <= inp.starts_on:
                raise invalid("the policy must end after it starts")
            if inp.ends_on < view.now.date():
                raise invalid(f"the policy ended on {inp.ends_on}")
        case RecordRepaymentAccountInput():
            if state.repayment_account is not None:
                raise conflict("the repayment account is already recorded")
        case SignLoanContractInput():
            if inp.copies_signed != 3:
                raise invalid(
                    f"the loan contract is signed in three copies; got {inp.copies_signed}"
                )
            if state.loan_contract is not None:
                raise conflict("the loan contract is already signed")
        case RecordCertificateInput():
            if state.certificate is not None:
                raise conflict("the certificate of conformity is already recorded")
        case RecordPurchaseTaxInput():
            if state.purchase_tax is not None:
                raise conflict("the purchase tax is already recorded")
        case RecordPlateInput():
            if state.plate is not None:
                raise conflict("the plate is already recorded")
            if state.certificate is None or state.purchase_tax is None:
                raise conflict(
                    "a plate needs the certificate of conformity and the purchase tax first"
                )
        case RecordMortgageInput():
            if state.mortgage is not None:
                raise conflict("the mortgage is already recorded")
            if state.plate is None:
                raise conflict("the mortgage can be registered only after the plate is issued")
            legal = view.lender_legal_name
            if legal is not None and inp.lienholder.strip() != legal:
                raise invalid(f"the lienholder must be the lender {legal!r}")
        case RecordStockOutInput():
            missing = sorted({"information_clerk", "warehouse"} - set(inp.copies_routed_to))
            if missing:
                raise invalid("stock-out copies must go to: " + ", ".join(missing))
            if state.stock_out is not None:
                raise conflict("the stock-out form is already recorded")
        case RecordSettlementInput():
            if state.settlement is not None:
                raise conflict("the final settlement is already recorded")
        case DeliverInput():
            if state.stock_out is None or state.settlement is None:
                raise conflict("delivery needs the stock-out form and the final settlement first")
            if not (inp.service_card_given and inp.safety_briefing_given):
                raise invalid(
                    "delivery needs the customer-service card and the safe-driving briefing"
                )
        case RecordFollowUpInput():
            if inp.call in state.follow_ups:
                raise conflict(f"the {inp.call} follow-up call is already recorded")
            if inp.call == "day30" and "day3" not in state.follow_ups:
                raise conflict("record the day-3 follow-up call first")
        case _:
            pass


# --------------------------------------------------------------------------- pending


# Whose desk an action lands on when several roles may take it (docs/architecture.md §1,
# "who acts"): the customer's documents are collected by sales.
_OWNER: dict[Action, Role] = {Action.RECORD_DOCUMENT: Role.SALES, Action.CANCEL: Role.SALES}


def owner_role(action: Action) -> Role:
    return _OWNER.get(action) or sorted(ACTION_ROLES[action])[0]


def pending_actions(view: DealView, due: datetime | None) -> list[PendingAction]:
    """What the deal waits for, for whom, by when: the desk's to-do list."""
    s = view.state
    p: list[PendingAction] = []

    def add(action: Action, what: str, when: datetime | None = due) -> None:
        role = owner_role(action)
        p.append(PendingAction(action=action.value, role=role, what=what, due=when))

    match s.stage:
        case Stage.CONTRACT:
            add(Action.SIGN_SALES_CONTRACT, "sign the sales contract and route the three copies")
        case Stage.DOCUMENTS:
            add(Action.RECORD_DOCUMENT, "collect: " + describe_missing(view.checklist()))
        case Stage.APPLICATION:
            add(Action.SUBMIT_APPLICATION, "complete the loan application form")
        case Stage.UNDERWRITING:
            sub = view.open_counter_offer()
            if sub is not None:
                add(Action.ACCEPT_COUNTER_OFFER, "answer the lender's counter-offer")
            else:
                p.append(
                    PendingAction(
                        action="lender-decision",
                        role=Role.CREDIT,
                        what="waiting for the lender's decision",
                        due=due,
                    )
                )
        case Stage.DOWN_PAYMENT:
            amount = required_down_payment(view.deal, view.approved_amount)
            add(Action.CONFIRM_DOWN_PAYMENT, f"receive the down payment of {fmt_money(amount)}")
        case Stage.INVOICING:
            add(Action.RECORD_INVOICE, "issue the invoice and file the certificate request")
        case Stage.INSURANCE:
            add(
                Action.RECORD_INSURANCE,
                f"bind the policy with {view.lender_legal_name} as first beneficiary",
            )
        case Stage.LOAN_CONTRACT:
            if s.repayment_account is None:
                add(Action.RECORD_REPAYMENT_ACCOUNT, "open the repayment bank account")
            if s.loan_contract is None:
                add(Action.SIGN_LOAN_CONTRACT, "sign the loan contract in three copies")
        case Stage.DISBURSEMENT:
            p.append(
                PendingAction(
                    action="lender-disbursement",
                    role=Role.CREDIT,
                    what="waiting for the lender's disbursement",
                    due=due,
                )
            )
        case Stage.REGISTRATION:
            if s.certificate is None:
                add(Action.RECORD_CERTIFICATE, "receive the certificate of conformity")
            if s.purchase_tax is None:
                add(Action.RECORD_PURCHASE_TAX, "pay the purchase tax")
            if s.plate is None:
                add(Action.RECORD_PLATE, "register the plate")
            if s.mortgage is None:
                add(Action.RECORD_MORTGAGE, "register the mortgage for the lender")
        case Stage.DELIVERY:
            if s.stock_out is None:
                add(Action.RECORD_STOCK_OUT, "fill in the stock-out form")
            if s.settlement is None:
                add(Action.RECORD_SETTLEMENT, "final settlement with finance")
            add(Action.DELIVER, "hand the vehicle over")
        case Stage.FOLLOW_UP:
            for call, offset in (
                ("day3", view.policy.follow_up_first),
                ("day30", view.policy.follow_up_second),
            ):
                if call not in s.follow_ups and s.delivered_at is not None:
                    add(
                        Action.RECORD_FOLLOW_UP,
                        f"{call} follow-up call",
                        s.delivered_at + offset,
                    )
        case _:
            pass
    return p


# --------------------------------------------------------------------------- uploads

_MAGIC = (
    (b"%PDF-", "application/pdf"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
)


def sniff_content_type(head: bytes) -> str:
    """The type the bytes say they are, whatever the file name or header claims."""
    for magic, content_type in _MAGIC:
        if head.startswith(magic):
            return content_type
    return "application/octet-stream"
