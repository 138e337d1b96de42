"""Where Temporal is and how to reach it: the one connection factory.

Configured the standard way of Temporal's SDKs and CLI (`temporalio.envconfig`):
`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, `TEMPORAL_TLS`,
`TEMPORAL_TLS_CLIENT_CERT_PATH`, `TEMPORAL_TLS_CLIENT_KEY_PATH`,
`TEMPORAL_TLS_SERVER_CA_CERT_PATH`, `TEMPORAL_TLS_SERVER_NAME`, or a profile of
the TOML file `TEMPORAL_CONFIG_FILE` names (`TEMPORAL_PROFILE`). DealFlow's own
`DEALFLOW_TEMPORAL_ADDRESS` and `DEALFLOW_NAMESPACE`, when set, win over
`TEMPORAL_ADDRESS` and `TEMPORAL_NAMESPACE`: the project's setting is the more
specific one (a shell may point the `temporal` CLI elsewhere).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.envconfig import ClientConfigProfile, ClientConfigTLS
from temporalio.service import TLSConfig

from dealflow import tracing
from dealflow.config import Settings

# The envconfig variable behind each TLS source, for error messages.
_TLS_SOURCES = {
    "server_root_ca_cert": "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
    "client_cert": "TEMPORAL_TLS_CLIENT_CERT_PATH",
    "client_private_key": "TEMPORAL_TLS_CLIENT_KEY_PATH",
}


class TemporalConfigError(ValueError):
    """The Temporal client configuration cannot work: a process stops at start."""


@dataclass(frozen=True)
class TemporalConnection:
    address: str
    namespace: str
    api_key: str | None = None
    # False: plaintext; True: TLS with the system's roots; a TLSConfig: TLS
    # with its CA, server name and client certificate.
    tls: bool | TLSConfig = False

    def describe(self) -> str:
        """Where and how, never a secret: for start-up lines and errors."""
        if self.tls is False:
            how = "plaintext"
        elif isinstance(self.tls, TLSConfig) and self.tls.client_cert:
            how = "TLS with a client certificate"
        else:
            how = "TLS"
        if self.api_key:
            how += " and an API key"
        return f"{self.address} (namespace {self.namespace}, {how})"

    async def connect(self, data_converter: DataConverter, **options: Any) -> Client:
        """A client; with tracing on (dealflow/tracing.py) it carries the tracing
        interceptor, which the workers built on it inherit."""
        interceptors = [*options.pop("interceptors", ()), *tracing.temporal_interceptors()]
        return await Client.connect(
            self.address,
            namespace=self.namespace,
            api_key=self.api_key,
            tls=self.tls,
            data_converter=data_converter,
            interceptors=interceptors,
            **options,
        )


def temporal_connection(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> TemporalConnection:
    """The connection the settings and the Temporal environment describe
    (`environ` replaces the process environment, for tests)."""
    try:
        profile = ClientConfigProfile.load(override_env_vars=environ)
    except (OSError, ValueError, RuntimeError) as e:
        raise TemporalConfigError(f"Temporal client configuration: {e}") from None
    explicit = settings.model_fields_set
    address = (
        settings.temporal_address
        if "temporal_address" in explicit or not profile.address
        else profile.address
    )
    namespace = (
        settings.namespace
        if "namespace" in explicit or not profile.namespace
        else profile.namespace
    )
    api_key = profile.api_key or None
    tls: bool | TLSConfig = False
    if profile.tls is not None:
        tls = _tls(profile.tls)
    # An API key travels only over TLS (as Temporal Cloud requires).
    if api_key and tls is False:
        if profile.tls is not None and profile.tls.disabled:
            raise TemporalConfigError(
                "TEMPORAL_API_KEY is set but TEMPORAL_TLS is false: an API key is never "
                "sent in plaintext"
            )
        tls = True
    return TemporalConnection(address=address, namespace=namespace, api_key=api_key, tls=tls)


def _tls(config: ClientConfigTLS) -> bool | TLSConfig:
    if config.disabled:
        return False
    sources = {name: _read(name, getattr(config, name)) for name in _TLS_SOURCES}
    if bool(sources["client_cert"]) != bool(sources["client_private_key"]):
        raise TemporalConfigError(
            "a TLS client certificate needs its private key and the key its certificate "
            "(TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH)"
        )
    return TLSConfig(
        domain=config.server_name,
        server_root_ca_cert=sources["server_root_ca_cert"],
        client_cert=sources["client_cert"],
        client_private_key=sources["client_private_key"],
    )


def _read(name: str, source: Path | str | bytes | None) -> bytes | None:
    """A PEM source: a path to read, or the PEM itself (a profile's `*_data`)."""
    if source is None:
        return None
    if isinstance(source, bytes):
        return source
    if isinstance(source, str):
        return source.encode()
    try:
        data = source.read_bytes()
    except OSError as e:
        raise TemporalConfigError(
            f"{_TLS_SOURCES[name]}: cannot read {source}: {e.strerror or e}"
        ) from None
    if b"-----BEGIN" not in data:
        raise TemporalConfigError(f"{_TLS_SOURCES[name]}: {source} is not a PEM file")
    return data


async def probe(settings: Settings) -> str:
    """Whether the configured Temporal serves our namespace: one line, or raise."""
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest

    from dealflow.codec import data_converter_for

    connection = temporal_connection(settings)
    client = await connection.connect(data_converter_for(settings))
    if not await client.service_client.check_health():
        raise RuntimeError("gRPC health: not serving")
    await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace=connection.namespace)
    )
    return f"SERVING {connection.describe()}"


def main() -> None:
    """`python -m dealflow.temporal_connection`: the dev stack's health probe,
    through the same factory as every process. Exit 0 serving, 1 not."""
    import asyncio
    import os
    import sys

    code = 0
    try:
        print(asyncio.run(asyncio.wait_for(probe(Settings()), timeout=8)), flush=True)
    except Exception as e:  # every failure is one line for the stack's status
        lines = str(e).strip().splitlines()
        print(f"{type(e).__name__}: {lines[0][:200] if lines else ''}", file=sys.stderr, flush=True)
        code = 1
    # Without interpreter finalisation: the client's native threads can abort
    # it (temporalio/sdk-python#300) and turn an answer into a crash.
    os._exit(code)


if __name__ == "__main__":
    main()
