"""The check against the truth that ends every chaos scenario.

Sources, each written by a different process:
* the workflow's own final status (`DealWorkflow.run`'s result),
* the lender simulator's ledger: applications, disbursement requests,
  withdrawals and the webhooks it sent, with their delivery outcome,
* the DealFlow database: the read model (`deals`), the webhook inbox and the
  compensations table.

Every difference is a `Finding` in one of four categories:
* lost        -- a deal that did not finish, a side effect or event the deal
                 relies on that is missing (an application the deal holds a
                 ref for but the lender never received, a webhook given up),
* duplicate   -- a side effect twice: two applications for one submission,
                 two disbursements, a refund or withdrawal the deal never ran,
                 an event applied twice,
* mismatch    -- the read model differs from the workflow,
* unexpected  -- the deal ended in another terminal state than its plan, or
                 a scenario-specific promise broke (no escalation, a client
                 retrying a 4xx, an unclear upload error).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.engine import Engine

from bench.chaos_robot import DealRun
from dealflow.models import Stage
from dealflow.storage import db

Category = Literal["lost", "duplicate", "mismatch", "unexpected"]


@dataclass(frozen=True)
class Finding:
    deal_id: str
    category: Category
    text: str


@dataclass
class Verdict:
    deals: int = 0
    as_expected: int = 0
    findings: list[Finding] = field(default_factory=list)

    def count(self, category: Category) -> int:
        """Deals with at least one finding of `category` (per-deal, not per-finding)."""
        return len({f.deal_id for f in self.findings if f.category == category})

    def add(self, deal_id: str, category: Category, text: str) -> None:
        self.findings.append(Finding(deal_id, category, text))


def _inbox(engine: Engine, deal_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(db.INBOX).where(db.INBOX.c.deal_id == deal_id)).mappings()
        return [dict(r) for r in rows]


def _compensations(engine: Engine, deal_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(db.COMPENSATIONS).where(db.COMPENSATIONS.c.deal_id == deal_id)
        ).mappings()
        return [dict(r) for r in rows]


def check_deal(
    v: Verdict,
    run: DealRun,
    ledger: dict[str, Any],
    engine: Engine,
    traffic: list[dict[str, Any]],
) -> None:
    """Compare one deal's three truths; add findings to `v`."""
    deal = run.deal_id
    before = len(v.findings)
    st = run.final
    if st is None:
        why = run.error or f"never finished (last seen in {run.last_stage})"
        v.add(deal, "lost", f"{why}; {run.stranded}" if run.stranded else why)
        return
    if st.stage is not run.plan.expect:
        v.add(
            deal,
            "unexpected",
            f"ended {st.stage.value}, expected {run.plan.expect.value} ({st.outcome_reason or ''})",
        )

    # -------------------------------------------------- applications: one per submission
    apps = ledger["applications"]
    refs = {s.application_ref: s for s in st.submissions if s.application_ref}
    for sub in st.submissions:
        key = f"{deal}:{sub.submission_no}"
        held = [a for a in apps if a["idempotency_key"] == key and a["lender_id"] == sub.lender_id]
        if sub.application_ref is not None:
            if len(held) != 1 or held[0]["ref"] != sub.application_ref:
                v.add(
                    deal,
                    "lost",
                    f"submission {sub.submission_no}: the deal holds "
                    f"{sub.application_ref} but {sub.lender_id} has {[a['ref'] for a in held]}",
                )
        elif held:
            v.add(
                deal,
                "duplicate",
                f"submission {sub.submission_no} ({sub.status}) has no ref "
                f"but {sub.lender_id} received {len(held)} application(s)",
            )
    for a in apps:
        if a["ref"] not in refs:
            v.add(
                deal,
                "duplicate",
                f"{a['lender_id']} holds application {a['ref']} "
                f"(key {a['idempotency_key']}) the deal does not know",
            )

    # -------------------------------------------------- disbursement: one per funded deal
    dsb = ledger["disbursement_requests"]
    completed = [d for d in st.disbursements if d.status == "completed"]
    funded = st.stage is Stage.COMPLETED
    if len(completed) > 1:
        v.add(deal, "duplicate", f"{len(completed)} completed disbursements in the workflow")
    per_attempt = Counter(d["attempt"] for d in dsb)
    for attempt, n in per_attempt.items():
        if n > 1:
            v.add(deal, "duplicate", f"{n} disbursement requests for attempt {attempt}")
    done_at_lender = [d for d in dsb if d["result"] == "completed"]
    if funded and (len(completed) != 1 or len(done_at_lender) != 1):
        v.add(
            deal,
            "lost" if not done_at_lender else "duplicate",
            f"funded deal: {len(completed)} completed in the workflow, "
            f"{len(done_at_lender)} completed requests at the lender",
        )
    if not funded and done_at_lender:
        v.add(
            deal,
            "duplicate",
            f"{len(done_at_lender)} disbursement(s) for a deal that ended {st.stage.value}",
        )
    asked = {d.attempt for d in st.disbursements if d.status != "requesting"}
    for d in dsb:
        if d["attempt"] not in asked:
            v.add(
                deal,
                "duplicate",
                f"disbursement request attempt {d['attempt']} at the lender "
                "that the deal never completed asking for",
            )

    # -------------------------------------------------- compensations: each once, as run
    keys = Counter(c.key for c in st.compensations)
    for key, n in keys.items():
        if n > 1:
            v.add(deal, "duplicate", f"compensation {key} registered {n} times in the workflow")
    wdr = ledger["withdrawals"]
    withdrawn = Counter(w["application_ref"] for w in wdr)
    done_withdrawals = {
        c.detail.get("application_ref")
        for c in st.compensations
        if c.kind == "withdraw_application" and c.status == "done"
    }
    for ref in done_withdrawals:
        if withdrawn.get(ref, 0) != 1:
            v.add(
                deal,
                "lost",
                f"withdrawal of {ref} done in the workflow, {withdrawn.get(ref, 0)} at the lender",
            )
    for ref, n in withdrawn.items():
        if ref not in done_withdrawals:
            v.add(
                deal,
                "duplicate",
                f"lender recorded {n} withdrawal(s) of {ref} the deal never completed",
            )
    rows = _compensations(engine, deal)
    recorded = Counter(r["key"] for r in rows)
    ran = {
        c.key: c
        for c in st.compensations
        if c.kind != "withdraw_application" and c.status == "done"
    }
    for key, c in ran.items():
        if recorded.get(key, 0) != 1:
            v.add(
                deal,
                "lost",
                f"compensation {c.kind} done in the workflow, "
                f"{recorded.get(key, 0)} row(s) in the database",
            )
    for key, n in recorded.items():
        if key not in ran or n > 1:
            v.add(deal, "duplicate", f"compensation row {key} x{n} the deal did not run")
    refunds = [r for r in rows if r["kind"] == "refund_down_payment"]
    paid = st.money.down_payment_received is not None
    want_refunds = 1 if st.stage is Stage.CANCELLED and paid else 0
    if len(refunds) != want_refunds:
        v.add(
            deal,
            "lost" if len(refunds) < want_refunds else "duplicate",
            f"{len(refunds)} refund(s) recorded, expected {want_refunds}",
        )

    # -------------------------------------------------- webhooks: every delivered one once
    hooks = ledger["webhooks"]
    inbox = _inbox(engine, deal)
    by_id: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in inbox:
        by_id.setdefault((row["lender_id"], row["webhook_id"]), []).append(row)
    for (lender, wid), rows_ in by_id.items():
        if len(rows_) > 1:
            v.add(deal, "duplicate", f"webhook {wid} of {lender} stored {len(rows_)} times")
    for row in inbox:
        if row["status"] != "delivered":
            v.add(
                deal,
                "unexpected",
                f"inbox holds webhook {row['webhook_id']} as "
                f"{row['status']}: {str(row['error'])[:160]}",
            )
    decided_ids = Counter(d.webhook_id for s in st.submissions for d in s.decisions)
    for wid, n in decided_ids.items():
        if n > 1:
            v.add(deal, "duplicate", f"decision webhook {wid} applied {n} times")
    seen: set[str] = set()
    for h in hooks:
        wid = h["id"]
        if h["status"] == "cancelled":
            continue
        if h["status"] in ("failed", "pending"):
            v.add(
                deal,
                "lost",
                f"webhook {wid} ({h['type']}) {h['status']} after "
                f"{h['attempts']} attempts: {h['last_status']} {str(h['last_error'])[:120]}",
            )
            continue
        if wid in seen:
            continue  # a scripted duplicate delivery of the same id
        seen.add(wid)
        rows_ = by_id.get((h["lender_id"], wid), [])
        if not rows_:
            v.add(deal, "lost", f"webhook {wid} ({h['type']}) delivered but not in the inbox")
            continue
        if rows_[0]["status"] != "delivered":
            v.add(
                deal,
                "mismatch",
                f"webhook {wid} answered 2xx but stored as "
                f"{rows_[0]['status']}: {rows_[0]['error']}",
            )
        if h["type"] == "application.decided" and decided_ids.get(wid, 0) != 1:
            v.add(
                deal,
                "lost",
                f"decision webhook {wid} delivered, recorded by the deal "
                f"{decided_ids.get(wid, 0)} times",
            )
        if h["type"] == "disbursement.completed":
            body = h["body"] if isinstance(h["body"], dict) else json.loads(h["body"])
            txn = body["data"]["transaction_ref"]
            got = [d for d in st.disbursements if d.transaction_ref == txn]
            if len(got) != 1:
                v.add(
                    deal,
                    "lost" if not got else "duplicate",
                    f"disbursement {txn} delivered, {len(got)} in the deal",
                )

    # -------------------------------------------------- read model == workflow
    model = db.get_deal(engine, deal)
    if model is None:
        v.add(deal, "mismatch", "no read-model row")
    else:
        diffs = [
            f"{name} {got!r} != {want!r}"
            for name, got, want in (
                ("stage", model.stage, st.stage.value),
                ("version", model.version, st.version),
                ("lender_id", model.lender_id, st.lender_id),
            )
            if got != want
        ]
        if diffs:
            v.add(deal, "mismatch", "read model: " + "; ".join(diffs))

    # -------------------------------------------------- 4xx: escalate, don't hammer
    for lender in run.plan.reject_lenders:
        sent = sum(
            t["requests"]
            for t in traffic
            if t["endpoint"] == "applications" and t["lender_id"] == lender and t["deal_id"] == deal
        )
        subs = [s for s in st.submissions if s.lender_id == lender]
        if sent != len(subs) or not subs:
            v.add(
                deal,
                "unexpected",
                f"{lender} refused with a 4xx and got {sent} application "
                f"request(s) for {len(subs)} submission(s): the client retried a verdict",
            )
        if any(s.status != "rejected" for s in subs):
            v.add(
                deal,
                "unexpected",
                f"{lender}: submission not marked rejected ({[s.status for s in subs]})",
            )
        notices = [
            n
            for n in st.notices
            if n.kind == "escalation" and lender in n.message and "rejected" in n.message
        ]
        if not notices:
            v.add(
                deal,
                "unexpected",
                f"{lender} refused with a 4xx but the deal recorded no escalation notice",
            )

    # -------------------------------------------------- documents while S3 was down
    for problem in run.upload_problems:
        v.add(deal, "unexpected", f"upload: {problem}")

    if len(v.findings) == before:
        v.as_expected += 1
