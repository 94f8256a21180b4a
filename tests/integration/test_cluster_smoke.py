"""Cluster smoke (issue 21, part of `make test`): a Redis Cluster of three masters with a replica each, started by
the stack's own code (skewless/stack/cluster.py) on free ports, and the compiled streaming job at parallelism 2 on
a MiniCluster of two TaskManagers writing a small stream into it through the Jedis sink (writes grouped by hash slot, pipelined per
master, WAIT before the end of input is acknowledged). The values read back equal the oracle, the entities' hashes
sit on every master, and each master's replica holds the same hashes (the sink waited for them).

The values are read twice: through the reference reader (``tests/support/reference_reader.py``, layout v2) with
redis-py's ``RedisCluster``, and through the SDK's cluster-aware read (``open_store`` on the cluster URL)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import pytest

from skewless.config import cluster_url
from skewless.core import admission, layout, oracle
from skewless.core.repo import load_repository
from skewless.core.schemas import validator
from skewless.core.timeutil import td_ms
from skewless.producer import GeneratorConfig, generate
from skewless.producer.kafka_producer import produce_records
from skewless.serving.online import open_store
from skewless.stack.base import Started
from skewless.stack.cluster import REDIS_MASTERS, RedisCluster, free_cluster_ports_env
from skewless.stack.procs import wait_until
from streaming_jobs.sink import redis_endpoint
from streaming_jobs.udf import redis_client_jars, udf_jar
from tests.integration.test_streaming import read_topic
from tests.support.reference_reader import read_windowed

pytestmark = pytest.mark.integration

VIEW = "user_order_stats"
STREAM_FEATURES = ("user_orders_last_1h",)  # the view's stream-served window
PARALLELISM = 2


@pytest.fixture(scope="module")
def repo() -> Any:
    return load_repository()


@contextmanager
def running_cluster(root: Path) -> Iterator[tuple[RedisCluster, Started]]:
    """The stack's Redis Cluster (3 masters + 3 replicas, its AOF settings) on a free block of ports, until exit."""
    cluster = RedisCluster(port=int(free_cluster_ports_env()["SKEWLESS_REDIS_PORT"]))
    started = cluster.start(root / "state", root / "logs")
    try:
        wait_until(lambda: not cluster.problems(), 90, "redis cluster (3 masters with a replica each)")
        yield cluster, started
    finally:
        cluster.stop(started)


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with running_cluster(tmp_path_factory.mktemp("redis-cluster")) as (cluster, _):
        yield cluster


def seeds(cluster: RedisCluster) -> tuple[str, ...]:
    return tuple(f"127.0.0.1:{p}" for p in cluster.node_ports)


def cluster_client(cluster: RedisCluster, dead: int | None = None) -> Any:
    """redis-py's cluster client, seeded with every node but ``dead``."""
    from redis.cluster import ClusterNode, RedisCluster as RedisClusterClient

    return RedisClusterClient(startup_nodes=[ClusterNode("127.0.0.1", p) for p in cluster.node_ports if p != dead],
                              socket_timeout=10, socket_connect_timeout=5)


def start_job(bootstrap: str, topic: str, redis_url: str, project: str, checkpoint_dir: Path,
              stop_offsets: dict[int, int] | None = None) -> Any:
    """The compiled view at parallelism 2 on a MiniCluster of two TaskManagers with one slot each (so the sink's
    two subtasks run in different TaskManagers), bounded at the topic's current end or at ``stop_offsets``; its
    job client."""
    from skewless.engines.flink_env import create_stream_env
    from streaming_jobs.flink_compiler import compile_repository
    from streaming_jobs.job import JobOptions, add_source_job
    from streaming_jobs.run_view import stream_conf

    (job,) = compile_repository(load_repository(), [VIEW])
    env, t_env = create_stream_env(parallelism=PARALLELISM, checkpoint_dir=checkpoint_dir, checkpoint_interval="1 s",
                                   extra_conf={**stream_conf("300 ms", 10_000), "taskmanager.numberOfTaskSlots": "1",
                                               "minicluster.number-of-taskmanagers": str(PARALLELISM)})
    add_source_job(env, t_env, job, JobOptions(
        bootstrap=bootstrap, redis_url=redis_url, project=project, repo_path="feature_defs", topic=topic,
        bounded=stop_offsets is None, stop_offsets=stop_offsets, ns=f"sk_{uuid.uuid4().hex[:8]}", applied_from_ms=0,
        flush_ms=100))
    return env.execute_async(f"test-cluster-smoke-{project}")


def admitted_events(bootstrap: str, topic: str, count: int, view: Any) -> list[dict[str, Any]]:
    raw = read_topic(bootstrap, topic, count)
    return list(admission.admit(raw, view.source, validator(view.source.schema), key_fields=view.entity.key_names).admitted)


def assert_last_hour_equals_oracle(client: Any, project: str, repo: Any, admitted: list[dict[str, Any]]) -> list[str]:
    """Every user's stream-served windows, read just after the last admitted event, equal the oracle; the users."""
    view = repo.view(VIEW)
    users = sorted({e["user_id"] for e in admitted})
    end = max(e["event_time"] for e in admitted) + 1
    got = read_windowed(client, project, [f"{VIEW}:{f}" for f in STREAM_FEATURES], users, repo=repo, now_ms=end)
    for i, user in enumerate(users):
        for feature in STREAM_FEATURES:
            want = oracle.feature_value(view, feature, admitted, (user,), end, now_read=True)
            assert got.entities[VIEW][i].features[feature] == (want, "present"), (user, feature)
    return users


def test_the_stream_into_a_redis_cluster_equals_the_oracle(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], redis_cluster: RedisCluster, repo: Any, tmp_path: Path,
) -> None:
    view = repo.view(VIEW)
    source = view.source
    topic = kafka_topic(partitions=4, prefix="orders")
    now = int(time.time() * 1000)
    config = GeneratorConfig(count=800, rate=0.32, seed=21, partitions=4, users=60, start_ms=now - 40 * 60_000,
                             allowed_lateness_ms=td_ms(source.allowed_lateness), clock_skew_ms=td_ms(source.clock_skew_tolerance))
    records, _ = generate(config)
    produce_records(kafka_bootstrap, topic, records)
    admitted = admitted_events(kafka_bootstrap, topic, len(records), view)

    project = f"c{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    start_job(kafka_bootstrap, topic, cluster_url(seeds(redis_cluster)), project, tmp_path / "ckpt") \
        .get_job_execution_result().result()
    print(f"\ncluster smoke: the job over {len(records)} records took {time.monotonic() - started:.1f} s")

    client = cluster_client(redis_cluster)
    users = assert_last_hour_equals_oracle(client, project, repo, admitted)
    # the SDK's cluster-aware read (one pipelined exchange per master) serves the same values, present
    end = max(e["event_time"] for e in admitted) + 1
    refs = [f"{VIEW}:{f}" for f in STREAM_FEATURES]
    sdk = open_store(repo, cluster_url(seeds(redis_cluster)), project=project) \
        .get_online_features({"user_id": users}, refs, now_ms=end)
    for column, feature in zip(sdk.columns, STREAM_FEATURES):
        assert sdk.statuses[column] == ["present"] * len(users), column
        assert sdk.values[column] == [oracle.feature_value(view, feature, admitted, (u,), end, now_read=True) for u in users]
    assert sorted(client.hgetall(layout.progress_key(project, source.name))) == [b"log_end", b"p:0", b"p:1", b"p:2", b"p:3"]

    # the entities' hashes sit on every master, and each master's replica holds them too (the sink's WAIT)
    keys = [layout.entity_key(project, view, (u,)) for u in users]
    by_master: dict[int, list[str]] = {}
    for key in keys:
        by_master.setdefault(client.get_node_from_key(key).port, []).append(key)
    assert len(by_master) == REDIS_MASTERS, by_master.keys()
    masters = {n.node_id: n.port for n in redis_cluster.cluster_nodes() if n.is_master and n.slots}
    replica_of = {masters[n.master_id]: n.port for n in redis_cluster.cluster_nodes() if n.master_id in masters}
    import redis

    for master, mine in by_master.items():
        replica = redis.Redis(host="127.0.0.1", port=replica_of[master], socket_timeout=10)
        replica.execute_command("READONLY")
        assert [replica.hgetall(k) for k in mine] == [client.hgetall(k) for k in mine]
        replica.close()
    client.close()


def nodes_client(spec: dict[str, Any], *command: str) -> subprocess.CompletedProcess:
    """The sink's Redis client (``RedisNodes``) in a plain JVM: connect as ``spec`` says, run one command."""
    classpath = os.pathsep.join(map(str, [udf_jar(), *redis_client_jars()]))
    return subprocess.run(["java", "-cp", classpath, "dev.skewless.flink.RedisNodes", json.dumps(spec), *command],
                          capture_output=True, text=True, timeout=120)


def test_a_cluster_named_as_one_redis_or_the_reverse_is_one_clear_error(redis_cluster: RedisCluster,
                                                                         redis_url: str) -> None:
    """The sink refuses a cluster node named as one Redis (MOVED on most keys otherwise), and a plain Redis named
    as a cluster, with one line naming the node and the fix; through the cluster name it writes on any slot."""
    node = seeds(redis_cluster)[0]
    as_single = nodes_client(redis_endpoint(f"redis://{node}/0"), "PING")
    assert as_single.returncode != 0 and f"the Redis at {node} is a Redis Cluster node" in as_single.stderr
    assert "redis+cluster://" in as_single.stderr
    plain = redis_url.split("://", 1)[1].split("/", 1)[0]
    as_cluster = nodes_client(redis_endpoint(f"redis+cluster://{plain}"), "PING")
    assert as_cluster.returncode != 0 and "is not a cluster (cluster support disabled)" in as_cluster.stderr
    spec = redis_endpoint(cluster_url(seeds(redis_cluster)))
    for key in ("a", "b", "c", "{x}1"):
        done = nodes_client(spec, "SET", key, f"v-{key}")
        assert done.returncode == 0 and done.stdout.strip() == "OK", done.stderr
    assert nodes_client(spec, "GET", "{x}1").stdout.strip() == "v-{x}1"


def wait_promoted(cluster: RedisCluster, dead: int) -> None:
    """Until three masters serve the slots again, ``dead``'s replica among them."""
    def promoted() -> bool:
        nodes = [n for n in cluster.cluster_nodes() if n.port != dead]
        return not any(n.failing for n in nodes) and sum(1 for n in nodes if n.is_master and n.slots) == REDIS_MASTERS

    wait_until(promoted, 60, f"the replica of the killed master :{dead} promoted")


@pytest.mark.slow
def test_a_master_killed_mid_stream_loses_nothing(kafka_bootstrap: str, kafka_topic: Callable[..., str], repo: Any,
                                                  tmp_path: Path) -> None:
    """Fault (issue 21, `make test-faults`): the master serving the progress key is SIGKILLed while the job writes
    (after its first write, before its last; the producer is throttled). Its replica is promoted; the sink either
    retries on the new master or, when the dead master held writes not yet confirmed on a replica, fails the task
    and Flink replays from the last checkpoint. The values equal the oracle and every daily tile's version is the
    number of admitted events in it (nothing lost, nothing counted twice)."""
    import signal
    import threading

    view = repo.view(VIEW)
    source = view.source
    topic = kafka_topic(partitions=3, prefix="orders-failover")
    now = int(time.time() * 1000)
    records, _ = generate(GeneratorConfig(count=2400, rate=0.5, seed=31, partitions=3, users=40, start_ms=now - 50 * 60_000,
                                          allowed_lateness_ms=td_ms(source.allowed_lateness),
                                          clock_skew_ms=td_ms(source.clock_skew_tolerance)))
    stop_offsets = {p: sum(1 for r in records if r.partition == p) for p in range(3)}
    project = f"f{uuid.uuid4().hex[:8]}"
    with running_cluster(tmp_path / "redis") as (cluster, started):
        client = cluster_client(cluster)
        progress_key = layout.progress_key(project, source.name)
        produce_records(kafka_bootstrap, topic, records[:300])
        job = start_job(kafka_bootstrap, topic, cluster_url(seeds(cluster)), project, tmp_path / "ckpt", stop_offsets)
        wait_until(lambda: any(k.startswith(b"p:") for k in client.hgetall(progress_key)), 180, "the job's first write")
        rest = records[300:]
        producer = threading.Thread(target=lambda: [
            (produce_records(kafka_bootstrap, topic, rest[i:i + 100]), time.sleep(0.4)) for i in range(0, len(rest), 100)])
        producer.start()
        time.sleep(1.5)
        victim = client.get_node_from_key(progress_key).port
        os.kill(started.pids[cluster.node_ports.index(victim)], signal.SIGKILL)
        killed = time.monotonic()
        client.close()
        wait_promoted(cluster, victim)
        client = cluster_client(cluster, dead=victim)
        promoted = time.monotonic() - killed
        producer.join()
        job.get_job_execution_result().result()
        done = time.monotonic() - killed
        print(f"\ncluster failover: master :{victim} killed; replica promoted after {promoted:.1f} s, the job finished "
              f"{done:.1f} s after the kill")
        admitted = admitted_events(kafka_bootstrap, topic, len(records), view)
        users = assert_last_hour_equals_oracle(client, project, repo, admitted)
        daily = layout.tile_groups(view)[-1]
        for user in users:
            stored = layout.read_entity_hash(client.hgetall(layout.entity_key(project, view, (user,))))
            for start_ms, value in stored.tiles.get(daily.tile_ms, {}).items():
                version, _, _ = layout.decode_tile_vector(value, daily.aggs)
                n = sum(1 for e in admitted if e["user_id"] == user
                        and e["event_time"] // daily.tile_ms * daily.tile_ms == int(start_ms))
                assert version == n, (user, start_ms)
        client.close()


def key_on(client: Any, port: int, prefix: str) -> str:
    """A key whose slot the master at ``port`` serves."""
    return next(k for k in (f"{prefix}{i}" for i in range(10_000)) if client.get_node_from_key(k).port == port)


@pytest.mark.slow
def test_a_master_lost_with_unconfirmed_writes_fails_the_next_write(tmp_path: Path) -> None:
    """The sink's rule on a failover (RedisNodes, driven line by line): a master that acknowledged writes not yet
    confirmed on a replica and then dies fails the next write at once (the task replays from its checkpoint, whose
    writes were confirmed). The other rule (a master whose writes were all confirmed is waited out) is what
    test_a_master_killed_mid_stream_loses_nothing exercises when the kill falls after a confirmation."""
    import signal

    classpath = os.pathsep.join(map(str, [udf_jar(), *redis_client_jars()]))
    with running_cluster(tmp_path / "redis") as (cluster, started):
        client = cluster_client(cluster)
        first, second = sorted({client.get_node_from_key(f"k{i}").port for i in range(50)})[:2]
        ka, kb = key_on(client, first, "a"), key_on(client, second, "b")
        spec = json.dumps(redis_endpoint(cluster_url(seeds(cluster))))

        def session() -> Callable[[str], str]:
            proc = subprocess.Popen(["java", "-cp", classpath, "dev.skewless.flink.RedisNodes", spec], text=True,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            procs.append(proc)

            def say(line: str) -> str:
                proc.stdin.write(line + "\n")
                proc.stdin.flush()
                return proc.stdout.readline().strip()
            return say

        procs: list[subprocess.Popen] = []
        try:
            say = session()
            assert [say(f"SET {ka} 1"), say(f"SET {kb} 1"), say("CONFIRM"), say(f"SET {ka} 2")] == ["OK"] * 4
            os.kill(started.pids[cluster.node_ports.index(first)], signal.SIGKILL)
            lost = say(f"SET {ka} 3")
            assert lost.startswith("ERR") and "not yet confirmed on a replica" in lost and f":{first}" in lost, lost
        finally:
            for proc in procs:
                proc.kill()
                proc.wait(30)
            client.close()
