"""Determinism gate: every committed history replays against the current code.

A change to DealWorkflow that would break deals already running fails here;
such a change must be guarded with `workflow.patched` (the last tests show
both sides with a real change, `tests/histories/variants.py`). Histories are
encrypted with the committed test key and replayed through the codec, as the
worker would. Regenerate with `.venv/bin/python -m tests.histories.regenerate`;
Older generations stay committed and keep replaying: `legacy/` was recorded
before payload encryption (the codec passes unencrypted payloads through),
`v1/` before the application package was recorded in history (patch
"application-package-in-history"), `v2/` before updates returned a receipt
instead of the whole status and before one projection in flight per deal
(patch "one-projection-in-flight"), `v3/` before a projection was owed per
activation (patch "projection-per-activation"; those deals wedge when a
workflow task before a staff update timed out, see the last tests), `v4/`
before a lender's amount was bounded (patch "bounded-lender-amounts"), `v5/`
before webhook ids were scoped by lender (patch "lender-scoped-webhook-ids"),
`v6/` before dates were the dealer's (patch "dealer-dates"; refused
compensations, patch "refused-compensations-recorded", are recorded from
`withdrawal_refused_then_cancelled` on), `v7/` the one scenario that
names a stipulation from before one named again needed a new document (patch
"stipulation-named-again-needs-new-document"), `v8/` the scenarios with a
disbursement from before a lender's answer was matched to its request (patch
"disbursement-request-ids"), `v9/` every scenario from before document links
were signed at each send (patch "fresh-document-links"), conditions had a
lifecycle ("stipulation-lifecycle"), the approved terms reached the loan
contract ("approved-terms-in-loan-contract") and a follow-up call was taken
only from its due date ("follow-up-from-due-date"), `v10/` every scenario
from before a funded deal could be unwound ("unwind-after-funding") and the
loan contract waited for the funding package ("funding-package"), adding a
lender that funds once its mortgage is registered, a funded deal unwound, and
a funding document refused by the lender and replaced; `v11/` every scenario
from before bookkeeping became local activities ("local-bookkeeping"; those
deals record a marker for every older change, the current ones one marker).
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from activities import DealActivities
from dealflow import codec
from dealflow.audit.histories import load_paths
from dealflow.audit.payloads import decode_events, key_ids, walk_payloads
from dealflow.audit.replay import replay
from dealflow.config import LenderConfig
from dealflow.models import Actor, DealPolicy, DealStatus, Role, Stage
from dealflow.samples import example_deal
from dealflow.storage import db
from dealflow.storage.documents import LocalDirectoryStore
from tests.histories.variants import PATCH_ID, PatchedWelcome, UnpatchedWelcome
from tests.support.back_office import result_skipping_time
from tests.support.replay import CURRENT, HISTORIES_DIR, HISTORY_KEYS, replayer
from workflows import WORKFLOW_RUNNER, DealWorkflow

HERE = HISTORIES_DIR
HISTORIES = sorted(HERE.rglob("*.json"))
SCENARIOS = {
    "happy_path",
    "declined_then_approved",
    "conditional_then_cancelled",
    "stipulations_answered_then_cancelled",
    "counter_offer_accepted_then_cancelled",
    "declined_counter_offer_cancelled",
    "partial_approval_accepted_then_cancelled",
    "withdrawal_refused_then_cancelled",
    "mortgage_before_funding",
    "funded_then_unwound",
    "funding_document_replaced_then_unwound",
    "contract_expired",
    "all_declined",
    "continued_as_new",
}


def _history(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"deal-{path.stem}", json.loads(path.read_text("utf-8")))


def test_every_scenario_is_committed_encrypted_with_the_test_key() -> None:
    assert {p.stem.split("_run")[0] for p in CURRENT} >= SCENARIOS
    for path in CURRENT:
        events = _history(path).events
        seen: list[Payload] = []
        for e in events:
            marker = e.marker_recorded_event_attributes
            # Patch markers are written by the SDK core itself, outside the codec:
            # they carry the patch id only. So is the `data` of a local
            # activity's marker (sequence, attempt, activity type, times);
            # its result is ours, encrypted.
            if marker.marker_name == "core_patch":
                continue
            if marker.marker_name == "core_local_activity":
                walk_payloads(marker.details["result"], seen.append)
                assert codec.is_encrypted(marker.details["result"].payloads[0]), path.name
                continue
            walk_payloads(e, seen.append)
        # Everything else is encrypted but the search attributes, which the server
        # must read to index them (DealStage, LenderId, DealerId and the patch ids
        # of TemporalChangeVersion: no personal data).
        clear = [p for p in seen if not codec.is_encrypted(p)]
        assert all(
            p.metadata.get("type") in (b"Keyword", b"KeywordList")
            or (p.metadata.get("encoding") == b"binary/null" and not p.data)  # unset
            for p in clear
        ), path.name
        assert len(clear) < len(seen), path.name
        assert key_ids(events) == ["dev-insecure"], path.name
        # ...and every one decrypts with the committed key.
        decode_events(events, HISTORY_KEYS, strict=True)


@pytest.mark.parametrize("path", HISTORIES, ids=[str(p.relative_to(HERE)) for p in HISTORIES])
async def test_history_replays_against_current_code(path: Path) -> None:
    # As the worker replays: with its codec, which refuses payloads in clear
    # (dealflow/codec.py), so nothing a deal's own history holds may be one.
    # `legacy/` predates encryption: the audit tools' codec reads it.
    converter = codec.data_converter(HISTORY_KEYS)
    if path.parent.name != "legacy":
        converter = codec.refusing_plaintext(converter)
    gate = Replayer(
        workflows=[DealWorkflow], data_converter=converter, workflow_runner=WORKFLOW_RUNNER
    )
    result = await gate.replay_workflow(_history(path), raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"


async def test_an_unpatched_change_fails_the_gate() -> None:
    history_replayer = replayer(UnpatchedWelcome)
    for path in CURRENT:
        result = await history_replayer.replay_workflow(
            _history(path), raise_on_replay_failure=False
        )
        if path.stem.split("_run")[-1].isdigit() and not path.stem.endswith("_run1"):
            continue  # continued runs do not take the new path; their first run fails
        assert result.replay_failure is not None, f"{path.name} replayed despite the change"
        assert "Nondeterminism" in str(result.replay_failure), result.replay_failure
    # The audit tool names the deal and the event where the code diverged.
    runs = load_paths([HERE / "happy_path.json"], HISTORY_KEYS)
    [outcome] = await replay(runs, HISTORY_KEYS, workflows=[UnpatchedWelcome])
    assert outcome.nondeterminism and not outcome.ok
    # Where the old code recorded its first command: the search attributes,
    # after the markers of the patches the deal's start takes.
    assert " UPSERT_WORKFLOW_SEARCH_ATTRIBUTES at " in outcome.event, outcome.event
    assert runs[0].deal_id in runs[0].label()


async def test_the_patched_change_passes_the_gate() -> None:
    history_replayer = replayer(PatchedWelcome)
    for path in CURRENT:
        result = await history_replayer.replay_workflow(
            _history(path), raise_on_replay_failure=False
        )
        assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"


async def test_new_deals_take_the_patched_path(
    ts_env: WorkflowEnvironment,
    database_url: str,
    store: LocalDirectoryStore,
    tmp_path: Path,
) -> None:
    """The patched code runs the new step for a new deal, and that history replays
    with the patched code but not with the code from before the change."""
    from dealflow import client as deals
    from dealflow.config import load_lenders

    lenders: dict[str, LenderConfig] = load_lenders(
        Path(__file__).resolve().parents[2] / "examples" / "lenders.toml"
    )
    tq = f"patched-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient() as http:
        acts = DealActivities(db.make_engine(database_url), lenders, http, store)
        with ThreadPoolExecutor(4) as pool:
            async with Worker(
                ts_env.client,
                task_queue=tq,
                workflows=[PatchedWelcome],
                activities=acts.all(),
                activity_executor=pool,
                workflow_runner=WORKFLOW_RUNNER,
            ):
                deal_id = deals.new_deal_id()
                inp = deals.start_input(
                    deal_id,
                    example_deal(),
                    DealPolicy(),
                    lenders,
                    Actor(staff_id="sales-01", role=Role.SALES),
                )
                await deals.start_deal(ts_env.client, tq, inp)
                handle = ts_env.client.get_workflow_handle(
                    deals.workflow_id(deal_id), result_type=DealStatus
                )
                # The contract deadline expires the deal.
                status = await result_skipping_time(ts_env, handle)
    assert status.stage is Stage.EXPIRED
    history = await handle.fetch_history()
    markers = [e for e in history.events if e.HasField("marker_recorded_event_attributes")]
    assert any(PATCH_ID.encode() in marker.SerializeToString() for marker in markers), (
        "the patch marker is in the new history"
    )
    ok = await replayer(PatchedWelcome).replay_workflow(history, raise_on_replay_failure=False)
    assert ok.replay_failure is None, ok.replay_failure
    old = await replayer(DealWorkflow).replay_workflow(history, raise_on_replay_failure=False)
    assert old.replay_failure is not None, "a rollback to the old code is caught as well"
