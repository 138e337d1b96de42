"""The S3 side of a deployment, against a real moto server over HTTP:
`python -m dealflow.storage.documents create-bucket` makes the document bucket
with Object Lock once and is a no-op after; `DEALFLOW_S3_SSE` picks the
server-side encryption headers every write sends."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from dealflow.config import Settings
from dealflow.storage.documents import S3Store, make_s3_client, store_from_settings
from tests.support.api_stack import moto_server
from tests.support.stack import ROOT

CREDS = {
    "region_name": "us-east-1",
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
}
SSE = "x-amz-server-side-encryption"
SSE_KEY = "x-amz-server-side-encryption-aws-kms-key-id"


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def s3(moto: str) -> Any:
    return make_s3_client(moto, **CREDS)


def create_bucket(moto: str, tmp_path: Path, store: str) -> subprocess.CompletedProcess[str]:
    """The compose one-shot's command, credentials from a shared-credentials file."""
    credentials = tmp_path / "s3_credentials"
    credentials.write_text("[default]\naws_access_key_id = testing\naws_secret_access_key = t\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEALFLOW_", "AWS_"))}
    env |= {
        "DEALFLOW_DOCUMENT_STORE": store,
        "DEALFLOW_S3_ENDPOINT_URL": moto,
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    return subprocess.run(
        [sys.executable, "-m", "dealflow.storage.documents", "create-bucket"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_create_bucket_makes_a_locked_bucket_once(moto: str, s3: Any, tmp_path: Path) -> None:
    bucket = f"docs-{uuid.uuid4().hex[:12]}"
    first = create_bucket(moto, tmp_path, f"s3://{bucket}/prod")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == (
        f"bucket {bucket} created with Object Lock enabled (S3 at {moto})"
    )
    lock = s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    assert lock["ObjectLockEnabled"] == "Enabled"
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"

    again = create_bucket(moto, tmp_path, f"s3://{bucket}/prod")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == (
        f"bucket {bucket} already exists with Object Lock enabled (S3 at {moto})"
    )


def test_a_bucket_without_object_lock_is_refused(moto: str, s3: Any, tmp_path: Path) -> None:
    bucket = f"docs-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    result = create_bucket(moto, tmp_path, f"s3://{bucket}")
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"create-bucket: bucket {bucket} exists without Object Lock, which S3 turns on only "
        "when a bucket is created"
    )


def test_a_local_store_has_no_bucket_to_create(moto: str, tmp_path: Path) -> None:
    result = create_bucket(moto, tmp_path, f"file://{tmp_path}/documents")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"create-bucket: DEALFLOW_DOCUMENT_STORE is 'file://{tmp_path}/documents': "
        "only an s3:// store has a bucket to create"
    )


def test_an_unreachable_s3_is_named(tmp_path: Path) -> None:
    result = create_bucket("http://127.0.0.1:9", tmp_path, "s3://docs/prod")
    assert result.returncode == 1
    assert result.stderr.startswith("create-bucket: bucket docs: the S3 endpoint cannot be used:")
    assert "(S3 at http://127.0.0.1:9)" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- SSE


def sent_headers(store: S3Store) -> list[tuple[str, dict[str, str]]]:
    """(operation, headers) of every request the store's client sends from now on."""
    seen: list[tuple[str, dict[str, str]]] = []

    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        headers = {k.lower(): str(v) for k, v in params.get("headers", {}).items()}
        seen.append((model.name, headers))

    store.client.meta.events.register("before-call.s3", record)
    return seen


def settings_store(moto: str, bucket: str, **env: str) -> S3Store:
    settings = Settings(
        document_store=f"s3://{bucket}/p",
        s3_endpoint_url=moto,
        **env,  # type: ignore[arg-type]
    )
    store = store_from_settings(settings)
    assert isinstance(store, S3Store)
    store.client = make_s3_client(moto, **CREDS)
    return store


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ({}, {SSE: "AES256"}),  # the default, as before
        ({"s3_sse": "AES256"}, {SSE: "AES256"}),
        ({"s3_sse": "off"}, {}),
        (
            {"s3_sse": "aws:kms", "s3_sse_kms_key_id": "alias/dealflow-documents"},
            {SSE: "aws:kms", SSE_KEY: "alias/dealflow-documents"},
        ),
    ],
)
def test_the_sse_setting_decides_the_headers_of_every_write(
    moto: str, s3: Any, setting: dict[str, str], expected: dict[str, str]
) -> None:
    bucket = f"docs-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    store = settings_store(moto, bucket, **setting)
    seen = sent_headers(store)
    store.put_bytes(b"a history", key="archive/h1.json", content_type="application/json")
    # A stream larger than a part goes as a multipart upload, then a server-side copy.
    store.part_size = 5 * 1024 * 1024
    store.put_stream(
        iter([b"x" * store.part_size, b"tail"]),
        content_type="application/pdf",
        max_bytes=10 * 1024 * 1024,
    )
    operations = [name for name, _ in seen]
    # S3 takes the encryption of parts and of the completed upload from its start.
    writes = {"PutObject", "CreateMultipartUpload", "CopyObject"}
    assert writes <= set(operations), operations
    for name, headers in seen:
        if name in writes:
            got = {k: v for k, v in headers.items() if k.startswith(SSE)}
            assert got == expected, (name, headers)


def test_aws_kms_needs_a_key_id() -> None:
    with pytest.raises(ValidationError) as e:
        Settings(s3_sse="aws:kms")
    assert "DEALFLOW_S3_SSE=aws:kms needs the KMS key id" in str(e.value)
    with pytest.raises(ValidationError) as e:
        Settings(s3_sse="AES256", s3_sse_kms_key_id="alias/k")
    assert "a KMS key id goes with DEALFLOW_S3_SSE=aws:kms, not AES256" in str(e.value)
    with pytest.raises(ValidationError):
        Settings(s3_sse="aws:kms:dsse")
