"""Staff actions refused by their Update validators, on the real dev server.

Every refusal names the rule that was broken, with the kind the API turns into
a status (conflict→409, forbidden→403, invalid→422), and writes nothing: the
deal's history has exactly the events it had before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from dealflow.models import Action, Actor, DealInput, DocumentKind, Party, Role, Stage
from dealflow.rules import RuleError, statement_window
from dealflow.samples import (
    example_action,
    example_deal,
    loan_terms_confirmation,
    sample_documents,
)
from tests.support.back_office import Desk, desk_on
from tests.support.stack import Stack

APPLICANT_ID = "110105198803120014"
SPOUSE_ID = "110105199007050021"
ACME_LEGAL = "Acme Auto Finance Co., Ltd."


@pytest.fixture
async def desk(dev_stack: Stack, database_url: str) -> AsyncIterator[Desk]:
    async with desk_on(dev_stack, database_url) as d:
        yield d


def staff(role: Role) -> Actor:
    return Actor(staff_id=f"{role.value}-07", role=role)


async def refused(
    desk: Desk,
    action: str,
    kind: str,
    message: str,
    /,
    actor: Actor | None = None,
    **changes: Any,
) -> None:
    """`action` is refused with exactly this kind and message, and the deal's
    history does not grow by a single event."""
    before = await desk.quiet_history()
    with pytest.raises(RuleError) as refusal:
        await desk.do(action, actor=actor, **changes)
    assert (refusal.value.kind, refusal.value.message) == (kind, message)
    after = await desk.history_events()
    assert [e.event_id for e in after] == [e.event_id for e in before], "history was written"


# --------------------------------------------------------------------------- role and stage

# action, a role that may not take it, the roles that may.
ROLES = [
    ("sign-sales-contract", Role.FINANCE, "admin, sales"),
    ("record-document", Role.DELIVERY, "admin, credit, finance, insurance, sales"),
    ("submit-application", Role.SALES, "admin, credit"),
    ("accept-counter-offer", Role.SALES, "admin, credit"),
    ("decline-counter-offer", Role.FINANCE, "admin, credit"),
    ("confirm-down-payment", Role.CREDIT, "admin, finance"),
    ("record-invoice", Role.SALES, "admin, finance"),
    ("record-insurance", Role.FINANCE, "admin, insurance"),
    ("record-repayment-account", Role.FINANCE, "admin, credit"),
    ("confirm-loan-terms", Role.FINANCE, "admin, credit"),
    ("sign-loan-contract", Role.SALES, "admin, credit"),
    ("record-certificate", Role.SALES, "admin, registration"),
    ("record-purchase-tax", Role.FINANCE, "admin, registration"),
    ("record-plate", Role.DELIVERY, "admin, registration"),
    ("record-mortgage", Role.CREDIT, "admin, registration"),
    ("record-stock-out", Role.SALES, "admin, delivery"),
    ("record-settlement", Role.DELIVERY, "admin, finance"),
    ("deliver", Role.SALES, "admin, delivery"),
    ("record-follow-up", Role.AUDITOR, "admin, sales"),
    ("cancel", Role.FINANCE, "admin, credit, sales"),
    ("retry-disbursement", Role.CREDIT, "admin, finance"),
    ("reconcile-disbursement", Role.SALES, "admin, finance"),
    ("unwind", Role.SALES, "admin, credit, finance"),
    ("record-unwind-step", Role.SALES, "admin, finance, insurance, registration"),
    ("answer-stipulation", Role.SALES, "admin, credit"),
    ("clear-stipulation", Role.FINANCE, "admin, credit"),
    ("waive-stipulation", Role.SALES, "admin, credit"),
    ("reject-stipulation-document", Role.SALES, "admin, credit"),
]

# action, the stages it is allowed in (all of these refused in CONTRACT).
STAGES = [
    ("submit-application", "APPLICATION"),
    ("accept-counter-offer", "UNDERWRITING"),
    ("decline-counter-offer", "UNDERWRITING"),
    ("confirm-down-payment", "DOWN_PAYMENT"),
    ("record-invoice", "INVOICING"),
    ("record-insurance", "INSURANCE"),
    ("record-repayment-account", "LOAN_CONTRACT"),
    ("confirm-loan-terms", "LOAN_CONTRACT"),
    ("sign-loan-contract", "LOAN_CONTRACT"),
    ("record-certificate", "REGISTRATION"),
    ("record-purchase-tax", "REGISTRATION"),
    ("record-plate", "REGISTRATION"),
    ("record-mortgage", "REGISTRATION"),
    ("record-stock-out", "DELIVERY"),
    ("record-settlement", "DELIVERY"),
    ("deliver", "DELIVERY"),
    ("record-follow-up", "FOLLOW_UP"),
    ("retry-disbursement", "DISBURSEMENT"),
    ("reconcile-disbursement", "DISBURSEMENT"),
    ("record-unwind-step", "UNWINDING"),
    ("answer-stipulation", "DOCUMENTS"),
    ("clear-stipulation", "DOCUMENTS"),
    ("waive-stipulation", "DOCUMENTS"),
    ("reject-stipulation-document", "DOCUMENTS"),
]


async def test_each_action_is_refused_to_a_role_that_may_not_take_it(desk: Desk) -> None:
    assert {a for a, _, _ in ROLES} == {a.value for a in Action}
    await desk.start()
    for action, role, allowed in ROLES:
        await refused(
            desk,
            action,
            "forbidden",
            f"role '{role.value}' may not {action}; allowed: {allowed}",
            actor=staff(role),
        )
    # The auditor reads; it acts on nothing.
    await refused(
        desk,
        "cancel",
        "forbidden",
        "role 'auditor' may not cancel; allowed: admin, credit, sales",
        actor=staff(Role.AUDITOR),
    )


async def test_each_action_is_refused_outside_its_stages(desk: Desk) -> None:
    await desk.start()
    for action, allowed in STAGES:
        await refused(
            desk,
            action,
            "conflict",
            f"{action} is not allowed in stage CONTRACT (only in {allowed})",
        )
    # Unwinding says which fact stands in the way, not which stages allow it.
    await refused(
        desk,
        "unwind",
        "conflict",
        "the loan is not funded: nothing was paid out to unwind; cancel instead",
    )
    await desk.do("sign-sales-contract")
    await refused(
        desk,
        "sign-sales-contract",
        "conflict",
        "sign-sales-contract is not allowed in stage DOCUMENTS (only in CONTRACT)",
    )
    await desk.upload_documents()
    await desk.do("submit-application")
    await desk.wait_stage(Stage.DOWN_PAYMENT)
    await refused(
        desk,
        "record-document",
        "conflict",
        "record-document is not allowed in stage DOWN_PAYMENT (only in CONTRACT, DOCUMENTS, "
        "APPLICATION, UNDERWRITING, INVOICING, INSURANCE, LOAN_CONTRACT, DISBURSEMENT)",
    )
    # An admin may take any action, but not outside its stage either.
    await refused(
        desk,
        "submit-application",
        "conflict",
        "submit-application is not allowed in stage DOWN_PAYMENT (only in APPLICATION)",
        actor=staff(Role.ADMIN),
    )


# --------------------------------------------------------------------------- contract, documents


async def test_sales_contract_routes_three_copies_and_states_the_deal_down_payment(
    desk: Desk,
) -> None:
    await desk.start()
    await refused(
        desk,
        "sign-sales-contract",
        "invalid",
        "the three contract copies must be routed; missing: finance, information_clerk",
        copies_routed_to=["sales_consultant"],
    )
    await refused(
        desk,
        "sign-sales-contract",
        "invalid",
        "the contract's down payment 40,000.00 does not match 45,000.00",
        down_payment="40000.00",
    )
    result = await desk.do("sign-sales-contract")
    assert result.status.stage is Stage.DOCUMENTS


def _document(**changes: Any) -> dict[str, Any]:
    return {**example_action("record-document"), **changes}


async def test_documents_are_checked_before_they_are_accepted(desk: Desk) -> None:
    await desk.start()
    await desk.do("sign-sales-contract")
    doc = "record-document"
    await refused(
        desk,
        doc,
        "invalid",
        "content type 'text/plain' is not accepted; use one of application/pdf, image/jpeg, "
        "image/png",
        content_type="text/plain",
    )
    await refused(desk, doc, "invalid", "applicant-id-front.jpg is empty", size=0)
    await refused(
        desk,
        doc,
        "invalid",
        "applicant-id-front.jpg is 30,000,000 bytes; the limit is 20,971,520",
        size=30_000_000,
    )
    await refused(
        desk, doc, "invalid", "an ID card needs the id_number printed on it", id_number=None
    )
    await refused(
        desk,
        doc,
        "invalid",
        "applicant ID number is not valid: its check character does not match the other 17 "
        "digits (one of them is mistyped)",
        id_number="110105198803120015",
    )
    await refused(
        desk,
        doc,
        "invalid",
        "the ID card's number does not match the applicant's ID number on the deal",
        id_number=SPOUSE_ID,
    )
    await refused(
        desk,
        doc,
        "invalid",
        "a proof_of_income is the applicant's document, not the spouse's",
        kind="proof_of_income",
        party="spouse",
        id_number=None,
    )
    tomorrow = desk.today + timedelta(days=1)
    await refused(
        desk,
        doc,
        "invalid",
        f"bank statement period_end {tomorrow} is in the future",
        kind="bank_statement",
        id_number=None,
        period_start=str(desk.today.replace(day=1)),
        period_end=str(tomorrow),
    )
    await refused(
        desk,
        doc,
        "invalid",
        "stipulation_code 'STIP-GUARANTOR' is not an open stipulation (open: none)",
        kind="stipulation",
        id_number=None,
        stipulation_code="STIP-GUARANTOR",
    )
    # The same file may not stand in for another kind of document.
    await desk.do(doc)
    await refused(
        desk,
        doc,
        "invalid",
        "this file (sha256 3f4c9a0e2b7d…) is already on file as the applicant's id_card; "
        "upload the drivers_licence itself",
        kind="drivers_licence",
        id_number=None,
    )
    st = await desk.status()
    assert [i.kind for i in st.checklist if i.satisfied] == [DocumentKind.ID_CARD]


async def test_uploads_that_are_not_pdf_jpeg_or_png_are_refused_before_the_deal(
    desk: Desk,
) -> None:
    await desk.start()
    await desk.do("sign-sales-contract")
    before = await desk.quiet_history()
    for data, message in (
        (
            b"MZ\x90\x00 not a scan",
            "payslip.pdf is not a PDF, JPEG or PNG file (its bytes say application/octet-stream)",
        ),
        (
            b"",
            "payslip.pdf is not a PDF, JPEG or PNG file (its bytes say application/octet-stream)",
        ),
    ):
        with pytest.raises(RuleError) as refusal:
            await desk.upload(
                {
                    "kind": DocumentKind.PROOF_OF_INCOME,
                    "party": Party.APPLICANT,
                    "file_name": "payslip.pdf",
                    "data": data,
                }
            )
        assert (refusal.value.kind, refusal.value.message) == ("invalid", message)
    assert len(await desk.history_events()) == len(before)


async def test_bank_statements_short_of_six_months_keep_the_deal_collecting(desk: Desk) -> None:
    await desk.start()
    await desk.do("sign-sales-contract")
    start, _ = statement_window(desk.today, 6)
    short = start + timedelta(days=92)
    for doc in sample_documents(desk.deal_id, desk.deal, desk.today):
        if doc["kind"] is DocumentKind.BANK_STATEMENT:
            doc = {**doc, "period_start": short}
        await desk.upload(doc)
    st = await desk.status()
    assert st.stage is Stage.DOCUMENTS
    (statements,) = [i for i in st.checklist if not i.satisfied]
    missing = f"{start.isoformat()}..{(short - timedelta(days=1)).isoformat()}"
    assert statements.detail == f"missing {missing}"
    assert st.pending[0].what == (
        f"collect: bank statements covering the last 6 months (missing {missing})"
    )
    await refused(
        desk,
        "submit-application",
        "conflict",
        "submit-application is not allowed in stage DOCUMENTS (only in APPLICATION)",
    )


async def test_application_form_must_agree_with_the_documents(desk: Desk) -> None:
    await desk.start()
    await desk.through_documents()
    await refused(
        desk,
        "submit-application",
        "invalid",
        "applicant_id_number does not match the applicant's ID card",
        applicant_id_number=SPOUSE_ID,
    )
    await refused(
        desk,
        "submit-application",
        "invalid",
        "declared monthly income 25,000.00 does not match 18,000.00",
        monthly_income="25000.00",
    )


async def test_a_lowercase_x_id_number_is_one_number_from_start_to_application(
    desk: Desk,
) -> None:
    """Typed with a lowercase check character at the start, on the ID card's
    record and on the application form: the same number everywhere, so the ID
    card is accepted and the application goes to the lender."""
    typed = "11010519880312009x"
    body = example_deal().model_dump(mode="json")
    body["customer"]["applicant"]["id_number"] = typed
    deal = DealInput.model_validate(body)
    assert deal.customer.applicant.id_number == typed.upper()
    await desk.start(deal)
    await desk.do("sign-sales-contract")
    for doc in sample_documents(desk.deal_id, deal, desk.today):
        if doc["kind"] is DocumentKind.ID_CARD and doc["party"] is Party.APPLICANT:
            doc["id_number"] = typed
        await desk.upload(doc)
    await desk.do("submit-application", applicant_id_number=f" {typed} ")
    # The simulator may decide before a poll sees UNDERWRITING: ask the record.
    await desk.wait_until(
        lambda s: any(t.to_stage is Stage.UNDERWRITING for t in s.transitions),
        "the application to go to the lender",
    )


# --------------------------------------------------------------------------- lender answers


async def test_counter_offer_answers_need_the_open_counter_offer(desk: Desk) -> None:
    await desk.start(script={"lenders": {"acme-auto-finance": [{"decision": "silent"}]}})
    await desk.through_documents()
    await desk.do("submit-application")
    sub = await desk.submitted()
    for action in ("accept-counter-offer", "decline-counter-offer"):
        await refused(desk, action, "conflict", "there is no open counter-offer to answer")
    await desk.decide("counter_offer", seq=1, approved_amount="90000.00")
    await desk.wait_until(lambda s: s.submissions[-1].status == "decided", "the counter-offer")
    await refused(
        desk,
        "accept-counter-offer",
        "conflict",
        f"the open counter-offer is {sub.application_ref} #1; got ACME-APP-000001 #1",
    )
    await refused(
        desk,
        "decline-counter-offer",
        "conflict",
        f"the open counter-offer is {sub.application_ref} #1; got {sub.application_ref} #2",
        application_ref=sub.application_ref,
        decision_seq=2,
    )


# --------------------------------------------------------------------------- after approval


async def test_steps_on_the_lenders_conditions_are_refused_with_the_rule_they_break(
    desk: Desk,
) -> None:
    """Each step on a condition names the condition and where it is in its
    lifecycle when it does not fit: unknown code, wrong kind, wrong state,
    a blank reason; and nothing is written."""
    await desk.start(
        script={
            "lenders": {
                "acme-auto-finance": [
                    {
                        "decision": "conditional",
                        "stipulations": [
                            {"code": "EMPLOYMENT_LETTER", "description": "employer's letter"},
                            {"code": "PAYSLIPS", "description": "three payslips"},
                            {
                                "code": "GUARANTOR",
                                "description": "add a guarantor",
                                "kind": "condition",
                            },
                        ],
                    },
                    {"decision": "approved"},
                ]
            }
        }
    )
    await desk.do("sign-sales-contract")
    await refused(
        desk,
        "waive-stipulation",
        "conflict",
        "the deal is not answering any lender conditions now",
        code="GUARANTOR",
    )
    await desk.upload_documents()
    await desk.do("submit-application")
    await desk.wait_until(lambda s: s.stage is Stage.DOCUMENTS and bool(s.stipulations))
    conditions = "conditions: EMPLOYMENT_LETTER, PAYSLIPS, GUARANTOR"
    await refused(
        desk,
        "clear-stipulation",
        "invalid",
        f"STIP-INCOME is not a condition of the lender's decision on submission 1 ({conditions})",
        code="STIP-INCOME",
    )
    await refused(
        desk,
        "clear-stipulation",
        "conflict",
        "EMPLOYMENT_LETTER is open: nothing answers it yet; upload its document (kind "
        "stipulation, stipulation_code EMPLOYMENT_LETTER) first, or waive it",
        code="EMPLOYMENT_LETTER",
    )
    await refused(
        desk,
        "clear-stipulation",
        "conflict",
        "GUARANTOR is open: nothing answers it yet; answer it (answer-stipulation) first, "
        "or waive it",
        code="GUARANTOR",
    )
    await refused(
        desk,
        "answer-stipulation",
        "conflict",
        "EMPLOYMENT_LETTER asks for a document: upload it as a stipulation document with "
        "stipulation_code EMPLOYMENT_LETTER",
        code="EMPLOYMENT_LETTER",
    )
    await refused(
        desk,
        "reject-stipulation-document",
        "conflict",
        "EMPLOYMENT_LETTER has no document to reject: it is open",
        code="EMPLOYMENT_LETTER",
    )
    await refused(
        desk,
        "reject-stipulation-document",
        "conflict",
        "GUARANTOR is not a document condition: a staff note answers it; clear it or waive it",
        code="GUARANTOR",
    )
    await refused(
        desk,
        "waive-stipulation",
        "invalid",
        "a reason is required to waive GUARANTOR",
        code="GUARANTOR",
        reason="   ",
    )
    with pytest.raises(RuleError) as missing:
        await desk.do("waive-stipulation", code="GUARANTOR", reason=None)
    assert (missing.value.kind, missing.value.message) == (
        "invalid",
        "reason: Input should be a valid string",
    )
    await refused(
        desk,
        "reject-stipulation-document",
        "invalid",
        "a reason is required to reject the document answering EMPLOYMENT_LETTER",
        code="EMPLOYMENT_LETTER",
        reason="\n",
    )
    # Waived, received, rejected: each says where the condition is.
    await desk.do("waive-stipulation", code="PAYSLIPS", reason="the lender dropped it")
    for action in ("clear-stipulation", "waive-stipulation", "reject-stipulation-document"):
        await refused(
            desk,
            action,
            "conflict",
            "PAYSLIPS is already waived: the lender dropped it",
            code="PAYSLIPS",
        )
    await desk.do("answer-stipulation", code="GUARANTOR", note="the father signs")
    await refused(
        desk,
        "answer-stipulation",
        "conflict",
        "GUARANTOR is already answered (the father signs)",
        code="GUARANTOR",
    )
    await desk.do("clear-stipulation", code="GUARANTOR")
    await refused(
        desk, "waive-stipulation", "conflict", "GUARANTOR is already cleared", code="GUARANTOR"
    )
    await desk.upload_stipulation("EMPLOYMENT_LETTER")
    # ...the last condition received: the deal went back to the lender, who approved.
    await desk.wait_stage(Stage.DOWN_PAYMENT)
    await refused(
        desk,
        "reject-stipulation-document",
        "conflict",
        "reject-stipulation-document is not allowed in stage DOWN_PAYMENT (only in DOCUMENTS)",
        code="EMPLOYMENT_LETTER",
    )


async def test_a_rejected_document_waits_for_a_replacement(desk: Desk) -> None:
    await desk.start(
        script={
            "lenders": {
                "acme-auto-finance": [
                    {
                        "decision": "conditional",
                        "stipulations": [
                            {"code": "EMPLOYMENT_LETTER", "description": "employer's letter"},
                            {"code": "PAYSLIPS", "description": "three payslips"},
                        ],
                    }
                ]
            }
        }
    )
    await desk.through_documents()
    await desk.do("submit-application")
    await desk.wait_until(lambda s: s.stage is Stage.DOCUMENTS and bool(s.stipulations))
    await desk.upload_stipulation("EMPLOYMENT_LETTER")
    await desk.do("reject-stipulation-document", code="EMPLOYMENT_LETTER", reason="unsigned")
    for action, message in (
        (
            "clear-stipulation",
            "EMPLOYMENT_LETTER's document was rejected (unsigned): a new document must answer "
            "it before it is cleared",
        ),
        (
            "reject-stipulation-document",
            "EMPLOYMENT_LETTER's document is already rejected; it waits for a replacement",
        ),
    ):
        await refused(desk, action, "conflict", message, code="EMPLOYMENT_LETTER")


async def test_down_payment_invoice_and_insurance_are_checked_against_the_deal(
    desk: Desk,
) -> None:
    await desk.start()
    await desk.through_underwriting()
    await refused(
        desk,
        "confirm-down-payment",
        "invalid",
        "down payment 40,000.00 does not match the contract's 45,000.00",
        amount="40000.00",
    )
    await desk.do("confirm-down-payment")
    await refused(
        desk,
        "record-invoice",
        "invalid",
        "invoice amount 149,000.00 does not match 150,000.00",
        amount="149000.00",
    )
    await desk.do("record-invoice")
    await refused(
        desk,
        "record-insurance",
        "invalid",
        f"first beneficiary must be the lender '{ACME_LEGAL}', not 'Wang Fang'",
        first_beneficiary="Wang Fang",
    )
    await refused(
        desk,
        "record-insurance",
        "invalid",
        "cover 100,000.00 is below the amount financed 105,000.00",
        cover_amount="100000.00",
    )
    ended = desk.today - timedelta(days=1)
    await refused(
        desk,
        "record-insurance",
        "invalid",
        f"the policy ended on {ended}",
        starts_on=str(ended - timedelta(days=364)),
        ends_on=str(ended),
    )
    await refused(
        desk,
        "record-insurance",
        "invalid",
        "the policy must end after it starts",
        starts_on=str(desk.today),
        ends_on=str(desk.today),
    )
    result = await desk.do("record-insurance")
    assert result.status.stage is Stage.LOAN_CONTRACT


async def test_loan_contract_is_signed_in_three_copies(desk: Desk) -> None:
    await desk.start()
    await desk.through_underwriting()
    for action in ("confirm-down-payment", "record-invoice", "record-insurance"):
        await desk.do(action)
    for copies in (2, 4):
        await refused(
            desk,
            "sign-loan-contract",
            "invalid",
            f"the loan contract is signed in three copies; got {copies}",
            copies_signed=copies,
        )
    await desk.do("record-repayment-account")
    await refused(
        desk,
        "record-repayment-account",
        "conflict",
        "the repayment account is already recorded",
    )
    await desk.confirm_loan_terms()
    await refused(
        desk,
        "confirm-loan-terms",
        "conflict",
        "the customer has already confirmed the loan terms",
        **loan_terms_confirmation(await desk.status()),
    )


async def test_registration_steps_come_in_order_and_name_the_lender(desk: Desk) -> None:
    await desk.start()
    await desk.through_disbursement()
    plate_first = "a plate needs the certificate of conformity and the purchase tax first"
    await refused(desk, "record-plate", "conflict", plate_first)
    await refused(
        desk,
        "record-mortgage",
        "conflict",
        "the mortgage can be registered only after the plate is issued",
    )
    await desk.do("record-certificate")
    await refused(
        desk,
        "record-certificate",
        "conflict",
        "the certificate of conformity is already recorded",
    )
    await refused(desk, "record-plate", "conflict", plate_first)
    await desk.do("record-purchase-tax")
    await refused(desk, "record-purchase-tax", "conflict", "the purchase tax is already recorded")
    await desk.do("record-plate")
    await refused(desk, "record-plate", "conflict", "the plate is already recorded")
    await refused(
        desk,
        "record-mortgage",
        "invalid",
        f"the lienholder must be the lender '{ACME_LEGAL}'",
        lienholder="Beta Motor Credit Co., Ltd.",
    )
    result = await desk.do("record-mortgage")
    assert result.status.stage is Stage.DELIVERY


async def test_delivery_needs_stock_out_and_settlement_first(desk: Desk) -> None:
    await desk.start()
    await desk.through_disbursement()
    for action in ("record-certificate", "record-purchase-tax", "record-plate", "record-mortgage"):
        await desk.do(action)
    first = "delivery needs the stock-out form and the final settlement first"
    await refused(desk, "deliver", "conflict", first)
    await refused(
        desk,
        "record-stock-out",
        "invalid",
        "stock-out copies must go to: warehouse",
        copies_routed_to=["information_clerk"],
    )
    await desk.do("record-stock-out")
    await refused(desk, "record-stock-out", "conflict", "the stock-out form is already recorded")
    await refused(desk, "deliver", "conflict", first)
    await desk.do("record-settlement")
    await refused(
        desk,
        "record-settlement",
        "conflict",
        "the final settlement is already recorded",
    )
    await refused(
        desk,
        "deliver",
        "invalid",
        "delivery needs the customer-service card and the safe-driving briefing",
        safety_briefing_given=False,
    )
    await desk.do("deliver")


async def test_cancel_is_refused_once_disbursement_is_requested(desk: Desk) -> None:
    await desk.start(script={"disbursements": [{"result": "silent"}]})
    await desk.through_loan_contract()
    await desk.wait_until(
        lambda s: s.disbursements[-1].status == "requested", "the disbursement request"
    )
    await refused(
        desk,
        "cancel",
        "conflict",
        "cancel is not allowed in stage DISBURSEMENT (only in CONTRACT, DOCUMENTS, APPLICATION, "
        "UNDERWRITING, DOWN_PAYMENT, INVOICING, INSURANCE, LOAN_CONTRACT, REGISTRATION)",
    )


async def test_a_closed_deal_takes_no_more_actions(desk: Desk) -> None:
    await desk.start()
    await desk.do("cancel")
    await desk.result()
    with pytest.raises(RuleError) as refusal:
        await desk.do("sign-sales-contract")
    assert (refusal.value.kind, refusal.value.message) == (
        "conflict",
        f"deal {desk.deal_id} is closed; no further actions are possible",
    )
