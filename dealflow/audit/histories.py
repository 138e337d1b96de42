"""Deal histories: read from files, fetched from the server, written as exports.

One workflow run is exactly what `temporal workflow show --output json` prints:
`{"events": [...]}` (protobuf JSON), payloads as they are on the server, i.e.
encrypted. A deal that continued-as-new has several runs; its export is a JSON
*array* of those objects, first run first (`--split` writes one file per run
instead, `NAME_run1.json`, ...). Every command that reads files accepts both
shapes, and folders of them (`*.json`, recursively).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import History, HistoryEvent
from temporalio.client import Client, WorkflowHistory
from temporalio.service import RPCError, RPCStatusCode

from dealflow import codec
from dealflow.audit.errors import AuditError
from dealflow.audit.payloads import decode_events, first_value

WORKFLOW_TYPE = "DealWorkflow"


@dataclass
class RunHistory:
    """One workflow run's events, raw (as the server stores them)."""

    workflow_id: str
    events: list[HistoryEvent]
    source: str = ""
    run_no: int = 1
    runs: int = 1

    @property
    def run_id(self) -> str:
        a = self.events[0].workflow_execution_started_event_attributes if self.events else None
        return a.original_execution_run_id if a else ""

    @property
    def deal_id(self) -> str:
        return deal_id_of(self.workflow_id)

    def label(self) -> str:
        run = f"run {self.run_no}/{self.runs}" if self.runs > 1 else "run"
        return f"deal {self.deal_id} {run} {self.run_id[:8] or '?'} ({len(self.events)} events)"


def deal_id_of(workflow_id: str) -> str:
    return workflow_id.removeprefix("deal-")


def workflow_id_of(deal: str) -> str:
    return deal if deal.startswith("deal-") else f"deal-{deal}"


def history_dict(events: Sequence[HistoryEvent]) -> dict[str, Any]:
    """One run as `temporal workflow show --output json` prints it."""
    return json_format.MessageToDict(History(events=list(events)))


def export_json(runs: Sequence[RunHistory]) -> str:
    """A deal's export: the run's object, or an array of them (first run first)."""
    docs = [history_dict(r.events) for r in runs]
    body: Any = docs[0] if len(docs) == 1 else docs
    return json.dumps(body, indent=2, ensure_ascii=False) + "\n"


def _events_from(obj: Any, source: str) -> list[HistoryEvent]:
    try:
        return list(WorkflowHistory.from_json("x", obj).events)
    except (ValueError, json_format.ParseError, TypeError, KeyError) as e:
        raise AuditError(f"{source}: not a Temporal history: {e}") from None


def _workflow_id_from_events(events: Sequence[HistoryEvent], fallback: str) -> str:
    if events and events[0].HasField("workflow_execution_started_event_attributes"):
        a = events[0].workflow_execution_started_event_attributes
        if a.workflow_id:
            return a.workflow_id
    return fallback


def _start_input(events: Sequence[HistoryEvent], keyring: codec.Keyring) -> dict[str, Any]:
    if not events:
        return {}
    decoded, _ = decode_events(events[:1], keyring, strict=False)
    v = first_value(decoded[0].workflow_execution_started_event_attributes.input)
    return v if isinstance(v, dict) else {}


def parse_histories(
    text: str, source: str, keyring: codec.Keyring | None = None
) -> list[RunHistory]:
    """The runs of a history file (one object, or an array of objects)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise AuditError(f"{source}: not valid JSON: {e}") from None
    docs = obj if isinstance(obj, list) else [obj]
    if not docs:
        raise AuditError(f"{source}: an empty array holds no history")
    runs = []
    for i, doc in enumerate(docs):
        where = f"{source}[{i}]" if isinstance(obj, list) else source
        events = _events_from(doc, where)
        if not events:
            raise AuditError(f"{where}: the history has no events")
        fallback = "deal-" + Path(source).stem.split("_run")[0]
        wid = _workflow_id_from_events(events, "")
        if not wid and keyring is not None:
            deal = _start_input(events, keyring).get("deal_id")
            wid = f"deal-{deal}" if deal else ""
        runs.append(RunHistory(wid or fallback, events, source, i + 1, len(docs)))
    return runs


def load_paths(
    paths: Iterable[str | Path], keyring: codec.Keyring | None = None
) -> list[RunHistory]:
    """Every run in the given files and folders (`*.json`, recursively, sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(x for x in p.rglob("*.json") if x.is_file())
        elif p.exists():
            files.append(p)
        else:
            raise AuditError(f"{p}: no such file or folder")
    runs: list[RunHistory] = []
    for f in files:
        runs += parse_histories(f.read_text(encoding="utf-8"), str(f), keyring)
    return runs


async def run_chain(client: Client, workflow_id: str) -> list[str]:
    """Run ids of a workflow, first to latest, following continue-as-new."""
    try:
        desc = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as e:
        if e.status is RPCStatusCode.NOT_FOUND:
            raise AuditError(f"deal {deal_id_of(workflow_id)} does not exist") from None
        raise
    chain: list[str] = []
    run_id: str | None = desc.run_id
    while run_id:
        chain.append(run_id)
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        run_id = None
        async for event in handle.fetch_history_events():
            run_id = event.workflow_execution_started_event_attributes.continued_execution_run_id
            break
    return chain[::-1]


async def fetch_deal(client: Client, deal: str) -> list[RunHistory]:
    """Every run of a deal from the server, first run first."""
    wid = workflow_id_of(deal)
    chain = await run_chain(client, wid)
    runs = []
    for i, run_id in enumerate(chain):
        h = await client.get_workflow_handle(wid, run_id=run_id).fetch_history()
        runs.append(RunHistory(wid, list(h.events), f"{wid}@{run_id}", i + 1, len(chain)))
    return runs


async def query_runs(client: Client, query: str) -> list[RunHistory]:
    """The runs a visibility query finds (of deal workflows), numbered per deal."""
    q = (
        f'WorkflowType = "{WORKFLOW_TYPE}" AND ({query})'
        if query.strip()
        else (f'WorkflowType = "{WORKFLOW_TYPE}"')
    )
    runs = []
    async for wf in client.list_workflows(q):
        h = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        runs.append(RunHistory(wf.id, list(h.events), f"{wf.id}@{wf.run_id}"))
    runs.sort(key=lambda r: (r.workflow_id, event_time(r.events[0])))
    for wid in {r.workflow_id for r in runs}:
        mine = [r for r in runs if r.workflow_id == wid]
        for i, r in enumerate(mine, start=1):
            r.run_no, r.runs = i, len(mine)
    return runs


def event_time(e: HistoryEvent) -> datetime:
    """When the event happened, in UTC."""
    return e.event_time.ToDatetime(tzinfo=UTC)


def event_type_name(e: HistoryEvent) -> str:
    """The event's type without its prefix, e.g. `ACTIVITY_TASK_SCHEDULED`."""
    return EventType.Name(e.event_type).removeprefix("EVENT_TYPE_")
