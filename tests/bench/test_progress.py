"""bench/progress.py: bars on a terminal, nothing on a pipe, counts either way."""

from __future__ import annotations

import asyncio
import io

import pytest
from rich.console import Console

from bench.bench_driver import bounded
from dealflow.progress import progress_bar, progress_board


def test_a_terminal_gets_done_total_rate_and_time_left() -> None:
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=120)

    async def work(i: int) -> int:
        await asyncio.sleep(0.01)
        return i * 2

    async def go() -> list[int]:
        with progress_board(terminal) as board:
            assert board.live
            bar = board.add("[2] deals to UNDERWRITING", 8)
            return await bounded(8, 3, bar.counted(work))

    assert asyncio.run(go()) == [0, 2, 4, 6, 8, 10, 12, 14]
    shown = screen.getvalue()
    assert "[2] deals to UNDERWRITING" in shown
    assert "8/8" in shown
    assert "deals/s" in shown
    assert "left" in shown


def test_no_terminal_draws_nothing_but_still_counts(capsys: pytest.CaptureFixture[str]) -> None:
    # Under pytest stderr is captured, not a terminal: the default board is silent.
    with progress_bar("[3] deals in the read model", 100, unit="deals") as bar:
        bar.update_to(40)
        bar.advance(2)

    assert bar.completed == 42
    assert bar.total == 100
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
