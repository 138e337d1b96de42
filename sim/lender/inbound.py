"""Reading a lender-API request: its JSON body (with a canonical hash for idempotency)
and its Idempotency-Key header."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Annotated, TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sim.lender.problems import Problem, validation_errors

M = TypeVar("M", bound=BaseModel)


class WithdrawalBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
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
    canonical = json.dumps(obj.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return obj, hashlib.sha256(canonical.encode()).hexdigest()


def idempotency_key(request: Request) -> str:
    key = request.headers.get("idempotency-key", "").strip()
    if not key:
        raise Problem(400, "the Idempotency-Key header is required")
    if len(key) > 255:
        raise Problem(400, "the Idempotency-Key header is longer than 255 characters")
    return key
