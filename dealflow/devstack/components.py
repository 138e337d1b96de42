"""The stack's processes, in start order: how each is started, recognised and checked."""

from __future__ import annotations

from dataclasses import dataclass

from dealflow.devstack.commands import (
    module_command,
    temporal_command,
    temporal_signature,
    worker_command,
)
from dealflow.devstack.config import StackConfig
from dealflow.devstack.health import HealthCheck, http_health, temporal_health, worker_health

TEMPORAL_TIMEOUT = 60.0  # first start creates the SQLite schema: a few seconds, slow disks more
SERVICE_TIMEOUT = 30.0


@dataclass(frozen=True)
class Component:
    """One process of the stack: how to start it, recognise it and check it."""

    name: str
    argv: tuple[str, ...]
    # A contiguous run of argv that identifies *this* stack's process in /proc/<pid>/cmdline.
    signature: tuple[str, ...]
    ports: tuple[tuple[int, str], ...]  # (port, what) the process binds
    port_hint: str  # how the operator moves it to another port
    health: HealthCheck
    timeout: float
    managed: bool = True  # False: an external Temporal we only check


def components(cfg: StackConfig) -> list[Component]:
    """The stack in start order."""
    sim_url = f"http://127.0.0.1:{cfg.lender_sim_port}/healthz"
    api_url = f"http://127.0.0.1:{cfg.api_port}/healthz"
    return [
        Component(
            name="temporal",
            argv=tuple(temporal_command(cfg)),
            signature=temporal_signature(cfg),
            ports=(
                (cfg.temporal_port, "Temporal gRPC"),
                (cfg.ui_port, "Temporal UI"),
            ),
            port_hint="set DEALFLOW_TEMPORAL_ADDRESS=localhost:<port> / DEALFLOW_TEMPORAL_UI_PORT",
            health=lambda pid: temporal_health(cfg),
            timeout=TEMPORAL_TIMEOUT,
            managed=cfg.temporal_managed,
        ),
        Component(
            name="lender_sim",
            # Not installed with the package: `-m` finds it in the cwd, the repository root.
            argv=tuple(module_command(cfg, "sim.lender")),
            signature=("-m", "sim.lender"),
            ports=((cfg.lender_sim_port, "lender simulator"),),
            port_hint="set DEALFLOW_LENDER_SIM_PORT",
            health=lambda pid: http_health(sim_url),
            timeout=SERVICE_TIMEOUT,
        ),
        Component(
            name="api",
            argv=tuple(module_command(cfg, "dealflow.api")),
            signature=("-m", "dealflow.api"),
            ports=((cfg.api_port, "API"),),
            port_hint="set DEALFLOW_API_PORT",
            health=lambda pid: http_health(api_url),
            timeout=SERVICE_TIMEOUT,
        ),
        Component(
            name="worker",
            argv=tuple(worker_command(cfg)),
            signature=(str(cfg.root / "worker.py"),),
            ports=(),
            port_hint="",
            health=lambda pid: worker_health(cfg, pid),
            timeout=SERVICE_TIMEOUT,
        ),
    ]
