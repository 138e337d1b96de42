"""`python -m dealflow.storage.db`: apply migrations, show the schema revision."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sqlalchemy.engine import make_url

from dealflow.storage import db


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dealflow.storage.db", description=db.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("upgrade", "apply all migrations (alembic upgrade head)"),
        ("current", "print the schema revision of the database"),
    ):
        command_parser = sub.add_parser(name, help=help_text)
        command_parser.add_argument("--url", help="database URL (default: DEALFLOW_DATABASE_URL)")
    args = parser.parse_args(argv)

    from dealflow import startup
    from dealflow.config import get_settings

    try:
        startup.check_production(get_settings())
    except startup.StartupError as e:
        for line in str(e).splitlines():
            print(f"dealflow.storage.db: {line}", file=sys.stderr)
        return startup.EXIT_CANNOT_START
    url: str = args.url or get_settings().database_url
    shown = make_url(db.normalise_url(url)).render_as_string(hide_password=True)
    if args.command == "upgrade":
        db.migrate(url)
        print(f"{shown}: at revision {db.current_revision(url)}")
    else:
        print(f"{shown}: at revision {db.current_revision(url) or '(none)'}")
    return 0
