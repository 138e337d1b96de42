"""Long-poll status reads bounded in number, per person and in all.

A waiting request holds no thread (it awaits the shared read-model watch of
`dealflow.deal_wait`), but it holds a connection and a place in that watch,
so one person (the token's `sub`) may have at most
`DEALFLOW_STATUS_WAITS_PER_SUBJECT` waits open at once and the process at
most `DEALFLOW_STATUS_WAITS_TOTAL`; past either, 429 with Retry-After.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from dealflow.api.errors import Problem
from dealflow.config import Settings
from dealflow.deal_wait import ReadModelWatch

# A wait ends within DEALFLOW_STATUS_WAIT_MAX_SECONDS; one usually ends sooner.
RETRY_AFTER_SECONDS = 5


class StatusWaits:
    """The API process's read-model watch and its waiters' slots."""

    def __init__(self, settings: Settings, watch: ReadModelWatch) -> None:
        self.watch = watch
        self.max_seconds = settings.status_wait_max_seconds
        self.per_subject = settings.status_waits_per_subject
        self.total = settings.status_waits_total
        # Touched on the event loop only.
        self._open: Counter[str] = Counter()

    def open_waits(self, subject: str) -> int:
        return self._open[subject]

    def _check_room(self, subject: str) -> None:
        if self._open[subject] >= self.per_subject:
            detail = (
                f"you have {self._open[subject]} status waits open, the most one person may "
                "have at once; wait on one of them, or read the status without waiting"
            )
        elif self._open.total() >= self.total:
            detail = "too many status waits are open on this server; try again shortly"
        else:
            return
        raise Problem(429, detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    @contextmanager
    def slot(self, subject: str) -> Iterator[None]:
        """Hold one of `subject`'s wait slots (429 when none is free)."""
        self._check_room(subject)
        self._open[subject] += 1
        try:
            yield
        finally:
            self._open[subject] -= 1
            if self._open[subject] <= 0:
                del self._open[subject]

    def close(self) -> None:
        """The server is stopping: every open wait answers now, unchanged."""
        self.watch.close()
