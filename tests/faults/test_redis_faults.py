"""Fault tests (`make test-faults`, marked slow): Redis hung (SIGSTOP, longer than the client timeouts) and Redis
out of memory under ``noeviction``, each while the streaming job writes, while a materialization writes and (the
pause) while the store is read. Clients fail loudly within their timeouts (never hang), the job restarts and
writes every record, the materialization is retried and completes; zero mismatches afterwards.

Every client here has 1 s Redis timeouts (``SKEWLESS_REDIS_[CONNECT_]TIMEOUT_S``, also the streaming job's sink,
whose spec is built from them); the faults last several times that.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import redis

from tests.faults.harness import (STREAM_RATE, Stack, applied, await_paced_writes, drain_job, job_exceptions, parity,
                                  run_job)

pytestmark = [pytest.mark.slow, pytest.mark.integration]
TIMEOUT_S = 1.0
FAULT_S = 6.0  # how long each fault lasts at least (several client timeouts)
FAULT_WAIT_S = 60.0  # a stream fault lasts until the job recorded a failure, at most this


@pytest.fixture
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKEWLESS_REDIS_TIMEOUT_S", str(TIMEOUT_S))
    monkeypatch.setenv("SKEWLESS_REDIS_CONNECT_TIMEOUT_S", str(TIMEOUT_S))


def _during_stream(stack: Stack, ctx: Any, fault: Callable[[], None], heal: Callable[[], None],
                   seen: dict[str, Any]) -> None:
    """``fault()`` once the job wrote and the throttled producer sends its paced records, so records keep arriving
    and the sink (flushing every 200 ms) writes into the fault; ``heal()`` once FAULT_S passed and Flink recorded a
    failure of the job (its sink met the fault; at most FAULT_WAIT_S). Then wait for every record to be applied
    and the job to end. In ``seen``: records applied before / right after the fault, records produced during it,
    the failures recorded during it, the job's failures and end state."""
    before = await_paced_writes(ctx)
    job = run_job(stack, ctx)
    assert job is not None, "the job wrote but is not on the cluster"
    failures = len(job_exceptions(stack, job["jid"]))
    produced, t = ctx.produced, time.monotonic()
    fault()
    try:
        while time.monotonic() - t < FAULT_WAIT_S:
            time.sleep(0.5)
            if time.monotonic() - t >= FAULT_S and len(job_exceptions(stack, job["jid"])) > failures:
                break
    finally:
        seen["produced_during_fault"] = ctx.produced - produced
        seen["produced_at_heal"] = (ctx.produced, ctx.records)
        now = job_exceptions(stack, job["jid"])  # newest first
        seen["failures_during_fault"] = now[:len(now) - failures]
        heal()
    seen["stream_fault_s"] = round(time.monotonic() - t, 1)
    seen["applied"] = (before, applied(ctx))
    seen.update(drain_job(stack, ctx))


def _materialize_with_fault(ctx: Any, fault: Callable[[], None], heal: Callable[[], None],
                            seen: dict[str, Any]) -> None:
    """Re-materialize the run's day of `user_order_stats` in batches of 5 entities, ``fault()`` just before its
    second batch (the first one written, the rest not): it must fail loudly; ``heal()``, then retry until it
    completes (a retry meets the failed attempt's writer lease only if its release failed too)."""
    from batch_jobs.materialize import ConcurrentMaterializationError, materialize_feature_view

    view = ctx.repo.view("user_order_stats")
    client = ctx.targets.redis()  # with the configured timeouts, as `skewless materialize` opens it
    leases = [0]
    real = client.register_script

    def register_script(script: str) -> Any:
        inner = real(script)

        def call(*args: Any, **kwargs: Any) -> Any:
            leases[0] += 1
            if leases[0] == 2:  # the lease renewal before the second batch: the first batch is on its way
                fault()
            return inner(*args, **kwargs)
        return call

    client.register_script = register_script  # type: ignore[method-assign]
    t = time.monotonic()
    try:
        materialize_feature_view(ctx.targets.catalog(), client, view, ctx.day, project=ctx.project, batch_size=5)
        seen["materialize_error"] = None
    except Exception as exc:  # noqa: BLE001 - the failure is what the test checks
        seen["materialize_error"] = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        seen["materialize_failed_after_s"] = time.monotonic() - t
        heal()
    seen["materialize_leases"] = leases[0]
    client = ctx.targets.redis()  # with the configured timeouts, as `skewless materialize` opens it
    t, attempts = time.monotonic(), 0
    while True:
        attempts += 1
        try:
            report = materialize_feature_view(ctx.targets.catalog(), client, view, ctx.day, project=ctx.project)
            break
        except ConcurrentMaterializationError:
            assert time.monotonic() - t < 300, "the failed materialization's lease never expired"
            time.sleep(2)
    seen["materialize_retry"] = (attempts, round(time.monotonic() - t, 1), report.rows)


def _assert_stream_fault_landed(seen: dict[str, Any], failure: str) -> None:
    """The stream fault landed after the job's first write and before its last: records were produced during it and
    after it, and the sink wrote into it and failed (a failure naming ``failure`` recorded while it lasted); the
    job then applied every record and finished."""
    assert "applied" in seen and "job_state" in seen, seen  # the fault hook ran to its end
    before, after = seen["applied"]
    produced_at_heal, records = seen["produced_at_heal"]
    assert 1 <= before and after < records and produced_at_heal < records, seen  # after the first write, before the last
    assert seen["produced_during_fault"] > 0, seen  # records arrived while it lasted
    assert any(failure in f for f in seen["failures_during_fault"]), seen  # the sink met it and failed
    assert seen["job_state"] == "FINISHED", seen  # the job restarted from its checkpoint and wrote every record


def _pid(stack: Stack) -> int:
    return stack.entry("redis")["pids"][0]["pid"]


@pytest.mark.usefixtures("short_timeouts")
def test_redis_paused_while_streaming_materializing_and_reading(stack: Stack, tmp_path: Path) -> None:
    """SIGSTOP Redis for several client timeouts (1) after the job's first write while records still arrive,
    (2) during a materialization (after its first batch), (3) while the store is read (SDK and server), then
    SIGCONT: the sink fails and the job restarts from its checkpoint, the materialization fails with a timeout
    and its retry completes, reads fail within the timeout (the server: 503, /health 503) and answer again
    afterwards; every value exact."""
    from skewless.serving.online import open_store
    from skewless.serving.server import FeatureServer, ServerSettings, ThreadedServer
    from tests.integration.test_serving_faults import call

    from skewless.e2e.parity import Faults

    seen: dict[str, Any] = {}

    def pause() -> None:
        os.kill(_pid(stack), signal.SIGSTOP)

    def resume() -> None:
        os.kill(_pid(stack), signal.SIGCONT)

    class PauseRedis(Faults):
        def during_stream(self, ctx: Any) -> None:
            _during_stream(stack, ctx, pause, resume, seen)

        def before_compare(self, ctx: Any) -> None:
            _materialize_with_fault(ctx, pause, lambda: (time.sleep(FAULT_S), resume()), seen)
            store = open_store(ctx.repo, ctx.targets.redis_url, project=ctx.project)
            server = FeatureServer(ServerSettings(redis_url=ctx.targets.redis_url, project=ctx.project), store=store)
            body = {"features": ["user_order_stats"], "entities": {"user_id": ["u-any"]}}
            with ThreadedServer(server) as s:
                assert call(s.url, "POST", "/get-online-features", body)[0] == 200
                pause()
                try:
                    t = time.monotonic()
                    with pytest.raises(redis.TimeoutError):
                        store.get_online_features({"user_id": ["u-any"]}, ["user_order_stats"])
                    seen["sdk_failed_after_s"] = round(time.monotonic() - t, 2)
                    seen["server_paused"] = (call(s.url, "POST", "/get-online-features", body)[0],
                                             call(s.url, "GET", "/health")[0])
                finally:
                    resume()
                t, statuses = time.monotonic(), []
                while 200 not in statuses[-1:]:
                    assert time.monotonic() - t < 60, statuses
                    statuses.append(call(s.url, "POST", "/get-online-features", body)[0])
                    time.sleep(0.2)
                seen["server_resumed"] = (statuses, round(time.monotonic() - t, 2))

    parity(stack, tmp_path, seed=505, faults=PauseRedis(), events=3000, produce_rate=STREAM_RATE)
    print(seen)
    _assert_stream_fault_landed(seen, "SocketTimeoutException")
    assert seen["materialize_leases"] == 2 and "Timeout" in (seen["materialize_error"] or ""), seen
    assert seen["server_paused"] == (503, 503), seen
    assert set(seen["server_resumed"][0]) <= {200, 503}, seen


@pytest.mark.usefixtures("short_timeouts")
def test_redis_out_of_memory_while_streaming_and_materializing(stack: Stack, tmp_path: Path) -> None:
    """``maxmemory`` below the used memory under ``noeviction`` (1) after the job's first write while records still
    arrive, (2) during a materialization (after its first batch), then memory back: the sink's writes fail with
    OOM and the job restarts until they pass again, the materialization fails naming OOM and its retry completes;
    nothing half-applied: every value exact."""
    from skewless.e2e.parity import Faults

    seen: dict[str, Any] = {}
    admin = redis.Redis(port=stack.redis_port, socket_timeout=10, socket_connect_timeout=10)
    admin.config_set("maxmemory-policy", "noeviction")

    def oom() -> None:
        admin.config_set("maxmemory", "1")  # far below what is used: every write that may grow memory is refused

    def heal() -> None:
        admin.config_set("maxmemory", "0")

    class OutOfMemory(Faults):
        def during_stream(self, ctx: Any) -> None:
            _during_stream(stack, ctx, oom, heal, seen)

        def before_compare(self, ctx: Any) -> None:
            _materialize_with_fault(ctx, oom, lambda: (time.sleep(FAULT_S), heal()), seen)

    try:
        parity(stack, tmp_path, seed=606, faults=OutOfMemory(), events=3000, produce_rate=STREAM_RATE)
    finally:
        heal()
    print(seen)
    _assert_stream_fault_landed(seen, "OOM")
    assert seen["materialize_leases"] == 2 and "OutOfMemoryError" in (seen["materialize_error"] or ""), seen
