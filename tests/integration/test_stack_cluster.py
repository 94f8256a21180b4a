"""`skewless stack up --topology cluster` end to end, on free ports and a temporary state dir: 3 Kafka brokers
(a topic made with the brokers' defaults has RF 3 and min ISR 2), a Redis Cluster of 3 masters with a replica
each, Flink with 2 TaskManagers x 2 slots, nothing listening beyond loopback; `stack down` stops every pid."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from skewless.engines.kafka import wait_for_partitions
from skewless.stack.base import port_in_use
from skewless.stack.cluster import free_cluster_ports_env
from skewless.stack.procs import descendants, pid_alive

pytestmark = pytest.mark.integration  # ~40 s on 2 cores: part of `make test`

UP_TIMEOUT_S = 600
_SS_PID = re.compile(r"pid=(\d+)")


@pytest.fixture
def cluster_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private cluster stack's environment (free port blocks, state under tmp_path); `down` always runs after."""
    env = {**os.environ, "SKEWLESS_STATE_DIR": str(tmp_path / "state"), **free_cluster_ports_env()}
    env.pop("SKEWLESS_LOG_DIR", None)
    yield env
    skewless(env, "stack", "down")


def skewless(env: dict[str, str], *args: str, timeout: float = UP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "skewless.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def listening(pids: set[int]) -> list[tuple[str, int, int]]:
    """(local address, port, pid) of every TCP socket listening in ``pids``, from `ss -ltnpH`."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=30, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        address, _, port = fields[3].rpartition(":")
        for pid in map(int, _SS_PID.findall(line)):
            if pid in pids:
                found.append((address, int(port), pid))
    return found


def test_cluster_topology_up_status_down(cluster_env: dict[str, str]) -> None:
    import redis
    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

    up = skewless(cluster_env, "stack", "up", "--topology", "cluster")
    assert up.returncode == 0, up.stdout + up.stderr
    state = Path(cluster_env["SKEWLESS_STATE_DIR"])
    record = json.loads((state / "stack.json").read_text())
    assert record["topology"] == "cluster"
    pids = {s["name"]: [p["pid"] for p in s["pids"]] for s in record["services"]}
    archives = {name for name in pids if name.startswith("archive-")}
    assert archives, f"no raw archive started on the cluster: {sorted(pids)}"  # Kafka-fed sources are archived
    assert {name: len(ps) for name, ps in pids.items() if name not in archives} == {
        "kafka-cluster": 3, "flink-cluster": 3, "redis-cluster": 6}
    every_pid = {p for ps in pids.values() for p in ps}
    assert all(pid_alive(p) for p in every_pid)

    # status: every node with its role, port, pid and RSS
    status = skewless(cluster_env, "stack", "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    rows = {r["name"]: r for r in json.loads(status.stdout)}
    for name, row in rows.items():
        assert row["healthy"], f"{name} not healthy: {row}"
        if name in archives:
            continue  # one process, no nodes
        assert [n["pid"] for n in row["nodes"]] == pids[name]
        assert all(n["running"] and n["rss"] > 1_000_000 for n in row["nodes"]), row["nodes"]
    redis_roles = sorted(n["role"].split()[0] for n in rows["redis-cluster"]["nodes"])
    assert redis_roles == ["master"] * 3 + ["replica"] * 3
    table = skewless(cluster_env, "stack", "status").stdout
    assert "topology: cluster" in table and table.count("  node ") == 12, table

    # Kafka: three brokers; a topic made with the brokers' defaults has RF 3 and min ISR 2
    kafka_base = int(cluster_env["SKEWLESS_KAFKA_PORT"])
    bootstrap = ",".join(f"127.0.0.1:{kafka_base + 2 * i}" for i in range(3))
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000})
    metadata = admin.list_topics(timeout=30)
    assert sorted(metadata.brokers) == [1, 2, 3]
    assert sorted(b.port for b in metadata.brokers.values()) == [kafka_base, kafka_base + 2, kafka_base + 4]
    topic = f"rf-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, num_partitions=3)])[topic].result(timeout=60)
    wait_for_partitions(admin, {topic: 3}, timeout_s=30)  # the answering broker may learn of it a moment later
    partitions = admin.list_topics(topic, timeout=30).topics[topic].partitions
    assert len(partitions) == 3 and all(len(p.replicas) == 3 for p in partitions.values()), partitions
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    assert configs["min.insync.replicas"].value == "2"
    # the sources' topics that `stack up` created (skewless.engines.kafka.create_topics) are replicated too
    source_topics = [t for t in admin.list_topics(timeout=30).topics if not t.startswith(("_", "rf-"))]
    assert source_topics, "stack up created no source topic"
    for t in source_topics:
        parts = admin.list_topics(t, timeout=30).topics[t].partitions
        assert all(len(p.replicas) == 3 for p in parts.values()), (t, parts)

    # Redis: six nodes in cluster_state ok; redis-py's cluster client sees 3 primaries, each with a replica
    redis_base = int(cluster_env["SKEWLESS_REDIS_PORT"])
    for port in range(redis_base, redis_base + 6):
        node = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, decode_responses=True)
        assert "cluster_state:ok" in node.execute_command("CLUSTER", "INFO")
        node.close()
    client = redis.RedisCluster(host="127.0.0.1", port=redis_base, socket_timeout=5, decode_responses=True)
    primaries, replicas = client.get_primaries(), client.get_replicas()
    assert len(primaries) == 3 and len(replicas) == 3
    roles = [client.execute_command("ROLE", target_nodes=r) for r in replicas]  # [slave, host, port, ...]
    assert {f"{role[1]}:{role[2]}" for role in roles} == {f"127.0.0.1:{p.port}" for p in primaries}, roles
    for i in range(50):  # keys spread over every master
        client.set(f"k{i}", i)
    assert [int(client.get(f"k{i}")) for i in range(50)] == list(range(50))
    assert all(client.dbsize(target_nodes=p) > 0 for p in primaries)
    client.close()

    # Flink: 2 TaskManagers with 2 slots each
    rest = f"http://127.0.0.1:{cluster_env['SKEWLESS_FLINK_REST_PORT']}"
    with urllib.request.urlopen(f"{rest}/taskmanagers", timeout=10) as r:
        tms = json.loads(r.read())["taskmanagers"]
    assert [tm["slotsNumber"] for tm in tms] == [2, 2]
    assert len(list((state / "logs" / "flink").glob("flink-skewless-taskexecutor-*.log"))) == 2  # one log each

    # the profile of this topology (docs/deploy.md): with it and no port variable, commands find every node
    profile = state / "cluster-profile.yaml"
    assert f"SKEWLESS_CONFIG={profile}" in up.stdout
    plain = {k: v for k, v in cluster_env.items() if not k.endswith("_PORT")} | {"SKEWLESS_CONFIG": str(profile)}
    jobs = skewless(plain, "jobs", timeout=120)  # Flink's REST endpoint from the profile
    assert jobs.returncode == 0, jobs.stdout + jobs.stderr
    probe = subprocess.run([sys.executable, "-c", "from skewless import config; t = config.redis_target(); "
                            "print(t.cluster, ','.join(t.nodes)); print(config.kafka_bootstrap())"],
                           env=plain, capture_output=True, text=True, timeout=60)
    nodes = ",".join(f"127.0.0.1:{redis_base + i}" for i in range(6))
    assert probe.stdout.splitlines() == [f"True {nodes}", bootstrap], probe.stderr

    # loopback only: every listening socket of every started process (and its children)
    ours = every_pid | {d for p in every_pid for d in descendants(p)}
    sockets = listening(ours)
    assert sockets and all(address in ("127.0.0.1", "[::ffff:127.0.0.1]") for address, _, _ in sockets), sockets
    expected = {kafka_base + i for i in range(6)} | {redis_base + i for i in range(6)}
    expected |= {redis_base + 10000 + i for i in range(6)} | {int(cluster_env["SKEWLESS_FLINK_REST_PORT"])}
    assert expected <= {port for _, port, _ in sockets}

    down = skewless(cluster_env, "stack", "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(pid_alive(p) for p in ours)
    assert not (state / "stack.json").exists() and not profile.exists()
    assert not any(port_in_use(p) for p in expected)


def test_redis_cluster_rejoins_on_kept_data_and_refuses_a_partial_one(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from skewless.stack import manager
    from skewless.stack.cluster import RedisCluster

    monkeypatch.setenv("SKEWLESS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("SKEWLESS_LOG_DIR", raising=False)
    base = int(free_cluster_ports_env()["SKEWLESS_REDIS_PORT"])
    out = io.StringIO()
    try:
        assert manager.up([RedisCluster(port=base)], out=out) == 0, out.getvalue()
        first = RedisCluster(port=base).cluster_nodes()
        assert manager.down(out=out) == 0

        assert manager.up([RedisCluster(port=base)], out=out) == 0, out.getvalue()  # same nodes, no new create
        assert {n.node_id for n in RedisCluster(port=base).cluster_nodes()} == {n.node_id for n in first}
        assert manager.down(out=out) == 0

        data = tmp_path / "state" / "redis-cluster"
        (data / str(base + 5) / "nodes.conf").unlink()  # one node forgot the cluster
        failed = io.StringIO()
        assert manager.up([RedisCluster(port=base)], out=failed) == 1
        assert "holds a partly formed cluster" in failed.getvalue() and f"rm -rf {data}" in failed.getvalue()
        assert not any(port_in_use(base + i) for i in range(6))  # the failed start stopped its nodes
    finally:
        manager.down(out=out)
