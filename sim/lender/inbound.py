"""Reading a lender-API request: its JSON body (with a canonical hash for idempotency),
an application's fingerprint, and its Idempotency-Key header."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dealflow.models import ApplicationPackage, DisbursementRequest
from sim.lender.problems import Problem, validation_errors

M = TypeVar("M", bound=BaseModel)


class WithdrawalBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class RepaymentBody(BaseModel):
    """A borrower's dealer paying back a disbursement (an unwind after funding)."""

    model_config = ConfigDict(extra="ignore")
    deal_id: Annotated[str, Field(min_length=1, max_length=100)]
    amount: Annotated[Decimal, Field(gt=0, max_digits=14, decimal_places=2)]
    transaction_ref: Annotated[str, Field(min_length=1, max_length=100)]
    reason: Annotated[str, Field(min_length=1, max_length=500)]


def parse_body(model: type[M], raw: bytes) -> tuple[M, str]:
    """Parse a JSON body into `model`; returns the model and a canonical hash for
    idempotency checks. JSON numbers become Decimal, never float."""
    try:
        data = json.loads(raw, parse_float=Decimal)
    except ValueError as e:
        raise Problem(422, f"body is not valid JSON: {e}") from e
    try:
        obj = model.model_validate(data)
    except ValidationError as e:
        raise Problem(422, f"invalid {model.__name__}", validation_errors(e)) from e
    return obj, _canonical_hash(obj.model_dump(mode="json"))


def _canonical_hash(data: Any) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def application_fingerprint(package: ApplicationPackage) -> str:
    """What makes two requests under one Idempotency-Key the same application:
    the whole package except the documents' links. DealFlow signs the links at
    every attempt, so a retry carries fresher URLs for the same documents (kind,
    party, sha256, content type); another document or figure is another package."""
    data = package.model_dump(mode="json")
    for document in data["documents"]:
        del document["url"]
    return _canonical_hash(data)


def disbursement_fingerprint(req: DisbursementRequest) -> str:
    """What makes two disbursement requests under one Idempotency-Key the same:
    the whole request except the funding documents' links, signed afresh at
    every attempt. A request without a package hashes as before it existed."""
    data = req.model_dump(mode="json")
    if data["funding_package"] is None:
        del data["funding_package"]
    else:
        for document in data["funding_package"]:
            del document["url"]
    return _canonical_hash(data)


def idempotency_key(request: Request) -> str:
    key = request.headers.get("idempotency-key", "").strip()
    if not key:
        raise Problem(400, "the Idempotency-Key header is required")
    if len(key) > 255:
        raise Problem(400, "the Idempotency-Key header is longer than 255 characters")
    return key
