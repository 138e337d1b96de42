"""The archive of closed deals in the document store, and its verification.

Archive (document store, `DEALFLOW_DOCUMENT_STORE`):

    archive/deals/<deal_id>.json   the deal's export, byte for byte
    archive/manifest.jsonl         one JSON object per line, oldest first

A manifest entry is `{"seq", "deal_id", "workflow_id", "run_ids", "event_count",
"status", "stage", "closed_at", "history_key", "history_sha256",
"history_bytes", "key_ids", "archived_at", "prev_sha256", "sha256"}` written
as canonical JSON (sorted keys, no spaces). `sha256` is the SHA-256 of the
canonical JSON of the entry without its `sha256` field; `prev_sha256` is the
previous entry's `sha256` (64 zeros for the first): a hash chain. `key_ids` are
the codec keys the history needs — keep them as long as the archive.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributeKey

from dealflow.audit.errors import AuditError
from dealflow.audit.histories import (
    WORKFLOW_TYPE,
    deal_id_of,
    export_json,
    fetch_deal,
    parse_histories,
)
from dealflow.audit.payloads import key_ids
from dealflow.config import get_settings

ARCHIVE_PREFIX = "archive"
MANIFEST_KEY = f"{ARCHIVE_PREFIX}/manifest.jsonl"
HISTORY_PREFIX = f"{ARCHIVE_PREFIX}/deals/"
GENESIS = "0" * 64
MANIFEST_BATCH = 50
_DEAL_STAGE = SearchAttributeKey.for_keyword("DealStage")


class ArchiveBusy(AuditError):
    """Another archive run holds the lock: nothing done, safe to retry."""


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "sha256"})).hexdigest()


def _read_manifest(store: Any) -> bytes:
    from dealflow.docstore import DocumentNotFound

    try:
        return bytes(store.read_bytes(MANIFEST_KEY))
    except DocumentNotFound:
        return b""


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArchiveBusy(
                f"another archive run holds {path}; nothing done (safe to retry later)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def default_lock_path() -> Path:
    return get_settings().data_dir / "audit-archive.lock"


@dataclass
class ArchiveReport:
    archived: list[dict[str, Any]]
    entries: int
    head: str


async def _closed_deals(client: Client) -> list[tuple[datetime, str]]:
    query = f'WorkflowType = "{WORKFLOW_TYPE}" AND ExecutionStatus != "Running"'
    latest: dict[str, datetime] = {}
    async for wf in client.list_workflows(query):
        if wf.status is WorkflowExecutionStatus.CONTINUED_AS_NEW:
            continue
        closed = wf.close_time or wf.start_time
        latest[wf.id] = max(closed, latest.get(wf.id, closed))
    return sorted((t, wid) for wid, t in latest.items())


async def archive(
    client: Client,
    store: Any,
    *,
    lock_path: Path | None = None,
    now: datetime | None = None,
    out: IO[str] | None = None,
) -> ArchiveReport:
    """Archive every closed deal not yet in the manifest. Idempotent, one run at a time."""
    with _lock(lock_path or default_lock_path()):
        base = await asyncio.to_thread(_read_manifest, store)
        entries, problems = _parse_manifest(base)
        problems += _check_chain(entries)
        if problems:
            raise AuditError(
                "the manifest is damaged; not extending it. Run `dealflow-audit verify`:\n  "
                + "\n  ".join(problems)
            )
        done = {e["deal_id"] for _, e in entries}
        head = entries[-1][1]["sha256"] if entries else GENESIS
        lines = [line for line in base.decode().splitlines() if line.strip()]
        archived: list[dict[str, Any]] = []
        pending = 0
        for _, wid in await _closed_deals(client):
            deal = deal_id_of(wid)
            if deal in done:
                continue
            desc = await client.get_workflow_handle(wid).describe()
            if desc.status in (WorkflowExecutionStatus.RUNNING, None):
                continue  # reopened under the same id? only closed deals are archived
            runs = await fetch_deal(client, wid)
            text = export_json(runs).encode()
            key = f"{HISTORY_PREFIX}{deal}.json"
            await asyncio.to_thread(store.put_bytes, text, key=key, content_type="application/json")
            stage = desc.typed_search_attributes.get(_DEAL_STAGE)
            entry: dict[str, Any] = {
                "seq": len(lines) + 1,
                "deal_id": deal,
                "workflow_id": wid,
                "run_ids": [r.run_id for r in runs],
                "event_count": sum(len(r.events) for r in runs),
                "status": desc.status.name if desc.status else "UNKNOWN",
                "stage": stage,
                "closed_at": desc.close_time.isoformat() if desc.close_time else None,
                "history_key": key,
                "history_sha256": hashlib.sha256(text).hexdigest(),
                "history_bytes": len(text),
                "key_ids": sorted({k for r in runs for k in key_ids(r.events)}),
                "archived_at": (now or datetime.now(UTC)).isoformat(),
                "prev_sha256": head,
            }
            entry["sha256"] = head = entry_hash(entry)
            lines.append(_canonical(entry).decode())
            archived.append(entry)
            done.add(deal)
            pending += 1
            if out is not None:
                print(
                    f"archived deal {deal}: {len(runs)} run(s), {entry['event_count']} events,"
                    f" sha256 {entry['history_sha256'][:16]}… -> {key}",
                    file=out,
                )
            if pending >= MANIFEST_BATCH:
                base = await _write_manifest(store, base, lines)
                pending = 0
        if pending:
            await _write_manifest(store, base, lines)
        return ArchiveReport(archived, len(lines), head)


async def _write_manifest(store: Any, base: bytes, lines: list[str]) -> bytes:
    current = await asyncio.to_thread(_read_manifest, store)
    if current != base:
        raise AuditError(
            f"{MANIFEST_KEY} changed while this run was archiving (another archiver on "
            "another host?); nothing of this batch was added. Run archive again."
        )
    data = ("\n".join(lines) + "\n").encode()
    await asyncio.to_thread(
        store.put_bytes, data, key=MANIFEST_KEY, content_type="application/x-ndjson"
    )
    return data


def _parse_manifest(data: bytes) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """(line number, entry) pairs and the lines that are not entries."""
    entries: list[tuple[int, dict[str, Any]]] = []
    problems: list[str] = []
    for no, raw in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError as e:
            problems.append(f"line {no}: not valid JSON (altered): {e.msg}")
            continue
        if not isinstance(entry, dict) or not {"seq", "deal_id", "sha256"} <= entry.keys():
            problems.append(f"line {no}: not a manifest entry (altered)")
            continue
        entries.append((no, entry))
    return entries, problems


def _name(entry: dict[str, Any]) -> str:
    return f"entry seq {entry.get('seq')} (deal {entry.get('deal_id')})"


def _check_chain(entries: list[tuple[int, dict[str, Any]]]) -> list[str]:
    problems: list[str] = []
    seqs = [e.get("seq") for _, e in entries]
    expected = list(range(1, len(entries) + 1))
    for no, e in entries:
        if entry_hash(e) != e.get("sha256"):
            problems.append(
                f"line {no}: {_name(e)} altered: its content no longer matches its sha256"
            )
    if sorted(s for s in seqs if isinstance(s, int)) == expected and seqs != expected:
        for (no, e), want in zip(entries, expected, strict=True):
            if e.get("seq") != want:
                problems.append(
                    f"line {no}: {_name(e)} out of order (line {no} should hold seq "
                    f"{want}): entries reordered"
                )
    else:
        present = {s for s in seqs if isinstance(s, int)}
        top = max(present, default=0)
        missing = [s for s in range(1, top + 1) if s not in present]
        if missing:
            problems.append("missing entries (deleted): seq " + ", ".join(map(str, missing)))
        dup = sorted({s for s in seqs if seqs.count(s) > 1}, key=str)
        if dup:
            problems.append("duplicate entries: seq " + ", ".join(map(str, dup)))
        prev_seq = 0
        for no, e in entries:
            s = e.get("seq")
            if isinstance(s, int) and s < prev_seq:
                problems.append(f"line {no}: {_name(e)} out of order after seq {prev_seq}")
            prev_seq = s if isinstance(s, int) else prev_seq
    prev = GENESIS
    for no, e in entries:
        if e.get("prev_sha256") != prev:
            problems.append(
                f"line {no}: {_name(e)} does not chain to the entry before it (prev_sha256 "
                f"{str(e.get('prev_sha256'))[:16]}…, expected {prev[:16]}…): an entry before it "
                "was altered, deleted, inserted or moved"
            )
        prev = str(e.get("sha256"))
    return problems


@dataclass
class VerifyReport:
    entries: int
    head: str
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(store: Any, expect_head: str | None = None) -> VerifyReport:
    """Recompute the manifest chain and every archived history's digest."""
    from dealflow.docstore import DocumentNotFound

    data = _read_manifest(store)
    entries, problems = _parse_manifest(data)
    problems += _check_chain(entries)
    listed: set[str] = set()
    for _, e in entries:
        key = str(e.get("history_key"))
        listed.add(key)
        try:
            body = store.read_bytes(key)
        except (DocumentNotFound, ValueError):
            problems.append(f"{_name(e)}: history {key} is missing")
            continue
        digest = hashlib.sha256(body).hexdigest()
        if digest != e.get("history_sha256"):
            problems.append(
                f"{_name(e)}: history {key} altered (sha256 {digest[:16]}…, recorded "
                f"{str(e.get('history_sha256'))[:16]}…)"
            )
            continue
        try:
            runs = parse_histories(body.decode(), key)
        except AuditError as err:
            problems.append(f"{_name(e)}: {err}")
            continue
        count = sum(len(r.events) for r in runs)
        if count != e.get("event_count") or [r.run_id for r in runs] != e.get("run_ids"):
            problems.append(
                f"{_name(e)}: history {key} does not match the recorded run ids and event count"
            )
    for key in sorted(store.list(HISTORY_PREFIX)):
        if key not in listed:
            problems.append(f"{key} is archived but has no manifest entry (entry deleted?)")
    head = str(entries[-1][1].get("sha256")) if entries else GENESIS
    if expect_head and expect_head != head:
        problems.append(
            f"the manifest head is {head}, not the expected {expect_head}: entries were removed "
            "from or added to its end"
        )
    return VerifyReport(len(entries), head, problems)
