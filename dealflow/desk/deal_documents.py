"""Customer documents on the deal page: upload through the desk's form, download.

Both are the JSON API's own code paths (`dealflow/api/routes/documents.py`):
the same permission sets, the upload streamed into the store as it arrives and
recorded by the `record-document` update, the download logged and served from
the store. The desk adds its session and the form's CSRF field, which the form
sends first: the upload is refused before a byte of the file is read without it.
"""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dealflow import rules
from dealflow.api.deps import services
from dealflow.api.errors import Problem
from dealflow.api.multipart import drain_unparsed
from dealflow.api.problems import RULE_STATUS
from dealflow.api.routes.deals import check_deal_id
from dealflow.api.routes.documents import receive_upload, serve_document
from dealflow.api.security import DOCUMENT_READ_ROLES, UPLOAD_ROLES
from dealflow.desk.deal_page import UNAVAILABLE, error_page, render_deal, trouble_text, upload_form
from dealflow.desk.session import CsrfRefused, SignedIn

router = APIRouter()

UPLOAD_WHAT = "upload documents (record-document)"


@router.post("/desk/deals/{deal_id}/documents", include_in_schema=False)
async def upload(request: Request, deal_id: str, user: SignedIn) -> Response:
    typed: dict[str, str] = {}

    def check_csrf(fields: dict[str, str]) -> None:
        typed.update((name, value) for name, value in fields.items() if name != "csrf")
        sent = fields.get("csrf", "")
        if not secrets.compare_digest(sent.encode(), user.csrf_token.encode()):
            raise CsrfRefused()

    try:
        actor = user.actor(UPLOAD_ROLES, UPLOAD_WHAT)
    except Problem as refusal:
        await drain_unparsed(request)
        return await _refused(request, user, deal_id, refusal.status, refusal.detail, typed)
    try:
        uploaded = await receive_upload(
            request,
            deal_id,
            actor,
            user.dealers,
            extra_fields=("csrf",),
            check_fields=check_csrf,
        )
    except Problem as problem:
        return await _refused(request, user, deal_id, problem.status, problem.detail, typed)
    except rules.RuleError as refusal:
        status_code = RULE_STATUS[refusal.kind]
        return await _refused(request, user, deal_id, status_code, refusal.message, typed)
    except UNAVAILABLE as error:
        return await _refused(request, user, deal_id, 503, trouble_text(error), typed)
    target = f"/desk/deals/{deal_id}?uploaded={uploaded.doc_id or ''}#upload"
    return RedirectResponse(target, status_code=303)


async def _refused(
    request: Request,
    user: SignedIn,
    deal_id: str,
    status_code: int,
    detail: str,
    typed: dict[str, str],
) -> HTMLResponse:
    """The deal page again, the refusal beside the upload form, the fields as typed
    (a file input cannot be refilled: the browser asks for the file again)."""
    form = upload_form({name: [value] for name, value in typed.items()}, detail)
    trouble = detail if status_code == 503 else ""
    return await render_deal(
        request, user, deal_id, status_code=status_code, upload=form, trouble=trouble
    )


@router.get("/desk/deals/{deal_id}/documents/{doc_id}", include_in_schema=False)
async def download(request: Request, deal_id: str, doc_id: str, user: SignedIn) -> Response:
    try:
        check_deal_id(deal_id)
        actor = user.actor(DOCUMENT_READ_ROLES, "read documents")
        return await serve_document(services(request), deal_id, doc_id, actor, user.dealers)
    except Problem as problem:
        return error_page(request, user, problem)
