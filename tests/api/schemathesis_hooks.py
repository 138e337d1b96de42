"""Schemathesis extension for tests/api/test_api_schema.py (loaded through
SCHEMATHESIS_HOOKS): keeps the 422 allowance for business rules narrow.

A schema-valid request may be refused with 422 when a business rule refuses
it, which JSON Schema cannot state. It must not be refused for its form: a
type, a pattern, a missing or an unknown field are what the schema describes,
so such a refusal means the schema and the API disagree."""

from __future__ import annotations

from typing import Any

import schemathesis

# Words of the refusals that judge a request's form (Pydantic's and the API's
# own), never a business rule's.
FORM_REFUSALS = (
    "Input should be",
    "String should",
    "Field required",
    "Extra inputs are not permitted",
    "not an amount as the API takes it",
    "write amounts as decimal strings",
    "a date is written",
    "unknown field",
    "must be base64",
    # The upload's parts: any order the schema allows is taken, so a refusal
    # naming a required part means the route misread the form.
    "kind is required",
    "party is required",
    "the file part",
)


@schemathesis.check
def schema_valid_request_not_refused_for_its_form(ctx: Any, response: Any, case: Any) -> None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return
    try:
        detail = str(response.json().get("detail", ""))
    except ValueError:
        return
    words = [w for w in FORM_REFUSALS if w in detail]
    if words:
        raise AssertionError(f"a schema-valid request was refused for its form: {detail[:300]}")


@schemathesis.check
def no_server_error_but_a_documented_retry(ctx: Any, response: Any, case: Any) -> None:
    """Every 5xx fails, but the API's documented 503 for a deal that cannot be
    read in time (problem+json, Retry-After, "retry shortly")."""
    if response.status_code < 500:
        return
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    retry = response.headers.get("retry-after")
    try:
        detail = str(response.json().get("detail", ""))
    except ValueError:
        detail = ""
    documented = (
        response.status_code == 503
        and retry
        and content_type.startswith("application/problem+json")
        and "retry shortly" in detail
    )
    if not documented:
        raise AssertionError(f"server error {response.status_code}: {detail[:300]}")
