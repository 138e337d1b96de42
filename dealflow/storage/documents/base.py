"""What every document store is: the `DocumentStore` protocol, its errors, and
the rules for keys.

Documents are content-addressed: `put_stream` stores the bytes at
`{prefix}/{sha256[:2]}/{sha256}`, so storing the same bytes twice is idempotent
and the key + sha256 are all a workflow ever needs to carry. Exported histories
and manifests go to explicit keys with `put_bytes`, or — for the audit archive,
where two writers may race — with `put_bytes_conditional`: a compare-and-swap on
the object's tag (`read_tagged`), optionally under a retention lock (S3 Object
Lock; `require_object_lock` says whether the store can keep one).

Keys are `/`-separated relative names. Every component must be non-empty and
must not start with `.` (this rules out `.` and `..` and reserves dot-names for
the stores' own bookkeeping); backslashes, NUL bytes and absolute paths are
rejected with `ValueError` by both backends.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

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


class PreconditionFailed(DocumentStoreError):
    """A conditional write found the object other than expected (another writer got
    there first): nothing was written."""

    def __init__(self, key: str, expected: str | None) -> None:
        super().__init__(
            f"document {key!r} already exists: another writer created it"
            if expected is None
            else f"document {key!r} is no longer the version tagged {expected}: another writer "
            "changed it"
        )
        self.key = key
        self.expected = expected


class ObjectLockUnavailable(DocumentStoreError):
    """The store cannot keep objects under a retention lock (a local directory, or an
    S3 bucket created without Object Lock)."""


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

    # The longest `expires_in` whose link still works (None: no limit).
    max_link_seconds: int | None
    # Whether the backend can keep objects under a retention lock (S3 Object Lock);
    # whether this bucket has it turned on, `require_object_lock` says.
    supports_object_lock: bool

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

    def put_bytes_conditional(
        self,
        data: bytes,
        *,
        key: str,
        content_type: str,
        if_match: str | None,
        retain_until: datetime | None = None,
    ) -> str:
        """Store `data` at `key` only if the object there is still the one tagged
        `if_match` (None: only if there is no object at all); returns the new tag.

        Atomic against every other conditional writer: the loser gets
        `PreconditionFailed` and wrote nothing. `retain_until` puts the object under
        a compliance-mode retention lock until then (`ObjectLockUnavailable` if the
        store cannot).
        """
        ...

    def read_tagged(self, key: str) -> tuple[bytes, str]:
        """An object's bytes and its tag (what `put_bytes_conditional` compares);
        raises `DocumentNotFound`."""
        ...

    def require_object_lock(self) -> None:
        """Raise `ObjectLockUnavailable` unless `put_bytes_conditional` can lock objects."""
        ...

    def object_lock(self, key: str) -> tuple[str, datetime] | None:
        """The retention lock of the object's current version — mode (`COMPLIANCE`,
        `GOVERNANCE`) and retain-until date — or None; raises `DocumentNotFound`."""
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

    def presign_get(self, key: str, expires_in: int = 300, audience: str = "") -> str:
        """A URL that lets a third party (a lender, `audience`) GET the object for
        `expires_in` seconds. The API's own links bind the audience; S3's are
        bearer links, limited by their expiry and the bucket's policy."""
        ...


# --------------------------------------------------------------------------- helpers


def content_key(sha256: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The content-addressed key of a document: `{prefix}/{sha256[:2]}/{sha256}`."""
    tail = f"{sha256[:2]}/{sha256}"
    return f"{prefix}/{tail}" if prefix else tail


def validate_key(key: str, *, what: str = "key") -> str:
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


def normalise_prefix(prefix: str) -> str:
    """A put_stream prefix: '' or a valid key without surrounding slashes."""
    prefix = prefix.strip("/")
    return validate_key(prefix, what="prefix") if prefix else ""


def validate_list_prefix(prefix: str) -> str:
    """A list() prefix may end with '/' or in the middle of a component."""
    if not prefix:
        return ""
    validate_key(prefix.rstrip("/") or "x", what="prefix")
    if prefix.startswith("/"):
        raise ValueError(f"document prefix {prefix!r} is an absolute path")
    return prefix


def check_max_bytes(max_bytes: int) -> None:
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")


def is_hidden(relative_key: str) -> bool:
    return any(part.startswith(".") for part in relative_key.split("/"))
