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
        started = (
            self.events[0].workflow_execution_started_event_attributes if self.events else None
        )
        return started.original_execution_run_id if started else ""

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
    documents = [history_dict(run.events) for run in runs]
    body: Any = documents[0] if len(documents) == 1 else documents
    return json.dumps(body, indent=2, ensure_ascii=False) + "\n"


def _events_from(document: Any, source: str) -> list[HistoryEvent]:
    try:
        return list(WorkflowHistory.from_json("x", document).events)
    except (ValueError, json_format.ParseError, TypeError, KeyError) as error:
        raise AuditError(f"{source}: not a Temporal history: {error}") from None


def _workflow_id_from_events(events: Sequence[HistoryEvent], fallback: str) -> str:
    if events and events[0].HasField("workflow_execution_started_event_attributes"):
        started = events[0].workflow_execution_started_event_attributes
        if started.workflow_id:
            return started.workflow_id
    return fallback


def _start_input(events: Sequence[HistoryEvent], keyring: codec.Keyring) -> dict[str, Any]:
    if not events:
        return {}
    decoded, _ = decode_events(events[:1], keyring, strict=False)
    value = first_value(decoded[0].workflow_execution_started_event_attributes.input)
    return value if isinstance(value, dict) else {}


def parse_histories(
    text: str, source: str, keyring: codec.Keyring | None = None
) -> list[RunHistory]:
    """The runs of a history file (one object, or an array of objects)."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise AuditError(f"{source}: not valid JSON: {error}") from None
    documents = parsed if isinstance(parsed, list) else [parsed]
    if not documents:
        raise AuditError(f"{source}: an empty array holds no history")
    runs = []
    for index, document in enumerate(documents):
        where = f"{source}[{index}]" if isinstance(parsed, list) else source
        events = _events_from(document, where)
        if not events:
            raise AuditError(f"{where}: the history has no events")
        fallback = "deal-" + Path(source).stem.split("_run")[0]
        workflow_id = _workflow_id_from_events(events, "")
        if not workflow_id and keyring is not None:
            deal = _start_input(events, keyring).get("deal_id")
            workflow_id = f"deal-{deal}" if deal else ""
        runs.append(RunHistory(workflow_id or fallback, events, source, index + 1, len(documents)))
    return runs


def load_paths(
    paths: Iterable[str | Path], keyring: codec.Keyring | None = None
) -> list[RunHistory]:
    """Every run in the given files and folders (`*.json`, recursively, sorted)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(found for found in path.rglob("*.json") if found.is_file())
        elif path.exists():
            files.append(path)
        else:
            raise AuditError(f"{path}: no such file or folder")
    runs: list[RunHistory] = []
    for file in files:
        runs += parse_histories(file.read_text(encoding="utf-8"), str(file), keyring)
    return runs


async def run_chain(client: Client, workflow_id: str) -> list[str]:
    """Run ids of a workflow, first to latest, following continue-as-new."""
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as error:
        if error.status is RPCStatusCode.NOT_FOUND:
            raise AuditError(f"deal {deal_id_of(workflow_id)} does not exist") from None
        raise
    chain: list[str] = []
    run_id: str | None = description.run_id
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
    workflow_id = workflow_id_of(deal)
    chain = await run_chain(client, workflow_id)
    runs = []
    for index, run_id in enumerate(chain):
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        runs.append(
            RunHistory(
                workflow_id, list(history.events), f"{workflow_id}@{run_id}", index + 1, len(chain)
            )
        )
    return runs


_QUOTES = frozenset("\"'`")


def _check_query_text(query: str) -> None:
    """AuditError unless every parenthesis and quote of `query` closes within it.

    The operator's query goes inside parentheses after the deal type filter;
    a query that closes a parenthesis it did not open (`) OR (`), or leaves a
    quote open to swallow the closing one, would escape that filter."""
    depth, quote, escaped = 0, "", False
    for position, char in enumerate(query, start=1):
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in _QUOTES:
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise AuditError(
                    f"--query closes a parenthesis it did not open (character {position}); "
                    "it may only narrow the deal runs, not escape the WorkflowType filter"
                )
    if quote:
        raise AuditError(f"--query leaves a {quote} quote open")
    if depth:
        raise AuditError(f"--query leaves {depth} parenthesis(es) open")


def deal_runs_query(query: str) -> str:
    """The visibility query for deal runs that also match the operator's `query`,
    or AuditError when `query` is not a self-contained expression."""
    deal_runs = f'WorkflowType = "{WORKFLOW_TYPE}"'
    if not query.strip():
        return deal_runs
    _check_query_text(query)
    return f"{deal_runs} AND ({query})"


async def query_runs(client: Client, query: str) -> list[RunHistory]:
    """The runs a visibility query finds (of deal workflows), numbered per deal."""
    runs = []
    async for execution in client.list_workflows(deal_runs_query(query)):
        history = await client.get_workflow_handle(
            execution.id, run_id=execution.run_id
        ).fetch_history()
        runs.append(
            RunHistory(execution.id, list(history.events), f"{execution.id}@{execution.run_id}")
        )
    runs.sort(key=lambda run: (run.workflow_id, event_time(run.events[0])))
    for workflow_id in {run.workflow_id for run in runs}:
        mine = [run for run in runs if run.workflow_id == workflow_id]
        for number, run in enumerate(mine, start=1):
            run.run_no, run.runs = number, len(mine)
    return runs


def event_time(event: HistoryEvent) -> datetime:
    """When the event happened, in UTC."""
    return event.event_time.ToDatetime(tzinfo=UTC)


def event_type_name(event: HistoryEvent) -> str:
    """The event's type without its prefix, e.g. `ACTIVITY_TASK_SCHEDULED`."""
    return EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
