"""Sample customer documents and action payloads for the demo and the tests.

The bytes are small but real files of their type (a one-page PDF, a 16×16
JPEG or PNG), so the upload path sniffs, parses, hashes and stores them exactly
as it does a scan.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

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


PDF_HEADER = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"


def sample_pdf(text: str, size: int = 0) -> bytes:
    """A one-page PDF showing `text`; padded with a comment to `size` bytes if
    that is more than it needs."""
    if size <= 0:
        return PDF_HEADER + _pdf_objects(text, len(PDF_HEADER))
    ending = pdf_ending(text, size)
    padding = size - len(PDF_HEADER) - len(ending)
    if padding < 1:
        raise ValueError(f"a sample PDF showing {text!r} needs more than {size} bytes")
    return PDF_HEADER + (b"%" * (padding - 1) + b"\n")[-padding:] + ending


def pdf_ending(text: str, size: int) -> bytes:
    """The objects, cross-reference table and trailer of a one-page PDF of
    `size` bytes, laid out to end the file: whatever comes between `PDF_HEADER`
    and them is never read (what a test streams as filler)."""
    ending = _pdf_objects(text, size)
    # The trailer's offset is written in decimal: its length settles in two rounds.
    for _ in range(3):
        ending = _pdf_objects(text, size - len(ending))
    return ending


def _pdf_objects(text: str, start: int) -> bytes:
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    content = f"BT /F1 12 Tf 72 770 Td ({escaped}) Tj ET".encode("latin-1", "replace")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
    ]
    out = bytearray()
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(start + len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = start + len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def sample_jpeg(text: str) -> bytes:
    """A small grey JPEG carrying `text` as its comment (other text, other bytes)."""
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (128, 128, 128)).save(out, "JPEG", comment=text.encode())
    return out.getvalue()


def sample_png(text: str) -> bytes:
    """A small grey PNG carrying `text` in a tEXt chunk."""
    info = PngInfo()
    info.add_text("Comment", text)
    out = io.BytesIO()
    Image.new("L", (16, 16), 128).save(out, "PNG", pnginfo=info)
    return out.getvalue()


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
            "data": sample_jpeg(f"{deal_id} id applicant"),
            "id_number": a.id_number,
        },
        {
            "kind": DocumentKind.DRIVERS_LICENCE,
            "party": Party.APPLICANT,
            "file_name": "licence.jpg",
            "data": sample_jpeg(f"{deal_id} licence"),
        },
        {
            "kind": DocumentKind.BANK_STATEMENT,
            "party": Party.APPLICANT,
            "file_name": "statements.pdf",
            "data": sample_pdf(f"{deal_id} statements"),
            "period_start": start,
            "period_end": today - timedelta(days=1),
        },
        {
            "kind": DocumentKind.PROOF_OF_RESIDENCE,
            "party": Party.APPLICANT,
            "file_name": "residence.pdf",
            "data": sample_pdf(f"{deal_id} residence"),
        },
        {
            "kind": DocumentKind.PROOF_OF_INCOME,
            "party": Party.APPLICANT,
            "file_name": "income.pdf",
            "data": sample_pdf(f"{deal_id} income"),
        },
        {
            "kind": DocumentKind.HOUSEHOLD_REGISTER,
            "party": Party.APPLICANT,
            "file_name": "hukou.pdf",
            "data": sample_pdf(f"{deal_id} household"),
        },
    ]
    del end
    if a.married and deal.customer.spouse is not None:
        docs += [
            {
                "kind": DocumentKind.MARRIAGE_CERTIFICATE,
                "party": Party.APPLICANT,
                "file_name": "marriage.pdf",
                "data": sample_pdf(f"{deal_id} marriage"),
            },
            {
                "kind": DocumentKind.ID_CARD,
                "party": Party.SPOUSE,
                "file_name": "id-spouse.jpg",
                "data": sample_jpeg(f"{deal_id} id spouse"),
                "id_number": deal.customer.spouse.id_number,
            },
        ]
    return docs


def stipulation_document(deal_id: str, code: str) -> dict[str, Any]:
    return {
        "kind": DocumentKind.STIPULATION,
        "party": Party.APPLICANT,
        "file_name": f"{code.lower()}.pdf",
        "data": sample_pdf(f"{deal_id} {code}"),
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
        "data": sample_pdf(f"{deal_id} {kind.value} v{version}"),
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
