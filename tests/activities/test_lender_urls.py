"""Issue 14 item 12: a lender's `application_ref` never steers DealFlow's own
calls. The activities run in Temporal's ActivityEnvironment against a lender
served over HTTP that records the raw path of every request and answers a
submission with whatever reference the test gives it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from sqlalchemy import create_engine
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.deal_activities import DealActivities
from dealflow.config import LenderConfig
from dealflow.models import (
    RepaymentInput,
    SendApplicationInput,
    SubmitToLenderInput,
    UnsignedApplicationPackage,
    WithdrawInput,
)
from dealflow.samples import example_deal
from dealflow.storage.documents import LocalDirectoryStore
from tests.support.servers import serve_async

LENDER = "url-lender"
SECRET = "url-test-links-" + "0123456789abcdef" * 4


@dataclass
class Lender:
    """What the lender was asked, path by path, and the reference it hands out."""

    base_url: str = ""
    paths: list[str] = field(default_factory=list)
    ref: str = "APP-1"


def lender_app(lender: Lender) -> FastAPI:
    app = FastAPI()

    @app.api_route("/{rest:path}", methods=["POST"])
    async def record(request: Request) -> dict[str, str]:
        lender.paths.append(request.scope["raw_path"].decode())
        return {"application_ref": lender.ref, "repayment_ref": "RP-1"}

    return app


@pytest.fixture
async def lender() -> AsyncIterator[Lender]:
    recorded = Lender()
    async with serve_async(lender_app(recorded)) as url:
        recorded.base_url = f"{url}/lenders/{LENDER}"
        yield recorded


def activities(lender: Lender, http: httpx.AsyncClient, tmp_path: Path) -> DealActivities:
    config = LenderConfig(
        id=LENDER,
        legal_name="URL Lender",
        api_base_url=lender.base_url,
        webhook_secret="whsec_dGVzdA==",
    )
    store = LocalDirectoryStore(tmp_path, signing_secret=SECRET, api_base_url="http://api")
    return DealActivities(create_engine("sqlite://"), {LENDER: config}, http, store)


async def submit(acts: DealActivities) -> str:
    package = UnsignedApplicationPackage.for_submission(
        SubmitToLenderInput(
            deal_id="deal-1", lender_id=LENDER, submission_no=1, deal=example_deal(), documents=[]
        )
    ).signed(lambda key: key)
    result = await ActivityEnvironment().run(
        acts.send_application,
        SendApplicationInput(deal_id="deal-1", lender_id=LENDER, submission_no=1, package=package),
    )
    return result.application_ref


@pytest.mark.parametrize("ref", ["../../admin", "APP-1?steal=1", "APP-1#x", "", "a" * 65, "APP\n"])
async def test_a_submission_answered_with_a_malformed_application_ref_is_refused(
    lender: Lender, tmp_path: Path, ref: str
) -> None:
    lender.ref = ref
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        with pytest.raises(ApplicationError) as refused:
            await submit(activities(lender, http, tmp_path))
    assert refused.value.type == "LenderRejected" and refused.value.non_retryable
    assert "application_ref" in refused.value.message


async def test_a_well_formed_reference_is_kept_and_sent_as_one_quoted_path_segment(
    lender: Lender, tmp_path: Path
) -> None:
    """Even a reference recorded before the check (a running deal's, holding a
    slash) stays one segment of the lender's own application URL."""
    lender.ref = "ACME/2025:0001"
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        acts = activities(lender, http, tmp_path)
        assert await submit(acts) == "ACME/2025:0001"
        await ActivityEnvironment().run(
            acts.withdraw_application,
            WithdrawInput(
                deal_id="deal-1",
                lender_id=LENDER,
                application_ref="../../admin?x=1#y",
                submission_no=1,
                reason="customer withdrew",
            ),
        )
        await ActivityEnvironment().run(
            acts.repay_lender,
            RepaymentInput(
                deal_id="deal-1",
                lender_id=LENDER,
                application_ref="ACME/2025:0001",
                amount=Decimal("100.00"),
                transaction_ref="TX-1",
                reason="unwind",
            ),
        )
    prefix = f"/lenders/{LENDER}/applications"
    assert lender.paths == [
        prefix,
        f"{prefix}/..%2F..%2Fadmin%3Fx%3D1%23y/withdrawal",
        f"{prefix}/ACME%2F2025%3A0001/repayment",
    ]
