"""Uploads bounded in threads, time and number per person.

The document store consumes an upload in a blocking thread that pulls the body
from the event loop chunk by chunk, so a thread is held for as long as the
client takes to send. Uploads therefore get a pool of their own
(`DEALFLOW_UPLOAD_WORKERS`): however slowly clients send, the default executor
stays free for what must answer promptly — the webhook inbox's commits, deal
lists, idempotency keys, downloads, the identity provider's keys. Every read
of an upload's body waits at most `DEALFLOW_UPLOAD_IDLE_SECONDS` for the next
chunk, and the whole body must arrive within `DEALFLOW_UPLOAD_DEADLINE_SECONDS`
(408 otherwise), so a pool thread is given back in bounded time. One person
(the token's `sub`) has at most `DEALFLOW_UPLOADS_PER_SUBJECT` uploads running
at once (429 with Retry-After), so nobody can hold the whole pool.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from dealflow.api.errors import Problem
from dealflow.config import Settings

# A running upload ends within the idle timeout at the latest once its client
# stops sending; a retry a few seconds later usually finds a free slot.
RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True)
class UploadTiming:
    """When an upload's next chunk and its whole body must have arrived (loop time)."""

    idle_seconds: float
    deadline_seconds: float
    deadline: float

    def next_wait(self) -> float:
        """How long the next read may wait; 408 once the deadline has passed."""
        left = self.deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise self.expired()
        return min(self.idle_seconds, left)

    def expired(self) -> Problem:
        """The 408 of an upload that ran out of time (the deadline, or idle)."""
        if asyncio.get_running_loop().time() >= self.deadline:
            detail = (
                f"the upload took longer than {self.deadline_seconds:g} s, the most one "
                "may take; nothing was stored. Send the file again over a faster connection"
            )
        else:
            detail = (
                f"the upload stalled: no data arrived for {self.idle_seconds:g} s; nothing "
                "was stored. Send the file again"
            )
        return Problem(408, detail)


class UploadGate:
    """The uploads' thread pool, their timing and the per-person cap (one per API process)."""

    def __init__(self, settings: Settings) -> None:
        self.workers = settings.upload_workers
        self.per_subject = settings.uploads_per_subject
        self.idle_seconds = settings.upload_idle_seconds
        self.deadline_seconds = settings.upload_deadline_seconds
        self._executor: ThreadPoolExecutor | None = None
        # Touched on the event loop only.
        self._running: Counter[str] = Counter()

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The pool the store consumes uploads in (made on first use, again after close)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.workers, thread_name_prefix="dealflow-upload"
            )
        return self._executor

    def timing(self) -> UploadTiming:
        """The timing of an upload that starts now."""
        now = asyncio.get_running_loop().time()
        return UploadTiming(self.idle_seconds, self.deadline_seconds, now + self.deadline_seconds)

    def running(self, subject: str) -> int:
        return self._running[subject]

    def check_room(self, subject: str) -> None:
        """429 when all of `subject`'s upload slots are taken."""
        if self._running[subject] >= self.per_subject:
            raise Problem(
                429,
                f"you have {self._running[subject]} uploads in progress, the most one person "
                "may have at once; send this file when one of them has finished",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )

    @contextmanager
    def slot(self, subject: str) -> Iterator[None]:
        """Hold one of `subject`'s upload slots (429 when all are taken)."""
        self.check_room(subject)
        self._running[subject] += 1
        try:
            yield
        finally:
            self._running[subject] -= 1
            if self._running[subject] <= 0:
                del self._running[subject]

    def close(self) -> None:
        """Stop the pool (the API is stopping); uploads still queued are cancelled."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
