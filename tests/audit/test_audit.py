"""`dealflow-audit`: export, replay, timeline, archive and verify.

Live deals run on the dev server with the real API receiver and lender
simulator: one declined by the first lender, counter-offered by the second,
accepted and then cancelled; one that continues-as-new several times; one
cancelled at once. The committed histories (tests/histories) serve the
file-based checks.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from dealflow import names
from dealflow.audit.archive import (
    GENESIS,
    _check_chain,
    _lock,
    _parse_manifest,
    _read_manifest,
    archive,
    entry_hash,
)
from dealflow.audit.cli import run_async
from dealflow.audit.errors import AuditError
from dealflow.audit.histories import deal_runs_query, load_paths
from dealflow.audit.render import render
from dealflow.audit.replay import replay
from dealflow.audit.timeline import Entry, Timeline, build_timeline
from dealflow.config import Settings
from dealflow.models import DealPolicy, Stage
from dealflow.progress import progress_board
from dealflow.storage.documents import LocalDirectoryStore
from tests.support.back_office import Desk
from tests.support.stack import BIN, ROOT, TEST_CODEC_KEYS, Stack, deal_worker

# The activities that send an application, each deal using the one of its patches.
SENDS = (names.SIGN_AND_SEND_APPLICATION, names.SEND_APPLICATION, names.SUBMIT_APPLICATION)

HISTORIES = ROOT / "tests" / "histories"
TIMELINE_CASE = HISTORIES / "declined_counter_offer_cancelled.json"
SCRIPT = {
    "lenders": {
        "acme-auto-finance": [
            {"decision": "declined", "reasons": [{"code": "THIN_FILE", "text": "thin credit file"}]}
        ],
        "beta-motor-credit": [{"decision": "counter_offer", "approved_amount": "95000.00"}],
    }
}


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


async def run(*argv: str, client: Any = None, store: Any = None) -> Done:
    """dealflow-audit in process, on this loop (the dev server's client is ours)."""
    out, err = io.StringIO(), io.StringIO()
    code = await run_async(
        list(argv), settings=Settings(), client=client, store=store, out=out, err=err
    )
    return Done(code, out.getvalue(), err.getvalue())


async def sh(*argv: str) -> Done:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return Done(proc.returncode or 0, out.decode(), err.decode())


async def temporal(address: str, *args: str) -> Done:
    return await sh(
        str(BIN / "temporal"),
        *args,
        "--address",
        address,
        "--disable-config-file",
        "--disable-config-env",
        "--command-timeout",
        "20s",
    )


@dataclass
class Deals:
    stack: Stack
    address: str
    story: str  # declined, counter-offered, accepted, cancelled
    continued: str  # several runs
    quick: str  # cancelled at once


@pytest.fixture(scope="module")
async def deals(
    dev_stack: Stack, database_url: str, store: LocalDirectoryStore
) -> AsyncIterator[Deals]:
    async with deal_worker(dev_stack.env.client, database_url, dev_stack.lenders, store) as tq:
        story = Desk(dev_stack, tq)
        await story.start(script=SCRIPT)
        await story.through_documents()
        await story.do("submit-application")
        st = await story.wait_until(
            lambda s: any(p.action == "accept-counter-offer" for p in s.pending), "counter-offer"
        )
        sub = st.submissions[-1]
        assert sub.current is not None
        await story.do(
            "accept-counter-offer",
            application_ref=sub.application_ref,
            decision_seq=sub.current.decision_seq,
        )
        await story.do("confirm-down-payment", amount="55000.00")
        await story.do("cancel", reason="customer changed their mind")

        continued = Desk(dev_stack, tq)
        await continued.start(policy=DealPolicy(max_history_events=60))
        await continued.through_documents()
        await continued.wait_until(lambda s: s.stage is Stage.APPLICATION, "documents")
        await continued.do("cancel", reason="customer withdrew")

        quick = Desk(dev_stack, tq)
        await quick.start()
        await quick.do("cancel", reason="duplicate entry")
        for d in (story, continued, quick):
            final = await asyncio.wait_for(d.result(), timeout=30)
            assert final.stage is Stage.CANCELLED
        assert len(await continued.runs()) >= 2
        yield Deals(
            dev_stack,
            dev_stack.env.client.service_client.config.target_host,
            story.deal_id,
            continued.deal_id,
            quick.deal_id,
        )


# --------------------------------------------------------------------------- export


async def test_export_equals_temporal_workflow_show(deals: Deals, tmp_path: Path) -> None:
    client = deals.stack.env.client
    wid = f"deal-{deals.story}"
    shown = await temporal(deals.address, "workflow", "show", "-w", wid, "--output", "json")
    assert shown.returncode == 0, shown.stderr
    exported = await run("export", deals.story, client=client)
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout) == json.loads(shown.stdout)
    assert "Wang Fang" not in exported.stdout  # exported as stored: encrypted
    # Several runs: a JSON array, first run first; each element is what the CLI
    # shows for that run id. --split writes one file per run instead.
    out = tmp_path / "continued.json"
    r = await run("export", deals.continued, "-o", str(out), client=client)
    assert r.returncode == 0, r.stderr
    runs = json.loads(out.read_text())
    assert isinstance(runs, list) and len(runs) >= 2
    starts = [doc["events"][0]["workflowExecutionStartedEventAttributes"] for doc in runs]
    assert "continuedExecutionRunId" not in starts[0]
    for prev, cur in zip(starts, starts[1:], strict=False):
        assert cur["continuedExecutionRunId"] == prev["originalExecutionRunId"]
    for doc, start in zip(runs, starts, strict=True):
        cli = await temporal(
            deals.address,
            "workflow",
            "show",
            "-w",
            f"deal-{deals.continued}",
            "-r",
            start["originalExecutionRunId"],
            "--output",
            "json",
        )
        assert json.loads(cli.stdout) == doc
    r = await run(
        "export", deals.continued, "-o", str(tmp_path / "split.json"), "--split", client=client
    )
    assert r.returncode == 0
    split = sorted(tmp_path.glob("split_run*.json"))
    assert [json.loads(p.read_text()) for p in split] == runs
    missing = await run("export", "20000101-00000000", client=client)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


# --------------------------------------------------------------------------- replay


async def test_replay_files_folders_and_a_live_query(deals: Deals, tmp_path: Path) -> None:
    client = deals.stack.env.client
    folder = tmp_path / "exports"
    folder.mkdir()
    for deal in (deals.story, deals.continued, deals.quick):
        assert (
            await run("export", deal, "-o", str(folder / f"{deal}.json"), client=client)
        ).returncode == 0
    shutil.copy(HISTORIES / "happy_path.json", folder / "happy_path.json")
    r = await run("replay", str(folder), str(HISTORIES / "contract_expired.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    n_continued = len(json.loads((folder / f"{deals.continued}.json").read_text()))
    total = 3 + n_continued + 1
    assert len(lines) == total + 1
    assert all(line.startswith("ok    deal ") for line in lines[:-1])
    assert f"run {n_continued}/{n_continued}" in r.stdout
    assert lines[-1] == f"replayed {total} histories: {total} ok, 0 nondeterministic, 0 errors"
    # Live: a visibility query (WorkflowType is added); every run of each deal.
    live = await run("replay", "--query", f'WorkflowId = "deal-{deals.continued}"', client=client)
    assert live.returncode == 0, live.stdout + live.stderr
    assert live.stdout.count("ok    deal ") == n_continued
    assert (
        f"run 1/{n_continued}" in live.stdout and f"run {n_continued}/{n_continued}" in live.stdout
    )
    bad_args = await run("replay")
    assert bad_args.returncode == 2


@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        (') OR (WorkflowType = "Other"', "closes a parenthesis it did not open"),
        ('WorkflowId = "x") OR (WorkflowId = "y"', "closes a parenthesis it did not open"),
        ('(WorkflowId = "x"', "1 parenthesis(es) open"),
        ('WorkflowId = "x) OR (', "quote open"),
    ],
)
async def test_replay_query_cannot_escape_the_deal_type_filter(query: str, complaint: str) -> None:
    """Issue 14 item 18: the operator's query only narrows the deal runs; one
    that would close the filter's parenthesis is refused before any server is
    asked (exit 2, saying why)."""
    refused = await run("replay", "--query", query)
    assert refused.returncode == 2
    assert complaint in refused.stderr, refused.stderr


def test_replay_query_is_wrapped_after_the_deal_type_filter() -> None:
    assert deal_runs_query("") == 'WorkflowType = "DealWorkflow"'
    nested = 'ExecutionStatus = "Running" AND (WorkflowId = "a)" OR WorkflowId = \'b(\')'
    assert deal_runs_query(nested) == f'WorkflowType = "DealWorkflow" AND ({nested})'


async def test_nondeterminism_exits_1_naming_the_deal_and_the_event(tmp_path: Path) -> None:
    """A history the current code would not have written (here: an activity of
    another type at one point) fails, as a real incompatible change would."""
    doc = json.loads((HISTORIES / "declined_then_approved.json").read_text())
    scheduled = [
        e
        for e in doc["events"]
        if e["eventType"] == "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED"
        and e["activityTaskScheduledEventAttributes"]["activityType"]["name"] in SENDS
    ]
    target = scheduled[-1]
    target["activityTaskScheduledEventAttributes"]["activityType"]["name"] = "fax_application"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    deal_id = load_paths([bad], TEST_CODEC_KEYS)[0].deal_id
    # The console script's code path, in its own process: exit status and output.
    r = await sh(
        sys.executable,
        "-m",
        "dealflow.audit",
        "replay",
        str(bad),
        str(HISTORIES / "happy_path.json"),
    )
    assert r.returncode == 1, r.stdout + r.stderr
    fail = next(line for line in r.stdout.splitlines() if line.startswith("FAIL"))
    assert f"deal {deal_id}" in fail
    assert f"event {target['eventId']} ACTIVITY_TASK_SCHEDULED 'fax_application'" in fail
    assert "replayed 2 histories: 1 ok, 1 nondeterministic" in r.stdout
    # A history whose key we do not hold is an error, not nondeterminism.
    from dealflow import codec

    other = codec.keyring_from_spec(codec.generate_key_spec("someone-else"))
    runs = load_paths([HISTORIES / "contract_expired.json"], other)
    [outcome] = await replay(runs, other)
    assert not outcome.ok and not outcome.nondeterminism and "dev-insecure" in outcome.error


# --------------------------------------------------------------------------- timeline


def _entries(tl_json: str) -> list[dict[str, Any]]:
    return list(json.loads(tl_json)["entries"])


async def test_timeline_of_a_decline_a_counter_offer_and_a_cancellation() -> None:
    r = await run("timeline", str(TIMELINE_CASE), "--format", "json")
    assert r.returncode == 0, r.stderr
    entries = _entries(r.stdout)
    times = [e["at"] for e in entries]
    assert times == sorted(times)

    def one(**kw: Any) -> dict[str, Any]:
        found = [e for e in entries if all(k in e and kw[k] in e[k] for k in kw)]
        assert found, kw
        return found[0]

    started = one(kind="deal", action="deal started")
    assert started["actor"] == "sales-01 (sales)"
    decline = one(kind="lender", action="decision: declined")
    assert decline["actor"] == "lender acme-auto-finance"
    assert "webhook msg_" in decline["details"]
    assert "THIN_FILE: thin credit file" in decline["details"]
    rerouted = one(kind="stage", details="declined by acme-auto-finance")
    assert "routed to beta-motor-credit" in rerouted["details"]
    counter = one(kind="lender", action="decision: counter_offer")
    assert "amount 95,000.00" in counter["details"] and counter["stage"] == "UNDERWRITING"
    accept = one(kind="action", action="accept-counter-offer")
    assert accept["actor"] == "credit-01 (credit)"
    assert accept["data"]["result_stage"] == "DOWN_PAYMENT"
    one(kind="stage", action="UNDERWRITING → DOWN_PAYMENT", details="counter-offer")
    pay = one(kind="action", action="confirm-down-payment")
    assert pay["actor"] == "finance-01 (finance)" and "55,000.00" in pay["details"]
    cancel = one(kind="action", action="cancel")
    assert (
        cancel["actor"] == "sales-01 (sales)" and "customer changed their mind" in cancel["details"]
    )
    one(kind="stage", action="INVOICING → CANCELLED")
    comps = [e for e in entries if e["kind"] == "compensation"]
    # Newest first: the refund, the lender withdrawal, the vehicle release; each done.
    assert [c["action"] for c in comps] == [
        "refund_down_payment",
        "withdraw application",
        "release_vehicle",
    ]
    assert all(c["data"]["outcome"] == "done" for c in comps)
    assert "beta-motor-credit" in comps[1]["details"]
    assert entries[-1]["action"] == "deal closed: CANCELLED"
    assert (
        entries.index(decline)
        < entries.index(counter)
        < entries.index(accept)
        < entries.index(cancel)
        < entries.index(comps[0])
    )
    # Every other format renders the same facts.
    for fmt, marker in (
        ("text", "decision: counter_offer"),
        ("markdown", "| time |"),
        ("html", "<table>"),
    ):
        out = await run("timeline", str(TIMELINE_CASE), "--format", fmt)
        assert out.returncode == 0 and marker in out.stdout
        assert "refund_down_payment" in out.stdout


def test_html_timeline_escapes_every_value_it_shows() -> None:
    """Values come from histories (staff input, lender payloads): none becomes markup."""
    hostile = "<script>alert('x')</script> \"q\" & {{ 7*7 }} </td><tr class=x>"
    at = datetime(2026, 1, 1, tzinfo=UTC)
    timeline = Timeline(
        deal_id=hostile,
        workflow_id=hostile,
        runs=[{}],
        entries=[Entry(at, 1, 5, hostile, hostile, hostile, hostile, hostile)],
        decode_errors=[hostile],
        state={"as_of": hostile, "exists": False, "note": hostile},
    )
    page = render(timeline, "html")
    parsed = _HtmlShape()
    parsed.feed(page)
    assert parsed.tags == ["html", "head", "meta", "title", "style", "body", "h1", "p"] + [
        "table", "thead", "tr", *["th"] * 6, "tbody", "tr", *["td"] * 6, "pre"
    ]  # fmt: skip
    assert parsed.row_classes == [hostile]
    # Shown as text: the title, the heading, the warning, five cells (not the time), the state.
    assert sum(hostile in text for text in parsed.texts) == 9
    assert "49" not in page  # nor evaluated as a template


class _HtmlShape(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.row_classes: list[str | None] = []
        self.texts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "tr" and attrs:
            self.row_classes.append(dict(attrs).get("class"))

    def handle_data(self, data: str) -> None:
        self.texts.append(data)


async def test_timeline_shows_timers_reminders_and_a_live_deal(deals: Deals) -> None:
    expired = _entries(
        (await run("timeline", str(HISTORIES / "contract_expired.json"), "--format", "json")).stdout
    )
    timer = next(e for e in expired if e["kind"] == "timer")
    assert timer["action"] == "timer fired" and "for 7d" in timer["details"]
    happy = _entries(
        (await run("timeline", str(HISTORIES / "happy_path.json"), "--format", "json")).stdout
    )
    assert [e["details"] for e in happy if e["kind"] == "reminder"] == [
        "the day3 follow-up call is due (to sales)",
        "the day30 follow-up call is due (to sales)",
    ]
    assert any(e["kind"] == "lender" and e["action"] == "disbursement completed" for e in happy)
    # The terms the customer confirmed before the loan contract was signed.
    (confirmed,) = [e for e in happy if e["action"] == "confirm-loan-terms"]
    assert confirmed["details"] == (
        "amount: 105,000.00; apr: 6.50; term_months: 36; method: equal_instalments; "
        "total_repayable: 115,853.20"
    )
    # The same story, live from the server and across runs.
    live = _entries(
        (
            await run("timeline", deals.story, "--format", "json", client=deals.stack.env.client)
        ).stdout
    )
    assert [e["action"] for e in live if e["kind"] == "lender" and "decision" in e["action"]] == [
        "decision: declined",
        "decision: counter_offer",
    ]
    cont = json.loads(
        (
            await run(
                "timeline", deals.continued, "--format", "json", client=deals.stack.env.client
            )
        ).stdout
    )
    assert len(cont["runs"]) >= 2
    assert sum(e["action"] == "continued as new" for e in cont["entries"]) == len(cont["runs"]) - 1
    docs = [e for e in cont["entries"] if e["action"] == "record-document"]
    assert len(docs) == 8  # all of them, whichever run recorded each
    assert {e["run"] for e in cont["entries"]} == set(range(1, len(cont["runs"]) + 1))


async def test_state_as_of_a_time() -> None:
    entries = _entries((await run("timeline", str(TIMELINE_CASE), "--format", "json")).stdout)
    accept = next(e for e in entries if e["action"] == "accept-counter-offer")
    from datetime import datetime

    before = (datetime.fromisoformat(accept["at"]) - timedelta(milliseconds=1)).isoformat()
    r = await run("timeline", str(TIMELINE_CASE), "--as-of", before, "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert all(e["at"] <= before for e in doc["entries"])
    assert not any(e["action"] == "accept-counter-offer" for e in doc["entries"])
    state = doc["state"]
    assert state["stage"] == "UNDERWRITING"
    assert all(c["satisfied"] for c in state["checklist"]) and len(state["checklist"]) == 8
    subs = state["submissions"]
    assert [(s["lender"], s["decisions"][0]["decision"]) for s in subs] == [
        ("acme-auto-finance", "declined"),
        ("beta-motor-credit", "counter_offer"),
    ]
    assert subs[1]["decisions"][0]["approved_amount"] == "95000.00"
    assert [p["action"] for p in state["pending"]] == ["accept-counter-offer"] or any(
        "counter-offer" in p["what"] for p in state["pending"]
    )
    after = await run("timeline", str(TIMELINE_CASE), "--as-of", "2100-01-01T00:00:00Z")
    assert "stage: CANCELLED" in after.stdout
    assert "refund_down_payment done" in after.stdout
    too_early = await run(
        "timeline", str(TIMELINE_CASE), "--as-of", "2000-01-01", "--format", "json"
    )
    assert json.loads(too_early.stdout)["state"]["exists"] is False
    assert (await run("timeline", str(TIMELINE_CASE), "--as-of", "yesterday")).returncode == 2


# --------------------------------------------------------------------------- archive, verify


def _store(root: Path) -> LocalDirectoryStore:
    return LocalDirectoryStore(root, signing_secret="s", api_base_url="http://127.0.0.1:1")


@pytest.fixture(scope="module")
async def archived(deals: Deals, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("archive") / "documents"
    store = _store(root)
    client = deals.stack.env.client
    lock = root.parent / "archive.lock"
    # Closed deals reach visibility a moment after they close.
    for _ in range(50):
        await archive(client, store, lock_path=lock)
        entries, _ = _parse_manifest(_read_manifest(store))
        if {deals.story, deals.continued, deals.quick} <= {e["deal_id"] for _, e in entries}:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("the test deals were never archived")
    return root


async def test_archive_is_idempotent_and_cron_safe(deals: Deals, archived: Path) -> None:
    store = _store(archived)
    client = deals.stack.env.client
    lock = archived.parent / "archive.lock"
    before = (archived / "archive" / "manifest.jsonl").read_bytes()
    entries = [json.loads(line) for line in before.splitlines()]
    ours = {e["deal_id"]: e for e in entries}
    assert {deals.story, deals.continued, deals.quick} <= ours.keys()
    assert len(ours) == len(entries)  # one entry per deal
    cont = ours[deals.continued]
    assert len(cont["run_ids"]) >= 2 and cont["status"] == "COMPLETED"
    assert cont["stage"] == "CANCELLED" and cont["key_ids"] == ["dev-insecure"]
    body = (archived / cont["history_key"]).read_bytes()
    assert isinstance(json.loads(body), list)
    assert sum(len(d["events"]) for d in json.loads(body)) == cont["event_count"]
    # Again: nothing of ours twice, the existing entries byte for byte unchanged.
    again = await run("archive", "--lock-file", str(lock), client=client, store=store)
    assert again.returncode == 0, again.stderr
    assert "manifest archive/manifest.jsonl" in again.stdout
    after = (archived / "archive" / "manifest.jsonl").read_bytes()
    assert after.startswith(before)
    new = [json.loads(line) for line in after[len(before) :].splitlines()]
    assert not {e["deal_id"] for e in new} & ours.keys()
    # A second archiver while one runs (overlapping cron): does nothing, exit 0.
    with _lock(lock):
        busy = await run("archive", "--lock-file", str(lock), client=client, store=store)
    assert busy.returncode == 0 and "another archive run holds" in busy.stderr
    assert (archived / "archive" / "manifest.jsonl").read_bytes() == after
    ok = await run("verify", store=store)
    assert ok.returncode == 0, ok.stdout
    head = after.splitlines()[-1]
    assert json.loads(head)["sha256"] in ok.stdout
    wrong = await run("verify", "--expect-head", "0" * 64, store=store)
    assert wrong.returncode == 1 and "not the expected" in wrong.stdout


async def test_archive_counts_the_closed_deals_on_a_progress_bar(
    deals: Deals, archived: Path, tmp_path: Path
) -> None:
    # `archived` has waited until the test deals are visible as closed.
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=120)
    with progress_board(terminal) as board:
        report = await archive(
            deals.stack.env.client,
            _store(tmp_path / "documents"),
            lock_path=tmp_path / "archive.lock",
            board=board,
        )

    n = len(report.archived)
    assert n >= 3
    shown = screen.getvalue()
    assert "histories archived" in shown
    assert f"{n}/{n}" in shown
    assert "histories/s" in shown


def _tampered(archived: Path, tmp_path: Path) -> tuple[Path, list[bytes]]:
    copy = tmp_path / "documents"
    shutil.copytree(archived, copy)
    lines = (copy / "archive" / "manifest.jsonl").read_bytes().splitlines()
    assert len(lines) >= 3
    return copy, lines


async def test_verify_detects_a_flipped_byte(archived: Path, tmp_path: Path) -> None:
    copy, lines = _tampered(archived, tmp_path)
    entry = json.loads(lines[1])
    path = copy / entry["history_key"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    r = await run("verify", store=_store(copy))
    assert r.returncode == 1
    assert (
        f"entry seq 2 (deal {entry['deal_id']}): history {entry['history_key']} altered" in r.stdout
    )
    # A byte flipped in the manifest itself is caught as well.
    copy2, lines2 = _tampered(archived, tmp_path / "m")
    changed = lines2[0].replace(b'"event_count":', b'"event_count":1')
    (copy2 / "archive" / "manifest.jsonl").write_bytes(b"\n".join([changed, *lines2[1:]]) + b"\n")
    r2 = await run("verify", store=_store(copy2))
    assert r2.returncode == 1 and "line 1: entry seq 1" in r2.stdout and "altered" in r2.stdout


async def test_verify_detects_a_deleted_entry(archived: Path, tmp_path: Path) -> None:
    copy, lines = _tampered(archived, tmp_path)
    gone = json.loads(lines[1])
    (copy / "archive" / "manifest.jsonl").write_bytes(b"\n".join([lines[0], *lines[2:]]) + b"\n")
    r = await run("verify", store=_store(copy))
    assert r.returncode == 1
    assert "missing entries (deleted): seq 2" in r.stdout
    assert f"{gone['history_key']} is archived but has no manifest entry" in r.stdout
    assert "does not chain to the entry before it" in r.stdout


async def test_verify_detects_a_swapped_order(archived: Path, tmp_path: Path) -> None:
    copy, lines = _tampered(archived, tmp_path)
    swapped = [lines[1], lines[0], *lines[2:]]
    (copy / "archive" / "manifest.jsonl").write_bytes(b"\n".join(swapped) + b"\n")
    r = await run("verify", store=_store(copy))
    assert r.returncode == 1
    assert "line 1: entry seq 2" in r.stdout and "entries reordered" in r.stdout
    assert "line 2: entry seq 1" in r.stdout
    # The archive refuses to extend a damaged chain (before asking Temporal anything).
    with pytest.raises(AuditError, match="damaged"):
        await archive(None, _store(copy), lock_path=tmp_path / "l")  # type: ignore[arg-type]


def test_manifest_chain_function_on_a_clean_and_an_empty_manifest() -> None:
    assert _check_chain([]) == []
    e1: dict[str, Any] = {"seq": 1, "deal_id": "a", "prev_sha256": GENESIS}
    e1["sha256"] = entry_hash(e1)
    e2: dict[str, Any] = {"seq": 2, "deal_id": "b", "prev_sha256": e1["sha256"]}
    e2["sha256"] = entry_hash(e2)
    assert _check_chain([(1, e1), (2, e2)]) == []


@pytest.mark.parametrize(
    "path",
    sorted(HISTORIES.rglob("*.json")),
    ids=[str(p.relative_to(HISTORIES)) for p in sorted(HISTORIES.rglob("*.json"))],
)
def test_timeline_of_every_committed_history_names_what_each_event_is(path: Path) -> None:
    """No event shows as a generic row: every activity is named for what it
    did, and each lender submission says where it went and the reference the
    lender gave (a deal since the package split used to show "activity
    send_application" with the whole package)."""
    runs = load_paths([path], TEST_CODEC_KEYS)
    timeline = build_timeline(runs, TEST_CODEC_KEYS)
    generic = [e.action for e in timeline.entries if e.action.startswith("activity ")]
    assert generic == [], path.name
    history = json.loads(path.read_text("utf-8"))
    sends = [
        e
        for e in history["events"]
        if e["eventType"] == "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED"
        and e["activityTaskScheduledEventAttributes"]["activityType"]["name"] in SENDS
    ]
    submitted = [e for e in timeline.entries if e.action == "application submitted"]
    assert len(submitted) == len(sends), path.name
    for entry in submitted:
        assert entry.kind == "lender"
        assert re.search(r"^to [a-z0-9-]+ \(submission \d+, \d+ documents\)", entry.details), entry
        if entry.data.get("outcome") == "done":
            assert "; acknowledged as " in entry.details, entry
