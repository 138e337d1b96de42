"""`dealflow-audit`: export, replay, read and verify deal histories (docs/architecture.md §3.6).

    dealflow-audit export DEAL_ID [-o FILE] [--split] [--decode]
    dealflow-audit replay PATH... | --query VISIBILITY_QUERY
    dealflow-audit timeline DEAL_ID|FILE [--format text|markdown|json|html] [--as-of TIMESTAMP]
    dealflow-audit archive [--lock-file PATH]
    dealflow-audit verify [--expect-head SHA256]

(also `python -m dealflow.audit ...`). Connection, codec keys and document
store come from the usual `DEALFLOW_*` settings. The file formats are described
in `histories` (history files) and `archive` (the archive and its manifest).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from temporalio.client import Client
from temporalio.service import RPCError

from dealflow import codec, startup
from dealflow.audit.archive import MANIFEST_KEY, ArchiveBusy, archive, verify
from dealflow.audit.as_of import state_as_of
from dealflow.audit.errors import AuditError
from dealflow.audit.histories import (
    export_json,
    fetch_deal,
    load_paths,
    query_runs,
)
from dealflow.audit.payloads import decode_events
from dealflow.audit.render import render
from dealflow.audit.replay import replay
from dealflow.audit.timeline import build_timeline

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2


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
