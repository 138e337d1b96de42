"""The action forms generated from the actions' models (dealflow/desk/forms.py):
every action's example, typed into its form and read back, is a payload its
model accepts; each JSON type gets its input; errors land on their fields."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field, ValidationError

from dealflow.api.routes.deals import body_model
from dealflow.desk import forms
from dealflow.models import ACTION_INPUTS, Action, PosMoney, Strict
from dealflow.samples import example_action


def _by_name(fields: tuple[forms.FormField, ...]) -> dict[str, forms.FormField]:
    return {item.name: item for item in fields}


@pytest.mark.parametrize("action", list(ACTION_INPUTS), ids=lambda action: action.value)
def test_every_actions_example_goes_through_its_form_unchanged(action: Action) -> None:
    model = body_model(action)
    example = example_action(action.value, date.today())
    fields = forms.form_fields(model, example)
    assert {item.name for item in fields} == set(model.model_fields)
    posted = forms.form_values(fields, example)
    payload, errors = forms.parse_form(fields, posted)
    assert errors == {}
    assert model.model_validate(payload) == model.model_validate(example)
    # Every field is labelled, and the example shows as placeholders.
    assert all(item.label for item in fields)
    for name, value in example.items():
        item = _by_name(fields)[name]
        if item.kind in ("text", "textarea", "number", "date"):
            assert item.placeholder == str(value)


def test_each_json_type_gets_its_input() -> None:
    fields = _by_name(
        forms.form_fields(
            body_model(Action.SIGN_SALES_CONTRACT),
            example_action(Action.SIGN_SALES_CONTRACT.value),
        )
    )
    down = fields["down_payment"]
    assert (down.kind, down.step, down.minimum, down.required) == ("number", "0.01", "0", True)
    assert down.placeholder == "45000.00"
    assert fields["contract_no"].kind == "text" and fields["contract_no"].max_length == 64
    copies = fields["copies_routed_to"]
    assert copies.kind == "choices"
    assert copies.options == ("information_clerk", "finance", "sales_consultant")
    assert fields["accessories"].kind == "lines"
    assert fields["accessories"].placeholder == "floor mats\ndash camera"
    fees = fields["fees"]
    assert fees.kind == "rows" and len(fees.rows) == 3 and not fees.required
    assert [item.name for item in fees.rows[1]] == ["fees.1.name", "fees.1.amount"]
    assert fees.rows[1][0].placeholder == "GPS installation"

    insurance = _by_name(forms.form_fields(body_model(Action.RECORD_INSURANCE)))
    assert insurance["starts_on"].kind == "date"
    assert insurance["cover_amount"].minimum == "0.01", "gt=0 money starts at one fen"
    deliver = _by_name(forms.form_fields(body_model(Action.DELIVER)))
    assert deliver["service_card_given"].kind == "checkbox"
    assert not deliver["service_card_given"].required, "unticked is an answer: false"
    follow_up = _by_name(forms.form_fields(body_model(Action.RECORD_FOLLOW_UP)))
    assert follow_up["call"].kind == "select" and follow_up["call"].options == ("day3", "day30")
    assert follow_up["outcome"].kind == "textarea"
    document = _by_name(forms.form_fields(body_model(Action.RECORD_DOCUMENT)))
    assert document["party"].kind == "select" and document["party"].initial == "applicant"
    assert not document["id_number"].required and document["id_number"].kind == "text"
    assert document["size"].step == "1"


def test_only_picks_fields_in_the_order_given() -> None:
    fields = forms.form_fields(body_model(Action.RECORD_DOCUMENT), only=("party", "kind"))
    assert [item.name for item in fields] == ["party", "kind"]


def test_empty_fields_are_left_out_and_the_model_names_what_is_missing() -> None:
    model = body_model(Action.RECORD_INVOICE)
    fields = forms.form_fields(model)
    payload, errors = forms.parse_form(fields, {"invoice_no": ["INV-1"], "amount": [" "]})
    assert payload == {"invoice_no": "INV-1"} and errors == {}
    with pytest.raises(ValidationError) as refused:
        model.model_validate(payload)
    by_field, unplaced = forms.place_errors(fields, refused.value)
    assert set(by_field) == {"amount", "coc_request_no"} and unplaced == []
    assert "required" in by_field["amount"].lower()


def test_an_error_inside_a_row_lands_on_the_rows_field() -> None:
    model = body_model(Action.SIGN_SALES_CONTRACT)
    fields = forms.form_fields(model)
    posted = {
        "contract_no": ["SC-1"],
        "down_payment": ["100"],
        "copies_routed_to": ["finance"],
        "fees.0.name": ["GPS"],
        "fees.0.amount": ["-5"],
        "accessories": ["mats\n\n  camera  "],
    }
    payload, _ = forms.parse_form(fields, posted)
    assert payload["fees"] == [{"name": "GPS", "amount": "-5"}]
    assert payload["accessories"] == ["mats", "camera"]
    with pytest.raises(ValidationError) as refused:
        model.model_validate(payload)
    by_field, _ = forms.place_errors(fields, refused.value)
    assert list(by_field) == ["fees.0.amount"]


class _Address(Strict):
    city: str
    postcode: Annotated[str, Field(max_length=10)] = ""


class _FutureInput(BaseModel):
    """A model an action added later might take: shapes no action has today."""

    kind: Literal["unwind"]
    amounts: list[PosMoney]
    address: _Address
    counts: Annotated[list[int], Field(max_length=5)] = Field(default_factory=list)
    extra: dict[str, int] = Field(default_factory=dict)
    retry_on: date | None = None
    rate: float = 1.5


def test_models_of_later_actions_get_forms_too() -> None:
    example = {
        "kind": "unwind",
        "amounts": ["10.00", "2.50"],
        "address": {"city": "Hangzhou", "postcode": "310000"},
        "counts": [1, 2],
        "extra": {"a": 1},
        "retry_on": "2026-03-01",
        "rate": 2.5,
    }
    fields = forms.form_fields(_FutureInput, example)
    by_name = _by_name(fields)
    assert by_name["kind"].kind == "select" and by_name["kind"].options == ("unwind",)
    assert by_name["amounts"].kind == "lines"
    assert by_name["address"].kind == "group"
    assert [item.name for item in by_name["address"].children] == [
        "address.city",
        "address.postcode",
    ]
    assert by_name["extra"].kind == "json"
    assert by_name["retry_on"].kind == "date" and not by_name["retry_on"].required
    assert by_name["rate"].step == "any"
    payload, errors = forms.parse_form(fields, forms.form_values(fields, example))
    assert errors == {}
    parsed = _FutureInput.model_validate(payload)
    assert parsed == _FutureInput.model_validate(example)
    assert parsed.amounts == [Decimal("10.00"), Decimal("2.50")]


def test_json_that_does_not_parse_is_named() -> None:
    fields = forms.form_fields(_FutureInput)
    _, errors = forms.parse_form(fields, {"extra": ["{oops"]})
    assert errors["extra"].startswith("not valid JSON")


def test_a_form_shows_what_was_typed_or_else_the_defaults() -> None:
    fields = _by_name(forms.form_fields(body_model(Action.RECORD_FOLLOW_UP)))
    fresh = forms.ActionForm("record-follow-up", tuple(fields.values()))
    assert fresh.value(fields["call"]) == "" and not fresh.checked(fields["review_requested"])
    known = forms.ActionForm("record-follow-up", tuple(fields.values()), initial={"call": "day3"})
    assert known.value(fields["call"]) == "day3"
    posted = forms.ActionForm(
        "record-follow-up",
        tuple(fields.values()),
        values={"call": ["day30"], "outcome": ["happy"]},
        posted=True,
    )
    assert posted.value(fields["call"]) == "day30" and posted.value(fields["outcome"]) == "happy"
    assert not posted.checked(fields["review_requested"])
