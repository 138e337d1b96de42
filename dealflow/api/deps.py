"""What the API's handlers need, built once per process and kept on app.state."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.engine import Engine
from temporalio.client import Client

from dealflow.config import LenderConfig, Settings
from dealflow.docstore import DocumentStore


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        # Labels carry ids and outcomes only, never personal data.
        self.webhooks = Counter(
            "dealflow_webhooks_total", "Lender webhooks accepted", ["lender_id", "outcome"],
            registry=self.registry,
        )
        self.actions = Counter(
            "dealflow_actions_total", "Staff actions", ["action", "outcome"],
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
