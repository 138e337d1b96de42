"""How every long-running process starts: settings checked, Temporal waited for.

A process started before Temporal is up (a reboot, a compose stack whose
services race) waits for it for `DEALFLOW_TEMPORAL_CONNECT_TIMEOUT` seconds,
saying so in one log line per attempt, then exits non-zero naming the address.
A setting that cannot be used is one line naming the setting; neither case
prints a Python traceback, because an operator reads these in a terminal or a
container log, not a debugger.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn

from pydantic import ValidationError
from temporalio.client import Client

from dealflow import tracing
from dealflow.codec import CodecKeyError
from dealflow.config import LendersFileError, Settings, SettingsFileError
from dealflow.production import ProductionRefusal, refuse_unsafe_production
from dealflow.temporal_connection import TemporalConfigError, temporal_connection

log = logging.getLogger("dealflow.startup")

# Exit status of a process that could not start: configuration or Temporal.
EXIT_CANNOT_START = 2


class StartupError(Exception):
    """A process cannot start; the message is the one line the operator sees."""


def settings_from_env() -> Settings:
    """`Settings()`, with a validation error turned into one line per setting;
    in production, also refused while a public development value is in use."""
    try:
        settings = Settings()
    except ValidationError as e:
        raise StartupError(describe_settings_error(e)) from None
    except SettingsFileError as e:
        raise StartupError(f"configuration error: {e}") from None
    check_production(settings)
    return settings


def check_production(settings: Settings) -> None:
    """`StartupError` with one line per unsafe setting (production only)."""
    try:
        refuse_unsafe_production(settings)
    except ProductionRefusal as e:
        raise StartupError(
            "\n".join(f"refusing to start in production: {line}" for line in e.problems)
        ) from None


def describe_settings_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        field = ".".join(str(p) for p in err["loc"])
        # The standard OpenTelemetry variables are named as they are set.
        name = field if field.startswith("OTEL_") else f"DEALFLOW_{field.upper()}"
        parts.append(f"{name}: {err['msg']}")
    return "configuration error: " + "; ".join(parts)


def start_tracing(settings: Settings, service: str) -> None:
    """Tracing on if the settings ask for it (dealflow/tracing.py), said in one
    log line; a request for it that cannot work stops the process."""
    try:
        config = tracing.setup(settings, service)
    except tracing.TracingConfigError as e:
        raise StartupError(f"configuration error: {e}") from None
    if config is not None:
        log.info(
            "tracing on: spans to %s as %s (%s)",
            config.where(),
            config.service_name,
            config.source,
            extra={"service_name": config.service_name},
        )


async def connect_patiently(
    settings: Settings,
    connect: Callable[[Settings], Awaitable[Client]],
) -> Client:
    """`connect(settings)`, retried until Temporal answers or the connect
    timeout passes; a refused certificate or credential ends it at once, as
    waiting cannot mend it."""
    try:
        connection = temporal_connection(settings)
    except TemporalConfigError as e:
        raise StartupError(f"configuration error: {e}") from None
    where, address = connection.describe(), connection.address
    limit = settings.temporal_connect_timeout
    deadline = time.monotonic() + limit
    delay = 0.5
    attempt = 0
    while True:
        attempt += 1
        try:
            return await connect(settings)
        except (CodecKeyError, TemporalConfigError) as e:
            raise StartupError(f"configuration error: {e}") from None
        except RuntimeError as e:  # the SDK's "Failed client connect: ..."
            reason = connect_problem(str(e))
            if reason in _FATAL_REASONS:
                raise StartupError(f"Temporal at {where} refused us: {reason}") from None
            left = deadline - time.monotonic()
            if left <= 0:
                raise StartupError(
                    f"Temporal at {where} is not reachable after {limit:g} s: {reason}"
                ) from None
            log.warning(
                "Temporal at %s not reachable (attempt %d: %s); retrying for %.0f s more",
                where,
                attempt,
                reason,
                left,
                extra={"temporal_address": address, "attempt": attempt},
            )
            await asyncio.sleep(min(delay, max(left, 0.0)))
            delay = min(delay * 2, 5.0)


# What the SDK's connect errors mean, most specific first, with what to set.
_UNTRUSTED = "the server's TLS certificate is not trusted: set TEMPORAL_TLS_SERVER_CA_CERT_PATH"
_CERT_REQUIRED = (
    "the server requires a client certificate: set TEMPORAL_TLS_CLIENT_CERT_PATH and "
    "TEMPORAL_TLS_CLIENT_KEY_PATH"
)
_CERTIFICATE = "TLS certificate problem"
_UNAUTHENTICATED = "not authenticated: check TEMPORAL_API_KEY or the client certificate"
_CLOSED = (
    "the server closed the connection once open: a TLS server wanting a client certificate "
    "(TEMPORAL_TLS_CLIENT_CERT_PATH, TEMPORAL_TLS_CLIENT_KEY_PATH) or TLS (TEMPORAL_TLS=true) "
    "does so"
)
_GISTS = (
    ("invalidcertificate", _UNTRUSTED),
    ("certificaterequired", _CERT_REQUIRED),
    ("certificate required", _CERT_REQUIRED),
    ("certificate", _CERTIFICATE),
    ("unauthenticated", _UNAUTHENTICATED),
    ("permissiondenied", _UNAUTHENTICATED),
    ("close_notify", _CLOSED),
    ("broken pipe", _CLOSED),
    ("connection closed", _CLOSED),
    # Any other failure of the first call on an open connection: the same.
    ("call error after connection", _CLOSED),
    ("connectionrefused", "connection refused"),
    ("connection refused", "connection refused"),
    ("dns error", "the address cannot be resolved"),
    ("failed to lookup address", "the address cannot be resolved"),
    ("timed out", "timed out"),
)
# Answers waiting cannot mend: the process stops at once. A closed connection
# is not among them, as a server starting up closes connections too.
_FATAL_REASONS = frozenset({_UNTRUSTED, _CERT_REQUIRED, _CERTIFICATE, _UNAUTHENTICATED})


def connect_problem(text: str) -> str:
    """The gist of the SDK's connect error, whose text is a nested Rust debug dump."""
    lowered = text.lower()
    for needle, gist in _GISTS:
        if needle in lowered:
            return gist
    stripped = text.strip()
    return stripped.splitlines()[0][:160] if stripped else "no answer"


def run(program: str, main: Callable[[], Coroutine[Any, Any, None]]) -> NoReturn:
    """Run a process's async main; a start-up failure is one line and exit 2."""
    code = 0
    try:
        asyncio.run(main())
    except StartupError as e:
        code = _say(program, str(e))
    except (CodecKeyError, LendersFileError) as e:
        code = _say(program, f"configuration error: {e}")
    except KeyboardInterrupt:
        code = 130
    tracing.shutdown()
    _leave(code)


def _say(program: str, message: str) -> int:
    for line in message.splitlines() or [""]:
        print(f"{program}: {line}", file=sys.stderr, flush=True)
    return EXIT_CANNOT_START


def _leave(code: int) -> NoReturn:
    # Without interpreter finalisation: the Temporal client's native threads can
    # abort it (temporalio/sdk-python#300) and turn a clean exit into a crash dump.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
