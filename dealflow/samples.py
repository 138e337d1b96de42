"""Sample customer documents and action payloads for the demo and the tests.

The bytes are small but real files of their type (PDF, JPEG headers), so the
upload path sniffs, hashes and stores them exactly as it does a scan.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from dealflow.models import DealInput, DealPolicy, DealStatus, DocumentKind, Party
from dealflow.rules import APPLICATION_DOCUMENT_STAGES, dealer_date, statement_window

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example_deal() -> DealInput:
    return DealInput.model_validate_json((EXAMPLES / "deal.json").read_text(encoding="utf-8"))


def dealer_today(policy: DealPolicy | None = None) -> date:
    """Today at the dealer (the policy's time zone): the date the deal's own
    rules read, so sample documents and dates agree with them at any hour."""
    return dealer_date(policy or DealPolicy(), datetime.now(UTC))


def example_action(action: str, today: date | None = None) -> dict[str, Any]:
    """The payload of examples/actions/<action>.json, dates moved to `today`."""
    payload: dict[str, Any] = json.loads(
        (EXAMPLES / "actions" / f"{action}.json").read_text(encoding="utf-8")
    )
    if action == "record-insurance" and today is not None:
        payload["starts_on"] = today.isoformat()
        payload["ends_on"] = (today + timedelta(days=364)).isoformat()
    return payload


def loan_terms_confirmation(status: DealStatus) -> dict[str, Any]:
    """The confirm-loan-terms payload for the terms a deal shows: what the
    customer is read out and agrees to."""
    if status.loan is None:
        raise ValueError(f"deal {status.deal_id} has no approved terms to confirm")
    terms = status.loan.terms
    return {
        "amount": str(terms.amount),
        "apr": str(terms.apr),
        "term_months": terms.term_months,
        "method": terms.method.value,
        "total_repayable": str(status.loan.total_repayable),
    }


def _pdf(text: str) -> bytes:
    return b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\n% " + text.encode() + b"\n%%EOF\n"


def _jpeg(text: str) -> bytes:
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + text.encode() + b"\xff\xd9"


def sample_documents(deal_id: str, deal: DealInput, today: date) -> list[dict[str, Any]]:
    """One file per checklist item: kind, party, file name, bytes and the
    details entered with it (ID number, statement period)."""
    a = deal.customer.applicant
    start, end = statement_window(today, 6)
    docs: list[dict[str, Any]] = [
        {
            "kind": DocumentKind.ID_CARD,
            "party": Party.APPLICANT,
            "file_name": "id-applicant.jpg",
            "data": _jpeg(f"{deal_id} id applicant"),
            "id_number": a.id_number,
        },
        {
            "kind": DocumentKind.DRIVERS_LICENCE,
            "party": Party.APPLICANT,
            "file_name": "licence.jpg",
            "data": _jpeg(f"{deal_id} licence"),
        },
        {
            "kind": DocumentKind.BANK_STATEMENT,
            "party": Party.APPLICANT,
            "file_name": "statements.pdf",
            "data": _pdf(f"{deal_id} statements"),
            "period_start": start,
            "period_end": today - timedelta(days=1),
        },
        {
            "kind": DocumentKind.PROOF_OF_RESIDENCE,
            "party": Party.APPLICANT,
            "file_name": "residence.pdf",
            "data": _pdf(f"{deal_id} residence"),
        },
        {
            "kind": DocumentKind.PROOF_OF_INCOME,
            "party": Party.APPLICANT,
            "file_name": "income.pdf",
            "data": _pdf(f"{deal_id} income"),
        },
        {
            "kind": DocumentKind.HOUSEHOLD_REGISTER,
            "party": Party.APPLICANT,
            "file_name": "hukou.pdf",
            "data": _pdf(f"{deal_id} household"),
        },
    ]
    del end
    if a.married and deal.customer.spouse is not None:
        docs += [
            {
                "kind": DocumentKind.MARRIAGE_CERTIFICATE,
                "party": Party.APPLICANT,
                "file_name": "marriage.pdf",
                "data": _pdf(f"{deal_id} marriage"),
            },
            {
                "kind": DocumentKind.ID_CARD,
                "party": Party.SPOUSE,
                "file_name": "id-spouse.jpg",
                "data": _jpeg(f"{deal_id} id spouse"),
                "id_number": deal.customer.spouse.id_number,
            },
        ]
    return docs


def stipulation_document(deal_id: str, code: str) -> dict[str, Any]:
    return {
        "kind": DocumentKind.STIPULATION,
        "party": Party.APPLICANT,
        "file_name": f"{code.lower()}.pdf",
        "data": _pdf(f"{deal_id} {code}"),
        "stipulation_code": code,
    }


_FUNDING_FILES = {
    DocumentKind.VEHICLE_INVOICE: "vehicle-invoice.pdf",
    DocumentKind.INSURANCE_POLICY_PAGE: "insurance-policy-page.pdf",
    DocumentKind.SIGNED_LOAN_CONTRACT: "loan-contract-signed.pdf",
}


def funding_document(deal_id: str, kind: DocumentKind, version: int = 1) -> dict[str, Any]:
    """A document of the funding package; another `version` is other bytes
    (a replacement)."""
    return {
        "kind": kind,
        "party": Party.APPLICANT,
        "file_name": _FUNDING_FILES[kind],
        "data": _pdf(f"{deal_id} {kind.value} v{version}"),
    }


def funding_documents(deal_id: str) -> list[dict[str, Any]]:
    """The funding package, in the order the deal records the facts behind it
    (invoice, insurance, loan contract)."""
    return [funding_document(deal_id, kind) for kind in _FUNDING_FILES]


def missing_documents(
    deal_id: str, deal: DealInput, status: DealStatus, today: date
) -> list[dict[str, Any]]:
    """A sample file for each document the deal waits for: the checklist's
    while the application is open, the funding package's after it."""
    if status.stage not in APPLICATION_DOCUMENT_STAGES:
        return [funding_document(deal_id, i.kind) for i in status.funding if not i.satisfied]
    missing = {(c.kind, c.party, c.stipulation_code) for c in status.checklist if not c.satisfied}
    docs = sample_documents(deal_id, deal, today)
    docs += [stipulation_document(deal_id, code) for (_, _, code) in missing if code]
    return [d for d in docs if (d["kind"], d["party"], d.get("stipulation_code")) in missing]
