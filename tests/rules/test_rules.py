"""The pure business rules, by example and by property (hypothesis)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_DOWN, Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dealflow import rules
from dealflow.models import (
    Action,
    Actor,
    Compensation,
    DealInput,
    DealPolicy,
    DealState,
    Decision,
    DocumentKind,
    DocumentRecord,
    Party,
    Product,
    Role,
    Stage,
    fmt_money,
    money,
)
from dealflow.samples import example_deal

POLICY = DealPolicy()
LENDERS = ["acme-auto-finance", "beta-motor-credit"]
TODAY = date(2026, 12, 1)
money_st = st.decimals(min_value=Decimal("1000.00"), max_value=Decimal("5000000.00"), places=2)


def deal_with(**changes: object) -> DealInput:
    return example_deal().model_copy(update=changes)


# --------------------------------------------------------------------------- money


def test_money_is_decimal_with_two_places_never_float() -> None:
    d = example_deal()
    assert isinstance(d.vehicle.price, Decimal)
    assert d.amount_financed == Decimal("105000.00")
    with pytest.raises(ValidationError):
        DealInput.model_validate({**d.model_dump(mode="json"), "down_payment": "1.005"})
    with pytest.raises(ValidationError):
        DealInput.model_validate({**d.model_dump(mode="json"), "down_payment": "NaN"})
    with pytest.raises(ValidationError):
        DealInput.model_validate({**d.model_dump(mode="json"), "down_payment": "-5.00"})


@given(price=money_st, ratio=st.decimals(min_value=0, max_value=1, places=2))
def test_amount_financed_is_price_minus_down_payment_exactly(
    price: Decimal, ratio: Decimal
) -> None:
    down = money(price * ratio)
    deal = deal_with(
        vehicle=example_deal().vehicle.model_copy(update={"price": price}), down_payment=down
    )
    assert deal.amount_financed == price - down
    assert deal.amount_financed.as_tuple().exponent == -2


@given(value=st.decimals(min_value=0, max_value=Decimal("999999999999.99"), places=2))
def test_formatted_money_reads_back_as_the_same_amount(value: Decimal) -> None:
    assert Decimal(fmt_money(value).replace(",", "")) == value


# --------------------------------------------------------------------------- loan ratio


@pytest.mark.parametrize(
    ("product", "condition", "new_energy", "ratio"),
    [
        (Product.NEW_CAR, "new", False, "0.80"),
        (Product.NEW_ENERGY_CAR, "new", True, "0.85"),
        (Product.USED_CAR, "used", False, "0.70"),
    ],
)
def test_amount_financed_may_not_exceed_the_products_loan_ratio(
    product: Product, condition: str, new_energy: bool, ratio: str
) -> None:
    price = Decimal("200000.00")
    vehicle = example_deal().vehicle.model_copy(
        update={"price": price, "condition": condition, "new_energy": new_energy}
    )
    at_limit = money(price * (1 - Decimal(ratio)))
    rules.validate_deal(
        deal_with(vehicle=vehicle, product=product, down_payment=at_limit), POLICY, LENDERS, TODAY
    )
    with pytest.raises(rules.RuleError) as e:
        rules.validate_deal(
            deal_with(vehicle=vehicle, product=product, down_payment=at_limit - Decimal("0.01")),
            POLICY,
            LENDERS,
            TODAY,
        )
    assert "exceeds" in e.value.message and f"{at_limit:,.2f}" in e.value.message


@given(price=money_st, down=money_st, product=st.sampled_from(list(Product)))
def test_ratio_rule_accepts_exactly_the_deals_within_the_limit(
    price: Decimal, down: Decimal, product: Product
) -> None:
    vehicle = example_deal().vehicle.model_copy(
        update={
            "price": price,
            "condition": "used" if product is Product.USED_CAR else "new",
            "new_energy": product is Product.NEW_ENERGY_CAR,
        }
    )
    deal = deal_with(vehicle=vehicle, product=product, down_payment=down)
    cap = (price * POLICY.max_loan_ratio[product]).quantize(Decimal("0.01"), ROUND_DOWN)
    within = down < price and deal.amount_financed <= cap
    try:
        rules.validate_deal(deal, POLICY, LENDERS, TODAY)
        accepted = True
    except rules.RuleError:
        accepted = False
    assert accepted == within


def test_deal_rules_name_every_problem_at_once() -> None:
    deal = deal_with(
        lender_ids=["acme-auto-finance", "acme-auto-finance", "nobody"], product=Product.USED_CAR
    )
    with pytest.raises(rules.RuleError) as e:
        rules.validate_deal(deal, POLICY, LENDERS, TODAY)
    msg = e.value.message
    assert "appears twice" in msg and "unknown lender 'nobody'" in msg and "used_car" in msg


def test_loan_ratio_caps_round_down_to_the_fen() -> None:
    """80 % of 100,000.01 is 80,000.008: the cap is 80,000.00, never a fen over."""
    assert rules.financing_limit(Decimal("100000.01"), Product.NEW_CAR, POLICY) == Decimal(
        "80000.00"
    )
    assert rules.financing_limit(Decimal("100000.09"), Product.NEW_CAR, POLICY) == Decimal(
        "80000.07"
    )


@pytest.mark.parametrize(
    ("decision", "amount", "problem"),
    [
        (Decision.APPROVED, None, None),
        (Decision.APPROVED, "105000.00", None),
        (Decision.APPROVED, "1.00", None),
        (Decision.DECLINED, "-1.00", None),
        (Decision.APPROVED, "0.00", "the approved names 0.00, not a positive amount"),
        (Decision.CONDITIONAL, "-0.01", "the conditional names -0.01, not a positive amount"),
        (
            Decision.COUNTER_OFFER,
            "105000.01",
            "the counter-offer names 105,000.01, more than the 105,000.00 requested",
        ),
        (Decision.COUNTER_OFFER, None, "a counter-offer must name the amount offered"),
    ],
)
def test_a_lender_amount_must_be_positive_and_within_the_request(
    decision: Decision, amount: str | None, problem: str | None
) -> None:
    named = None if amount is None else Decimal(amount)
    cap = Decimal("120000.00")
    assert rules.lender_amount_problem(decision, named, Decimal("105000.00"), cap) == problem


def test_a_lender_amount_must_be_within_the_loan_ratio_cap() -> None:
    """The cap is checked on its own, not only through the request."""
    assert rules.lender_amount_problem(
        Decision.APPROVED, Decimal("105000.00"), Decimal("105000.00"), Decimal("100000.00")
    ) == ("the approved names 105,000.00, more than the loan-ratio cap of 100,000.00 allows")


def test_only_an_approval_of_less_than_requested_is_partial() -> None:
    requested = Decimal("105000.00")
    assert rules.is_partial_approval(Decision.APPROVED, Decimal("104999.99"), requested)
    assert not rules.is_partial_approval(Decision.APPROVED, requested, requested)
    assert not rules.is_partial_approval(Decision.APPROVED, None, requested)
    assert not rules.is_partial_approval(Decision.COUNTER_OFFER, Decimal("1.00"), requested)


# --------------------------------------------------------------------------- identity


def id_number(birth: date, sequence: int = 1, region: str = "110105") -> str:
    body = f"{region}{birth:%Y%m%d}{sequence:03d}"
    return body + rules.id_check_character(body)


@given(
    birth=st.dates(min_value=date(1900, 1, 1), max_value=date(2099, 12, 31)),
    sequence=st.integers(min_value=0, max_value=999),
    region=st.from_regex(r"\A[0-9]{6}\Z"),
    spoil=st.sampled_from(["none", "check", "lowercase x"]),
)
def test_an_id_passes_exactly_when_its_check_is_right_its_birth_past_and_its_age_in_range(
    birth: date, sequence: int, region: str, spoil: str
) -> None:
    number = id_number(birth, sequence, region)
    if spoil == "check":
        number = number[:17] + next(c for c in "0123456789X" if c != number[17])
    if spoil == "lowercase x":
        number = number.lower()  # only an X changes: the same number, as typed
    ages = (POLICY.min_applicant_age, POLICY.max_applicant_age)
    valid = spoil != "check" and birth < TODAY and 18 <= rules.age_on(birth, TODAY) <= 70
    try:
        printed = rules.validate_id_number(number, "applicant", today=TODAY, ages=ages)
    except rules.RuleError as e:
        assert not valid, e.message
        assert number not in e.message, "the message never repeats the number"
        return
    assert valid and printed == number.upper()


def test_real_resident_ids_pass_whatever_became_of_their_region_code() -> None:
    """310115 (Pudong New Area) dates from 1993; people born there in 1980
    were issued IDs under it. The region code is not looked up."""
    assert rules.validate_id_number("310115198001010016", "applicant", today=TODAY) == (
        "310115198001010016"
    )


@pytest.mark.parametrize(
    ("number", "message"),
    [
        ("110105209001010017", "birth date is not in the past"),
        ("110105202612010014", "birth date is not in the past"),  # born today
        ("110105198002300010", "not a birth date"),
        ("11010519800101001", "17 digits and a check character"),
        ("11010519800101001Y", "17 digits and a check character"),
        ("110105198001010010", "check character does not match the other 17 digits"),
    ],
)
def test_an_id_with_a_future_or_impossible_birth_date_or_a_bad_shape_is_refused(
    number: str, message: str
) -> None:
    with pytest.raises(rules.RuleError, match=message):
        rules.validate_id_number(number, "applicant", today=TODAY)


@pytest.mark.parametrize(
    ("birth", "age"),
    [(date(2008, 12, 2), 17), (date(1955, 12, 1), 71)],
)
def test_an_applicant_outside_the_policy_age_range_is_refused(birth: date, age: int) -> None:
    deal = example_deal()
    applicant = deal.customer.applicant.model_copy(update={"id_number": id_number(birth)})
    customer = deal.customer.model_copy(update={"applicant": applicant})
    with pytest.raises(rules.RuleError, match=f"applicant is {age} years old; .* 18 to 70"):
        rules.validate_deal(deal_with(customer=customer), POLICY, LENDERS, TODAY)
    older = DealPolicy(max_applicant_age=75, min_applicant_age=17)
    rules.validate_deal(deal_with(customer=customer), older, LENDERS, TODAY)


def test_the_dealers_date_is_the_policys_time_zone_not_utc() -> None:
    """07:30 in Beijing on 1 December is still 30 November in UTC."""
    moment = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)
    assert rules.dealer_date(POLICY, moment) == date(2026, 12, 1)
    assert rules.dealer_date(DealPolicy(time_zone="UTC"), moment) == date(2026, 11, 30)
    with pytest.raises(rules.RuleError, match="not a known IANA time zone"):
        rules.dealer_date(DealPolicy(time_zone="Mars/Olympus"), moment)


def test_vin_check_digit() -> None:
    rules.validate_vin("LFV2A2158P3012345")
    with pytest.raises(rules.RuleError, match="check digit"):
        rules.validate_vin("LFV2A2159P3012345")
    with pytest.raises(rules.RuleError, match="without I, O, Q"):
        rules.validate_vin("LFV2A2158P30123O5")


# --------------------------------------------------------------------------- checklist


def _statement(start: date, end: date) -> DocumentRecord:
    return DocumentRecord(
        doc_id=f"d-{start}-{end}",
        kind=DocumentKind.BANK_STATEMENT,
        party=Party.APPLICANT,
        file_name="s.pdf",
        content_type="application/pdf",
        size=10,
        sha256="0" * 64,
        storage_key="k",
        uploaded_by="x",
        uploaded_at=datetime.now(UTC),
        period_start=start,
        period_end=end,
    )


def test_statement_window_is_the_last_six_complete_months() -> None:
    assert rules.statement_window(date(2026, 11, 28), 6) == (date(2026, 5, 1), date(2026, 10, 31))
    assert rules.statement_window(date(2026, 3, 1), 6) == (date(2025, 9, 1), date(2026, 2, 28))


@given(
    as_of=st.dates(min_value=date(2020, 1, 1), max_value=date(2035, 12, 31)),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6),
    gap_at=st.integers(min_value=0, max_value=200),
)
@settings(max_examples=200)
def test_statement_gaps_are_exactly_the_uncovered_days(
    as_of: date, cuts: list[int], gap_at: int
) -> None:
    start, end = rules.statement_window(as_of, 6)
    days = (end - start).days + 1
    # Cover the window with consecutive statements, then drop one day.
    points = sorted({0, days, *(c % days for c in cuts)})
    pairs = zip(points, points[1:], strict=False)
    periods = [(start + timedelta(p), start + timedelta(q - 1)) for p, q in pairs]
    assert rules.bank_statement_gaps([_statement(a, b) for a, b in periods], as_of, 6) == []
    hole = start + timedelta(gap_at % days)
    holed: list[DocumentRecord] = []
    for a, b in periods:
        if a <= hole <= b:
            if a < hole:
                holed.append(_statement(a, hole - timedelta(1)))
            if hole < b:
                holed.append(_statement(hole + timedelta(1), b))
        else:
            holed.append(_statement(a, b))
    assert rules.bank_statement_gaps(holed, as_of, 6) == [(hole, hole)]


def test_married_applicant_needs_marriage_certificate_and_spouse_id() -> None:
    deal = example_deal()
    state = DealState(stage_entered_at=datetime.now(UTC))
    items = rules.checklist(deal, state, POLICY, date(2026, 11, 28))
    labels = {(i.kind, i.party) for i in items}
    assert (DocumentKind.MARRIAGE_CERTIFICATE, Party.APPLICANT) in labels
    assert (DocumentKind.ID_CARD, Party.SPOUSE) in labels
    single = deal.model_copy(
        update={
            "customer": deal.customer.model_copy(
                update={
                    "applicant": deal.customer.applicant.model_copy(update={"married": False}),
                    "spouse": None,
                }
            )
        }
    )
    assert len(rules.checklist(single, state, POLICY, date(2026, 11, 28))) == 6


# --------------------------------------------------------------------------- permissions


@pytest.mark.parametrize("action", list(Action))
@pytest.mark.parametrize("role", [r for r in Role if r is not Role.ADMIN])
def test_permission_table_is_enforced_for_every_action_and_role(action: Action, role: Role) -> None:
    actor = Actor(staff_id="x", role=role)
    if role in rules.ACTION_ROLES[action]:
        rules.check_role(action, actor)
    else:
        with pytest.raises(rules.RuleError) as e:
            rules.check_role(action, actor)
        assert e.value.kind == "forbidden" and role.value in e.value.message


def test_auditors_may_not_act_and_admins_may_do_everything() -> None:
    for action in Action:
        rules.check_role(action, Actor(staff_id="a", role=Role.ADMIN))
        with pytest.raises(rules.RuleError):
            rules.check_role(action, Actor(staff_id="b", role=Role.AUDITOR))


def test_cancellation_is_possible_only_before_disbursement() -> None:
    # REGISTRATION comes before DISBURSEMENT for a lender that funds once its
    # mortgage is registered; the content check refuses it after funding.
    for stage in Stage:
        allowed = stage in rules.ACTION_STAGES[Action.CANCEL]
        before = list(Stage).index(stage) < list(Stage).index(Stage.DISBURSEMENT)
        assert allowed == (before or stage is Stage.REGISTRATION), stage


def _step(kind: str, minute: int) -> Compensation:
    at = datetime(2026, 12, 1, 9, minute, tzinfo=UTC)
    return Compensation(kind=kind, key=f"d:{kind}", registered_at=at)


def test_unwind_steps_are_undone_newest_first_the_mortgage_after_the_repayment() -> None:
    """Steps go in by when their fact was recorded (a late registration of an
    earlier fact lands in its place); the lienholder releases the mortgage
    only once repaid, so its release comes after the repayment whichever
    fact came first."""
    state = DealState(stage_entered_at=datetime(2026, 12, 1, tzinfo=UTC))
    for kind, minute in (("release_vehicle", 1), ("cancel_insurance", 3), ("release_mortgage", 5)):
        rules.register_step(state.compensations, _step(kind, minute))
    rules.register_step(state.compensations, _step("reverse_invoice", 2))
    rules.register_step(state.compensations, _step("repay_lender", 4))
    undo = [c.kind for c in reversed(state.compensations)]
    assert undo == [
        "repay_lender",
        "release_mortgage",
        "cancel_insurance",
        "reverse_invoice",
        "release_vehicle",
    ]
    first = rules.next_unwind_step(state.compensations)
    assert first is not None and first.kind == "repay_lender"
    problem = rules.unwind_step_problem(state, "release_mortgage", Role.REGISTRATION)
    assert problem is not None and problem.startswith(
        "conflict: release_mortgage is not next: steps are undone newest first; next is "
        "repay_lender (repay "
    )
    assert problem.endswith("by DealFlow")
    first.status = "refused"
    assert rules.unwind_step_problem(state, "release_mortgage", Role.REGISTRATION) is None
    assert rules.unwind_step_problem(state, "release_mortgage", Role.FINANCE) == (
        "forbidden: release_mortgage is recorded by registration, not finance"
    )
    assert rules.unwind_step_problem(state, "release_mortgage", Role.ADMIN) is None
    assert rules.unwind_step_problem(state, "refund_down_payment", Role.FINANCE) == (
        "conflict: this deal has no refund_down_payment to undo"
    )


def test_unwinding_is_refused_with_the_fact_that_stands_in_the_way() -> None:
    refusals = {
        Stage.FOLLOW_UP: "the vehicle was delivered: a delivered deal is not unwound",
        Stage.UNWINDING: "the deal is already unwinding",
        Stage.LOAN_CONTRACT: "the loan is not funded: nothing was paid out to unwind; "
        "cancel instead",
        Stage.CANCELLED: "the deal is CANCELLED; no further actions are possible",
    }
    for stage, message in refusals.items():
        with pytest.raises(rules.RuleError) as e:
            rules.check_stage(Action.UNWIND, stage)
        assert (e.value.kind, e.value.message) == ("conflict", message)


def test_content_type_is_sniffed_from_the_bytes() -> None:
    assert rules.sniff_content_type(b"%PDF-1.7 ...") == "application/pdf"
    assert rules.sniff_content_type(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert rules.sniff_content_type(b"\x89PNG\r\n\x1a\n...") == "image/png"
    assert rules.sniff_content_type(b"GIF89a") == "application/octet-stream"


# --------------------------------------------------------------------------- funding package

FUNDING_FROM = {
    DocumentKind.VEHICLE_INVOICE: Stage.INVOICING,
    DocumentKind.INSURANCE_POLICY_PAGE: Stage.INSURANCE,
    DocumentKind.SIGNED_LOAN_CONTRACT: Stage.LOAN_CONTRACT,
}


@pytest.mark.parametrize("kind", list(FUNDING_FROM), ids=lambda k: k.value)
@pytest.mark.parametrize("stage", [s for s in Stage if not s.terminal], ids=lambda s: s.value)
def test_a_funding_document_is_taken_from_the_stage_of_its_fact_to_disbursement(
    kind: DocumentKind, stage: Stage
) -> None:
    order = list(Stage)
    inside = (
        order.index(FUNDING_FROM[kind]) <= order.index(stage) <= order.index(Stage.DISBURSEMENT)
    )
    problem = rules.funding_document_problem(kind, stage, enabled=True, stalled=True)
    assert (problem is None) == inside
    if problem is not None:
        assert problem.kind == "conflict" and kind.value in problem.message


def test_in_disbursement_a_replacement_waits_for_the_request_to_stall() -> None:
    kind = DocumentKind.VEHICLE_INVOICE
    assert rules.funding_document_problem(kind, Stage.DISBURSEMENT, True, stalled=True) is None
    open_request = rules.funding_document_problem(kind, Stage.DISBURSEMENT, True, stalled=False)
    assert open_request is not None and open_request.message.startswith(
        "a disbursement request is open at the lender"
    )


def test_a_deal_started_before_the_funding_package_records_none_of_its_documents() -> None:
    problem = rules.funding_document_problem(
        DocumentKind.SIGNED_LOAN_CONTRACT, Stage.LOAN_CONTRACT, enabled=False, stalled=False
    )
    assert problem is not None
    assert problem.message.startswith("this deal started before the funding package")


@pytest.mark.parametrize("kind", list(DocumentKind), ids=lambda k: k.value)
def test_each_document_is_recorded_by_its_own_teams_only(kind: DocumentKind) -> None:
    expected = {
        DocumentKind.SIGNED_LOAN_CONTRACT: {Role.CREDIT},
        DocumentKind.INSURANCE_POLICY_PAGE: {Role.INSURANCE},
        DocumentKind.VEHICLE_INVOICE: {Role.FINANCE},
    }.get(kind, {Role.SALES, Role.CREDIT})
    for role in Role:
        actor = Actor(staff_id="x", role=role)
        if role in expected or role is Role.ADMIN:
            rules.check_document_role(kind, actor)
            continue
        with pytest.raises(rules.RuleError) as refused:
            rules.check_document_role(kind, actor)
        assert refused.value.kind == "forbidden"


def _funding_doc(doc_id: str, kind: DocumentKind, sha: str) -> DocumentRecord:
    return DocumentRecord(
        doc_id=doc_id,
        kind=kind,
        party=Party.APPLICANT,
        file_name=f"{doc_id}.pdf",
        content_type="application/pdf",
        size=10,
        sha256=sha * 64,
        storage_key=f"documents/{doc_id}",
        uploaded_by="finance-01/finance",
        uploaded_at=datetime(2026, 12, 1, tzinfo=UTC),
    )


def test_the_package_carries_the_newest_upload_of_each_kind_and_is_complete_with_all_three() -> (
    None
):
    docs = [
        _funding_doc("d1", DocumentKind.VEHICLE_INVOICE, "a"),
        _funding_doc("d2", DocumentKind.INSURANCE_POLICY_PAGE, "b"),
        _funding_doc("d3", DocumentKind.VEHICLE_INVOICE, "c"),
    ]
    package = rules.funding_package(docs)
    assert {k: d.doc_id for k, d in package.items()} == {
        DocumentKind.VEHICLE_INVOICE: "d3",
        DocumentKind.INSURANCE_POLICY_PAGE: "d2",
    }
    items = rules.funding_checklist(docs)
    assert not rules.funding_complete(items)
    assert [(i.kind, i.role) for i in items if not i.satisfied] == [
        (DocumentKind.SIGNED_LOAN_CONTRACT, Role.CREDIT)
    ]
    docs.append(_funding_doc("d4", DocumentKind.SIGNED_LOAN_CONTRACT, "d"))
    assert rules.funding_complete(rules.funding_checklist(docs))
