"""Run the lender simulator:

    python -m sim.lender [--port N] [--db PATH] [--lenders-file PATH]

Defaults come from the `DEALFLOW_*` settings: port DEALFLOW_LENDER_SIM_PORT
(8100), lenders file DEALFLOW_LENDERS_FILE, webhooks to the API at
DEALFLOW_API_BASE_URL or http://127.0.0.1:$DEALFLOW_API_PORT, ledger
DEALFLOW_LENDER_SIM_DB or .data/lender_sim.db.
"""

from __future__ import annotations

import argparse
import logging
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import uvicorn

from dealflow.config import LendersFileError, Settings, SettingsFileError
from sim.lender.app import create_app
from sim.lender.config import SimConfig


def _apr(value: str) -> tuple[str, Decimal]:
    lender, sep, apr = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError("expected LENDER_ID=PERCENT, e.g. acme-auto-finance=5.90")
    return lender, Decimal(apr)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings()
    except SettingsFileError as e:
        print(f"lender simulator: configuration error: {e}", file=sys.stderr)
        return 2
    p = argparse.ArgumentParser(
        prog="python -m sim.lender",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=settings.lender_sim_port)
    p.add_argument("--db", type=Path, default=None, help="ledger SQLite file")
    p.add_argument("--lenders-file", type=Path, default=settings.lenders_file)
    p.add_argument(
        "--webhook-base-url",
        default=settings.api_url,
        help="DealFlow API base URL receiving /webhooks/lenders/{id}",
    )
    p.add_argument("--decision-delay", type=float, default=None, help="seconds (default 0.2)")
    p.add_argument(
        "--apr",
        type=_apr,
        action="append",
        default=[],
        metavar="LENDER_ID=PERCENT",
        help="per-lender APR (repeatable)",
    )
    p.add_argument("--retry-initial", type=float, default=None)
    p.add_argument("--retry-max", type=float, default=None)
    p.add_argument("--max-attempts", type=int, default=None)
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)

    overrides: dict[str, Any] = {"webhook_base_url": args.webhook_base_url}
    for name in ("decision_delay", "retry_initial", "retry_max", "max_attempts"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.apr:
        overrides["apr"] = dict(args.apr)
    try:
        config = SimConfig.from_settings(
            settings, db_path=args.db, lenders_file=args.lenders_file, **overrides
        )
    except LendersFileError as e:
        print(f"lender simulator: {e}", file=sys.stderr)
        return 2
    unknown = set(config.apr) - set(config.lenders)
    if unknown:
        print(f"lender simulator: --apr names unknown lenders: {sorted(unknown)}", file=sys.stderr)
        return 2

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("sim.lender").info(
        "lender simulator: %d lenders, ledger %s, webhooks to %s",
        len(config.lenders),
        config.db_path,
        config.webhook_base_url,
    )
    uvicorn.run(
        create_app(config), host=args.host, port=args.port, log_level=args.log_level.lower()
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
