"""The lender's check of a disbursement request's funding package: every
required document present, each fetched by its link and its bytes matching
the sha256 and size the request names. A request without a package is taken
as before the package existed, unless the lender (SimConfig) or the deal's
script requires one."""

from __future__ import annotations

import hashlib

import httpx

from dealflow.models import DisbursementRequest, FundingDocument
from sim.lender.problems import Problem

REQUIRED_DOCUMENTS = ("signed_loan_contract", "insurance_policy_page", "vehicle_invoice")


async def check_funding_package(
    http: httpx.AsyncClient, req: DisbursementRequest, required: bool
) -> None:
    """Raise a Problem naming the document that is missing, unreadable or not
    the one the request describes (422), or whose link cannot be reached (503)."""
    package = req.funding_package
    if package is None:
        if required:
            raise Problem(
                422,
                "this lender pays out only against a funding_package ("
                + ", ".join(REQUIRED_DOCUMENTS)
                + ")",
            )
        return
    kinds = {doc.kind for doc in package}
    missing = [kind for kind in REQUIRED_DOCUMENTS if kind not in kinds]
    if missing:
        raise Problem(
            422,
            "the funding package lacks the " + ", ".join(missing),
            [{"document": kind, "problem": "missing"} for kind in missing],
        )
    for doc in package:
        await _check_document(http, doc)


async def _check_document(http: httpx.AsyncClient, doc: FundingDocument) -> None:
    try:
        resp = await http.get(doc.url)
    except httpx.HTTPError as e:
        # Our side or the network: the request may be sent again.
        raise Problem(
            503, f"funding document {doc.kind}: its link could not be fetched ({type(e).__name__})"
        ) from e
    if resp.status_code != 200:
        raise Problem(
            422,
            f"funding document {doc.kind}: its link answered {resp.status_code}",
            [{"document": doc.kind, "problem": f"link answered {resp.status_code}"}],
        )
    digest = hashlib.sha256(resp.content).hexdigest()
    if digest != doc.sha256 or len(resp.content) != doc.size:
        raise Problem(
            422,
            f"funding document {doc.kind}: the file behind its link (sha256 {digest[:12]}…, "
            f"{len(resp.content)} bytes) is not the one the request names (sha256 "
            f"{doc.sha256[:12]}…, {doc.size} bytes)",
            [{"document": doc.kind, "problem": "sha256 mismatch"}],
        )
