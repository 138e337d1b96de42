"""Determinism gate: every committed history replays against the current code.

A change to DealWorkflow that would break deals already running fails here;
such a change must be guarded with `workflow.patched`. Regenerate with
`.venv/bin/python -m tests.histories.regenerate`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows import WORKFLOW_RUNNER, DealWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_histories_are_committed() -> None:
    names = {p.stem.split("_run")[0] for p in HISTORIES}
    assert {"happy_path", "declined_then_approved", "all_declined", "contract_expired",
            "continued_as_new"} <= names


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays_against_current_code(path: Path) -> None:
    raw = path.read_text(encoding="utf-8")
    history = WorkflowHistory.from_json(f"deal-{path.stem}", json.loads(raw))
    replayer = Replayer(
        workflows=[DealWorkflow],
        data_converter=pydantic_data_converter,
        workflow_runner=WORKFLOW_RUNNER,
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"
