"""Request bodies as the API reads them: the workflow's input models, with the
published JSON schema enforced.

The workflow models stay lenient on purpose: they also read payloads out of
Temporal histories, which must replay as they were written. At the API the
contract is the schema: a boolean is `true` or `false` (not 0, 1 or "yes"), a
count is a JSON integer (not "36"), a date is YYYY-MM-DD, and an amount is a decimal
string that matches its pattern or a JSON integer in range
(`dealflow.models.base.DecimalText`). `boundary_model` builds, once per model,
a subclass whose fields say so; the subclass keeps every validator of its
model, and the routes hand the workflow a plain model made from it."""

from __future__ import annotations

import re
import types
from copy import copy
from datetime import date
from functools import cache
from inspect import isclass
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, Strict, create_model
from pydantic.fields import FieldInfo

from dealflow.models.base import DecimalText

ModelT = TypeVar("ModelT", bound=BaseModel)
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def iso_date(value: object) -> object:
    """A date as the schema's `format: date` has it; Pydantic alone would also
    read 0 or "1700000000" as a Unix time."""
    if value is None or isinstance(value, date) or isinstance(value, str) and ISO_DATE.match(value):
        return value
    raise ValueError("a date is written YYYY-MM-DD")


def json_integer(value: object) -> object:
    """An integer as JSON has it (12 or 12.0); Pydantic alone would also take
    "12" and true."""
    if isinstance(value, bool | str):
        raise ValueError("a count is a JSON integer, e.g. 36")
    return value


def _amount_checks(metadata: list[Any]) -> list[BeforeValidator]:
    return [BeforeValidator(m.check) for m in metadata if isinstance(m, DecimalText)]


# What the API adds to a scalar's own constraints. Added after them: Pydantic
# states a constraint in the JSON schema only when no validator precedes it.
SCALAR_CHECKS: dict[Any, list[Any]] = {
    bool: [Strict()],
    int: [BeforeValidator(json_integer)],
    date: [BeforeValidator(iso_date)],
}


def strict_annotation(annotation: Any) -> Any:
    """`annotation` with the API's reading of each scalar, through unions,
    lists and nested models."""
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *metadata = get_args(annotation)
        if inner in SCALAR_CHECKS:
            return Annotated[(inner, *metadata, *SCALAR_CHECKS[inner])]
        return Annotated[(strict_annotation(inner), *metadata, *_amount_checks(metadata))]
    if origin in (Union, types.UnionType):
        return Union[tuple(strict_annotation(arg) for arg in get_args(annotation))]  # noqa: UP007
    if origin is list:
        (item,) = get_args(annotation)
        return list[strict_annotation(item)]  # type: ignore[misc]
    if annotation in SCALAR_CHECKS:
        return Annotated[(annotation, *SCALAR_CHECKS[annotation])]
    if isclass(annotation) and issubclass(annotation, BaseModel):
        return boundary_model(annotation)
    return annotation


def boundary_field(info: FieldInfo) -> tuple[Any, FieldInfo]:
    """A model field as `create_model` takes it, read as the API reads it: the
    field's own constraints first, then the API's checks."""
    field = copy(info)
    checks = [*SCALAR_CHECKS.get(info.annotation, []), *_amount_checks(info.metadata)]
    if checks:
        field.metadata = [*info.metadata, *checks]
        return info.annotation, field
    return strict_annotation(info.annotation), field


@cache
def boundary_model(model: type[ModelT]) -> type[ModelT]:
    """`model` as a request body: same name, fields, constraints and validators,
    with the published schema's types enforced."""
    fields = {name: boundary_field(info) for name, info in model.model_fields.items()}
    built: type[ModelT] = create_model(  # type: ignore[call-overload]
        model.__name__, __base__=model, __module__=model.__module__, **fields
    )
    return built
