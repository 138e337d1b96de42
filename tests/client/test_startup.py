"""Start-up errors are one clear line (dealflow/startup.py): a process started
while Temporal is unreachable waits a bounded time, then exits 2 naming the
address; a setting that cannot be used is one line naming the setting. No
Python traceback reaches the operator."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.servers import free_port
from tests.support.stack import BIN, ROOT


def _run(argv: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DEALFLOW_", "TEMPORAL_"))}
    base["DEALFLOW_DATA_DIR"] = str(tmp_path)
    base["DEALFLOW_DATABASE_URL"] = f"sqlite:///{tmp_path / 'dealflow.db'}"
    return subprocess.run(
        argv, cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=120
    )


def _problem_lines(stderr: str) -> list[str]:
    # JSON log lines (the retries) are for the log collector; the rest is for people.
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("{")]


@pytest.mark.parametrize(
    ("program", "argv"),
    [("worker", [sys.executable, "worker.py"]), ("api", [sys.executable, "-m", "dealflow.api"])],
)
def test_a_process_waits_for_temporal_then_names_the_address(
    program: str, argv: list[str], tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = _run(
        argv,
        tmp_path,
        DEALFLOW_TEMPORAL_ADDRESS=address,
        DEALFLOW_TEMPORAL_CONNECT_TIMEOUT="2",
        DEALFLOW_API_PORT=str(free_port()),
    )
    assert proc.returncode == 2, proc.stderr
    assert time.monotonic() - started >= 2, "gave up before the connect timeout"
    assert _problem_lines(proc.stderr) == [
        f"{program}: Temporal at {address} (namespace default, plaintext) is not reachable "
        "after 2 s: connection refused"
    ]
    assert "not reachable (attempt 1" in proc.stderr  # the retries are logged
    assert "Traceback" not in proc.stderr


def test_a_bad_setting_is_one_line_naming_it(tmp_path: Path) -> None:
    proc = _run([sys.executable, "worker.py"], tmp_path, DEALFLOW_TEMPORAL_CONNECT_TIMEOUT="soon")
    assert proc.returncode == 2
    [line] = _problem_lines(proc.stderr)
    assert line.startswith("worker: configuration error: DEALFLOW_TEMPORAL_CONNECT_TIMEOUT: ")


def test_a_malformed_codec_key_is_one_line_in_every_tool(tmp_path: Path) -> None:
    for argv in (
        [str(BIN / "dealflow-audit"), "export", "some-deal"],
        [sys.executable, "worker.py"],
        [sys.executable, "-m", "dealflow.api"],
    ):
        proc = _run(argv, tmp_path, DEALFLOW_CODEC_KEYS="not-a-key")
        assert proc.returncode != 0, argv
        [line] = _problem_lines(proc.stderr)
        assert "configuration error: DEALFLOW_CODEC_KEYS: expected KEY_ID=BASE64_KEY" in line, (
            argv,
            proc.stderr,
        )
        assert "Traceback" not in proc.stderr
