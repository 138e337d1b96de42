"""Process configuration: every DealFlow process reads the same `DEALFLOW_*` variables.

Kept out of the workflow sandbox on purpose: workflows get what they need
(policy, lender directory) copied into their input so history is self-describing.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, Field, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

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


ENV_PREFIX = "DEALFLOW_"
# `DEALFLOW_<SETTING>_FILE`: the setting's value is that file's content.
FILE_SUFFIX = "_FILE"


class SettingsFileError(ValueError):
    """A `DEALFLOW_*_FILE` variable that cannot be used; the message names it."""


class SettingFilesSource(PydanticBaseSettingsSource):
    """Every setting may come from a file: `DEALFLOW_JWT_SECRET_FILE=/run/secrets/jwt`
    sets `jwt_secret` to the file's content, surrounding whitespace removed. This is
    how compose and Kubernetes hand out secrets, which then appear in no process
    environment. Setting both the variable and its `_FILE` variant is an error:
    which one wins would be a guess."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Unused: __call__ reads every field at once.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        fields = self.settings_cls.model_fields
        for name in fields:
            if f"{name}{FILE_SUFFIX.lower()}" in fields:
                continue  # that variable is a setting of its own
            variable = f"{ENV_PREFIX}{name.upper()}"
            path = os.environ.get(variable + FILE_SUFFIX)
            if not path:
                continue
            if os.environ.get(variable) is not None:
                raise SettingsFileError(f"set {variable} or {variable}{FILE_SUFFIX}, not both")
            values[name] = read_setting_file(variable + FILE_SUFFIX, Path(path))
        return values


def read_setting_file(variable: str, path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise SettingsFileError(f"{variable}: cannot read {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise SettingsFileError(f"{variable}: {path} is not UTF-8 text") from e
    if not text:
        raise SettingsFileError(f"{variable}: {path} is empty")
    return text


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            SettingFilesSource(settings_cls),
            env_settings,
            dotenv_settings,
            file_secret_settings,
        )

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
    # Server-side encryption each S3 write asks for: AES256 (S3-managed keys),
    # aws:kms (with the key id below), or off for an S3 that refuses the header
    # or encrypts by itself (a bucket default, an encrypted disk).
    s3_sse: Literal["off", "AES256", "aws:kms"] = "AES256"
    s3_sse_kms_key_id: str | None = Field(default=None, validate_default=True)
    jwt_secret: str = DEV_JWT_SECRET
    # Signs the links to a local document store's files that the API serves.
    file_link_secret: str = DEV_FILE_LINK_SECRET
    # The longest a link to a document may last (a lender fetches a package
    # when it arrives; every retry of a send signs its links afresh).
    file_link_max_hours: float = Field(default=24.0, gt=0, le=168)
    # Production: the identity provider's JWKS; staff tokens are then verified
    # with its public keys (RS256/ES256/...) instead of the HS256 secret.
    jwks_url: str | None = None
    # The `aud` and `iss` a staff token must carry. Required with a JWKS URL:
    # the provider signs tokens for other applications with the same keys.
    jwt_audience: str | None = Field(default=None, validate_default=True)
    jwt_issuer: str | None = Field(default=None, validate_default=True)
    # Longest life (exp - iat) a staff token may have; a longer one is refused.
    jwt_max_lifetime_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    # The JWKS fetch: its deadline, and how often a token naming a key the
    # cached set lacks may make the API fetch the set again.
    # The token claim (API token, desk ID token) listing the dealer ids a
    # person works for: they see and act on those dealers' deals only. A token
    # without it sees every dealer (the group's back office). A dotted path
    # reaches into an object, as for DEALFLOW_OIDC_ROLES_CLAIM.
    dealers_claim: str = Field(default="dealers", pattern=r"^[A-Za-z0-9_:/.-]{1,200}$")
    jwks_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    jwks_refetch_seconds: float = Field(default=30.0, ge=0)
    # How long an `Idempotency-Key` of `POST /api/deals` holds; then it is free again.
    idempotency_key_hours: float = Field(default=24.0, gt=0)
    lenders_file: Path = ROOT / "examples" / "lenders.toml"
    codec_keys: str = ""
    # How long `dealflow-audit archive` locks each history on S3 (Object Lock,
    # compliance mode: nobody can delete or overwrite it before then). 5 years.
    archive_retention_days: int = Field(default=1826, ge=1, le=36500)
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
    # The operator's listener for /metrics and /docs (dealflow/api/ops.py); 0:
    # none, and then they are on the public listener in development only.
    api_ops_host: str = "127.0.0.1"
    api_ops_port: int = Field(default=0, ge=0, le=65535)
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
    # Long-poll status reads (GET /api/deals/{id}/next-status, dealflow/deal_wait.py):
    # the longest one request waits, and how many may wait at once per person
    # (the token's sub) and in all (429 past either).
    status_wait_max_seconds: float = Field(default=30.0, gt=0, le=30)
    status_waits_per_subject: int = Field(default=4, ge=1)
    status_waits_total: int = Field(default=1000, ge=1)
    lender_sim_port: int = 8100
    policy_file: Path | None = None
    # Worker tuning. The cache bounds worker memory (a cached deal's state and
    # sandbox, ~450 KB; its cost is measured by `make bench`, parked deals, and
    # given in the README); evicted deals are rebuilt from history on their
    # next event. A parked deal's next event comes days later, so the cache
    # pays off for the deals being worked on now (a clerk's steps in a row, a
    # lender's answers): 300 holds far more of those than a showroom group has
    # at once and keeps a worker near 300 MB.
    max_cached_workflows: int = 300
    # The worker's Prometheus endpoint (dealflow/worker_metrics.py); port 0: none.
    # Loopback by default: metrics name stages and lenders, for the operator's
    # scraper, not for the network.
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(default=9464, ge=0, le=65535)
    max_concurrent_activities: int = 100
    # A workflow task is Python in one process (the SDK sandbox, under the
    # GIL) and, for a deal, also waits for its bookkeeping's local activities:
    # tasks run at once share the CPU and each takes longer. A restarted worker
    # given 50 deals to rebuild at once let them outlast the 10 s workflow task
    # timeout (benchmark 5 and chaos worker-kill counted the timeouts, and
    # staff uploads waited minutes for their records); a few at a time, each
    # finishes in milliseconds and the rest wait their turn on the server.
    max_concurrent_workflow_tasks: int = Field(default=8, ge=2)
    graceful_shutdown_seconds: float = 10.0
    # A dead worker's cached deals wait this long on its sticky queue before
    # any worker may take them: it is on the path of every deal a crash
    # interrupts, in both layouts `make bench` measures (benchmark 5, README).
    # 0.5 s was tried: with bookkeeping as local activities a loaded worker then
    # also let live deals' tasks time out there (benchmark 5 counts them).
    # The SDK's default is 10 s.
    sticky_schedule_to_start_seconds: float = Field(default=1.0, gt=0)
    # OpenTelemetry traces (dealflow/tracing.py), off unless an OTLP/HTTP
    # endpoint is named: DealFlow's own setting first, then the standard
    # OpenTelemetry variables (read here so every setting has one source).
    otlp_endpoint: str | None = None
    otel_traces_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    otel_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    otel_service_name: str | None = Field(
        default=None, validation_alias=AliasChoices("OTEL_SERVICE_NAME")
    )
    otel_sdk_disabled: bool = Field(
        default=False, validation_alias=AliasChoices("OTEL_SDK_DISABLED")
    )

    @field_validator("database_url")
    @classmethod
    def _normalise_postgres(cls, v: str) -> str:
        # psycopg 3 is the driver we ship; accept the common URL spellings.
        for prefix in ("postgresql://", "postgres://"):
            if v.startswith(prefix):
                return "postgresql+psycopg://" + v[len(prefix) :]
        return v

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_endpoint_is_a_url(cls, v: str | None) -> str | None:
        if not v:
            return None
        parsed = urlsplit(v)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(
                "the OTLP endpoint must be an http:// or https:// URL (OTLP over HTTP, "
                "e.g. http://otel-collector:4318)"
            )
        return v.rstrip("/")

    @field_validator("jwt_audience", "jwt_issuer")
    @classmethod
    def _needed_with_jwks(cls, v: str | None, info: ValidationInfo) -> str | None:
        v = v.strip() if v else None
        if not v and info.data.get("jwks_url"):
            # Without it a token the provider issued for another application
            # (with its own "admin" role) would be accepted.
            raise ValueError("required when DEALFLOW_JWKS_URL is set")
        return v

    @field_validator("s3_sse_kms_key_id")
    @classmethod
    def _kms_key_goes_with_kms(cls, v: str | None, info: ValidationInfo) -> str | None:
        sse = info.data.get("s3_sse")
        if sse == "aws:kms" and not v:
            raise ValueError("DEALFLOW_S3_SSE=aws:kms needs the KMS key id (ARN, id or alias)")
        if v and sse != "aws:kms":
            raise ValueError(f"a KMS key id goes with DEALFLOW_S3_SSE=aws:kms, not {sse}")
        return v or None

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
    def s3_server_side_encryption(self) -> str | None:
        """The `ServerSideEncryption` S3 writes ask for; None: no header."""
        return None if self.s3_sse == "off" else self.s3_sse

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
        raise LendersFileError(
            f"lenders file {path} does not exist (DEALFLOW_LENDERS_FILE names it)"
        ) from e
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
