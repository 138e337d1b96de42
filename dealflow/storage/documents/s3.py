"""`S3Store`: documents in any S3 (AWS, MinIO, moto) through boto3."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from dealflow.storage.documents.base import (
    DEFAULT_PREFIX,
    READ_CHUNK_SIZE,
    DocumentNotFound,
    DocumentStoreError,
    DocumentStoreUnavailable,
    DocumentTooLarge,
    EmptyDocument,
    ObjectLockUnavailable,
    PreconditionFailed,
    StoredObject,
    check_max_bytes,
    content_key,
    is_hidden,
    normalise_prefix,
    validate_key,
    validate_list_prefix,
)

log = logging.getLogger(__name__)

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
# 412: the condition failed; 409: a concurrent conditional write to the key was in
# flight (S3 asks the loser to retry, which for a compare-and-swap means it lost).
_CONDITION_FAILED_CODES = frozenset(
    {"412", "PreconditionFailed", "409", "ConditionalRequestConflict"}
)


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
    "aws:kms" for KMS with `sse_kms_key_id` naming the key — without one AWS
    uses its managed `aws/s3` key — or None for stores that reject the header
    or encrypt on their own; `DEALFLOW_S3_SSE` picks it) and carries
    a checksum the server verifies: `checksum="SHA256"` sends
    x-amz-checksum-sha256 computed here (for single puts it is the document's
    own sha256), `checksum="MD5"` sends Content-MD5 for S3-compatibles without
    flexible checksums. The document sha256 is also stored as user metadata
    (`x-amz-meta-sha256`) and read back by `head`.

    `put_bytes_conditional` is a PutObject with `If-None-Match: *` (create only)
    or `If-Match: <ETag>` (replace only that version), and with
    `ObjectLockMode=COMPLIANCE` + `ObjectLockRetainUntilDate` when asked to lock:
    the bucket must have Object Lock enabled (`require_object_lock` checks).
    """

    part_size = PART_SIZE
    max_copy_object_size = MAX_COPY_OBJECT_SIZE
    copy_part_size = 512 * 1024 * 1024
    # SigV4 presigned URLs live at most 7 days: boto3 signs a longer X-Amz-Expires
    # without complaint and S3 then refuses every GET of the link. (A link signed
    # with temporary credentials also dies with them, sooner.)
    max_link_seconds: int | None = 7 * 24 * 3600
    supports_object_lock = True

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint_url: str | None,
        client: Any = None,
        sse: str | None = "AES256",
        sse_kms_key_id: str | None = None,
        checksum: Literal["SHA256", "MD5"] = "SHA256",
    ) -> None:
        if not bucket:
            raise ValueError("S3Store needs a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            validate_key(self.prefix, what="prefix")
        self.endpoint_url = endpoint_url
        self.client = client if client is not None else make_s3_client(endpoint_url)
        if sse_kms_key_id and sse != "aws:kms":
            raise ValueError("a KMS key id goes with server-side encryption 'aws:kms' only")
        self.sse = sse
        self.sse_kms_key_id = sse_kms_key_id
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
        if not self.sse:
            return {}
        if self.sse_kms_key_id:
            return {"ServerSideEncryption": self.sse, "SSEKMSKeyId": self.sse_kms_key_id}
        return {"ServerSideEncryption": self.sse}

    # -- writes

    def put_stream(
        self,
        chunks: Iterable[bytes],
        *,
        content_type: str,
        max_bytes: int,
        prefix: str = DEFAULT_PREFIX,
    ) -> StoredObject:
        prefix = normalise_prefix(prefix)
        check_max_bytes(max_bytes)
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
        **extra: Any,
    ) -> Any:
        return self._call(
            "put_object",
            key,
            Key=self._s3_key(key),
            Body=body,
            ContentType=content_type,
            Metadata={"sha256": sha},
            **self._sse_args(),
            **self._checksum_args(body, digest),
            **extra,
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
        validate_key(key)
        sha = hashlib.sha256(data).digest()
        self._put_object(key, data, content_type, sha.hex(), sha)
        return StoredObject(key=key, sha256=sha.hex(), size=len(data), content_type=content_type)

    # -- conditional writes

    def require_object_lock(self) -> None:
        from botocore.exceptions import ClientError

        try:
            config = self.client.get_object_lock_configuration(Bucket=self.bucket)
            enabled = config["ObjectLockConfiguration"].get("ObjectLockEnabled") == "Enabled"
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "ObjectLockConfigurationNotFoundError":
                raise self._translate(e, None) from e
            enabled = False
        except Exception as e:
            raise self._translate(e, None) from e
        if not enabled:
            raise ObjectLockUnavailable(
                f"S3 bucket {self.bucket} does not have Object Lock enabled, so it cannot keep "
                "objects under retention. Create the bucket with Object Lock "
                "(ObjectLockEnabledForBucket) or enable it on the versioned bucket "
                "(PutObjectLockConfiguration)"
            )

    def object_lock(self, key: str) -> tuple[str, datetime] | None:
        validate_key(key)
        resp = self._call("head_object", key, Key=self._s3_key(key))
        mode, until = resp.get("ObjectLockMode"), resp.get("ObjectLockRetainUntilDate")
        if not mode or not isinstance(until, datetime):
            return None
        return str(mode), until.astimezone(UTC)

    def read_tagged(self, key: str) -> tuple[bytes, str]:
        validate_key(key)
        resp = self._call("get_object", key, Key=self._s3_key(key))
        etag = str(resp["ETag"])
        return b"".join(self._iter_body(resp["Body"], key)), etag

    def put_bytes_conditional(
        self,
        data: bytes,
        *,
        key: str,
        content_type: str,
        if_match: str | None,
        retain_until: datetime | None = None,
    ) -> str:
        from botocore.exceptions import ClientError

        validate_key(key)
        digest = hashlib.sha256(data).digest()
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if if_match is None else {"IfMatch": if_match}
        if retain_until is not None:
            extra |= {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": retain_until}
        try:
            resp = self._put_object(key, data, content_type, digest.hex(), digest, **extra)
        except DocumentStoreError as e:
            cause = e.__cause__
            code = (
                str(cause.response.get("Error", {}).get("Code", ""))
                if isinstance(cause, ClientError)
                else ""
            )
            # If-Match on a key that is gone: the version we read was replaced too.
            if code in _CONDITION_FAILED_CODES or (if_match and isinstance(e, DocumentNotFound)):
                raise PreconditionFailed(key, if_match) from e
            raise
        return str(resp["ETag"])

    # -- reads

    def open(self, key: str) -> Iterator[bytes]:
        validate_key(key)
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
        validate_key(key)
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
        prefix = validate_list_prefix(prefix)
        full = self._s3_key(prefix)
        token: dict[str, str] = {}
        while True:
            resp = self._call("list_objects_v2", None, Prefix=full, **token)
            for item in resp.get("Contents", []):
                key = self._strip(item["Key"])
                if not is_hidden(key):
                    yield key
            if not resp.get("IsTruncated"):
                return
            token = {"ContinuationToken": resp["NextContinuationToken"]}

    # -- delete / presign

    def delete(self, key: str) -> None:
        validate_key(key)
        with contextlib.suppress(DocumentNotFound):
            self._call("delete_object", key, Key=self._s3_key(key))

    def presign_get(self, key: str, expires_in: int = 300, audience: str = "") -> str:
        validate_key(key)
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
