"""Document store (docs/architecture.md §2): one small interface, two backends.

* `LocalDirectoryStore` — plain files under a directory (the default,
  `file://.data/documents`). Writes are atomic (temp file, fsync, `os.replace`,
  directory fsync), so a crash never leaves a partial object at a final key.
* `S3Store` — any S3 (AWS, MinIO, moto) through boto3, with server-side
  encryption, request checksums, retries and short timeouts.

Documents are content-addressed: `put_stream` stores the bytes at
`{prefix}/{sha256[:2]}/{sha256}`, so storing the same bytes twice is idempotent
and the key + sha256 are all a workflow ever needs to carry. Exported histories
and manifests go to explicit keys with `put_bytes`.

The API is synchronous on purpose: activities and the API call it in threads.

Keys are `/`-separated relative names. Every component must be non-empty and
must not start with `.` (this rules out `.` and `..` and reserves dot-names for
the stores' own bookkeeping); backslashes, NUL bytes and absolute paths are
rejected with `ValueError` by both backends.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol, runtime_checkable
from urllib.parse import quote

__all__ = [
    "DEFAULT_PREFIX",
    "DocumentNotFound",
    "DocumentStore",
    "DocumentStoreError",
    "DocumentStoreUnavailable",
    "DocumentTooLarge",
    "EmptyDocument",
    "LocalDirectoryStore",
    "S3Store",
    "StoredObject",
    "content_key",
    "make_s3_client",
    "open_store",
    "sign_local_url",
    "verify_local_signature",
]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "documents"
READ_CHUNK_SIZE = 1024 * 1024
"""Size of the chunks `open()` yields (both backends)."""
MAX_KEY_LENGTH = 1024
"""S3's own limit on key length, applied to both backends."""


# --------------------------------------------------------------------------- errors


class DocumentStoreError(Exception):
    """Base class of every document-store error."""


class DocumentNotFound(DocumentStoreError, LookupError):
    """No object at the given key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"document {key!r} not found")
        self.key = key


class DocumentStoreUnavailable(DocumentStoreError):
    """The backend cannot be reached (connection refused, timeout, 5xx). Maps to HTTP 503."""


class DocumentTooLarge(DocumentStoreError, ValueError):
    """The stream exceeded `max_bytes`; nothing was stored."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"document exceeds the size limit of {limit} bytes")
        self.limit = limit


class EmptyDocument(DocumentStoreError, ValueError):
    """The stream contained zero bytes; nothing was stored."""

    def __init__(self) -> None:
        super().__init__("document is empty (0 bytes)")


# --------------------------------------------------------------------------- interface


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    sha256: str
    size: int
    content_type: str


@runtime_checkable
class DocumentStore(Protocol):
    """What activities and the API use; `open_store` picks the backend from a URL."""

    def put_stream(
        self,
        chunks: Iterable[bytes],
        *,
        content_type: str,
        max_bytes: int,
        prefix: str = DEFAULT_PREFIX,
    ) -> StoredObject:
        """Store a stream content-addressed at `{prefix}/{sha256[:2]}/{sha256}`.

        Hashes and counts while streaming; raises `DocumentTooLarge` as soon as
        more than `max_bytes` arrive and `EmptyDocument` for zero bytes, leaving
        nothing behind in either case. If the key already holds these bytes the
        existing object is returned (its stored content type wins).
        """
        ...

    def put_bytes(self, data: bytes, *, key: str, content_type: str) -> StoredObject:
        """Store `data` at an explicit key, atomically replacing any previous object."""
        ...

    def open(self, key: str) -> Iterator[bytes]:
        """Stream an object; raises `DocumentNotFound` at call time if it is missing."""
        ...

    def read_bytes(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def head(self, key: str) -> StoredObject | None: ...

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with `prefix` (plain string prefix, like S3). Order unspecified."""
        ...

    def delete(self, key: str) -> None:
        """Remove an object; deleting a missing key is not an error."""
        ...

    def presign_get(self, key: str, expires_in: int = 300) -> str:
        """A URL that lets a third party (a lender) GET the object for `expires_in` seconds."""
        ...


# --------------------------------------------------------------------------- helpers


def content_key(sha256: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The content-addressed key of a document: `{prefix}/{sha256[:2]}/{sha256}`."""
    tail = f"{sha256[:2]}/{sha256}"
    return f"{prefix}/{tail}" if prefix else tail


def _validate_key(key: str, *, what: str = "key") -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"document {what} must be a non-empty string")
    if len(key.encode("utf-8")) > MAX_KEY_LENGTH:
        raise ValueError(f"document {what} is longer than {MAX_KEY_LENGTH} bytes")
    if "\x00" in key:
        raise ValueError(f"document {what} {key!r} contains a NUL byte")
    if "\\" in key:
        raise ValueError(f"document {what} {key!r} contains a backslash")
    if key.startswith("/") or (len(key) > 1 and key[1] == ":" and key[0].isalpha()):
        raise ValueError(f"document {what} {key!r} is an absolute path")
    for part in key.split("/"):
        if part == "..":
            raise ValueError(f"document {what} {key!r} contains '..'")
        if not part or part.startswith("."):
            raise ValueError(
                f"document {what} {key!r} has an empty component or one starting with '.'"
            )
    return key


def _normalise_prefix(prefix: str) -> str:
    """A put_stream prefix: '' or a valid key without surrounding slashes."""
    prefix = prefix.strip("/")
    return _validate_key(prefix, what="prefix") if prefix else ""


def _validate_list_prefix(prefix: str) -> str:
    """A list() prefix may end with '/' or in the middle of a component."""
    if not prefix:
        return ""
    _validate_key(prefix.rstrip("/") or "x", what="prefix")
    if prefix.startswith("/"):
        raise ValueError(f"document prefix {prefix!r} is an absolute path")
    return prefix


def _check_max_bytes(max_bytes: int) -> None:
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")


def _is_hidden(relative_key: str) -> bool:
    return any(part.startswith(".") for part in relative_key.split("/"))


def _signature(secret: str, key: str, expires: int) -> str:
    message = f"GET\n{key}\n{expires}".encode()
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign_local_url(api_base_url: str, secret: str, key: str, expires: int) -> str:
    """`{api_base_url}/api/files/{key}?expires=<unix>&sig=<hex hmac-sha256>`.

    The signature is HMAC-SHA256(secret, "GET\\n{key}\\n{expires}") over the
    *unquoted* key, so the API verifies the decoded path parameter.
    """
    sig = _signature(secret, key, expires)
    return (
        f"{api_base_url.rstrip('/')}/api/files/{quote(key, safe='/')}?expires={expires}&sig={sig}"
    )


def verify_local_signature(
    secret: str, key: str, expires: int | str, sig: str, now: float | None = None
) -> bool:
    """Check a URL made by `LocalDirectoryStore.presign_get` (for the API's file route).

    False if the link has expired (`now > expires`), the signature does not
    match the key, or any argument is malformed. Constant-time comparison.
    """
    try:
        expires_at = int(expires)
    except (TypeError, ValueError):
        return False
    if now is None:
        now = time.time()
    if now > expires_at or not isinstance(sig, str) or not isinstance(key, str):
        return False
    expected = _signature(secret, key, expires_at)
    return hmac.compare_digest(expected, sig.lower())


# --------------------------------------------------------------------------- local


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _makedirs_durable(path: Path) -> None:
    """mkdir -p, fsyncing each parent whose entries changed so new directories survive a crash."""
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue  # a concurrent writer made it
        _fsync_dir(directory.parent)


class LocalDirectoryStore:
    """Objects are plain files under `root`; survives restarts (it is just files).

    Memory: `put_stream` writes each incoming chunk straight to a temp file, so
    it never holds more than the caller's chunk; `open()` yields 1 MiB chunks.

    Layout: the object for key `k` is `root/k`. Bookkeeping lives in dot
    directories that no key can name: `root/.tmp/` (uploads in progress; the
    same file system as the objects, so `os.replace` is atomic) and
    `root/.meta/k.json` (content type, sha256, and the inode of the object file
    it describes — a stale sidecar is detected and ignored).
    """

    def __init__(self, root: Path, *, signing_secret: str, api_base_url: str) -> None:
        if not signing_secret:
            raise ValueError("LocalDirectoryStore needs a non-empty signing_secret")
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / ".tmp"
        self._meta = self.root / ".meta"
        self._secret = signing_secret
        self.api_base_url = api_base_url.rstrip("/")
        self._sweep_stale_uploads()

    STALE_UPLOAD_SECONDS = 24 * 3600

    def _sweep_stale_uploads(self) -> None:
        """Remove upload temp files a killed process left behind (only old ones: other
        processes — the API and the workers — may be uploading into the same root)."""
        cutoff = time.time() - self.STALE_UPLOAD_SECONDS
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._tmp):
                with contextlib.suppress(OSError):
                    if entry.is_file() and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)

    def __repr__(self) -> str:
        return f"LocalDirectoryStore({str(self.root)!r})"

    # -- paths

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*_validate_key(key).split("/"))

    def _meta_path(self, key: str) -> Path:
        return self._meta.joinpath(*key.split("/")).with_name(key.rsplit("/", 1)[-1] + ".json")

    def _new_temp(self, directory: Path) -> tuple[IO[bytes], Path]:
        _makedirs_durable(directory)
        fd, name = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
        return os.fdopen(fd, "wb"), Path(name)

    # -- writes

    def _commit(self, tmp: Path, key: str, *, sha256: str, size: int, content_type: str) -> None:
        """Publish a fully written, fsynced temp file at `key` (meta first, then object)."""
        final = self._path(key)
        _makedirs_durable(final.parent)
        meta = {
            "sha256": sha256,
            "size": size,
            "content_type": content_type,
            "ino": tmp.stat().st_ino,  # os.replace keeps the inode
        }
        self._write_meta(key, meta)
        os.replace(tmp, final)
        _fsync_dir(final.parent)

    def _write_meta(self, key: str, meta: dict[str, Any]) -> None:
        path = self._meta_path(key)
        f, tmp = self._new_temp(path.parent)
        try:
            with f:
                f.write(json.dumps(meta).encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def put_stream(
        self,
        chunks: Iterable[bytes],
        *,
        content_type: str,
        max_bytes: int,
        prefix: str = DEFAULT_PREFIX,
    ) -> StoredObject:
        prefix = _normalise_prefix(prefix)
        _check_max_bytes(max_bytes)
        hasher = hashlib.sha256()
        size = 0
        f, tmp = self._new_temp(self._tmp)
        try:
            with f:
                for chunk in chunks:
                    if not chunk:
                        continue
                    size += len(chunk)
                    if size > max_bytes:
                        raise DocumentTooLarge(max_bytes)
                    hasher.update(chunk)
                    f.write(chunk)
                if size == 0:
                    raise EmptyDocument()
                f.flush()
                os.fsync(f.fileno())
            sha = hasher.hexdigest()
            key = content_key(sha, prefix)
            existing = self.head(key)
            if existing is not None and existing.size == size and existing.sha256 == sha:
                tmp.unlink()
                return existing
            self._commit(tmp, key, sha256=sha, size=size, content_type=content_type)
            return StoredObject(key=key, sha256=sha, size=size, content_type=content_type)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put_bytes(self, data: bytes, *, key: str, content_type: str) -> StoredObject:
        final = self._path(key)
        f, tmp = self._new_temp(final.parent)
        try:
            with f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            sha = hashlib.sha256(data).hexdigest()
            self._commit(tmp, key, sha256=sha, size=len(data), content_type=content_type)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StoredObject(key=key, sha256=sha, size=len(data), content_type=content_type)

    # -- reads

    def open(self, key: str) -> Iterator[bytes]:
        path = self._path(key)
        try:
            f = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise DocumentNotFound(key) from None
        return self._iter_file(f)

    @staticmethod
    def _iter_file(f: IO[bytes]) -> Iterator[bytes]:
        with f:
            while chunk := f.read(READ_CHUNK_SIZE):
                yield chunk

    def read_bytes(self, key: str) -> bytes:
        return b"".join(self.open(key))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def head(self, key: str) -> StoredObject | None:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not path.is_file():
            return None
        meta: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads(self._meta_path(key).read_bytes())
        if meta.get("ino") == st.st_ino and meta.get("size") == st.st_size:
            return StoredObject(
                key=key, sha256=meta["sha256"], size=st.st_size, content_type=meta["content_type"]
            )
        # No or stale sidecar (crash between the two renames, or a file put here
        # by hand): recompute the hash rather than report a wrong one.
        hasher = hashlib.sha256()
        for chunk in self.open(key):
            hasher.update(chunk)
        return StoredObject(
            key=key,
            sha256=hasher.hexdigest(),
            size=st.st_size,
            content_type="application/octet-stream",
        )

    def list(self, prefix: str = "") -> Iterator[str]:
        prefix = _validate_list_prefix(prefix)
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*base_dir.split("/")) if base_dir else self.root
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    yield key

    # -- delete / presign

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            pass
        except IsADirectoryError:
            return
        else:
            _fsync_dir(path.parent)
        self._meta_path(key).unlink(missing_ok=True)

    def presign_get(self, key: str, expires_in: int = 300) -> str:
        _validate_key(key)
        expires = int(time.time()) + int(expires_in)
        return sign_local_url(self.api_base_url, self._secret, key, expires)


# --------------------------------------------------------------------------- S3

PART_SIZE = 8 * 1024 * 1024
MAX_COPY_OBJECT_SIZE = 5 * 1024**3
_UNAVAILABLE_CODES = frozenset(
    {
        "500",
        "502",
        "503",
        "504",
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeTooSkewed",
    }
)
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def make_s3_client(endpoint_url: str | None, **client_kwargs: Any) -> Any:
    """A boto3 S3 client with retries and short timeouts.

    Standard retry mode, 3 attempts in total (connection errors back off by
    tens of milliseconds, throttling by up to seconds); connect timeout 3 s,
    read timeout 10 s (per socket read, not per request). With an explicit
    endpoint (MinIO, moto) path-style addressing is used.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=3,
        read_timeout=10,
        signature_version="s3v4",
        s3={"addressing_style": "path"} if endpoint_url else {},
    )
    return boto3.client("s3", endpoint_url=endpoint_url, config=config, **client_kwargs)


class S3Store:
    """Objects in an S3 bucket under `prefix` (store key `k` is S3 key `{prefix}/k`).

    Memory: `put_stream` holds at most one multipart part (8 MiB, `PART_SIZE`)
    plus the caller's current chunk; objects smaller than a part are sent with
    a single `put_object`. Larger streams are uploaded as a multipart upload to
    a temporary key `{prefix}/.tmp/{uuid}` while hashing, then — once the hash
    is known — copied server-side to the content-addressed key and the
    temporary object deleted (or the upload aborted if that key already holds
    the same bytes). Any error, including `DocumentTooLarge`, aborts the
    multipart upload / deletes the temporary object. A crash of the process
    itself can leave an incomplete multipart upload or a `.tmp/` object:
    configure a bucket lifecycle rule (AbortIncompleteMultipartUpload, expire
    `.tmp/`) for that.

    Every write asks for server-side encryption (`sse`, default AES256; use
    "aws:kms" for KMS, or None for stores that reject the header) and carries
    a checksum the server verifies: `checksum="SHA256"` sends
    x-amz-checksum-sha256 computed here (for single puts it is the document's
    own sha256), `checksum="MD5"` sends Content-MD5 for S3-compatibles without
    flexible checksums. The document sha256 is also stored as user metadata
    (`x-amz-meta-sha256`) and read back by `head`.
    """

    part_size = PART_SIZE
    max_copy_object_size = MAX_COPY_OBJECT_SIZE
    copy_part_size = 512 * 1024 * 1024

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint_url: str | None,
        client: Any = None,
        sse: str | None = "AES256",
        checksum: Literal["SHA256", "MD5"] = "SHA256",
    ) -> None:
        if not bucket:
            raise ValueError("S3Store needs a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            _validate_key(self.prefix, what="prefix")
        self.endpoint_url = endpoint_url
        self.client = client if client is not None else make_s3_client(endpoint_url)
        self.sse = sse
        self.checksum = checksum

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.bucket}/{self.prefix})"

    # -- plumbing

    def _s3_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _strip(self, s3_key: str) -> str:
        return s3_key[len(self.prefix) + 1 :] if self.prefix else s3_key

    def _call(self, op: str, key: str | None = None, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, op)(Bucket=self.bucket, **kwargs)
        except Exception as e:
            raise self._translate(e, key) from e

    def _translate(self, e: Exception, key: str | None) -> Exception:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionClosedError,
            HTTPClientError,
            IncompleteReadError,
        )
        from botocore.exceptions import ConnectionError as BotoConnectionError

        if isinstance(e, DocumentStoreError):
            return e
        if isinstance(
            e, BotoConnectionError | HTTPClientError | ConnectionClosedError | IncompleteReadError
        ):
            return DocumentStoreUnavailable(
                f"S3 endpoint {self.endpoint_url or 'AWS'} is unavailable: {e}"
            )
        if isinstance(e, ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND_CODES and key is not None:
                return DocumentNotFound(key)
            if code in _UNAVAILABLE_CODES:
                return DocumentStoreUnavailable(f"S3 bucket {self.bucket} is unavailable: {e}")
            return DocumentStoreError(f"S3 error on bucket {self.bucket}: {e}")
        if isinstance(e, BotoCoreError):
            return DocumentStoreError(f"S3 client error: {e}")
        return e

    def _checksum_args(self, body: bytes | bytearray, sha256_digest: bytes | None = None) -> dict:
        if self.checksum == "MD5":
            return {"ContentMD5": _b64(hashlib.md5(body, usedforsecurity=False).digest())}
        digest = sha256_digest if sha256_digest is not None else hashlib.sha256(body).digest()
        return {"ChecksumAlgorithm": "SHA256", "ChecksumSHA256": _b64(digest)}

    def _sse_args(self) -> dict:
        return {"ServerSideEncryption": self.sse} if self.sse else {}

    # -- writes

    def put_stream(
        self,
        chunks: Iterable[bytes],
        *,
        content_type: str,
        max_bytes: int,
        prefix: str = DEFAULT_PREFIX,
    ) -> StoredObject:
        prefix = _normalise_prefix(prefix)
        _check_max_bytes(max_bytes)
        hasher = hashlib.sha256()
        size = 0
        buf = bytearray()
        upload: _MultipartUpload | None = None
        try:
            for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                if size > max_bytes:
                    raise DocumentTooLarge(max_bytes)
                hasher.update(chunk)
                view = memoryview(chunk)
                while view:
                    room = self.part_size - len(buf)
                    buf += view[:room]
                    view = view[room:]
                    if len(buf) >= self.part_size:
                        if upload is None:
                            upload = _MultipartUpload(self, content_type)
                        upload.add_part(buf)
                        buf = bytearray()
            if size == 0:
                raise EmptyDocument()
            digest = hasher.digest()
            sha = digest.hex()
            key = content_key(sha, prefix)
            existing = self.head(key)
            same = existing is not None and existing.sha256 == sha and existing.size == size
            if upload is None:
                if existing is not None and same:
                    return existing
                self._put_object(key, buf, content_type, sha, digest)
                return StoredObject(key=key, sha256=sha, size=size, content_type=content_type)
            if buf:
                upload.add_part(buf)
                buf = bytearray()
            if existing is not None and same:
                upload.cleanup()  # best effort: the document is already stored
                return existing
            upload.complete()
            self._copy(upload.s3_key, key, size=size, content_type=content_type, sha256=sha)
            upload.cleanup()  # best effort: the document is stored; a lifecycle rule mops up
            return StoredObject(key=key, sha256=sha, size=size, content_type=content_type)
        except BaseException as e:
            if upload is not None:
                upload.cleanup()
            if isinstance(e, Exception) and not isinstance(e, DocumentStoreError | ValueError):
                translated = self._translate(e, None)
                if translated is not e:
                    raise translated from e
            raise

    def _put_object(
        self,
        key: str,
        body: bytes | bytearray,
        content_type: str,
        sha: str,
        digest: bytes | None = None,
    ) -> None:
        self._call(
            "put_object",
            key,
            Key=self._s3_key(key),
            Body=body,
            ContentType=content_type,
            Metadata={"sha256": sha},
            **self._sse_args(),
            **self._checksum_args(body, digest),
        )

    def _copy(self, src: str, key: str, *, size: int, content_type: str, sha256: str) -> None:
        dest = self._s3_key(key)
        common: dict[str, Any] = {
            "ContentType": content_type,
            "Metadata": {"sha256": sha256},
            **self._sse_args(),
        }
        if self.checksum == "SHA256":
            common["ChecksumAlgorithm"] = "SHA256"
        source = {"Bucket": self.bucket, "Key": src}
        if size <= self.max_copy_object_size:
            self._call(
                "copy_object",
                None,
                Key=dest,
                CopySource=source,
                MetadataDirective="REPLACE",
                **common,
            )
            return
        # copy_object is limited to 5 GiB: copy larger objects part by part.
        upload_id = self._call("create_multipart_upload", None, Key=dest, **common)["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, size, self.copy_part_size), start=1):
                end = min(start + self.copy_part_size, size) - 1
                resp = self._call(
                    "upload_part_copy",
                    None,
                    Key=dest,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=source,
                    CopySourceRange=f"bytes={start}-{end}",
                )["CopyPartResult"]
                part = {"ETag": resp["ETag"], "PartNumber": number}
                if "ChecksumSHA256" in resp:
                    part["ChecksumSHA256"] = resp["ChecksumSHA256"]
                parts.append(part)
            self._call(
                "complete_multipart_upload",
                None,
                Key=dest,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=dest, UploadId=upload_id)
            raise

    def put_bytes(self, data: bytes, *, key: str, content_type: str) -> StoredObject:
        _validate_key(key)
        sha = hashlib.sha256(data).digest()
        self._put_object(key, data, content_type, sha.hex(), sha)
        return StoredObject(key=key, sha256=sha.hex(), size=len(data), content_type=content_type)

    # -- reads

    def open(self, key: str) -> Iterator[bytes]:
        _validate_key(key)
        body = self._call("get_object", key, Key=self._s3_key(key))["Body"]
        return self._iter_body(body, key)

    def _iter_body(self, body: Any, key: str) -> Iterator[bytes]:
        try:
            while True:
                try:
                    chunk = body.read(READ_CHUNK_SIZE)
                except Exception as e:
                    raise self._translate(e, key) from e
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    def read_bytes(self, key: str) -> bytes:
        return b"".join(self.open(key))

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def head(self, key: str) -> StoredObject | None:
        _validate_key(key)
        try:
            resp = self._call("head_object", key, Key=self._s3_key(key), ChecksumMode="ENABLED")
        except DocumentNotFound:
            return None
        sha = (resp.get("Metadata") or {}).get("sha256")
        if not sha:
            checksum = resp.get("ChecksumSHA256") or ""
            if checksum and "-" not in checksum:  # a full-object checksum, not a composite
                sha = base64.b64decode(checksum).hex()
        if not sha:  # written by someone else: hash it
            hasher = hashlib.sha256()
            for chunk in self.open(key):
                hasher.update(chunk)
            sha = hasher.hexdigest()
        return StoredObject(
            key=key,
            sha256=sha,
            size=int(resp["ContentLength"]),
            content_type=resp.get("ContentType") or "application/octet-stream",
        )

    def list(self, prefix: str = "") -> Iterator[str]:
        prefix = _validate_list_prefix(prefix)
        full = self._s3_key(prefix)
        token: dict[str, str] = {}
        while True:
            resp = self._call("list_objects_v2", None, Prefix=full, **token)
            for item in resp.get("Contents", []):
                key = self._strip(item["Key"])
                if not _is_hidden(key):
                    yield key
            if not resp.get("IsTruncated"):
                return
            token = {"ContinuationToken": resp["NextContinuationToken"]}

    # -- delete / presign

    def delete(self, key: str) -> None:
        _validate_key(key)
        with contextlib.suppress(DocumentNotFound):
            self._call("delete_object", key, Key=self._s3_key(key))

    def presign_get(self, key: str, expires_in: int = 300) -> str:
        _validate_key(key)
        try:
            url: str = self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._s3_key(key)},
                ExpiresIn=int(expires_in),
            )
        except Exception as e:
            raise self._translate(e, key) from e
        return url


class _MultipartUpload:
    """A multipart upload to a temporary key of an `S3Store`."""

    def __init__(self, store: S3Store, content_type: str) -> None:
        self.store = store
        self.s3_key = store._s3_key(f".tmp/{uuid.uuid4().hex}")
        self.parts: list[dict[str, Any]] = []
        self.completed = False
        self.finished = False
        args: dict[str, Any] = {"ContentType": content_type, **store._sse_args()}
        if store.checksum == "SHA256":
            args["ChecksumAlgorithm"] = "SHA256"
        self.upload_id: str = store._call("create_multipart_upload", None, Key=self.s3_key, **args)[
            "UploadId"
        ]

    def add_part(self, body: bytearray) -> None:
        number = len(self.parts) + 1
        checksum = self.store._checksum_args(body)
        resp = self.store._call(
            "upload_part",
            None,
            Key=self.s3_key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=body,
            **checksum,
        )
        part: dict[str, Any] = {"ETag": resp["ETag"], "PartNumber": number}
        if "ChecksumSHA256" in checksum:
            part["ChecksumSHA256"] = resp.get("ChecksumSHA256") or checksum["ChecksumSHA256"]
        self.parts.append(part)

    def complete(self) -> None:
        self.store._call(
            "complete_multipart_upload",
            None,
            Key=self.s3_key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": self.parts},
        )
        self.completed = True

    def abort(self) -> None:
        self.store._call("abort_multipart_upload", None, Key=self.s3_key, UploadId=self.upload_id)
        self.finished = True

    def delete_temp(self) -> None:
        self.store._call("delete_object", None, Key=self.s3_key)
        self.finished = True

    def cleanup(self) -> None:
        """Abort the upload or delete the temporary object, best effort: never raises
        (so it never masks the original exception); a failure is logged."""
        if self.finished:
            return
        try:
            if self.completed:
                self.delete_temp()
            else:
                self.abort()
        except Exception as e:
            log.warning(
                "could not clean up temporary upload s3://%s/%s: %s",
                self.store.bucket,
                self.s3_key,
                e,
            )


# --------------------------------------------------------------------------- factory


def open_store(
    url: str, *, endpoint_url: str | None, signing_secret: str, api_base_url: str
) -> DocumentStore:
    """Open the store named by `DEALFLOW_DOCUMENT_STORE`.

    * `file://PATH` — a local directory; PATH may be relative to the working
      directory (`file://.data/documents`) or absolute (`file:///srv/docs`).
    * `s3://bucket[/prefix]` — S3; `endpoint_url` for MinIO or another S3.
    """
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
        return S3Store(bucket, prefix, endpoint_url=endpoint_url)
    raise ValueError(
        f"unsupported document store URL {url!r}: use file://PATH (local directory) "
        "or s3://bucket/prefix"
    )
