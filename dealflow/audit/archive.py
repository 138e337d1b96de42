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

Locking. On S3 every history is written with Object Lock in compliance mode,
retained for `DEALFLOW_ARCHIVE_RETENTION_DAYS` (default 1826, 5 years): until
then nobody — not the bucket owner, not the root account — can delete that
version or shorten its retention. The bucket must have Object Lock enabled;
if it has not, `archive` refuses before writing anything, naming the bucket,
rather than write histories that could be deleted. A local directory cannot
lock anything: its histories are plain files (development and tests).

Two archivers. The manifest is extended by compare-and-swap: each run reads the
manifest and its tag (the S3 ETag), and writes the longer manifest with
`If-Match: <that ETag>` — or `If-None-Match: *` when there was no manifest yet.
Of two archivers racing from the same manifest, S3 accepts exactly one write;
the other gets 412 (or 409 while the winner's write is in flight), adds no
entry, and `archive` raises `ArchiveRaceLost` (the CLI exits 3). The chain
cannot fork: every accepted manifest extends the one its writer read. We chose
`If-Match` on the manifest itself over a separate object per sequence number
written with `If-None-Match: *`: S3 has supported both conditions on PutObject
since 2024, and so does moto 5.x over HTTP (the tests run against it), and it
keeps the manifest one object in the format existing archives already have.
A history is written with `If-None-Match: *` as well: an export of the same
runs that some run already stored (an archiver racing this one, or one that
stopped before its manifest write) is kept and named by the entry, so there is
never a second locked version of one history, nor one replacing what a racing
winner's entry names. A local directory does the same compare-and-swap
with a per-key `flock` and `os.link`/`os.replace` (`LocalDirectoryStore`).

Runs on one host also take a lock file (`--lock-file`, default
`$DEALFLOW_DATA_DIR/audit-archive.lock`): an overlapping cron run finds it held,
does nothing and exits 0 (`ArchiveBusy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from temporalio.client import Client, WorkflowExecutionDescription, WorkflowExecutionStatus
from temporalio.common import SearchAttributeKey

from dealflow.audit.errors import AuditError
from dealflow.audit.histories import (
    WORKFLOW_TYPE,
    RunHistory,
    deal_id_of,
    export_json,
    fetch_deal,
    parse_histories,
)
from dealflow.audit.payloads import key_ids
from dealflow.config import get_settings
from dealflow.progress import Board

ARCHIVE_PREFIX = "archive"
MANIFEST_KEY = f"{ARCHIVE_PREFIX}/manifest.jsonl"
HISTORY_PREFIX = f"{ARCHIVE_PREFIX}/deals/"
GENESIS = "0" * 64
MANIFEST_BATCH = 50
_DEAL_STAGE = SearchAttributeKey.for_keyword("DealStage")


class ArchiveBusy(AuditError):
    """Another archive run holds the lock: nothing done, safe to retry."""


class ArchiveRaceLost(AuditError):
    """Another archiver extended the manifest after this run read it: this run's
    pending entries were not added (the chain did not fork); safe to run again."""


@dataclass(frozen=True)
class _Manifest:
    """The manifest as this run last read or wrote it; `tag` None: there was none."""

    data: bytes
    tag: str | None


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(
        _canonical({key: value for key, value in entry.items() if key != "sha256"})
    ).hexdigest()


def _read_manifest(store: Any) -> bytes:
    return _read_manifest_tagged(store).data


def _read_manifest_tagged(store: Any) -> _Manifest:
    from dealflow.storage.documents import DocumentNotFound

    try:
        data, tag = store.read_tagged(MANIFEST_KEY)
    except DocumentNotFound:
        return _Manifest(b"", None)
    return _Manifest(bytes(data), tag)


def _retention_lock_required(store: Any) -> bool:
    """Whether histories go under retention: yes on every store that offers it (S3),
    and then its bucket must have it on (else `AuditError`, nothing written)."""
    from dealflow.storage.documents import ObjectLockUnavailable

    if not store.supports_object_lock:
        return False  # a local directory: plain files, for development and tests
    try:
        store.require_object_lock()
    except ObjectLockUnavailable as error:
        raise AuditError(
            f"refusing to archive into {store!r}: {error}. Nothing was written: archived "
            "histories must be locked against deletion."
        ) from None
    return True


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as lock_file:
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArchiveBusy(
                f"another archive run holds {path}; nothing done (safe to retry later)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


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
    async for execution in client.list_workflows(query):
        if execution.status is WorkflowExecutionStatus.CONTINUED_AS_NEW:
            continue
        closed = execution.close_time or execution.start_time
        latest[execution.id] = max(closed, latest.get(execution.id, closed))
    return sorted((closed_at, workflow_id) for workflow_id, closed_at in latest.items())


async def archive(
    client: Client,
    store: Any,
    *,
    lock_path: Path | None = None,
    now: datetime | None = None,
    out: IO[str] | None = None,
    retention: timedelta | None = None,
    board: Board | None = None,
) -> ArchiveReport:
    """Archive every closed deal not yet in the manifest. Idempotent; of two runs
    racing, one extends the manifest and the other raises `ArchiveRaceLost`.

    `retention` (default: the settings' `archive_retention_days`) is how long each
    history stays locked on S3. On `board`, a bar counts the closed deals looked at.
    """
    if retention is None:
        retention = timedelta(days=get_settings().archive_retention_days)
    with _lock(lock_path or default_lock_path()):
        locked = await asyncio.to_thread(_retention_lock_required, store)
        manifest = await asyncio.to_thread(_read_manifest_tagged, store)
        entries = _intact_entries(manifest.data)
        done = {entry["deal_id"] for _, entry in entries}
        head = entries[-1][1]["sha256"] if entries else GENESIS
        lines = [line for line in manifest.data.decode().splitlines() if line.strip()]
        archived: list[dict[str, Any]] = []
        pending = 0
        closed = [w for _, w in await _closed_deals(client) if deal_id_of(w) not in done]
        bar = (board or Board(None)).add("histories archived", len(closed), "histories")
        for workflow_id in closed:
            description = await client.get_workflow_handle(workflow_id).describe()
            if description.status in (WorkflowExecutionStatus.RUNNING, None):
                bar.advance()
                continue  # reopened under the same id? only closed deals are archived
            retain_until = _retain_until(retention) if locked else None
            entry = await _archive_deal(
                client, store, description, _Chain(len(lines) + 1, head, retain_until), now
            )
            head = entry["sha256"]
            lines.append(_canonical(entry).decode())
            archived.append(entry)
            done.add(entry["deal_id"])
            pending += 1
            bar.advance()
            if out is not None:
                _print_archived(entry, out)
            if pending >= MANIFEST_BATCH:
                manifest = await _write_manifest(store, manifest, lines, len(archived) - pending)
                pending = 0
        if pending:
            await _write_manifest(store, manifest, lines, len(archived) - pending)
        return ArchiveReport(archived, len(lines), head)


def _intact_entries(data: bytes) -> list[tuple[int, dict[str, Any]]]:
    entries, problems = _parse_manifest(data)
    problems += _check_chain(entries)
    if problems:
        raise AuditError(
            "the manifest is damaged; not extending it. Run `dealflow-audit verify`:\n  "
            + "\n  ".join(problems)
        )
    return entries


def _retain_until(retention: timedelta) -> datetime:
    # Whole seconds: S3 keeps the date to the second, and head_object shows it so.
    return (datetime.now(UTC) + retention).replace(microsecond=0)


def _print_archived(entry: dict[str, Any], out: IO[str]) -> None:
    print(
        f"archived deal {entry['deal_id']}: {len(entry['run_ids'])} run(s), "
        f"{entry['event_count']} events, sha256 {entry['history_sha256'][:16]}… "
        f"-> {entry['history_key']}",
        file=out,
    )


@dataclass(frozen=True)
class _Chain:
    """Where a new entry goes: its seq, the sha256 it chains to, and until when its
    history is locked (None: not locked)."""

    seq: int
    head: str
    retain_until: datetime | None


async def _archive_deal(
    client: Client,
    store: Any,
    description: WorkflowExecutionDescription,
    chain: _Chain,
    now: datetime | None,
) -> dict[str, Any]:
    """Write a closed deal's export to the store; returns its manifest entry."""
    workflow_id = description.id
    deal = deal_id_of(workflow_id)
    runs = await fetch_deal(client, workflow_id)
    text = export_json(runs).encode()
    key = f"{HISTORY_PREFIX}{deal}.json"
    text = await asyncio.to_thread(_store_history, store, key, text, runs, chain.retain_until)
    entry: dict[str, Any] = {
        "seq": chain.seq,
        "deal_id": deal,
        "workflow_id": workflow_id,
        "run_ids": [run.run_id for run in runs],
        "event_count": sum(len(run.events) for run in runs),
        "status": description.status.name if description.status else "UNKNOWN",
        "stage": description.typed_search_attributes.get(_DEAL_STAGE),
        "closed_at": description.close_time.isoformat() if description.close_time else None,
        "history_key": key,
        "history_sha256": hashlib.sha256(text).hexdigest(),
        "history_bytes": len(text),
        "key_ids": sorted({key_id for run in runs for key_id in key_ids(run.events)}),
        "archived_at": (now or datetime.now(UTC)).isoformat(),
        "prev_sha256": chain.head,
    }
    entry["sha256"] = entry_hash(entry)
    return entry


def _store_history(
    store: Any, key: str, text: bytes, runs: list[RunHistory], retain_until: datetime | None
) -> bytes:
    """Store a deal's export at `key`; returns the bytes stored there.

    If an export of the same runs is already there (stored by an archiver that lost
    a race, or stopped before its manifest write — or by the winner of a race this
    run is about to lose), that one is kept and returned: one locked copy is enough,
    and a racing winner's entry may name it. Two exports of one history can differ
    in bytes (payload metadata is a protobuf map, whose order the server does not
    fix), so "the same runs" means the same run ids and event counts.
    """
    from dealflow.storage.documents import PreconditionFailed

    def put(if_match: str | None) -> None:
        store.put_bytes_conditional(
            text,
            key=key,
            content_type="application/json",
            if_match=if_match,
            retain_until=retain_until,
        )

    try:
        put(None)
        return text
    except PreconditionFailed:
        existing, tag = store.read_tagged(key)
    if existing == text or _same_runs(existing, key, runs):
        return bytes(existing)
    # Another state of the deal (reset and closed again since) that no entry names:
    # this export replaces it (on S3 as a new version; the old one stays locked).
    try:
        put(tag)
    except PreconditionFailed:
        raise ArchiveRaceLost(
            f"another archiver wrote {key} while this run did; this run added nothing to "
            f"{MANIFEST_KEY} in this batch. Run archive again."
        ) from None
    return text


def _same_runs(stored: bytes, key: str, runs: list[RunHistory]) -> bool:
    try:
        theirs = parse_histories(stored.decode(), key)
    except (AuditError, UnicodeDecodeError):
        return False
    return [(run.run_id, len(run.events)) for run in theirs] == [
        (run.run_id, len(run.events)) for run in runs
    ]


async def _write_manifest(
    store: Any,
    manifest: _Manifest,
    lines: list[str],
    committed: int,
) -> _Manifest:
    """Replace the manifest this run read with `lines`, only if it is still that one."""
    from dealflow.storage.documents import PreconditionFailed

    data = ("\n".join(lines) + "\n").encode()
    try:
        tag = await asyncio.to_thread(
            store.put_bytes_conditional,
            data,
            key=MANIFEST_KEY,
            content_type="application/x-ndjson",
            if_match=manifest.tag,
        )
    except PreconditionFailed:
        current = await asyncio.to_thread(_read_manifest_tagged, store)
        if current.data == data:  # our own write, whose response was lost and retried
            return current
        raise ArchiveRaceLost(
            _race_lost_message(manifest, current, len(lines), committed)
        ) from None
    return _Manifest(data, tag)


def _race_lost_message(read: _Manifest, current: _Manifest, ours: int, committed: int) -> str:
    entries, _ = _parse_manifest(current.data)
    head = str(entries[-1][1].get("sha256")) if entries else GENESIS
    before = len(_parse_manifest(read.data)[0])
    dropped = ours - before
    dropped_text = "1 new entry was" if dropped == 1 else f"{dropped} new entries were"
    earlier = f"; the {committed} it added in earlier batches stay" if committed else ""
    return (
        f"another archiver extended {MANIFEST_KEY} first (from {before} to {len(entries)} "
        f"entries, head {head}); this run added nothing more to it (its {dropped_text} not "
        f"written{earlier}), so the chain did not fork. Run archive again to add any deal the "
        "other run did not."
    )


def _parse_manifest(data: bytes) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """(line number, entry) pairs and the lines that are not entries."""
    entries: list[tuple[int, dict[str, Any]]] = []
    problems: list[str] = []
    for line_no, raw in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError as error:
            problems.append(f"line {line_no}: not valid JSON (altered): {error.msg}")
            continue
        if not isinstance(entry, dict) or not {"seq", "deal_id", "sha256"} <= entry.keys():
            problems.append(f"line {line_no}: not a manifest entry (altered)")
            continue
        entries.append((line_no, entry))
    return entries, problems


def _entry_name(entry: dict[str, Any]) -> str:
    return f"entry seq {entry.get('seq')} (deal {entry.get('deal_id')})"


def _check_chain(entries: list[tuple[int, dict[str, Any]]]) -> list[str]:
    """Every way the manifest's entries differ from an unaltered hash chain."""
    problems: list[str] = []
    for line_no, entry in entries:
        if entry_hash(entry) != entry.get("sha256"):
            problems.append(
                f"line {line_no}: {_entry_name(entry)} altered: its content no longer matches "
                "its sha256"
            )
    problems += _sequence_problems(entries)
    previous = GENESIS
    for line_no, entry in entries:
        if entry.get("prev_sha256") != previous:
            problems.append(
                f"line {line_no}: {_entry_name(entry)} does not chain to the entry before it "
                f"(prev_sha256 {str(entry.get('prev_sha256'))[:16]}…, expected "
                f"{previous[:16]}…): an entry before it was altered, deleted, inserted or moved"
            )
        previous = str(entry.get("sha256"))
    return problems


def _sequence_problems(entries: list[tuple[int, dict[str, Any]]]) -> list[str]:
    """Entries reordered, deleted or duplicated, by their `seq` numbers."""
    seqs = [entry.get("seq") for _, entry in entries]
    expected = list(range(1, len(entries) + 1))
    numbers = [seq for seq in seqs if isinstance(seq, int)]
    if sorted(numbers) == expected and seqs != expected:
        return [
            f"line {line_no}: {_entry_name(entry)} out of order (line {line_no} should hold "
            f"seq {wanted}): entries reordered"
            for (line_no, entry), wanted in zip(entries, expected, strict=True)
            if entry.get("seq") != wanted
        ]
    problems: list[str] = []
    present = set(numbers)
    missing = [seq for seq in range(1, max(present, default=0) + 1) if seq not in present]
    if missing:
        problems.append("missing entries (deleted): seq " + ", ".join(map(str, missing)))
    duplicates = sorted({seq for seq in seqs if seqs.count(seq) > 1}, key=str)
    if duplicates:
        problems.append("duplicate entries: seq " + ", ".join(map(str, duplicates)))
    previous_seq = 0
    for line_no, entry in entries:
        seq = entry.get("seq")
        if isinstance(seq, int) and seq < previous_seq:
            problems.append(
                f"line {line_no}: {_entry_name(entry)} out of order after seq {previous_seq}"
            )
        previous_seq = seq if isinstance(seq, int) else previous_seq
    return problems


@dataclass
class VerifyReport:
    entries: int
    head: str
    problems: list[str]
    # On a store that locks objects: how the histories are locked, and what is not.
    locks: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(store: Any, expect_head: str | None = None) -> VerifyReport:
    """Recompute the manifest chain and every archived history's digest."""
    entries, problems = _parse_manifest(_read_manifest(store))
    problems += _check_chain(entries)
    listed: set[str] = set()
    for _, entry in entries:
        listed.add(str(entry.get("history_key")))
        problem = _history_problem(store, entry)
        if problem:
            problems.append(f"{_entry_name(entry)}: {problem}")
    for key in sorted(store.list(HISTORY_PREFIX)):
        if key not in listed:
            problems.append(f"{key} is archived but has no manifest entry (entry deleted?)")
    head = str(entries[-1][1].get("sha256")) if entries else GENESIS
    if expect_head and expect_head != head:
        problems.append(
            f"the manifest head is {head}, not the expected {expect_head}: entries were removed "
            "from or added to its end"
        )
    report = VerifyReport(len(entries), head, problems)
    if store.supports_object_lock:
        report.locks, report.notes = _locks(store, [str(e.get("history_key")) for _, e in entries])
    return report


def _locks(store: Any, keys: list[str]) -> tuple[str, list[str]]:
    """A line on how the histories are locked, and a note per kind of weaker lock.

    Notes, not problems: a history archived before archives were locked, or one
    whose retention has run out, is still intact — the digests say so."""
    from dealflow.storage.documents import DocumentNotFound

    now = datetime.now(UTC)
    weaker: dict[str, list[str]] = {}
    earliest: datetime | None = None
    for key in keys:
        try:
            lock = store.object_lock(key)
        except (DocumentNotFound, ValueError):
            continue  # a problem already
        if lock is None or lock[1] <= now:
            weaker.setdefault("not under a retention lock (archived before locking?)", []).append(
                key
            )
        elif lock[0] != "COMPLIANCE":
            weaker.setdefault(f"locked in {lock[0]} mode only", []).append(key)
        else:
            earliest = lock[1] if earliest is None else min(earliest, lock[1])
    locked = len(keys) - sum(len(found) for found in weaker.values())
    line = f"{locked} of {_histories(len(keys))} locked in COMPLIANCE mode" + (
        f", the first lock ending {earliest.isoformat()}" if earliest else ""
    )
    notes = [
        f"{_histories(len(found))} {why}: "
        + ", ".join(found[:5])
        + (" …" if len(found) > 5 else "")
        for why, found in weaker.items()
    ]
    return line, notes


def _histories(count: int) -> str:
    return f"{count} history" if count == 1 else f"{count} histories"


def _history_problem(store: Any, entry: dict[str, Any]) -> str | None:
    """What is wrong with the archived history a manifest entry records, if anything."""
    from dealflow.storage.documents import DocumentNotFound

    key = str(entry.get("history_key"))
    try:
        body = store.read_bytes(key)
    except (DocumentNotFound, ValueError):
        return f"history {key} is missing"
    digest = hashlib.sha256(body).hexdigest()
    if digest != entry.get("history_sha256"):
        return (
            f"history {key} altered (sha256 {digest[:16]}…, recorded "
            f"{str(entry.get('history_sha256'))[:16]}…)"
        )
    try:
        runs = parse_histories(body.decode(), key)
    except AuditError as error:
        return str(error)
    count = sum(len(run.events) for run in runs)
    if count != entry.get("event_count") or [run.run_id for run in runs] != entry.get("run_ids"):
        return f"history {key} does not match the recorded run ids and event count"
    return None
