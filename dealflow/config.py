"""Process configuration: every DealFlow process reads the same `DEALFLOW_*` variables.

Kept out of the workflow sandbox on purpose: workflows get what they need
(policy, lender directory) copied into their input so history is self-describing.
"""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path.cwd() / ".data"

# A deal whose workflow task is on this attempt has failed it twice in a row
# (a worker killed mid-task accounts for one failure, not two): it is stuck.
# The Temporal server marks such workflows with `TemporalReportedProblems`
# after the number of failures set by this dynamic-config key; the dev stack
# sets it to the same number, production servers should too.
STUCK_ATTEMPTS = 3

# The development stack's staff-token secret: public, so the desk offers its
# pick-a-role sign-in only while this is the secret in use.
DEV_JWT_SECRET = "dev-secret-change-me-0123456789abcdef"
# The development stack's secret for the API's own file links (a local document
# store): public too. A secret of its own, so a deployment that verifies staff
# tokens by JWKS and never sets the JWT secret still signs links with a secret.
DEV_FILE_LINK_SECRET = "dev-file-links-change-me-0123456789abcdef"
STUCK_DYNAMIC_CONFIG = "system.numConsecutiveWorkflowTaskProblemsToTriggerSearchAttribute"


class LenderConfig(BaseModel):
    """One `[[lenders]]` table of the lenders file (docs/architecture.md §3.2)."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    legal_name: str = Field(min_length=2)
    api_base_url: str
    webhook_secret: str = Field(pattern=r"^whsec_[A-Za-z0-9+/=]+$")
    # Some lenders fund only once their mortgage (lien) on the vehicle is
    # registered: their deals go LOAN_CONTRACT -> REGISTRATION -> DISBURSEMENT
    # -> DELIVERY, and the disbursement request names the registration.
    mortgage_before_funding: bool = False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEALFLOW_", extra="ignore")

    # `production` (the image, compose): every process refuses to start on a
    # public development value (dealflow/production.py).
    env: Literal["development", "production"] = "development"
    temporal_address: str = "localhost:7233"
    # Where processes keep run files: the worker's ready file, the archive lock.
    data_dir: Path = DATA_DIR
    # Bearer token of `starter.py --api` (a CLI convenience, never a server secret).
    api_token: str | None = None
    # How long a starting process waits for Temporal before it gives up.
    temporal_connect_timeout: float = Field(default=60.0, ge=0)
    # The API resets, unattended, stuck deals that diverged right after an
    # interrupted workflow task (dealflow/stuck.py); others wait for an operator.
    auto_heal: bool = True
    temporal_ui_port: int = 8233
    namespace: str = "default"
    task_queue: str = "deals"
    database_url: str = f"sqlite:///{DATA_DIR / 'dealflow.db'}"
    document_store: str = f"file://{DATA_DIR / 'documents'}"
    s3_endpoint_url: str | None = None
    jwt_secret: str = DEV_JWT_SECRET
    # Signs the links to a local document store's files that the API serves.
    file_link_secret: str = DEV_FILE_LINK_SECRET
    # Production: the identity provider's JWKS; staff tokens are then verified
    # with its public keys (RS256/ES256/...) instead of the HS256 secret.
    jwks_url: str | None = None
    lenders_file: Path = ROOT / "examples" / "lenders.toml"
    codec_keys: str = ""
    # How long a desk sign-in lasts before staff sign in again.
    desk_session_hours: float = Field(default=8.0, gt=0, le=24)
    # Production desk sign-in through the organisation's OpenID Connect
    # provider (authorization code with PKCE): on when the issuer and the
    # client id are set. The issuer's /.well-known/openid-configuration says
    # the rest. The secret is for a confidential client; a public one has none.
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    # The ID token claim that lists the staff member's DealFlow roles; a dotted
    # path reaches into an object (Keycloak: "realm_access.roles").
    oidc_roles_claim: str = Field(default="roles", pattern=r"^[A-Za-z0-9_:/.-]{1,200}$")
    oidc_scopes: str = "openid profile email"
    # The name on the desk's "Sign in with ..." button; empty: the issuer's host.
    oidc_provider_name: str = ""
    # Loopback by default: the development stack is not for the network.
    # Containers set 0.0.0.0.
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_base_url: str = ""
    # Request bodies (dealflow/api/body_limits.py): one limit per route class,
    # applied while the body is read (413). Uploads are bounded by the policy's
    # max_document_bytes.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    max_webhook_body_bytes: int = Field(default=256 * 1024, ge=1024)  # webhooks.MAX_WEBHOOK_BYTES
    max_codec_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Uploads run on a thread pool of their own (dealflow/api/upload_gate.py),
    # so clients that send slowly cannot take the threads webhooks and reads
    # need; each one ends after this long without data, or this long in all
    # (408), and a person (the token's sub) has this many at once at most (429).
    upload_workers: int = Field(default=8, ge=1, le=64)
    upload_idle_seconds: float = Field(default=15.0, gt=0)
    upload_deadline_seconds: float = Field(default=120.0, gt=0)
    uploads_per_subject: int = Field(default=2, ge=1)
    lender_sim_port: int = 8100
    policy_file: Path | None = None
    # Worker tuning. The cache bounds worker memory (a cached deal's state and
    # sandbox; its cost is measured by `make bench`, parked deals, and given in
    # the README); evicted deals are rebuilt from history on their next event.
    max_cached_workflows: int = 500
    # The worker's Prometheus endpoint (dealflow/worker_metrics.py); port 0: none.
    # Loopback by default: metrics name stages and lenders, for the operator's
    # scraper, not for the network.
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(default=9464, ge=0, le=65535)
    max_concurrent_activities: int = 100
    max_concurrent_workflow_tasks: int = 100
    graceful_shutdown_seconds: float = 10.0
    # A dead worker's cached deals wait this long on its sticky queue before
    # any worker may take them. Shorter than the SDK's default so a crash is
    # recovered sooner; `make bench` measures the recovery (README).
    sticky_schedule_to_start_seconds: float = 1.0

    @field_validator("database_url")
    @classmethod
    def _normalise_postgres(cls, v: str) -> str:
        # psycopg 3 is the driver we ship; accept the common URL spellings.
        for prefix in ("postgresql://", "postgres://"):
            if v.startswith(prefix):
                return "postgresql+psycopg://" + v[len(prefix) :]
        return v

    @field_validator("oidc_issuer")
    @classmethod
    def _issuer_is_a_url(cls, v: str | None) -> str | None:
        if not v:
            return None
        parsed = urlsplit(v)
        # Plain http only to a provider on this machine (tests, a local provider).
        loopback = parsed.hostname in ("localhost", "127.0.0.1", "::1")
        if not parsed.hostname or not (
            parsed.scheme == "https" or (parsed.scheme == "http" and loopback)
        ):
            raise ValueError("the OIDC issuer must be an https:// URL")
        if parsed.query or parsed.fragment:
            raise ValueError("the OIDC issuer has no query or fragment")
        return v.rstrip("/")

    @field_validator("oidc_scopes")
    @classmethod
    def _scopes_ask_for_openid(cls, v: str) -> str:
        if "openid" not in v.split():
            raise ValueError("the OIDC scopes must include 'openid'")
        return " ".join(v.split())

    @property
    def oidc_configured(self) -> bool:
        """Whether the desk offers sign-in through the OpenID Connect provider."""
        return bool(self.oidc_issuer and self.oidc_client_id)

    @property
    def development_signin(self) -> bool:
        """Whether the desk may offer its pick-a-role sign-in (development stack only)."""
        return self.jwt_secret == DEV_JWT_SECRET and not self.jwks_url

    @property
    def api_url(self) -> str:
        return self.api_base_url or f"http://127.0.0.1:{self.api_port}"


@lru_cache
def get_settings() -> Settings:
    return Settings()


class LendersFileError(ValueError):
    pass


def load_lenders(path: Path) -> dict[str, LenderConfig]:
    """Read the lenders TOML file; a precise error names the file and the entry."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise LendersFileError(f"lenders file {path} does not exist") from e
    except tomllib.TOMLDecodeError as e:
        raise LendersFileError(f"lenders file {path} is not valid TOML: {e}") from e
    lenders: dict[str, LenderConfig] = {}
    for i, entry in enumerate(raw.get("lenders", [])):
        try:
            lender = LenderConfig.model_validate(entry)
        except ValueError as e:
            raise LendersFileError(f"lenders file {path}, entry {i + 1}: {e}") from e
        if lender.id in lenders:
            raise LendersFileError(f"lenders file {path}: lender id {lender.id!r} appears twice")
        lenders[lender.id] = lender
    if not lenders:
        raise LendersFileError(f"lenders file {path} defines no [[lenders]]")
    return lenders
