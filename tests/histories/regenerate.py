"""Regenerate the committed histories that every test run replays.

    .venv/bin/python -m tests.histories.regenerate

Runs each scenario on the time-skipping server with the real API receiver and
lender simulator in process (as the tests do) and writes one JSON history per
workflow run, in the format of `temporal workflow show --output json`.

Payloads are encrypted exactly as in production, with the committed test key
`tests/histories/test-codec-key` (DealFlow's public development key): the
files hold no personal data in clear, and replaying them exercises the codec.

Regenerate only when a deliberate, patched change makes new histories worth
keeping; old files stay as the proof that old deals still replay (the
pre-encryption ones live on in `legacy/`).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import httpx
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from dealflow import client as deals
from dealflow import rules
from dealflow.config import Settings
from dealflow.models import Actor, DealPolicy, DealStatus, DocumentKind, Role, Stage
from dealflow.samples import example_deal, stipulation_document
from dealflow.storage import db
from dealflow.storage.documents import LocalDirectoryStore
from tests.support.back_office import Desk
from tests.support.stack import BIN, SEARCH_ATTRIBUTES, codec_data_converter, deal_worker, run_stack

HERE = Path(__file__).resolve().parent


async def happy_path(d: Desk) -> None:
    await d.start()
    await d.through_delivery()
    await d.wait_stage(Stage.FOLLOW_UP)
    await d.sleep(3)
    await d.do("record-follow-up", call="day3")
    await d.sleep(27)
    await d.do("record-follow-up", call="day30")


async def declined_then_approved(d: Desk) -> None:
    await d.start(
        script={
            "lenders": {
                "acme-auto-finance": [
                    {
                        "decision": "declined",
                        "reasons": [{"code": "THIN_FILE", "text": "thin credit file"}],
                    }
                ]
            }
        }
    )
    await d.through_delivery()
    await d.wait_stage(Stage.FOLLOW_UP)


async def conditional(d: Desk) -> None:
    await d.start(
        script={
            "lenders": {
                "acme-auto-finance": [
                    {
                        "decision": "conditional",
                        "stipulations": [
                            {"code": "EMPLOYMENT_LETTER", "description": "employer letter"}
                        ],
                    },
                    {"decision": "approved"},
                ]
            }
        }
    )
    await d.through_documents()
    await d.do("submit-application")
    await d.wait_stage(Stage.DOCUMENTS)
    await d.wait_until(lambda s: any(c.stipulation_code for c in s.checklist), "stipulation")
    await d.upload_stipulation("EMPLOYMENT_LETTER")
    await d.wait_stage(Stage.DOWN_PAYMENT)
    await d.do("cancel", reason="customer withdrew")


async def stipulations_answered(d: Desk) -> None:
    """Every step on the lender's conditions (patch "stipulation-lifecycle"):
    a letter received, rejected, received again and cleared; payslips waived;
    a guarantor (no document) answered by a note; resubmitted, approved, then
    cancelled."""
    await d.start(
        script={
            "lenders": {
                "acme-auto-finance": [
                    {
                        "decision": "conditional",
                        "stipulations": [
                            {"code": "EMPLOYMENT_LETTER", "description": "employer letter"},
                            {"code": "PAYSLIPS", "description": "three payslips"},
                            {
                                "code": "GUARANTOR",
                                "description": "a guarantor",
                                "kind": "condition",
                            },
                        ],
                    },
                    {"decision": "approved"},
                ]
            }
        }
    )
    await d.through_documents()
    await d.do("submit-application")
    await d.wait_until(lambda s: s.stage is Stage.DOCUMENTS and bool(s.stipulations))
    await d.upload_stipulation("EMPLOYMENT_LETTER")
    await d.do("reject-stipulation-document", code="EMPLOYMENT_LETTER", reason="unsigned")
    letter = stipulation_document(d.deal_id, "EMPLOYMENT_LETTER")
    await d.upload({**letter, "data": letter["data"] + b" signed"})
    await d.do("clear-stipulation", code="EMPLOYMENT_LETTER")
    await d.do("waive-stipulation", code="PAYSLIPS", reason="the lender dropped it")
    await d.do("answer-stipulation", code="GUARANTOR", note="the father guarantees")
    await d.wait_stage(Stage.DOWN_PAYMENT)
    await d.do("cancel", reason="customer withdrew")


async def _offer_accepted_then_cancelled(d: Desk, down_payment: str, reason: str) -> None:
    """Submit, accept the counter-offer the lender answers with, take the down
    payment it leaves, then cancel."""
    await d.through_documents()
    await d.do("submit-application")
    st = await d.wait_until(lambda s: any(p.action == "accept-counter-offer" for p in s.pending))
    sub = st.submissions[-1]
    assert sub.current is not None
    await d.do(
        "accept-counter-offer",
        application_ref=sub.application_ref,
        decision_seq=sub.current.decision_seq,
    )
    await d.do("confirm-down-payment", amount=down_payment)
    await d.do("cancel", reason=reason)


async def counter_offer_accepted(d: Desk) -> None:
    await d.start(
        script={
            "lenders": {
                "acme-auto-finance": [{"decision": "counter_offer", "approved_amount": "95000.00"}]
            }
        }
    )
    await _offer_accepted_then_cancelled(
        d, down_payment="55000.00", reason="customer found a cheaper car"
    )


async def declined_counter_offer_cancelled(d: Desk) -> None:
    """The auditors' timeline case: a decline, a counter-offer, then a cancellation."""
    await d.start(
        script={
            "lenders": {
                "acme-auto-finance": [
                    {
                        "decision": "declined",
                        "reasons": [{"code": "THIN_FILE", "text": "thin credit file"}],
                    }
                ],
                "beta-motor-credit": [{"decision": "counter_offer", "approved_amount": "95000.00"}],
            }
        }
    )
    await _offer_accepted_then_cancelled(
        d, down_payment="55000.00", reason="customer changed their mind"
    )


async def partial_approval_accepted(d: Desk) -> None:
    """An approval of less than requested, taken as a counter-offer and
    accepted (patch "bounded-lender-amounts"), then the deal cancelled."""
    await d.start(
        script={
            "lenders": {
                "acme-auto-finance": [{"decision": "approved", "approved_amount": "100000.00"}]
            }
        }
    )
    await _offer_accepted_then_cancelled(
        d, down_payment="50000.00", reason="customer changed their mind"
    )


async def withdrawal_refused(d: Desk) -> None:
    """Cancelled while the lender holds the application and refuses to
    withdraw it (patch "refused-compensations-recorded")."""
    await d.start(script={"lenders": {"acme-auto-finance": [{"decision": "silent"}]}})
    async with httpx.AsyncClient() as http:
        fault = {"mode": "4xx", "endpoints": ["withdrawal"], "deal_id": d.deal_id}
        (await http.post(f"{d.sim_url}/_sim/faults", json=fault)).raise_for_status()
    await d.through_documents()
    await d.do("submit-application")
    await d.submitted()
    await d.do("cancel", reason="customer withdrew")


async def mortgage_before_funding(d: Desk) -> None:
    """A lender that funds once its mortgage is registered: registration
    comes before the disbursement, then the deal is delivered."""
    await d.start(deal=example_deal().model_copy(update={"lender_ids": ["cathay-car-loans"]}))
    await d.through_loan_contract()
    await d.wait_stage(Stage.REGISTRATION)
    for action in ("record-certificate", "record-purchase-tax", "record-plate"):
        await d.do(action)
    await d.do("record-mortgage", lienholder=await d.lender_legal_name())
    await d.wait_stage(Stage.DELIVERY)
    for action in ("record-stock-out", "record-settlement", "deliver"):
        await d.do(action)
    # The follow-up window then closes with both calls missed.


def _next_unwind_step_is(step: str) -> Callable[[DealStatus], bool]:
    def next_is(st: DealStatus) -> bool:
        found = rules.next_unwind_step(st.compensations)
        return found is not None and found.kind == step

    return next_is


async def funded_then_unwound(d: Desk) -> None:
    """Funded, then rescinded before delivery (patch "unwind-after-funding"):
    the lender repaid through its API, each person's step recorded newest
    first, the vehicle released."""
    await d.start()
    await d.through_disbursement()
    await d.do("unwind", Actor(staff_id="finance-01", role=Role.FINANCE), reason="rescinded")
    for step, role in (
        ("cancel_insurance", Role.INSURANCE),
        ("reverse_invoice", Role.FINANCE),
        ("refund_down_payment", Role.FINANCE),
    ):
        await d.wait_until(_next_unwind_step_is(step), f"{step} next")
        actor = Actor(staff_id=f"{role.value}-01", role=role)
        await d.do("record-unwind-step", actor, step=step, reference=f"EV-{step}", note=None)


async def funding_document_replaced_then_unwound(d: Desk) -> None:
    """The funding package (patch "funding-package"): the lender refuses the
    request because the invoice's bytes are not the ones named; finance
    uploads a replacement and retries; that request fails at the bank twice,
    and the stalled deal is unwound."""
    await d.start(script={"disbursements": [{"result": "failed"}, {"result": "failed"}]})
    await d.through_underwriting()
    await d.do("confirm-down-payment")
    await d.do("record-invoice")
    await d.upload_funding(DocumentKind.VEHICLE_INVOICE)
    await d.do("record-insurance", first_beneficiary=await d.lender_legal_name())
    await d.upload_funding(DocumentKind.INSURANCE_POLICY_PAGE)
    await d.do("record-repayment-account")
    await d.confirm_loan_terms()
    await d.do("sign-loan-contract")
    invoice = next(
        doc for doc in (await d.status()).documents if doc.kind is DocumentKind.VEHICLE_INVOICE
    )
    assert isinstance(d.store, LocalDirectoryStore)
    path = d.store._path(invoice.storage_key)
    path.write_bytes(path.read_bytes()[:-2] + b"X\n")
    await d.upload_funding(DocumentKind.SIGNED_LOAN_CONTRACT)
    await d.wait_until(lambda s: s.disbursements[-1].status == "error", "the lender's refusal")
    await d.upload_funding(DocumentKind.VEHICLE_INVOICE, version=2)
    finance = Actor(staff_id="finance-01", role=Role.FINANCE)
    await d.do("retry-disbursement", finance, reason="invoice scanned again")
    await d.wait_until(
        lambda s: len(s.disbursements) == 3 and s.disbursements[-1].status == "failed",
        "the last attempt to fail",
    )
    await d.do("unwind", finance, reason="the bank refuses the payout")


async def contract_expired(d: Desk) -> None:
    await d.start()


async def all_declined(d: Desk) -> None:
    reasons = [{"code": "DTI_TOO_HIGH", "text": "debt-to-income too high"}]
    await d.start(
        script={
            "lenders": {
                "acme-auto-finance": [{"decision": "declined", "reasons": reasons}],
                "beta-motor-credit": [{"decision": "declined", "reasons": reasons}],
            }
        }
    )
    await d.through_documents()
    await d.do("submit-application")


async def continued_as_new(d: Desk) -> None:
    # The calls fall due a second and two after delivery, on the day of
    # delivery: skipping days across the continued runs is what this scenario
    # is not about.
    await d.start(
        policy=DealPolicy(
            max_history_events=60,
            follow_up_first=timedelta(seconds=1),
            follow_up_second=timedelta(seconds=2),
        )
    )
    await d.through_delivery()
    await d.wait_stage(Stage.FOLLOW_UP)
    await d.do("record-follow-up", call="day3")
    await d.do("record-follow-up", call="day30")


SCENARIOS: dict[str, Callable[[Desk], Awaitable[None]]] = {
    "happy_path": happy_path,
    "declined_then_approved": declined_then_approved,
    "conditional_then_cancelled": conditional,
    "stipulations_answered_then_cancelled": stipulations_answered,
    "counter_offer_accepted_then_cancelled": counter_offer_accepted,
    "declined_counter_offer_cancelled": declined_counter_offer_cancelled,
    "partial_approval_accepted_then_cancelled": partial_approval_accepted,
    "withdrawal_refused_then_cancelled": withdrawal_refused,
    "mortgage_before_funding": mortgage_before_funding,
    "funded_then_unwound": funded_then_unwound,
    "funding_document_replaced_then_unwound": funding_document_replaced_then_unwound,
    "contract_expired": contract_expired,
    "all_declined": all_declined,
    "continued_as_new": continued_as_new,
}


async def main() -> None:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server"),
        data_converter=codec_data_converter(),
    )
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={
                k.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for k in SEARCH_ATTRIBUTES
            },
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        url = f"sqlite:///{tmp_path / 'dealflow.db'}"
        db.migrate(url)
        # The API's secret: the lender fetches the funding documents through it.
        store = LocalDirectoryStore(
            tmp_path / "docs",
            signing_secret=Settings().file_link_secret,
            api_base_url="http://127.0.0.1:1",
            max_link_seconds=int(Settings().file_link_max_hours * 3600),
        )
        async with run_stack(env, url, store, tmp_path) as stack:
            for name, scenario in SCENARIOS.items():
                async with deal_worker(env.client, url, stack.lenders, store) as tq:
                    desk = Desk(stack, tq)
                    await scenario(desk)
                    # Let the deal run to its end: timers skip, the deal closes.
                    final = await asyncio.wait_for(desk.result(), timeout=60)
                    print(f"{name}: {final.stage.value}")
                    run_ids = await _run_chain(env, desk.deal_id)
                    for i, run_id in enumerate(run_ids):
                        h = env.client.get_workflow_handle(
                            deals.workflow_id(desk.deal_id), run_id=run_id
                        )
                        history = await h.fetch_history()
                        suffix = f"_run{i + 1}" if len(run_ids) > 1 else ""
                        path = HERE / f"{name}{suffix}.json"
                        path.write_text(history.to_json(), encoding="utf-8")
                        print(f"wrote {path.name}: {len(history.events)} events")
    await env.shutdown()


async def _run_chain(env: WorkflowEnvironment, deal_id: str) -> list[str]:
    """Every run of the deal, first to last, following continue-as-new."""
    handle = env.client.get_workflow_handle(deals.workflow_id(deal_id))
    latest = await handle.describe()
    runs = [latest.run_id]
    history = await env.client.get_workflow_handle(
        deals.workflow_id(deal_id), run_id=latest.run_id
    ).fetch_history()
    first = history.events[0].workflow_execution_started_event_attributes
    prev = first.continued_execution_run_id
    while prev:
        runs.insert(0, prev)
        h = await env.client.get_workflow_handle(
            deals.workflow_id(deal_id), run_id=prev
        ).fetch_history()
        prev = h.events[0].workflow_execution_started_event_attributes.continued_execution_run_id
    return runs


if __name__ == "__main__":
    asyncio.run(main())
