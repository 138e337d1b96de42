"""What the API's handlers need, built once per process and kept on app.state."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import ValidationError
from sqlalchemy.engine import Engine
from temporalio.client import Client

from dealflow.api.security import Authenticator
from dealflow.api.status_waits import StatusWaits
from dealflow.api.upload_gate import UploadGate
from dealflow.config import LenderConfig, Settings
from dealflow.deal_wait import ReadModelWatch
from dealflow.models import DealPolicy
from dealflow.storage import db
from dealflow.storage.documents import DocumentStore
from dealflow.storage.groupcommit import GroupCommit

InboxOp = db.WebhookIn | db.WebhookMark
InboxResult = tuple[db.InboxRow, db.StoreOutcome] | bool


class PolicyFileError(ValueError):
    pass


def load_policy(path: Path | str | None) -> DealPolicy:
    """The `DealPolicy` of a JSON file (DEALFLOW_POLICY_FILE), or the default one
    (the deadlines of docs/architecture.md §1) without a file. A precise error names the file."""
    if not path:
        return DealPolicy()
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise PolicyFileError(f"policy file {path}: {e.strerror or e}") from None
    try:
        return DealPolicy.model_validate(json.loads(raw))
    except json.JSONDecodeError as e:
        raise PolicyFileError(f"policy file {path} is not valid JSON: {e}") from None
    except ValidationError as e:
        from dealflow.client import format_validation_error

        raise PolicyFileError(f"policy file {path}: {format_validation_error(e)}") from None


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        # Labels carry route templates, ids of lenders and outcomes only, never
        # personal data (no deal ids, no staff ids).
        self.webhooks = Counter(
            "dealflow_webhooks_total",
            "Lender webhooks accepted",
            ["lender_id", "outcome"],
            registry=self.registry,
        )
        self.actions = Counter(
            "dealflow_actions_total",
            "Staff actions",
            ["action", "outcome"],
            registry=self.registry,
        )
        self.deals_started = Counter(
            "dealflow_deals_started_total",
            "Deals started through the API",
            ["outcome"],
            registry=self.registry,
        )
        self.documents = Counter(
            "dealflow_documents_total",
            "Document uploads and reads",
            ["op", "outcome"],
            registry=self.registry,
        )
        self.upload_bytes = Counter(
            "dealflow_document_upload_bytes_total",
            "Bytes of accepted uploads",
            registry=self.registry,
        )
        self.requests = Histogram(
            "dealflow_http_request_duration_seconds",
            "API requests by route template",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        # -1 until the first count: "unknown" must not read as "none stuck".
        self.deals_stuck = Gauge(
            "dealflow_deals_stuck",
            "Running deals whose workflow task keeps failing (TemporalReportedProblems); "
            "-1 while Temporal cannot be asked",
            registry=self.registry,
        )
        self.deals_stuck.set(-1)
        self.deals_healed = Counter(
            "dealflow_deals_healed_total",
            "Stuck deals reset unattended to their newest replayable workflow task",
            registry=self.registry,
        )


@dataclass
class Services:
    settings: Settings
    client: Client
    engine: Engine
    lenders: dict[str, LenderConfig]
    store: DocumentStore
    metrics: Metrics = field(default_factory=Metrics)
    # The policy copied into every deal the API starts; None: read
    # settings.policy_file (DEALFLOW_POLICY_FILE) — the one place that does.
    policy: DealPolicy | None = None
    auth: Authenticator | None = None
    # The webhook inbox's writes, group-committed (dealflow/storage/groupcommit.py).
    inbox: GroupCommit[InboxOp, InboxResult] = field(init=False)
    # Uploads' own thread pool, timing and per-person cap (dealflow/api/upload_gate.py).
    uploads: UploadGate = field(init=False)
    # Long-poll status reads: the read-model watch and the per-person cap
    # (dealflow/api/status_waits.py).
    status_waits: StatusWaits = field(init=False)
    # Each deal's routing list, as the read model holds it: fixed when the deal
    # starts, so kept once read (the webhook receiver asks for every event).
    deal_lenders: DealLenders = field(default_factory=lambda: DealLenders(10_000))

    def __post_init__(self) -> None:
        self.inbox = GroupCommit(lambda ops: db.write_inbox(self.engine, ops))
        self.uploads = UploadGate(self.settings)
        self.status_waits = StatusWaits(self.settings, ReadModelWatch(self.engine))
        if self.policy is None:
            self.policy = load_policy(self.settings.policy_file)
        if self.auth is None:
            self.auth = Authenticator.from_settings(self.settings)

    @property
    def deal_policy(self) -> DealPolicy:
        assert self.policy is not None
        return self.policy


class DealLenders:
    """A bounded memo of deal id -> the lenders the deal may be sent to; the
    oldest entry goes when it is full. Only known lists are kept."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lists: OrderedDict[str, tuple[str, ...]] = OrderedDict()

    def get(self, deal_id: str) -> tuple[str, ...] | None:
        return self._lists.get(deal_id)

    def put(self, deal_id: str, lenders: tuple[str, ...]) -> None:
        self._lists[deal_id] = lenders
        if len(self._lists) > self.capacity:
            self._lists.popitem(last=False)


def services(request: Request) -> Services:
    """The services of the app that serves `request`."""
    svc: Services = request.app.state.services
    return svc
