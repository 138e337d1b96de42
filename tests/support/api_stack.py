"""The back-office API as staff meet it, for the API tests: the real app served
over HTTP on the test loop, the lender simulator beside it, a worker on a fresh
task queue, and role tokens minted with the API's secret.

The tests talk to the API over HTTP only; the Temporal client here belongs to
the app and the worker, as it would in production."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx
from sqlalchemy.engine import Engine
from temporalio.client import Client

from dealflow import rules
from dealflow.api.app import create_app
from dealflow.api.deps import Services
from dealflow.api.security import mint_token
from dealflow.config import LenderConfig, Settings, load_lenders
from dealflow.models import DealPolicy, DocumentKind, Role
from dealflow.samples import (
    dealer_today,
    example_action,
    example_deal,
    funding_document,
    sample_documents,
)
from dealflow.storage import db
from dealflow.storage.documents import DocumentStore, LocalDirectoryStore
from sim.lender.app import create_app as create_sim
from sim.lender.config import SimConfig
from tests.support.servers import free_port, serve_async
from tests.support.stack import ROOT, deal_worker

SECRET = "api-test-secret-" + "0123456789abcdef" * 4
FILE_LINK_SECRET = "api-test-file-links-" + "0123456789abcdef" * 4
MiB = 1024 * 1024
S3_CREDS = {
    "region_name": "us-east-1",
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
}


@dataclass
class HttpApi:
    """An API as staff reach it over HTTP, with tokens minted with its secret,
    and the lender simulator beside it; the clients it hands out are closed by
    whoever made it."""

    api_url: str
    sim_url: str
    secret: str = SECRET
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    # False: a connection per request (behind a balancer, each request may go
    # to another replica, and no idle connection waits on a dead one).
    keep_alive: bool = True

    def token(self, role: Role | str, sub: str | None = None, **kw: Any) -> str:
        role = Role(role)
        return mint_token(self.secret, sub or f"{role.value}-01", [role], **kw)

    def headers(self, role: Role | str | None = None, token: str | None = None) -> dict[str, str]:
        if token is None and role is None:
            return {}
        return {"Authorization": f"Bearer {token or self.token(role or Role.ADMIN)}"}

    def http(self, role: Role | str | None = None, token: str | None = None) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            base_url=self.api_url,
            timeout=30,
            trust_env=False,
            headers=self.headers(role, token),
            limits=httpx.Limits(
                max_connections=100, max_keepalive_connections=20 if self.keep_alive else 0
            ),
        )
        self.clients.append(client)
        return client

    async def script(self, deal_id: str, script: dict[str, Any]) -> None:
        async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
            r = await http.put(f"{self.sim_url}/_sim/scripts/{deal_id}", json=script)
            assert r.status_code < 300, r.text

    async def close_clients(self) -> None:
        for c in self.clients:
            await c.aclose()


@dataclass(kw_only=True)
class ApiStack(HttpApi):
    """An `HttpApi` served in the test process, with the services behind it."""

    services: Services
    store: DocumentStore
    engine: Engine
    lenders: dict[str, LenderConfig]
    task_queue: str


@asynccontextmanager
async def api_stack(
    client: Client,
    database_url: str,
    tmp: Path,
    *,
    policy: DealPolicy | None = None,
    policy_file: Path | None = None,
    store: DocumentStore | None = None,
    secret: str = SECRET,
    settings_changes: dict[str, Any] | None = None,
) -> AsyncIterator[ApiStack]:
    """API + lender simulator + worker. `policy_file` goes through the API's own
    loading (DEALFLOW_POLICY_FILE); `policy` is handed over directly;
    `settings_changes` are more `Settings` fields (validated as from the environment)."""
    api_port, sim_port = free_port(), free_port()
    api_url, sim_base = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{sim_port}"
    lenders = {
        lid: cfg.model_copy(update={"api_base_url": f"{sim_base}/lenders/{lid}"})
        for lid, cfg in load_lenders(ROOT / "examples" / "lenders.toml").items()
    }
    task_queue = f"api-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        task_queue=task_queue,
        jwt_secret=secret,
        file_link_secret=FILE_LINK_SECRET,
        api_base_url=api_url,
        policy_file=policy_file,
        database_url=database_url,
        **(settings_changes or {}),
    )
    if store is None:
        store = LocalDirectoryStore(
            tmp / f"documents-{api_port}",
            signing_secret=FILE_LINK_SECRET,
            api_base_url=api_url,
            max_link_seconds=int(settings.file_link_max_hours * 3600),
        )
    engine = db.make_engine(database_url)
    services = Services(
        settings=settings,
        client=client,
        engine=engine,
        lenders=lenders,
        store=store,
        policy=policy,
    )
    sim_config = SimConfig(
        lenders=lenders,
        db_path=tmp / f"lender_sim_{sim_port}.db",
        webhook_base_url=api_url,
        decision_delay=0.05,
        retry_initial=0.2,
        retry_max=1.0,
    )
    stack = ApiStack(
        api_url,
        sim_base,
        secret,
        services=services,
        store=store,
        engine=engine,
        lenders=lenders,
        task_queue=task_queue,
    )
    async with (
        serve_async(create_app(services), api_port),
        serve_async(create_sim(sim_config), sim_port),
        deal_worker(client, database_url, lenders, store, task_queue=task_queue),
    ):
        try:
            yield stack
        finally:
            await stack.close_clients()


# --------------------------------------------------------------------------- moto


@contextmanager
def moto_server() -> Iterator[str]:
    """A real moto S3 server over HTTP, in a subprocess (as tests/storage/test_docstore.py)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from moto.server import main; main()",
            "-H",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                httpx.get(url + "/moto-api/", timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- a desk over HTTP


def deal_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = example_deal().model_dump(mode="json")
    body.update(changes)
    return body


def action_body(action: str, today: date | None = None, **changes: Any) -> dict[str, Any]:
    return {**example_action(action, today or dealer_today()), **changes}


def multipart_fields(doc: dict[str, Any]) -> dict[str, str]:
    """The form fields of a sample document (samples.sample_documents)."""
    fields = {"kind": doc["kind"].value, "party": doc["party"].value}
    for name in ("id_number", "stipulation_code"):
        if doc.get(name):
            fields[name] = str(doc[name])
    for name in ("period_start", "period_end"):
        if doc.get(name):
            fields[name] = doc[name].isoformat()
    return fields


class StaffApi(Protocol):
    """What a desk needs of an API: clients carrying role tokens (an `ApiStack`, or
    the API of a process started from the compose file)."""

    def token(self, role: Role | str, sub: str | None = None, **kw: Any) -> str: ...

    def http(
        self, role: Role | str | None = None, token: str | None = None
    ) -> httpx.AsyncClient: ...


class HttpDesk:
    """Staff at their desks: each call uses the token of the role that owns the step."""

    def __init__(self, stack: StaffApi) -> None:
        self.stack = stack
        self.deal_id = ""
        self.deal = example_deal()
        self.today = dealer_today()

    # How often a wait looks at the deal again.
    poll_seconds = 0.05

    def as_(self, role: Role | str) -> httpx.AsyncClient:
        return self.stack.http(role)

    async def start(self, dealer_id: str | None = None, **changes: Any) -> str:
        body = deal_body(**changes)
        if dealer_id:
            body["dealer_id"] = dealer_id
        r = await self.as_(Role.SALES).post("/api/deals", json=body)
        assert r.status_code == 201, r.text
        self.deal_id = r.json()["deal_id"]
        return self.deal_id

    async def status(self) -> dict[str, Any]:
        r = await self.as_(Role.AUDITOR).get(f"/api/deals/{self.deal_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def do(self, action: str, role: Role | str, **changes: Any) -> httpx.Response:
        return await self.as_(role).post(
            f"/api/deals/{self.deal_id}/actions/{action}",
            json=action_body(action, self.today, **changes),
        )

    async def ok(self, action: str, role: Role | str, **changes: Any) -> dict[str, Any]:
        r = await self.do(action, role, **changes)
        assert r.status_code == 200, f"{action}: {r.status_code} {r.text}"
        return dict(r.json()["status"])

    async def upload(
        self,
        fields: dict[str, str],
        data: bytes,
        file_name: str = "scan.pdf",
        role: Role | str = Role.SALES,
    ) -> httpx.Response:
        return await self.as_(role).post(
            f"/api/deals/{self.deal_id}/documents",
            data=fields,
            files={"file": (file_name, data, "application/octet-stream")},
        )

    async def upload_all(self) -> list[dict[str, Any]]:
        out = []
        for doc in sample_documents(self.deal_id, self.deal, self.today):
            r = await self.upload(multipart_fields(doc), doc["data"], doc["file_name"])
            assert r.status_code == 201, r.text
            out.append(dict(r.json()))
        return out

    async def upload_funding(
        self, kind: DocumentKind, version: int = 1, role: Role | None = None
    ) -> httpx.Response:
        """A document of the funding package, by its own team unless `role` says."""
        doc = funding_document(self.deal_id, kind, version)
        return await self.upload(
            multipart_fields(doc),
            doc["data"],
            doc["file_name"],
            role=role or rules.document_uploader(kind),
        )

    async def wait_stage(self, stage: str, within: float = 20) -> dict[str, Any]:
        return await self.wait_until(lambda s: s["stage"] == stage, f"stage {stage}", within)

    async def wait_until(self, pred: Any, what: str, within: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            st = await self.status()
            if pred(st):
                return st
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"deal {self.deal_id}: timed out waiting for {what}: {json.dumps(st)[:2000]}"
                )
            await asyncio.sleep(self.poll_seconds)

    async def to_down_payment(self) -> dict[str, Any]:
        """Contract, documents, application; the simulator approves by webhook."""
        await self.ok("sign-sales-contract", Role.SALES)
        await self.upload_all()
        await self.ok("submit-application", Role.CREDIT)
        return await self.wait_stage("DOWN_PAYMENT")

    async def to_registration(self, lender_legal_name: str) -> dict[str, Any]:
        """On from the approval to a funded loan: the simulator disburses by webhook."""
        await self.to_down_payment()
        return await self.fund(lender_legal_name)

    async def fund(self, lender_legal_name: str) -> dict[str, Any]:
        """From DOWN_PAYMENT to a funded loan: the simulator disburses by webhook."""
        await self.ok("confirm-down-payment", Role.FINANCE)
        await self.ok("record-invoice", Role.FINANCE)
        await self.ok("record-insurance", Role.INSURANCE, first_beneficiary=lender_legal_name)
        await self.ok("record-repayment-account", Role.CREDIT)
        await self.ok("confirm-loan-terms", Role.CREDIT)
        await self.ok("sign-loan-contract", Role.CREDIT)
        for kind in rules.FUNDING_KINDS:
            r = await self.upload_funding(kind)
            assert r.status_code == 201, r.text
        return await self.wait_stage("REGISTRATION")


def policy_file(tmp: Path, **fields: Any) -> Path:
    path = tmp / f"policy-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(fields, default=_seconds), encoding="utf-8")
    return path


def _seconds(v: Any) -> Any:
    if isinstance(v, timedelta):
        return v.total_seconds()
    raise TypeError(type(v))
