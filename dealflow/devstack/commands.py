"""The command line of each process the stack starts."""

from __future__ import annotations

from dealflow.config import STUCK_ATTEMPTS, STUCK_DYNAMIC_CONFIG
from dealflow.devstack.config import SEARCH_ATTRIBUTES, StackConfig


def temporal_command(cfg: StackConfig, *, search_attributes: bool = True) -> list[str]:
    """The dev-server command line.

    SQLite pragmas: with only `--db-filename`, every commit waits for a rollback-
    journal fsync. WAL + synchronous=FULL is faster (README, Configuration, has
    the measurement) and still durable on power loss: every commit is fsynced to
    the WAL. synchronous=NORMAL would be faster still but can lose the last
    commits on an OS crash, which a deal system must not.
    """
    argv = [
        str(cfg.temporal_bin),
        "server",
        "start-dev",
        # Loopback only: the dev server has no auth and skips HTTP security checks.
        "--ip",
        "127.0.0.1",
        "--port",
        str(cfg.temporal_port),
        "--ui-port",
        str(cfg.ui_port),
        "--db-filename",
        str(cfg.temporal_db),
        "--sqlite-pragma",
        "journal_mode=WAL",
        "--sqlite-pragma",
        "synchronous=FULL",
        # The UI decodes payloads only through the API's codec endpoint, which
        # admits auditors and admins (README, "Auditors").
        "--ui-codec-endpoint",
        f"http://localhost:{cfg.api_port}/codec",
    ]
    if search_attributes:
        for name, kind in SEARCH_ATTRIBUTES.items():
            argv += ["--search-attribute", f"{name}={kind}"]
    argv += ["--log-level", "warn", "--namespace", cfg.namespace]
    argv += ["--dynamic-config-value", f"{STUCK_DYNAMIC_CONFIG}={STUCK_ATTEMPTS}"]
    return argv


def temporal_signature(cfg: StackConfig) -> tuple[str, ...]:
    # Includes the port, so a dev server of another stack (other port) is never
    # mistaken for ours, and independent of the optional search-attribute flags.
    return ("server", "start-dev", "--ip", "127.0.0.1", "--port", str(cfg.temporal_port))


def migrate_command(cfg: StackConfig) -> list[str]:
    return [cfg.python, "-m", "dealflow.storage.db", "upgrade"]


def module_command(cfg: StackConfig, module: str) -> list[str]:
    return [cfg.python, "-m", module]


def worker_command(cfg: StackConfig) -> list[str]:
    # Absolute path: the pid-file check can then tell this repo's worker apart.
    return [cfg.python, str(cfg.root / "worker.py")]
