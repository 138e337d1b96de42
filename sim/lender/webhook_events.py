"""The webhooks the lender sends: event types and the data of a decision."""

from __future__ import annotations

from typing import Any

from dealflow.models import money
from sim.lender import underwriting

DECIDED = "application.decided"
COMPLETED = "disbursement.completed"
FAILED = "disbursement.failed"


def decided_data(
    deal_id: str, ref: str, seq: int, outcome: underwriting.RuleDecision
) -> dict[str, Any]:
    return {
        "deal_id": deal_id,
        "application_ref": ref,
        "decision_seq": seq,
        "decision": outcome.decision.value,
        "approved_amount": (
            None if outcome.approved_amount is None else str(money(outcome.approved_amount))
        ),
        "apr": str(money(outcome.apr)),
        "term_months": outcome.term_months,
        "stipulations": list(outcome.stipulations),
        "reasons": list(outcome.reasons),
    }
