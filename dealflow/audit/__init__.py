"""`dealflow-audit`: export, replay, read and verify deal histories (docs/architecture.md §3.6).

    dealflow-audit export DEAL_ID [-o FILE] [--split] [--decode]
    dealflow-audit replay PATH... | --query VISIBILITY_QUERY
    dealflow-audit timeline DEAL_ID|FILE [--format text|markdown|json|html] [--as-of TIMESTAMP]
    dealflow-audit archive [--lock-file PATH]
    dealflow-audit verify [--expect-head SHA256]

(also `python -m dealflow.audit ...`). Connection, codec keys and document
store come from the usual `DEALFLOW_*` settings.

History files. One workflow run is exactly what `temporal workflow show
--output json` prints: `{"events": [...]}` (protobuf JSON), payloads as they
are on the server, i.e. encrypted. A deal that continued-as-new has several
runs; its export is a JSON *array* of those objects, first run first (`--split`
writes one file per run instead, `NAME_run1.json`, ...). Every command that
reads files accepts both shapes, and folders of them (`*.json`, recursively).

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

import argparse
import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributeKey
from temporalio.service import RPCError

from dealflow import codec, startup
from dealflow.audit.as_of import state_as_of
from dealflow.audit.errors import AuditError
from dealflow.audit.histories import (
    WORKFLOW_TYPE,
    RunHistory,
    deal_id_of,
    export_json,
    fetch_deal,
    load_paths,
    parse_histories,
    query_runs,
)
from dealflow.audit.payloads import decode_events, key_ids
from dealflow.audit.render import render
from dealflow.audit.replay import replay
from dealflow.audit.timeline import build_timeline
from dealflow.config import get_settings

__all__ = [
    "ArchiveBusy",
    "RunHistory",
    "archive",
    "build_timeline",
    "cli",
    "export_json",
    "fetch_deal",
    "load_paths",
    "main",
    "replay",
    "run_async",
    "state_as_of",
    "verify",
]

ARCHIVE_PREFIX = "archive"
MANIFEST_KEY = f"{ARCHIVE_PREFIX}/manifest.jsonl"
HISTORY_PREFIX = f"{ARCHIVE_PREFIX}/deals/"
GENESIS = "0" * 64
MANIFEST_BATCH = 50
_DEAL_STAGE = SearchAttributeKey.for_keyword("DealStage")
EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2


class ArchiveBusy(AuditError):
    pass


# --------------------------------------------------------------------------- archive


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


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dealflow-audit",
        description="Export, replay, read and verify DealFlow deal histories. Connection, "
        "codec keys and document store come from the DEALFLOW_* settings.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="a deal's history as JSON (temporal workflow show format)")
    ex.add_argument("deal", metavar="DEAL_ID")
    ex.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    ex.add_argument(
        "--split",
        action="store_true",
        help="one file per run: FILE_run1.json, FILE_run2.json, ... (needs -o)",
    )
    ex.add_argument(
        "--decode",
        action="store_true",
        help="decrypt payloads (as `temporal workflow show --codec-endpoint`)",
    )
    rp = sub.add_parser("replay", help="replay histories against the current workflow code")
    rp.add_argument("paths", nargs="*", metavar="PATH", help="history files or folders")
    rp.add_argument(
        "--query",
        metavar="VISIBILITY_QUERY",
        help="live deals, e.g. 'ExecutionStatus=\"Running\"' (WorkflowType is added)",
    )
    tl = sub.add_parser("timeline", help="a readable, decoded timeline of a deal")
    tl.add_argument("deal", metavar="DEAL_ID|FILE")
    tl.add_argument("--format", choices=("text", "markdown", "json", "html"), default="text")
    tl.add_argument(
        "--as-of",
        metavar="TIMESTAMP",
        help="ISO 8601 (UTC if no offset): entries up to then and the deal's state then",
    )
    tl.add_argument("-o", "--output", metavar="FILE")
    ar = sub.add_parser("archive", help="archive closed deals to the document store (cron-safe)")
    ar.add_argument(
        "--lock-file",
        type=Path,
        default=None,
        help="default: $DEALFLOW_DATA_DIR/audit-archive.lock",
    )
    vf = sub.add_parser("verify", help="verify the archive's hash chain and history digests")
    vf.add_argument(
        "--expect-head",
        metavar="SHA256",
        help="the manifest head recorded earlier (detects a truncated manifest)",
    )
    return p


def _parse_time(s: str) -> datetime:
    try:
        t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise AuditError(f"--as-of {s!r} is not an ISO 8601 timestamp") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _write(text: str, path: str | None, out: IO[str]) -> None:
    if path:
        Path(path).write_text(text, encoding="utf-8")
    else:
        out.write(text)


@dataclass
class _CommandContext:
    settings: Any
    keyring: codec.Keyring
    client: Client | None
    store: Any
    out: IO[str]
    err: IO[str]

    async def connect(self) -> Client:
        if self.client is None:
            from dealflow.client import connect

            self.client = await startup.connect_patiently(self.settings, connect)
        return self.client

    def open_store(self) -> Any:
        if self.store is None:
            from dealflow.docstore import open_store

            s = self.settings
            self.store = open_store(
                s.document_store,
                endpoint_url=s.s3_endpoint_url,
                signing_secret=s.jwt_secret,
                api_base_url=s.api_url,
            )
        return self.store


async def _export(args: argparse.Namespace, ctx: _CommandContext) -> int:
    runs = await fetch_deal(await ctx.connect(), args.deal)
    if args.decode:
        runs = [
            dataclasses.replace(r, events=decode_events(r.events, ctx.keyring)[0]) for r in runs
        ]
    if args.split:
        if not args.output:
            raise AuditError("--split needs -o FILE (the runs go to FILE_run1.json, ...)")
        stem = Path(args.output)
        for r in runs:
            path = stem.with_name(f"{stem.stem}_run{r.run_no}.json")
            path.write_text(export_json([r]), encoding="utf-8")
            print(f"wrote {path}: {len(r.events)} events", file=ctx.err)
        return EXIT_OK
    _write(export_json(runs), args.output, ctx.out)
    if args.output:
        print(
            f"wrote {args.output}: {len(runs)} run(s), {sum(len(r.events) for r in runs)} events",
            file=ctx.err,
        )
    return EXIT_OK


async def _replay(args: argparse.Namespace, ctx: _CommandContext) -> int:
    if bool(args.paths) == bool(args.query):
        raise AuditError("give history files/folders, or --query, not both (nor neither)")
    runs = (
        await query_runs(await ctx.connect(), args.query)
        if args.query
        else load_paths(args.paths, ctx.keyring)
    )
    outcomes = await replay(runs, ctx.keyring)
    for o in outcomes:
        where = f"  [{o.run.source}]" if o.run.source else ""
        if o.ok:
            print(f"ok    {o.run.label()}{where}", file=ctx.out)
        elif o.nondeterminism:
            at = f" at {o.event}" if o.event else ""
            print(f"FAIL  {o.run.label()}: nondeterminism{at}: {o.error}{where}", file=ctx.out)
        else:
            print(f"ERROR {o.run.label()}: {o.error}{where}", file=ctx.out)
    bad = sum(1 for o in outcomes if o.nondeterminism)
    errors = sum(1 for o in outcomes if not o.ok and not o.nondeterminism)
    print(
        f"replayed {len(outcomes)} histories: {len(outcomes) - bad - errors} ok, "
        f"{bad} nondeterministic, {errors} errors",
        file=ctx.out,
    )
    return EXIT_FAILED if bad else EXIT_ERROR if errors else EXIT_OK


async def _timeline(args: argparse.Namespace, ctx: _CommandContext) -> int:
    path = Path(args.deal)
    if path.suffix == ".json" or await asyncio.to_thread(path.exists):
        runs = await asyncio.to_thread(load_paths, [path], ctx.keyring)
    else:
        runs = await fetch_deal(await ctx.connect(), args.deal)
    tl = build_timeline(runs, ctx.keyring)
    if args.as_of:
        at = _parse_time(args.as_of)
        tl.as_of = at
        tl.entries = [e for e in tl.entries if e.at <= at]
        tl.state = await state_as_of(runs, ctx.keyring, at)
    _write(render(tl, args.format), args.output, ctx.out)
    for w in tl.decode_errors:
        print(f"warning: {w}", file=ctx.err)
    return EXIT_OK


async def _archive(args: argparse.Namespace, ctx: _CommandContext) -> int:
    try:
        rep = await archive(
            await ctx.connect(), ctx.open_store(), lock_path=args.lock_file, out=ctx.out
        )
    except ArchiveBusy as e:
        print(f"dealflow-audit archive: {e}", file=ctx.err)
        return EXIT_OK
    print(
        f"archived {len(rep.archived)} deal(s); manifest {MANIFEST_KEY}: {rep.entries} "
        f"entries, head {rep.head}",
        file=ctx.out,
    )
    return EXIT_OK


async def _verify(args: argparse.Namespace, ctx: _CommandContext) -> int:
    rep = await asyncio.to_thread(verify, ctx.open_store(), args.expect_head)
    for p in rep.problems:
        print(f"PROBLEM {p}", file=ctx.out)
    if rep.ok:
        print(
            f"ok: {rep.entries} entries, every history digest and the chain verified; head "
            f"{rep.head}",
            file=ctx.out,
        )
        return EXIT_OK
    print(f"verify FAILED: {len(rep.problems)} problem(s) in {rep.entries} entries", file=ctx.out)
    return EXIT_FAILED


_COMMANDS = {
    "export": _export,
    "replay": _replay,
    "timeline": _timeline,
    "archive": _archive,
    "verify": _verify,
}


async def run_async(
    argv: Sequence[str],
    *,
    settings: Any = None,
    client: Client | None = None,
    store: Any = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    """The CLI on the caller's event loop (tests pass their client and store)."""
    args = _parser().parse_args(list(argv))
    try:
        if settings is None:
            settings = startup.settings_from_env()
        keyring = codec.load_keyring(settings.codec_keys or "")
    except (startup.StartupError, codec.CodecKeyError) as e:
        message = str(e) if isinstance(e, startup.StartupError) else f"configuration error: {e}"
        print(f"dealflow-audit {args.command}: {message}", file=err or sys.stderr)
        return EXIT_ERROR
    ctx = _CommandContext(settings, keyring, client, store, out or sys.stdout, err or sys.stderr)
    try:
        return await _COMMANDS[args.command](args, ctx)
    except (AuditError, codec.CodecError) as e:
        print(f"dealflow-audit {args.command}: {e}", file=ctx.err)
        return EXIT_ERROR
    except RPCError as e:
        print(f"dealflow-audit {args.command}: Temporal: {e}", file=ctx.err)
        return EXIT_ERROR
    except startup.StartupError as e:
        print(f"dealflow-audit {args.command}: {e}", file=ctx.err)
        return EXIT_ERROR


def cli(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run_async(sys.argv[1:] if argv is None else argv))


def main() -> None:
    """Console entry point. Leaves without interpreter finalisation: the Temporal
    client's native threads can abort it (temporalio/sdk-python#300) and turn a
    result into exit 134."""
    try:
        code = cli()
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
