"""The simulator's configuration: lenders, ledger file, webhook target, timings."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from dealflow.config import DATA_DIR, LenderConfig, Settings, load_lenders

DEFAULT_APR = Decimal("6.50")
DB_ENV = "DEALFLOW_LENDER_SIM_DB"

Apr = Annotated[Decimal, Field(ge=0, le=100, max_digits=6, decimal_places=2, allow_inf_nan=False)]


class SimConfig(BaseModel):
    """Everything one simulator process needs. Times are seconds."""

    model_config = ConfigDict(extra="forbid")

    lenders: dict[str, LenderConfig]
    db_path: Path
    # Where the DealFlow API listens; webhooks go to
    # {webhook_base_url}/webhooks/lenders/{lender_id}.
    webhook_base_url: str
    # Delay between accepting a request and its webhook (decision or
    # disbursement result); a deal's script may override it.
    decision_delay: Annotated[float, Field(ge=0)] = 0.2
    default_apr: Apr = DEFAULT_APR
    # Per-lender APR (percent per year), overriding default_apr.
    apr: dict[str, Apr] = Field(default_factory=dict)
    # Lenders that pay out only against a funding package (a deal's script
    # may say otherwise); the others take a request without one as before.
    funding_package_required: list[str] = Field(default_factory=list)
    # Outbound webhook retries: exponential backoff until a 2xx.
    retry_initial: Annotated[float, Field(gt=0)] = 0.5
    retry_factor: Annotated[float, Field(ge=1)] = 2.0
    retry_max: Annotated[float, Field(gt=0)] = 30.0
    max_attempts: Annotated[int, Field(ge=1)] = 20
    delivery_timeout: Annotated[float, Field(gt=0)] = 10.0
    delivery_concurrency: Annotated[int, Field(ge=1)] = 16

    def apr_for(self, lender_id: str) -> Decimal:
        return self.apr.get(lender_id, self.default_apr)

    def backoff(self, attempts: int) -> float:
        """Delay before the next try after `attempts` failed tries (>= 1)."""
        return float(min(self.retry_initial * self.retry_factor ** (attempts - 1), self.retry_max))

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        db_path: Path | None = None,
        lenders_file: Path | None = None,
        **overrides: Any,
    ) -> SimConfig:
        """Defaults from the `DEALFLOW_*` settings; `DEALFLOW_LENDER_SIM_DB` names the db."""
        settings = settings or Settings()
        if db_path is None:
            env_db = os.environ.get(DB_ENV)
            db_path = Path(env_db) if env_db else DATA_DIR / "lender_sim.db"
        lenders = load_lenders(lenders_file or settings.lenders_file)
        values: dict[str, Any] = {
            "lenders": lenders,
            "db_path": db_path,
            "webhook_base_url": settings.api_url,
        }
        values.update(overrides)
        return cls.model_validate(values)
