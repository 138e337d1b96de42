"""`LocalDirectoryStore`: documents as plain files under a directory, and the
signed links through which the API serves them."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode

from dealflow.storage.documents.base import (
    DEFAULT_PREFIX,
    READ_CHUNK_SIZE,
    DocumentNotFound,
    DocumentTooLarge,
    EmptyDocument,
    ObjectLockUnavailable,
    PreconditionFailed,
    StoredObject,
    check_max_bytes,
    content_key,
    normalise_prefix,
    validate_key,
    validate_list_prefix,
)


def _signature(secret: str, key: str, expires: int, audience: str) -> str:
    message = f"GET\n{key}\n{expires}\n{audience}".encode()
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign_local_url(
    api_base_url: str, secret: str, key: str, expires: int, audience: str = ""
) -> str:
    """`{api_base_url}/api/files/{key}?expires=<unix>&for=<audience>&sig=<hex hmac-sha256>`.

    The signature is HMAC-SHA256(secret, "GET\\n{key}\\n{expires}\\n{audience}") over
    the *unquoted* key, so the API verifies the decoded path parameter; the
    audience (the lender the link was made for) is bound by it too.
    """
    sig = _signature(secret, key, expires, audience)
    query = urlencode({"expires": expires, "for": audience, "sig": sig})
    return f"{api_base_url.rstrip('/')}/api/files/{quote(key, safe='/')}?{query}"


def verify_local_signature(
    secret: str,
    key: str,
    expires: int | str,
    sig: str,
    now: float | None = None,
    audience: str = "",
) -> bool:
    """Check a URL made by `LocalDirectoryStore.presign_get` (for the API's file route).

    False if the link has expired (`now > expires`), the signature does not
    match the key and audience, or any argument is malformed. Constant-time
    comparison.
    """
    try:
        expires_at = int(expires)
    except (TypeError, ValueError):
        return False
    if now is None:
        now = time.time()
    if now > expires_at or not isinstance(sig, str) or not isinstance(key, str):
        return False
    expected = _signature(secret, key, expires_at, audience)
    return hmac.compare_digest(expected, sig.lower())


# --------------------------------------------------------------------------- the store


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
    it describes — a stale sidecar is detected and ignored), and
    `root/.locks/k.lock`, the lock file that serialises conditional writers of
    key `k`.

    A conditional write's tag is the sha256 of the object's bytes. It compares
    and publishes under an exclusive `flock` of the key's lock file (processes
    and threads alike: each opens its own file description); a write that
    expects no object publishes with `os.link`, which fails if the name exists,
    so even a writer that skips the lock cannot be overwritten. Objects cannot be
    locked under retention here (`require_object_lock` says so).
    """

    def __init__(
        self,
        root: Path,
        *,
        signing_secret: str,
        api_base_url: str,
        max_link_seconds: int | None = None,
    ) -> None:
        if not signing_secret:
            raise ValueError("LocalDirectoryStore needs a non-empty signing_secret")
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / ".tmp"
        self._meta = self.root / ".meta"
        self._locks = self.root / ".locks"
        self._secret = signing_secret
        self.api_base_url = api_base_url.rstrip("/")
        self.max_link_seconds = max_link_seconds
        self._sweep_stale_uploads()

    STALE_UPLOAD_SECONDS = 24 * 3600
    # The link is an HMAC over key, expiry and audience, checked by the API's
    # file route; how long a link may last is the deployment's choice
    # (`DEALFLOW_FILE_LINK_MAX_HOURS`, set by `open_store`).
    max_link_seconds: int | None = None
    supports_object_lock = False

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
        return self.root.joinpath(*validate_key(key).split("/"))

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
        prefix = normalise_prefix(prefix)
        check_max_bytes(max_bytes)
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

    # -- conditional writes

    def require_object_lock(self) -> None:
        raise ObjectLockUnavailable(
            f"{self!r} is a local directory: it cannot lock objects under retention"
        )

    def object_lock(self, key: str) -> tuple[str, datetime] | None:
        if not self.exists(key):
            raise DocumentNotFound(key)
        return None

    def read_tagged(self, key: str) -> tuple[bytes, str]:
        data = self.read_bytes(key)
        return data, hashlib.sha256(data).hexdigest()

    def put_bytes_conditional(
        self,
        data: bytes,
        *,
        key: str,
        content_type: str,
        if_match: str | None,
        retain_until: datetime | None = None,
    ) -> str:
        if retain_until is not None:
            self.require_object_lock()
        final = self._path(key)
        f, tmp = self._new_temp(final.parent)
        sha = hashlib.sha256(data).hexdigest()
        try:
            with f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            with self._key_locked(key):
                if self._current_tag(key) != if_match:
                    raise PreconditionFailed(key, if_match)
                commit = self._commit_new if if_match is None else self._commit
                commit(tmp, key, sha256=sha, size=len(data), content_type=content_type)
        finally:
            tmp.unlink(missing_ok=True)
        return sha

    @contextlib.contextmanager
    def _key_locked(self, key: str) -> Iterator[None]:
        path = self._locks.joinpath(*key.split("/")).with_name(key.rsplit("/", 1)[-1] + ".lock")
        _makedirs_durable(path.parent)
        with open(path, "a") as lock_file:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    def _current_tag(self, key: str) -> str | None:
        try:
            return self.read_tagged(key)[1]
        except DocumentNotFound:
            return None

    def _commit_new(
        self, tmp: Path, key: str, *, sha256: str, size: int, content_type: str
    ) -> None:
        """Publish a temp file at `key` only if nothing is there (link fails if it exists)."""
        final = self._path(key)
        _makedirs_durable(final.parent)
        try:
            os.link(tmp, final)
        except FileExistsError:
            raise PreconditionFailed(key, None) from None
        _fsync_dir(final.parent)
        meta = {"sha256": sha256, "size": size, "content_type": content_type}
        self._write_meta(key, {**meta, "ino": final.stat().st_ino})

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
        prefix = validate_list_prefix(prefix)
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

    def presign_get(self, key: str, expires_in: int = 300, audience: str = "") -> str:
        validate_key(key)
        expires = int(time.time()) + int(expires_in)
        return sign_local_url(self.api_base_url, self._secret, key, expires, audience)
