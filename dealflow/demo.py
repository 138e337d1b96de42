"""`make demo`: sample deals through every stage on the embedded stack.

A robot back office reads each deal's pending actions from its `status` query
and does them with the example payloads; the lender simulator answers by signed
webhooks according to a per-deal script. The robot is restartable and rides out
restarts of every other process (kill -9 the worker or the server, `make up`,
and it carries on): every action carries an update id, so a retried action is
applied once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from rich.console import Console
from rich.table import Column, Table
from temporalio.client import Client
from temporalio.service import RPCError

from dealflow import client as deals
from dealflow import rules
from dealflow.config import Settings, get_settings, load_lenders
from dealflow.models import Action, Actor, DealInput, DealPolicy, DealStatus, DocumentKind, Stage
from dealflow.samples import (
    dealer_today,
    example_action,
    example_deal,
    loan_terms_confirmation,
    missing_documents,
)
from dealflow.storage.documents import DocumentStore, store_from_settings
from dealflow.uploads import upload_document

console = Console(width=None if sys.stdout.isatty() else 140)

# Real deadlines, but follow-up calls seconds apart instead of 3 and 30 days,
# so the demo can finish its deals while you watch.
DEMO_POLICY = DealPolicy(
    follow_up_first=timedelta(seconds=2),
    follow_up_second=timedelta(seconds=4),
    follow_up_grace=timedelta(minutes=10),
)


@dataclass
class Scenario:
    name: str
    script: dict[str, Any] | None = None
    deal_changes: dict[str, Any] = field(default_factory=dict)
    cancel_at: Stage | None = None
    expect: Stage = Stage.COMPLETED
    # The robot stops here and leaves the rest to whoever opens the desk.
    leave_at: Stage | None = None
    # What credit does with each of the lender's conditions once it is
    # answered (or at once, to waive): "clear" or "waive"; a condition not
    # named here is answered (its document uploaded, or a note) and left.
    conditions: dict[str, str] = field(default_factory=dict)


SCENARIOS = [
    Scenario("approved by the first lender"),
    Scenario(
        "declined by the first lender, approved by the second",
        script={
            "lenders": {
                "acme-auto-finance": [
                    {
                        "decision": "declined",
                        "reasons": [{"code": "CREDIT_HISTORY", "text": "thin credit file"}],
                    }
                ]
            }
        },
    ),
    Scenario(
        "conditional: lender asks for an employment letter",
        script={
            "lenders": {
                "acme-auto-finance": [
                    {
                        "decision": "conditional",
                        "stipulations": [
                            {
                                "code": "EMPLOYMENT_LETTER",
                                "description": "letter from the employer confirming tenure",
                            }
                        ],
                    },
                    {"decision": "approved"},
                ]
            }
        },
    ),
    Scenario(
        "conditional: two conditions, one cleared by a document, one waived",
        script={
            "lenders": {
                "acme-auto-finance": [
                    {
                        "decision": "conditional",
                        "stipulations": [
                            {
                                "code": "EMPLOYMENT_LETTER",
                                "description": "letter from the employer confirming tenure",
                            },
                            {
                                "code": "GUARANTOR",
                                "description": "add a guarantor",
                                "kind": "condition",
                            },
                        ],
                    },
                    {"decision": "approved"},
                ]
            }
        },
        conditions={"EMPLOYMENT_LETTER": "clear", "GUARANTOR": "waive"},
    ),
    Scenario(
        "counter-offer accepted",
        script={
            "lenders": {
                "acme-auto-finance": [{"decision": "counter_offer", "approved_amount": "95000.00"}]
            }
        },
    ),
    Scenario(
        "approved for less than requested: a counter-offer the customer accepts",
        script={
            "lenders": {
                "acme-auto-finance": [{"decision": "approved", "approved_amount": "100000.00"}]
            }
        },
    ),
    Scenario(
        "first disbursement fails, requested again",
        script={
            "disbursements": [
                {"result": "failed", "reason": "receiving bank rejected the transfer"}
            ]
        },
    ),
    Scenario(
        "a lender that funds once its mortgage is registered",
        deal_changes={"lender_ids": ["cathay-car-loans"]},
    ),
    Scenario("cancelled after the down payment", cancel_at=Stage.INVOICING, expect=Stage.CANCELLED),
    Scenario(
        "declined by every lender",
        script={
            "lenders": {
                lid: [
                    {
                        "decision": "declined",
                        "reasons": [{"code": "DTI_TOO_HIGH", "text": "debt-to-income too high"}],
                    }
                ]
                for lid in ("acme-auto-finance", "beta-motor-credit")
            }
        },
        expect=Stage.DECLINED,
    ),
    Scenario(
        "left for you to finish at the desk",
        leave_at=Stage.INSURANCE,
        expect=Stage.INSURANCE,
    ),
]


STIPULATION_STEPS = {action.value for action in rules.STIPULATION_ACTIONS}


def actor_for(action: Action) -> Actor:
    role = sorted(rules.ACTION_ROLES[action])[0]
    return Actor(staff_id=f"demo-{role.value}", role=role)


def uploader_for(kind: DocumentKind) -> Actor:
    """The customer's documents as every other upload; a funding document by its own team."""
    if not rules.is_funding_document(kind):
        return actor_for(Action.RECORD_DOCUMENT)
    role = rules.document_uploader(kind)
    return Actor(staff_id=f"demo-{role.value}", role=role)


async def retrying(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Ride out a restarting server or worker: retry transport errors patiently."""
    delay = 0.5
    while True:
        try:
            return await fn(*args, **kwargs)
        except (RPCError, RuntimeError, httpx.HTTPError) as e:
            transient = (
                "UNAVAILABLE",
                "DEADLINE_EXCEEDED",
                "CANCELLED",
                "UNKNOWN",
                "RESOURCE_EXHAUSTED",
            )
            # "Workflow Task in failed state": the deal's worker died mid-task
            # and another worker picks the task up within seconds.
            if (
                isinstance(e, RPCError)
                and e.status.name not in transient
                and "Workflow Task in failed state" not in str(e)
            ):
                raise
            console.print(f"[yellow]  {what}: {type(e).__name__}; retrying in {delay:.0f}s[/]")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)


class Robot:
    def __init__(self, client: Client, store: DocumentStore, settings: Settings) -> None:
        self.client = client
        self.store = store
        self.settings = settings
        self.uploaded: set[tuple[str, str]] = set()

    async def act(self, deal_id: str, st: DealStatus, action: str, **changes: Any) -> None:
        act = Action(action)
        payload = {**example_action(action, dealer_today()), **changes}
        a, inp = deals.parse_action(action, payload, actor_for(act))
        try:
            await retrying(
                action,
                deals.act,
                self.client,
                deal_id,
                a,
                inp,
                update_id=deals.decision_update_id("demo", st, action),
            )
        except rules.RuleError as e:
            # Someone (or an earlier run of this robot) got there first.
            console.print(f"  [dim]{deal_id}: {action} not taken: {e.message}[/]")

    async def upload_missing(self, deal_id: str, deal: DealInput, st: DealStatus) -> None:
        for doc in missing_documents(deal_id, deal, st, dealer_today()):
            d = dict(doc)
            kind = d.pop("kind")
            await retrying(
                "upload",
                upload_document,
                self.client,
                self.store,
                deal_id,
                uploader_for(kind),
                kind=kind.value,
                party=d.pop("party").value,
                file_name=d.pop("file_name"),
                data=d.pop("data"),
                policy=DEMO_POLICY,
                **d,
            )

    async def settle_conditions(self, deal_id: str, sc: Scenario, st: DealStatus) -> bool:
        """Credit's step on the lender's conditions, if one is due (whether it
        took one): clear what the scenario clears once its document is in,
        waive what it waives, answer a condition that is no document."""
        if st.stage is not Stage.DOCUMENTS:
            return False
        answering = rules.unsent(st.stipulations)
        if any(i.kind == "document" and i.status in ("open", "rejected") for i in answering):
            return False  # the documents first (record-document)
        for item in answering:
            plan = sc.conditions.get(item.code)
            if plan == "clear" and item.status == "received":
                note = "checked with the employer by phone (demo)"
                await self.act(deal_id, st, "clear-stipulation", code=item.code, note=note)
                return True
        for item in answering:
            plan = sc.conditions.get(item.code)
            if plan == "waive" and item.status in ("open", "received", "rejected"):
                reason = "the lender's credit desk waived it by phone (demo)"
                await self.act(deal_id, st, "waive-stipulation", code=item.code, reason=reason)
                return True
            if plan is None and item.kind == "condition" and item.status == "open":
                note = "met as the lender asked (demo)"
                await self.act(deal_id, st, "answer-stipulation", code=item.code, note=note)
                return True
        return False

    async def step(self, deal_id: str, deal: DealInput, sc: Scenario, st: DealStatus) -> None:
        """Do whatever the deal is waiting for from the back office."""
        if sc.cancel_at is not None and st.stage is sc.cancel_at:
            await self.act(deal_id, st, "cancel", reason="customer changed their mind (demo)")
            return
        if await self.settle_conditions(deal_id, sc, st):
            return
        legal = next(
            (
                lender.legal_name
                for lid, lender in load_lenders(self.settings.lenders_file).items()
                if lid == st.lender_id
            ),
            None,
        )
        now = datetime.now(UTC)
        for p in st.pending:
            match p.action:
                case "sign-sales-contract":
                    await self.act(deal_id, st, p.action)
                case "record-document":
                    await self.upload_missing(deal_id, deal, st)
                case "submit-application":
                    await self.act(deal_id, st, p.action)
                case "accept-counter-offer":
                    sub = st.submissions[-1]
                    assert sub.current is not None
                    await self.act(
                        deal_id,
                        st,
                        p.action,
                        application_ref=sub.application_ref,
                        decision_seq=sub.current.decision_seq,
                    )
                case "confirm-down-payment":
                    await self.act(deal_id, st, p.action, amount=str(st.money.down_payment))
                case "confirm-loan-terms":
                    await self.act(deal_id, st, p.action, **loan_terms_confirmation(st))
                case "record-insurance":
                    await self.act(
                        deal_id,
                        st,
                        p.action,
                        first_beneficiary=legal,
                        cover_amount=str(deal.vehicle.price),
                    )
                case "record-mortgage":
                    if st.pending[0].action == "record-mortgage":
                        await self.act(deal_id, st, p.action, lienholder=legal)
                case "record-plate":
                    if st.pending[0].action == "record-plate":
                        await self.act(deal_id, st, p.action)
                case "deliver":
                    if len(st.pending) == 1:
                        await self.act(deal_id, st, p.action)
                case "record-follow-up":
                    call = p.what.split()[0]
                    if p.due is None or p.due <= now:
                        await self.act(deal_id, st, p.action, call=call)
                    break
                case a if a.startswith("lender-") or a in STIPULATION_STEPS:
                    pass  # the lender's move; credit's steps on conditions: above
                case _:
                    await self.act(deal_id, st, p.action)
            # One action per look: the next one depends on the new status.
            return


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="drive sample deals through the embedded stack")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the deals")
    args = parser.parse_args(argv)
    settings = get_settings()
    client = await retrying("connect", deals.connect, settings)
    store = store_from_settings(settings)
    robot = Robot(client, store, settings)
    started = time.monotonic()
    running = await _start_scenarios(client, settings)
    finals = await _drive_until_closed(client, robot, running, started + args.timeout)
    if len(finals) < len(running):
        console.print(f"[red]timed out after {args.timeout:.0f}s[/]")
    all_as_expected = _print_summary(running, finals)
    left = [deal_id for deal_id, (scenario, _) in running.items() if scenario.leave_at]
    console.print(
        f"{len(finals) - len(left)} of {len(running) - len(left)} deals finished"
        f" in {time.monotonic() - started:.1f}s"
    )
    _print_links(settings)
    for deal_id in left:
        console.print(
            f"Deal {deal_id} waits for you at {settings.api_url}/desk/deals/{deal_id}:"
            " sign in as insurance to bind the policy, then follow My work."
        )
    return 0 if all_as_expected else 1


async def _start_scenarios(
    client: Client, settings: Settings
) -> dict[str, tuple[Scenario, DealInput]]:
    lenders = load_lenders(settings.lenders_file)
    simulator = f"http://127.0.0.1:{settings.lender_sim_port}"
    running: dict[str, tuple[Scenario, DealInput]] = {}
    async with httpx.AsyncClient(timeout=10) as http:
        for scenario in SCENARIOS:
            deal = example_deal().model_copy(update=scenario.deal_changes)
            deal_id = deals.new_deal_id()
            if scenario.script is not None:
                response = await retrying(
                    "script", http.put, f"{simulator}/_sim/scripts/{deal_id}", json=scenario.script
                )
                response.raise_for_status()
            inp = deals.start_input(
                deal_id, deal, DEMO_POLICY, lenders, Actor(staff_id="demo-sales", role="sales")
            )
            await retrying("start", deals.start_deal, client, settings.task_queue, inp)
            running[deal_id] = (scenario, deal)
            console.print(f"started [bold]{deal_id}[/bold]: {scenario.name}")
    return running


async def _drive_until_closed(
    client: Client,
    robot: Robot,
    running: dict[str, tuple[Scenario, DealInput]],
    deadline: float,
) -> dict[str, DealStatus]:
    """Take each deal's next step until every deal has closed or time is up."""
    last_stage: dict[str, Stage] = {}
    finals: dict[str, DealStatus] = {}
    while len(finals) < len(running) and time.monotonic() < deadline:
        for deal_id, (scenario, deal) in running.items():
            if deal_id in finals:
                continue
            status = await retrying("status", deals.deal_status, client, deal_id)
            if last_stage.get(deal_id) is not status.stage:
                last_stage[deal_id] = status.stage
                reason = status.transitions[-1].reason if status.transitions else ""
                console.print(f"  {deal_id}  [cyan]{status.stage.value:<13}[/] {reason}")
            if status.stage.terminal:
                # The deal closes after its compensations ran: wait for that.
                finals[deal_id] = await retrying("result", deals.deal_result, client, deal_id)
                continue
            if status.stage is scenario.leave_at:
                finals[deal_id] = status
                continue
            await robot.step(deal_id, deal, scenario, status)
        await asyncio.sleep(0.3)
    return finals


def _print_summary(
    running: dict[str, tuple[Scenario, DealInput]], finals: dict[str, DealStatus]
) -> bool:
    """The table of outcomes; whether every deal ended where its scenario expects."""
    table = Table(
        "deal",
        "scenario",
        "final stage",
        "lender",
        "financed",
        "disbursed",
        "compensations run",
        Column("lender conditions", overflow="fold"),
        title="DealFlow demo",
    )
    all_as_expected = True
    for deal_id, (scenario, _) in running.items():
        final = finals.get(deal_id)
        if final is None:
            table.add_row(deal_id, scenario.name, "[red]unfinished[/]", "", "", "", "", "")
            all_as_expected = False
            continue
        as_expected = final.stage is scenario.expect
        all_as_expected &= as_expected
        compensations = ", ".join(
            c.kind for c in reversed(final.compensations) if c.status == "done"
        )
        table.add_row(
            deal_id,
            scenario.name,
            f"[{'green' if as_expected else 'red'}]{final.stage.value}[/]",
            final.lender_id or "",
            f"{final.money.amount_financed:,.2f}",
            f"{final.money.disbursed or Decimal(0):,.2f}",
            compensations or "-",
            _conditions(final),
        )
    console.print(table)
    return all_as_expected


def _conditions(final: DealStatus) -> str:
    """The lender's conditions and how each ended: `EMPLOYMENT_LETTER cleared, ...`."""
    return "\n".join(f"{item.code} {item.status}" for item in final.stipulations) or "-"


def _print_links(settings: Settings) -> None:
    console.print(
        f"Temporal UI:  http://localhost:{settings.temporal_ui_port}/namespaces/{settings.namespace}"
        "/workflows?query=DealStage%3D%22COMPLETED%22"
    )
    console.print(f"API docs:     {settings.api_url}/docs")
    console.print(f"Deal desk:    {settings.api_url}/desk/")
    if settings.development_signin:
        console.print(
            "              sign in with any staff id and a role (sales starts deals; "
            "credit, finance, ... take the later steps)"
        )
    elif settings.oidc_configured:
        console.print("              sign in with your organisation's account")
    else:
        console.print("              sign in with a staff token (starter.py token)")
    console.print(".venv/bin/temporal workflow list --query 'DealStage=\"COMPLETED\"'")
    console.print("The stack stays up; `make down` stops it.")


if __name__ == "__main__":
    code = asyncio.run(main())
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the SDK's native runtime can abort while it
    # is torn down after a successful run (temporalio/sdk-python#300).
    os._exit(code)
