"""Schema migrations: alembic configured from code, run under a lock so
several processes may migrate at once."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection

from dealflow.storage.db.engine import make_engine, normalise_url, writing

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """The alembic Config this project uses instead of an alembic.ini file.

    With `connection`, migrations run on it (inside its transaction); otherwise
    env.py connects to `url`.
    """
    # alembic is imported where it is used: a fifth of a second that the
    # worker and the API, which never migrate, would pay on every start.
    from alembic.config import Config

    cfg = Config()
    # Config values go through ConfigParser interpolation: escape '%'.
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def migrate(url: str) -> None:
    """Bring the database at `url` to the newest schema (`alembic upgrade head`).

    Safe to run from several processes at once: each waits for the others, then
    finds the schema current and does nothing.
    """
    engine = make_engine(url)
    with writing(engine) as conn:
        if conn.dialect.name == "postgresql":
            # Serialises migrators of the same schema until commit; DDL is
            # transactional here, so a failed upgrade leaves nothing behind.
            conn.exec_driver_sql(
                "SELECT pg_advisory_xact_lock(hashtext('dealflow.migrate:' || current_schema()))"
            )
        # On SQLite, BEGIN IMMEDIATE (see writing) is the lock.
        from alembic import command

        command.upgrade(alembic_config(connection=conn), "head")


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with make_engine(url).connect() as conn:
        rev: str | None = MigrationContext.configure(conn).get_current_revision()
        return rev
