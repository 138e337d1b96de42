"""The deal page's stage bar follows the order the deal's lender works in."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dealflow.desk.deal_view import stage_bar
from dealflow.models import DealStatus, Stage, Transition


def status_in_registration(mortgage_before_funding: bool) -> DealStatus:
    at = datetime(2026, 12, 1, tzinfo=UTC)
    moves = [Stage.CONTRACT, Stage.LOAN_CONTRACT, Stage.REGISTRATION]
    # Only what the stage bar reads.
    fields: dict[str, Any] = {
        "stage": Stage.REGISTRATION,
        "stage_entered_at": at,
        "mortgage_before_funding": mortgage_before_funding,
        "transitions": [
            Transition(at=at, from_stage=None, to_stage=stage, actor="sales-01/sales", reason="")
            for stage in moves
        ],
    }
    return DealStatus.model_construct(**fields)


def test_a_lender_that_funds_after_registration_has_registration_before_disbursement() -> None:
    now = datetime(2026, 12, 2, tzinfo=UTC)
    path, _ = stage_bar(status_in_registration(True), now)
    names = [step.stage for step in path]
    assert names.index(Stage.REGISTRATION) + 1 == names.index(Stage.DISBURSEMENT)
    assert [step.state for step in path if step.stage is Stage.DISBURSEMENT] == ["ahead"]
    usual, _ = stage_bar(status_in_registration(False), now)
    order = [step.stage for step in usual]
    assert order.index(Stage.DISBURSEMENT) + 1 == order.index(Stage.REGISTRATION)
