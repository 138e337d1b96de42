"""What `starter.py` does to deals, over either of two transports.

`TemporalDeals` talks to Temporal and the read model directly (operators, on
the stack's machine); `HttpDeals` goes through the back-office HTTP API with a
bearer token. Both answer with the same models, so every command has one
implementation and one way of showing its result, whichever way it went.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError
from temporalio.client import Client

from dealflow import client as deals
from dealflow import deal_wait, rules, stuck
from dealflow.api import remote
from dealflow.config import LendersFileError, Settings, load_lenders
from dealflow.deal_wait import Change
from dealflow.models import (
    ActionResult,
    Actor,
    DealCreated,
    DealPage,
    DealPolicy,
    DealStatus,
    DocumentKind,
    DocumentUploaded,
    Party,
)
from dealflow.storage import db
from dealflow.storage.documents import store_from_settings
from dealflow.uploads import upload_document


class ServiceError(Exception):
    """A request the transport cannot take as given; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DealQuery:
    stage: str | None = None
    lender: str | None = None
    dealer: str | None = None
    overdue: bool = False
    limit: int = 50
    cursor: str | None = None


@dataclass(frozen=True)
class DocumentForm:
    kind: str
    party: str
    id_number: str | None = None
    period_start: date | None = None
    period_end: date | None = None
    stipulation_code: str | None = None


class DealService(Protocol):
    async def start(
        self, body: Any, *, deal_id: str | None, idempotency_key: str | None
    ) -> DealCreated: ...

    async def status(self, deal_id: str) -> DealStatus: ...

    async def next_stage(self, deal_id: str, wait: float) -> tuple[DealStatus, bool]:
        """The deal's status once its stage changes (True), or after `wait` seconds."""
        ...

    async def list(self, query: DealQuery) -> DealPage: ...

    async def act(self, deal_id: str, action: str, payload: dict[str, Any]) -> ActionResult: ...

    async def upload(self, deal_id: str, path: Path, form: DocumentForm) -> DocumentUploaded: ...

    async def aclose(self) -> None: ...


class TemporalDeals:
    """Straight to Temporal (actions, status) and the read model (lists)."""

    def __init__(self, settings: Settings, actor: Actor, policy: DealPolicy) -> None:
        self.settings = settings
        self.actor = actor
        self.policy = policy
        self._client: Client | None = None

    async def client(self) -> Client:
        if self._client is None:
            self._client = await deals.connect(self.settings)
        return self._client

    async def start(
        self, body: Any, *, deal_id: str | None, idempotency_key: str | None
    ) -> DealCreated:
        if idempotency_key:
            raise ServiceError("--idempotency-key applies with --api only", 2)
        deal = deals.parse_deal(body)
        try:
            lenders = load_lenders(self.settings.lenders_file)
        except LendersFileError as e:
            raise ServiceError(str(e), 2) from None
        deal_id = deal_id or deals.new_deal_id()
        inp = deals.start_input(deal_id, deal, self.policy, lenders, self.actor)
        wf_id = await deals.start_deal(await self.client(), self.settings.task_queue, inp)
        return DealCreated(deal_id=deal_id, workflow_id=wf_id)

    async def status(self, deal_id: str) -> DealStatus:
        engine = db.make_engine(self.settings.database_url)
        try:
            status = await stuck.readable_status(await self.client(), engine, deal_id)
        except stuck.DealUnreadable as e:
            raise ServiceError(f"{e} ({e.__cause__})") from None
        # What the API would show this person: the two ways agree.
        return rules.status_for_roles(status, [self.actor.role])

    async def next_stage(self, deal_id: str, wait: float) -> tuple[DealStatus, bool]:
        engine = db.make_engine(self.settings.database_url)
        client = await self.client()
        now = await self.status(deal_id)

        async def read() -> DealStatus:
            status = await stuck.readable_status(client, engine, deal_id)
            return rules.status_for_roles(status, [self.actor.role])

        awaited = await deal_wait.next_status(
            deal_wait.ReadModelWatch(engine),
            deal_id,
            Change(stage=now.stage),
            wait,
            read,
            known=now,
        )
        assert awaited is not None  # only a wait told when its client left ends without one
        return awaited.status, awaited.changed

    async def list(self, query: DealQuery) -> DealPage:
        engine = db.make_engine(self.settings.database_url)
        now = datetime.now(UTC)
        try:
            rows, cursor = await asyncio.to_thread(
                db.list_deals,
                engine,
                stage=query.stage,
                lender_id=query.lender,
                dealer_id=query.dealer,
                limit=query.limit,
                cursor=query.cursor,
                overdue_at=now if query.overdue else None,
            )
        except ValueError as e:
            raise ServiceError(str(e), 2) from None
        return DealPage(deals=[db.deal_summary(r, now) for r in rows], next_cursor=cursor)

    async def act(self, deal_id: str, action: str, payload: dict[str, Any]) -> ActionResult:
        act, inp = deals.parse_action(action, payload, self.actor)
        result = await deals.act(await self.client(), deal_id, act, inp)
        return result.model_copy(
            update={"status": rules.status_for_roles(result.status, [self.actor.role])}
        )

    async def upload(self, deal_id: str, path: Path, form: DocumentForm) -> DocumentUploaded:
        store = store_from_settings(self.settings)

        def chunks() -> Any:
            with path.open("rb") as f:
                while block := f.read(1 << 20):
                    yield block

        result = await upload_document(
            await self.client(),
            store,
            deal_id,
            self.actor,
            kind=form.kind,
            party=form.party,
            file_name=path.name,
            data=chunks(),
            policy=self.policy,
            id_number=form.id_number,
            period_start=form.period_start,
            period_end=form.period_end,
            stipulation_code=form.stipulation_code,
        )
        recorded = [
            d
            for d in result.status.documents
            if d.kind.value == form.kind and d.party.value == form.party
        ]
        if not recorded:
            raise ServiceError(f"the deal holds no {form.party} {form.kind} after the upload")
        doc = recorded[-1]
        return DocumentUploaded(
            doc_id=doc.doc_id,
            deal_id=deal_id,
            kind=DocumentKind(form.kind),
            party=Party(form.party),
            file_name=doc.file_name,
            content_type=doc.content_type,
            size=doc.size,
            sha256=doc.sha256,
            status=result.status,
        )

    async def aclose(self) -> None:
        self._client = None


class HttpDeals:
    """Through the back-office HTTP API: the token says who acts."""

    def __init__(self, api: remote.DealFlowAPI) -> None:
        self.api = api

    async def start(
        self, body: Any, *, deal_id: str | None, idempotency_key: str | None
    ) -> DealCreated:
        if deal_id:
            raise ServiceError("--deal-id does not apply with --api: the API names the deal", 2)
        raw = await asyncio.to_thread(self.api.start, body, idempotency_key)
        return _parsed(DealCreated, raw)

    async def status(self, deal_id: str) -> DealStatus:
        return _parsed(DealStatus, await asyncio.to_thread(self.api.status, deal_id))

    async def next_stage(self, deal_id: str, wait: float) -> tuple[DealStatus, bool]:
        now = await self.status(deal_id)
        deadline = time.monotonic() + wait
        while True:
            # One request waits at most the API's limit: ask again until `wait` is over.
            left = max(0.0, deadline - time.monotonic())
            raw, changed = await asyncio.to_thread(
                self.api.next_status,
                deal_id,
                after_stage=now.stage.value,
                wait=min(left, deal_wait.MAX_WAIT_SECONDS),
            )
            status = _parsed(DealStatus, raw)
            if changed or left <= deal_wait.MAX_WAIT_SECONDS:
                return status, changed

    async def list(self, query: DealQuery) -> DealPage:
        raw = await asyncio.to_thread(
            self.api.list,
            stage=query.stage,
            lender=query.lender,
            dealer=query.dealer,
            overdue=query.overdue,
            limit=query.limit,
            cursor=query.cursor,
        )
        return _parsed(DealPage, raw)

    async def act(self, deal_id: str, action: str, payload: dict[str, Any]) -> ActionResult:
        return _parsed(
            ActionResult, await asyncio.to_thread(self.api.act, deal_id, action, payload)
        )

    async def upload(self, deal_id: str, path: Path, form: DocumentForm) -> DocumentUploaded:
        fields = {
            "kind": form.kind,
            "party": form.party,
            "id_number": form.id_number or "",
            "period_start": form.period_start.isoformat() if form.period_start else "",
            "period_end": form.period_end.isoformat() if form.period_end else "",
            "stipulation_code": form.stipulation_code or "",
        }
        raw = await asyncio.to_thread(self.api.upload, deal_id, path, fields)
        return _parsed(DocumentUploaded, raw)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.api.close)


Model = TypeVar("Model", bound=BaseModel)


def _parsed(model: type[Model], raw: Any) -> Model:
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ServiceError(f"the API answered something unexpected: {e}") from None
