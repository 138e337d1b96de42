"""The deal page: one deal's stages, money, customer, documents, lenders and
the actions on offer, each a form generated from the action's model, with the
audit timeline and a link to the deal in the Temporal UI.

Live: a small poller asks `/live` every two seconds whether the deal's
version changed; when it did, the status regions come back as out-of-band
swaps, and the actions region too when the set of actions on offer changed:
a form being typed in survives that (`hx-preserve`), while a form whose
action is gone is replaced by a notice saying so.

Refusals (403, 409, 422) re-render the page with the detail beside the form,
or beside the field a validation error names, the typed values kept and
nothing applied; Temporal being unreachable shows a banner, the form kept.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

from dealflow import codec, rules
from dealflow.api import operations
from dealflow.api.deps import Services, services
from dealflow.api.errors import Problem
from dealflow.api.problems import RULE_STATUS
from dealflow.api.routes.deals import check_deal_id
from dealflow.api.routes.documents import FIELDS as UPLOAD_FIELDS
from dealflow.api.security import DOCUMENT_READ_ROLES, UPLOAD_ROLES
from dealflow.audit.histories import RunHistory
from dealflow.audit.render import TimelineView, timeline_view
from dealflow.audit.timeline import build_timeline
from dealflow.client import WorkflowStuck, workflow_id
from dealflow.desk import deal_view
from dealflow.desk.forms import ActionForm, FormValues, form_fields, parse_form, place_errors
from dealflow.desk.pages import render_page
from dealflow.desk.session import DeskUser, SignedIn, checked_form
from dealflow.models import Action, DealStatus, DocumentRecord, StartDealInput
from dealflow.storage.documents import DocumentStoreUnavailable

router = APIRouter()

# The poll's period: what another clerk or a lender's webhook changed shows
# within it.
LIVE_EVERY = "2s"
# How long a page waits for the deal to answer before it says Temporal does
# not (the client's own retries alone would keep a clerk waiting far longer);
# room for a stuck deal's status, which is read after its query timed out.
READ_SECONDS = 10.0
NO_ANSWER = (
    f"Temporal did not answer within {READ_SECONDS:.0f} seconds, so the deal cannot be read "
    "now; the page tries again by itself. Nothing was changed."
)
# Errors that mean "not now" rather than "no": Temporal (or the store) is down
# or the deal is stuck. The page says so in a banner and keeps the form.
UNAVAILABLE = (
    RPCError,
    WorkflowStuck,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    DocumentStoreUnavailable,
)


def trouble_text(error: Exception) -> str:
    """The banner for an error that means "try again later"."""
    if isinstance(error, Problem):
        return error.detail
    if isinstance(error, WorkflowStuck):
        return f"{error}. An operator must heal it; then take the action again."
    if isinstance(error, WorkflowUpdateRPCTimeoutOrCancelledError):
        return (
            "Temporal has not confirmed the action yet and it may still be applied: "
            "reload the deal before taking it again."
        )
    if isinstance(error, DocumentStoreUnavailable):
        return f"The document store cannot be reached ({error}); nothing was recorded. Try again."
    message = error.message if isinstance(error, RPCError) else str(error)
    return f"Temporal cannot be reached ({message}); nothing was applied. Try again in a moment."


@dataclass(frozen=True)
class Loaded:
    """The deal as the page shows it, or why it cannot be read now."""

    status: DealStatus | None
    start: StartDealInput | None
    trouble: str = ""


async def load_deal(
    svc: Services, deal_id: str, dealers: rules.DealerScope, with_start: bool = True
) -> Loaded:
    """The deal's status (and what it started with); a 404 is raised (also for
    a deal outside `dealers`), Temporal being unreachable comes back as the
    banner's text."""
    await operations.check_in_scope(svc, deal_id, dealers, ask_deal=False)
    try:
        async with asyncio.timeout(READ_SECONDS):
            status, start = await _read(svc, deal_id, dealers, with_start)
    except Problem as problem:
        if problem.status == 503:
            return Loaded(None, None, problem.detail)
        raise
    except UNAVAILABLE as error:
        return Loaded(None, None, trouble_text(error))
    except TimeoutError:
        return Loaded(None, None, NO_ANSWER)
    return Loaded(status, start)


class StartInputs:
    """What deals started with (customer, vehicle, lenders, who started them),
    the most recently shown `limit` kept, each under the deal's first stage
    change (the start's time and actor).

    Every run of a deal starts with the same application, policy, lenders and
    starter (continue-as-new passes them on), so a page needs its history's
    first event only once. A deal id started again after its workflow closed
    (the CLI takes a deal id) is another deal, whose first stage change
    differs: it is read afresh. The carried-over state is dropped: the page
    shows the status the deal answers with now, never the state a run began
    with."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._kept: OrderedDict[str, tuple[str, StartDealInput]] = OrderedDict()

    @staticmethod
    def started(status: DealStatus) -> str:
        """The key of the deal's first stage change; "" when the status lacks it
        (a stuck deal's status comes from the read model, without its path)."""
        if not status.transitions:
            return ""
        first = status.transitions[0]
        return f"{first.at.isoformat()} {first.actor}"

    def __contains__(self, deal_id: str) -> bool:
        return deal_id in self._kept

    def get(self, deal_id: str, status: DealStatus) -> StartDealInput | None:
        kept = self._kept.get(deal_id)
        if kept is None or kept[0] != self.started(status):
            return None
        self._kept.move_to_end(deal_id)
        return kept[1]

    def put(self, deal_id: str, status: DealStatus, start: StartDealInput) -> StartDealInput:
        """`start` as kept (and shown): without the state its run began with."""
        start = start.model_copy(update={"state": None})
        key = self.started(status)
        if key:
            self._kept[deal_id] = (key, start)
            self._kept.move_to_end(deal_id)
            while len(self._kept) > self.limit:
                self._kept.popitem(last=False)
        return start


START_INPUTS = StartInputs(limit=2048)


async def _read(
    svc: Services, deal_id: str, dealers: rules.DealerScope, with_start: bool
) -> tuple[DealStatus, StartDealInput | None]:
    """The status and, with `with_start`, the start input: kept from an earlier
    page, or asked together with the status; the status's refusal wins."""
    if not with_start:
        return await operations.read_status(svc, deal_id, dealers), None
    if deal_id in START_INPUTS:
        status = await operations.read_status(svc, deal_id, dealers)
        kept = START_INPUTS.get(deal_id, status)
        if kept is None:
            kept = START_INPUTS.put(deal_id, status, await operations.read_deal_input(svc, deal_id))
        return status, kept
    answer, first = await asyncio.gather(
        operations.read_status(svc, deal_id, dealers),
        operations.read_deal_input(svc, deal_id),
        return_exceptions=True,
    )
    for outcome in (answer, first):
        if isinstance(outcome, BaseException):
            raise outcome
    assert isinstance(answer, DealStatus) and isinstance(first, StartDealInput)
    return answer, START_INPUTS.put(deal_id, answer, first)


def _today(svc: Services) -> date:
    """The dealer's date, for the forms' date fields."""
    return rules.dealer_date(svc.deal_policy, datetime.now(UTC))


def _shown(raw: str) -> list[str]:
    """The actions a page shows, as its poll sends them back (unknown names dropped)."""
    known = {action.value for action in Action}
    return [name for name in raw.split(",")[:40] if name in known]


def live_url(deal_id: str, signature: str, version: int = -1) -> str:
    """The poll of a page that shows `version` of the deal and forms or notices
    for the actions of `signature` (-1: a page that shows no status)."""
    return f"/desk/deals/{deal_id}/live?v={version}&shown={quote(signature, safe=',')}"


def temporal_ui_url(request: Request, svc: Services, deal_id: str) -> str:
    """The deal in the Temporal UI, on the host the desk was reached on (the
    development stack serves both)."""
    settings = svc.settings
    host = request.url.hostname or "localhost"
    return (
        f"http://{host}:{settings.temporal_ui_port}/namespaces/{quote(settings.namespace)}"
        f"/workflows/{workflow_id(deal_id)}"
    )


def upload_form(values: FormValues | None = None, detail: str = "") -> ActionForm:
    """The upload's fields, generated like every action's from record-document's model."""
    fields = form_fields(deal_view.action_model(Action.RECORD_DOCUMENT), only=UPLOAD_FIELDS)
    return ActionForm(
        Action.RECORD_DOCUMENT.value,
        fields,
        values=values or {},
        detail=detail,
        posted=values is not None,
    )


def funding_uploads(user: DeskUser, status: DealStatus) -> set[str]:
    """The funding documents this user may upload in the deal's stage (the
    rules may still ask for a stalled disbursement first)."""
    return {
        item.kind.value
        for item in status.funding
        if user.may(rules.DOCUMENT_ROLES[item.kind])
        and status.stage in rules.document_stages(item.kind)
    }


def status_context(
    svc: Services,
    user: DeskUser,
    deal_id: str,
    status: DealStatus,
    panels: list[deal_view.ActionPanel],
) -> dict[str, Any]:
    """What the polled regions show (the page and `/live` render the same)."""
    status = rules.status_for_roles(status, user.roles)
    path, outcomes = deal_view.stage_bar(status, datetime.now(UTC))
    checklist, other_documents = deal_view.checklist_by_party(status)
    return {
        "deal_id": deal_id,
        "status": status,
        "stage_path": path,
        "outcomes": outcomes,
        "money": deal_view.money_view(status),
        "checklist": checklist,
        "other_documents": other_documents,
        "funding": deal_view.funding_rows(status),
        "funding_uploads": funding_uploads(user, status),
        "stipulations_met": deal_view.stipulations_met(status),
        "conditions": deal_view.conditions(status),
        "unwind_steps": deal_view.unwind_steps(status),
        "may_read_documents": user.may(DOCUMENT_READ_ROLES),
        "may_upload": user.may(UPLOAD_ROLES),
        "accepting_documents": status.stage in rules.ACTION_STAGES[Action.RECORD_DOCUMENT],
        "panels": panels,
        "live_url": live_url(deal_id, deal_view.signature(panels), status.version),
        "live_every": LIVE_EVERY,
    }


def _last_post(
    status: DealStatus | None, done: str, uploaded: str
) -> tuple[str, DocumentRecord | None]:
    """What the last post did, said once on the page it redirected to: the
    action applied, the document recorded."""
    applied = done if done in {action.value for action in Action} else ""
    documents = status.documents if status is not None and uploaded else []
    return applied, next((doc for doc in documents if doc.doc_id == uploaded), None)


async def render_deal(
    request: Request,
    user: DeskUser,
    deal_id: str,
    *,
    status_code: int = 200,
    posted: ActionForm | None = None,
    upload: ActionForm | None = None,
    trouble: str = "",
    done: str = "",
    uploaded: str = "",
) -> HTMLResponse:
    """The deal page; `posted` (an action's form) or `upload` as just refused;
    `done` the action, `uploaded` the document, the last post applied. With
    `trouble` (Temporal just failed) the deal is not asked again."""
    svc = services(request)
    try:
        check_deal_id(deal_id)
        user.actor(rules.READ_ROLES, "read deals")
        if trouble:
            await operations.check_in_scope(svc, deal_id, user.dealers, ask_deal=False)
            loaded = Loaded(None, None, trouble)
        else:
            loaded = await load_deal(svc, deal_id, user.dealers)
    except Problem as problem:
        return error_page(request, user, problem)
    status = loaded.status
    context: dict[str, Any] = {
        "deal_id": deal_id,
        "status": None,
        "panels": [],
        "trouble": loaded.trouble,
        "customer": [],
        "start": loaded.start,
        "upload": upload or upload_form(),
        "max_upload_mb": svc.deal_policy.max_document_bytes // (1024 * 1024),
        "temporal_url": temporal_ui_url(request, svc, deal_id),
        "live_url": live_url(deal_id, ""),
        "live_every": LIVE_EVERY,
    }
    context["applied"], context["uploaded"] = _last_post(status, done, uploaded)
    if loaded.start is not None:
        context["customer"] = deal_view.customer_view(loaded.start.deal, user.may(rules.NAME_ROLES))
    if status is not None:
        panels = deal_view.action_panels(status, user.may, _today(svc), posted)
        context.update(status_context(svc, user, deal_id, status, panels))
    elif posted is not None:
        # The deal cannot be read: the form that was sent stays, as typed.
        owner = rules.owner_role(Action(posted.action))
        context["panels"] = [
            deal_view.ActionPanel(posted.action, "", owner, None, "form", form=posted)
        ]
    return render_page(
        request, "desk/deal.html", user, status_code=status_code, section="deals", **context
    )


def error_page(request: Request, user: DeskUser, problem: Problem) -> HTMLResponse:
    titles = {403: "Not allowed", 404: "Not found"}
    return render_page(
        request,
        "desk/error.html",
        user,
        status_code=problem.status,
        title=titles.get(problem.status, "Cannot show this"),
        message=problem.detail,
    )


# --------------------------------------------------------------------------- routes


@router.get("/desk/deals/{deal_id}", include_in_schema=False)
async def deal_page(
    request: Request,
    deal_id: str,
    user: SignedIn,
    done: str = "",
    uploaded: str = "",
    kind: str = "",
    party: str = "",
) -> HTMLResponse:
    # A checklist item's "upload" link names its kind and party.
    values = {name: [value] for name, value in (("kind", kind), ("party", party)) if value}
    return await render_deal(
        request,
        user,
        deal_id,
        upload=upload_form(values) if values else None,
        done=done[:40],
        uploaded=uploaded[:80],
    )


@router.get("/desk/deals/{deal_id}/live", include_in_schema=False)
async def live(
    request: Request, deal_id: str, user: SignedIn, v: int = -1, shown: str = ""
) -> Response:
    """What changed since the page's version `v`: nothing (204), or the status
    regions as out-of-band swaps, with the actions region when the actions on
    offer are no longer those the page shows (`shown`)."""
    svc = services(request)
    try:
        check_deal_id(deal_id)
        user.actor(rules.READ_ROLES, "read deals")
        loaded = await load_deal(svc, deal_id, user.dealers, with_start=False)
    except Problem as problem:
        # Gone or forbidden: stop polling (htmx stops on 286) and say why.
        return render_page(
            request,
            "desk/_deal_live.html",
            user,
            status_code=286,
            trouble=problem.detail,
            status=None,
            live_url="",
            live_every=LIVE_EVERY,
        )
    was = _shown(shown)
    if loaded.status is None:
        # Keep what the page shows; the banner says why, and the next poll
        # that reads the deal refreshes everything (version -1).
        return render_page(
            request,
            "desk/_deal_live.html",
            user,
            trouble=loaded.trouble,
            status=None,
            live_url=live_url(deal_id, ",".join(was)),
            live_every=LIVE_EVERY,
        )
    panels = deal_view.action_panels(loaded.status, user.may, _today(svc), shown=was)
    changed = deal_view.signature(panels) != ",".join(sorted(was))
    if loaded.status.version == v and not changed:
        return Response(status_code=204)
    context = status_context(svc, user, deal_id, loaded.status, panels)
    response = render_page(
        request, "desk/_deal_live.html", user, actions_changed=changed, trouble="", **context
    )
    # Parts of the page that are not polled (the timeline) read themselves again.
    response.headers["HX-Trigger"] = "deal-changed"
    return response


@router.post("/desk/deals/{deal_id}/actions/{action}", include_in_schema=False)
async def take_action(request: Request, deal_id: str, action: str, user: SignedIn) -> Response:
    form = await checked_form(request, user)
    known = {item.value for item in Action if item is not Action.RECORD_DOCUMENT}
    if action not in known:
        return error_page(request, user, Problem(404, f"there is no action {action[:40]!r}"))
    act = Action(action)
    values: FormValues = {
        name: [value for value in form.getlist(name) if isinstance(value, str)]
        for name in form
        if name != "csrf"
    }
    posted = ActionForm(
        act.value, deal_view.new_form(act, _today(services(request))).fields, values, posted=True
    )
    try:
        await _apply(services(request), deal_id, act, posted, user)
    except Problem as problem:
        if problem.status == 503:
            return await render_deal(
                request, user, deal_id, status_code=503, posted=posted, trouble=problem.detail
            )
        posted.detail = problem.detail
        return await render_deal(request, user, deal_id, status_code=problem.status, posted=posted)
    except rules.RuleError as refusal:
        posted.detail = refusal.message
        status_code = RULE_STATUS[refusal.kind]
        return await render_deal(request, user, deal_id, status_code=status_code, posted=posted)
    except UNAVAILABLE as error:
        return await render_deal(
            request, user, deal_id, status_code=503, posted=posted, trouble=trouble_text(error)
        )
    return RedirectResponse(f"/desk/deals/{deal_id}?done={act.value}#deal-actions", 303)


async def _apply(
    svc: Services, deal_id: str, action: Action, posted: ActionForm, user: DeskUser
) -> None:
    """Check and take the action; a refusal raises, with the errors by field on `posted`.
    The order is the API's: the role (403), the fields (422), then the deal (404, 409)."""
    check_deal_id(deal_id)
    actor = user.actor(rules.ACTION_ROLES[action], action.value)
    payload, unreadable = parse_form(posted.fields, posted.values)
    if unreadable:
        posted.errors = unreadable
        raise Problem(422, "some fields could not be read; see the fields marked")
    try:
        body = deal_view.action_model(action).model_validate(payload)
    except ValidationError as invalid:
        posted.errors, unplaced = place_errors(posted.fields, invalid)
        raise Problem(422, "; ".join(unplaced) or "check the fields marked") from None
    await operations.take_action(
        svc, deal_id, action, body.model_dump(mode="json"), actor, user.dealers
    )


# --------------------------------------------------------------------------- timeline


def _keyring(svc: Services) -> codec.Keyring:
    """The keys the client's data converter decrypts with: the timeline reads
    the history with the same ones."""
    payload_codec = svc.client.data_converter.payload_codec
    if isinstance(payload_codec, codec.AesGcmCodec):
        return payload_codec.keyring
    return codec.load_keyring(svc.settings.codec_keys or "")


async def deal_timeline(
    svc: Services, deal_id: str, dealers: rules.DealerScope
) -> tuple[TimelineView, bool]:
    """The timeline of the deal's current run, and whether earlier runs exist
    (404 for a deal outside `dealers`).

    One run's history is bounded (the deal continues as new past the policy's
    `max_history_events`), so the page stays bounded; the earlier runs are the
    audit tool's (`dealflow-audit timeline DEAL_ID` reads them all).
    """
    await operations.check_in_scope(svc, deal_id, dealers)
    handle = svc.client.get_workflow_handle(workflow_id(deal_id))
    try:
        history = await handle.fetch_history()
    except RPCError as error:
        if error.status is RPCStatusCode.NOT_FOUND:
            raise Problem(404, f"deal {deal_id} does not exist") from None
        raise
    events = list(history.events)
    run = RunHistory(history.workflow_id, events, f"{history.workflow_id}@current")
    timeline = await asyncio.to_thread(build_timeline, [run], _keyring(svc))
    started = events[0].workflow_execution_started_event_attributes if events else None
    view = timeline_view(timeline)
    # The desk masks ID and account numbers for every role, in the timeline too.
    rows = [
        replace(row, cells=[deal_view.mask_numbers(cell) for cell in row.cells])
        for row in view.rows
    ]
    return replace(view, rows=rows), bool(started and started.continued_execution_run_id)


@router.get("/desk/deals/{deal_id}/timeline", include_in_schema=False)
async def timeline(request: Request, deal_id: str, user: SignedIn) -> HTMLResponse:
    svc = services(request)
    fragment = bool(request.headers.get("hx-request"))
    template = "desk/_deal_timeline.html" if fragment else "desk/deal_timeline.html"
    context: dict[str, Any] = {"deal_id": deal_id, "timeline": None, "earlier_runs": False}
    try:
        check_deal_id(deal_id)
        user.actor(rules.READ_ROLES, "read deals")
        async with asyncio.timeout(READ_SECONDS):
            context["timeline"], context["earlier_runs"] = await deal_timeline(
                svc, deal_id, user.dealers
            )
    except TimeoutError:
        context["trouble"] = NO_ANSWER
    except Problem as problem:
        if not fragment:
            return error_page(request, user, problem)
        context["trouble"] = problem.detail
    except UNAVAILABLE as error:
        context["trouble"] = trouble_text(error)
    context.setdefault("trouble", "")
    return render_page(request, template, user, section="deals", **context)
