"""The operator CLI (`starter.py`): `starter.main([...])` in-process, configured
only through `DEALFLOW_*` variables that point at the real dev server, a real
worker, the test database and document store. Exit codes are the contract:
0 done, 2 invalid input, 3 not allowed in the stage, 4 unknown deal, 5 role
not permitted."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

import starter
from dealflow import client as deals
from dealflow.config import ROOT, get_settings
from dealflow.models import Actor, Role
from dealflow.samples import sample_pdf
from dealflow.storage import db
from dealflow.storage.documents import LocalDirectoryStore
from tests.support.stack import Stack, deal_worker

EXAMPLES = ROOT / "examples"
DEAL_JSON = EXAMPLES / "deal.json"
PDF = sample_pdf("residence permit")


@dataclass
class Result:
    code: int
    out: str
    err: str  # whitespace-normalised: rich wraps long lines

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Cli:
    stack: Stack
    tmp: Path
    task_queue: str
    started: list[str] = field(default_factory=list)

    async def __call__(self, *argv: str) -> Result:
        """`starter.main(argv)` in a thread (it runs its own asyncio loop)."""
        out, err = io.StringIO(), io.StringIO()

        def run() -> int:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                return starter.main(list(argv))

        code = await asyncio.to_thread(run)
        return Result(code, out.getvalue(), " ".join(err.getvalue().split()))

    async def start(self, *extra: str) -> str:
        r = await self("--as", "sales-07:sales", "--json", "start", str(DEAL_JSON), *extra)
        assert r.code == 0, r
        deal_id = str(r.json()["deal_id"])
        self.started.append(deal_id)
        return deal_id

    def file(self, name: str, data: bytes | str) -> str:
        path = self.tmp / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return str(path)


@pytest.fixture(scope="module")
async def cli(
    dev_stack: Stack,
    database_url: str,
    store: LocalDirectoryStore,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Cli]:
    tmp = tmp_path_factory.mktemp("cli")
    lenders_file = tmp / "lenders.toml"
    lenders_file.write_text(
        (EXAMPLES / "lenders.toml").read_text().replace("http://127.0.0.1:8100", dev_stack.sim_url)
    )
    async with deal_worker(
        dev_stack.env.client, database_url, dev_stack.lenders, dev_stack.store
    ) as tq:
        with pytest.MonkeyPatch.context() as mp:
            for name in list(os.environ):  # nothing of the developer's shell leaks in
                if name.startswith("DEALFLOW_"):
                    mp.delenv(name)
            mp.setenv(
                "DEALFLOW_TEMPORAL_ADDRESS", dev_stack.env.client.service_client.config.target_host
            )
            mp.setenv("DEALFLOW_TASK_QUEUE", tq)
            mp.setenv("DEALFLOW_LENDERS_FILE", str(lenders_file))
            mp.setenv("DEALFLOW_DATABASE_URL", database_url)
            mp.setenv("DEALFLOW_DOCUMENT_STORE", f"file://{store.root}")
            get_settings.cache_clear()
            c = Cli(dev_stack, tmp, tq)
            try:
                yield c
            finally:
                get_settings.cache_clear()
                for deal_id in c.started:
                    handle = dev_stack.env.client.get_workflow_handle(deals.workflow_id(deal_id))
                    with contextlib.suppress(RPCError):
                        if (await handle.describe()).status is WorkflowExecutionStatus.RUNNING:
                            await handle.terminate("test finished")
        get_settings.cache_clear()


async def eventually(check: Callable[[], Awaitable[Any]], what: str, within: float = 10) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- start


async def test_start_prints_the_deal_id(cli: Cli) -> None:
    r = await cli("--as", "sales-07:sales", "start", str(DEAL_JSON))
    assert r.code == 0, r
    assert r.out.startswith("started deal ")
    deal_id = r.out.split()[2]
    cli.started.append(deal_id)
    assert f"workflow deal-{deal_id}" in r.out

    deal_id = await cli.start()
    st = await deals.deal_status(cli.stack.env.client, deal_id)
    assert (st.stage.value, st.workflow_id) == ("CONTRACT", f"deal-{deal_id}")

    # The status command reads it back; --deal-id names it.
    r = await cli("--json", "status", deal_id)
    assert r.code == 0, r
    assert (r.json()["deal_id"], r.json()["stage"]) == (deal_id, "CONTRACT")
    named = await cli.start("--deal-id", "20260101-cafe0001")
    assert named == "20260101-cafe0001"


async def test_start_with_a_file_that_is_not_json_is_2(cli: Cli) -> None:
    path = cli.file("broken.json", '{"dealer_id": "dealer-sh-001",')
    r = await cli("start", path)
    assert r.code == 2, r
    assert "broken.json is not valid JSON" in r.err
    assert r.out == ""

    # Names and messages are printed as plain text, never as rich markup.
    odd = cli.tmp / "[bold]deal["  # + "/" + "b].json": a stray closing tag "[/b]"
    odd.mkdir()
    (odd / "b].json").write_text("{")
    r = await cli("start", str(odd / "b].json"))
    assert r.code == 2, r
    assert "[bold]deal[/b].json is not valid JSON" in r.err

    r = await cli("start", str(cli.tmp / "no-such-deal.json"))
    assert r.code == 2, r
    assert "cannot read" in r.err and "No such file" in r.err


async def test_start_with_an_invalid_deal_is_2_naming_the_field(cli: Cli) -> None:
    deal = json.loads(DEAL_JSON.read_text())
    number = deal["customer"]["applicant"]["id_number"]
    deal["customer"]["applicant"]["id_number"] = number[:-1] + str((int(number[-1]) + 1) % 10)
    r = await cli("--as", "sales-07:sales", "start", cli.file("bad-id.json", json.dumps(deal)))
    assert r.code == 2, r
    assert "applicant ID number is not valid" in r.err
    assert "check" in r.err.lower()  # the check digit is what is wrong

    deal = json.loads(DEAL_JSON.read_text())
    deal["term_months"] = "three years"
    r = await cli("--as", "sales-07:sales", "start", cli.file("bad-term.json", json.dumps(deal)))
    assert r.code == 2, r
    assert "term_months" in r.err


async def test_start_by_a_role_that_may_not_start_deals_is_5(cli: Cli) -> None:
    r = await cli("--as", "dl-01:delivery", "start", str(DEAL_JSON))
    assert r.code == 5, r
    assert "role 'delivery' may not start a deal" in r.err


# --------------------------------------------------------------------------- status, act


async def test_status_of_an_unknown_deal_is_4(cli: Cli) -> None:
    r = await cli("status", "20990101-00000000")
    assert r.code == 4, r
    assert "deal 20990101-00000000 does not exist" in r.err

    action = str(EXAMPLES / "actions" / "sign-sales-contract.json")
    r = await cli("act", "20990101-00000000", "sign-sales-contract", action)
    assert r.code == 4, r
    assert "does not exist" in r.err


async def test_status_wait_shows_the_next_stage_once_it_comes(cli: Cli) -> None:
    deal_id = await cli.start()
    r = await cli("--json", "status", deal_id, "--wait", "0.5")
    assert r.code == 0, r
    assert r.json()["stage"] == "CONTRACT" and "no stage change within 0.5 s" in r.err
    waiting = asyncio.create_task(cli("--json", "status", deal_id, "--wait", "30"))
    await asyncio.sleep(1.0)
    assert not waiting.done()
    # Signed by the client library, not a second CLI run: `Cli` redirects the
    # process's stdout, which the waiting run is still writing to.
    body = json.loads((EXAMPLES / "actions" / "sign-sales-contract.json").read_text())
    action, inp = deals.parse_action(
        "sign-sales-contract", body, Actor(staff_id="sales-07", role=Role.SALES)
    )
    await deals.act(cli.stack.env.client, deal_id, action, inp)
    r = await asyncio.wait_for(waiting, 10)
    assert r.code == 0, r
    assert r.json()["stage"] == "DOCUMENTS" and "no stage change" not in r.err
    for bad in ("soon", "-1"):
        with pytest.raises(SystemExit) as exit, contextlib.redirect_stderr(io.StringIO()):
            starter.parser().parse_args(["status", deal_id, "--wait", bad])
        assert exit.value.code == 2


async def test_act_in_the_wrong_stage_is_3_and_changes_nothing(cli: Cli) -> None:
    deal_id = await cli.start()
    before = await deals.deal_status(cli.stack.env.client, deal_id)
    payload = str(EXAMPLES / "actions" / "confirm-down-payment.json")
    r = await cli("--as", "fin-01:finance", "act", deal_id, "confirm-down-payment", payload)
    assert r.code == 3, r
    assert "rejected:" in r.err and "CONTRACT" in r.err
    after = await deals.deal_status(cli.stack.env.client, deal_id)
    assert (after.stage, after.version) == (before.stage, before.version)


async def test_an_unwind_step_outside_an_unwind_is_3(cli: Cli) -> None:
    deal_id = await cli.start()
    payload = str(EXAMPLES / "actions" / "record-unwind-step.json")
    r = await cli("--as", "fin-01:finance", "act", deal_id, "record-unwind-step", payload)
    assert r.code == 3, r
    assert "record-unwind-step is not allowed in stage CONTRACT (only in UNWINDING)" in r.err


async def test_act_with_a_role_not_permitted_is_5(cli: Cli) -> None:
    deal_id = await cli.start()
    payload = str(EXAMPLES / "actions" / "sign-sales-contract.json")
    r = await cli("--as", "x:delivery", "act", deal_id, "sign-sales-contract", payload)
    assert r.code == 5, r
    assert "role 'delivery' may not sign-sales-contract" in r.err
    st = await deals.deal_status(cli.stack.env.client, deal_id)
    assert st.stage.value == "CONTRACT"

    # The permitted role does it, and the actor recorded is the one named by --as.
    r = await cli(
        "--as", "sales-07:sales", "--json", "act", deal_id, "sign-sales-contract", payload
    )
    assert r.code == 0, r
    result = r.json()
    assert result["status"]["stage"] == "DOCUMENTS"
    assert result["status"]["transitions"][-1]["actor"].startswith("sales-07")


async def test_act_input_errors_are_2(cli: Cli) -> None:
    deal_id = await cli.start()
    r = await cli("act", deal_id, "sign-the-moon")
    assert r.code == 2, r
    assert "unknown action 'sign-the-moon'" in r.err
    r = await cli("act", deal_id, "sign-sales-contract", cli.file("list.json", "[1, 2]"))
    assert r.code == 2, r
    assert "must be a JSON object" in r.err
    r = await cli("--as", "x:janitor", "status", deal_id)
    assert r.code == 2, r
    assert "--as must be STAFF_ID:ROLE" in r.err and "janitor" in r.err


# --------------------------------------------------------------------------- upload


async def test_upload_records_a_pdf(cli: Cli) -> None:
    deal_id = await cli.start()
    payload = str(EXAMPLES / "actions" / "sign-sales-contract.json")
    assert (await cli("--as", "s:sales", "act", deal_id, "sign-sales-contract", payload)).code == 0

    path = cli.file("residence.pdf", PDF)
    r = await cli("--as", "sales-07:sales", "upload", deal_id, "proof_of_residence", path)
    assert r.code == 0, r
    assert "recorded applicant proof_of_residence from residence.pdf" in " ".join(r.out.split())
    st = await deals.deal_status(cli.stack.env.client, deal_id)
    [item] = [
        c
        for c in st.checklist
        if (c.kind.value, c.party.value) == ("proof_of_residence", "applicant")
    ]
    assert item.satisfied, item

    # The metadata row (written by the deal's activity) and the bytes in the store.
    engine = db.make_engine(get_settings().database_url)

    async def rows() -> list[db.DocumentRow]:
        return await asyncio.to_thread(db.list_documents, engine, deal_id)

    [row] = await eventually(rows, "the document metadata row")
    assert (row.kind, row.party, row.file_name, row.content_type, row.size) == (
        "proof_of_residence",
        "applicant",
        "residence.pdf",
        "application/pdf",
        len(PDF),
    )
    assert row.sha256 == hashlib.sha256(PDF).hexdigest()
    assert row.uploaded_by.startswith("sales-07")
    assert cli.stack.store.read_bytes(row.storage_key) == PDF


async def test_upload_of_a_text_file_is_2(cli: Cli) -> None:
    deal_id = await cli.start()
    payload = str(EXAMPLES / "actions" / "sign-sales-contract.json")
    assert (await cli("--as", "s:sales", "act", deal_id, "sign-sales-contract", payload)).code == 0
    before = await deals.deal_status(cli.stack.env.client, deal_id)

    path = cli.file("residence.txt", "I really do live here.\n")
    r = await cli("--as", "s:sales", "upload", deal_id, "proof_of_residence", path)
    assert r.code == 2, r
    assert "residence.txt is not a PDF, JPEG or PNG" in r.err
    # The first bytes of a PDF are not a PDF: the file is parsed.
    polyglot = cli.file("residence.pdf", b"%PDF-1.4\n<html><body>hello</body></html>\n")
    r = await cli("--as", "s:sales", "upload", deal_id, "proof_of_residence", polyglot)
    assert r.code == 2, r
    assert "residence.pdf is not a readable PDF" in r.err
    after = await deals.deal_status(cli.stack.env.client, deal_id)
    assert after.version == before.version

    r = await cli("upload", deal_id, "proof_of_residence", str(cli.tmp / "missing.pdf"))
    assert r.code == 2, r
    assert "is not a file" in r.err


# --------------------------------------------------------------------------- list


async def test_list_json_shows_the_deal(cli: Cli) -> None:
    deal_id = await cli.start()

    async def listed() -> dict[str, Any] | None:
        r = await cli("--json", "list", "--dealer", "dealer-sh-001", "--limit", "200")
        assert r.code == 0, r
        return next((d for d in r.json()["deals"] if d["deal_id"] == deal_id), None)

    row = await eventually(listed, f"deal {deal_id} in the read model")
    assert row["stage"] == "CONTRACT"
    assert row["workflow_id"] == f"deal-{deal_id}"
    assert row["dealer_id"] == "dealer-sh-001"
    assert row["amount_financed"] == "105000.00"

    r = await cli("--json", "list", "--stage", "CONTRACT", "--limit", "0")
    assert r.code == 2, r
    assert "limit must be at least 1" in r.err
