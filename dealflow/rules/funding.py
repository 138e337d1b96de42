"""The funding package: the documents a lender receives before it pays out —
the vehicle invoice, the insurance policy page naming the lender first
beneficiary, and the signed loan contract — and when each may be recorded.

Each document evidences a fact the deal records in one stage (the invoice in
INVOICING, the policy in INSURANCE, the contract in LOAN_CONTRACT); it is
accepted from that stage on and up to DISBURSEMENT, where a replacement is
taken only while the request has stalled (the lender refused it, it failed
for the last time, or the lender paid another amount), for the retry to
carry. The newest upload of a kind is the one the package carries.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dealflow.models import (
    STAGE_ORDER,
    DocumentKind,
    DocumentRecord,
    FundingItem,
    Role,
    Stage,
)
from dealflow.rules.errors import RuleError, conflict
from dealflow.rules.permissions import DOCUMENT_ROLES


@dataclass(frozen=True)
class FundingDocumentSpec:
    label: str
    # The stage whose step records the fact the document evidences.
    from_stage: Stage
    evidences: str


FUNDING_DOCUMENTS: dict[DocumentKind, FundingDocumentSpec] = {
    DocumentKind.VEHICLE_INVOICE: FundingDocumentSpec(
        "vehicle invoice", Stage.INVOICING, "the invoice (record-invoice)"
    ),
    DocumentKind.INSURANCE_POLICY_PAGE: FundingDocumentSpec(
        "insurance policy page naming the lender first beneficiary",
        Stage.INSURANCE,
        "the insurance policy (record-insurance)",
    ),
    DocumentKind.SIGNED_LOAN_CONTRACT: FundingDocumentSpec(
        "signed loan contract", Stage.LOAN_CONTRACT, "the loan contract (sign-loan-contract)"
    ),
}
FUNDING_KINDS: tuple[DocumentKind, ...] = tuple(FUNDING_DOCUMENTS)

# The customer's documents go to the lender with the application.
APPLICATION_DOCUMENT_STAGES: tuple[Stage, ...] = (
    Stage.CONTRACT,
    Stage.DOCUMENTS,
    Stage.APPLICATION,
    Stage.UNDERWRITING,
)


def is_funding_document(kind: DocumentKind) -> bool:
    return kind in FUNDING_DOCUMENTS


def funding_uploader(kind: DocumentKind) -> Role:
    """The role whose desk a missing funding document lands on."""
    return sorted(DOCUMENT_ROLES[kind])[0]


def document_stages(kind: DocumentKind) -> tuple[Stage, ...]:
    """The stages in which a document of `kind` is accepted."""
    spec = FUNDING_DOCUMENTS.get(kind)
    if spec is None:
        return APPLICATION_DOCUMENT_STAGES
    first, last = STAGE_ORDER.index(spec.from_stage), STAGE_ORDER.index(Stage.DISBURSEMENT)
    return tuple(STAGE_ORDER[first : last + 1])


def check_document_stage(kind: DocumentKind, stage: Stage) -> None:
    """Whether a document of `kind` is accepted in `stage` at all (409 if not)."""
    if stage.terminal:
        raise conflict(f"the deal is {stage.value}; no further actions are possible")
    stages = document_stages(kind)
    if stage in stages:
        return
    spec = FUNDING_DOCUMENTS.get(kind)
    allowed = ", ".join(s.value for s in stages)
    if spec is None:
        raise conflict(
            f"record-document of {kind.value} is not allowed in stage {stage.value} "
            f"(only in {allowed})"
        )
    if STAGE_ORDER.index(stage) < STAGE_ORDER.index(spec.from_stage):
        raise conflict(
            f"{kind.value} evidences {spec.evidences}, recorded in {spec.from_stage.value}; "
            f"the deal is in {stage.value} (accepted in {allowed})"
        )
    raise conflict(
        f"{kind.value} is accepted up to the disbursement (in {allowed}); the deal is in "
        f"{stage.value}"
    )


def funding_document_problem(
    kind: DocumentKind, stage: Stage, enabled: bool, stalled: bool
) -> RuleError | None:
    """Why a funding document cannot be recorded now, if it cannot.

    `enabled`: the deal runs with the funding package (patch `funding-package`);
    `stalled`: its last disbursement request stalled (rules.view.stalled_disbursement).
    """
    if not enabled:
        return conflict(
            f"this deal started before the funding package: its disbursement request "
            f"carries reference numbers only, and {kind.value} is not recorded on it"
        )
    try:
        check_document_stage(kind, stage)
    except RuleError as e:
        return e
    if stage is Stage.DISBURSEMENT and not stalled:
        return conflict(
            f"a disbursement request is open at the lender; a replacement {kind.value} is "
            "accepted once it has stalled (refused, failed for the last time, or paid "
            "another amount), for the retry to carry"
        )
    return None


def funding_package(documents: Iterable[DocumentRecord]) -> dict[DocumentKind, DocumentRecord]:
    """The newest document of each funding kind: a replacement supersedes."""
    package: dict[DocumentKind, DocumentRecord] = {}
    for doc in documents:
        if is_funding_document(doc.kind):
            package[doc.kind] = doc
    return package


def funding_checklist(documents: Iterable[DocumentRecord]) -> list[FundingItem]:
    package = funding_package(documents)
    return [
        FundingItem(
            kind=kind,
            label=spec.label,
            role=funding_uploader(kind),
            satisfied=kind in package,
            document=package.get(kind),
        )
        for kind, spec in FUNDING_DOCUMENTS.items()
    ]


def funding_complete(items: Iterable[FundingItem]) -> bool:
    return all(item.satisfied for item in items)
