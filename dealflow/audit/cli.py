"""`dealflow-audit`: export, replay, read and verify deal histories (docs/architecture.md §3.6).

    dealflow-audit export DEAL_ID [-o FILE] [--split] [--decode]
    dealflow-audit replay PATH... | --query VISIBILITY_QUERY
    dealflow-audit timeline DEAL_ID|FILE [--format text|markdown|json|html] [--as-of TIMESTAMP]
    dealflow-audit archive [--lock-file PATH]
    dealflow-audit verify [--expect-head SHA256]

(also `python -m dealflow.audit ...`). Connection, codec keys, document
store and archive retention come from the usual `DEALFLOW_*` settings. The
file formats are described in `histories` (history files) and `archive` (the
archive and its manifest).

Exit status: 0 ok (also: archive found another run holding its lock file), 1
verify or replay found a problem, 2 error, 3 archive lost a race to another
archiver and added nothing (run it again).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from temporalio.client import Client
from temporalio.service import RPCError

from dealflow import codec, startup
from dealflow.audit.archive import MANIFEST_KEY, ArchiveBusy, ArchiveRaceLost, archive, verify
from dealflow.audit.as_of import state_as_of
from dealflow.audit.errors import AuditError
from dealflow.audit.histories import (
    deal_runs_query,
    export_json,
    fetch_deal,
    load_paths,
    query_runs,
)
from dealflow.audit.payloads import decode_events
from dealflow.audit.render import FORMATS, render
from dealflow.audit.replay import replay
from dealflow.audit.timeline import build_timeline
from dealflow.progress import progress_board
from dealflow.storage.documents import DocumentStoreError

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_RACE_LOST = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dealflow-audit",
        description="Export, replay, read and verify DealFlow deal histories. Connection, "
        "codec keys and document store come from the DEALFLOW_* settings.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export_parser = commands.add_parser(
        "export", help="a deal's history as JSON (temporal workflow show format)"
    )
    export_parser.add_argument("deal", metavar="DEAL_ID")
    export_parser.add_argument(
        "-o", "--output", metavar="FILE", help="write here instead of stdout"
    )
    export_parser.add_argument(
        "--split",
        action="store_true",
        help="one file per run: FILE_run1.json, FILE_run2.json, ... (needs -o)",
    )
    export_parser.add_argument(
        "--decode",
        action="store_true",
        help="decrypt payloads (as `temporal workflow show --codec-endpoint`)",
    )
    replay_parser = commands.add_parser(
        "replay", help="replay histories against the current workflow code"
    )
    replay_parser.add_argument("paths", nargs="*", metavar="PATH", help="history files or folders")
    replay_parser.add_argument(
        "--query",
        metavar="VISIBILITY_QUERY",
        help="live deals, e.g. 'ExecutionStatus=\"Running\"' (WorkflowType is added)",
    )
    timeline_parser = commands.add_parser("timeline", help="a readable, decoded timeline of a deal")
    timeline_parser.add_argument("deal", metavar="DEAL_ID|FILE")
    timeline_parser.add_argument("--format", choices=FORMATS, default="text")
    timeline_parser.add_argument(
        "--as-of",
        metavar="TIMESTAMP",
        help="ISO 8601 (UTC if no offset): entries up to then and the deal's state then",
    )
    timeline_parser.add_argument("-o", "--output", metavar="FILE")
    archive_parser = commands.add_parser(
        "archive", help="archive closed deals to the document store (cron-safe)"
    )
    archive_parser.add_argument(
        "--lock-file",
        type=Path,
        default=None,
        help="default: $DEALFLOW_DATA_DIR/audit-archive.lock",
    )
    verify_parser = commands.add_parser(
        "verify", help="verify the archive's hash chain and history digests"
    )
    verify_parser.add_argument(
        "--expect-head",
        metavar="SHA256",
        help="the manifest head recorded earlier (detects a truncated manifest)",
    )
    return parser


def _parse_time(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AuditError(f"--as-of {text!r} is not an ISO 8601 timestamp") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


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
            from dealflow.storage.documents import store_from_settings

            self.store = store_from_settings(self.settings)
        return self.store


async def _export(args: argparse.Namespace, context: _CommandContext) -> int:
    runs = await fetch_deal(await context.connect(), args.deal)
    if args.decode:
        runs = [
            dataclasses.replace(run, events=decode_events(run.events, context.keyring)[0])
            for run in runs
        ]
    if args.split:
        if not args.output:
            raise AuditError("--split needs -o FILE (the runs go to FILE_run1.json, ...)")
        stem = Path(args.output)
        for run in runs:
            path = stem.with_name(f"{stem.stem}_run{run.run_no}.json")
            path.write_text(export_json([run]), encoding="utf-8")
            print(f"wrote {path}: {len(run.events)} events", file=context.err)
        return EXIT_OK
    _write(export_json(runs), args.output, context.out)
    if args.output:
        events = sum(len(run.events) for run in runs)
        print(f"wrote {args.output}: {len(runs)} run(s), {events} events", file=context.err)
    return EXIT_OK


async def _replay(args: argparse.Namespace, context: _CommandContext) -> int:
    if bool(args.paths) == bool(args.query):
        raise AuditError("give history files/folders, or --query, not both (nor neither)")
    if args.query:
        deal_runs_query(args.query)  # a bad query is refused before connecting
    runs = (
        await query_runs(await context.connect(), args.query)
        if args.query
        else load_paths(args.paths, context.keyring)
    )
    outcomes = await replay(runs, context.keyring)
    for outcome in outcomes:
        where = f"  [{outcome.run.source}]" if outcome.run.source else ""
        if outcome.ok:
            print(f"ok    {outcome.run.label()}{where}", file=context.out)
        elif outcome.nondeterminism:
            at = f" at {outcome.event}" if outcome.event else ""
            print(
                f"FAIL  {outcome.run.label()}: nondeterminism{at}: {outcome.error}{where}",
                file=context.out,
            )
        else:
            print(f"ERROR {outcome.run.label()}: {outcome.error}{where}", file=context.out)
    nondeterministic = sum(1 for outcome in outcomes if outcome.nondeterminism)
    errors = sum(1 for outcome in outcomes if not outcome.ok and not outcome.nondeterminism)
    print(
        f"replayed {len(outcomes)} histories: {len(outcomes) - nondeterministic - errors} ok, "
        f"{nondeterministic} nondeterministic, {errors} errors",
        file=context.out,
    )
    return EXIT_FAILED if nondeterministic else EXIT_ERROR if errors else EXIT_OK


async def _timeline(args: argparse.Namespace, context: _CommandContext) -> int:
    path = Path(args.deal)
    if path.suffix == ".json" or await asyncio.to_thread(path.exists):
        runs = await asyncio.to_thread(load_paths, [path], context.keyring)
    else:
        runs = await fetch_deal(await context.connect(), args.deal)
    timeline = build_timeline(runs, context.keyring)
    if args.as_of:
        at = _parse_time(args.as_of)
        timeline.as_of = at
        timeline.entries = [entry for entry in timeline.entries if entry.at <= at]
        timeline.state = await state_as_of(runs, context.keyring, at)
    _write(render(timeline, args.format), args.output, context.out)
    for warning in timeline.decode_errors:
        print(f"warning: {warning}", file=context.err)
    return EXIT_OK


async def _archive(args: argparse.Namespace, context: _CommandContext) -> int:
    try:
        # A bar on stderr when it is a terminal: cron's captured output stays as it was.
        with progress_board() as board:
            report = await archive(
                await context.connect(),
                context.open_store(),
                lock_path=args.lock_file,
                out=board.through(context.out),
                retention=timedelta(days=context.settings.archive_retention_days),
                board=board,
            )
    except ArchiveBusy as error:
        print(f"dealflow-audit archive: {error}", file=context.err)
        return EXIT_OK
    except ArchiveRaceLost as error:
        print(f"dealflow-audit archive: lost the race: {error}", file=context.err)
        return EXIT_RACE_LOST
    print(
        f"archived {len(report.archived)} deal(s); manifest {MANIFEST_KEY}: {report.entries} "
        f"entries, head {report.head}",
        file=context.out,
    )
    return EXIT_OK


async def _verify(args: argparse.Namespace, context: _CommandContext) -> int:
    report = await asyncio.to_thread(verify, context.open_store(), args.expect_head)
    for problem in report.problems:
        print(f"PROBLEM {problem}", file=context.out)
    for note in report.notes:
        print(f"NOTE {note}", file=context.out)
    if report.locks:
        print(f"locks: {report.locks}", file=context.out)
    if report.ok:
        print(
            f"ok: {report.entries} entries, every history digest and the chain verified; head "
            f"{report.head}",
            file=context.out,
        )
        return EXIT_OK
    print(
        f"verify FAILED: {len(report.problems)} problem(s) in {report.entries} entries",
        file=context.out,
    )
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
    except (startup.StartupError, codec.CodecKeyError) as error:
        message = (
            str(error)
            if isinstance(error, startup.StartupError)
            else f"configuration error: {error}"
        )
        print(f"dealflow-audit {args.command}: {message}", file=err or sys.stderr)
        return EXIT_ERROR
    context = _CommandContext(
        settings, keyring, client, store, out or sys.stdout, err or sys.stderr
    )
    try:
        return await _COMMANDS[args.command](args, context)
    except (AuditError, codec.CodecError) as error:
        print(f"dealflow-audit {args.command}: {error}", file=context.err)
        return EXIT_ERROR
    except RPCError as error:
        print(f"dealflow-audit {args.command}: Temporal: {error}", file=context.err)
        return EXIT_ERROR
    except DocumentStoreError as error:
        print(f"dealflow-audit {args.command}: document store: {error}", file=context.err)
        return EXIT_ERROR
    except startup.StartupError as error:
        print(f"dealflow-audit {args.command}: {error}", file=context.err)
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
