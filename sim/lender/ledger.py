"""The simulator's own SQLite ledger: applications, disbursement requests,
withdrawals, per-deal scripts and the webhook outbox.

Plain sqlite3 (not sqlmodel) on purpose: the simulator must not register its
tables in the DealFlow database's metadata. One connection, guarded by a
re-entrant lock, so the FastAPI handlers (in worker threads) and the delivery
loop can share it. Writes go through `tx()` (BEGIN IMMEDIATE ... COMMIT), so
a check-then-insert is atomic; UNIQUE constraints back it up.

WAL with synchronous=NORMAL: a killed simulator process loses nothing that
was committed (only an OS crash could drop the last commits), which is what
the "restart resumes undelivered webhooks" promise needs.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS applications (
    ref               TEXT PRIMARY KEY,
    lender_id         TEXT NOT NULL,
    deal_id           TEXT NOT NULL,
    submission_no     INTEGER NOT NULL,
    idempotency_key   TEXT NOT NULL,
    -- the fingerprint (inbound.application_fingerprint; the whole body's hash
    -- in rows recorded before it), which a request under the same key must match
    body_hash         TEXT NOT NULL,
    body              TEXT NOT NULL,
    amount_requested  TEXT NOT NULL,
    decision          TEXT NOT NULL,
    decision_source   TEXT NOT NULL,
    script_step       INTEGER,
    approved_amount   TEXT,
    last_decision_seq INTEGER NOT NULL DEFAULT 0,
    created_at        TEXT NOT NULL,
    withdrawn         INTEGER NOT NULL DEFAULT 0,
    withdrawn_at      TEXT,
    UNIQUE (lender_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS ix_applications_deal ON applications (deal_id);

-- Every application request handled, the first and each accepted repeat, with
-- the documents as that request listed them: a repeat may carry fresher links.
CREATE TABLE IF NOT EXISTS application_requests (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    lender_id         TEXT NOT NULL,
    deal_id           TEXT NOT NULL,
    application_ref   TEXT NOT NULL,
    idempotency_key   TEXT NOT NULL,
    outcome           TEXT NOT NULL,
    documents         TEXT NOT NULL,
    received_at       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_application_requests_deal ON application_requests (deal_id);

CREATE TABLE IF NOT EXISTS disbursement_requests (
    request_id        TEXT PRIMARY KEY,
    lender_id         TEXT NOT NULL,
    deal_id           TEXT NOT NULL,
    application_ref   TEXT NOT NULL,
    attempt           INTEGER,
    amount            TEXT NOT NULL,
    idempotency_key   TEXT NOT NULL,
    body_hash         TEXT NOT NULL,
    body              TEXT NOT NULL,
    result            TEXT NOT NULL,
    script_step       INTEGER,
    created_at        TEXT NOT NULL,
    UNIQUE (lender_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS ix_disbursements_deal ON disbursement_requests (deal_id);

CREATE TABLE IF NOT EXISTS withdrawals (
    withdrawal_id     TEXT PRIMARY KEY,
    lender_id         TEXT NOT NULL,
    deal_id           TEXT NOT NULL,
    application_ref   TEXT NOT NULL,
    idempotency_key   TEXT NOT NULL,
    body_hash         TEXT NOT NULL,
    reason            TEXT NOT NULL,
    created_at        TEXT NOT NULL,
    UNIQUE (lender_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS ix_withdrawals_deal ON withdrawals (deal_id);

-- Money paid back on an unwound loan: one per application.
CREATE TABLE IF NOT EXISTS repayments (
    repayment_ref     TEXT PRIMARY KEY,
    lender_id         TEXT NOT NULL,
    deal_id           TEXT NOT NULL,
    application_ref   TEXT NOT NULL,
    idempotency_key   TEXT NOT NULL,
    body_hash         TEXT NOT NULL,
    amount            TEXT NOT NULL,
    transaction_ref   TEXT NOT NULL,
    reason            TEXT NOT NULL,
    created_at        TEXT NOT NULL,
    UNIQUE (lender_id, idempotency_key),
    UNIQUE (lender_id, application_ref)
);
CREATE INDEX IF NOT EXISTS ix_repayments_deal ON repayments (deal_id);

-- The durable outbox. `seq` orders deliveries; `id` is the webhook-id, which a
-- scripted duplicate delivery repeats, so it is not unique.
CREATE TABLE IF NOT EXISTS webhooks (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT NOT NULL,
    lender_id         TEXT NOT NULL,
    deal_id           TEXT NOT NULL,
    application_ref   TEXT NOT NULL,
    type              TEXT NOT NULL,
    target            TEXT NOT NULL,
    body              TEXT NOT NULL,
    sign_ok           INTEGER NOT NULL DEFAULT 1,
    status            TEXT NOT NULL DEFAULT 'pending',
    attempts          INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL,
    due_at            REAL NOT NULL,
    next_attempt_at   REAL NOT NULL,
    created_at        TEXT NOT NULL,
    last_attempt_at   TEXT,
    delivered_at      TEXT,
    last_status       INTEGER,
    last_error        TEXT
);
CREATE INDEX IF NOT EXISTS ix_webhooks_pending ON webhooks (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS ix_webhooks_app ON webhooks (lender_id, application_ref, status);
CREATE INDEX IF NOT EXISTS ix_webhooks_deal ON webhooks (deal_id);

CREATE TABLE IF NOT EXISTS scripts (
    deal_id           TEXT PRIMARY KEY,
    script            TEXT NOT NULL,
    state             TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);
"""

# A webhook waits while an earlier one for the same application is still
# pending: per-application FIFO, so a scripted stale decision or duplicate
# really arrives after the decision it follows, even across retries.
_ELIGIBLE = """
status = 'pending'
AND NOT EXISTS (
    SELECT 1 FROM webhooks e
    WHERE e.status = 'pending' AND e.lender_id = w.lender_id
      AND e.application_ref = w.application_ref AND e.seq < w.seq
)
"""


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | float) -> str:
    if isinstance(ts, int | float):
        ts = datetime.fromtimestamp(ts, UTC)
    return ts.isoformat()


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        with self._lock:
            if self._conn is not None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(SCHEMA)
            self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("ledger is not open")
        return self._conn

    @contextmanager
    def tx(self) -> Iterator[Ledger]:
        """One write transaction; nested calls join the outer one."""
        with self._lock:
            if self.conn.in_transaction:
                yield self
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    # ------------------------------------------------------------------ helpers

    def _one(self, sql: str, params: Iterable[Any] = ()) -> dict[str, Any] | None:
        with self._lock:
            row = self.conn.execute(sql, tuple(params)).fetchone()
        return dict(row) if row is not None else None

    def _all(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self.conn.execute(sql, tuple(params)).fetchall()]

    def _insert(self, table: str, row: dict[str, Any]) -> int:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._lock:
            cur = self.conn.execute(
                f"INSERT INTO {table} ({cols}) VALUES ({marks})", tuple(row.values())
            )
        return int(cur.lastrowid or 0)

    # ------------------------------------------------------------------ applications

    def find_application(self, lender_id: str, key: str) -> dict[str, Any] | None:
        return self._one(
            "SELECT * FROM applications WHERE lender_id = ? AND idempotency_key = ?",
            (lender_id, key),
        )

    def get_application(self, lender_id: str, ref: str) -> dict[str, Any] | None:
        return self._one(
            "SELECT * FROM applications WHERE lender_id = ? AND ref = ?", (lender_id, ref)
        )

    def insert_application(self, row: dict[str, Any]) -> None:
        self._insert("applications", row)

    def record_application_request(
        self,
        *,
        lender_id: str,
        deal_id: str,
        ref: str,
        key: str,
        outcome: str,
        documents: list[dict[str, Any]],
    ) -> None:
        self._insert(
            "application_requests",
            {
                "lender_id": lender_id,
                "deal_id": deal_id,
                "application_ref": ref,
                "idempotency_key": key,
                "outcome": outcome,
                "documents": json.dumps(documents),
                "received_at": iso(utcnow()),
            },
        )

    def update_application(self, ref: str, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self.conn.execute(
                f"UPDATE applications SET {sets} WHERE ref = ?", (*fields.values(), ref)
            )

    # ------------------------------------------------------------------ disbursements

    def paid_out(self, lender_id: str, ref: str) -> bool:
        """Whether a disbursement request of this application was paid."""
        row = self._one(
            "SELECT request_id FROM disbursement_requests WHERE lender_id = ? "
            "AND application_ref = ? AND result = 'completed' LIMIT 1",
            (lender_id, ref),
        )
        return row is not None

    def find_disbursement(self, lender_id: str, key: str) -> dict[str, Any] | None:
        return self._one(
            "SELECT * FROM disbursement_requests WHERE lender_id = ? AND idempotency_key = ?",
            (lender_id, key),
        )

    def insert_disbursement(self, row: dict[str, Any]) -> None:
        self._insert("disbursement_requests", row)

    def payout_of(self, lender_id: str, ref: str) -> dict[str, Any] | None:
        """What the lender paid out on an application (amount, transaction_ref):
        the data of its disbursement.completed webhook, if it sent one."""
        row = self._one(
            "SELECT body FROM webhooks WHERE lender_id = ? AND application_ref = ? "
            "AND type = 'disbursement.completed' ORDER BY seq LIMIT 1",
            (lender_id, ref),
        )
        if row is None:
            return None
        with contextlib.suppress(ValueError, KeyError, TypeError):
            data: dict[str, Any] = json.loads(row["body"])["data"]
            return data
        return None

    # ------------------------------------------------------------------ repayments

    def find_repayment(self, lender_id: str, key: str) -> dict[str, Any] | None:
        return self._one(
            "SELECT * FROM repayments WHERE lender_id = ? AND idempotency_key = ?",
            (lender_id, key),
        )

    def repayment_of(self, lender_id: str, ref: str) -> dict[str, Any] | None:
        return self._one(
            "SELECT * FROM repayments WHERE lender_id = ? AND application_ref = ?",
            (lender_id, ref),
        )

    def insert_repayment(self, row: dict[str, Any]) -> None:
        self._insert("repayments", row)

    # ------------------------------------------------------------------ withdrawals

    def find_withdrawal(self, lender_id: str, key: str) -> dict[str, Any] | None:
        return self._one(
            "SELECT * FROM withdrawals WHERE lender_id = ? AND idempotency_key = ?",
            (lender_id, key),
        )

    def withdrawal_of(self, lender_id: str, ref: str) -> dict[str, Any] | None:
        return self._one(
            "SELECT * FROM withdrawals WHERE lender_id = ? AND application_ref = ? "
            "ORDER BY created_at LIMIT 1",
            (lender_id, ref),
        )

    def insert_withdrawal(self, row: dict[str, Any]) -> None:
        self._insert("withdrawals", row)

    # ------------------------------------------------------------------ scripts

    def get_script(self, deal_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        row = self._one("SELECT script, state FROM scripts WHERE deal_id = ?", (deal_id,))
        if row is None:
            return None
        return json.loads(row["script"]), json.loads(row["state"])

    def put_script(self, deal_id: str, script: dict[str, Any], state: dict[str, Any]) -> None:
        with self._lock:
            self.conn.execute(
                "INSERT INTO scripts (deal_id, script, state, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (deal_id) DO UPDATE SET script = excluded.script, "
                "state = excluded.state, updated_at = excluded.updated_at",
                (deal_id, json.dumps(script), json.dumps(state), iso(utcnow())),
            )

    def save_script_state(self, deal_id: str, state: dict[str, Any]) -> None:
        with self._lock:
            self.conn.execute(
                "UPDATE scripts SET state = ?, updated_at = ? WHERE deal_id = ?",
                (json.dumps(state), iso(utcnow()), deal_id),
            )

    def delete_script(self, deal_id: str) -> bool:
        with self._lock:
            cur = self.conn.execute("DELETE FROM scripts WHERE deal_id = ?", (deal_id,))
        return cur.rowcount > 0

    # ------------------------------------------------------------------ webhook outbox

    def enqueue_webhook(
        self,
        *,
        webhook_id: str,
        lender_id: str,
        deal_id: str,
        application_ref: str,
        type: str,
        target: str,
        body: str,
        due_at: float,
        max_attempts: int,
        sign_ok: bool = True,
    ) -> int:
        return self._insert(
            "webhooks",
            {
                "id": webhook_id,
                "lender_id": lender_id,
                "deal_id": deal_id,
                "application_ref": application_ref,
                "type": type,
                "target": target,
                "body": body,
                "sign_ok": int(sign_ok),
                "max_attempts": max_attempts,
                "due_at": due_at,
                "next_attempt_at": due_at,
                "created_at": iso(utcnow()),
            },
        )

    def cancel_webhooks(self, lender_id: str, ref: str, type: str) -> int:
        with self._lock:
            cur = self.conn.execute(
                "UPDATE webhooks SET status = 'cancelled' WHERE status = 'pending' "
                "AND lender_id = ? AND application_ref = ? AND type = ?",
                (lender_id, ref, type),
            )
        return cur.rowcount

    def due_webhooks(self, now: float, exclude: Iterable[int], limit: int) -> list[dict[str, Any]]:
        excluded = list(exclude)
        not_in = f"AND seq NOT IN ({', '.join('?' for _ in excluded)})" if excluded else ""
        return self._all(
            f"SELECT * FROM webhooks w WHERE {_ELIGIBLE} AND next_attempt_at <= ? {not_in} "
            "ORDER BY next_attempt_at, seq LIMIT ?",
            (now, *excluded, limit),
        )

    def next_due_at(self, exclude: Iterable[int]) -> float | None:
        excluded = list(exclude)
        not_in = f"AND seq NOT IN ({', '.join('?' for _ in excluded)})" if excluded else ""
        row = self._one(
            f"SELECT MIN(next_attempt_at) AS t FROM webhooks w WHERE {_ELIGIBLE} {not_in}",
            excluded,
        )
        return None if row is None or row["t"] is None else float(row["t"])

    def webhook_status(self, seq: int) -> str | None:
        row = self._one("SELECT status FROM webhooks WHERE seq = ?", (seq,))
        return None if row is None else str(row["status"])

    def record_attempt(
        self,
        seq: int,
        *,
        http_status: int | None,
        error: str | None,
        delivered: bool,
        next_attempt_at: float | None,
    ) -> None:
        """One delivery try. Not delivered and no next attempt -> given up ('failed')."""
        now = iso(utcnow())
        with self.tx():
            row = self._one("SELECT status FROM webhooks WHERE seq = ?", (seq,))
            if row is None:
                return
            # A withdrawal may have cancelled the webhook while it was in flight;
            # keep what actually happened on the wire, but do not revive it.
            if delivered:
                status = "delivered"
            elif row["status"] != "pending":
                status = row["status"]
            else:
                status = "pending" if next_attempt_at is not None else "failed"
            self.conn.execute(
                "UPDATE webhooks SET attempts = attempts + 1, last_attempt_at = ?, "
                "last_status = ?, last_error = ?, status = ?, "
                "delivered_at = CASE WHEN ? THEN ? ELSE delivered_at END, "
                "next_attempt_at = COALESCE(?, next_attempt_at) WHERE seq = ?",
                (now, http_status, error, status, int(delivered), now, next_attempt_at, seq),
            )

    # ------------------------------------------------------------------ reporting

    def outbox_counts(self, now: float) -> dict[str, int]:
        """Webhooks by status, and how many pending ones are due now (chaos tests)."""
        counts = {"pending": 0, "delivered": 0, "failed": 0, "cancelled": 0}
        for row in self._all("SELECT status, COUNT(*) AS n FROM webhooks GROUP BY status"):
            counts[str(row["status"])] = int(row["n"])
        due = self._one(
            "SELECT COUNT(*) AS n FROM webhooks WHERE status = 'pending' AND next_attempt_at <= ?",
            (now,),
        )
        counts["due"] = int(due["n"]) if due else 0
        retried = self._one("SELECT COUNT(*) AS n FROM webhooks WHERE attempts > 1")
        counts["retried"] = int(retried["n"]) if retried else 0
        return counts

    def snapshot(self, deal_id: str | None = None) -> dict[str, Any]:
        where, params = ("WHERE deal_id = ?", (deal_id,)) if deal_id else ("", ())
        apps = self._all(f"SELECT * FROM applications {where} ORDER BY created_at, ref", params)
        requests = self._all(f"SELECT * FROM application_requests {where} ORDER BY seq", params)
        dsb = self._all(
            f"SELECT * FROM disbursement_requests {where} ORDER BY created_at, request_id", params
        )
        wdr = self._all(
            f"SELECT * FROM withdrawals {where} ORDER BY created_at, withdrawal_id", params
        )
        repaid = self._all(
            f"SELECT * FROM repayments {where} ORDER BY created_at, repayment_ref", params
        )
        hooks = self._all(f"SELECT * FROM webhooks {where} ORDER BY seq", params)
        for a in apps:
            a["withdrawn"] = bool(a["withdrawn"])
            a.pop("body_hash")
            a["body"] = json.loads(a["body"])
        for r in requests:
            r["documents"] = json.loads(r["documents"])
        for d in dsb:
            d.pop("body_hash")
            d["body"] = json.loads(d["body"])
        for w in [*wdr, *repaid]:
            w.pop("body_hash")
        for h in hooks:
            h["sign_ok"] = bool(h["sign_ok"])
            h["due_at"] = iso(h["due_at"])
            h["next_attempt_at"] = iso(h["next_attempt_at"])
            # A scripted malformed body stays a string, as sent.
            with contextlib.suppress(ValueError):
                h["body"] = json.loads(h["body"])
        return {
            "applications": apps,
            "application_requests": requests,
            "disbursement_requests": dsb,
            "withdrawals": wdr,
            "repayments": repaid,
            "webhooks": hooks,
        }
