"""Fault test (`make test-faults`, marked slow, outside `make test`): the `make up` cluster's TaskManager is
restarted cleanly (SIGTERM, then a new one) while the streaming job writes and records still arrive (the
producer is throttled after the job's first write), twice: as soon as records flow, and again as soon as they
flow after the first restart. Each restart must land after the job's first write and before its last.

The job must restart from its last completed checkpoint (offset 0 when none completed yet) each time,
resume applying records, and end exact
(the parity run compares every value with the oracle: nothing lost, nothing counted twice). The restart
timings (stop, new TaskManager to records applied again) are printed for docs/streaming.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import Stack, applied, job_exceptions, parity, run_job, start_taskmanager, wait

pytestmark = [pytest.mark.slow, pytest.mark.integration]

EVENTS = 6_000
RATE = 50.0  # records/s after the job's first write: ~115 s of writes, room for both restarts
RESTARTS = 2


def _restart_taskmanager(stack: Stack, ctx: Any) -> dict[str, float]:
    """SIGTERM the TaskManager (and its group), start a new one the way `stack up` does, and wait until the
    job applies records again. Returns the timings in seconds."""
    from skewless.stack.procs import pid_alive, stop_pids

    tm = stack.entry("flink")["pids"][1]["pid"]
    before = applied(ctx)
    t0 = time.monotonic()
    stop_pids([tm], timeout_s=60.0)
    assert not pid_alive(tm), f"TaskManager {tm} still alive"
    stopped = time.monotonic()
    at_stop = applied(ctx)  # only the TaskManager writes: the count at the fault
    start_taskmanager(stack, tm)
    # after a restore the progress counts go back to the checkpoint, then pass the pre-stop count again
    wait(lambda: applied(ctx) > before or applied(ctx) >= ctx.records, 600, "records applied after the restart",
         interval_s=0.2)
    return {"stop_s": round(stopped - t0, 1), "resumed_s": round(time.monotonic() - stopped, 1), "applied_before": before,
            "applied_at_stop": at_stop, "produced": ctx.produced}


def test_taskmanager_restarted_under_load(stack: Stack, tmp_path: Path) -> None:
    from skewless.e2e.parity import Faults

    timings: list[dict[str, float]] = []
    failures: list[str] = []

    class RestartTaskManager(Faults):
        def during_stream(self, ctx: Any) -> None:
            # the first restart as soon as records flow, the second as soon as they flow again after it
            wait(lambda: applied(ctx) >= 1, 900, "the job applying records")
            for _ in range(RESTARTS):
                if applied(ctx) >= ctx.records:
                    return
                timings.append(_restart_taskmanager(stack, ctx))
            job = run_job(stack, ctx)
            if job is not None:
                failures.extend(job_exceptions(stack, job["jid"]))

    parity(stack, tmp_path, seed=202, faults=RestartTaskManager(), events=EVENTS, produce_rate=RATE)
    print("TaskManager restarts:", timings, "job failures recorded:", failures)
    assert len(timings) == RESTARTS, f"the stream ended before {RESTARTS} restarts: {timings}"
    # each restart after the job's first write and before its last
    assert all(1 <= t["applied_before"] and t["applied_at_stop"] < EVENTS for t in timings), timings
    assert len(failures) >= RESTARTS, failures  # the job really lost its TaskManager each time and recovered
