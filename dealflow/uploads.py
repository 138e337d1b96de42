"""Uploading a customer document: bytes to the store, then a `record-document`
update that records kind, party, sha256 and key. Shared by the CLI, the demo
and the HTTP API, so every path validates the same way."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor
from datetime import date
from itertools import chain
from typing import Any

from temporalio.client import Client

from dealflow import client as deals
from dealflow import document_check, rules
from dealflow.models import ActionReceipt, ActionResult, Actor, DealPolicy
from dealflow.storage.documents import (
    DocumentStore,
    DocumentTooLarge,
    EmptyDocument,
    StoredObject,
)

SNIFF_BYTES = 16


def _with_head(chunks: Iterable[bytes]) -> tuple[bytes, Iterator[bytes]]:
    it = iter(chunks)
    head = b""
    buffered: list[bytes] = []
    for chunk in it:
        buffered.append(chunk)
        head += chunk
        if len(head) >= SNIFF_BYTES:
            break
    return head, chain(buffered, it)


async def upload_document(
    client: Client,
    store: DocumentStore,
    deal_id: str,
    actor: Actor,
    *,
    kind: str,
    party: str,
    file_name: str,
    data: bytes | Iterable[bytes],
    policy: DealPolicy | None = None,
    id_number: str | None = None,
    period_start: date | None = None,
    period_end: date | None = None,
    stipulation_code: str | None = None,
    executor: Executor | None = None,
) -> ActionResult:
    """Store the bytes, record the document, answer with the deal's new status."""
    receipt = await store_and_record(
        client,
        store,
        deal_id,
        actor,
        kind=kind,
        party=party,
        file_name=file_name,
        data=data,
        policy=policy,
        id_number=id_number,
        period_start=period_start,
        period_end=period_end,
        stipulation_code=stipulation_code,
        executor=executor,
    )
    return await deals.with_status(client, deal_id, receipt)


async def store_and_record(
    client: Client,
    store: DocumentStore,
    deal_id: str,
    actor: Actor,
    *,
    kind: str,
    party: str,
    file_name: str,
    data: bytes | Iterable[bytes],
    policy: DealPolicy | None = None,
    id_number: str | None = None,
    period_start: date | None = None,
    period_end: date | None = None,
    stipulation_code: str | None = None,
    executor: Executor | None = None,
) -> ActionReceipt:
    """Store the bytes (in a thread of `executor`, the default one if None: the
    store may block on a slow stream) and record the document."""
    stored, content_type = await store_checked(
        store, file_name=file_name, data=data, policy=policy, executor=executor
    )
    return await record_stored(
        client,
        deal_id,
        actor,
        stored,
        content_type,
        kind=kind,
        party=party,
        file_name=file_name,
        id_number=id_number,
        period_start=period_start,
        period_end=period_end,
        stipulation_code=stipulation_code,
    )


async def store_checked(
    store: DocumentStore,
    *,
    file_name: str,
    data: bytes | Iterable[bytes],
    policy: DealPolicy | None = None,
    executor: Executor | None = None,
) -> tuple[StoredObject, str]:
    """Store the bytes (in a thread of `executor`, the default one if None) once
    their first bytes name an allowed type, and parse them as stored: a refused
    file is removed. The stored object and the type its bytes say."""
    policy = policy or DealPolicy()
    chunks: Iterable[bytes] = [data] if isinstance(data, bytes) else data
    head, stream = _with_head(chunks)
    stream = probe = document_check.ContentProbe(store, stream)
    content_type = rules.sniff_content_type(head)
    if content_type not in policy.allowed_content_types:
        raise rules.invalid(
            f"{file_name} is not a PDF, JPEG or PNG file (its bytes say {content_type})"
        )
    put = functools.partial(
        store.put_stream, stream, content_type=content_type, max_bytes=policy.max_document_bytes
    )
    try:
        stored = await asyncio.get_running_loop().run_in_executor(
            executor, contextvars.copy_context().run, put
        )
    except DocumentTooLarge as e:
        raise rules.invalid(f"{file_name}: {e}") from None
    except EmptyDocument:
        raise rules.invalid(f"{file_name} is empty") from None
    # The bytes as stored, parsed: a refused file is recorded nowhere and removed.
    await asyncio.to_thread(
        document_check.store_checked_cleanup,
        store,
        stored,
        content_type,
        document_check.DocumentLimits.from_policy(policy),
        file_name=file_name,
        existed=probe.existed,
    )
    return stored, content_type


async def record_stored(
    client: Client,
    deal_id: str,
    actor: Actor,
    stored: StoredObject,
    content_type: str,
    *,
    kind: str,
    party: str,
    file_name: str,
    id_number: str | None = None,
    period_start: date | None = None,
    period_end: date | None = None,
    stipulation_code: str | None = None,
) -> ActionReceipt:
    """Record stored bytes on the deal (the workflow's validator has the last word)."""
    payload: dict[str, Any] = {
        "kind": kind,
        "party": party,
        "file_name": file_name,
        "content_type": content_type,
        "size": stored.size,
        "sha256": stored.sha256,
        "storage_key": stored.key,
        "id_number": id_number,
        "stipulation_code": stipulation_code,
        "period_start": period_start.isoformat() if period_start else None,
        "period_end": period_end.isoformat() if period_end else None,
    }
    action, inp = deals.parse_action("record-document", payload, actor)
    return await deals.act_receipt(client, deal_id, action, inp)
