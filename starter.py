"""The operator CLI: start deals, read them, take staff actions, upload documents.

    python starter.py start examples/deal.json
    python starter.py status DEAL_ID
    python starter.py list --stage UNDERWRITING
    python starter.py act DEAL_ID confirm-down-payment examples/actions/confirm-down-payment.json
    python starter.py upload DEAL_ID id_card scan.jpg --party applicant --id-number ...
    python starter.py cancel DEAL_ID --reason "customer withdrew"
    python starter.py stuck                                  # operators: stuck deals
    python starter.py heal DEAL_ID --reason "..."            # operators: bring one back

It talks to Temporal directly with the same validation the API uses; `--as
STAFF:ROLE` names who acts (default: $USER as admin). Exit status: 0 done,
2 invalid input, 3 not allowed in the deal's stage, 4 unknown deal, 5 role
not permitted, 1 anything else.

With `--api URL --token TOKEN` (or DEALFLOW_API_TOKEN) the same commands go
through the back-office HTTP API instead, and the token says who acts (exit
status 6: no or bad token):

    python starter.py token --sub li --role sales          # a development token
    python starter.py token --sub li --role sales --dealer D1   # ... of dealer D1 only
    python starter.py --api http://127.0.0.1:8000 --token "$T" list --overdue
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import os
import sys
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dealflow import client as deals
from dealflow import rules, stuck, tracing
from dealflow.api import remote
from dealflow.api.security import mint_token
from dealflow.config import get_settings
from dealflow.deal_service import (
    DealQuery,
    DealService,
    DocumentForm,
    HttpDeals,
    ServiceError,
    TemporalDeals,
)
from dealflow.models import Actor, DealHealth, DealPolicy, DealStatus, Role, Stage
from dealflow.startup import EXIT_CANNOT_START, StartupError, check_production, connect_problem
from dealflow.storage.documents import DocumentStoreUnavailable
from dealflow.temporal_connection import TemporalConfigError, temporal_connection

EXIT = {"invalid": 2, "conflict": 3, "forbidden": 5}
out = Console()
err = Console(stderr=True)


def fail(message: str) -> None:
    # Plain text: a path or a lender's reason may contain [brackets], which rich
    # would take for markup (and raise MarkupError on a stray closing tag).
    err.print(message, markup=False, highlight=False, soft_wrap=True)


class CliError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def parse_actor(text: str) -> Actor:
    staff, sep, role = text.partition(":")
    try:
        if not sep:
            raise ValueError("no role")
        return Actor(staff_id=staff, role=Role(role))
    except (ValueError, ValidationError):
        roles = ", ".join(r.value for r in Role)
        raise CliError(
            f"--as must be STAFF_ID:ROLE with ROLE one of {roles}; got {text!r}", 2
        ) from None


def wait_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= seconds <= 3600:
        raise argparse.ArgumentTypeError("--wait takes 0 to 3600 seconds")
    return seconds


def read_json(path: str) -> Any:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}", 2) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CliError(f"{path} is not valid JSON: {e}", 2) from None


def load_policy(path: str | None) -> DealPolicy:
    settings = get_settings()
    source = path or settings.policy_file
    if not source:
        return DealPolicy()
    try:
        return DealPolicy.model_validate(read_json(str(source)))
    except ValidationError as e:
        raise CliError(f"policy {source}: {deals.format_validation_error(e)}", 2) from None


def show_status(st: DealStatus) -> None:
    if st.health is not None and st.health.stuck:
        show_health(st.deal_id, st.health)
        out.print("[dim]the deal cannot answer: below is the read model's last projection[/dim]")
    out.print(
        f"[bold]{st.deal_id}[/bold]  stage [bold cyan]{st.stage.value}[/bold cyan] since "
        f"{st.stage_entered_at:%Y-%m-%d %H:%M} UTC  lender {st.lender_id or '-'}"
    )
    m = st.money
    out.print(
        f"price {m.vehicle_price:,.2f}  down payment {m.down_payment:,.2f}  financed "
        f"{m.amount_financed:,.2f}  disbursed {m.disbursed or 0:,.2f}"
    )
    if st.mortgage_before_funding:
        out.print("the lender funds once its mortgage is registered: registration comes first")
    if st.pending:
        t = Table("pending action", "role", "what", "due", title="Pending")
        for p in st.pending:
            due = f"{p.due:%Y-%m-%d %H:%M}" if p.due else ""
            t.add_row(p.action, p.role.value, escape(p.what), due)
        out.print(t)
    missing = [c for c in st.checklist if not c.satisfied]
    if missing and not st.stage.terminal:
        out.print("documents missing: " + "; ".join(escape(c.label) for c in missing))
    if st.submissions:
        t = Table("#", "lender", "status", "ref", "decision", title="Lender submissions")
        for s in st.submissions:
            dec = s.current.decision.value if s.current else ""
            t.add_row(str(s.submission_no), s.lender_id, s.status, s.application_ref or "", dec)
        out.print(t)
    if st.stipulations:
        t = Table("#", "condition", "kind", "state", "answered by", "reason", title="Conditions")
        for item in st.stipulations:
            answer = rules.answered_by(item, st.documents) if item.doc_id or item.note else ""
            t.add_row(
                str(item.submission_no),
                escape(f"{item.code}: {item.description}"),
                item.kind,
                item.status + (f" (sent in {item.answered_in})" if item.answered_in else ""),
                escape(answer),
                escape(item.reason or ""),
            )
        out.print(t)
    if st.funding:
        show_funding(st)
    if any(t.to_stage is Stage.UNWINDING for t in st.transitions):
        show_unwind(st)
    if st.outcome_reason:
        out.print(f"outcome: {escape(st.outcome_reason)}")
    done = [c for c in st.compensations if c.status == "done"]
    if done:
        out.print("compensations run: " + ", ".join(c.kind for c in done))


def show_funding(st: DealStatus) -> None:
    """The funding package: each document, who uploads it, the upload the
    disbursement request carries; then which documents each request carried."""
    t = Table(
        "document", "uploads it", "doc", "sha256", "uploaded by", "at", title="Funding package"
    )
    for item in st.funding:
        doc = item.document
        t.add_row(
            item.kind.value,
            item.role.value,
            doc.doc_id if doc else "missing",
            f"{doc.sha256[:12]}…" if doc else "",
            doc.uploaded_by if doc else "",
            f"{doc.uploaded_at:%Y-%m-%d %H:%M}" if doc else "",
        )
    out.print(t)
    for d in st.disbursements:
        if d.funding_doc_ids:
            out.print(
                f"disbursement request {d.attempt} ({d.status}) carried "
                + ", ".join(d.funding_doc_ids)
            )


def show_unwind(st: DealStatus) -> None:
    """The steps of an unwind after funding, newest first: state, evidence, who, when."""
    t = Table("step", "state", "by role", "evidence", "recorded by", "when", title="Unwind")
    for c in reversed(st.compensations):
        if c.status == "void":
            continue
        role = rules.UNWIND_STEP_ROLES.get(c.kind)
        t.add_row(
            escape(f"{c.kind}: {rules.describe_step(c)}"),
            c.status + (f" ({escape(c.refusal)})" if c.refusal else ""),
            role.value if role else "dealflow",
            escape(c.evidence),
            escape(c.done_by),
            f"{c.done_at:%Y-%m-%d %H:%M}" if c.done_at else "",
        )
    out.print(t)


# --------------------------------------------------------------------------- commands
# One implementation per command over `DealService`: straight to Temporal, or
# with `--api URL` through the back-office HTTP API (whose problem detail is
# printed as it is, and whose status decides the exit code).


def deal_service(args: argparse.Namespace) -> DealService:
    if args.api:
        if getattr(args, "policy_file", None):
            raise CliError("--policy-file does not apply with --api: the API applies its own", 2)
        return HttpDeals(remote.DealFlowAPI(args.api, args.token or ""))
    policy = load_policy(getattr(args, "policy_file", None))
    return TemporalDeals(get_settings(), args.actor, policy)


def print_json(model: BaseModel) -> None:
    print(model.model_dump_json(indent=2))


async def cmd_start(args: argparse.Namespace, service: DealService) -> None:
    created = await service.start(
        read_json(args.file), deal_id=args.deal_id, idempotency_key=args.idempotency_key
    )
    if args.json:
        print_json(created)
    else:
        out.print(f"started deal [bold]{created.deal_id}[/bold] (workflow {created.workflow_id})")


async def cmd_status(args: argparse.Namespace, service: DealService) -> None:
    if args.wait is None:
        st = await service.status(args.deal)
    else:
        st, changed = await service.next_stage(args.deal, args.wait)
        if not changed:
            err.print(f"no stage change within {args.wait:g} s: still {st.stage.value}")
    if args.json:
        print_json(st)
    else:
        show_status(st)


async def cmd_list(args: argparse.Namespace, service: DealService) -> None:
    page = await service.list(
        DealQuery(
            stage=args.stage,
            lender=args.lender,
            dealer=args.dealer,
            overdue=args.overdue,
            limit=args.limit,
            cursor=args.cursor,
        )
    )
    if args.json:
        print_json(page)
        return
    t = Table("deal", "dealer", "stage", "lender", "financed", "next due", "waits on")
    for d in page.deals:
        due = f"{d.next_due_at:%Y-%m-%d %H:%M}" if d.next_due_at else ""
        t.add_row(
            d.deal_id,
            d.dealer_id,
            d.stage.value,
            d.lender_id or "",
            f"{d.amount_financed:,.2f}",
            f"[red]{due}[/red]" if d.overdue else due,
            ", ".join(d.pending_roles),
        )
    out.print(t)
    if page.next_cursor:
        out.print(f"more: --cursor {page.next_cursor}")


async def cmd_act(args: argparse.Namespace, service: DealService) -> None:
    payload = read_json(args.payload) if args.payload else {}
    if not isinstance(payload, dict):
        raise CliError("the action payload must be a JSON object", 2)
    result = await service.act(args.deal, args.action, payload)
    if args.json:
        print_json(result)
    else:
        out.print(f"{escape(args.action)}: done")
        show_status(result.status)


async def cmd_cancel(args: argparse.Namespace, service: DealService) -> None:
    result = await service.act(args.deal, "cancel", {"reason": args.reason})
    if args.json:
        print_json(result)
    else:
        show_status(result.status)


async def cmd_upload(args: argparse.Namespace, service: DealService) -> None:
    path = Path(args.file)
    if not path.is_file():  # noqa: ASYNC240 - one stat before the upload starts
        raise CliError(f"{path} is not a file", 2)
    form = DocumentForm(
        kind=args.kind,
        party=args.party,
        id_number=args.id_number,
        period_start=args.period_start,
        period_end=args.period_end,
        stipulation_code=args.stipulation_code,
    )
    doc = await service.upload(args.deal, path, form)
    if args.json:
        print_json(doc)
    else:
        out.print(
            f"recorded {args.party} {escape(args.kind)} from {escape(path.name)} as "
            f"{doc.doc_id} (sha256 {doc.sha256[:12]}…); stage {doc.status.stage.value}"
        )


def show_health(deal_id: str, h: DealHealth) -> None:
    out.print(
        f"[bold red]STUCK[/bold red] {deal_id}: workflow task attempt {h.attempts}"
        + (f", {escape(h.cause)}" if h.cause else "")
        + (f" since {h.failing_since:%Y-%m-%d %H:%M} UTC" if h.failing_since else "")
    )
    if h.message:
        out.print(f"  last failure: {escape(h.message)}")
    if h.last_event:
        out.print(f"  last event: {escape(h.last_event)}")
    out.print(f"  heal: {stuck.heal_command(deal_id)} --reason TEXT")


async def cmd_stuck(args: argparse.Namespace) -> None:
    client = await deals.connect(get_settings())
    found = await stuck.stuck_deals(client, limit=args.limit)
    if args.json:
        rows = [
            {"deal_id": d.deal_id, "run_id": d.run_id, "stage": d.stage, **d.health.model_dump()}
            for d in found
        ]
        print(json.dumps({"stuck": rows}, default=str))
        return
    if not found:
        out.print("no stuck deals")
        return
    t = Table("deal", "stage", "attempt", "cause", "since", "last event", title="Stuck deals")
    for d in found:
        h = d.health
        since = f"{h.failing_since:%Y-%m-%d %H:%M}" if h.failing_since else ""
        t.add_row(d.deal_id, d.stage or "", str(h.attempts), h.cause or "", since, h.last_event)
    out.print(t)
    out.print(f"heal one: {stuck.heal_command('DEAL_ID')} --reason TEXT")


async def cmd_heal(args: argparse.Namespace) -> None:
    client = await deals.connect(get_settings())
    try:
        report = await stuck.heal(client, args.deal, reason=args.reason, force=args.force)
    except stuck.HealError as e:
        raise CliError(str(e), 3) from None
    if args.json:
        print(json.dumps(dataclasses.asdict(report), default=str))
        return
    at = f" ({report.reset_event_time:%Y-%m-%d %H:%M:%S} UTC)" if report.reset_event_time else ""
    out.print(
        f"healed [bold]{report.deal_id}[/bold]: reset to event {report.reset_event_id}{at}, "
        f"{report.events_dropped} later events dropped; new run {report.new_run_id}"
    )
    for item in report.reapplied:
        name = f"{item.name} ({item.update_id})" if item.update_id else item.name
        out.print(f"  {item.kind} {escape(name)}: {escape(item.outcome)}")
    if not report.reapplied:
        out.print("  no staff action or lender event after the reset point")


def cmd_token(args: argparse.Namespace) -> None:
    """A development token signed with DEALFLOW_JWT_SECRET (what the API checks)."""
    settings = get_settings()
    if args.ttl > settings.jwt_max_lifetime_hours * 3600:
        raise CliError(
            f"--ttl {args.ttl} is longer than the API accepts "
            f"(DEALFLOW_JWT_MAX_LIFETIME_HOURS={settings.jwt_max_lifetime_hours:g} h)",
            2,
        )
    try:
        roles = [Role(r) for r in args.role]
        token = mint_token(
            settings.jwt_secret,
            args.sub,
            roles,
            ttl=args.ttl,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            dealers=args.dealer,
            dealers_claim=settings.dealers_claim,
        )
    except ValueError as e:
        raise CliError(f"{e} (roles: {', '.join(r.value for r in Role)})", 2) from None
    if args.json:
        print(
            json.dumps(
                {
                    "token": token,
                    "sub": args.sub,
                    "roles": [r.value for r in roles],
                    "ttl": args.ttl,
                    "dealers": args.dealer,
                }
            )
        )
    else:
        print(token)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="starter.py", description=__doc__.split("\n\n")[0])
    root.add_argument(
        "--as",
        dest="actor",
        type=parse_actor,
        default=f"{getpass.getuser()}:admin",
        help="STAFF_ID:ROLE of who acts",
    )
    root.add_argument("--json", action="store_true", help="machine-readable output")
    root.add_argument(
        "--api",
        metavar="URL",
        help="go through the back-office HTTP API at URL instead of Temporal",
    )
    root.add_argument(
        "--token",
        default=get_settings().api_token,
        help="bearer token for --api (default: DEALFLOW_API_TOKEN)",
    )
    commands = root.add_subparsers(dest="command", required=True)
    _add_token_command(commands)
    _add_deal_commands(commands)
    _add_operator_commands(commands)
    return root


Subparsers = argparse._SubParsersAction  # argparse names no public type for it


def _add_token_command(commands: Subparsers) -> None:
    command = commands.add_parser(
        "token", help="mint a development token (HS256, DEALFLOW_JWT_SECRET)"
    )
    command.add_argument("--sub", required=True, help="the staff id")
    command.add_argument(
        "--role",
        required=True,
        action="append",
        help="a role (repeat for several): " + ", ".join(r.value for r in Role),
    )
    command.add_argument("--ttl", type=int, default=3600, help="seconds the token is valid")
    command.add_argument(
        "--dealer",
        action="append",
        metavar="ID",
        help="a dealer id the token is scoped to (repeat for several); without it the "
        "token sees every dealer's deals",
    )


def _add_deal_commands(commands: Subparsers) -> None:
    command = commands.add_parser(
        "start", help="start a deal from a JSON file (see examples/deal.json)"
    )
    command.add_argument("file")
    command.add_argument("--deal-id")
    command.add_argument("--policy-file", help="DealPolicy JSON (default: DEALFLOW_POLICY_FILE)")
    command.add_argument("--idempotency-key", help="with --api: retry-safe creation")

    command = commands.add_parser("status", help="a deal's stage, pending actions and submissions")
    command.add_argument("deal")
    command.add_argument(
        "--wait",
        type=wait_seconds,
        metavar="SECONDS",
        help="wait up to SECONDS for the deal's next stage, then show the status "
        "(watches the read model; the deal is asked once)",
    )

    command = commands.add_parser("list", help="deals from the read model")
    command.add_argument("--stage")
    command.add_argument("--lender")
    command.add_argument("--dealer")
    command.add_argument("--limit", type=int, default=50)
    command.add_argument("--cursor")
    command.add_argument(
        "--overdue", action="store_true", help="only deals past their next deadline"
    )

    command = commands.add_parser(
        "act", help="take a staff action (payload: JSON file or - for stdin)"
    )
    command.add_argument("deal")
    command.add_argument("action")
    command.add_argument("payload", nargs="?")

    command = commands.add_parser("cancel", help="cancel a deal (runs its compensations)")
    command.add_argument("deal")
    command.add_argument("--reason", required=True)

    command = commands.add_parser(
        "upload",
        help="upload a document (the customer's, or one of the funding package) and record it",
    )
    command.add_argument("deal")
    command.add_argument("kind")
    command.add_argument("file")
    command.add_argument("--party", default="applicant", choices=["applicant", "spouse"])
    command.add_argument("--id-number")
    command.add_argument("--period-start", type=date.fromisoformat)
    command.add_argument("--period-end", type=date.fromisoformat)
    command.add_argument("--stipulation-code")
    command.add_argument("--policy-file")


def _add_operator_commands(commands: Subparsers) -> None:
    command = commands.add_parser(
        "stuck", help="deals whose workflow task keeps failing (operators)"
    )
    command.add_argument("--limit", type=int, default=1000)

    command = commands.add_parser(
        "heal",
        help="reset a stuck deal to its newest replayable workflow task; staff actions "
        "and lender events after it are re-applied (operators)",
    )
    command.add_argument("deal")
    command.add_argument("--reason", required=True, help="why, recorded with the reset")
    command.add_argument("--force", action="store_true", help="reset even if the deal is not stuck")


# Commands on deals, over either transport; the rest are operator commands.
DEAL_COMMANDS = {
    "start": cmd_start,
    "status": cmd_status,
    "list": cmd_list,
    "act": cmd_act,
    "cancel": cmd_cancel,
    "upload": cmd_upload,
}
OPERATOR_COMMANDS = {"stuck": cmd_stuck, "heal": cmd_heal}


async def run_command(args: argparse.Namespace) -> None:
    if args.command in OPERATOR_COMMANDS:
        if args.api:
            raise CliError(f"{args.command} is an operator command over Temporal; drop --api", 2)
        await OPERATOR_COMMANDS[args.command](args)
        return
    service = deal_service(args)
    try:
        await DEAL_COMMANDS[args.command](args, service)
    finally:
        await service.aclose()


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except CliError as e:
        fail(f"error: {e}")
        return e.code
    try:
        check_production(get_settings())
    except StartupError as e:
        for line in str(e).splitlines():
            fail(line)
        return EXIT_CANNOT_START
    try:
        if args.command == "token":
            cmd_token(args)
        else:
            tracing.setup(get_settings(), tracing.SERVICE_CLI)
            asyncio.run(run_command(args))
    except tracing.TracingConfigError as e:
        fail(f"configuration error: {e}")
        return 2
    except (CliError, ServiceError) as e:
        fail(f"error: {e}")
        return e.code
    except remote.ApiError as e:
        fail(f"rejected ({e.status}): {e.detail}" if e.status else f"error: {e.detail}")
        return e.exit_code
    except rules.RuleError as e:
        fail(f"rejected: {e.message}")
        return EXIT[e.kind]
    except deals.DealNotFound as e:
        fail(f"error: {e}")
        return 4
    except DocumentStoreUnavailable as e:
        fail(f"error: document store unavailable: {e}")
        return 1
    except TemporalConfigError as e:
        fail(f"configuration error: {e}")
        return 2
    except RuntimeError as e:
        if "Failed client connect" in str(e) or "connection" in str(e).lower():
            where = temporal_connection(get_settings()).describe()
            fail(f"error: cannot reach Temporal at {where}: {connect_problem(str(e))}")
            return 1
        raise
    finally:
        tracing.shutdown()
    return 0


if __name__ == "__main__":
    code = main()
    # Leave without interpreter finalisation: the Temporal client's native threads
    # can abort it ("PyGILState_Release ... finalizing", temporalio/sdk-python#300),
    # turning a command that succeeded and printed its result into exit -6/134.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
