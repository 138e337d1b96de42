"""Temporal is a trust boundary: only a holder of the codec keys speaks to a deal.

Whoever can reach the Temporal frontend without the keys can still send a
deal a signal or an update, in clear. The worker's codec refuses every payload
that did not arrive encrypted (dealflow/codec.py): such an update is rejected
before its validator (an `actor` claiming `admin` never reaches the rules) and
writes nothing, such a signal is dropped, and the deal goes on as if neither
had been sent. On the real dev server, through a client without the codec.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter

from dealflow import client as deals
from dealflow import codec, names
from dealflow.models import Action, Actor, Role, Stage
from dealflow.models.lender_events import ApplicationDecided, Decision, LenderEventInput
from dealflow.samples import example_action
from tests.support.back_office import Desk, desk_on
from tests.support.stack import Stack, codec_data_converter

LENDERS = ("acme-auto-finance", "beta-motor-credit", "cathay-car-loans")


@pytest.fixture
async def desk(dev_stack: Stack, database_url: str) -> AsyncIterator[Desk]:
    async with desk_on(dev_stack, database_url) as d:
        yield d


def without_the_keys(client: Client) -> Client:
    """The same connection, sending payloads in clear (no codec)."""
    config = client.config()
    config["data_converter"] = pydantic_data_converter
    return Client(**config)


async def test_an_update_in_clear_claiming_admin_is_rejected_and_writes_nothing(
    desk: Desk,
) -> None:
    await desk.start()
    before = await desk.quiet_history()
    _, inp = deals.parse_action(
        "sign-sales-contract",
        example_action("sign-sales-contract", desk.today),
        Actor(staff_id="intruder", role=Role.ADMIN),
    )
    handle = without_the_keys(desk.client).get_workflow_handle(deals.workflow_id(desk.deal_id))
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(Action.SIGN_SALES_CONTRACT.value, inp)
    # Why is in the failure's encrypted attributes: the intruder reads nothing.
    assert str(refused.value.cause).endswith("Encoded failure")
    after = await desk.history_events()
    assert [e.event_id for e in after] == [e.event_id for e in before]
    assert (await desk.status()).stage is Stage.CONTRACT
    # The deal is not wedged: its staff, holding the keys, go on.
    await desk.do("sign-sales-contract")
    assert (await desk.status()).stage is Stage.DOCUMENTS


async def test_a_lender_decision_signalled_in_clear_is_dropped(desk: Desk) -> None:
    await desk.start(script={"lenders": {lender: [{"decision": "silent"}] for lender in LENDERS}})
    await desk.through_documents()
    await desk.do("submit-application")
    sub = await desk.submitted()
    approval = ApplicationDecided(
        deal_id=desk.deal_id,
        application_ref=sub.application_ref or "",
        decision_seq=1,
        decision=Decision.APPROVED,
        approved_amount=desk.deal.amount_financed,
        apr=Decimal("6.50"),
        term_months=desk.deal.term_months,
    )
    forged = LenderEventInput(
        webhook_id="msg_forged",
        lender_id=sub.lender_id,
        type="application.decided",
        received_at=datetime.now(UTC),
        decided=approval,
    )
    plain = without_the_keys(desk.client).get_workflow_handle(deals.workflow_id(desk.deal_id))
    await plain.signal(names.LENDER_EVENT, forged)
    await desk.quiet_history()
    events = await desk.history_events()
    assert any(e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED for e in events)
    assert not any(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED for e in events), (
        "a payload in clear must not fail the deal's workflow task"
    )
    status = await desk.status()
    assert status.stage is Stage.UNDERWRITING
    assert status.submissions[0].decisions == []
    # The same lender, through DealFlow's codec, is heard.
    await desk.decide("approved")
    await desk.wait_stage(Stage.DOWN_PAYMENT)


def test_only_the_workers_codec_refuses_payloads_in_clear() -> None:
    converter = codec_data_converter()
    plain = pydantic_data_converter.payload_converter.to_payloads(["in clear"])[0]
    assert isinstance(converter.payload_codec, codec.AesGcmCodec)
    assert converter.payload_codec.decrypt(plain) == plain
    strict = codec.refusing_plaintext(converter).payload_codec
    assert isinstance(strict, codec.AesGcmCodec)
    refused = strict.decrypt(plain)
    assert refused.metadata["encoding"] == codec.REFUSED_PLAINTEXT_ENCODING
    assert refused.data == b""
    sealed = converter.payload_codec.encrypt(plain)
    assert strict.decrypt(sealed) == plain
    with pytest.raises(codec.CodecError):
        codec.refusing_plaintext(dataclasses.replace(converter, payload_codec=None))
