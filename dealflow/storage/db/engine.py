"""Engines (one per URL per process) and the write transaction every writer
uses, with the INSERT ... ON CONFLICT both backends share."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, make_url

# How long a SQLite writer waits for another writer before "database is locked".
# Our transactions last milliseconds; waiting is better than failing an activity.
SQLITE_BUSY_TIMEOUT_MS = 15_000

# Connection execution option: the transaction will write, so on SQLite take the
# write lock at BEGIN rather than upgrading a read lock later (an upgrade under
# WAL fails immediately with SQLITE_BUSY instead of waiting for busy_timeout).
_WRITE_OPTION = "dealflow_write"


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def normalise_url(url: str) -> str:
    """psycopg 3 is the PostgreSQL driver we ship; accept the common spellings."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> Engine:
    """The engine for `url`, one per URL per process (engines own the pool).

    For PostgreSQL a schema other than the default can be selected in the URL,
    e.g. `...?options=-csearch_path%3Dmyschema`; migrations honour it too.
    """
    url = normalise_url(url)
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _create_engine(url)
            _engines[url] = engine
        return engine


def dispose_engine(url: str) -> None:
    """Close the pool of `url`'s engine and forget it (tests, shutdown)."""
    with _engines_lock:
        engine = _engines.pop(normalise_url(url), None)
    if engine is not None:
        engine.dispose()


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module: in its legacy mode it skips
        # BEGIN before SELECT and DDL, so reads are not repeatable and
        # migrations are not atomic. The "begin" hook below emits it instead.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            # WAL lets readers (the API listing deals) run beside the writer.
            cursor.execute("PRAGMA journal_mode = WAL")
            # A stored webhook is acknowledged 2xx: it must survive power loss.
            cursor.execute("PRAGMA synchronous = FULL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(_WRITE_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """One write transaction, committed on success, rolled back on error."""
    with engine.connect() as conn:
        conn.execution_options(**{_WRITE_OPTION: True})
        with conn.begin():
            yield conn


def dialect_insert(conn: Connection, table: Table) -> Any:
    """A dialect INSERT that supports ON CONFLICT (SQLite and PostgreSQL agree)."""
    return dialect_insert_for(conn.dialect.name, table)


def dialect_insert_for(name: str, table: Table) -> Any:
    """The ON CONFLICT-capable INSERT of the dialect called `name`."""
    if name == "postgresql":
        return pg_dialect.insert(table)
    if name == "sqlite":
        return sqlite_dialect.insert(table)
    raise NotImplementedError(f"database dialect {name!r} is not supported (sqlite, postgresql)")


def wrote(conn: Connection, stmt: Any) -> bool:
    # RETURNING yields a row only for a row actually inserted or updated.
    # SQLAlchemy does not promise an INSERT's rowcount (psycopg gives -1 here).
    return conn.execute(stmt).first() is not None


def wrote_with(conn: Connection, stmt: Any, params: Mapping[str, Any]) -> bool:
    return conn.execute(stmt, params).first() is not None


def insert_if_absent(engine: Engine, table: Table, values: Mapping[str, Any]) -> bool:
    """Insert `values` unless a row with their primary key exists; True if inserted."""
    with writing(engine) as conn:
        return wrote_with(conn, _insert_if_absent_statement(conn.dialect.name, table), values)


@functools.cache
def _insert_if_absent_statement(dialect: str, table: Table) -> Any:
    pk = [c.name for c in table.primary_key.columns]
    return (
        dialect_insert_for(dialect, table)
        .on_conflict_do_nothing(index_elements=pk)
        .returning(*table.primary_key.columns)
    )
