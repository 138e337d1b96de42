"""Temporal behind mutual TLS (dealflow/temporal_connection.py): the one
connection factory reads the standard `TEMPORAL_*` configuration, a process
without a client certificate stops at start with one clear line, and with one
a deal goes from start to COMPLETED with every call through the TLS proxy."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.service import TLSConfig
from temporalio.testing import WorkflowEnvironment

from dealflow.config import Settings
from dealflow.devstack.config import StackConfig
from dealflow.devstack.health import temporal_health
from dealflow.models import DealPolicy, DealStatus, Stage
from dealflow.storage.documents import LocalDirectoryStore
from dealflow.temporal_connection import (
    TemporalConfigError,
    TemporalConnection,
    temporal_connection,
)
from tests.support.back_office import desk_on
from tests.support.servers import free_port
from tests.support.stack import ROOT, codec_data_converter, run_stack
from tests.support.tls_proxy import Certificates, make_certificates, tls_proxy

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("pki"))


def mtls_env(certs: Certificates, address: str) -> dict[str, str]:
    return {
        "TEMPORAL_ADDRESS": address,
        "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(certs.ca),
        "TEMPORAL_TLS_CLIENT_CERT_PATH": str(certs.client.cert),
        "TEMPORAL_TLS_CLIENT_KEY_PATH": str(certs.client.key),
    }


# --------------------------------------------------------------------------- configuration


def test_without_configuration_it_is_the_local_dev_server_in_plaintext() -> None:
    connection = temporal_connection(Settings(), environ={})
    assert connection == TemporalConnection("localhost:7233", "default")
    assert connection.describe() == "localhost:7233 (namespace default, plaintext)"


def test_the_standard_variables_name_the_server_and_dealflows_own_still_win() -> None:
    environ = {"TEMPORAL_ADDRESS": "temporal.example:7233", "TEMPORAL_NAMESPACE": "deals"}
    standard = temporal_connection(Settings(), environ=environ)
    assert (standard.address, standard.namespace) == ("temporal.example:7233", "deals")
    own = temporal_connection(
        Settings(temporal_address="10.0.0.5:7233", namespace="dealflow"), environ=environ
    )
    assert (own.address, own.namespace) == ("10.0.0.5:7233", "dealflow")


def test_an_api_key_turns_tls_on_and_is_never_described() -> None:
    key = "secret-api-key-value"
    connection = temporal_connection(
        Settings(),
        environ={"TEMPORAL_ADDRESS": "ns.acct.tmprl.cloud:7233", "TEMPORAL_API_KEY": key},
    )
    assert connection.tls is True and connection.api_key == key
    assert key not in connection.describe()
    assert connection.describe().endswith("TLS and an API key)")
    with pytest.raises(TemporalConfigError, match="never sent in plaintext"):
        temporal_connection(Settings(), environ={"TEMPORAL_API_KEY": key, "TEMPORAL_TLS": "false"})


def test_client_certificates_are_read_at_start_with_errors_naming_the_variable(
    certs: Certificates, tmp_path: Path
) -> None:
    connection = temporal_connection(Settings(), environ=mtls_env(certs, "127.0.0.1:7233"))
    assert isinstance(connection.tls, TLSConfig)
    assert connection.tls.client_cert == certs.client.cert.read_bytes()
    assert connection.tls.server_root_ca_cert == certs.ca.read_bytes()
    assert "TLS with a client certificate" in connection.describe()

    missing = {**mtls_env(certs, "x:1"), "TEMPORAL_TLS_CLIENT_CERT_PATH": str(tmp_path / "no")}
    with pytest.raises(TemporalConfigError, match=r"^TEMPORAL_TLS_CLIENT_CERT_PATH: cannot read"):
        temporal_connection(Settings(), environ=missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(TemporalConfigError, match="is not a PEM file"):
        temporal_connection(
            Settings(),
            environ={**mtls_env(certs, "x:1"), "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(garbage)},
        )
    alone = mtls_env(certs, "x:1")
    del alone["TEMPORAL_TLS_CLIENT_KEY_PATH"]
    with pytest.raises(TemporalConfigError, match="needs its private key"):
        temporal_connection(Settings(), environ=alone)


def test_a_profile_file_configures_the_connection(certs: Certificates, tmp_path: Path) -> None:
    profile = tmp_path / "temporal.toml"
    profile.write_text(
        "[profile.production]\n"
        'address = "prod.tmprl.cloud:7233"\n'
        'namespace = "prod.acct"\n'
        "[profile.production.tls]\n"
        f'client_cert_path = "{certs.client.cert}"\n'
        f'client_key_path = "{certs.client.key}"\n'
    )
    connection = temporal_connection(
        Settings(), environ={"TEMPORAL_CONFIG_FILE": str(profile), "TEMPORAL_PROFILE": "production"}
    )
    assert (connection.address, connection.namespace) == ("prod.tmprl.cloud:7233", "prod.acct")
    assert isinstance(connection.tls, TLSConfig) and connection.tls.client_private_key


# --------------------------------------------------------------------------- against the proxy


@pytest.fixture(scope="module")
async def mtls_address(dev_env: WorkflowEnvironment, certs: Certificates) -> AsyncIterator[str]:
    """The tests' dev server behind a proxy that requires a client certificate."""
    async with tls_proxy(dev_env.client.service_client.config.target_host, certs) as address:
        yield address


def run_process(argv: list[str], tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DEALFLOW_", "TEMPORAL_"))}
    base |= {
        "DEALFLOW_DATA_DIR": str(tmp_path),
        "DEALFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'dealflow.db'}",
        "DEALFLOW_API_PORT": str(free_port()),
        "DEALFLOW_TEMPORAL_CONNECT_TIMEOUT": "3",
    }
    return subprocess.Popen(
        argv, cwd=ROOT, env=base | env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


PROGRAMS = [
    ("worker", [sys.executable, "worker.py"]),
    ("api", [sys.executable, "-m", "dealflow.api"]),
    ("starter.py", [sys.executable, "starter.py", "stuck"]),
]


async def finished(proc: subprocess.Popen[str]) -> str:
    """The process's stderr once it ended; the proxy (in this event loop) serves meanwhile."""
    _, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
    return stderr


@pytest.mark.parametrize(("program", "argv"), PROGRAMS)
async def test_without_a_client_certificate_every_process_stops_at_start_saying_why(
    program: str, argv: list[str], mtls_address: str, certs: Certificates, tmp_path: Path
) -> None:
    env = mtls_env(certs, mtls_address)
    del env["TEMPORAL_TLS_CLIENT_CERT_PATH"], env["TEMPORAL_TLS_CLIENT_KEY_PATH"]
    proc = run_process(argv, tmp_path, env)
    stderr = await finished(proc)
    assert proc.returncode != 0, stderr
    problem = [line for line in stderr.splitlines() if line and not line.startswith("{")]
    prefix = "error: cannot reach Temporal" if program == "starter.py" else f"{program}: "
    assert problem and problem[-1].startswith(prefix), stderr
    assert "client certificate" in problem[-1], stderr
    assert mtls_address in problem[-1] and "Traceback" not in stderr


async def test_a_stranger_certificate_is_refused_too(
    mtls_address: str, certs: Certificates, tmp_path: Path
) -> None:
    env = mtls_env(certs, mtls_address) | {
        "TEMPORAL_TLS_CLIENT_CERT_PATH": str(certs.stranger.cert),
        "TEMPORAL_TLS_CLIENT_KEY_PATH": str(certs.stranger.key),
    }
    proc = run_process([sys.executable, "worker.py"], tmp_path, env)
    stderr = await finished(proc)
    assert proc.returncode == 2 and "client certificate" in stderr.splitlines()[-1], stderr


async def test_with_its_certificate_the_worker_starts_and_polls(
    mtls_address: str, certs: Certificates, tmp_path: Path
) -> None:
    proc = run_process(
        [sys.executable, "worker.py"],
        tmp_path,
        mtls_env(certs, mtls_address) | {"DEALFLOW_TASK_QUEUE": f"tls-{free_port()}"},
    )
    try:
        ready = tmp_path / "worker.ready"
        deadline = time.monotonic() + 60
        for _ in iter(lambda: ready.exists() or proc.poll() is not None, True):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert ready.exists(), proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
    finally:
        proc.terminate()
        await finished(proc)


@pytest.fixture
def tls_settings_env(
    mtls_address: str, certs: Certificates, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    env = mtls_env(certs, mtls_address)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DEALFLOW_TEMPORAL_ADDRESS", raising=False)
    yield env


def chased(call: str) -> Callable[[DealStatus], bool]:
    return lambda st: f"the {call} follow-up call is due" in [n.message for n in st.notices]


async def test_a_deal_completes_with_every_call_through_mutual_tls(
    tls_settings_env: dict[str, str],
    database_url: str,
    store: LocalDirectoryStore,
    tmp_path: Path,
) -> None:
    connection = temporal_connection(Settings())
    assert connection.address == tls_settings_env["TEMPORAL_ADDRESS"]
    client = await connection.connect(codec_data_converter())
    env = WorkflowEnvironment.from_client(client)
    policy = DealPolicy(follow_up_first=timedelta(seconds=1), follow_up_second=timedelta(seconds=2))
    async with (
        run_stack(env, database_url, store, tmp_path) as stack,
        desk_on(stack, database_url) as desk,
    ):
        await desk.start(policy=policy)
        await desk.through_delivery()
        for call in ("day3", "day30"):
            await desk.wait_until(chased(call), f"the {call} call chased")
            await desk.do("record-follow-up", call=call)
        final = await desk.result()
    assert final.stage is Stage.COMPLETED


async def test_the_dev_stacks_health_probe_goes_through_the_same_factory(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    address = dev_env.client.service_client.config.target_host
    # An operator's profile for a cloud namespace must not reach the probe of
    # the stack's own loopback server.
    environ = {"DEALFLOW_TEMPORAL_ADDRESS": address, "TEMPORAL_API_KEY": "for-the-cloud"}
    serving = await asyncio.to_thread(
        temporal_health, StackConfig.from_env(tmp_path, environ=environ)
    )
    assert serving.ok, serving.detail
    closed = f"127.0.0.1:{free_port()}"
    refused = await asyncio.to_thread(
        temporal_health,
        StackConfig.from_env(tmp_path, environ={"DEALFLOW_TEMPORAL_ADDRESS": closed}),
    )
    assert not refused.ok and "does not accept connections" in refused.detail
