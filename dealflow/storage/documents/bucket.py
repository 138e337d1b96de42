"""The document bucket, made ready once per deployment: created with Object
Lock enabled (the audit archive's locked histories need it, and S3 turns it on
only at creation), and left as it is when it already exists with the lock."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

_EXISTS = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})
_NO_LOCK = frozenset({"ObjectLockConfigurationNotFoundError", "ObjectLockConfigurationNotFound"})


class BucketSetupError(Exception):
    """The bucket cannot be made ready; the message says why and what to do."""


def ensure_locked_bucket(client: Any, bucket: str) -> str:
    """Create `bucket` with Object Lock unless it exists with it; what happened, in words.

    Idempotent: a second run (or a racing one) finds the bucket and checks its lock.
    """
    try:
        if not _exists(client, bucket):
            try:
                client.create_bucket(
                    Bucket=bucket, ObjectLockEnabledForBucket=True, **_location(client)
                )
                return f"bucket {bucket} created with Object Lock enabled"
            except ClientError as e:
                if _code(e) not in _EXISTS:
                    raise
        if not _lock_enabled(client, bucket):
            raise BucketSetupError(
                f"bucket {bucket} exists without Object Lock, which S3 turns on only when a "
                "bucket is created: name a new bucket in DEALFLOW_DOCUMENT_STORE, or enable "
                "versioning and Object Lock on this one where the S3 allows it"
            )
        return f"bucket {bucket} already exists with Object Lock enabled"
    except ClientError as e:
        raise BucketSetupError(f"bucket {bucket}: {_code(e)}: {_message(e)}") from e
    except BotoCoreError as e:
        raise BucketSetupError(f"bucket {bucket}: the S3 endpoint cannot be used: {e}") from e


def _exists(client: Any, bucket: str) -> bool:
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as e:
        if _code(e) in ("404", "NoSuchBucket", "NotFound"):
            return False
        if _code(e) == "403":
            raise BucketSetupError(
                f"bucket {bucket}: access denied (is the name taken by another account, or "
                "are the credentials not allowed to use it?)"
            ) from e
        raise
    return True


def _lock_enabled(client: Any, bucket: str) -> bool:
    try:
        config = client.get_object_lock_configuration(Bucket=bucket)
    except ClientError as e:
        if _code(e) in _NO_LOCK:
            return False
        raise
    return bool(config.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled")


def _location(client: Any) -> dict[str, Any]:
    # us-east-1 is the one region that refuses an explicit location constraint.
    region = client.meta.region_name
    if not region or region == "us-east-1":
        return {}
    return {"CreateBucketConfiguration": {"LocationConstraint": region}}


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _message(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Message", "")) or str(e)
