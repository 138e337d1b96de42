"""`python -m dealflow.devstack up|down|status`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from urllib.parse import quote

from dealflow.config import Settings
from dealflow.devstack.config import StackConfig, StackError
from dealflow.devstack.lifecycle import down, status, up

# `status` exit code when something is not running/healthy (LSB "not running").
STATUS_NOT_OK = 3


def urls(cfg: StackConfig) -> list[str]:
    """What `up` prints last: where to look."""
    ui = f"http://localhost:{cfg.ui_port}" if cfg.temporal_managed else "(external server)"
    query = 'DealStage="UNDERWRITING"'
    lines = [
        f"Temporal UI       {ui}",
        f"                  search deals with a query such as  {query}  (also LenderId, DealerId):",
        f"                  {ui}/namespaces/{cfg.namespace}/workflows?query={quote(query)}",
        f"Temporal gRPC     {cfg.temporal_address}",
        f"API               http://127.0.0.1:{cfg.api_port}/docs   (ready: /readyz)",
        f"Worker metrics    http://127.0.0.1:{cfg.worker_metrics_port}/metrics",
        f"Lender simulator  http://127.0.0.1:{cfg.lender_sim_port}",
        f"Logs              {cfg.log_dir}/<name>.log   (stop: make down)",
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dealflow.devstack",
        description="Start, stop or inspect the embedded DealFlow stack "
        "(Temporal dev server, lender simulator, API, worker).",
    )
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument(
        "--data-dir",
        default=str(Settings().data_dir),
        help="pids, logs and the Temporal database (default: .data)",
    )
    args = parser.parse_args(argv)
    try:
        cfg = StackConfig.from_env(args.data_dir)
        if args.command == "up":
            up(cfg)
            print()
            for line in urls(cfg):
                print(line)
            return 0
        if args.command == "down":
            down(cfg)
            return 0
        return 0 if status(cfg) else STATUS_NOT_OK
    except StackError as e:
        print(f"dealflow.devstack {args.command}: {e}", file=sys.stderr)
        if args.command == "up":
            print(
                "Components started so far keep running; `make down` stops them.", file=sys.stderr
            )
        return 1
    except KeyboardInterrupt:
        return 130
