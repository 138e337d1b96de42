"""A deal from creation to COMPLETED through nothing but the HTTP API with role
tokens: documents uploaded, every staff step taken by the role that owns it,
the lender simulator approving and disbursing by signed webhook. The test code
holds no Temporal client: it sees what a back office sees.

The policy comes from a policy file read by the API (DEALFLOW_POLICY_FILE):
follow-up calls fall due 1 and 2 seconds after delivery instead of 3 and 30
days. At every stage a wrong request gets its status and message and changes
nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from dealflow.models import DocumentKind, Role
from tests.support.api_stack import ApiStack, HttpDesk, api_stack, policy_file

ACME = "Acme Auto Finance Co., Ltd."


@pytest.fixture(scope="module")
async def stack(
    dev_env: WorkflowEnvironment, database_url: str, tmp_session: Path
) -> AsyncIterator[ApiStack]:
    policy = policy_file(tmp_session, follow_up_first=1, follow_up_second=2)
    async with api_stack(dev_env.client, database_url, tmp_session, policy_file=policy) as s:
        yield s


class Clerk(HttpDesk):
    """Each step with its owner's token; each refusal checked to change nothing."""

    def __init__(self, stack: ApiStack) -> None:
        super().__init__(stack)
        self.staff = {role: f"{role.value}-desk" for role in Role}

    def as_(self, role: Role | str) -> httpx.AsyncClient:
        role = Role(role)
        return self.stack.http(token=self.stack.token(role, self.staff[role]))

    async def step(self, action: str, role: Role, **changes: Any) -> dict[str, Any]:
        return await self.ok(action, role, **changes)

    async def uploaded(self, kind: DocumentKind) -> dict[str, Any]:
        r = await self.upload_funding(kind)
        assert r.status_code == 201, f"{kind}: {r.status_code} {r.text}"
        return dict(r.json()["status"])

    async def upload_refused(
        self, kind: DocumentKind, status: int, detail: str, role: Role | None = None
    ) -> None:
        before = await self.status()
        r = await self.upload_funding(kind, role=role)
        assert r.status_code == status, f"{kind}: {r.status_code} {r.text}"
        assert detail in r.json()["detail"]
        after = await self.status()
        assert after["documents"] == before["documents"]

    async def refused(
        self, action: str, role: Role, status: int, detail: str, **changes: Any
    ) -> None:
        before = await self.status()
        r = await self.do(action, role, **changes)
        assert r.status_code == status, f"{action}: {r.status_code} {r.text}"
        assert r.headers["content-type"].startswith("application/problem+json")
        assert detail in r.json()["detail"], r.json()["detail"]
        after = await self.status()
        assert after["version"] == before["version"], f"{action} changed the deal"
        assert after["stage"] == before["stage"]


async def test_a_deal_from_creation_to_completion_over_http(stack: ApiStack) -> None:
    started = time.monotonic()
    clerk = Clerk(stack)
    await clerk.start()
    st = await clerk.status()
    assert st["stage"] == "CONTRACT"
    assert st["transitions"][0]["actor"] == "sales-desk/sales"

    await clerk.refused(
        "sign-sales-contract", Role.FINANCE, 403, "role 'finance' may not sign-sales-contract"
    )
    await clerk.refused(
        "sign-sales-contract",
        Role.SALES,
        422,
        "the contract's down payment 30,000.00 does not match 45,000.00",
        down_payment="30000.00",
    )
    st = await clerk.step("sign-sales-contract", Role.SALES)
    assert st["stage"] == "DOCUMENTS"
    assert any("collect:" in p["what"] for p in st["pending"])

    await clerk.refused(
        "submit-application",
        Role.CREDIT,
        409,
        "submit-application is not allowed in stage DOCUMENTS",
    )
    uploads = await clerk.upload_all()
    assert all(u["doc_id"] for u in uploads)
    st = await clerk.status()
    assert st["stage"] == "APPLICATION"
    assert all(item["satisfied"] for item in st["checklist"])

    await clerk.refused(
        "submit-application",
        Role.CREDIT,
        422,
        "declared monthly income 1.00 does not match 18,000.00",
        monthly_income="1.00",
    )
    await clerk.refused(
        "submit-application", Role.SALES, 403, "role 'sales' may not submit-application"
    )
    st = await clerk.step("submit-application", Role.CREDIT)
    assert st["stage"] == "UNDERWRITING"

    # The simulator decides by its rules and answers with a signed webhook.
    st = await clerk.wait_stage("DOWN_PAYMENT")
    decision = st["submissions"][0]["current"]
    assert decision["decision"] == "approved" and decision["webhook_id"]
    assert st["money"]["approved_amount"] == "105000.00"

    await clerk.refused(
        "confirm-down-payment",
        Role.FINANCE,
        422,
        "down payment 30,000.00 does not match the contract's 45,000.00",
        amount="30000.00",
    )
    await clerk.step("confirm-down-payment", Role.FINANCE)
    await clerk.refused(
        "record-invoice",
        Role.FINANCE,
        422,
        "invoice amount 100.00 does not match 150,000.00",
        amount="100.00",
    )
    st = await clerk.step("record-invoice", Role.FINANCE)
    assert st["stage"] == "INSURANCE"
    await clerk.uploaded(DocumentKind.VEHICLE_INVOICE)
    await clerk.upload_refused(
        DocumentKind.SIGNED_LOAN_CONTRACT,
        409,
        "signed_loan_contract evidences the loan contract (sign-loan-contract), recorded in "
        "LOAN_CONTRACT; the deal is in INSURANCE (accepted in LOAN_CONTRACT, DISBURSEMENT)",
    )
    await clerk.refused(
        "record-insurance",
        Role.INSURANCE,
        422,
        "first beneficiary must be the lender",
        first_beneficiary="Wang Fang",
    )
    st = await clerk.step("record-insurance", Role.INSURANCE, first_beneficiary=ACME)
    assert st["stage"] == "LOAN_CONTRACT"
    await clerk.upload_refused(
        DocumentKind.INSURANCE_POLICY_PAGE,
        403,
        "role 'sales' may not record-document of insurance_policy_page; allowed: admin, insurance",
        role=Role.SALES,
    )
    await clerk.uploaded(DocumentKind.INSURANCE_POLICY_PAGE)
    await clerk.refused(
        "sign-loan-contract",
        Role.CREDIT,
        422,
        "the loan contract is signed in three copies; got 2",
        copies_signed=2,
    )
    await clerk.refused(
        "record-repayment-account", Role.CREDIT, 422, "account_no", account_no="12-34"
    )
    await clerk.step("record-repayment-account", Role.CREDIT)
    await clerk.refused(
        "sign-loan-contract",
        Role.CREDIT,
        409,
        "the customer has not confirmed the rate and repayment yet",
    )
    await clerk.refused(
        "confirm-loan-terms",
        Role.CREDIT,
        422,
        "the total repayable 115,000.00 is not the schedule's 115,853.20",
        total_repayable="115000.00",
    )
    await clerk.step("confirm-loan-terms", Role.CREDIT)
    st = await clerk.step("sign-loan-contract", Role.CREDIT)
    assert st["stage"] == "LOAN_CONTRACT", "the funding package lacks the signed contract"
    assert [(p["action"], p["role"]) for p in st["pending"]] == [("record-document", "credit")]
    assert "signed_loan_contract" in st["pending"][0]["what"]
    st = await clerk.uploaded(DocumentKind.SIGNED_LOAN_CONTRACT)
    assert st["stage"] == "DISBURSEMENT"

    # The simulator disburses and confirms by webhook.
    st = await clerk.wait_stage("REGISTRATION")
    assert st["money"]["disbursed"] == "105000.00"
    await clerk.refused(
        "cancel",
        Role.SALES,
        409,
        "the lender has funded the loan: cancel is possible only until the disbursement",
        reason="the money has been paid out",
    )
    await clerk.refused(
        "record-plate",
        Role.REGISTRATION,
        409,
        "a plate needs the certificate of conformity and the purchase tax first",
    )
    await clerk.refused(
        "record-mortgage",
        Role.REGISTRATION,
        409,
        "the mortgage can be registered only after the plate is issued",
    )
    await clerk.step("record-certificate", Role.REGISTRATION)
    await clerk.step("record-purchase-tax", Role.REGISTRATION)
    await clerk.step("record-plate", Role.REGISTRATION)
    await clerk.refused("record-plate", Role.REGISTRATION, 409, "the plate is already recorded")
    await clerk.refused(
        "record-mortgage",
        Role.REGISTRATION,
        422,
        "the lienholder must be the lender",
        lienholder="Someone Else",
    )
    st = await clerk.step("record-mortgage", Role.REGISTRATION, lienholder=ACME)
    assert st["stage"] == "DELIVERY"

    await clerk.refused(
        "deliver",
        Role.DELIVERY,
        409,
        "delivery needs the stock-out form and the final settlement first",
    )
    await clerk.refused(
        "record-stock-out",
        Role.DELIVERY,
        422,
        "stock-out copies must go to: warehouse",
        copies_routed_to=["information_clerk"],
    )
    await clerk.step("record-stock-out", Role.DELIVERY)
    await clerk.step("record-settlement", Role.FINANCE)
    await clerk.refused(
        "deliver",
        Role.DELIVERY,
        422,
        "delivery needs the customer-service card and the safe-driving briefing",
        safety_briefing_given=False,
    )
    st = await clerk.step("deliver", Role.DELIVERY)
    assert st["stage"] == "FOLLOW_UP"

    # The policy file made the calls fall due 1 and 2 seconds after delivery.
    entered = datetime.fromisoformat(st["stage_entered_at"])
    due = {p["what"]: datetime.fromisoformat(p["due"]) for p in st["pending"]}
    assert round((due["day3 follow-up call"] - entered).total_seconds()) == 1
    assert round((due["day30 follow-up call"] - entered).total_seconds()) == 2
    st = await clerk.wait_until(
        lambda s: any(n["kind"] == "follow_up_due" for n in s["notices"]),
        "the day-3 call to fall due",
        within=15,
    )
    await clerk.refused(
        "record-follow-up", Role.SALES, 409, "record the day-3 follow-up call first", call="day30"
    )
    await clerk.refused(
        "record-follow-up", Role.DELIVERY, 403, "role 'delivery' may not record-follow-up"
    )
    await clerk.step("record-follow-up", Role.SALES, call="day3")
    st = await clerk.step("record-follow-up", Role.SALES, call="day30")
    assert st["stage"] == "COMPLETED"
    assert st["pending"] == []
    await clerk.refused(
        "record-follow-up", Role.SALES, 409, "no further actions are possible", call="day3"
    )

    # Every human step is in the history with its actor from the token.
    actors = {t["actor"] for t in st["transitions"]}
    assert {
        "sales-desk/sales",
        "credit-desk/credit",
        "finance-desk/finance",
        "insurance-desk/insurance",
        "registration-desk/registration",
        "delivery-desk/delivery",
    } <= actors

    # The read model catches up: the deal is listed as COMPLETED.
    http = clerk.as_(Role.AUDITOR)
    deadline = time.monotonic() + 10
    while True:
        r = await http.get("/api/deals", params={"stage": "COMPLETED", "limit": 200})
        if clerk.deal_id in [d["deal_id"] for d in r.json()["deals"]]:
            break
        assert time.monotonic() < deadline, "the read model never showed COMPLETED"
        await asyncio.sleep(0.1)
    metrics = (await http.get("/metrics")).text
    assert 'dealflow_webhooks_total{lender_id="acme-auto-finance"' in metrics
    print(f"deal {clerk.deal_id} completed over HTTP in {time.monotonic() - started:.1f} s")


async def test_a_funded_deal_rescinded_is_unwound_over_http_step_by_step(stack: ApiStack) -> None:
    """unwind after funding and record-unwind-step through the generic action
    route: each refusal its status and message, changing nothing; the
    lender repaid by the simulator; each person's step by its role."""
    clerk = Clerk(stack)
    await clerk.start()
    await clerk.wait_stage("CONTRACT")
    await clerk.to_registration(ACME)
    step = {"step": "cancel_insurance", "reference": "CXL-2026-0042", "note": None}
    await clerk.refused(
        "record-unwind-step",
        Role.INSURANCE,
        409,
        "record-unwind-step is not allowed in stage REGISTRATION (only in UNWINDING)",
        **step,
    )
    await clerk.refused("unwind", Role.SALES, 403, "role 'sales' may not unwind")
    st = await clerk.step("unwind", Role.FINANCE, reason="customer rescinded")
    assert st["stage"] == "UNWINDING"
    st = await clerk.wait_until(
        lambda s: s["pending"] and s["pending"][0]["action"] == "record-unwind-step",
        "the lender's repayment",
    )
    assert st["pending"][0]["role"] == "insurance"
    [repaid] = [c for c in st["compensations"] if c["kind"] == "repay_lender"]
    assert repaid["status"] == "done" and repaid["evidence"].startswith("rpy-")
    await clerk.refused(
        "record-unwind-step",
        Role.FINANCE,
        409,
        "reverse_invoice is not next: steps are undone newest first; next is cancel_insurance",
        step="reverse_invoice",
        reference="RED-1",
    )
    await clerk.refused(
        "record-unwind-step",
        Role.FINANCE,
        403,
        "cancel_insurance is recorded by insurance, not finance",
        **step,
    )
    await clerk.refused(
        "record-unwind-step", Role.INSURANCE, 422, "reference", **{**step, "reference": ""}
    )
    await clerk.step("record-unwind-step", Role.INSURANCE, **step)
    await clerk.refused(
        "record-unwind-step", Role.INSURANCE, 409, "cancel_insurance is already recorded", **step
    )
    await clerk.step(
        "record-unwind-step", Role.FINANCE, step="reverse_invoice", reference="RED-INV-0007"
    )
    await clerk.step(
        "record-unwind-step", Role.FINANCE, step="refund_down_payment", reference="REF-0099"
    )
    st = await clerk.wait_stage("CANCELLED")
    assert st["outcome_reason"] == "unwound after funding: customer rescinded"
    done = {c["kind"]: c for c in st["compensations"] if c["status"] == "done"}
    assert done["cancel_insurance"]["evidence"] == "CXL-2026-0042"
    assert done["cancel_insurance"]["done_by"] == "insurance-desk/insurance"
    assert done["reverse_invoice"]["evidence"] == "RED-INV-0007"
    assert set(done) == {
        "repay_lender",
        "cancel_insurance",
        "reverse_invoice",
        "refund_down_payment",
        "release_vehicle",
    }
