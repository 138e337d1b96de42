"""The lender simulator against real sockets: the simulator under uvicorn in a
background thread (and once as `python -m sim.lender`, killed with
SIGKILL and restarted), posting signed webhooks to a small real receiver that
verifies them with `standardwebhooks`."""

from __future__ import annotations

import copy
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from dealflow.config import LenderConfig, load_lenders
from dealflow.models import ApplicationPackage, Decision
from sim.lender.app import create_app
from sim.lender.config import SimConfig
from sim.lender.underwriting import decide, max_principal, monthly_payment, round_down

ROOT = Path(__file__).resolve().parents[2]
LENDERS_FILE = ROOT / "examples" / "lenders.toml"
ACME = "acme-auto-finance"
BETA = "beta-motor-credit"
CATHAY = "cathay-car-loans"

DECIDED_FIELDS = {
    "deal_id",
    "application_ref",
    "decision_seq",
    "decision",
    "approved_amount",
    "apr",
    "term_months",
    "stipulations",
    "reasons",
}


# --------------------------------------------------------------------------- harness


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class ServerThread:
    """A real uvicorn server on a free localhost port, in a background thread."""

    def __init__(self, app: FastAPI) -> None:
        self.sock = _bound_socket()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        )
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@dataclass
class Receiver:
    """Stands in for the DealFlow API's webhook endpoint."""

    lenders: dict[str, LenderConfig]
    calls: list[dict[str, Any]] = field(default_factory=list)
    # deal_id -> how many more calls for that deal to answer with 500
    fail: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/webhooks/lenders/{lender_id}")
        async def receive(lender_id: str, request: Request) -> Response:
            raw = (await request.body()).decode()
            headers = dict(request.headers)
            call: dict[str, Any] = {
                "lender_id": lender_id,
                "webhook_id": headers.get("webhook-id"),
                "timestamp": headers.get("webhook-timestamp"),
                "raw": raw,
            }
            try:
                payload = Webhook(self.lenders[lender_id].webhook_secret).verify(raw, headers)
            except (WebhookVerificationError, KeyError):
                call.update(verified=False, status=401)
                with self.lock:
                    self.calls.append(call)
                return Response(status_code=401)
            call.update(verified=True, payload=payload)
            deal_id = payload["data"]["deal_id"]
            with self.lock:
                if self.fail.get(deal_id, 0) > 0:
                    self.fail[deal_id] -= 1
                    call["status"] = 500
                else:
                    call["status"] = 204
                self.calls.append(call)
            return Response(status_code=call["status"])

        return app

    def accepted(self, deal_id: str) -> list[dict[str, Any]]:
        """Verified webhooks for the deal answered 2xx, in arrival order."""
        with self.lock:
            return [
                c
                for c in self.calls
                if c.get("verified")
                and c["status"] < 300
                and c["payload"]["data"]["deal_id"] == deal_id
            ]

    def all_for(self, deal_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [
                c
                for c in self.calls
                if c.get("verified") and c["payload"]["data"]["deal_id"] == deal_id
            ]


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def new_deal() -> str:
    return f"deal-{uuid.uuid4().hex[:12]}"


def package(
    deal_id: str,
    submission_no: int = 1,
    *,
    income: str = "18000.00",
    price: str = "150000.00",
    requested: str = "105000.00",
    product: str = "new_car",
    term: int = 36,
) -> dict[str, Any]:
    down = str(Decimal(price) - Decimal(requested))
    return {
        "deal_id": deal_id,
        "submission_no": submission_no,
        "dealer_id": "dealer-sh-001",
        "product": product,
        "term_months": term,
        "vehicle_price": price,
        "down_payment": down,
        "amount_requested": requested,
        "vehicle": {"vin": "LFV2A2158P3012345", "condition": "new", "price": price},
        "applicant": {"full_name": "Wang Fang", "monthly_income": income, "married": False},
        "documents": [
            {
                "kind": "id_card",
                "party": "applicant",
                "sha256": "a" * 64,
                "content_type": "image/png",
                "url": "http://docs.invalid/1",
            },
        ],
    }


def disbursement(
    deal_id: str, ref: str, attempt: int = 1, amount: str = "105000.00", lender_id: str = ACME
) -> dict[str, Any]:
    return {
        "deal_id": deal_id,
        "lender_id": lender_id,
        "application_ref": ref,
        "attempt": attempt,
        "amount": amount,
        "loan_contract_no": "LC-1",
        "insurance_policy_no": "POL-1",
        "first_beneficiary": "Acme Auto Finance Co., Ltd.",
        "repayment_bank": "ICBC",
    }


@pytest.fixture(scope="module")
def lenders() -> dict[str, LenderConfig]:
    return load_lenders(LENDERS_FILE)


@pytest.fixture(scope="module")
def receiver(lenders: dict[str, LenderConfig]) -> Iterator[tuple[Receiver, str]]:
    rec = Receiver(lenders)
    with ServerThread(rec.app()) as srv:
        yield rec, srv.url


def fast_config(lenders: dict[str, LenderConfig], db: Path, webhook_url: str) -> SimConfig:
    return SimConfig(
        lenders=lenders,
        db_path=db,
        webhook_base_url=webhook_url,
        decision_delay=0.05,
        retry_initial=0.05,
        retry_factor=2.0,
        retry_max=0.2,
        max_attempts=20,
        delivery_timeout=2.0,
    )


@dataclass
class Sim:
    client: httpx.Client
    receiver: Receiver

    def submit(self, lender: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
        key = key or f"{body['deal_id']}:{body['submission_no']}"
        return self.client.post(
            f"/lenders/{lender}/applications", json=body, headers={"Idempotency-Key": key}
        )

    def ledger(self, deal_id: str) -> dict[str, Any]:
        r = self.client.get("/_sim/ledger", params={"deal_id": deal_id})
        assert r.status_code == 200
        return dict(r.json())

    def decisions(self, deal_id: str, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        calls = wait_for(
            lambda: len(self.receiver.accepted(deal_id)) >= n and self.receiver.accepted(deal_id),
            timeout,
        )
        return [c["payload"] for c in calls]


@pytest.fixture(scope="module")
def sim(
    lenders: dict[str, LenderConfig],
    receiver: tuple[Receiver, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Sim]:
    rec, url = receiver
    db = tmp_path_factory.mktemp("lender_sim") / "sim.db"
    with (
        ServerThread(create_app(fast_config(lenders, db, url))) as srv,
        httpx.Client(base_url=srv.url, trust_env=False, timeout=10) as client,
    ):
        yield Sim(client, rec)


# --------------------------------------------------------------------------- underwriting


def _pkg(**kw: Any) -> ApplicationPackage:
    return ApplicationPackage.model_validate(package("deal-rules", **kw))


def test_underwriting_figures_are_exact_decimals() -> None:
    assert monthly_payment(Decimal("105000.00"), Decimal("6.50"), 36) == Decimal("3218.15")
    assert monthly_payment(Decimal("120000.00"), Decimal("0"), 24) == Decimal("5000.00")
    assert max_principal(Decimal("2500.00"), Decimal("6.50"), 36) == Decimal("81568.72")
    assert round_down(Decimal("81568.72")) == Decimal("81000.00")
    assert round_down(Decimal("999.99")) == Decimal("0.00")


@pytest.mark.parametrize(
    ("income", "decision", "amount"),
    [
        ("18000.00", Decision.APPROVED, "105000.00"),
        ("6436.30", Decision.APPROVED, "105000.00"),  # payment exactly 50 %
        ("6436.29", Decision.COUNTER_OFFER, "104000.00"),
        ("5000.00", Decision.COUNTER_OFFER, "81000.00"),
        ("4598.00", Decision.COUNTER_OFFER, "75000.00"),  # payment 69.99 %
        ("4597.00", Decision.DECLINED, None),  # payment 70.01 %
    ],
)
def test_underwriting_affordability(income: str, decision: Decision, amount: str | None) -> None:
    d = decide(_pkg(income=income), Decimal("6.50"))
    assert d.decision == decision
    assert d.approved_amount == (None if amount is None else Decimal(amount))
    assert d.monthly_payment == Decimal("3218.15")
    assert (d.apr, d.term_months, d.stipulations) == (Decimal("6.50"), 36, [])
    if decision == Decision.DECLINED:
        assert [r["code"] for r in d.reasons] == ["DTI_TOO_HIGH"]
        assert d.reasons[0]["text"] == (
            "The monthly payment is more than 50.0% of the applicant's monthly income."
        )
    else:
        assert d.reasons == []


def test_a_decline_reason_names_the_rule_not_the_applicants_income() -> None:
    """The reason text reaches the customer's adverse-action notice and the
    dealer's notifications: no income, no payment, no figure of the applicant."""
    d = decide(_pkg(income="4597.00"), Decimal("6.50"))
    text = " ".join(reason["text"] for reason in d.reasons)
    for figure in ("4597", "4,597", "3218", "3,218", "70.01"):
        assert figure not in text


@pytest.mark.parametrize(
    ("product", "requested", "codes"),
    [
        ("used_car", "70000.00", []),
        ("used_car", "70000.01", ["LTV_EXCEEDED"]),
        ("new_car", "80000.00", []),
        ("new_car", "80000.01", ["LTV_EXCEEDED"]),
        ("new_energy_car", "85000.00", []),
        ("new_energy_car", "85000.01", ["LTV_EXCEEDED"]),
    ],
)
def test_underwriting_loan_ratio(product: str, requested: str, codes: list[str]) -> None:
    d = decide(_pkg(product=product, price="100000.00", requested=requested), Decimal("6.50"))
    assert [r["code"] for r in d.reasons] == codes
    assert d.decision == (Decision.DECLINED if codes else Decision.APPROVED)


def test_underwriting_ltv_and_dti_both_reported_and_apr_override() -> None:
    d = decide(
        _pkg(product="used_car", price="100000.00", requested="75000.00", income="3000.00"),
        Decimal("6.50"),
    )
    assert [r["code"] for r in d.reasons] == ["LTV_EXCEEDED", "DTI_TOO_HIGH"]
    assert d.approved_amount is None
    zero = decide(_pkg(income="5000.00"), Decimal("0.00"))
    # 105,000 / 36 = 2,916.67 > 2,500 -> counter offer of 2,500 x 36 = 90,000.
    assert (zero.decision, zero.approved_amount) == (Decision.COUNTER_OFFER, Decimal("90000.00"))


# --------------------------------------------------------------------------- HTTP basics


def test_health_and_unknown_lender(sim: Sim) -> None:
    assert sim.client.get("/healthz").json() == {"status": "ok"}
    r = sim.submit("no-such-lender", package(new_deal()))
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "no-such-lender" in r.json()["detail"]


def test_application_submission_is_idempotent(sim: Sim) -> None:
    deal = new_deal()
    body = package(deal)
    r1 = sim.submit(ACME, body)
    r2 = sim.submit(ACME, body)
    assert r1.status_code == r2.status_code == 202
    assert r1.json()["application_ref"] == r2.json()["application_ref"]

    other = package(deal, requested="100000.00")
    r3 = sim.submit(ACME, other, key=f"{deal}:1")
    assert r3.status_code == 422
    assert "Idempotency-Key" in r3.json()["detail"]

    r4 = sim.client.post(f"/lenders/{ACME}/applications", json=body)
    assert r4.status_code == 400
    assert r4.headers["content-type"].startswith("application/problem+json")

    bad = dict(body, amount_requested="lots")
    assert sim.submit(ACME, bad, key=f"{deal}:bad").status_code == 422

    # Concurrent duplicates of a new submission: one application, one ref.
    body2 = package(deal, submission_no=2)
    refs: list[str] = []

    def post() -> None:
        with httpx.Client(base_url=str(sim.client.base_url), trust_env=False) as c:
            r = c.post(
                f"/lenders/{ACME}/applications",
                json=body2,
                headers={"Idempotency-Key": f"{deal}:2"},
            )
            assert r.status_code == 202
            refs.append(r.json()["application_ref"])

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(refs) == 8 and len(set(refs)) == 1

    apps = sim.ledger(deal)["applications"]
    assert sorted((a["submission_no"], a["idempotency_key"]) for a in apps) == [
        (1, f"{deal}:1"),
        (2, f"{deal}:2"),
    ]
    # One decision per application, not one per request.
    decided = sim.decisions(deal, 2)
    wait_for(lambda: all(w["status"] == "delivered" for w in sim.ledger(deal)["webhooks"]))
    assert len(decided) == 2
    assert len(sim.ledger(deal)["webhooks"]) == 2


def test_the_fingerprint_leaves_out_document_links_but_not_the_documents(sim: Sim) -> None:
    """A retry under the same Idempotency-Key may carry freshly signed links:
    the same application. Another kind, party, sha256 or content type is
    another package under a used key: refused, as any other difference."""
    deal = new_deal()
    body = package(deal)
    first = sim.submit(ACME, body)
    fresh = copy.deepcopy(body)
    fresh["documents"][0]["url"] = "http://docs.invalid/1?expires=99&sig=later"
    again = sim.submit(ACME, fresh)
    assert first.status_code == again.status_code == 202
    assert first.json()["application_ref"] == again.json()["application_ref"]

    for name, other in [
        ("kind", "drivers_licence"),
        ("party", "spouse"),
        ("sha256", "b" * 64),
        ("content_type", "application/pdf"),
    ]:
        changed = copy.deepcopy(fresh)
        changed["documents"][0][name] = other
        refused = sim.submit(ACME, changed)
        assert refused.status_code == 422, name
        assert "Idempotency-Key" in refused.json()["detail"]

    ledger = sim.ledger(deal)
    assert len(ledger["applications"]) == 1
    assert [(r["outcome"], r["documents"][0]["url"]) for r in ledger["application_requests"]] == [
        ("created", "http://docs.invalid/1"),
        ("repeat", "http://docs.invalid/1?expires=99&sig=later"),
    ]


def test_rule_decision_webhook_is_signed_and_complete(sim: Sim) -> None:
    deal = new_deal()
    ref = sim.submit(ACME, package(deal)).json()["application_ref"]
    [event] = sim.decisions(deal, 1)
    assert event["type"] == "application.decided"
    datetime.fromisoformat(event["timestamp"])
    data = event["data"]
    assert set(data) == DECIDED_FIELDS
    assert data == {
        "deal_id": deal,
        "application_ref": ref,
        "decision_seq": 1,
        "decision": "approved",
        "approved_amount": "105000.00",
        "apr": "6.50",
        "term_months": 36,
        "stipulations": [],
        "reasons": [],
    }
    [hook] = sim.ledger(deal)["webhooks"]
    assert hook["status"] == "delivered" and hook["attempts"] == 1
    assert hook["last_status"] == 204
    assert hook["target"].endswith(f"/webhooks/lenders/{ACME}")

    # Rules: counter offer and decline reach the receiver too.
    deal2 = new_deal()
    sim.submit(ACME, package(deal2, income="5000.00"))
    sim.submit(BETA, package(deal2, 2, income="4000.00"))
    got = {e["data"]["decision"]: e["data"] for e in sim.decisions(deal2, 2)}
    assert got["counter_offer"]["approved_amount"] == "81000.00"
    assert got["declined"]["approved_amount"] is None
    assert [r["code"] for r in got["declined"]["reasons"]] == ["DTI_TOO_HIGH"]


# --------------------------------------------------------------------------- scripts


def test_scripted_sequence_per_lender(sim: Sim) -> None:
    deal = new_deal()
    script = {
        "lenders": {
            ACME: [
                {"decision": "declined", "reasons": [{"code": "R1", "text": "Thin file"}]},
                {
                    "decision": "conditional",
                    "stipulations": [
                        {"code": "EMPLOYMENT_LETTER", "description": "Employer's letter"},
                        {"code": "GUARANTOR", "description": "A guarantor", "kind": "condition"},
                    ],
                },
                {"decision": "counter_offer", "approved_amount": "90000.00"},
                {"decision": "approved"},
            ]
        },
        "decision_delay": 0.0,
    }
    assert sim.client.put(f"/_sim/scripts/{deal}", json=script).status_code == 200
    # Income 5,000: the rules alone would make a counter offer of 81,000.
    for n in range(1, 6):
        assert sim.submit(ACME, package(deal, n, income="5000.00")).status_code == 202
        sim.decisions(deal, n)
    assert sim.submit(BETA, package(deal, 6, income="5000.00")).status_code == 202
    events = [e["data"] for e in sim.decisions(deal, 6)]
    by_ref = {a["ref"]: a for a in sim.ledger(deal)["applications"]}
    seen = [(by_ref[e["application_ref"]]["submission_no"], e) for e in events]
    seen.sort(key=lambda p: p[0])
    d = [e for _, e in seen]
    assert d[0]["decision"] == "declined"
    assert d[0]["reasons"] == [{"code": "R1", "text": "Thin file"}]
    assert d[1]["decision"] == "conditional"
    # Several stipulations of either kind; one without a kind goes out without
    # it, as lenders sent them before the field (DealFlow reads a document).
    assert d[1]["stipulations"] == [
        {"code": "EMPLOYMENT_LETTER", "description": "Employer's letter"},
        {"code": "GUARANTOR", "description": "A guarantor", "kind": "condition"},
    ]
    assert d[1]["approved_amount"] == "105000.00"
    assert (d[2]["decision"], d[2]["approved_amount"]) == ("counter_offer", "90000.00")
    assert (d[3]["decision"], d[3]["approved_amount"]) == ("approved", "105000.00")
    # Script exhausted, and a lender without a script: the rules.
    assert (d[4]["decision"], d[4]["approved_amount"]) == ("counter_offer", "81000.00")
    assert (d[5]["decision"], d[5]["approved_amount"]) == ("counter_offer", "81000.00")
    assert all(e["decision_seq"] == 1 for e in d)
    sources = sorted((a["submission_no"], a["decision_source"]) for a in by_ref.values())
    assert [s for _, s in sources] == ["script"] * 4 + ["rules"] * 2

    got = sim.client.get(f"/_sim/scripts/{deal}").json()
    assert got["state"]["lenders"] == {ACME: 4}
    assert sim.client.delete(f"/_sim/scripts/{deal}").status_code == 204
    assert sim.client.get(f"/_sim/scripts/{deal}").status_code == 404
    bad = sim.client.put(f"/_sim/scripts/{deal}", json={"lenders": {"nobody": []}})
    assert bad.status_code == 422
    typo = sim.client.put(f"/_sim/scripts/{deal}", json={"lenderz": {}})
    assert typo.status_code == 422


def test_silent_step_never_answers(sim: Sim) -> None:
    deal = new_deal()
    sim.client.put(
        f"/_sim/scripts/{deal}",
        json={"lenders": {ACME: [{"decision": "silent"}]}, "decision_delay": 0},
    )
    assert sim.submit(ACME, package(deal)).status_code == 202
    time.sleep(0.4)
    assert sim.receiver.all_for(deal) == []
    ledger = sim.ledger(deal)
    assert [a["decision"] for a in ledger["applications"]] == ["silent"]
    assert ledger["webhooks"] == []
    # Nothing was approved, so nothing can be disbursed.
    ref = ledger["applications"][0]["ref"]
    r = sim.client.post(
        f"/lenders/{ACME}/applications/{ref}/disbursement-requests",
        json=disbursement(deal, ref),
        headers={"Idempotency-Key": f"{deal}:d1"},
    )
    assert r.status_code == 409


def test_stale_and_duplicate_webhooks(sim: Sim) -> None:
    deal = new_deal()
    sim.client.put(
        f"/_sim/scripts/{deal}",
        json={
            "lenders": {
                ACME: [{"decision": "approved", "also_send_stale": True, "duplicate": True}]
            },
            "decision_delay": 0,
        },
    )
    ref = sim.submit(ACME, package(deal)).json()["application_ref"]
    calls = wait_for(lambda: len(sim.receiver.accepted(deal)) >= 3 and sim.receiver.accepted(deal))
    first, dup, stale = calls
    assert first["webhook_id"] == dup["webhook_id"] != stale["webhook_id"]
    assert first["raw"] == dup["raw"]
    real = first["payload"]["data"]
    old = stale["payload"]["data"]
    assert (real["application_ref"], old["application_ref"]) == (ref, ref)
    assert real["decision"] == "approved" and old["decision"] == "declined"
    assert old["decision_seq"] < real["decision_seq"]
    assert old["decision_seq"] >= 1
    assert stale["payload"]["timestamp"] < first["payload"]["timestamp"]
    time.sleep(0.1)
    assert len(sim.receiver.all_for(deal)) == 3
    hooks = sim.ledger(deal)["webhooks"]
    assert [h["id"] for h in hooks] == [first["webhook_id"]] * 2 + [stale["webhook_id"]]


# --------------------------------------------------------------------------- disbursement


def test_disbursement_failed_then_completed(sim: Sim) -> None:
    deal = new_deal()
    sim.client.put(
        f"/_sim/scripts/{deal}",
        json={
            "disbursements": [
                {"result": "failed", "reason": "bank rejected"},
                {"result": "completed"},
            ],
        },
    )
    ref = sim.submit(ACME, package(deal)).json()["application_ref"]
    sim.decisions(deal, 1)
    url = f"/lenders/{ACME}/applications/{ref}/disbursement-requests"

    r1 = sim.client.post(
        url, json=disbursement(deal, ref, 1), headers={"Idempotency-Key": f"{deal}:disb:1"}
    )
    assert r1.status_code == 202
    failed = sim.decisions(deal, 2)[-1]
    assert failed["type"] == "disbursement.failed"
    assert failed["data"] == {"deal_id": deal, "application_ref": ref, "reason": "bank rejected"}

    again = sim.client.post(
        url, json=disbursement(deal, ref, 1), headers={"Idempotency-Key": f"{deal}:disb:1"}
    )
    assert again.status_code == 202
    assert again.json()["request_id"] == r1.json()["request_id"]
    clash = sim.client.post(
        url,
        json=disbursement(deal, ref, 1, amount="1.00"),
        headers={"Idempotency-Key": f"{deal}:disb:1"},
    )
    assert clash.status_code == 422

    r2 = sim.client.post(
        url, json=disbursement(deal, ref, 2), headers={"Idempotency-Key": f"{deal}:disb:2"}
    )
    assert r2.status_code == 202 and r2.json()["request_id"] != r1.json()["request_id"]
    done = sim.decisions(deal, 3)[-1]
    assert done["type"] == "disbursement.completed"
    data = done["data"]
    assert set(data) == {"deal_id", "application_ref", "amount", "transaction_ref", "disbursed_at"}
    assert (data["deal_id"], data["application_ref"], data["amount"]) == (deal, ref, "105000.00")
    assert data["transaction_ref"]
    datetime.fromisoformat(data["disbursed_at"])

    ledger = sim.ledger(deal)
    assert [(d["attempt"], d["result"]) for d in ledger["disbursement_requests"]] == [
        (1, "failed"),
        (2, "completed"),
    ]
    missing = sim.client.post(
        f"/lenders/{ACME}/applications/app-nope/disbursement-requests",
        json=disbursement(deal, "app-nope"),
        headers={"Idempotency-Key": f"{deal}:disb:x"},
    )
    assert missing.status_code == 404
    no_key = sim.client.post(url, json=disbursement(deal, ref, 3))
    assert no_key.status_code == 400


def test_a_request_id_is_echoed_and_one_application_is_paid_out_once(sim: Sim) -> None:
    """The lender echoes DealFlow's request id in its answer, pays an
    application out once, and only the approved amount."""
    deal = new_deal()
    ref = sim.submit(ACME, package(deal)).json()["application_ref"]
    sim.decisions(deal, 1)
    url = f"/lenders/{ACME}/applications/{ref}/disbursement-requests"
    wrong = sim.client.post(
        url,
        json={**disbursement(deal, ref, 1, amount="105000.01"), "request_id": f"{deal}:d:1"},
        headers={"Idempotency-Key": f"{deal}:d:1"},
    )
    assert wrong.status_code == 422
    assert "was approved for 105000.00" in wrong.json()["detail"]
    paid = sim.client.post(
        url,
        json={**disbursement(deal, ref, 2), "request_id": f"{deal}:d:2"},
        headers={"Idempotency-Key": f"{deal}:d:2"},
    )
    assert paid.status_code == 202
    done = sim.decisions(deal, 2)[-1]
    assert done["type"] == "disbursement.completed"
    assert done["data"]["request_id"] == f"{deal}:d:2"
    second = sim.client.post(
        url,
        json={**disbursement(deal, ref, 3), "request_id": f"{deal}:d:3"},
        headers={"Idempotency-Key": f"{deal}:d:3"},
    )
    assert second.status_code == 409
    assert "already paid out" in second.json()["detail"]
    assert len(sim.ledger(deal)["disbursement_requests"]) == 1


def test_a_lender_that_funds_after_registration_wants_the_mortgage_named(sim: Sim) -> None:
    deal = new_deal()
    ref = sim.submit(CATHAY, package(deal)).json()["application_ref"]
    sim.decisions(deal, 1)
    url = f"/lenders/{CATHAY}/applications/{ref}/disbursement-requests"
    body = {**disbursement(deal, ref, 1, lender_id=CATHAY), "request_id": f"{deal}:d:1"}
    early = sim.client.post(url, json=body, headers={"Idempotency-Key": f"{deal}:d:1"})
    assert early.status_code == 422
    assert early.json()["detail"] == (
        f"lender {CATHAY!r} funds only once its mortgage is registered: the request names "
        "no mortgage_registration_no"
    )
    registered = {**body, "request_id": f"{deal}:d:2", "mortgage_registration_no": "MR-0001"}
    paid = sim.client.post(url, json=registered, headers={"Idempotency-Key": f"{deal}:d:2"})
    assert paid.status_code == 202
    assert sim.decisions(deal, 2)[-1]["type"] == "disbursement.completed"


def _repayment(deal: str, amount: str, txn: str) -> dict[str, Any]:
    return {"deal_id": deal, "amount": amount, "transaction_ref": txn, "reason": "rescinded"}


def test_a_repayment_takes_back_exactly_what_was_paid_once_under_any_key(sim: Sim) -> None:
    """The lender takes back what it paid out on an application, only that
    amount, once; the same request again gets the same receipt; an
    application it never funded is refused."""
    deal = new_deal()
    ref = sim.submit(ACME, package(deal)).json()["application_ref"]
    sim.decisions(deal, 1)
    url = f"/lenders/{ACME}/applications/{ref}/repayment"
    unfunded = sim.client.post(
        url, json=_repayment(deal, "105000.00", "txn-x"), headers={"Idempotency-Key": "k0"}
    )
    assert unfunded.status_code == 409
    assert "never funded" in unfunded.json()["detail"]
    sim.client.post(
        f"/lenders/{ACME}/applications/{ref}/disbursement-requests",
        json=disbursement(deal, ref, 1),
        headers={"Idempotency-Key": f"{deal}:d:1"},
    )
    paid = sim.decisions(deal, 2)[-1]["data"]
    txn = paid["transaction_ref"]
    key = {"Idempotency-Key": f"{deal}:repayment:{ref}"}
    short = sim.client.post(url, json=_repayment(deal, "104999.99", txn), headers=key)
    assert short.status_code == 422
    assert "does not match the 105000.00 paid out" in short.json()["detail"]

    first = sim.client.post(url, json=_repayment(deal, "105000.00", txn), headers=key)
    assert first.status_code == 200, first.text
    receipt = first.json()
    assert receipt["repayment_ref"].startswith("rpy-")
    assert (receipt["application_ref"], receipt["amount"], receipt["status"]) == (
        ref,
        "105000.00",
        "repaid",
    )
    again = sim.client.post(url, json=_repayment(deal, "105000.00", txn), headers=key)
    assert again.status_code == 200 and again.json() == receipt
    other_key = sim.client.post(
        url, json=_repayment(deal, "105000.00", txn), headers={"Idempotency-Key": "other"}
    )
    assert other_key.json()["repayment_ref"] == receipt["repayment_ref"]
    clash = sim.client.post(
        url, json={**_repayment(deal, "105000.00", txn), "reason": "other"}, headers=key
    )
    assert clash.status_code == 422
    [row] = sim.ledger(deal)["repayments"]
    assert (row["repayment_ref"], row["amount"], row["transaction_ref"]) == (
        receipt["repayment_ref"],
        "105000.00",
        txn,
    )
    unknown = sim.client.post(
        f"/lenders/{ACME}/applications/app-nope/repayment",
        json=_repayment(deal, "1.00", txn),
        headers={"Idempotency-Key": "k9"},
    )
    assert unknown.status_code == 404


def test_a_scripted_lender_refuses_a_repayment_with_its_reason(sim: Sim) -> None:
    deal = new_deal()
    sim.client.put(
        f"/_sim/scripts/{deal}", json={"repayment_refusal": "the loan is sold to a trust"}
    )
    ref = sim.submit(ACME, package(deal)).json()["application_ref"]
    sim.decisions(deal, 1)
    refused = sim.client.post(
        f"/lenders/{ACME}/applications/{ref}/repayment",
        json=_repayment(deal, "105000.00", "txn-1"),
        headers={"Idempotency-Key": "k1"},
    )
    assert refused.status_code == 409
    assert refused.json()["detail"] == "the loan is sold to a trust"
    assert sim.ledger(deal)["repayments"] == []


def test_withdrawal_stops_decisions(sim: Sim) -> None:
    deal = new_deal()
    sim.client.put(f"/_sim/scripts/{deal}", json={"decision_delay": 0.5})
    ref = sim.submit(ACME, package(deal)).json()["application_ref"]
    url = f"/lenders/{ACME}/applications/{ref}/withdrawal"
    w1 = sim.client.post(
        url,
        json={"reason": "customer cancelled"},
        headers={"Idempotency-Key": f"{deal}:withdraw:1"},
    )
    assert w1.status_code == 202
    w2 = sim.client.post(
        url,
        json={"reason": "customer cancelled"},
        headers={"Idempotency-Key": f"{deal}:withdraw:1"},
    )
    assert w2.status_code == 202 and w2.json() == w1.json()
    w3 = sim.client.post(
        url, json={"reason": "again"}, headers={"Idempotency-Key": f"{deal}:withdraw:other"}
    )
    assert w3.status_code == 202 and w3.json()["withdrawal_id"] == w1.json()["withdrawal_id"]
    assert sim.client.post(url, json={"reason": "x"}).status_code == 400
    assert (
        sim.client.post(
            f"/lenders/{ACME}/applications/app-nope/withdrawal",
            json={"reason": "x"},
            headers={"Idempotency-Key": "k"},
        ).status_code
        == 404
    )

    time.sleep(0.8)
    assert sim.receiver.all_for(deal) == []
    ledger = sim.ledger(deal)
    assert ledger["applications"][0]["withdrawn"] is True
    assert len(ledger["withdrawals"]) == 1
    assert [h["status"] for h in ledger["webhooks"]] == ["cancelled"]
    r = sim.client.post(
        f"/lenders/{ACME}/applications/{ref}/disbursement-requests",
        json=disbursement(deal, ref),
        headers={"Idempotency-Key": f"{deal}:d"},
    )
    assert r.status_code == 409


# --------------------------------------------------------------------------- delivery


def test_webhook_retried_after_500s_with_same_id(sim: Sim) -> None:
    deal = new_deal()
    with sim.receiver.lock:
        sim.receiver.fail[deal] = 3
    sim.submit(ACME, package(deal))
    [event] = sim.decisions(deal, 1)
    calls = sim.receiver.all_for(deal)
    assert [c["status"] for c in calls] == [500, 500, 500, 204]
    assert len({c["webhook_id"] for c in calls}) == 1
    assert len({c["raw"] for c in calls}) == 1
    [hook] = sim.ledger(deal)["webhooks"]
    assert (hook["status"], hook["attempts"], hook["last_status"]) == ("delivered", 4, 204)
    assert hook["id"] == calls[0]["webhook_id"]


def test_delivery_resumes_after_kill_and_restart(
    receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    """The real entry point, killed with SIGKILL while a webhook is undelivered."""
    rec, url = receiver
    db = tmp_path / "sim.db"
    env = {
        **os.environ,
        "DEALFLOW_API_BASE_URL": url,
        "DEALFLOW_LENDER_SIM_DB": str(db),
        "DEALFLOW_LENDERS_FILE": str(LENDERS_FILE),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }

    def start() -> tuple[subprocess.Popen[bytes], str]:
        sock = _bound_socket()
        port = sock.getsockname()[1]
        sock.close()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sim.lender",
                "--port",
                str(port),
                "--decision-delay",
                "0",
                "--retry-initial",
                "0.05",
                "--retry-max",
                "0.1",
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                return httpx.get(f"{base}/healthz", trust_env=False).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=15)
        return proc, base

    deal = new_deal()
    with rec.lock:
        rec.fail[deal] = 10_000
    proc, base = start()
    try:
        r = httpx.post(
            f"{base}/lenders/{ACME}/applications",
            json=package(deal),
            headers={"Idempotency-Key": f"{deal}:1"},
            trust_env=False,
        )
        assert r.status_code == 202
        wait_for(lambda: len(rec.all_for(deal)) >= 2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert db.exists()
    with rec.lock:
        rec.fail[deal] = 0
    proc, base = start()
    try:
        [event] = [c["payload"] for c in wait_for(lambda: rec.accepted(deal), timeout=10)]
        ledger = httpx.get(f"{base}/_sim/ledger", params={"deal_id": deal}, trust_env=False).json()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    assert event["data"]["application_ref"] == r.json()["application_ref"]
    calls = rec.all_for(deal)
    assert len({c["webhook_id"] for c in calls}) == 1
    [hook] = ledger["webhooks"]
    assert hook["status"] == "delivered" and hook["attempts"] >= 2
    assert len(ledger["applications"]) == 1


def test_extra_events_for_chaos(sim: Sim) -> None:
    deal = new_deal()
    reused = f"msg_{uuid.uuid4().hex}"
    sim.client.put(
        f"/_sim/scripts/{deal}",
        json={
            "lenders": {ACME: [{"decision": "counter_offer"}]},
            "decision_delay": 0,
            "extra_events": [
                {
                    "when": "application",
                    "bad_signature": True,
                    "max_attempts": 1,
                    "data": {"decision_seq": 9, "decision": "approved"},
                },
                {
                    "when": "application",
                    "webhook_id": reused,
                    "type": "disbursement.failed",
                    "data": {"reason": "out of order"},
                },
            ],
        },
    )
    ref = sim.submit(ACME, package(deal, income="5000.00")).json()["application_ref"]
    events = sim.decisions(deal, 2)
    assert events[0]["data"]["decision"] == "counter_offer"
    assert events[0]["data"]["approved_amount"] == "81000.00"
    assert events[1]["type"] == "disbursement.failed"
    assert events[1]["data"] == {"deal_id": deal, "application_ref": ref, "reason": "out of order"}
    hooks = wait_for(
        lambda: (
            (h := sim.ledger(deal)["webhooks"]) and all(w["status"] != "pending" for w in h) and h
        )
    )
    assert [(h["status"], h["last_status"]) for h in hooks] == [
        ("delivered", 204),
        ("failed", 401),
        ("delivered", 204),
    ]
    assert hooks[2]["id"] == reused
    # Each extra event fires once: a second submission gets only its decision.
    sim.submit(ACME, package(deal, 2))
    sim.decisions(deal, 3)
    time.sleep(0.1)
    assert len(sim.ledger(deal)["webhooks"]) == 4
    status = sim.client.get(f"/lenders/{ACME}/applications/{ref}").json()
    assert (status["deal_id"], status["status"]) == (deal, "received")


# --------------------------------------------------------------------------- funding package


@dataclass
class DocumentHost:
    """Stands in for DealFlow's signed links: serves the files it holds by
    name, whatever the query (each call's fresh signature)."""

    files: dict[str, bytes] = field(default_factory=dict)
    url: str = ""

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/files/{name}")
        async def serve(name: str) -> Response:
            if name not in self.files:
                return Response(status_code=403)
            return Response(self.files[name], media_type="application/pdf")

        return app

    def document(self, kind: str, data: bytes, signature: str = "1") -> dict[str, Any]:
        self.files[kind] = data
        return {
            "kind": kind,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "content_type": "application/pdf",
            "url": f"{self.url}/files/{kind}?sig={signature}",
        }


@pytest.fixture(scope="module")
def document_host() -> Iterator[DocumentHost]:
    host = DocumentHost()
    with ServerThread(host.app()) as srv:
        host.url = srv.url
        yield host


FUNDING_KINDS = ("signed_loan_contract", "insurance_policy_page", "vehicle_invoice")


def funded_application(sim: Sim, script: dict[str, Any] | None = None) -> tuple[str, str, str]:
    """An approved application: (deal, ref, its disbursement-requests URL)."""
    deal = new_deal()
    if script is not None:
        assert sim.client.put(f"/_sim/scripts/{deal}", json=script).status_code == 200
    ref = sim.submit(ACME, package(deal)).json()["application_ref"]
    sim.decisions(deal, 1)
    return deal, ref, f"/lenders/{ACME}/applications/{ref}/disbursement-requests"


def funding_package(host: DocumentHost, deal: str, signature: str = "1") -> list[dict[str, Any]]:
    return [
        host.document(f"{kind}", f"%PDF {deal} {kind}".encode(), signature)
        for kind in FUNDING_KINDS
    ]


def test_a_funding_package_is_fetched_checked_and_taken_again_with_fresher_links(
    sim: Sim, document_host: DocumentHost
) -> None:
    deal, ref, url = funded_application(sim)
    body = {**disbursement(deal, ref), "funding_package": funding_package(document_host, deal)}
    key = {"Idempotency-Key": f"{deal}:disb:1"}
    first = sim.client.post(url, json=body, headers=key)
    assert first.status_code == 202, first.text
    fresher = {**body, "funding_package": funding_package(document_host, deal, signature="2")}
    again = sim.client.post(url, json=fresher, headers=key)
    assert again.status_code == 202, again.text
    assert again.json()["request_id"] == first.json()["request_id"]
    other = [
        {**d, "sha256": "0" * 64} if d["kind"] == "vehicle_invoice" else d
        for d in fresher["funding_package"]
    ]
    clash = sim.client.post(url, json={**body, "funding_package": other}, headers=key)
    assert clash.status_code == 422 and "already used" in clash.json()["detail"]
    [request] = sim.ledger(deal)["disbursement_requests"]
    assert {d["kind"] for d in request["body"]["funding_package"]} == set(FUNDING_KINDS)


def test_a_missing_or_tampered_funding_document_is_refused_naming_it(
    sim: Sim, document_host: DocumentHost
) -> None:
    deal, ref, url = funded_application(sim)
    documents = funding_package(document_host, deal)
    without_invoice = [d for d in documents if d["kind"] != "vehicle_invoice"]
    r = sim.client.post(
        url,
        json={**disbursement(deal, ref), "funding_package": without_invoice},
        headers={"Idempotency-Key": f"{deal}:disb:1"},
    )
    assert r.status_code == 422
    assert r.json()["detail"] == "the funding package lacks the vehicle_invoice"
    assert r.json()["errors"] == [{"document": "vehicle_invoice", "problem": "missing"}]

    document_host.files["insurance_policy_page"] = b"%PDF something else"
    r = sim.client.post(
        url,
        json={**disbursement(deal, ref), "funding_package": documents},
        headers={"Idempotency-Key": f"{deal}:disb:2"},
    )
    assert r.status_code == 422
    assert r.json()["detail"].startswith(
        "funding document insurance_policy_page: the file behind its link (sha256 "
    )
    assert r.json()["errors"] == [
        {"document": "insurance_policy_page", "problem": "sha256 mismatch"}
    ]
    assert sim.ledger(deal)["disbursement_requests"] == [], "nothing recorded, nothing paid"


def test_a_request_without_a_package_is_taken_unless_the_lender_requires_one(
    sim: Sim, document_host: DocumentHost
) -> None:
    deal, ref, url = funded_application(sim)
    r = sim.client.post(
        url, json=disbursement(deal, ref), headers={"Idempotency-Key": f"{deal}:disb:1"}
    )
    assert r.status_code == 202, "the old form, from deals that predate the package"

    deal, ref, url = funded_application(sim, {"require_funding_package": True})
    r = sim.client.post(
        url, json=disbursement(deal, ref), headers={"Idempotency-Key": f"{deal}:disb:1"}
    )
    assert r.status_code == 422
    assert r.json()["detail"].startswith("this lender pays out only against a funding_package")
    body = {**disbursement(deal, ref), "funding_package": funding_package(document_host, deal)}
    r = sim.client.post(url, json=body, headers={"Idempotency-Key": f"{deal}:disb:2"})
    assert r.status_code == 202, r.text


def test_a_lender_configured_to_require_the_package_refuses_the_old_form(
    lenders: dict[str, LenderConfig], receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    rec, webhook_url = receiver
    config = fast_config(lenders, tmp_path / "sim.db", webhook_url).model_copy(
        update={"funding_package_required": [ACME]}
    )
    with (
        ServerThread(create_app(config)) as srv,
        httpx.Client(base_url=srv.url, trust_env=False, timeout=10) as client,
    ):
        sim = Sim(client, rec)
        deal, ref, url = funded_application(sim)
        r = client.post(url, json=disbursement(deal, ref), headers={"Idempotency-Key": "k1"})
        assert r.status_code == 422, r.text
        assert "funding_package" in r.json()["detail"]
