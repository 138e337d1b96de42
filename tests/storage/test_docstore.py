"""One suite over both document-store backends (docs/architecture.md §2).

S3 runs against a real moto server over HTTP. It runs in a subprocess rather
than `ThreadedMotoServer` so that tracemalloc in the memory test measures only
this process's side of the upload, not moto holding the received parts.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest

from dealflow.config import DEV_FILE_LINK_SECRET, DEV_JWT_SECRET, Settings
from dealflow.storage.documents import (
    DocumentNotFound,
    DocumentStore,
    DocumentStoreUnavailable,
    DocumentTooLarge,
    EmptyDocument,
    LocalDirectoryStore,
    S3Store,
    content_key,
    make_s3_client,
    open_store,
    store_from_settings,
    verify_local_signature,
)
from dealflow.storage.documents import local as local_store
from tests.support.api_stack import moto_server
from tests.support.memory import peak_rss

MiB = 1024 * 1024
SECRET = "test-signing-secret"
API_BASE = "http://api.test:8000"
CREDS = {
    "region_name": "us-east-1",
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def s3_client(moto_endpoint: str) -> Any:
    return make_s3_client(moto_endpoint, **CREDS)


@pytest.fixture
def bucket(s3_client: Any) -> str:
    name = f"docs-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


# Overrides conftest's session-wide `store` in this module: a fresh store per test, per backend.
@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> DocumentStore:
    if request.param == "local":
        return LocalDirectoryStore(tmp_path / "docs", signing_secret=SECRET, api_base_url=API_BASE)
    client = request.getfixturevalue("s3_client")
    bucket = request.getfixturevalue("bucket")
    endpoint = request.getfixturevalue("moto_endpoint")
    return S3Store(bucket, "dealflow", endpoint_url=endpoint, client=client)


# ----------------------------------------------------------------------------- helpers


def chunked(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def generated(total: int, chunk: int = MiB) -> Iterator[bytes]:
    """Deterministic pseudo-random bytes, produced chunk by chunk (never all at once)."""
    i = 0
    sent = 0
    while sent < total:
        block = hashlib.sha256(i.to_bytes(8, "big")).digest() * (chunk // 32)
        block = block[: min(chunk, total - sent)]
        sent += len(block)
        i += 1
        yield block


def generated_sha(total: int) -> str:
    h = hashlib.sha256()
    for block in generated(total):
        h.update(block)
    return h.hexdigest()


def leftovers(store: DocumentStore) -> list[str]:
    """Everything physically present in the backend, bookkeeping included."""
    if isinstance(store, LocalDirectoryStore):
        return sorted(
            str(Path(d, f).relative_to(store.root)) for d, _, fs in os.walk(store.root) for f in fs
        )
    assert isinstance(store, S3Store)
    objects = store.client.list_objects_v2(Bucket=store.bucket).get("Contents", [])
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    return sorted(o["Key"] for o in objects) + [f"upload:{u['Key']}" for u in uploads]


# ----------------------------------------------------------------------------- suite


def test_round_trip(store: DocumentStore) -> None:
    data = os.urandom(300_000)
    sha = hashlib.sha256(data).hexdigest()
    obj = store.put_stream(chunked(data), content_type="application/pdf", max_bytes=MiB)
    assert obj.key == f"documents/{sha[:2]}/{sha}" == content_key(sha)
    assert (obj.sha256, obj.size, obj.content_type) == (sha, len(data), "application/pdf")
    assert store.read_bytes(obj.key) == data
    assert hashlib.sha256(b"".join(store.open(obj.key))).hexdigest() == sha
    assert store.head(obj.key) == obj
    assert store.exists(obj.key)
    assert list(store.list("documents/")) == [obj.key]


def test_put_bytes_explicit_key_and_overwrite(store: DocumentStore) -> None:
    key = "exports/deal-1/history.json"
    first = store.put_bytes(b'{"v": 1}', key=key, content_type="application/json")
    assert first.sha256 == hashlib.sha256(b'{"v": 1}').hexdigest()
    second = store.put_bytes(b'{"v": 22}', key=key, content_type="application/json")
    assert store.read_bytes(key) == b'{"v": 22}'
    assert store.head(key) == second
    store.put_bytes(b"m", key="exports/deal-1/manifest.json", content_type="application/json")
    store.put_bytes(b"x", key="exportsX/other", content_type="text/plain")
    assert sorted(store.list("exports/")) == [key, "exports/deal-1/manifest.json"]
    assert sorted(store.list("exports")) == [key, "exports/deal-1/manifest.json", "exportsX/other"]


def test_custom_prefix(store: DocumentStore) -> None:
    obj = store.put_stream([b"policy"], content_type="text/plain", max_bytes=100, prefix="policies")
    assert obj.key.startswith("policies/")
    assert list(store.list("")) == [obj.key]


def test_large_stream_uses_bounded_memory(store: DocumentStore) -> None:
    total = 96 * MiB
    expected = generated_sha(total)
    with peak_rss() as peak_mem:
        obj = store.put_stream(generated(total), content_type="video/mp4", max_bytes=128 * MiB)
    peak = peak_mem.growth
    assert (obj.sha256, obj.size) == (expected, total)
    # Local: one 1 MiB chunk in flight. S3: one 8 MiB part plus the chunk and
    # the client; the resident-set peak also keeps freed parts the allocator
    # has not returned yet. Either way far below the 96 MiB document.
    if isinstance(store, LocalDirectoryStore):
        limit = 8 * MiB
    else:
        assert isinstance(store, S3Store)
        limit = 4 * store.part_size + 8 * MiB
    assert peak < limit, f"peak {peak / MiB:.1f} MiB"
    h = hashlib.sha256()
    for chunk in store.open(obj.key):
        assert len(chunk) <= MiB
        h.update(chunk)
    assert h.hexdigest() == expected
    assert leftovers(store) == _physical(store, [obj.key])


def _physical(store: DocumentStore, keys: list[str]) -> list[str]:
    if isinstance(store, LocalDirectoryStore):
        return sorted(keys + [f".meta/{k}.json" for k in keys])
    assert isinstance(store, S3Store)
    return sorted(f"{store.prefix}/{k}" for k in keys)


@pytest.mark.parametrize("total", [1000, 20 * MiB], ids=["small", "multipart"])
def test_too_large_aborts_and_leaves_nothing(store: DocumentStore, total: int) -> None:
    limit = total // 2 + 1
    consumed = 0

    def source() -> Iterator[bytes]:
        nonlocal consumed
        for block in generated(total, chunk=min(MiB, total // 10)):
            consumed += len(block)
            yield block

    with pytest.raises(DocumentTooLarge, match=str(limit)) as exc:
        store.put_stream(source(), content_type="application/pdf", max_bytes=limit)
    assert exc.value.limit == limit
    assert consumed < total  # stopped reading as soon as the limit was crossed
    assert list(store.list("")) == []
    assert leftovers(store) == []


@pytest.mark.parametrize("chunks", [[], [b"", b""]], ids=["no-chunks", "empty-chunks"])
def test_empty_rejected(store: DocumentStore, chunks: list[bytes]) -> None:
    with pytest.raises(EmptyDocument):
        store.put_stream(iter(chunks), content_type="application/pdf", max_bytes=100)
    assert leftovers(store) == []


@pytest.mark.parametrize("total", [5000, 9 * MiB], ids=["small", "multipart"])
def test_identical_put_is_idempotent(store: DocumentStore, total: int) -> None:
    a = store.put_stream(generated(total), content_type="application/pdf", max_bytes=16 * MiB)
    b = store.put_stream(generated(total), content_type="application/pdf", max_bytes=16 * MiB)
    assert a == b
    assert list(store.list("documents/")) == [a.key]
    assert leftovers(store) == _physical(store, [a.key])


def test_delete_is_idempotent(store: DocumentStore) -> None:
    obj = store.put_stream([b"abc"], content_type="text/plain", max_bytes=10)
    store.delete(obj.key)
    assert not store.exists(obj.key)
    assert store.head(obj.key) is None
    store.delete(obj.key)
    store.delete("never/existed")
    assert leftovers(store) == []


def test_not_found(store: DocumentStore) -> None:
    with pytest.raises(DocumentNotFound):
        store.open("documents/ab/missing")
    with pytest.raises(DocumentNotFound):
        store.read_bytes("documents/ab/missing")
    assert store.head("documents/ab/missing") is None
    assert not store.exists("documents/ab/missing")
    assert list(store.list("nothing/")) == []


BAD_KEYS = [
    "../escape",
    "a/../../escape",
    "..",
    "/etc/passwd",
    "a\\..\\b",
    "a\x00b",
    "",
    "a//b",
    "a/",
    "./a",
    ".meta/x",
    "C:/Windows",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_rejected(store: DocumentStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.put_bytes(b"x", key=key, content_type="text/plain")
    with pytest.raises(ValueError):
        store.open(key)
    with pytest.raises(ValueError):
        store.head(key)
    with pytest.raises(ValueError):
        store.delete(key)
    with pytest.raises(ValueError):
        store.presign_get(key)


def test_path_traversal_writes_nothing_outside_root(tmp_path: Path) -> None:
    store = LocalDirectoryStore(tmp_path / "root", signing_secret=SECRET, api_base_url=API_BASE)
    for key in ["../outside", "sub/../../outside", str(tmp_path / "outside")]:
        with pytest.raises(ValueError):
            store.put_bytes(b"x", key=key, content_type="text/plain")
    with pytest.raises(ValueError):
        store.put_stream([b"x"], content_type="text/plain", max_bytes=10, prefix="../outside")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]
    assert not (tmp_path / "outside").exists()


def test_failure_mid_stream_leaves_nothing(store: DocumentStore) -> None:
    def broken() -> Iterator[bytes]:
        yield from generated(10 * MiB)  # more than one S3 part
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        store.put_stream(broken(), content_type="application/pdf", max_bytes=64 * MiB)
    assert leftovers(store) == []


# ----------------------------------------------------------------------------- local only


def test_local_atomic_put_bytes_failure_keeps_old_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalDirectoryStore(tmp_path / "docs", signing_secret=SECRET, api_base_url=API_BASE)
    key = "exports/deal-1/history.json"
    old = store.put_bytes(b"old contents", key=key, content_type="application/json")

    real_replace = os.replace

    def crash_on_object(src: Any, dst: Any) -> None:
        # Let the metadata sidecar through, "crash" on the object itself.
        if ".meta" not in str(dst):
            raise OSError("disk on fire")
        real_replace(src, dst)

    monkeypatch.setattr(local_store.os, "replace", crash_on_object)
    with pytest.raises(OSError, match="disk on fire"):
        store.put_bytes(b"new contents!", key=key, content_type="text/plain")
    with pytest.raises(OSError, match="disk on fire"):
        store.put_stream([b"doc"], content_type="text/plain", max_bytes=10)
    monkeypatch.undo()

    assert store.read_bytes(key) == b"old contents"
    # The sidecar already describes the new bytes, but head notices it is stale.
    assert store.head(key) is not None
    assert store.head(key).sha256 == old.sha256  # type: ignore[union-attr]
    assert not [p for p in store.root.rglob("*") if p.name.startswith(".tmp-")]
    assert list(store.list("")) == [key]


def test_local_sweeps_stale_upload_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    LocalDirectoryStore(root, signing_secret=SECRET, api_base_url=API_BASE)
    (root / ".tmp").mkdir()
    stale, fresh = root / ".tmp" / ".tmp-old.part", root / ".tmp" / ".tmp-new.part"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"in progress elsewhere")
    os.utime(stale, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    store = LocalDirectoryStore(root, signing_secret=SECRET, api_base_url=API_BASE)
    assert not stale.exists()
    assert fresh.exists()
    assert list(store.list("")) == []


def test_local_survives_restart(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    obj = LocalDirectoryStore(root, signing_secret=SECRET, api_base_url=API_BASE).put_stream(
        [b"%PDF-1.7 ..."], content_type="application/pdf", max_bytes=100
    )
    reopened = LocalDirectoryStore(root, signing_secret=SECRET, api_base_url=API_BASE)
    assert reopened.head(obj.key) == obj
    assert reopened.read_bytes(obj.key) == b"%PDF-1.7 ..."


def test_local_presign_signature(tmp_path: Path) -> None:
    store = LocalDirectoryStore(tmp_path, signing_secret=SECRET, api_base_url=API_BASE + "/")
    obj = store.put_bytes(b"lender pack", key="exports/deal 1/pack.pdf", content_type="x/y")
    before = int(time.time())
    url = store.presign_get(obj.key, expires_in=60)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == API_BASE
    assert parts.path == "/api/files/exports/deal%201/pack.pdf"
    key = unquote(parts.path.removeprefix("/api/files/"))
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    expires, sig = query["expires"], query["sig"]
    assert before + 60 <= int(expires) <= int(time.time()) + 60
    now = time.time()
    assert verify_local_signature(SECRET, key, expires, sig, now)
    assert verify_local_signature(SECRET, key, int(expires), sig.upper(), now)
    assert not verify_local_signature(SECRET, key, expires, sig, int(expires) + 1)  # expired
    assert not verify_local_signature(SECRET, "exports/other.pdf", expires, sig, now)
    assert not verify_local_signature(SECRET, key, str(int(expires) + 3600), sig, now)
    assert not verify_local_signature(SECRET, key, expires, "0" * 64, now)
    assert not verify_local_signature("other-secret", key, expires, sig, now)
    assert not verify_local_signature(SECRET, key, "soon", sig, now)
    # Made for a lender: the audience is bound, another one does not verify.
    bound = parse_qs(urlsplit(store.presign_get(obj.key, 60, audience="acme")).query)
    expires, sig = bound["expires"][0], bound["sig"][0]
    assert bound["for"] == ["acme"]
    assert verify_local_signature(SECRET, key, expires, sig, now, audience="acme")
    assert not verify_local_signature(SECRET, key, expires, sig, now, audience="beta")
    assert not verify_local_signature(SECRET, key, expires, sig, now)


# ----------------------------------------------------------------------------- S3 only


def test_s3_presigned_url_is_fetchable(s3_client: Any, bucket: str, moto_endpoint: str) -> None:
    store = S3Store(bucket, "p", endpoint_url=moto_endpoint, client=s3_client)
    obj = store.put_stream([b"signed contract"], content_type="application/pdf", max_bytes=100)
    url = store.presign_get(obj.key, expires_in=120)
    assert url.startswith(moto_endpoint)
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == b"signed contract"


def test_s3_layout_encryption_and_checksums(
    s3_client: Any, bucket: str, moto_endpoint: str
) -> None:
    store = S3Store(bucket, "/tenant/docs/", endpoint_url=moto_endpoint, client=s3_client)
    small = store.put_stream([b"small"], content_type="application/pdf", max_bytes=100)
    big = store.put_stream(generated(9 * MiB), content_type="image/png", max_bytes=10 * MiB)
    exported = store.put_bytes(b"{}", key="exports/h.json", content_type="application/json")
    for obj in (small, big, exported):
        raw = s3_client.head_object(
            Bucket=bucket, Key=f"tenant/docs/{obj.key}", ChecksumMode="ENABLED"
        )
        assert raw["ServerSideEncryption"] == "AES256"
        assert raw["Metadata"]["sha256"] == obj.sha256
        assert raw["ContentType"] == obj.content_type
        assert raw["ContentLength"] == obj.size
    raw_small = s3_client.head_object(
        Bucket=bucket, Key=f"tenant/docs/{small.key}", ChecksumMode="ENABLED"
    )
    assert raw_small["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(small.sha256)).decode()
    assert sorted(store.list("")) == sorted([small.key, big.key, exported.key])


def test_s3_md5_mode_round_trip(s3_client: Any, bucket: str, moto_endpoint: str) -> None:
    store = S3Store(bucket, "", endpoint_url=moto_endpoint, client=s3_client, checksum="MD5")
    for total in (10, 9 * MiB):
        obj = store.put_stream(generated(total), content_type="x/y", max_bytes=16 * MiB)
        assert obj.sha256 == generated_sha(total)
        assert hashlib.sha256(store.read_bytes(obj.key)).hexdigest() == obj.sha256
    assert leftovers(store) == sorted(store.list(""))


def test_s3_large_copy_path(
    s3_client: Any, bucket: str, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Objects above copy_object's 5 GiB limit are copied part by part (scaled down here)."""
    store = S3Store(bucket, "p", endpoint_url=moto_endpoint, client=s3_client)
    monkeypatch.setattr(store, "max_copy_object_size", 6 * MiB)
    monkeypatch.setattr(store, "copy_part_size", 5 * MiB)
    obj = store.put_stream(generated(12 * MiB), content_type="x/y", max_bytes=16 * MiB)
    assert hashlib.sha256(store.read_bytes(obj.key)).hexdigest() == generated_sha(12 * MiB)
    assert leftovers(store) == [f"p/{obj.key}"]


def test_s3_failed_copy_cleans_up_temp_object(
    s3_client: Any, bucket: str, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = S3Store(bucket, "p", endpoint_url=moto_endpoint, client=s3_client)

    def broken_copy(*args: Any, **kwargs: Any) -> None:
        raise DocumentStoreUnavailable("copy failed")

    monkeypatch.setattr(store, "_copy", broken_copy)
    with pytest.raises(DocumentStoreUnavailable, match="copy failed"):
        store.put_stream(generated(9 * MiB), content_type="x/y", max_bytes=16 * MiB)
    assert leftovers(store) == []


def test_s3_unavailable_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ]:
        monkeypatch.setenv(name, value)
    endpoint = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    store = open_store(
        "s3://bucket/prefix", endpoint_url=endpoint, signing_secret=SECRET, api_base_url=API_BASE
    )
    calls = [
        lambda: store.put_stream([b"data"], content_type="x/y", max_bytes=10),
        lambda: store.put_bytes(b"data", key="exports/x", content_type="x/y"),
        lambda: store.read_bytes("documents/ab/x"),
        lambda: store.exists("documents/ab/x"),
        lambda: list(store.list("documents/")),
        lambda: store.delete("documents/ab/x"),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(DocumentStoreUnavailable):
            call()
        assert time.monotonic() - started < 5


# ----------------------------------------------------------------------------- factory


def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    kwargs: dict[str, Any] = {
        "endpoint_url": None,
        "signing_secret": SECRET,
        "api_base_url": API_BASE,
    }
    rel = open_store("file://.data/documents", **kwargs)
    assert isinstance(rel, LocalDirectoryStore)
    assert rel.root == (tmp_path / ".data" / "documents").resolve()
    assert rel.root.is_dir()
    absolute = open_store(f"file://{tmp_path / 'abs'}", **kwargs)
    assert isinstance(absolute, LocalDirectoryStore)
    assert absolute.root == (tmp_path / "abs").resolve()
    s3 = open_store("s3://my-bucket/deal/docs", **kwargs)
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix) == ("my-bucket", "deal/docs")
    assert isinstance(open_store("s3://my-bucket", **kwargs), S3Store)
    for bad in ["ftp://host/x", "/var/docs", "s3://", "s3:///prefix", "file://", "memory://"]:
        with pytest.raises(ValueError, match="document store URL"):
            open_store(bad, **kwargs)


def test_store_from_settings_opens_the_configured_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    local = store_from_settings(
        Settings(
            document_store=f"file://{tmp_path / 'docs'}",
            jwt_secret="the-staff-token-secret-of-this-deployment",
            file_link_secret=SECRET,
            api_base_url=API_BASE,
        )
    )
    assert isinstance(local, LocalDirectoryStore)
    assert local.root == (tmp_path / "docs").resolve()
    link = urlsplit(local.presign_get("documents/ab/x"))
    assert f"{link.scheme}://{link.netloc}" == API_BASE
    query = parse_qs(link.query)
    assert verify_local_signature(SECRET, "documents/ab/x", query["expires"][0], query["sig"][0])
    # Links last at most DEALFLOW_FILE_LINK_MAX_HOURS (24), on either store.
    assert local.max_link_seconds == 24 * 3600


def test_file_links_are_signed_with_their_own_secret_not_the_jwt_secret(tmp_path: Path) -> None:
    # A deployment verifying staff tokens by JWKS never sets the JWT secret:
    # links signed with it would be signed with the public development value.
    local = store_from_settings(
        Settings(document_store=f"file://{tmp_path / 'docs'}", api_base_url=API_BASE)
    )
    query = parse_qs(urlsplit(local.presign_get("documents/ab/x")).query)
    expires, sig = query["expires"][0], query["sig"][0]
    assert verify_local_signature(DEV_FILE_LINK_SECRET, "documents/ab/x", expires, sig)
    assert not verify_local_signature(DEV_JWT_SECRET, "documents/ab/x", expires, sig)
    remote = store_from_settings(
        Settings(document_store="s3://my-bucket/deal/docs", s3_endpoint_url="http://minio:9000")
    )
    assert isinstance(remote, S3Store)
    assert (remote.bucket, remote.prefix) == ("my-bucket", "deal/docs")
    assert remote.endpoint_url == "http://minio:9000"
    assert remote.max_link_seconds == 24 * 3600
