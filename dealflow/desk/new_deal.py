"""New deal: the form for `POST /api/deals`, checked as the clerk types.

Form fields carry the body's dotted paths as their names
(`customer.applicant.id_number`), so a pydantic error's location and a rule's
`FieldProblem.field` both name the input the message belongs beside. While the
clerk types, htmx posts the form to the preview endpoint, which answers with
the amount financed and loan ratio and, out of band, each field's errors: the
same rules (`dealflow.rules`) the API and the workflow apply, with their words.

A hidden per-form key is the start's idempotency key, so a double click or a
resent post starts one deal.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from starlette.datastructures import FormData
from temporalio.service import RPCError

from dealflow import rules
from dealflow.api import operations
from dealflow.api.deps import services
from dealflow.api.errors import Problem
from dealflow.desk.pages import render_page
from dealflow.desk.session import DeskUser, SignedIn, checked_form
from dealflow.models import DealInput, DealPolicy, Product, money
from dealflow.storage import db

router = APIRouter()

TEXT_FIELDS = (
    "dealer_id",
    "customer.applicant.full_name",
    "customer.applicant.id_number",
    "customer.applicant.phone",
    "customer.applicant.monthly_income",
    "customer.applicant.employer",
    "customer.spouse.full_name",
    "customer.spouse.id_number",
    "customer.spouse.phone",
    "vehicle.vin",
    "vehicle.make",
    "vehicle.model",
    "vehicle.condition",
    "vehicle.price",
    "down_payment",
    "term_months",
    "product",
)
FLAG_FIELDS = ("customer.applicant.married", "vehicle.new_energy")
# Every name an error can be shown beside; "" is the form as a whole.
FIELD_NAMES = (*TEXT_FIELDS, *FLAG_FIELDS, "lender_ids")
MONEY_FIELDS = frozenset({"customer.applicant.monthly_income", "vehicle.price", "down_payment"})
SPOUSE_FIELDS = ("customer.spouse.full_name", "customer.spouse.id_number", "customer.spouse.phone")
# Grouping and the currency sign are how people write amounts; the rules want digits.
MONEY_NOISE = re.compile(r"[\s,¥]|CNY|RMB", re.IGNORECASE)
FORM_KEY = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
MAX_VALUE = 500
MAX_LENDERS = 10


@dataclass
class DealForm:
    """What the clerk typed, and what the rules say about it."""

    values: dict[str, str]
    lender_ids: list[str]
    errors: dict[str, list[str]] = field(default_factory=dict)
    deal: DealInput | None = None

    def typed(self, name: str) -> bool:
        return bool(self.values.get(name))

    def fine(self, name: str) -> bool:
        """Typed and accepted by the model: a value the rules can be asked about."""
        return self.typed(name) and name not in self.errors

    def add(self, name: str, message: str) -> None:
        self.errors.setdefault(name if name in FIELD_NAMES else "", []).append(message)


@dataclass(frozen=True)
class Figures:
    """The money as the clerk types it: what is financed and what the product allows."""

    price: Decimal
    down_payment: Decimal
    amount_financed: Decimal
    loan_ratio_percent: Decimal
    max_ratio_percent: Decimal
    max_financed: Decimal
    min_down_payment: Decimal

    @property
    def within_cap(self) -> bool:
        return self.amount_financed <= self.max_financed


def figures(price: Decimal, down_payment: Decimal, product: Product, policy: DealPolicy) -> Figures:
    limit = rules.financing_limit(price, product, policy)
    financed = money(price - down_payment)
    return Figures(
        price=money(price),
        down_payment=money(down_payment),
        amount_financed=financed,
        loan_ratio_percent=_percent(financed / price),
        max_ratio_percent=_percent(rules.max_loan_ratio(product, policy)),
        max_financed=limit,
        min_down_payment=money(price - limit),
    )


def _percent(ratio: Decimal) -> Decimal:
    return (ratio * 100).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


# --------------------------------------------------------------------------- form → body


def read_form(form: FormData) -> DealForm:
    values: dict[str, str] = {}
    for name in TEXT_FIELDS:
        raw = form.get(name)
        values[name] = raw.strip()[:MAX_VALUE] if isinstance(raw, str) else ""
    for name in FLAG_FIELDS:
        values[name] = "true" if form.get(name) == "true" else ""
    lender_ids = [
        raw.strip()[:MAX_VALUE]
        for raw in form.getlist("lender_ids")[:MAX_LENDERS]
        if isinstance(raw, str) and raw.strip()
    ]
    return DealForm(values, lender_ids)


def deal_body(deal_form: DealForm) -> dict[str, Any]:
    """The nested JSON body of `POST /api/deals` from the flat form.

    An empty field is left out, so the model says it is required; the spouse
    is in the body once any of the spouse's fields is filled in."""
    body: dict[str, Any] = {}
    spouse_given = any(deal_form.typed(name) for name in SPOUSE_FIELDS)
    for name in TEXT_FIELDS:
        value = deal_form.values[name]
        if not value or (name in SPOUSE_FIELDS and not spouse_given):
            continue
        if name in MONEY_FIELDS:
            value = MONEY_NOISE.sub("", value)
        _put(body, name, value)
    for name in FLAG_FIELDS:
        _put(body, name, bool(deal_form.values[name]))
    body["lender_ids"] = list(deal_form.lender_ids)
    return body


def _put(body: dict[str, Any], dotted: str, value: object) -> None:
    *parents, leaf = dotted.split(".")
    node = body
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _field_of(location: tuple[int | str, ...]) -> str:
    """The form field a pydantic error location points at ("" for the whole form)."""
    parts = [str(part) for part in location if isinstance(part, str)]
    while parts:
        name = ".".join(parts)
        if name in FIELD_NAMES:
            return name
        parts.pop()
    return ""


def check(deal_form: DealForm, policy: DealPolicy, lenders: list[str]) -> DealForm:
    """The model's and the rules' verdict on the whole form (the submit)."""
    try:
        deal_form.deal = DealInput.model_validate(deal_body(deal_form))
    except ValidationError as e:
        for error in e.errors(include_url=False):
            deal_form.add(_field_of(error["loc"]), error["msg"])
        return deal_form
    today = rules.dealer_date(policy, datetime.now(UTC))
    for problem in rules.deal_problems(deal_form.deal, policy, lenders, today):
        deal_form.add(problem.field, problem.message)
    return deal_form


def preview(deal_form: DealForm, policy: DealPolicy, lenders: list[str]) -> Figures | None:
    """The verdict on a form still being typed: nothing said about empty fields,
    each rule asked as soon as the values it needs are there. The figures, once
    price, down payment and product are."""
    check(deal_form, policy, lenders)
    deal_form.errors = {
        name: messages
        for name, messages in deal_form.errors.items()
        if name == "lender_ids" or deal_form.typed(name)
    }
    if deal_form.deal is not None:
        return _figures_of(deal_form, policy)
    values = deal_form.values
    today = rules.dealer_date(policy, datetime.now(UTC))
    ages = (policy.min_applicant_age, policy.max_applicant_age)
    applicant_id, spouse_id = "customer.applicant.id_number", "customer.spouse.id_number"
    if deal_form.fine(applicant_id):
        spouse_typed = any(deal_form.typed(name) for name in SPOUSE_FIELDS)
        if not spouse_typed or deal_form.fine(spouse_id):
            married = bool(values["customer.applicant.married"])
            spouse = values[spouse_id] if spouse_typed else None
            problems = rules.party_problems(values[applicant_id], married, spouse, today, ages)
        else:
            problems = rules.id_number_problems(
                values[applicant_id], "applicant", applicant_id, today, ages
            )
        _add_all(deal_form, problems)
    if deal_form.fine("vehicle.vin"):
        _add_all(deal_form, rules.vin_problems(values["vehicle.vin"].upper()))
    if deal_form.fine("product") and deal_form.fine("vehicle.condition"):
        product = Product(values["product"])
        new_energy = bool(values["vehicle.new_energy"])
        _add_all(
            deal_form, rules.product_problems(product, values["vehicle.condition"], new_energy)
        )
    shown = _figures_of(deal_form, policy)
    if shown is not None:
        price, down = shown.price, shown.down_payment
        _add_all(
            deal_form, rules.financing_problems(price, down, Product(values["product"]), policy)
        )
    return shown


def _add_all(deal_form: DealForm, problems: list[rules.FieldProblem]) -> None:
    for problem in problems:
        deal_form.add(problem.field, problem.message)


def _figures_of(deal_form: DealForm, policy: DealPolicy) -> Figures | None:
    if not all(deal_form.fine(name) for name in ("vehicle.price", "down_payment", "product")):
        return None
    price = Decimal(MONEY_NOISE.sub("", deal_form.values["vehicle.price"]))
    down = Decimal(MONEY_NOISE.sub("", deal_form.values["down_payment"]))
    return figures(price, down, Product(deal_form.values["product"]), policy)


# --------------------------------------------------------------------------- routes


def _new_form_key() -> str:
    return secrets.token_urlsafe(18)


def _render_form(
    request: Request,
    user: DeskUser,
    deal_form: DealForm,
    form_key: str,
    *,
    status_code: int = 200,
    shown: Figures | None = None,
    banner: str | None = None,
) -> HTMLResponse:
    svc = services(request)
    lenders = sorted(svc.lenders)
    slots = max(1, min(len(lenders), MAX_LENDERS))
    chosen = deal_form.lender_ids or lenders[:1]
    return render_page(
        request,
        "desk/new_deal.html",
        user,
        status_code=status_code,
        section="new",
        may_start=True,
        values=deal_form.values,
        errors=deal_form.errors,
        lender_slots=[chosen[i] if i < len(chosen) else "" for i in range(slots)],
        lenders=lenders,
        products=[product.value for product in Product],
        figures=shown,
        form_key=form_key,
        banner=banner,
    )


def _refusal(request: Request, user: DeskUser) -> HTMLResponse:
    allowed = sorted(role.value for role in rules.START_DEAL_ROLES)
    return render_page(
        request,
        "desk/new_deal.html",
        user,
        status_code=403,
        section="new",
        may_start=False,
        allowed_roles=allowed,
    )


@router.get("/desk/deals/new", include_in_schema=False)
async def new_deal_form(request: Request, user: SignedIn) -> HTMLResponse:
    if not user.may(rules.START_DEAL_ROLES):
        return _refusal(request, user)
    empty = DealForm({name: "" for name in (*TEXT_FIELDS, *FLAG_FIELDS)}, [])
    empty.values["vehicle.condition"] = "new"
    empty.values["product"] = Product.NEW_CAR.value
    return _render_form(request, user, empty, _new_form_key())


@router.post("/desk/deals/new/preview", include_in_schema=False)
async def new_deal_preview(request: Request, user: SignedIn) -> HTMLResponse:
    """The htmx answer while the clerk types: figures, and each field's errors out of band."""
    if not user.may(rules.START_DEAL_ROLES):
        return _refusal(request, user)
    form = await checked_form(request, user)
    svc = services(request)
    deal_form = read_form(form)
    shown = preview(deal_form, svc.deal_policy, sorted(svc.lenders))
    return render_page(
        request,
        "desk/_new_deal_preview.html",
        user,
        section="new",
        figures=shown,
        errors=deal_form.errors,
        field_names=("", *FIELD_NAMES),
    )


@router.post("/desk/deals/new", include_in_schema=False)
async def create_deal(request: Request, user: SignedIn) -> Response:
    if not user.may(rules.START_DEAL_ROLES):
        return _refusal(request, user)
    form = await checked_form(request, user)
    svc = services(request)
    raw_key = form.get("form_key")
    form_key = raw_key if isinstance(raw_key, str) and FORM_KEY.match(raw_key) else ""
    deal_form = check(read_form(form), svc.deal_policy, sorted(svc.lenders))
    if not form_key:
        deal_form.add("", "This form is incomplete (its key is missing); it was not sent.")
        return _render_form(request, user, deal_form, _new_form_key(), status_code=422)
    if deal_form.errors or deal_form.deal is None:
        return _render_form(request, user, deal_form, form_key, status_code=422)
    actor = user.actor(rules.START_DEAL_ROLES, "start a deal")
    try:
        outcome = await operations.start_deal(
            svc, deal_form.deal, actor, f"desk:{user.staff_id}:{form_key}", user.dealers
        )
    except rules.RuleError as refusal:
        deal_form.add("", refusal.message)
        status_code = 403 if refusal.kind == "forbidden" else 422
        return _render_form(request, user, deal_form, form_key, status_code=status_code)
    except Problem as problem:
        if problem.status != 422:
            return _render_form(
                request,
                user,
                deal_form,
                form_key,
                status_code=problem.status,
                banner=problem.detail,
            )
        # The key started a deal with other details (the clerk went back and
        # changed the form): say which, and give the form a new key.
        deal_form.add(
            "", await _key_used_message(request, actor.staff_id, f"desk:{user.staff_id}:{form_key}")
        )
        return _render_form(request, user, deal_form, _new_form_key(), status_code=422)
    except RPCError:
        return _render_form(
            request,
            user,
            deal_form,
            form_key,
            status_code=503,
            banner="Temporal is not answering, so the deal was not started. The form is kept: "
            "try again in a moment.",
        )
    return RedirectResponse(f"/desk/deals/{outcome.created.deal_id}", status_code=303)


async def _key_used_message(request: Request, subject: str, key: str) -> str:
    row = await asyncio.to_thread(db.get_idempotency_key, services(request).engine, subject, key)
    started = f" (deal {row.deal_id})" if row is not None else ""
    return (
        f"This form already started a deal{started} with other details; "
        "send it again to start a new deal."
    )
