"""Fault tests on the cluster topology (issue 21, `make test-faults`, marked slow): one module-scoped stack of the
topology's online half (3 KRaft Kafka nodes with RF 3 and min ISR 2, Flink JobManager + 2 TaskManagers x 2 slots
with the job at parallelism 4, Redis Cluster 3 masters + 3 replicas; ``harness.ClusterStack``), and per fault a
parity run on it that must end with zero mismatches and every check ok:

- a Redis master SIGKILLed mid-stream (the master of the job's progress key; its replica is promoted);
- a Kafka broker SIGKILLed mid-stream (the leader of partition 0 of the run's topic), started again 10 s later;
- a TaskManager SIGKILLed mid-stream, a replacement TaskManager started (see the test for why not rescaling);
- a Redis master SIGKILLed mid-materialization (every batch sent, no reply read, the run not marked complete):
  the materialization fails naming the master, and the run's own materialization after the promotion is the retry.

The stream faults land after the job's first write and before its last (the parity producer is throttled after the
first write, and each fault waits for a paced record: ``harness.await_paced_writes``); each test asserts it did. The
recovery times are printed (``cluster fault: ...``) for docs/deploy.md. Killed nodes are started again (same port,
data dir) before the run compares, so every test meets the whole topology.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import (ClusterStack, applied, applied_now, await_paced_writes, drain_job, job_exceptions, parity,
                                  replicas_synced, run_job, start_taskmanager, wait)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

EVENTS = 2400
RATE = 40.0  # records/s after the job's first write: ~55 s of writes after it, room for a fault and its recovery
CFG = dict(events=EVENTS, produce_rate=RATE, partitions=4)  # a partition per subtask of the job (parallelism 4)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterStack]:
    stack = ClusterStack(tmp_path_factory.mktemp("cluster-faults"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SKEWLESS_CONFIG", str(stack.profile))  # the job's parallelism (run_view.py reads the profile)
        mp.setenv("SKEWLESS_STATE_DIR", str(stack.state))  # `flink run` uses the stack's Flink conf dir
        up = stack.up()
        try:
            assert up.returncode == 0, up.stdout + up.stderr
            wait(lambda: replicas_synced(stack.redis_cluster()), 60, "every Redis replica synced")
            yield stack
        finally:
            down = stack.cli("stack", "down")
            print(down.stdout + down.stderr)


def report(name: str, seen: dict[str, Any]) -> None:
    print(f"\ncluster fault: {name}: " + ", ".join(f"{k}={v}" for k, v in seen.items()))


def resumed_after(ctx: Any, at: int, t0: float) -> float:
    """Seconds from ``t0`` until the job's progress passes ``at`` records (or all), reads failing meanwhile ignored
    (after a restore from a checkpoint the counts go back first, then pass ``at`` again)."""
    last = [at]
    wait(lambda: applied_now(ctx, last) > at or last[0] >= ctx.records, 600, "records applied after the fault",
         interval_s=0.1)
    return round(time.monotonic() - t0, 1)


def test_redis_master_killed_mid_stream(cluster: ClusterStack, tmp_path: Path) -> None:
    """SIGKILL the master serving the progress key (the sink writes there after every flush) after the job's first
    write while records still arrive: the replica is promoted within the cluster-node-timeout; the sink fails the
    task when the dead master held writes not yet confirmed on a replica (replay from the last checkpoint) or follows
    the new slot map; every value equals the oracle."""
    from skewless.core import layout
    from skewless.e2e.parity import Faults
    from skewless.engines.redis_client import hash_slot, node_of_slot

    seen: dict[str, Any] = {}

    class KillMaster(Faults):
        def during_stream(self, ctx: Any) -> None:
            await_paced_writes(ctx)
            key = layout.progress_key(ctx.project, ctx.repo.view("user_order_stats").source.name)
            victim = node_of_slot(ctx.targets.redis(), hash_slot(key.encode())).port
            at = applied(ctx)
            killed = cluster.kill_redis_node(victim)
            seen.update(victim=victim, applied_at_kill=at, produced_at_kill=ctx.produced)
            cluster.await_promotion(victim)
            seen["promoted_s"] = round(time.monotonic() - killed, 1)
            seen["resumed_s"] = resumed_after(ctx, at, killed)
            seen.update(drain_job(cluster, ctx))
            seen["rejoined_s"] = round(cluster.restart_redis_node(victim), 1)

    parity(cluster, tmp_path, seed=2101, faults=KillMaster(), **CFG)
    report("redis master killed mid-stream", seen)
    assert 1 <= seen["applied_at_kill"] < EVENTS, seen  # after the job's first write, before its last
    assert seen["job_state"] == "FINISHED", seen


def test_kafka_broker_killed_mid_stream(cluster: ClusterStack, tmp_path: Path) -> None:
    """SIGKILL (process group: no controlled shutdown) the broker leading partition 0 of the run's topic after the
    job's first write while records still arrive; 10 s later start it again on the same ports and data dir. With RF 3
    and min ISR 2 the producer (acks=all) and the job's source go on with the other two brokers (new leaders); the
    restarted broker recovers its log and catches up into the ISR; every value equals the oracle."""
    from skewless.e2e.parity import Faults

    seen: dict[str, Any] = {}

    class KillBroker(Faults):
        def during_stream(self, ctx: Any) -> None:
            await_paced_writes(ctx)
            victim = cluster.kafka_leaders(ctx.topic)[0]
            at = applied(ctx)
            killed = cluster.kill_kafka_node(victim)
            seen.update(victim=victim, applied_at_kill=at, produced_at_kill=ctx.produced)

            def led_elsewhere() -> bool:
                try:
                    return victim not in cluster.kafka_leaders(ctx.topic).values()
                except Exception:  # noqa: BLE001 - metadata not answered yet
                    return False

            wait(led_elsewhere, 120, "new leaders for the killed broker's partitions", interval_s=0.1)
            seen["new_leaders_s"] = round(time.monotonic() - killed, 1)
            seen["resumed_s"] = resumed_after(ctx, at, killed)
            time.sleep(max(0.0, 10 - (time.monotonic() - killed)))
            restarted = time.monotonic()
            cluster.restart_kafka_node(victim)
            kafka = cluster.kafka_cluster()
            wait(kafka.healthy, 180, "the broker back in the cluster's metadata", interval_s=0.2)
            seen["broker_back_s"] = round(time.monotonic() - restarted, 1)
            wait(lambda: cluster.in_sync(ctx.topic), 180, "every replica of the topic in sync again", interval_s=0.2)
            seen["in_sync_s"] = round(time.monotonic() - restarted, 1)
            seen["produced_since_kill"] = ctx.produced - seen["produced_at_kill"]
            seen.update(drain_job(cluster, ctx))

    parity(cluster, tmp_path, seed=2102, faults=KillBroker(), **CFG)
    report("kafka broker killed mid-stream", seen)
    assert 1 <= seen["applied_at_kill"] < EVENTS, seen
    assert seen["produced_since_kill"] > 0, seen  # records were produced while the broker was gone
    assert seen["job_state"] == "FINISHED", seen


def test_taskmanager_killed_mid_stream(cluster: ClusterStack, tmp_path: Path) -> None:
    """SIGKILL one of the two TaskManagers (the job at parallelism 4 has subtasks on both) after the job's first
    write while records still arrive, and start a replacement TaskManager (2 slots, the conf `stack up` wrote): the
    job restarts from its last completed checkpoint at parallelism 4 and every value equals the oracle.

    A replacement, not the adaptive scheduler rescaling to the 2 slots left: it is what a deployment does (a
    Kubernetes Deployment or the Flink operator starts a new TaskManager pod), the job keeps the parallelism the
    profile names (and its key-group split), and the session cluster keeps the default scheduler, under which a job
    whose slots are gone waits for new ones (slot.request.timeout) rather than shrinking."""
    from skewless.e2e.parity import Faults
    from skewless.stack.procs import pid_alive

    seen: dict[str, Any] = {}

    class KillTaskManager(Faults):
        def during_stream(self, ctx: Any) -> None:
            await_paced_writes(ctx)
            job = run_job(cluster, ctx)
            assert job is not None, "the run's job is not on the cluster"
            tm = cluster.pid_of("flink-cluster", role="taskmanager")
            os.kill(tm, signal.SIGKILL)
            killed = time.monotonic()
            wait(lambda: not pid_alive(tm), 30, "the TaskManager to die", interval_s=0.02)
            at = applied(ctx)  # the count at the fault (the other TaskManager's subtasks write until the job fails)
            seen.update(applied_at_kill=at, produced_at_kill=ctx.produced)
            start_taskmanager(cluster, tm, service="flink-cluster")
            wait(lambda: job_restarted(cluster, job["jid"]), 600, "the job running again on a new TaskManager",
                 interval_s=0.2)
            seen["restarted_s"] = round(time.monotonic() - killed, 1)  # failure recorded, every subtask deployed again
            seen["resumed_s"] = resumed_after(ctx, applied(ctx), killed)  # then records applied past the restore
            seen.update(drain_job(cluster, ctx))
            seen["taskmanagers"] = len(cluster_flink(cluster).taskmanager_slots())

    parity(cluster, tmp_path, seed=2103, faults=KillTaskManager(), **CFG)
    report("taskmanager killed mid-stream", seen)
    assert 1 <= seen["applied_at_kill"] < EVENTS, seen
    assert seen["job_failures"], seen  # the job lost its TaskManager and restarted
    assert seen["job_state"] == "FINISHED", seen


def job_restarted(stack: ClusterStack, job_id: str) -> bool:
    """The job recorded a failure and runs again: every vertex ``RUNNING`` (or ``FINISHED``: a bounded source
    subtask at its stop offsets)."""
    job = cluster_flink(stack)._rest("GET", f"/jobs/{job_id}")
    return (bool(job_exceptions(stack, job_id)) and job.get("state") == "RUNNING"
            and all(v.get("status") in ("RUNNING", "FINISHED") for v in job.get("vertices", [])))


def cluster_flink(stack: ClusterStack) -> Any:
    from skewless.stack.cluster import FlinkCluster

    return FlinkCluster(rest_port=int(stack.env["SKEWLESS_FLINK_REST_PORT"]))


def test_redis_master_killed_mid_materialization(cluster: ClusterStack, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The day's materialization of the feature view sends every batch write to the three masters; before any reply
    is read (so before ``WAIT`` and before ``BATCH_END_LUA`` marks the run complete), a master holding rows of the run
    (not the one holding the view's lease) is SIGKILLed. The materialization fails with one line naming that master,
    the run is not marked complete and the lease is released; after the promotion the run's own materialization is
    the retry (fenced writes: it rewrites every entity) and every value equals the oracle."""
    from batch_jobs import materialize as materializer
    from skewless.core import layout
    from skewless.e2e.parity import Faults
    from skewless.e2e.pipeline import batch_day, materialize
    from skewless.engines.redis_client import hash_slot, node_of_slot, scan_masters
    from skewless.offline.tables import BatchError

    seen: dict[str, Any] = {}
    send_rounds = materializer.send_rounds

    class KillMasterMidMaterialization(Faults):
        def backfill(self, ctx: Any, run: Any) -> Any:
            result = run()
            view = ctx.repo.view("user_order_stats")
            day = batch_day(ctx.targets.catalog(), view.source)
            client = ctx.targets.redis()
            meta = layout.view_meta_key(ctx.project, view)
            lease_master = node_of_slot(client, hash_slot(meta.encode())).name
            killed: list[float] = []

            def send_then_kill(nodes: dict[str, Any], rounds: Any, *args: Any, **kwargs: Any) -> int:
                victim = next(name for name in sorted(nodes) if name != lease_master)
                seen["victim"] = victim

                def then_kill() -> Iterator[Any]:
                    for batch in rounds:
                        yield batch
                        seen["batches_sent"] = seen.get("batches_sent", 0) + len(batch)
                    killed.append(cluster.kill_redis_node(int(victim.rsplit(":", 1)[1])))  # every batch sent

                return send_rounds(nodes, then_kill(), *args, **kwargs)

            monkeypatch.setattr(materializer, "send_rounds", send_then_kill)
            try:
                with pytest.raises(BatchError) as failed:
                    materialize(ctx.targets, ctx.repo, day, ctx.project)
            finally:
                monkeypatch.setattr(materializer, "send_rounds", send_rounds)
            seen["error"] = str(failed.value)
            port = int(seen["victim"].rsplit(":", 1)[1])
            cluster.await_promotion(port)
            seen["promoted_s"] = round(time.monotonic() - killed[0], 1)
            client = ctx.targets.redis()
            seen["entities_after_fault"] = sum(1 for _ in scan_masters(client, f"{layout.view_prefix(ctx.project, view)}:*"))
            seen["marked_complete_after_fault"] = client.hget(meta, layout.META_BATCH_CUTOFF)
            seen["lease_after_fault"] = client.hget(meta, layout.BATCH_WRITER)
            seen["rejoined_s"] = round(cluster.restart_redis_node(port), 1)
            return result

    result = parity(cluster, tmp_path, seed=2104, faults=KillMasterMidMaterialization(), events=1500)
    retry = next(v for k, v in result.timings.items() if k.startswith("materialize"))
    seen["retry_s"] = round(retry, 2)
    report("redis master killed mid-materialization", seen)
    assert seen["victim"] in seen["error"] and "the run is not marked complete" in seen["error"], seen
    assert len(seen["error"].splitlines()) == 1, seen
    assert seen["batches_sent"] >= 2 and seen["entities_after_fault"] >= 1, seen  # after the first write
    assert seen["marked_complete_after_fault"] is None and seen["lease_after_fault"] is None, seen  # before the last
