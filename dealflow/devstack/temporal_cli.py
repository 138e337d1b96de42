"""The `temporal` CLI as the stack's client of the Temporal server: probes and search attributes."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence

from dealflow.devstack.config import SEARCH_ATTRIBUTES, StackConfig


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message`, short enough for one status line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


class TemporalCliError(RuntimeError):
    pass


def temporal_cli(cfg: StackConfig, *args: str, timeout: float = 10.0) -> str:
    """Run a `temporal` client command against the stack's server; stdout, or raise.

    The CLI rather than the temporalio SDK: a short-lived Python process that used
    an SDK client can abort at interpreter exit ("PyGILState_Release ... finalizing",
    temporalio/sdk-python#300), which would turn a successful `up` into exit 134.
    """
    argv = [
        str(cfg.temporal_bin),
        *args,
        "--address",
        cfg.temporal_address,
        "--namespace",
        cfg.namespace,
        "--command-timeout",
        f"{max(1, int(timeout) - 1)}s",
    ]
    if cfg.temporal_managed:
        # Our loopback dev server: an operator's TEMPORAL_* profile (TLS, API key for
        # a cloud namespace) must not leak into the probe. For an external server it
        # is exactly what the probe needs, so it is honoured there.
        argv += ["--disable-config-file", "--disable-config-env"]
    try:
        res = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(cfg.env),
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TemporalCliError(first_line(e)) from e
    if res.returncode != 0:
        lines = (res.stderr or res.stdout).strip().splitlines()
        raise TemporalCliError(lines[0][:200] if lines else f"exit status {res.returncode}")
    return res.stdout


def search_attributes(cfg: StackConfig) -> dict[str, str]:
    """Custom search attributes of the namespace: name -> INDEXED_VALUE_TYPE_..."""
    out = temporal_cli(cfg, "operator", "search-attribute", "list", "-o", "json")
    custom: dict[str, str] = json.loads(out).get("customAttributes") or {}
    return custom


def missing_search_attributes(cfg: StackConfig) -> list[str]:
    present = search_attributes(cfg)
    return [name for name in SEARCH_ATTRIBUTES if name not in present]


def add_search_attributes(cfg: StackConfig, names: Sequence[str]) -> None:
    for name in names:
        # One call per name: CLI 1.9.1 accepts repeated --name but registers only the first.
        temporal_cli(
            cfg,
            "operator",
            "search-attribute",
            "create",
            "--name",
            name,
            "--type",
            SEARCH_ATTRIBUTES[name],
        )
