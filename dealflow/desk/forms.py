"""HTML forms generated from a pydantic model's JSON schema, and the posted
form read back into the JSON payload the model validates.

Every staff action's form is made here from the API body of the action (its
input model without `actor`), so an action added later gets its form without
a template of its own. The JSON schema decides the input:

- string: a text input (a text area for long free text), `date` format: a date;
- number: a number input; money (a Decimal: number or string) steps by 0.01,
  an integer by 1; `minimum`/`maximum` become min/max;
- boolean: a checkbox;
- enum or Literal: a select; a list of them: one checkbox per choice;
- a list of plain values: a text area, one value per line;
- a list of objects: a few rows of the object's fields; an object: its fields;
- anything else: a text area holding JSON.

Field names are the payload's paths joined by dots (`fees.0.amount`), so a
pydantic error's `loc` names the field it belongs to. Reading a form back only
shapes the payload (what was left empty is left out, so defaults apply and a
missing required field is the model's error); the model and the workflow's
validator judge it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

FieldKind = Literal[
    "text",
    "textarea",
    "number",
    "date",
    "checkbox",
    "select",
    "choices",
    "lines",
    "rows",
    "group",
    "json",
]
# Posted form values by field name (a name may repeat: the checked choices).
FormValues = dict[str, list[str]]

# Strings at least this long are free text: a text area.
LONG_TEXT = 300
# Rows offered for a list of objects, beyond the example's (at least this many).
MIN_ROWS = 3


@dataclass(frozen=True)
class FormField:
    name: str
    label: str
    kind: FieldKind
    required: bool = False
    help: str = ""
    placeholder: str = ""
    step: str = ""
    minimum: str = ""
    maximum: str = ""
    max_length: int | None = None
    options: tuple[str, ...] = ()
    # What a fresh form starts with: the schema's default (selects, checkboxes).
    initial: str = ""
    # A group's fields; for a list of objects, the fields of each row.
    children: tuple[FormField, ...] = ()
    rows: tuple[tuple[FormField, ...], ...] = ()

    @property
    def dom_id(self) -> str:
        return self.name.replace(".", "-")


@dataclass
class ActionForm:
    """A form as a page shows it: its fields, what was typed, the errors."""

    action: str
    fields: tuple[FormField, ...]
    values: FormValues = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    # The form-level refusal (a rule's detail that names no field).
    detail: str = ""
    posted: bool = False
    # What a fresh form starts with beyond the schema's defaults, by field name.
    initial: dict[str, str] = field(default_factory=dict)

    def value(self, item: FormField) -> str:
        if not self.posted:
            return self.initial.get(item.name, item.initial)
        return (self.values.get(item.name) or [""])[0]

    def checked(self, item: FormField, option: str = "true") -> bool:
        if not self.posted:
            return item.initial == option
        return option in self.values.get(item.name, [])

    def error(self, item: FormField) -> str:
        return self.errors.get(item.name, "")


# --------------------------------------------------------------------------- schema → fields


@cache
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def form_fields(
    model: type[BaseModel],
    example: Mapping[str, Any] | None = None,
    only: Sequence[str] | None = None,
) -> tuple[FormField, ...]:
    """The fields of `model`'s form (those named in `only`, in its order), with
    `example`'s values as placeholders."""
    schema = _schema(model)
    builder = _Builder(schema.get("$defs", {}))
    return builder.object_fields(schema, "", example or {}, only)


def _label(name: str, schema: Mapping[str, Any]) -> str:
    title = schema.get("title")
    if isinstance(title, str) and title:
        return title
    return name.replace("_", " ").capitalize()


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _bound(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else _text(value)


class _Builder:
    def __init__(self, definitions: Mapping[str, Any]) -> None:
        self.definitions = definitions

    def resolve(self, schema: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """The schema behind `$ref`s and `X | None`, and whether None is allowed."""
        merged = dict(schema)
        nullable = False
        if "anyOf" in merged:
            options = [option for option in merged["anyOf"] if option.get("type") != "null"]
            nullable = len(options) < len(merged["anyOf"])
            if len(options) == 1:
                merged.pop("anyOf")
                merged = {**options[0], **merged}
            else:
                merged["anyOf"] = options
        ref = merged.pop("$ref", None)
        if isinstance(ref, str):
            target = self.definitions.get(ref.rsplit("/", 1)[-1], {})
            inner, inner_nullable = self.resolve(target)
            merged = {**inner, **merged}
            nullable = nullable or inner_nullable
        return merged, nullable

    def object_fields(
        self,
        schema: Mapping[str, Any],
        prefix: str,
        example: Mapping[str, Any],
        only: Sequence[str] | None = None,
    ) -> tuple[FormField, ...]:
        properties: Mapping[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", ()))
        names = [name for name in (only or properties) if name in properties]
        return tuple(
            self.field(
                f"{prefix}{name}", name, properties[name], name in required, example.get(name)
            )
            for name in names
        )

    def field(
        self, path: str, name: str, raw: Mapping[str, Any], required: bool, example: Any
    ) -> FormField:
        schema, nullable = self.resolve(raw)
        # The field's own title: a referenced model's or enum's title names its type.
        label = _label(name, raw)
        common: dict[str, Any] = {
            "name": path,
            "label": label,
            "required": required and not nullable,
            "help": str(schema.get("description") or raw.get("description") or ""),
        }
        kind = _kind(schema)
        if kind == "array":
            return self.array_field(schema, common, example)
        if kind == "group":
            nested = example if isinstance(example, Mapping) else {}
            children = self.object_fields(schema, f"{path}.", nested)
            return FormField(kind="group", children=children, **common)
        if kind == "json":
            placeholder = json.dumps(example, ensure_ascii=False) if example is not None else ""
            return FormField(kind="json", placeholder=placeholder, **common)
        return _scalar_field(kind, schema, common, example)

    def array_field(
        self, schema: Mapping[str, Any], common: dict[str, Any], example: Any
    ) -> FormField:
        items, _ = self.resolve(schema.get("items", {}))
        examples = list(example) if isinstance(example, list) else []
        if "enum" in items or "const" in items:
            return FormField(kind="choices", options=_options(items), **common)
        if _kind(items) == "group":
            most = schema.get("maxItems")
            count = max(len(examples) + 1, MIN_ROWS)
            count = min(count, most) if isinstance(most, int) else count
            rows = tuple(
                self.object_fields(
                    items,
                    f"{common['name']}.{index}.",
                    examples[index] if index < len(examples) else {},
                )
                for index in range(count)
            )
            return FormField(kind="rows", rows=rows, **common)
        if _kind(items) in ("text", "textarea", "number", "date"):
            placeholder = "\n".join(_text(value) for value in examples)
            return FormField(kind="lines", placeholder=placeholder, **common)
        return FormField(
            kind="json", placeholder=json.dumps(examples, ensure_ascii=False), **common
        )


def _kind(schema: Mapping[str, Any]) -> str:
    if "enum" in schema or "const" in schema:
        return "select"
    types = {option.get("type") for option in schema.get("anyOf", ())} or {schema.get("type")}
    if types in ({"number", "string"}, {"integer", "string"}):
        # A Decimal: money, or another exact amount (a decimal string, or a
        # whole number as the published schema also allows).
        return "number"
    kinds = {
        "string": "date" if schema.get("format") == "date" else "text",
        "integer": "number",
        "number": "number",
        "boolean": "checkbox",
        "array": "array",
        "object": "group" if "properties" in schema else "json",
    }
    found = [kinds.get(str(kind), "json") for kind in types]
    return found[0] if len(found) == 1 else "json"


def _options(schema: Mapping[str, Any]) -> tuple[str, ...]:
    if "const" in schema:
        return (_text(schema["const"]),)
    return tuple(_text(value) for value in schema.get("enum", ()))


def _scalar_field(
    kind: str, schema: Mapping[str, Any], common: dict[str, Any], example: Any
) -> FormField:
    initial = _text(schema.get("default"))
    if kind == "select":
        return FormField(kind="select", options=_options(schema), initial=initial, **common)
    if kind == "checkbox":
        # A checkbox always sends an answer (unticked is false): never `required`.
        return FormField(
            kind="checkbox",
            initial="true" if schema.get("default") is True else "",
            **{**common, "required": False},
        )
    placeholder = _text(example)
    if kind == "number":
        step, minimum, maximum = _number_bounds(schema)
        return FormField(
            kind="number",
            placeholder=placeholder,
            step=step,
            minimum=minimum,
            maximum=maximum,
            **common,
        )
    if kind == "date":
        return FormField(kind="date", placeholder=placeholder, initial=initial, **common)
    longest = schema.get("maxLength")
    long_text = isinstance(longest, int) and longest >= LONG_TEXT
    return FormField(
        kind="textarea" if long_text else "text",
        placeholder=placeholder,
        max_length=longest if isinstance(longest, int) else None,
        initial=initial,
        **common,
    )


def _number_bounds(schema: Mapping[str, Any]) -> tuple[str, str, str]:
    """step, min and max of a number input: by 0.01 for a Decimal (money), 1 for an integer."""
    numeric = next(
        (
            option
            for option in schema.get("anyOf", ())
            if option.get("type") in ("number", "integer")
        ),
        schema,
    )
    step = "1" if schema.get("type") == "integer" else "0.01" if "anyOf" in schema else "any"
    minimum = _bound(numeric.get("minimum"))
    above_zero = numeric.get("exclusiveMinimum") is not None or (
        step == "0.01" and numeric.get("type") == "integer" and numeric.get("minimum") == 1
    )
    if above_zero:
        # More than 0 (gt=0 money, or its whole-number form from 1): the smallest
        # amount above it, one fen (one for an integer).
        minimum = "1" if step == "1" else "0.01" if step == "0.01" else ""
    return step, minimum, _bound(numeric.get("maximum"))


# --------------------------------------------------------------------------- form → payload


def parse_form(
    fields: Sequence[FormField], form: Mapping[str, Sequence[str]]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON payload of a posted form, and the fields that could not even be
    read (JSON that does not parse). Empty fields are left out."""
    errors: dict[str, str] = {}
    payload = _parse_fields(fields, form, errors)
    return payload, errors


def _first(form: Mapping[str, Sequence[str]], name: str) -> str:
    values = form.get(name) or [""]
    return values[0].strip()


def _parse_fields(
    fields: Sequence[FormField], form: Mapping[str, Sequence[str]], errors: dict[str, str]
) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    for item in fields:
        value = _parse_field(item, form, errors)
        if value is not None:
            payload[item.name.rsplit(".", 1)[-1]] = value
    return payload


def _parse_field(item: FormField, form: Mapping[str, Sequence[str]], errors: dict[str, str]) -> Any:
    if item.kind == "checkbox":
        return "true" in (form.get(item.name) or [])
    if item.kind == "choices":
        return [value for value in form.get(item.name) or [] if value]
    if item.kind == "lines":
        text = _first(form, item.name)
        return [line.strip() for line in text.splitlines() if line.strip()] if text else None
    if item.kind == "rows":
        rows = [_parse_fields(row, form, errors) for row in item.rows]
        # A row of nothing but unticked boxes was left empty.
        filled = [row for row in rows if any(value is not False for value in row.values())]
        return filled if filled or item.required else None
    if item.kind == "group":
        group = _parse_fields(item.children, form, errors)
        return group or None
    text = _first(form, item.name)
    if not text:
        return None
    if item.kind == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            errors[item.name] = f"not valid JSON: {error.msg} (line {error.lineno})"
            return None
    if item.kind == "number" and item.step == "1" and text.strip().lstrip("-").isdigit():
        # A count goes as the JSON integer the API takes ("36" is refused there).
        return int(text.strip())
    return text


# --------------------------------------------------------------------------- payload → form


def form_values(fields: Sequence[FormField], payload: Mapping[str, Any]) -> FormValues:
    """What a browser posts for `payload` typed into the form (the inverse of `parse_form`)."""
    values: FormValues = {}
    for item in fields:
        value = payload.get(item.name.rsplit(".", 1)[-1])
        if value is None:
            continue
        if item.kind == "checkbox":
            if value is True:
                values[item.name] = ["true"]
        elif item.kind == "choices":
            values[item.name] = [_text(choice) for choice in value]
        elif item.kind == "lines":
            values[item.name] = ["\n".join(_text(line) for line in value)]
        elif item.kind == "rows":
            for row, row_payload in zip(item.rows, value, strict=False):
                values.update(form_values(row, row_payload))
        elif item.kind == "group":
            values.update(form_values(item.children, value))
        elif item.kind == "json":
            values[item.name] = [json.dumps(value, ensure_ascii=False)]
        else:
            values[item.name] = [_text(value)]
    return values


# --------------------------------------------------------------------------- errors


def _names(fields: Sequence[FormField]) -> set[str]:
    found: set[str] = set()
    for item in fields:
        found.add(item.name)
        found |= _names(item.children)
        for row in item.rows:
            found |= _names(row)
    return found


def place_errors(
    fields: Sequence[FormField], error: ValidationError
) -> tuple[dict[str, str], list[str]]:
    """A pydantic error's messages by the field they name (the nearest field up
    its `loc`), and those that name no field of the form."""
    names = _names(fields)
    by_field: dict[str, str] = {}
    unplaced: list[str] = []
    for problem in error.errors():
        path = [str(part) for part in problem["loc"]]
        message = str(problem["msg"])
        while path and ".".join(path) not in names:
            path.pop()
        if not path:
            where = ".".join(str(part) for part in problem["loc"])
            unplaced.append(f"{where}: {message}" if where else message)
            continue
        name = ".".join(path)
        by_field[name] = f"{by_field[name]}; {message}" if name in by_field else message
    return by_field, unplaced
