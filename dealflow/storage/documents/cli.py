"""`python -m dealflow.storage.documents create-bucket`: make the bucket of
`DEALFLOW_DOCUMENT_STORE` ready (compose runs it once, before the API and the
worker start)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dealflow.startup import EXIT_CANNOT_START, StartupError, settings_from_env
from dealflow.storage.documents.bucket import BucketSetupError, ensure_locked_bucket
from dealflow.storage.documents.s3 import make_s3_client

PROG = "python -m dealflow.storage.documents"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "create-bucket",
        help="create the S3 bucket of DEALFLOW_DOCUMENT_STORE with Object Lock (idempotent)",
    )
    parser.parse_args(argv)
    try:
        settings = settings_from_env()
    except StartupError as e:
        return _fail(str(e), EXIT_CANNOT_START)
    store = settings.document_store
    if not store.startswith("s3://"):
        return _fail(
            f"DEALFLOW_DOCUMENT_STORE is {store!r}: only an s3:// store has a bucket to create", 2
        )
    bucket = store[len("s3://") :].partition("/")[0]
    if not bucket:
        return _fail(f"DEALFLOW_DOCUMENT_STORE {store!r} names no bucket (s3://bucket/prefix)", 2)
    where = settings.s3_endpoint_url or "AWS"
    try:
        done = ensure_locked_bucket(make_s3_client(settings.s3_endpoint_url), bucket)
    except BucketSetupError as e:
        return _fail(f"{e} (S3 at {where})", 1)
    print(f"{done} (S3 at {where})", flush=True)
    return 0


def _fail(message: str, code: int) -> int:
    for line in message.splitlines():
        print(f"create-bucket: {line}", file=sys.stderr, flush=True)
    return code
