"""Customer documents over HTTP: upload (streamed to the store), list, download,
and the lender's presigned links to the local store.

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
party, dates, the ID number's checksum), the file's first bytes (422 unless
PDF, JPEG or PNG), the size (413), then the deal's own rules in the
workflow's `record-document` validator (422: duplicate of another kind, an ID
number that is not the deal's, a stipulation that is not open). Send the form
fields before the file part (curl -F, httpx and browsers do); a field after
the file is refused. When the workflow refuses a file its bytes may remain in
the content-addressed store, unreferenced: they are never listed or served
(reads go through the recorded documents) and a later upload of the same
bytes reuses them.
"""

import asyncio
import hashlib
import logging
import re
from collections import deque
from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from dealflow import client as deals
from dealflow import rules
from dealflow.api.auth import (
    DOCUMENT_READ_ROLES,
    UPLOAD_ROLES,
    Principal,
    authenticate,
    bearer_scheme,
)
from dealflow.api.deals import DealIdPath, check_deal_id, read_status, roles_of, services
from dealflow.api.errors import Problem
from dealflow.api.problems import PROBLEM_JSON, responses
from dealflow.models import (
    Action,
    DocumentKind,
    DocumentRecord,
    DocumentUploaded,
    Party,
    RecordDocumentInput,
)
from dealflow.storage.documents import (
    DocumentNotFound,
    DocumentTooLarge,
    LocalDirectoryStore,
    verify_local_signature,
)
from dealflow.uploads import SNIFF_BYTES, upload_document

log = logging.getLogger("dealflow.api")
router = APIRouter()

# Room for the multipart envelope (boundaries, part headers, the form fields)
# on top of the file itself when judging a declared Content-Length.
ENVELOPE_BYTES = 64 * 1024
MAX_FIELD_BYTES = 1024
MAX_PARTS = 16
# After a refusal, read (and drop) at most this much of the rest of the body,
# so the client gets to read our answer instead of a reset connection.
MAX_DRAIN_BYTES = 128 * 1024 * 1024
# How long a document link (S3 presigned URL) given to staff stays valid.
DOWNLOAD_LINK_SECONDS = 60
FIELDS = ("kind", "party", "id_number", "period_start", "period_end", "stipulation_code")
HEX_SIGNATURE = re.compile(r"^[0-9a-fA-F]{64}$")
SERVED_TYPES = ("application/pdf", "image/jpeg", "image/png", "application/octet-stream")


# --------------------------------------------------------------------------- models


class DocumentInfo(BaseModel):
    doc_id: str
    kind: str
    party: str
    file_name: str
    content_type: str
    size: int
    sha256: str
    uploaded_by: str
    uploaded_at: Any = Field(json_schema_extra={"type": "string", "format": "date-time"})


class DocumentList(BaseModel):
    deal_id: str
    documents: list[DocumentInfo]


UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["kind", "party", "file"],
                    "properties": {
                        "kind": {"type": "string", "enum": [k.value for k in DocumentKind]},
                        "party": {"type": "string", "enum": [p.value for p in Party]},
                        "id_number": {
                            "type": "string",
                            "maxLength": 18,
                            "description": "for an ID card: the number printed on it "
                            "(checked: 18 characters, birth date, check digit)",
                        },
                        "period_start": {
                            "type": "string",
                            "format": "date",
                            "description": "for a bank statement: the first day it covers",
                        },
                        "period_end": {
                            "type": "string",
                            "format": "date",
                            "description": "for a bank statement: the last day it covers",
                        },
                        "stipulation_code": {
                            "type": "string",
                            "maxLength": 64,
                            "description": "for a stipulation document: the lender's code",
                        },
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "PDF, JPEG or PNG (sniffed from the bytes), "
                            "at most the policy's max_document_bytes (20 MiB); "
                            "send it last",
                        },
                    },
                },
                "encoding": {"file": {"contentType": "application/pdf, image/jpeg, image/png"}},
            }
        },
    }
}


# --------------------------------------------------------------------------- multipart


class MultipartReader:
    """The parts of a multipart/form-data body, as the body arrives.

    Events: ("begin", name, filename), ("data", bytes), ("end",). Nothing is
    buffered beyond the network chunk being parsed.
    """

    def __init__(self, request: Request, boundary: bytes) -> None:
        self._body = request.stream().__aiter__()
        self._events: deque[tuple[Any, ...]] = deque()
        self.exhausted = False  # the request body has been read to its end
        self.closed = False  # the closing boundary was seen
        self.parts = 0
        self._headers: dict[bytes, bytes] = {}
        self._field = bytearray()
        self._value = bytearray()
        try:
            self._parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._on_part_begin,
                    "on_part_data": self._on_part_data,
                    "on_part_end": lambda: self._events.append(("end",)),
                    "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
                    "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
                    "on_header_end": self._on_header_end,
                    "on_headers_finished": self._on_headers_finished,
                    "on_end": self._on_end,
                },
            )
        except ValueError as e:
            raise Problem(415, f"bad multipart boundary: {e}") from None

    def _on_part_begin(self) -> None:
        self._headers = {}
        self.parts += 1

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self._events.append(("data", bytes(data[start:end])))

    def _on_header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name")
        filename = options.get(b"filename")
        self._events.append(
            (
                "begin",
                name.decode("utf-8", "replace") if name is not None else None,
                filename.decode("utf-8", "replace") if filename is not None else None,
            )
        )

    def _on_end(self) -> None:
        self.closed = True

    async def next(self) -> tuple[Any, ...] | None:
        """The next event, or None at the end of the body."""
        while not self._events:
            if self.exhausted:
                return None
            try:
                chunk = await self._body.__anext__()
            except StopAsyncIteration:
                self.exhausted = True
                if not self.closed:
                    raise Problem(
                        422, "the multipart body ended before its closing boundary"
                    ) from None
                continue
            except ClientDisconnect:
                self.exhausted = True
                raise Problem(400, "the client disconnected before the upload finished") from None
            if not chunk:
                continue
            try:
                self._parser.write(chunk)
            except MultipartParseError as e:
                raise Problem(422, f"the multipart body is malformed: {e}") from None
            if self.parts > MAX_PARTS:
                raise Problem(422, f"too many parts (at most {MAX_PARTS})")
        return self._events.popleft()

    async def read_value(self, name: str) -> str:
        value = bytearray()
        while (ev := await self.next()) is not None and ev[0] == "data":
            value += ev[1]
            if len(value) > MAX_FIELD_BYTES:
                raise Problem(422, f"field {name} is longer than {MAX_FIELD_BYTES} bytes")
        try:
            return value.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise Problem(422, f"field {name} is not UTF-8 text") from None

    async def next_file_data(self) -> bytes | None:
        """The next piece of the file part; None after its last, once the body is
        known to end there (a part after the file is refused)."""
        ev = await self.next()
        if ev is not None and ev[0] == "data":
            return bytes(ev[1])
        while (ev := await self.next()) is not None:
            if ev[0] == "begin":
                raise Problem(
                    422,
                    f"part {ev[1]!r} comes after the file; send the form fields before "
                    "the file part",
                )
        return None

    async def drain(self, limit: int = MAX_DRAIN_BYTES) -> None:
        """Read and drop what is left of the body (bounded), ignoring its content."""
        seen = 0
        while not self.exhausted and seen < limit:
            try:
                chunk = await self._body.__anext__()
            except (StopAsyncIteration, ClientDisconnect):
                self.exhausted = True
                return
            seen += len(chunk)


class FileStream:
    """The file part as the blocking iterator the store consumes in a worker thread.

    The first bytes (for sniffing) were read on the event loop; the rest is
    pulled from the loop one network chunk at a time. Hashes and counts as it goes.
    """

    def __init__(
        self,
        reader: MultipartReader,
        loop: asyncio.AbstractEventLoop,
        head: list[bytes],
        finished: bool,
        limit: int,
    ) -> None:
        self.reader = reader
        self.loop = loop
        self.head = head
        self.finished = finished
        self.limit = limit
        self.size = 0
        self.hasher = hashlib.sha256()
        self.too_large = False

    def _take(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        if self.size > self.limit:
            self.too_large = True
            raise DocumentTooLarge(self.limit)
        self.hasher.update(chunk)
        return chunk

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.head:
            yield self._take(chunk)
        if self.finished:
            return
        while True:
            try:
                running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is self.loop:
                # Pulling from the loop on its own thread would deadlock.
                raise RuntimeError("FileStream must be consumed in a worker thread")
            pending = asyncio.run_coroutine_threadsafe(self.reader.next_file_data(), self.loop)
            data = pending.result()
            if data is None:
                return
            yield self._take(data)

    @property
    def sha256(self) -> str:
        return self.hasher.hexdigest()


async def _read_form(reader: MultipartReader) -> tuple[dict[str, str], str]:
    """The form fields up to the file part, and the file's name."""
    fields: dict[str, str] = {}
    while True:
        ev = await reader.next()
        if ev is None:
            raise Problem(422, "the file part is missing (multipart field 'file')")
        if ev[0] != "begin":
            continue
        name, filename = ev[1], ev[2]
        if name == "file":
            base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
            return fields, (base or "upload")[:200]
        if name not in FIELDS:
            raise Problem(
                422, f"unknown field {name!r}; the fields are {', '.join(FIELDS)} and file"
            )
        if name in fields:
            raise Problem(422, f"field {name} is given twice")
        fields[name] = await reader.read_value(name)


def _precheck(fields: dict[str, str], file_name: str, actor: Any) -> dict[str, Any]:
    """The form fields, checked by the record-document input model and the field
    rules before any byte is stored. The deal's own rules run in the workflow."""
    values: dict[str, Any] = {k: (v or None) for k, v in fields.items()}
    order = " (form fields go before the file part)"
    if values.get("kind") is None:
        raise rules.invalid("kind is required: " + ", ".join(k.value for k in DocumentKind) + order)
    if values.get("party") is None:
        raise rules.invalid("party is required: applicant or spouse" + order)
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
    if record.id_number is not None:
        rules.validate_id_number(record.id_number, record.party.value)
    if record.kind is DocumentKind.ID_CARD and not record.id_number:
        raise rules.invalid("an ID card needs the id_number printed on it")
    if record.kind is DocumentKind.BANK_STATEMENT:
        if record.period_start is None or record.period_end is None:
            raise rules.invalid("a bank statement needs period_start and period_end")
        if record.period_start > record.period_end:
            raise rules.invalid("bank statement period_start is after period_end")
    if record.kind is DocumentKind.STIPULATION and not record.stipulation_code:
        raise rules.invalid("a stipulation document needs the stipulation_code it satisfies")
    return {
        "kind": record.kind.value,
        "party": record.party.value,
        "id_number": record.id_number,
        "period_start": record.period_start,
        "period_end": record.period_end,
        "stipulation_code": record.stipulation_code,
    }


# --------------------------------------------------------------------------- routes


@router.post(
    "/api/deals/{deal_id}/documents",
    status_code=201,
    response_model=DocumentUploaded,
    tags=["documents"],
    summary="Upload a customer document (multipart: kind, party, [id_number, period_start, "
    "period_end, stipulation_code], file)",
    openapi_extra=UPLOAD_BODY,
    dependencies=[Depends(bearer_scheme)],
    responses={
        201: {"description": "stored and recorded on the deal"},
        **responses(
            400,
            401,
            403,
            404,
            409,
            413,
            415,
            422,
            503,
            d409="documents are not accepted in the deal's stage",
            d422="a field, the file type or a document rule is wrong; nothing is recorded",
        ),
    },
)
@roles_of(UPLOAD_ROLES, "upload documents (record-document)")
async def upload(request: Request, deal_id: DealIdPath) -> DocumentUploaded:
    svc = services(request)
    reader: MultipartReader | None = None
    try:
        principal = await authenticate(request)
        actor = principal.actor(UPLOAD_ROLES, "upload documents (record-document)")
        check_deal_id(deal_id)
        policy = svc.deal_policy
        limit = policy.max_document_bytes
        media, options = parse_options_header(request.headers.get("content-type"))
        if media != b"multipart/form-data" or not options.get(b"boundary"):
            raise Problem(
                415, "send the document as multipart/form-data (fields kind, party, file)"
            )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit + ENVELOPE_BYTES:
            raise Problem(
                413,
                f"the upload of {int(declared):,} bytes is larger than the limit "
                f"of {limit:,} bytes per document; nothing was stored",
            )
        status = await read_status(svc, deal_id)
        rules.check_stage(Action.RECORD_DOCUMENT, status.stage)

        reader = MultipartReader(request, options[b"boundary"])
        fields, file_name = await _read_form(reader)
        checked = _precheck(fields, file_name, actor)

        head: list[bytes] = []
        got = 0
        finished = False
        while got < SNIFF_BYTES:
            data = await reader.next_file_data()
            if data is None:
                finished = True
                break
            head.append(data)
            got += len(data)
        if finished and got == 0:
            raise rules.invalid(f"{file_name} is empty")
        stream = FileStream(reader, asyncio.get_running_loop(), head, finished, limit)
        try:
            result = await upload_document(
                svc.client,
                svc.store,
                deal_id,
                actor,
                file_name=file_name,
                data=stream,
                policy=policy,
                kind=checked["kind"],
                party=checked["party"],
                id_number=checked["id_number"],
                period_start=checked["period_start"],
                period_end=checked["period_end"],
                stipulation_code=checked["stipulation_code"],
            )
        except rules.RuleError as e:
            if stream.too_large:
                raise Problem(
                    413,
                    f"{file_name} is larger than the limit of {limit:,} bytes; nothing was stored",
                ) from None
            raise Problem(
                422 if e.kind == "invalid" else 409 if e.kind == "conflict" else 403, e.message
            ) from None
        except deals.DealNotFound as e:
            raise Problem(404, str(e)) from None
    except Exception as e:
        svc.metrics.documents.labels(op="upload", outcome=str(_status_of(e))).inc()
        # Read the rest of the body (bounded) so the client sees our answer.
        await (reader.drain() if reader is not None else _drain_unparsed(request))
        raise

    content_type = rules.sniff_content_type(b"".join(head))
    # The deal's own record, as the update returned it (the table is a
    # projection written a moment later).
    doc_id = next((d.doc_id for d in result.status.documents if d.sha256 == stream.sha256), None)
    svc.metrics.documents.labels(op="upload", outcome="201").inc()
    svc.metrics.upload_bytes.inc(stream.size)
    log.info(
        "document uploaded",
        extra={
            "deal_id": deal_id,
            "doc_id": doc_id,
            "kind": checked["kind"],
            "size": stream.size,
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
        size=stream.size,
        sha256=stream.sha256,
        status=result.status,
    )


def _status_of(e: BaseException) -> int:
    if isinstance(e, Problem):
        return e.status
    if isinstance(e, rules.RuleError):
        return {"invalid": 422, "conflict": 409, "forbidden": 403}[e.kind]
    return 500


async def _drain_unparsed(request: Request, limit: int = MAX_DRAIN_BYTES) -> None:
    """Read and drop a body refused before it was parsed (bounded)."""
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen >= limit:
                return
    except (ClientDisconnect, RuntimeError):
        return


@router.get(
    "/api/deals/{deal_id}/documents",
    response_model=DocumentList,
    tags=["documents"],
    summary="The documents recorded on a deal (metadata only)",
    dependencies=[Depends(bearer_scheme)],
    responses=responses(401, 403, 404, 503),
)
@roles_of(DOCUMENT_READ_ROLES, "read documents")
async def list_documents(
    request: Request,
    deal_id: DealIdPath,
    principal: Annotated[Principal, Depends(authenticate)],
) -> DocumentList:
    svc = services(request)
    principal.actor(DOCUMENT_READ_ROLES, "read documents")
    check_deal_id(deal_id)
    # From the deal itself: the documents table is a projection written a
    # moment after the update, and must not make a fresh upload look missing.
    status = await read_status(svc, deal_id)  # 404 for an unknown deal
    return DocumentList(deal_id=deal_id, documents=[_info(r) for r in status.documents])


def _info(row: DocumentRecord) -> DocumentInfo:
    return DocumentInfo(
        doc_id=row.doc_id,
        kind=row.kind.value,
        party=row.party.value,
        file_name=row.file_name,
        content_type=row.content_type,
        size=row.size,
        sha256=row.sha256,
        uploaded_by=row.uploaded_by,
        uploaded_at=row.uploaded_at,
    )


def _disposition(file_name: str) -> str:
    ascii_name = (
        "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in file_name)
        or "document"
    )
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(file_name)}"


_FILE_CONTENT = {t: {"schema": {"type": "string", "format": "binary"}} for t in SERVED_TYPES}


@router.get(
    "/api/deals/{deal_id}/documents/{doc_id}",
    tags=["documents"],
    summary="Download a document: streamed from the local store, or a 307 redirect to a "
    f"presigned S3 URL valid {DOWNLOAD_LINK_SECONDS} s",
    dependencies=[Depends(bearer_scheme)],
    response_class=Response,
    responses={
        200: {"description": "the document's bytes (local store)", "content": _FILE_CONTENT},
        307: {"description": "S3: Location is a short-lived presigned URL"},
        **responses(401, 403, 404, 503, d404="unknown deal or document"),
    },
)
@roles_of(DOCUMENT_READ_ROLES, "read documents")
async def download(
    request: Request,
    deal_id: DealIdPath,
    doc_id: str,
    principal: Annotated[Principal, Depends(authenticate)],
) -> Response:
    svc = services(request)
    actor = principal.actor(DOCUMENT_READ_ROLES, "read documents")
    check_deal_id(deal_id)
    status = await read_status(svc, deal_id)  # 404 for an unknown deal
    row = next((r for r in status.documents if r.doc_id == doc_id), None)
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
    return await _stream(
        svc.store, row.storage_key, row.content_type, row.file_name, row.sha256, headers
    )


async def _stream(
    store: LocalDirectoryStore,
    key: str,
    content_type: str,
    file_name: str,
    sha256: str,
    headers: dict[str, str],
) -> Response:
    try:
        head = await asyncio.to_thread(store.head, key)
        if head is None:
            raise DocumentNotFound(key)
        chunks = await asyncio.to_thread(store.open, key)
    except (DocumentNotFound, ValueError):
        raise Problem(404, "the document's file is missing from the store") from None
    return StreamingResponse(
        chunks,
        media_type=content_type,
        headers={
            **headers,
            "Content-Length": str(head.size),
            "ETag": f'"{sha256}"',
            "Content-Disposition": _disposition(file_name),
        },
    )


@router.get(
    "/api/files/{key:path}",
    tags=["documents"],
    summary="A presigned link to the local store (what lenders get in an application "
    "package); no bearer token, the signature is the authorisation",
    response_class=Response,
    responses={
        200: {"description": "the file's bytes", "content": _FILE_CONTENT},
        403: {
            "description": "the signature does not match or the link has expired",
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDetail"}}},
        },
        **responses(404, 422, d404="no such file (or the store is not local)"),
    },
)
async def presigned_file(
    request: Request,
    key: str,
    expires: Annotated[int, Query(description="unix time the link expires")],
    sig: Annotated[str, Query(max_length=128, description="hex HMAC-SHA256 of the link")],
) -> Response:
    svc = services(request)
    if not HEX_SIGNATURE.match(sig) or not verify_local_signature(
        svc.settings.jwt_secret, key, expires, sig
    ):
        raise Problem(403, "the link is invalid or has expired; ask for a new one")
    if not isinstance(svc.store, LocalDirectoryStore):
        raise Problem(404, "files are served by the object store, not by this API")
    try:
        head = await asyncio.to_thread(svc.store.head, key)
    except ValueError:
        head = None
    if head is None:
        raise Problem(404, "no such file")
    log.info("presigned file read", extra={"key_sha": head.sha256[:12]})
    return await _stream(
        svc.store,
        key,
        head.content_type,
        key.rsplit("/", 1)[-1],
        head.sha256,
        {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"},
    )
