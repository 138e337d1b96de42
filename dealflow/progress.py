"""Progress bars for long runs (`make bench`, `make chaos`, `dealflow-audit archive`):
done / total, rate, time left.

    with progress_board() as board:
        bar = board.add("[2] webhook arm", total=2000, unit="requests")
        ...
        bar.advance()

Bars are drawn on stderr, and only when stderr is a terminal: output that
tests or people parse (the tables, the log lines, latest.json) is the same
with or without them, and a run logged to a file gets no bar noise. When
stdout is the same terminal, what the program prints while a bar is shown
appears above the bar instead of tearing it.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import IO, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

T = TypeVar("T")


class RateColumn(ProgressColumn):
    """Items per second over rich's recent window, in the task's own unit."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "")
        if task.speed is None:
            return Text(f"- {unit}/s", style="progress.data.speed")
        return Text(f"{task.speed:.1f} {unit}/s", style="progress.data.speed")


class Bar:
    """One counted job on a board; counts even when nothing is drawn."""

    def __init__(self, progress: Progress | None, task: TaskID | None, total: int | None) -> None:
        self._progress = progress
        self._task = task
        self.total = total
        self.completed = 0

    def advance(self, n: int = 1) -> None:
        self.completed += n
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def update_to(self, completed: int) -> None:
        """Set the count outright (for work counted by polling, e.g. rows in a table)."""
        self.advance(completed - self.completed)

    def counted(self, work: Callable[[int], Awaitable[T]]) -> Callable[[int], Awaitable[T]]:
        """`work` that advances the bar when each call finishes (for `bounded`)."""

        async def counted_work(i: int) -> T:
            result = await work(i)
            self.advance()
            return result

        return counted_work


class Board:
    """Bars shown together; `add` one per job."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress

    @property
    def live(self) -> bool:
        return self._progress is not None

    def through(self, stream: IO[str]) -> IO[str]:
        """The way to write to `stream` while the bars are drawn: the process's own
        stdout, held from before, would tear the bars on a shared terminal, so its
        writes go through the proxy that prints them above."""
        if self._progress is not None and stream is sys.__stdout__:
            return sys.stdout
        return stream

    def add(self, description: str, total: int | None, unit: str = "deals") -> Bar:
        if self._progress is None:
            return Bar(None, None, total)
        task = self._progress.add_task(description, total=total, unit=unit)
        return Bar(self._progress, task, total)


def terminal_console() -> Console | None:
    """A console on stderr if stderr is a terminal; None if bars should not be drawn."""
    console = Console(stderr=True)
    return console if console.is_terminal else None


@contextmanager
def progress_board(console: Console | None = None) -> Iterator[Board]:
    """A board drawn on `console` (default: stderr when it is a terminal, else nothing)."""
    console = console if console is not None else terminal_console()
    if console is None:
        yield Board(None)
        return
    same_terminal = console.is_terminal and sys.stdout.isatty()
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
        redirect_stdout=same_terminal,
        redirect_stderr=False,
        transient=False,
    )
    with progress:
        yield Board(progress)


@contextmanager
def progress_bar(
    description: str, total: int | None, unit: str = "deals", console: Console | None = None
) -> Iterator[Bar]:
    """A board with a single bar."""
    with progress_board(console) as board:
        yield board.add(description, total, unit)
