"""The committed histories and the replayer that reads them, for every test
that replays: the replay gate, the timed-out-task replays, the stuck plans."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from temporalio.worker import Interceptor, Replayer

from dealflow import codec
from workflows import WORKFLOW_RUNNER, DealWorkflow

HISTORIES_DIR = Path(__file__).resolve().parents[1] / "histories"
# The histories of the current workflow code; older versions live in v*/.
CURRENT = sorted(HISTORIES_DIR.glob("*.json"))
HISTORY_KEYS = codec.load_keyring(f"file:{HISTORIES_DIR / 'test-codec-key'}")


def replayer(workflow: type = DealWorkflow, interceptors: Sequence[Interceptor] = ()) -> Replayer:
    return Replayer(
        workflows=[workflow],
        data_converter=codec.data_converter(HISTORY_KEYS),
        workflow_runner=WORKFLOW_RUNNER,
        interceptors=interceptors,
    )
