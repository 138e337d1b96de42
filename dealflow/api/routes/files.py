"""Files of the local document store over HTTP.

`GET /api/files/{key}` serves the presigned links the local store signs (what
lenders get in an application package): no bearer token, the signature is the
authorisation. `stream_local_file` streams a stored file, for these links and
for staff downloads alike.
"""

import asyncio
import logging
import re
import time
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from dealflow.api.deps import services
from dealflow.api.errors import Problem
from dealflow.api.problems import PROBLEM_JSON, responses
from dealflow.storage.documents import DocumentNotFound, LocalDirectoryStore, verify_local_signature

log = logging.getLogger("dealflow.api")
router = APIRouter()

HEX_SIGNATURE = re.compile(r"^[0-9a-fA-F]{64}$")
SERVED_TYPES = ("application/pdf", "image/jpeg", "image/png", "application/octet-stream")


def _disposition(file_name: str) -> str:
    ascii_name = (
        "".join(
            char if char.isascii() and char.isprintable() and char not in '"\\' else "_"
            for char in file_name
        )
        or "document"
    )
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(file_name)}"


FILE_CONTENT = {
    media_type: {"schema": {"type": "string", "format": "binary"}} for media_type in SERVED_TYPES
}


async def stream_local_file(
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


# The one prefix the API's links reach (dealflow/storage/documents: uploads).
LINKED_PREFIX = "documents/"


@router.get(
    "/api/files/{key:path}",
    tags=["documents"],
    summary="A presigned link to the local store (what lenders get in an application "
    "package); no bearer token, the signature is the authorisation",
    response_class=Response,
    responses={
        200: {"description": "the file's bytes", "content": FILE_CONTENT},
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
    audience: Annotated[
        str, Query(alias="for", max_length=64, description="the lender the link was made for")
    ] = "",
) -> Response:
    svc = services(request)
    if not HEX_SIGNATURE.match(sig) or not verify_local_signature(
        svc.settings.file_link_secret, key, expires, sig, audience=audience
    ):
        raise Problem(403, "the link is invalid or has expired; ask for a new one")
    # Links are made for lenders, to customer documents: one for anything else
    # (the archive, exports) or for a lender no longer served is refused, which
    # is also how a lender's links are revoked (out of the lenders file).
    if not key.startswith(LINKED_PREFIX):
        raise Problem(403, "links reach customer documents only")
    if audience not in svc.lenders:
        raise Problem(403, "the link was not made for a lender DealFlow serves; ask for a new one")
    if expires - time.time() > svc.settings.file_link_max_hours * 3600 + 60:
        raise Problem(403, "the link lasts longer than this deployment allows; ask for a new one")
    if not isinstance(svc.store, LocalDirectoryStore):
        raise Problem(404, "files are served by the object store, not by this API")
    try:
        head = await asyncio.to_thread(svc.store.head, key)
    except ValueError:
        head = None
    if head is None:
        raise Problem(404, "no such file")
    log.info("presigned file read", extra={"key_sha": head.sha256[:12]})
    return await stream_local_file(
        svc.store,
        key,
        head.content_type,
        key.rsplit("/", 1)[-1],
        head.sha256,
        {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"},
    )
