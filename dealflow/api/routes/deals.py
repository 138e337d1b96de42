"""The back-office API's deals (docs/architecture.md §3.3): start, list and read
deals, take staff actions.

Every route authenticates first (401), then checks the role against the
permission table (403), then validates (422), then asks the deal (404, 409).
The validation and the Temporal calls are `dealflow.client`'s, the same the CLI
and the demo use; the workflow's update validators have the last word and a
refusal of theirs comes back as 409 or 422, never 500.

This module deliberately has no `from __future__ import annotations`: the
per-action routes are made in a loop, and FastAPI must see their body models
as real classes, not as names to look up in the module.
"""

import json
import logging
import re
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, create_model

from dealflow import deal_wait, rules
from dealflow.api import operations
from dealflow.api.boundary import boundary_field, boundary_model
from dealflow.api.deps import services
from dealflow.api.errors import Problem
from dealflow.api.problems import responses
from dealflow.api.schemas import ActionResultView, DealStatusView
from dealflow.api.security import (
    READ_ROLES,
    START_DEAL_ROLES,
    Principal,
    authenticate,
    bearer_scheme,
    dealer_scope,
    require_roles,
)
from dealflow.models import (
    ACTION_INPUTS,
    STAGE_ORDER,
    Action,
    ActionResult,
    Actor,
    DealCreated,
    DealInput,
    DealPage,
    DealStatus,
    Role,
    Stage,
)
from dealflow.samples import EXAMPLES, example_action

log = logging.getLogger("dealflow.api")
router = APIRouter(dependencies=[Depends(bearer_scheme)])

DEAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
IDEMPOTENCY_KEY = r"^[\x21-\x7e]{1,200}$"
MAX_PAGE = 200
# The largest version a client may name: JSON's largest safe integer.
MAX_VERSION = 2**53 - 1
DealSort = Literal["updated", "created", "due", "stage_entered"]

# Who may call each route: the dependency checks the token (401) and the role
# (403) and gives the route its actor.
DealStarter = Annotated[Actor, Depends(require_roles(START_DEAL_ROLES, "start a deal"))]
DealLister = Annotated[Actor, Depends(require_roles(READ_ROLES, "list deals"))]
DealReader = Annotated[Actor, Depends(require_roles(READ_ROLES, "read deals"))]
DealIdPath = Annotated[str, Path(description="the deal id, e.g. 20261128-3f9a0c1e")]
# The caller's dealers (DEALFLOW_DEALERS_CLAIM; None: all): a deal of another
# dealer is answered 404, like an unknown one.
Dealers = Annotated[rules.DealerScope, Depends(dealer_scope)]


def check_deal_id(deal_id: str) -> None:
    """A deal id that cannot exist is an unknown deal (404), without asking Temporal."""
    if not DEAL_ID.match(deal_id):
        raise Problem(404, f"deal {deal_id[:80]!r} does not exist")


# --------------------------------------------------------------------------- models


def _example_deal() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EXAMPLES / "deal.json").read_text(encoding="utf-8"))
    return loaded


def body_model(action: Action) -> type[BaseModel]:
    """The JSON body of an action: its input model without `actor`, which the
    token supplies. Same fields and constraints, read as the schema publishes
    them (`dealflow.api.boundary`), so FastAPI documents and checks it;
    `dealflow.client.parse_action` then validates it once more with the model
    the workflow receives."""
    source = ACTION_INPUTS[action]
    fields: dict[str, Any] = {
        name: boundary_field(info) for name, info in source.model_fields.items() if name != "actor"
    }
    name = source.__name__.removesuffix("Input") + "Body"
    model: type[BaseModel] = create_model(
        name,
        __config__=ConfigDict(
            extra="forbid", json_schema_extra={"examples": [example_action(action.value)]}
        ),
        __doc__=f"The body of `{action.value}` (the actor comes from the token).",
        **fields,
    )
    return model


# Staff actions of docs/architecture.md §3.3; record-document is the upload route's.
ACTION_ROUTES = [action for action in Action if action is not Action.RECORD_DOCUMENT]
ACTION_BODIES: dict[Action, type[BaseModel]] = {
    action: body_model(action) for action in ACTION_ROUTES
}
# A DealInput (a subclass) that reads its body as the schema publishes it.
DealBody = boundary_model(DealInput)


# --------------------------------------------------------------------------- links


def operation_ref(path: str, method: str) -> str:
    """An OpenAPI link's reference to the operation `method` on `path`."""
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


def deal_links() -> dict[str, Any]:
    """What a client can do with the deal `POST /api/deals` answers: read it,
    its documents, upload one, take each action (so generated clients and
    stateful tests can follow the deal id)."""
    deal_id = {"deal_id": "$response.body#/deal_id"}
    targets = {
        "GetDeal": ("/api/deals/{deal_id}", "get"),
        "ListDocuments": ("/api/deals/{deal_id}/documents", "get"),
        "UploadDocument": ("/api/deals/{deal_id}/documents", "post"),
    }
    for action in ACTION_ROUTES:
        targets[action.value] = (f"/api/deals/{{deal_id}}/actions/{action.value}", "post")
    return {
        name: {"operationRef": operation_ref(path, method), "parameters": deal_id}
        for name, (path, method) in targets.items()
    }


# --------------------------------------------------------------------------- routes


@router.post(
    "/api/deals",
    status_code=201,
    response_model=DealCreated,
    tags=["deals"],
    summary="Start a deal",
    responses={
        201: {
            "description": "the deal is started (or, with a repeated Idempotency-Key and "
            "the same body, was started before: header Idempotent-Replayed)",
            "links": deal_links(),
        },
        **responses(
            401,
            403,
            422,
            503,
            d403="only sales (and admin) start deals; a token scoped to dealers "
            "starts deals for those dealers only",
            d422="invalid deal body (each rule broken is named), or the "
            "Idempotency-Key was used before with a different body",
        ),
    },
)
async def create_deal(
    request: Request,
    response: Response,
    actor: DealStarter,
    dealers: Dealers,
    deal: Annotated[
        DealBody,  # type: ignore[valid-type]
        Body(
            openapi_examples={"deal": {"summary": "examples/deal.json", "value": _example_deal()}}
        ),
    ],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=IDEMPOTENCY_KEY,
            description="retry-safe creation: the same key and body give the same deal; "
            "the same key with another body is refused (422)",
        ),
    ] = None,
) -> DealCreated:
    outcome = await operations.start_deal(services(request), deal, actor, idempotency_key, dealers)
    if outcome.replayed_status is not None:
        response.status_code = outcome.replayed_status
        response.headers["Idempotent-Replayed"] = "true"
    return outcome.created


@router.get(
    "/api/deals",
    response_model=DealPage,
    tags=["deals"],
    summary="List deals (read model)",
    responses=responses(
        401,
        403,
        422,
        d422="an unknown stage, a bad limit or a cursor that was not returned by this list",
    ),
)
async def list_deals(
    request: Request,
    actor: DealLister,
    dealers: Dealers,
    stage: Annotated[Stage | None, Query(description="only deals in this stage")] = None,
    lender: Annotated[str | None, Query(max_length=64, description="current lender id")] = None,
    dealer: Annotated[str | None, Query(max_length=64, description="dealer id")] = None,
    overdue: Annotated[
        bool, Query(description="only deals whose next deadline has passed")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=512, description="next_cursor of the previous page")
    ] = None,
    sort: Annotated[
        DealSort,
        Query(
            description="updated (newest change first, the default), created (newest deal "
            "first), due (soonest deadline first), stage_entered (longest in its stage first); "
            "a cursor belongs to the order it was returned in"
        ),
    ] = "updated",
) -> DealPage:
    return await operations.list_deals(
        services(request),
        dealers,
        stage=stage.value if stage else None,
        lender_id=lender,
        dealer_id=dealer,
        overdue=overdue,
        limit=limit,
        cursor=cursor,
        sort=sort,
    )


@router.get(
    "/api/deals/{deal_id}",
    response_model=DealStatusView,
    tags=["deals"],
    summary="A deal's status: stage, checklist, pending actions, lenders, money",
    description="Documents' names and hashes only for the roles that may read documents "
    "(sales, credit, auditor, admin); never a storage key.",
    responses=responses(401, 403, 404, 503),
)
async def get_deal(
    request: Request, deal_id: DealIdPath, actor: DealReader, dealers: Dealers
) -> DealStatus:
    check_deal_id(deal_id)
    status = await operations.read_status(services(request), deal_id, dealers)
    return rules.status_for_roles(status, [actor.role])


WAIT_OUTCOME = {
    "description": "`changed`: the deal shows the change waited for; `timeout`: it did not "
    "within the wait (or the server is stopping), and the body is its status as it is",
    "schema": {"type": "string", "enum": ["changed", "timeout"]},
}


@router.get(
    "/api/deals/{deal_id}/next-status",
    response_model=DealStatusView,
    tags=["deals"],
    summary="Wait for a deal to change (long poll), then its status",
    description="Answers as soon as the deal's stage is no longer `after_stage`, or its "
    "`version` is past `after_version` (either, when both are given), or after `wait` "
    "seconds with the status as it is then: 200 either way, header `Wait-Outcome` says "
    "which. The body is `GET /api/deals/{deal_id}`'s, for the same roles and dealers. "
    "The wait watches DealFlow's read model, not the deal, and asks the deal once when "
    "it ends. At most `DEALFLOW_STATUS_WAITS_PER_SUBJECT` (4) waits per person at once "
    "(429 with Retry-After past it); a wait ends early if the client goes away.",
    responses={
        200: {"description": "the deal's status", "headers": {"Wait-Outcome": WAIT_OUTCOME}},
        **responses(
            401,
            403,
            404,
            422,
            429,
            503,
            d422="neither after_stage nor after_version, an unknown stage, or a wait "
            "outside 0–30 seconds",
            d429="too many status waits open at once (yours, or the server's); header Retry-After",
        ),
    },
)
async def next_status(
    request: Request,
    response: Response,
    deal_id: DealIdPath,
    actor: DealReader,
    dealers: Dealers,
    after_stage: Annotated[
        Stage | None, Query(description="the stage the client last saw: wait until another")
    ] = None,
    after_version: Annotated[
        int | None,
        Query(
            ge=0,
            le=MAX_VERSION,
            description="the status `version` the client last saw: wait for a newer one",
        ),
    ] = None,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=deal_wait.MAX_WAIT_SECONDS,
            description="seconds to wait at most (the server may allow fewer: "
            "DEALFLOW_STATUS_WAIT_MAX_SECONDS); 0 answers at once",
        ),
    ] = deal_wait.MAX_WAIT_SECONDS,
) -> Any:
    check_deal_id(deal_id)
    if after_stage is None and after_version is None:
        raise Problem(
            422,
            "say what to wait for: after_stage (the stage you last saw), after_version "
            "(the status version you last saw), or both",
        )
    awaited = await operations.next_status(
        services(request),
        deal_id,
        dealers,
        deal_wait.Change(stage=after_stage, version=after_version),
        wait,
        actor.staff_id,
        request.is_disconnected,
    )
    if awaited is None:
        # The client went away: nobody reads this answer.
        return Response(status_code=204)
    response.headers["Wait-Outcome"] = "changed" if awaited.changed else "timeout"
    return rules.status_for_roles(awaited.status, [actor.role])


def _action_endpoint(action: Action, body: type[BaseModel]) -> Any:
    example = example_action(action.value)

    async def endpoint(
        request: Request,
        deal_id: DealIdPath,
        actor: Annotated[Actor, Depends(require_roles(rules.ACTION_ROLES[action], action.value))],
        dealers: Dealers,
        payload: Annotated[
            body,  # type: ignore[valid-type]
            Body(
                openapi_examples={
                    "example": {
                        "summary": f"examples/actions/{action.value}.json",
                        "value": example,
                    }
                },
            ),
        ],
    ) -> ActionResult:
        check_deal_id(deal_id)
        body_json = cast(BaseModel, payload).model_dump(mode="json")
        result = await operations.take_action(
            services(request), deal_id, action, body_json, actor, dealers
        )
        return result.model_copy(
            update={"status": rules.status_for_roles(result.status, [actor.role])}
        )

    endpoint.__name__ = "action_" + action.update_name
    return endpoint


def _roles_text(action: Action) -> str:
    return ", ".join(sorted(role.value for role in rules.ACTION_ROLES[action] | {Role.ADMIN}))


def _stages_text(action: Action) -> str:
    return ", ".join(stage.value for stage in STAGE_ORDER if stage in rules.ACTION_STAGES[action])


for _action in ACTION_ROUTES:
    router.add_api_route(
        f"/api/deals/{{deal_id}}/actions/{_action.value}",
        _action_endpoint(_action, ACTION_BODIES[_action]),
        methods=["POST"],
        response_model=ActionResultView,
        tags=["actions"],
        summary=f"{_action.value} (roles: {_roles_text(_action)})",
        description=(
            f"A Temporal Update of the deal; its validator checks the role, the stage "
            f"({_stages_text(_action)}) and the body before anything is written to history. "
            f"Roles: {_roles_text(_action)}. The actor is the token's `sub`."
        ),
        responses={
            200: {"description": "accepted: the deal's new status"},
            **responses(401, 403, 404, 409, 422, 503),
        },
    )


@router.post("/api/deals/{deal_id}/actions/{action}", include_in_schema=False)
async def unknown_action(
    request: Request,
    deal_id: str,
    action: str,
    principal: Annotated[Principal, Depends(authenticate)],
) -> None:
    """Any other action name: 404 (the action, like a deal, is a resource that does not exist)."""
    if action == Action.RECORD_DOCUMENT.value:
        raise Problem(
            404, f"documents are recorded by uploading them: POST /api/deals/{deal_id}/documents"
        )
    known = ", ".join(known_action.value for known_action in ACTION_ROUTES)
    raise Problem(404, f"unknown action {action[:80]!r}; known: {known}")
