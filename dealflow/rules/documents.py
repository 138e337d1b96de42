"""The document checklist per party, and the checks on each recorded document."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta

from dealflow.models import (
    ChecklistItem,
    DealInput,
    DealPolicy,
    DealState,
    DocumentKind,
    DocumentRecord,
    Party,
    RecordDocumentInput,
)
from dealflow.rules.errors import invalid
from dealflow.rules.identity import validate_id_number
from dealflow.rules.stipulations import ANSWERED, current_round, document_condition_problem

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
    if state.stipulation_items:
        items.extend(_document_conditions(state))
        return items
    for stip in state.stipulations:
        items.append(
            ChecklistItem(
                kind=DocumentKind.STIPULATION,
                party=Party.APPLICANT,
                label=f"{stip.code}: {stip.description}",
                stipulation_code=stip.code,
                satisfied=any(
                    d.kind is DocumentKind.STIPULATION
                    and d.stipulation_code == stip.code
                    and d.uploaded_at >= state.stipulation_asked_at.get(stip.code, d.uploaded_at)
                    for d in docs
                ),
            )
        )
    return items


def _document_conditions(state: DealState) -> list[ChecklistItem]:
    """The latest conditional decision's document conditions, each satisfied
    once answered (received, cleared or waived); the others are no documents."""
    items = []
    for stip in current_round(state):
        if stip.kind != "document":
            continue
        if stip.status == "rejected":
            detail = f"rejected: {stip.reason}; upload a replacement"
        elif stip.status == "waived":
            detail = f"waived: {stip.reason}"
        elif stip.status in ("received", "cleared"):
            detail = f"{stip.status}: document {stip.doc_id}"
        else:
            detail = ""
        items.append(
            ChecklistItem(
                kind=DocumentKind.STIPULATION,
                party=Party.APPLICANT,
                label=f"{stip.code}: {stip.description}",
                stipulation_code=stip.code,
                satisfied=stip.status in ANSWERED,
                detail=detail,
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
        number = validate_id_number(inp.id_number, inp.party.value, today=today)
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
    if inp.kind is DocumentKind.STIPULATION and state.stipulation_items:
        problem = document_condition_problem(state, inp.stipulation_code, dup)
        if problem is not None:
            raise problem
    elif inp.kind is DocumentKind.STIPULATION:
        codes = {s.code for s in state.stipulations}
        if inp.stipulation_code not in codes:
            open_codes = ", ".join(sorted(codes)) or "none"
            raise invalid(
                f"stipulation_code {inp.stipulation_code!r} is not an open stipulation "
                f"(open: {open_codes})"
            )
