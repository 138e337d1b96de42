"""Customer documents over HTTP: upload (streamed to the store), list and download.

Upload (`POST /api/deals/{deal_id}/documents`, multipart/form-data): the body
is parsed as it arrives and the file part is streamed straight into the
document store (a temp file or an S3 multipart upload) while it is hashed —
no more than one network chunk (~64 KiB) of it is held in memory, and nothing
is spooled to disk first. The limit is the policy's `max_document_bytes`
(20 MiB by default, `DEALFLOW_POLICY_FILE` to change): a Content-Length that
already says more is refused with 413 before a byte is read, and a stream that
goes past it is aborted with 413, the partial object removed by the store.

Order of checks, cheapest first, so that most mistakes store nothing at all:
token (401), role (403), deal (404), stage (409), the form fields (422: kind,
party, dates, the ID number's checksum; 403/409: the kind's role and stages),
the file's first bytes (422 unless PDF, JPEG or PNG), the size (413), then the
deal's own rules in the workflow's `record-document` validator (422: duplicate
of another kind, an ID number that is not the deal's, a stipulation that is
not open; 409: a funding document while a disbursement request is open). When
the workflow refuses a file its bytes may remain in the content-addressed
store, unreferenced: they are never listed or served (reads go through the
recorded documents) and a later upload of the same bytes reuses them.

The parts may come in any order (the published schema cannot state one). When
the fields a judgement needs (kind, party, the kind's own: an ID card's
id_number, a bank statement's period, a stipulation's code) come before the
file, as curl -F, httpx and browsers send them, they are judged before a byte of
the file is read and the file is streamed; fields after the file are judged,
with the others, when the file part ends and before the store keeps it. When
the file comes first, it is kept (dealflow/api/multipart.py `SpooledPart`:
within the same size limit and timing, removed when the request ends) until
the fields after it have been read and judged, then stored the same way. The
deal desk's form is the exception: its CSRF field must come before the file
(its page sends it first), so a forged form is refused before the file is read.

Bounded (dealflow/api/upload_gate.py): the store consumes the file in the
uploads' own thread pool; each read waits at most the idle timeout for the next
chunk and the body must arrive within the upload deadline (408); one person has
at most `DEALFLOW_UPLOADS_PER_SUBJECT` uploads running (429, Retry-After). A
refusal reads the rest of an authenticated client's body (bounded in size and
time, so it reads the answer) except after a 408, which closes the connection.
"""

import asyncio
import contextvars
import functools
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from python_multipart.multipart import parse_options_header

from dealflow import client as deals
from dealflow import rules
from dealflow.api.body_limits import ENVELOPE_BYTES
from dealflow.api.deps import Services, services
from dealflow.api.errors import Problem
from dealflow.api.multipart import FileStream, MultipartReader, SpooledPart, drain_unparsed
from dealflow.api.operations import read_status
from dealflow.api.problems import RULE_STATUS, responses
from dealflow.api.routes.deals import Dealers, DealIdPath, check_deal_id
from dealflow.api.routes.files import FILE_CONTENT, stream_local_file
from dealflow.api.schemas import UPLOAD_BODY, DocumentInfo, DocumentList, DocumentUploadedView
from dealflow.api.security import (
    DOCUMENT_READ_ROLES,
    UPLOAD_ROLES,
    bearer_scheme,
    require_roles,
)
from dealflow.api.upload_gate import UploadTiming
from dealflow.models import (
    Action,
    ActionResult,
    Actor,
    DocumentKind,
    DocumentUploaded,
    Party,
    RecordDocumentInput,
    Stage,
)
from dealflow.storage.documents import DocumentTooLarge, LocalDirectoryStore, StoredObject
from dealflow.uploads import SNIFF_BYTES, record_stored, store_checked

log = logging.getLogger("dealflow.api")
router = APIRouter()

# How long a document link (S3 presigned URL) given to staff stays valid.
DOWNLOAD_LINK_SECONDS = 60
FIELDS = ("kind", "party", "id_number", "period_start", "period_end", "stipulation_code")


# What each kind needs besides kind and party, and the refusal when it is missing.
KIND_NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    DocumentKind.ID_CARD.value: (("id_number",), "an ID card needs the id_number printed on it"),
    DocumentKind.BANK_STATEMENT.value: (
        ("period_start", "period_end"),
        "a bank statement needs period_start and period_end",
    ),
    DocumentKind.STIPULATION.value: (
        ("stipulation_code",),
        "a stipulation document needs the stipulation_code it satisfies",
    ),
}


async def _read_fields(
    reader: MultipartReader, fields: dict[str, str], extra_fields: tuple[str, ...]
) -> str | None:
    """Read form fields (FIELDS and `extra_fields`) into `fields` until the file
    part begins (its file name is returned) or the body ends (None)."""
    while (event := await reader.next()) is not None:
        if event[0] != "begin":
            continue
        name, filename = event[1], event[2]
        if name == "file":
            base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
            return (base or "upload")[:200]
        if name not in FIELDS and name not in extra_fields:
            raise Problem(
                422, f"unknown field {name!r}; the fields are {', '.join(FIELDS)} and file"
            )
        if name in fields:
            raise Problem(422, f"field {name} is given twice")
        fields[name] = await reader.read_value(name)
    return None


def _needs_more(fields: dict[str, str]) -> bool:
    """Whether a field the judgement needs is still missing (it may follow the file)."""
    needs, _ = KIND_NEEDS.get(fields.get("kind", ""), ((), ""))
    return any(not fields.get(name) for name in ("kind", "party", *needs))


def _check_form_fields(
    fields: dict[str, str], file_name: str, actor: Actor, today: date, stage: Stage
) -> dict[str, Any]:
    """The form fields, checked by the record-document input model and the field
    rules (on the dealer's date `today`; the kind's role and stages against the
    deal's `stage`) before any byte is stored. The deal's own rules run in the
    workflow."""
    values: dict[str, Any] = {name: (value or None) for name, value in fields.items()}
    if values.get("kind") is None:
        raise rules.invalid("kind is required: " + ", ".join(kind.value for kind in DocumentKind))
    if values.get("party") is None:
        raise rules.invalid("party is required: applicant or spouse")
    provisional = {
        **values,
        "file_name": file_name,
        "content_type": "application/pdf",
        "size": 1,
        "sha256": "0" * 64,
        "storage_key": "pending",
    }
    _, inp = deals.parse_action(Action.RECORD_DOCUMENT.value, provisional, actor)
    record = inp
    assert isinstance(record, RecordDocumentInput)
    rules.check_document_role(record.kind, actor)
    rules.check_document_stage(record.kind, stage)
    if record.id_number is not None:
        rules.validate_id_number(record.id_number, record.party.value, today=today)
    needs, missing = KIND_NEEDS.get(record.kind.value, ((), ""))
    if any(not getattr(record, name) for name in needs):
        raise rules.invalid(missing)
    if (
        record.kind is DocumentKind.BANK_STATEMENT
        and record.period_start is not None
        and record.period_end is not None
        and record.period_start > record.period_end
    ):
        raise rules.invalid("bank statement period_start is after period_end")
    return {
        "kind": record.kind.value,
        "party": record.party.value,
        "id_number": record.id_number,
        "period_start": record.period_start,
        "period_end": record.period_end,
        "stipulation_code": record.stipulation_code,
    }


# --------------------------------------------------------------------------- routes


def _status_of(e: BaseException) -> int:
    if isinstance(e, Problem):
        return e.status
    if isinstance(e, rules.RuleError):
        return RULE_STATUS[e.kind]
    # Another page's refusal that says its status (the desk's missing CSRF token).
    status = getattr(e, "status", 500)
    return status if isinstance(status, int) else 500


# Refusals after which the rest of the body is not read: the client is too slow.
NOT_DRAINED = frozenset({408})


async def _refuse_upload(
    request: Request,
    error: Exception,
    reader: MultipartReader | None = None,
    timing: UploadTiming | None = None,
) -> None:
    """Count a refused upload and read the rest of its body (bounded in size and
    time), so the client reads our answer instead of a reset connection — but
    not after a 408 (the connection is closed instead)."""
    status = _status_of(error)
    services(request).metrics.documents.labels(op="upload", outcome=str(status)).inc()
    if status in NOT_DRAINED:
        return
    await (reader.drain() if reader is not None else drain_unparsed(request, timing=timing))


# Who may call each route: the dependency checks the token (401) and the role
# (403) and gives the route its actor.
Uploader = Annotated[
    Actor,
    Depends(
        require_roles(UPLOAD_ROLES, "upload documents (record-document)", on_refusal=_refuse_upload)
    ),
]
DocumentReader = Annotated[Actor, Depends(require_roles(DOCUMENT_READ_ROLES, "read documents"))]


@router.post(
    "/api/deals/{deal_id}/documents",
    status_code=201,
    response_model=DocumentUploadedView,
    tags=["documents"],
    summary="Upload a customer document (multipart: kind, party, [id_number, period_start, "
    "period_end, stipulation_code], file)",
    openapi_extra=UPLOAD_BODY,
    dependencies=[Depends(bearer_scheme)],
    responses={
        201: {
            "description": "stored and recorded on the deal",
            "links": {
                "GetDocument": {
                    "operationRef": "#/paths/~1api~1deals~1{deal_id}~1documents~1{doc_id}/get",
                    "parameters": {
                        "deal_id": "$request.path.deal_id",
                        "doc_id": "$response.body#/doc_id",
                    },
                }
            },
        },
        **responses(
            400,
            401,
            403,
            404,
            408,
            409,
            413,
            415,
            422,
            429,
            503,
            d409="documents are not accepted in the deal's stage",
            d422="a field, the file type or a document rule is wrong; nothing is recorded",
        ),
    },
)
async def upload(
    request: Request, deal_id: DealIdPath, actor: Uploader, dealers: Dealers
) -> DocumentUploaded:
    return await receive_upload(request, deal_id, actor, dealers)


class _UploadForm:
    """An upload's form fields as they are read, and the fields as judged."""

    def __init__(
        self,
        reader: MultipartReader,
        extra_fields: tuple[str, ...],
        judge: Callable[[dict[str, str], str], dict[str, Any]],
    ) -> None:
        self.reader = reader
        self.extra_fields = extra_fields
        self._judge = judge
        self.fields: dict[str, str] = {}
        self.file_name = "upload"
        self.checked: dict[str, Any] | None = None

    async def read_to_file(self) -> str:
        """The fields before the file part; the file's name."""
        file_name = await _read_fields(self.reader, self.fields, self.extra_fields)
        if file_name is None:
            raise Problem(422, "the file part is missing (multipart field 'file')")
        self.file_name = file_name
        return file_name

    @property
    def needs_more(self) -> bool:
        return _needs_more(self.fields)

    def judge(self) -> dict[str, Any]:
        self.checked = self._judge(self.fields, self.file_name)
        return self.checked

    async def read_rest(self) -> None:
        """The parts after the file (fields only), judged with those before it
        when any came or none were judged yet."""
        before = len(self.fields)
        if await _read_fields(self.reader, self.fields, self.extra_fields) is not None:
            raise Problem(422, "the file part is given twice")
        if self.checked is None or len(self.fields) > before:
            self.judge()


async def receive_upload(
    request: Request,
    deal_id: str,
    actor: Actor,
    dealers: rules.DealerScope,
    *,
    extra_fields: tuple[str, ...] = (),
    check_fields: Callable[[dict[str, str]], None] | None = None,
) -> DocumentUploaded:
    """Stream the multipart upload of `request` into the store and record it on
    the deal (this route's, and the deal desk's, whose form adds its CSRF field:
    `extra_fields` come before the file and are handed with the others to
    `check_fields`, which may refuse the upload before a byte of the file is read)."""
    svc = services(request)
    timing = svc.uploads.timing()
    reader: MultipartReader | None = None
    try:
        svc.uploads.check_room(actor.staff_id)  # 429 before a byte is read
    except Problem as e:
        await _refuse_upload(request, e, timing=timing)
        raise
    with svc.uploads.slot(actor.staff_id):
        try:
            boundary, stage = await _check_before_reading(request, svc, deal_id, dealers)
            today = rules.dealer_date(svc.deal_policy, datetime.now(UTC))

            def judge(fields: dict[str, str], file_name: str) -> dict[str, Any]:
                if check_fields is not None:
                    check_fields(fields)
                known = {name: value for name, value in fields.items() if name in FIELDS}
                return _check_form_fields(known, file_name, actor, today, stage)

            reader = MultipartReader(request, boundary, timing)
            form = _UploadForm(reader, extra_fields, judge)
            file_name = await form.read_to_file()
            if check_fields is not None:
                check_fields(form.fields)
            if form.needs_more:
                stored, content_type = await _spool_then_store(svc, form)
            else:
                form.judge()  # before a byte of the file is read
                stored, content_type = await _stream_to_store(svc, form)
            assert form.checked is not None
            result = await _record(
                svc, deal_id, actor, form.checked, file_name, stored, content_type
            )
        except Exception as e:
            await _refuse_upload(request, e, reader, timing)
            raise

    checked = form.checked
    # The deal's own record, as the update returned it (the table is a
    # projection written a moment later).
    doc_id = next(
        (doc.doc_id for doc in result.status.documents if doc.sha256 == stored.sha256), None
    )
    svc.metrics.documents.labels(op="upload", outcome="201").inc()
    svc.metrics.upload_bytes.inc(stored.size)
    log.info(
        "document uploaded",
        extra={
            "deal_id": deal_id,
            "doc_id": doc_id,
            "kind": checked["kind"],
            "size": stored.size,
            "staff_id": actor.staff_id,
        },
    )
    return DocumentUploaded(
        doc_id=doc_id,
        deal_id=deal_id,
        kind=DocumentKind(checked["kind"]),
        party=Party(checked["party"]),
        file_name=file_name,
        content_type=content_type,
        size=stored.size,
        sha256=stored.sha256,
        status=rules.status_for_roles(result.status, [actor.role]),
    )


async def _check_before_reading(
    request: Request, svc: Services, deal_id: str, dealers: rules.DealerScope
) -> tuple[bytes, Stage]:
    """What is judged before a byte of the body is read: the deal id (404), the
    content type (415), a declared size over the limit (413), the deal (404,
    also outside the caller's `dealers`) and its stage (409). The body's
    multipart boundary, and the deal's stage."""
    check_deal_id(deal_id)
    limit = svc.deal_policy.max_document_bytes
    media, options = parse_options_header(request.headers.get("content-type"))
    if media != b"multipart/form-data" or not options.get(b"boundary"):
        raise Problem(415, "send the document as multipart/form-data (fields kind, party, file)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + ENVELOPE_BYTES:
        raise Problem(
            413,
            f"the upload of {int(declared):,} bytes is larger than the limit "
            f"of {limit:,} bytes per document; nothing was stored",
        )
    status = await read_status(svc, deal_id, dealers)
    rules.check_stage(Action.RECORD_DOCUMENT, status.stage)
    boundary: bytes = options[b"boundary"]
    return boundary, status.stage


def _too_large(file_name: str, limit: int) -> Problem:
    return Problem(
        413, f"{file_name} is larger than the limit of {limit:,} bytes; nothing was stored"
    )


async def _stream_to_store(svc: Services, form: _UploadForm) -> tuple[StoredObject, str]:
    """The fields before the file were judged: stream the file into the store,
    its first bytes read first (the type is sniffed from them; an empty file is
    refused, 422). Fields after the file are judged when it ends, before the
    store keeps it."""
    head: list[bytes] = []
    got = 0
    finished = False
    while got < SNIFF_BYTES:
        data = await form.reader.next_file_data()
        if data is None:
            finished = True
            break
        head.append(data)
        got += len(data)
    if finished:
        await form.read_rest()
    if finished and got == 0:
        raise rules.invalid(f"{form.file_name} is empty")
    limit = svc.deal_policy.max_document_bytes
    loop = asyncio.get_running_loop()
    stream = FileStream(
        form.reader, loop, head, finished, limit, at_end=None if finished else form.read_rest
    )
    return await _store(svc, form.file_name, stream, stream)


async def _spool_then_store(svc: Services, form: _UploadForm) -> tuple[StoredObject, str]:
    """The file came before fields its judgement needs: keep it (within the
    size limit and the upload's timing, in the uploads' pool), read and judge
    the fields after it, then store it as a streamed file is stored."""
    limit = svc.deal_policy.max_document_bytes
    loop = asyncio.get_running_loop()
    stream = FileStream(form.reader, loop, [], False, limit)
    with SpooledPart() as spool:
        fill = functools.partial(spool.fill, stream)
        try:
            await loop.run_in_executor(svc.uploads.executor, contextvars.copy_context().run, fill)
        except DocumentTooLarge:
            raise _too_large(form.file_name, limit) from None
        await form.read_rest()
        if spool.size == 0:
            raise rules.invalid(f"{form.file_name} is empty")
        return await _store(svc, form.file_name, spool.chunks(), stream)


async def _store(
    svc: Services, file_name: str, data: Iterable[bytes], stream: FileStream
) -> tuple[StoredObject, str]:
    """Store the file's bytes (`data`, read from `stream`), checked by type."""
    try:
        return await store_checked(
            svc.store,
            file_name=file_name,
            data=data,
            policy=svc.deal_policy,
            executor=svc.uploads.executor,
        )
    except rules.RuleError:
        if stream.too_large:
            raise _too_large(file_name, stream.limit) from None
        raise  # answered like every rule's refusal, by problems.on_rule_error


async def _record(
    svc: Services,
    deal_id: str,
    actor: Actor,
    form: dict[str, Any],
    file_name: str,
    stored: StoredObject,
    content_type: str,
) -> ActionResult:
    """Record the stored file on the deal (the workflow's record-document
    validator has the last word); the deal's new status."""
    try:
        receipt = await record_stored(
            svc.client, deal_id, actor, stored, content_type, file_name=file_name, **form
        )
        return await deals.with_status(svc.client, deal_id, receipt)
    except deals.DealNotFound as e:
        raise Problem(404, str(e)) from None


@router.get(
    "/api/deals/{deal_id}/documents",
    response_model=DocumentList,
    tags=["documents"],
    summary="The documents recorded on a deal (metadata only)",
    dependencies=[Depends(bearer_scheme)],
    responses=responses(401, 403, 404, 503),
)
async def list_documents(
    request: Request, deal_id: DealIdPath, actor: DocumentReader, dealers: Dealers
) -> DocumentList:
    svc = services(request)
    check_deal_id(deal_id)
    # From the deal itself: the documents table is a projection written a
    # moment after the update, and must not make a fresh upload look missing.
    status = await read_status(svc, deal_id, dealers)  # 404: unknown or not the caller's dealer
    return DocumentList(
        deal_id=deal_id, documents=[DocumentInfo.from_record(record) for record in status.documents]
    )


@router.get(
    "/api/deals/{deal_id}/documents/{doc_id}",
    tags=["documents"],
    summary="Download a document: streamed from the local store, or a 307 redirect to a "
    f"presigned S3 URL valid {DOWNLOAD_LINK_SECONDS} s",
    dependencies=[Depends(bearer_scheme)],
    response_class=Response,
    responses={
        200: {"description": "the document's bytes (local store)", "content": FILE_CONTENT},
        307: {"description": "S3: Location is a short-lived presigned URL"},
        **responses(401, 403, 404, 503, d404="unknown deal or document"),
    },
)
async def download(
    request: Request, deal_id: DealIdPath, doc_id: str, actor: DocumentReader, dealers: Dealers
) -> Response:
    check_deal_id(deal_id)
    return await serve_document(services(request), deal_id, doc_id, actor, dealers)


async def serve_document(
    svc: Services, deal_id: str, doc_id: str, actor: Actor, dealers: rules.DealerScope
) -> Response:
    """A recorded document's bytes for `actor` (whose right to read documents is
    checked already): streamed from the local store, or a redirect to a
    short-lived presigned S3 URL. Every read is logged."""
    # 404 for an unknown deal, and for one outside the reader's dealers.
    status = await read_status(svc, deal_id, dealers)
    row = next((doc for doc in status.documents if doc.doc_id == doc_id), None)
    if row is None:
        raise Problem(404, f"deal {deal_id} has no document {doc_id[:80]!r}")
    # Who read which document: the access log of personal data (ids only).
    log.info(
        "document read",
        extra={
            "deal_id": deal_id,
            "doc_id": doc_id,
            "staff_id": actor.staff_id,
            "role": actor.role.value,
        },
    )
    svc.metrics.documents.labels(op="read", outcome="200").inc()
    headers = {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"}
    if not isinstance(svc.store, LocalDirectoryStore):
        url = await asyncio.to_thread(svc.store.presign_get, row.storage_key, DOWNLOAD_LINK_SECONDS)
        return RedirectResponse(url, status_code=307, headers=headers)
    return await stream_local_file(
        svc.store, row.storage_key, row.content_type, row.file_name, row.sha256, headers
    )
