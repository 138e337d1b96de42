"""The archive on S3: histories under Object Lock, the manifest extended by a
conditional write, two archivers racing.

S3 is a moto server over HTTP; the deals are real DealWorkflows on the dev
server, cancelled at once (the shortest way to a closed deal). moto checks a
write's condition without holding a lock across the check and the write, so
the race is ordered at the conditional manifest write by a hook in the store
(`_RacingStore`): both archivers have read the same manifest before either
writes. Real S3 serialises concurrent conditional writes itself.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from pydantic import ValidationError
from temporalio.client import Client

from dealflow.audit.archive import HISTORY_PREFIX, MANIFEST_KEY, _closed_deals
from dealflow.audit.cli import EXIT_ERROR, EXIT_OK, EXIT_RACE_LOST, run_async
from dealflow.config import Settings
from dealflow.storage.documents import (
    LocalDirectoryStore,
    ObjectLockUnavailable,
    PreconditionFailed,
    S3Store,
    make_s3_client,
)
from tests.support.api_stack import moto_server
from tests.support.back_office import Desk
from tests.support.stack import Stack, deal_worker

CREDS = {
    "region_name": "us-east-1",
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
}
PREFIX = "dealflow"


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


async def run(*argv: str, client: Client, store: Any, settings: Settings | None = None) -> Done:
    out, err = io.StringIO(), io.StringIO()
    code = await run_async(
        list(argv), settings=settings or Settings(), client=client, store=store, out=out, err=err
    )
    return Done(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


def _bucket(moto_url: str, *, locked: bool) -> tuple[Any, str]:
    client = make_s3_client(moto_url, **CREDS)
    name = f"archive-{uuid.uuid4().hex[:12]}"
    if locked:
        client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    else:
        client.create_bucket(Bucket=name)
    return client, name


def _store(moto_url: str, bucket: str) -> S3Store:
    """A store with its own client: each archiver is another host."""
    return S3Store(bucket, PREFIX, endpoint_url=moto_url, client=make_s3_client(moto_url, **CREDS))


class ClosedDeals:
    """Deals cancelled at once on the dev server, and visible as closed."""

    def __init__(self, stack: Stack, task_queue: str) -> None:
        self.stack = stack
        self.task_queue = task_queue
        self.ids: list[str] = []

    @property
    def client(self) -> Client:
        return self.stack.env.client

    async def close_one(self) -> str:
        desk = Desk(self.stack, self.task_queue)
        await desk.start()
        await desk.do("cancel", reason="duplicate entry")
        await asyncio.wait_for(desk.result(), timeout=30)
        self.ids.append(desk.deal_id)
        # Closed deals reach visibility a moment after they close.
        for _ in range(100):
            if f"deal-{desk.deal_id}" in {wid for _, wid in await _closed_deals(self.client)}:
                return desk.deal_id
            await asyncio.sleep(0.1)
        raise AssertionError(f"deal {desk.deal_id} never became visible as closed")


@pytest.fixture(scope="module")
async def closed(dev_stack: Stack, database_url: str, store: Any) -> AsyncIterator[ClosedDeals]:
    async with deal_worker(dev_stack.env.client, database_url, dev_stack.lenders, store) as tq:
        deals = ClosedDeals(dev_stack, tq)
        await deals.close_one()
        await deals.close_one()
        yield deals


def _manifest(s3: Any, bucket: str) -> list[dict[str, Any]]:
    body = s3.get_object(Bucket=bucket, Key=f"{PREFIX}/{MANIFEST_KEY}")["Body"].read()
    return [json.loads(line) for line in body.splitlines()]


# --------------------------------------------------------------------------- locked histories


async def test_histories_are_locked_for_the_configured_retention(
    closed: ClosedDeals, moto_url: str, tmp_path: Path
) -> None:
    s3, bucket = _bucket(moto_url, locked=True)
    store = _store(moto_url, bucket)
    settings = Settings(archive_retention_days=3)
    before = datetime.now(UTC).replace(microsecond=0)
    done = await run(
        "archive",
        "--lock-file",
        str(tmp_path / "l"),
        client=closed.client,
        store=store,
        settings=settings,
    )
    after = datetime.now(UTC)
    assert done.returncode == EXIT_OK, done.stderr
    entries = _manifest(s3, bucket)
    assert set(closed.ids) <= {e["deal_id"] for e in entries}
    for entry in entries:
        head = s3.head_object(Bucket=bucket, Key=f"{PREFIX}/{entry['history_key']}")
        assert head["ObjectLockMode"] == "COMPLIANCE"
        until = head["ObjectLockRetainUntilDate"].astimezone(UTC)
        assert before + timedelta(days=3) <= until <= after + timedelta(days=3), until
    # The manifest itself is not locked: it is replaced at every run.
    manifest_head = s3.head_object(Bucket=bucket, Key=f"{PREFIX}/{MANIFEST_KEY}")
    assert "ObjectLockMode" not in manifest_head

    # A locked history version cannot be deleted, not even by the bucket's owner.
    key = f"{PREFIX}/{entries[0]['history_key']}"
    version = s3.head_object(Bucket=bucket, Key=key)["VersionId"]
    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert s3.head_object(Bucket=bucket, Key=key, VersionId=version)["VersionId"] == version
    ok = await run("verify", client=closed.client, store=store)
    assert ok.returncode == EXIT_OK, ok.stdout
    assert f"ok: {len(entries)} entries" in ok.stdout
    first_lock = min(
        s3.head_object(Bucket=bucket, Key=f"{PREFIX}/{e['history_key']}")[
            "ObjectLockRetainUntilDate"
        ].astimezone(UTC)
        for e in entries
    )
    assert (
        f"locks: {len(entries)} of {len(entries)} histories locked in COMPLIANCE mode, the first "
        f"lock ending {first_lock.isoformat()}"
    ) in ok.stdout
    assert "NOTE" not in ok.stdout
    # A delete without a version only hides the history behind a delete marker:
    # verify misses it, and removing the marker brings the locked version back.
    marker = s3.delete_object(Bucket=bucket, Key=key)
    assert marker["DeleteMarker"]
    hidden = await run("verify", client=closed.client, store=store)
    assert hidden.returncode == 1
    assert f"history {entries[0]['history_key']} is missing" in hidden.stdout
    s3.delete_object(Bucket=bucket, Key=key, VersionId=marker["VersionId"])
    restored = await run("verify", client=closed.client, store=store)
    assert restored.returncode == EXIT_OK, restored.stdout
    # The same bytes written again without a lock: intact, but verify notes the lock is gone.
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    unlocked = await run("verify", client=closed.client, store=store)
    assert unlocked.returncode == EXIT_OK, unlocked.stdout
    assert (
        f"NOTE 1 history not under a retention lock (archived before locking?): "
        f"{entries[0]['history_key']}"
    ) in unlocked.stdout
    assert f"locks: {len(entries) - 1} of {len(entries)} histories locked" in unlocked.stdout


async def test_an_unlocked_bucket_is_refused(
    closed: ClosedDeals, moto_url: str, tmp_path: Path
) -> None:
    s3, bucket = _bucket(moto_url, locked=False)
    done = await run(
        "archive",
        "--lock-file",
        str(tmp_path / "l"),
        client=closed.client,
        store=_store(moto_url, bucket),
    )
    assert done.returncode == EXIT_ERROR
    assert f"S3 bucket {bucket} does not have Object Lock enabled" in done.stderr
    assert "Nothing was written" in done.stderr
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_retention_days_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().archive_retention_days == 1826  # 5 years
    for bad in (0, -1, 36501):
        with pytest.raises(ValidationError, match="archive_retention_days"):
            Settings(archive_retention_days=bad)
    monkeypatch.setenv("DEALFLOW_ARCHIVE_RETENTION_DAYS", "0")
    err = io.StringIO()
    code = asyncio.run(run_async(["verify"], err=err))
    assert code == EXIT_ERROR
    assert "DEALFLOW_ARCHIVE_RETENTION_DAYS" in err.getvalue()


# --------------------------------------------------------------------------- two archivers


@dataclass
class _Race:
    both_ready: threading.Barrier = field(default_factory=lambda: threading.Barrier(2, timeout=30))
    won: threading.Event = field(default_factory=threading.Event)
    # moto checks a write's condition and then writes, without a lock between; S3
    # does both atomically. The two archivers' conditional writes go one at a time.
    one_write: threading.Lock = field(default_factory=threading.Lock)


class _RacingStore:
    """A store whose manifest write waits until the other archiver has read the
    manifest too (both reach the write); the loser then waits for the winner's write."""

    def __init__(self, store: S3Store | LocalDirectoryStore, race: _Race, *, wins: bool) -> None:
        self._store = store
        self._race = race
        self._wins = wins

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def __repr__(self) -> str:
        return repr(self._store)

    def put_bytes_conditional(self, data: bytes, *, key: str, **kwargs: Any) -> str:
        if key == MANIFEST_KEY:
            self._race.both_ready.wait()
            if not self._wins:
                assert self._race.won.wait(timeout=30), "the winner never wrote"
        try:
            with self._race.one_write:
                return self._store.put_bytes_conditional(data, key=key, **kwargs)
        finally:
            if key == MANIFEST_KEY and self._wins:
                self._race.won.set()


async def _race(
    closed: ClosedDeals, moto_url: str, bucket: str, tmp_path: Path
) -> tuple[Done, Done]:
    return await _race_between(closed, _store(moto_url, bucket), _store(moto_url, bucket), tmp_path)


async def _race_between(
    closed: ClosedDeals,
    one: S3Store | LocalDirectoryStore,
    other: S3Store | LocalDirectoryStore,
    tmp_path: Path,
) -> tuple[Done, Done]:
    race = _Race()
    winner = _RacingStore(one, race, wins=True)
    loser = _RacingStore(other, race, wins=False)
    # Two hosts: two lock files (one host's lock file would stop the second run early).
    return await asyncio.gather(
        run("archive", "--lock-file", str(tmp_path / "a"), client=closed.client, store=winner),
        run("archive", "--lock-file", str(tmp_path / "b"), client=closed.client, store=loser),
    )


async def test_two_archivers_racing_cannot_fork_the_chain(
    closed: ClosedDeals, moto_url: str, tmp_path: Path
) -> None:
    s3, bucket = _bucket(moto_url, locked=True)
    # First race: no manifest yet, both write with If-None-Match: *.
    first, lost = await _race(closed, moto_url, bucket, tmp_path)
    assert first.returncode == EXIT_OK, first.stderr
    assert lost.returncode == EXIT_RACE_LOST, lost.stderr
    assert "lost the race" in lost.stderr and "added nothing more" in lost.stderr
    assert "from 0 to" in lost.stderr
    entries = _manifest(s3, bucket)
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert len({e["deal_id"] for e in entries}) == len(entries)  # each deal once
    assert set(closed.ids) <= {e["deal_id"] for e in entries}
    assert entries[-1]["sha256"] in first.stdout and entries[-1]["sha256"] in lost.stderr
    assert f"its {len(entries)} new entries were not written" in lost.stderr

    # Second race, from an existing manifest (If-Match on its ETag), over one new deal.
    new_deal = await closed.close_one()
    second, lost_again = await _race(closed, moto_url, bucket, tmp_path)
    assert second.returncode == EXIT_OK, second.stderr
    assert lost_again.returncode == EXIT_RACE_LOST, lost_again.stderr
    assert f"from {len(entries)} to {len(entries) + 1} entries" in lost_again.stderr
    assert "its 1 new entry was not written" in lost_again.stderr
    now = _manifest(s3, bucket)
    assert now[: len(entries)] == entries  # the winner extended the chain, nothing forked
    assert [e["deal_id"] for e in now[len(entries) :]] == [new_deal]

    verified = await run("verify", client=closed.client, store=_store(moto_url, bucket))
    assert verified.returncode == EXIT_OK, verified.stdout
    assert f"ok: {len(now)} entries" in verified.stdout and now[-1]["sha256"] in verified.stdout
    # One locked version of each history: the archiver that came second kept the first's.
    versions = s3.list_object_versions(Bucket=bucket, Prefix=f"{PREFIX}/{HISTORY_PREFIX}")
    assert sorted(v["Key"] for v in versions["Versions"]) == sorted(
        f"{PREFIX}/{e['history_key']}" for e in now
    )
    # The loser, run again, has nothing to add.
    again = await run(
        "archive",
        "--lock-file",
        str(tmp_path / "b"),
        client=closed.client,
        store=_store(moto_url, bucket),
    )
    assert again.returncode == EXIT_OK and "archived 0 deal(s)" in again.stdout


# --------------------------------------------------------------------------- the local store


def test_local_conditional_writes_are_atomic(tmp_path: Path) -> None:
    store = LocalDirectoryStore(tmp_path, signing_secret="s", api_base_url="http://127.0.0.1:1")
    key = "archive/manifest.jsonl"
    tag = store.put_bytes_conditional(b"1\n", key=key, content_type="text/plain", if_match=None)
    with pytest.raises(PreconditionFailed, match="already exists"):
        store.put_bytes_conditional(b"x\n", key=key, content_type="text/plain", if_match=None)
    with pytest.raises(PreconditionFailed, match="no longer the version"):
        store.put_bytes_conditional(b"x\n", key=key, content_type="text/plain", if_match="0" * 64)
    assert store.read_tagged(key) == (b"1\n", tag)
    with pytest.raises(ObjectLockUnavailable, match="local directory"):
        store.put_bytes_conditional(
            b"h",
            key="archive/deals/d.json",
            content_type="application/json",
            if_match=None,
            retain_until=datetime.now(UTC) + timedelta(days=1),
        )
    assert not store.exists("archive/deals/d.json")

    # Eight writers extend the same version at once: exactly one wins.
    start = threading.Barrier(8)
    wins: list[bytes] = []

    def extend(n: int) -> None:
        data = b"1\n" + f"{n}\n".encode()
        start.wait()
        try:
            store.put_bytes_conditional(data, key=key, content_type="text/plain", if_match=tag)
        except PreconditionFailed:
            return
        wins.append(data)

    threads = [threading.Thread(target=extend, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1
    assert store.read_bytes(key) == wins[0]
    head = store.head(key)
    assert head is not None and head.sha256 == store.read_tagged(key)[1]
    assert list(store.list()) == [key]  # no temp or lock file shows


async def test_two_archivers_racing_on_a_local_directory(
    closed: ClosedDeals, tmp_path: Path
) -> None:
    def local() -> LocalDirectoryStore:
        return LocalDirectoryStore(
            tmp_path / "documents", signing_secret="s", api_base_url="http://127.0.0.1:1"
        )

    won, lost = await _race_between(closed, local(), local(), tmp_path)
    assert won.returncode == EXIT_OK, won.stderr
    assert lost.returncode == EXIT_RACE_LOST and "added nothing more" in lost.stderr
    store = local()
    entries = [json.loads(line) for line in store.read_bytes(MANIFEST_KEY).splitlines()]
    assert set(closed.ids) <= {e["deal_id"] for e in entries}
    assert sorted(store.list(HISTORY_PREFIX)) == sorted(e["history_key"] for e in entries)
    verified = await run("verify", client=closed.client, store=store)
    assert verified.returncode == EXIT_OK, verified.stdout
