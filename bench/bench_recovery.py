"""5. Recovery after a crash: a worker killed with `kill -9` while lender calls are in flight.

The lenders file points at a proxy in this process that holds every lender
request, so N deals each have their lender call (`sign_and_send_application`)
running when a worker is killed (SIGKILL to its process group); the proxy then
lets requests through. A deal has recorded progress when its history shows the
lender call completed *and* a workflow task completed after it (the deal acted
on the reply); a figure is the server time of the last such event minus the
time of the kill. Two layouts, the same number of deals in flight:

- `single`: one `worker.py`, killed and started again at once;
- `one_of_two`: two `worker.py` processes on the same task queue (the
  production layout); the one holding more of the lender calls is killed and
  the survivor takes over, nothing is restarted.

Afterwards every deal is driven to COMPLETED and its history after it
recovered checked for retries and timeouts: the settings that make recovery
fast must not cause spurious retries in a normal run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from temporalio.api.enums.v1 import EventType, TimeoutType, WorkflowTaskFailedCause

from bench.bench_driver import Driver, bounded
from bench.bench_stack import (
    BenchStack,
    Ctx,
    HoldProxy,
    Proc,
    free_port,
    row,
    say,
)
from dealflow import client as deals
from dealflow.devstack.health import worker_health

# Activities that call a lender: the ones held in flight here.
LENDER_CALLS = frozenset(
    {
        "sign_and_send_application",
        "send_application",
        "submit_application",
        "request_disbursement",
        "withdraw_application",
    }
)

# --------------------------------------------------------------------------- measurement


def _progress_time(events: list[Any], kill_ts: float) -> float | None:
    """Server time of the first workflow task completed after a lender call that
    completed after the kill; None if not there yet."""
    kinds: dict[int, str] = {}
    lender_done = False
    for e in events:
        t = e.event_type
        ts = e.event_time.ToDatetime().timestamp()
        if t == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            kinds[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
        elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED and ts >= kill_ts:
            sched = e.activity_task_completed_event_attributes.scheduled_event_id
            lender_done |= kinds.get(sched) in LENDER_CALLS
        elif t == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED and lender_done:
            return ts
    return None


def _phases(events: list[Any], kill_ts: float) -> dict[str, float]:
    """Seconds after the kill at which the recovery of one deal passed each step."""
    kinds: dict[int, str] = {}
    out: dict[str, float] = {}
    sticky_timeouts = 0
    for e in events:
        t = e.event_type
        ts = e.event_time.ToDatetime().timestamp() - kill_ts
        if t == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            kinds[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
        if ts < 0:
            continue
        if t == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            a = e.activity_task_started_event_attributes
            if kinds.get(a.scheduled_event_id) in LENDER_CALLS:
                out.setdefault("lender_call_retry_started", ts)
                # Above 2: the retry itself timed out (a worker too busy to heartbeat).
                out["lender_call_attempt"] = max(out.get("lender_call_attempt", 0), a.attempt)
        elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            sched = e.activity_task_completed_event_attributes.scheduled_event_id
            if kinds.get(sched) in LENDER_CALLS:
                out.setdefault("lender_call_completed", ts)
        elif t == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT and "lender_call_completed" in out:
            sticky_timeouts += 1
        elif t == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED and "lender_call_completed" in out:
            out.setdefault("workflow_task_started", ts)
        elif t == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED and "workflow_task_started" in out:
            out.setdefault("workflow_task_completed", ts)
    out["sticky_queue_timeouts"] = sticky_timeouts
    return out


async def hold_lender_calls(proxy: HoldProxy, driver: Driver, n: int) -> tuple[list[str], int]:
    """n deals each with its lender call held at the proxy; their ids and how many
    calls are held. The deals are brought to the step before the call first, then
    all sent at once: the worker gives up on a lender after 20 s (a read timeout,
    then a retry with backoff), so a call held while the others were still being
    prepared (minutes on a loaded machine) would fail and back off before the kill."""
    ids = await bounded(n, 10, lambda i: _to_application(driver))
    proxy.hold()
    await bounded(n, n, lambda i: driver.act(ids[i], "submit-application"))
    deadline = time.monotonic() + 15
    while proxy.held < n and time.monotonic() < deadline:  # noqa: ASYNC110 (polling a counter)
        await asyncio.sleep(0.05)
    held = proxy.held
    await asyncio.sleep(1.0)  # every deal idle, waiting only for its lender call
    return ids, held


async def _to_application(driver: Driver) -> str:
    deal_id = await driver.start()
    await driver.act(deal_id, "sign-sales-contract")
    await driver.upload_all(deal_id)
    return deal_id


async def measure_recovery(
    s: BenchStack,
    ids: list[str],
    kill: Callable[[], object],
    start_new: Callable[[], object] | None,
    limit: float,
) -> dict[str, Any]:
    """Kill a worker, release the lender calls, start `start_new` (if any) and wait
    until every deal has progressed."""
    assert s.client is not None and s.proxy is not None
    load = os.getloadavg()[0]
    kill_ts = time.time()
    kill()
    s.proxy.release()

    async def start() -> float:
        if start_new is not None:
            await asyncio.to_thread(start_new)
        return time.time()

    ready_task = asyncio.create_task(start())
    pending = {deals.workflow_id(d) for d in ids}
    done: dict[str, float] = {}
    stop = time.monotonic() + limit
    while pending and time.monotonic() < stop:
        # The figures are the server's event times, so sweeping more often would only
        # take CPU from the worker being measured (50 histories per sweep).
        await asyncio.sleep(1.0)
        for wid in list(pending):
            hist = await s.client.get_workflow_handle(wid).fetch_history()
            at = _progress_time(list(hist.events), kill_ts)
            if at is not None:
                done[wid] = at
                pending.discard(wid)
    t_ready = await ready_task
    times = sorted(at - kill_ts for at in done.values())
    return {
        "breakdown_s_after_kill": await _breakdown(s.client, list(done), kill_ts),
        "progress": done,
        "deals": len(ids),
        "loadavg_1m_at_kill": round(load, 2),
        "recovered": len(done),
        "unrecovered": len(pending),
        "seconds_to_all": times[-1] if times and not pending else None,
        "seconds_first": times[0] if times else None,
        "seconds_median": times[len(times) // 2] if times else None,
        "worker_ready_after_kill_s": (t_ready - kill_ts) if start_new is not None else 0.0,
        "ids": ids,
    }


async def _breakdown(client: Any, wids: list[str], kill_ts: float) -> dict[str, Any]:
    """Where the time went: median and max over the deals of each step after the kill,
    and why the lender calls' retries after the first failed."""
    steps: dict[str, list[float]] = {}
    failures: Counter[str] = Counter()
    for wid in wids:
        hist = await client.get_workflow_handle(wid).fetch_history()
        for k, v in _phases(list(hist.events), kill_ts).items():
            steps.setdefault(k, []).append(v)
        failures.update(_retry_failures(list(hist.events)))
    out: dict[str, Any] = {
        k: {"median": round(sorted(v)[len(v) // 2], 2), "max": round(max(v), 2)}
        for k, v in steps.items()
    }
    out["lender_call_retry_causes"] = dict(failures.most_common(5))
    return out


def _retry_failures(events: list[Any]) -> list[str]:
    """The failure before each lender call attempt after the second (the first retry
    is the kill's): a started event carries its attempt's previous failure."""
    kinds: dict[int, str] = {}
    out: list[str] = []
    for e in events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            kinds[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            a = e.activity_task_started_event_attributes
            if kinds.get(a.scheduled_event_id) in LENDER_CALLS and a.attempt > 2:
                out.append(a.last_failure.message[:80] or "?")
    return out


def timeline(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The recovery as phases in time order, seconds after the kill (the slowest deal
    for each step; "worker polling" is when its health check saw it, an upper bound)."""
    b = r["breakdown_s_after_kill"]
    points: list[tuple[str, float | None]] = [
        ("killed", 0.0),
        ("worker polling", r["worker_ready_after_kill_s"]),
        ("lender calls retried", b.get("lender_call_retry_started", {}).get("max")),
        ("lender calls completed", b.get("lender_call_completed", {}).get("max")),
        ("first deal progressed", r["seconds_first"]),
        ("last workflow task started", b.get("workflow_task_started", {}).get("max")),
        ("all progressed", r["seconds_to_all"]),
    ]
    timed = [(k, v) for k, v in points if v is not None]
    return [{"phase": k, "at_s": round(v, 3)} for k, v in sorted(timed, key=lambda p: p[1])]


async def problems_after(client: Any, progress: dict[str, float]) -> dict[str, Any]:
    """Retries, timeouts and failed workflow tasks recorded after each deal recovered,
    the workflow tasks' by kind (a sticky-queue timeout is TIMEOUT_TYPE_SCHEDULE_TO_START)."""
    out: dict[str, Any] = {"activity_retries": 0, "activity_timeouts": 0}
    kinds: Counter[str] = Counter()
    for wid, since in progress.items():
        hist = await client.get_workflow_handle(wid).fetch_history()
        for e in hist.events:
            if e.event_time.ToDatetime().timestamp() <= since:
                continue
            t = e.event_type
            if t == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED and (
                e.activity_task_started_event_attributes.attempt > 1
            ):
                out["activity_retries"] += 1
            elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
                out["activity_timeouts"] += 1
            elif t == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
                timeout = e.workflow_task_timed_out_event_attributes.timeout_type
                kinds[f"timed out: {TimeoutType.Name(timeout)}"] += 1
            elif t == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                cause = e.workflow_task_failed_event_attributes.cause
                kinds[f"failed: {WorkflowTaskFailedCause.Name(cause)}"] += 1
    out["workflow_task_failures"] = sum(kinds.values())
    out["workflow_task_failures_by_kind"] = dict(kinds)
    return out


# --------------------------------------------------------------------------- the two layouts


async def single_worker(s: BenchStack, n: int, limit: float) -> dict[str, Any]:
    """The stack's one worker killed and started again."""
    assert s.client is not None and s.proxy is not None
    driver = s.driver()
    ids, held = await hold_lender_calls(s.proxy, driver, n)
    r = await measure_recovery(s, ids, s.kill_worker, lambda: s.start_worker(wait=True), limit)
    return {**r, "held_at_kill": held, "lender_calls_on_killed_worker": held}


def start_second_worker(s: BenchStack) -> Proc:
    """Another worker.py on the stack's task queue with a metrics port and a data dir
    (its ready file) of its own, as README "Scaling" asks of two workers on one host;
    its health is read on its own port: the first worker's would vouch for it."""
    port = free_port()
    comp = s.component("worker")
    env = {
        "DEALFLOW_WORKER_METRICS_PORT": str(port),
        "DEALFLOW_DATA_DIR": str(s.data_dir / "worker_b"),
    }
    p = s.start_extra("worker_b", comp.argv, env=env, wait=False)
    cfg = dataclasses.replace(s.cfg, worker_metrics_port=port)
    s.wait_ready(dataclasses.replace(comp, health=lambda pid: worker_health(cfg, pid)), p.popen)
    return p


async def lender_calls_by_worker(client: Any, ids: list[str]) -> Counter[str]:
    """How many of the deals' pending lender calls each worker (by pid) is running."""
    out: Counter[str] = Counter()
    for d in ids:
        desc = await client.get_workflow_handle(deals.workflow_id(d)).describe()
        for pa in desc.raw_description.pending_activities:
            if pa.activity_type.name in LENDER_CALLS:
                out[pa.last_worker_identity.split("@", 1)[0]] += 1
    return out


async def one_of_two(s: BenchStack, second: Proc, n: int, limit: float) -> dict[str, Any]:
    """Two workers on one task queue; the one running more lender calls is killed."""
    assert s.client is not None and s.proxy is not None
    driver = s.driver()
    ids, held = await hold_lender_calls(s.proxy, driver, n)
    by_pid = await lender_calls_by_worker(s.client, ids)
    first = str(s.pid("worker"))
    if by_pid[first] >= by_pid[str(second.pid)]:
        victim, kill = first, s.kill_worker
    else:
        victim, kill = str(second.pid), functools.partial(s.stop_extra, second, kill=True)
    r = await measure_recovery(s, ids, kill, None, limit)
    return {**r, "held_at_kill": held, "lender_calls_on_killed_worker": by_pid[victim]}


async def run(ctx: Ctx) -> dict[str, Any]:
    n = ctx.n(50, 2)
    limit = ctx.n(120, 60)
    results: dict[str, Any] = {}
    async with ctx.stack("b5-recovery", proxy=True) as s:
        assert s.client is not None
        say(f"[5] single: {n} deals with lender calls in flight; kill -9 worker.py, start it")
        results["single"] = await single_worker(s, n, limit)
        say(f"[5] single: {fmt(results['single'])}")
        second = start_second_worker(s)
        try:
            say(f"[5] one of two: {n} deals on two workers; kill -9 the busier one")
            results["one_of_two"] = await one_of_two(s, second, n, limit)
            say(f"[5] one of two: {fmt(results['one_of_two'])}")
        finally:
            if s.pid("worker") is None:
                s.start_worker(wait=True)
        say("[5] driving every deal to COMPLETED to look for spurious retries")
        driver = s.driver()
        ids = results["single"]["ids"] + results["one_of_two"]["ids"]
        finished = await bounded(len(ids), 10, lambda i: _finish(driver, ids[i]))
        results["one_of_two"]["deals_not_completed"] = finished.count(False)
        for r in results.values():
            r["normal_run"] = await problems_after(s.client, r["progress"])
        s.stop_extra(second)
    for r in results.values():
        r.pop("ids", None)
        r.pop("progress", None)
    series = {"recovery": {k: timeline(r) for k, r in results.items()}}
    return {"rows": rows(ctx, n, results), "detail": {"deals": n, **results}, "series": series}


async def _finish(driver: Driver, deal_id: str) -> bool:
    """Drive a deal to COMPLETED; False if that failed (a query timed out on a loaded
    machine): its history since recovery is checked all the same."""
    try:
        await driver.finish(deal_id)
    except Exception as e:  # noqa: BLE001 (counted and said, the figures stand)
        say(f"[5] deal {deal_id} not driven to COMPLETED: {type(e).__name__}: {e}")
        return False
    return True


def rows(ctx: Ctx, n: int, results: dict[str, Any]) -> list[dict[str, Any]]:
    single, pair = results["single"], results["one_of_two"]
    spurious = {
        k: sum(r["normal_run"][c] for c in ("activity_retries", "activity_timeouts"))
        + r["normal_run"]["workflow_task_failures"]
        for k, r in results.items()
    }
    return [
        row(
            "recovery, one worker killed and restarted",
            single["seconds_to_all"],
            "s",
            target="≤ 5 s",
            ok=ctx.judge(_within(single, 5)),
            note=note(single, n),
            key="recovery_single_worker_s",
        ),
        row(
            "recovery, one of two workers killed",
            pair["seconds_to_all"],
            "s",
            target="≤ 3 s",
            ok=ctx.judge(_within(pair, 3)),
            note=note(pair, n),
            key="recovery_one_of_two_s",
        ),
        row(
            "spurious retries after recovery, normal run",
            sum(spurious.values()),
            "",
            target="0",
            ok=sum(spurious.values()) == 0,
            note=spurious_note(results, spurious),
            key="recovery_spurious_retries",
        ),
    ]


def spurious_note(results: dict[str, Any], spurious: dict[str, int]) -> str:
    kinds = {k: r["normal_run"]["workflow_task_failures_by_kind"] for k, r in results.items()}
    return (
        "deals driven to COMPLETED after recovering "
        f"({results['one_of_two'].get('deals_not_completed', 0)} did not get there), "
        "activity retries + timeouts + workflow task failures: "
        + ", ".join(f"{k} {v}" for k, v in spurious.items())
        + f"; workflow task failures by kind: {kinds}"
    )


def _within(r: dict[str, Any], seconds: float) -> bool:
    return r["seconds_to_all"] is not None and r["seconds_to_all"] <= seconds


def note(r: dict[str, Any], n: int) -> str:
    b = r["breakdown_s_after_kill"]

    def mx(k: str) -> str:
        return f"{b[k]['max']:.1f}" if k in b else "-"

    return (
        f"{r['recovered']}/{n} recovered ({r['lender_calls_on_killed_worker']} lender calls "
        f"on the killed worker, load {r['loadavg_1m_at_kill']}); after the kill, slowest "
        f"deal: worker polling {r['worker_ready_after_kill_s']:.1f}s, lender call retried "
        f"{mx('lender_call_retry_started')}s, done {mx('lender_call_completed')}s, "
        f"deal's task started {mx('workflow_task_started')}s"
    )


def fmt(r: dict[str, Any]) -> str:
    secs = r["seconds_to_all"]
    return (
        f"{r['recovered']}/{r['deals']} recovered, all after "
        f"{'-' if secs is None else f'{secs:.1f}'}s (first {r['seconds_first'] or 0:.1f}s), "
        f"worker polling {r['worker_ready_after_kill_s']:.1f}s after the kill, "
        f"breakdown {r['breakdown_s_after_kill']}"
    )


def main() -> None:
    """Run this benchmark alone at the quick size."""
    import json
    import tempfile
    from pathlib import Path

    async def go(root: Path) -> dict[str, Any]:
        ctx = Ctx(root, Path("bench/results"), quick=True)
        try:
            return await run(ctx)
        finally:
            await ctx.aclose()

    with tempfile.TemporaryDirectory(prefix="dealflow-bench-") as tmp:
        print(json.dumps(asyncio.run(go(Path(tmp))), indent=1, default=str))


if __name__ == "__main__":
    main()
