"""Opening a document store: by URL (`open_store`), or the one the settings name
(`store_from_settings`, what every process uses)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dealflow.storage.documents.base import DocumentStore
from dealflow.storage.documents.local import LocalDirectoryStore
from dealflow.storage.documents.s3 import S3Store

if TYPE_CHECKING:
    from dealflow.config import Settings


def open_store(
    url: str,
    *,
    endpoint_url: str | None,
    signing_secret: str,
    api_base_url: str,
    sse: str | None = "AES256",
    sse_kms_key_id: str | None = None,
    max_link_hours: float | None = None,
) -> DocumentStore:
    """Open the store named by `DEALFLOW_DOCUMENT_STORE`.

    * `file://PATH` — a local directory; PATH may be relative to the working
      directory (`file://.data/documents`) or absolute (`file:///srv/docs`).
    * `s3://bucket[/prefix]` — S3; `endpoint_url` for MinIO or another S3,
      `sse` and `sse_kms_key_id` the server-side encryption each write asks for.

    `max_link_hours` caps how long a link `presign_get` makes may last.
    """
    store = _open(url, endpoint_url, signing_secret, api_base_url, sse, sse_kms_key_id)
    if max_link_hours is not None:
        cap = int(max_link_hours * 3600)
        store.max_link_seconds = min(cap, store.max_link_seconds or cap)
    return store


def _open(
    url: str,
    endpoint_url: str | None,
    signing_secret: str,
    api_base_url: str,
    sse: str | None,
    sse_kms_key_id: str | None,
) -> DocumentStore:
    if url.startswith("file://"):
        path = url[len("file://") :]
        if not path:
            raise ValueError(f"document store URL {url!r} has no path (file://PATH)")
        return LocalDirectoryStore(
            Path(path), signing_secret=signing_secret, api_base_url=api_base_url
        )
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"document store URL {url!r} has no bucket (s3://bucket/prefix)")
        return S3Store(
            bucket, prefix, endpoint_url=endpoint_url, sse=sse, sse_kms_key_id=sse_kms_key_id
        )
    raise ValueError(
        f"unsupported document store URL {url!r}: use file://PATH (local directory) "
        "or s3://bucket/prefix"
    )


def store_from_settings(settings: Settings) -> DocumentStore:
    """The document store of `settings`: `DEALFLOW_DOCUMENT_STORE`, its S3 endpoint,
    and the secret and API address that local-store links are signed for."""
    return open_store(
        settings.document_store,
        endpoint_url=settings.s3_endpoint_url,
        signing_secret=settings.file_link_secret,
        api_base_url=settings.api_url,
        sse=settings.s3_server_side_encryption,
        sse_kms_key_id=settings.s3_sse_kms_key_id,
        max_link_hours=settings.file_link_max_hours,
    )
