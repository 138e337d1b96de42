"""Where a stuck deal is reset to, and when that may happen unattended
(`dealflow.stuck.plan_reset`), on captured histories.

`tests/client/fixtures/wedged_after_timed_out_task.json` is a deal captured from
chaos worker-kill (60 deals) on this code: a lender's disbursement event
reached the deal, the workflow task carrying it timed out with its worker, and
the next task carried that event and a staff update (`record-certificate`).
The live worker applied the event first (the stage moved to REGISTRATION, then
the update passed its validator); a replay of that task applies the update
first, so every later task failed with a nondeterminism error ("Update machine
does not handle this event: ActivityTaskScheduled"). Which of the two an
activation applies first is the SDK's doing, not the workflow's; the deal is
healed by a reset to the task before the event, with the event and the
updates re-applied in the order the server received them.
"""

from __future__ import annotations

import json
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory

from dealflow import stuck
from tests.histories.variants import UnpatchedWelcome
from tests.support.replay import HISTORIES_DIR, replayer
from tests.support.stack import codec_data_converter

FIXTURES = Path(__file__).parent / "fixtures"


def _load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json("deal", json.loads(path.read_text("utf-8")))


async def test_the_captured_wedge_does_not_replay_past_the_interrupted_task() -> None:
    history = _load(FIXTURES / "wedged_after_timed_out_task.json")
    result = await replayer().replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is not None
    assert "Nondeterminism" in str(result.replay_failure)


async def test_a_deal_that_diverged_after_an_interrupted_task_is_healed_unattended() -> None:
    history = _load(FIXTURES / "wedged_after_timed_out_task.json")
    plan = await stuck.plan_reset(codec_data_converter(), history)
    # The task that carried the event and the update, right after the timed-out one:
    # it runs again; the update (and those after it) are re-applied in order.
    assert plan.event_id == 284
    assert plan.after_interrupted_task and plan.automatic
    dropped = list(history.events)[plan.index + 1 :]
    reapplied = [(r.kind, r.name) for r in stuck._reapplied_after(dropped)]
    assert reapplied[0] == ("update", "record-certificate")
    # The lender event came before that task: kept, not re-applied.
    assert all(kind == "update" for kind, _ in reapplied), reapplied
    # What a reset keeps replays with the deployed code.
    kept = WorkflowHistory(history.workflow_id, list(history.events)[: plan.index])
    assert (await replayer().replay_workflow(kept)).replay_failure is None


async def test_a_deal_that_diverged_at_a_completed_task_waits_for_an_operator() -> None:
    """An unpatched code change diverges at a task the old code had completed:
    a reset there is a decision for a person, never taken unattended."""
    history = _load(HISTORIES_DIR / "happy_path.json")
    plan = await stuck.plan_reset(codec_data_converter(), history, [UnpatchedWelcome])
    assert plan.event_id == 4  # only the first task replays with the changed code
    assert not plan.automatic


async def test_a_deal_whose_whole_history_replays_is_reset_to_its_newest_task() -> None:
    """Stuck on what the server refuses (not a divergence): the reset keeps
    everything but the newest task, which runs again."""
    history = _load(HISTORIES_DIR / "declined_then_approved.json")
    plan = await stuck.plan_reset(codec_data_converter(), history)
    assert plan.replays_whole and plan.automatic
    done = EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    completed = [e.event_id for e in history.events if e.event_type == done]
    assert plan.event_id == completed[-1]


async def test_a_timer_that_fired_across_an_interrupted_task_is_healed_unattended() -> None:
    """Captured from chaos worker-kill: a follow-up timer fired, the task that
    carried it timed out (its worker's sticky queue had died), and the next
    task recorded no notification where a replay sends one; the divergence
    shows a task later, at the next staff update."""
    history = _load(FIXTURES / "wedged_timer_after_timed_out_task.json")
    result = await replayer().replay_workflow(history, raise_on_replay_failure=False)
    assert "Nondeterminism" in str(result.replay_failure)
    plan = await stuck.plan_reset(codec_data_converter(), history)
    assert plan.after_interrupted_task and plan.automatic
    kept = WorkflowHistory(history.workflow_id, list(history.events)[: plan.index])
    assert (await replayer().replay_workflow(kept)).replay_failure is None


async def test_a_task_that_took_an_update_and_a_timer_together_is_healed_unattended() -> None:
    """Captured from chaos server-kill at 300 deals: one task took a follow-up
    timer and a staff update; the live worker applied the timer first, a replay
    applies the update first. No task was interrupted before it."""
    history = _load(FIXTURES / "wedged_timer_and_update_in_one_task.json")
    result = await replayer().replay_workflow(history, raise_on_replay_failure=False)
    assert "Nondeterminism" in str(result.replay_failure)
    plan = await stuck.plan_reset(codec_data_converter(), history)
    assert not plan.after_interrupted_task and plan.update_with_other_event
    assert plan.automatic
    kept = WorkflowHistory(history.workflow_id, list(history.events)[: plan.index])
    assert (await replayer().replay_workflow(kept)).replay_failure is None
