"""Cluster smoke (issue 21, part of `make test`): a Redis Cluster of three masters with a replica each, started by
the stack's own code (skewless/stack/cluster.py) on free ports, and the compiled streaming job at parallelism 2 on
a MiniCluster of two TaskManagers writing a small stream into it through the Jedis sink (writes grouped by hash slot, pipelined per
master, WAIT before the end of input is acknowledged). The values read back equal the oracle, the entities' hashes
sit on every master, and each master's replica holds the same hashes (the sink waited for them).

The read goes through the reference reader (``tests/support/reference_reader.py``, layout v2) with redis-py's
``RedisCluster``; the SDK's cluster-aware read (issue 21, helper id's branch) replaces it at merge."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
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


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """The stack's Redis Cluster (3 masters + 3 replicas, its AOF settings) on a free block of ports."""
    cluster = RedisCluster(port=int(free_cluster_ports_env()["SKEWLESS_REDIS_PORT"]))
    root = tmp_path_factory.mktemp("redis-cluster")
    started = cluster.start(root / "state", root / "logs")
    try:
        wait_until(lambda: not cluster.problems(), 90, "redis cluster (3 masters with a replica each)")
        yield cluster
    finally:
        cluster.stop(started)


def seeds(cluster: RedisCluster) -> tuple[str, ...]:
    return tuple(f"127.0.0.1:{p}" for p in cluster.node_ports)


def cluster_client(cluster: RedisCluster) -> Any:
    from redis.cluster import ClusterNode, RedisCluster as RedisClusterClient

    return RedisClusterClient(startup_nodes=[ClusterNode("127.0.0.1", p) for p in cluster.node_ports],
                              socket_timeout=10, socket_connect_timeout=5)


def run_job(bootstrap: str, topic: str, redis_url: str, project: str, checkpoint_dir: Path) -> None:
    """The compiled view at parallelism 2 on a MiniCluster of two TaskManagers with one slot each (so the sink's
    two subtasks run in different TaskManagers), bounded at the topic's current end."""
    from skewless.engines.flink_env import create_stream_env
    from streaming_jobs.flink_compiler import compile_repository
    from streaming_jobs.job import JobOptions, add_source_job
    from streaming_jobs.run_view import stream_conf

    (job,) = compile_repository(load_repository(), [VIEW])
    env, t_env = create_stream_env(parallelism=PARALLELISM, checkpoint_dir=checkpoint_dir, checkpoint_interval="2 s",
                                   extra_conf={**stream_conf("500 ms", 10_000), "taskmanager.numberOfTaskSlots": "1",
                                               "minicluster.number-of-taskmanagers": str(PARALLELISM)})
    add_source_job(env, t_env, job, JobOptions(
        bootstrap=bootstrap, redis_url=redis_url, project=project, repo_path="feature_defs", topic=topic,
        bounded=True, ns=f"sk_{uuid.uuid4().hex[:8]}", applied_from_ms=0, flush_ms=100))
    env.execute(f"test-cluster-smoke-{project}")


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
    raw = read_topic(kafka_bootstrap, topic, len(records))
    admitted = list(admission.admit(raw, source, validator(source.schema), key_fields=view.entity.key_names).admitted)

    project = f"c{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    run_job(kafka_bootstrap, topic, cluster_url(seeds(redis_cluster)), project, tmp_path / "ckpt")
    print(f"\ncluster smoke: the job over {len(records)} records took {time.monotonic() - started:.1f} s")

    client = cluster_client(redis_cluster)
    users = sorted({e["user_id"] for e in admitted})
    end = max(e["event_time"] for e in admitted) + 1
    got = read_windowed(client, project, [f"{VIEW}:{f}" for f in STREAM_FEATURES], users, repo=repo, now_ms=end)
    for i, user in enumerate(users):
        for feature in STREAM_FEATURES:
            want = oracle.feature_value(view, feature, admitted, (user,), end, now_read=True)
            assert got.entities[VIEW][i].features[feature] == (want, "present"), (user, feature)
    assert sorted(got.progress[source.name]) == [0, 1, 2, 3]

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
