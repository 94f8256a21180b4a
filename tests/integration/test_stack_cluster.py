"""`skewless stack up --topology cluster` end to end, on free ports and a temporary state dir: 3 Kafka brokers
(a topic made with the brokers' defaults has RF 3 and min ISR 2), a Redis Cluster of 3 masters with a replica
each, Flink with 2 TaskManagers x 2 slots, the offline half (s3proxy, PostgreSQL as the Iceberg JDBC catalog, a
Spark master with 2 workers: a table written through PyIceberg into s3:// and read back by Spark tasks on both
workers), nothing listening beyond loopback; `stack down` stops every pid."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from skewless.engines.kafka import wait_for_partitions
from skewless.stack.archive import kafka_fed_sources
from skewless.stack.base import free_port, port_in_use
from skewless.stack.cluster import free_cluster_ports_env
from skewless.stack.procs import descendants, pid_alive
from tests.integration.test_offline_s3 import bad_offline_cases

pytestmark = pytest.mark.integration  # ~40 s on 2 cores: part of `make test`

UP_TIMEOUT_S = 600
_SS_PID = re.compile(r"pid=(\d+)")


@pytest.fixture
def cluster_env() -> Iterator[dict[str, str]]:
    """A private cluster stack's environment (free port blocks, a fresh state dir); `down` always runs after.

    The state dir is a folder of /tmp that others may traverse (0711), not pytest's tmp_path (0700): PostgreSQL
    runs as the postgres user and must reach its data dir."""
    root = Path(tempfile.mkdtemp(prefix="skewless-cluster-"))
    root.chmod(0o711)
    env = {**os.environ, "SKEWLESS_STATE_DIR": str(root / "state"), **free_cluster_ports_env()}
    env.pop("SKEWLESS_LOG_DIR", None)
    for name in ("SKEWLESS_CONFIG", "SKEWLESS_PROFILE", "SKEWLESS_SPARK_MASTER", "SKEWLESS_CATALOG_DB", "SKEWLESS_WAREHOUSE"):
        env.pop(name, None)
    yield env
    skewless(env, "stack", "down")
    shutil.rmtree(root, ignore_errors=True)


# Run in a child process with the written profile: a table through PyIceberg on the PostgreSQL catalog into the
# s3:// warehouse (four appends: four data files), then a Spark job on the standalone master reading it back
# through Iceberg's S3 FileIO, one task per file; prints what the test checks as JSON.
OFFLINE_PROBE = """
import json, os
import pyarrow as pa
from skewless import config
from skewless.engines.iceberg_catalog import load_catalog
from skewless.engines.spark_session import spark_session

catalog = load_catalog()
catalog.create_namespace_if_not_exists("smoke")
table = catalog.create_table("smoke.events", schema=pa.schema([("id", pa.int64()), ("v", pa.string())]))
for i in range(4):
    table.append(pa.table({"id": list(range(100 * i, 100 * (i + 1))), "v": [f"v{i}"] * 100}))
table = catalog.load_table("smoke.events")
io = table.io
paths = [table.metadata_location, table.location(), *(e.metadata_file for e in table.metadata.metadata_log)]
for snapshot in table.metadata.snapshots:
    paths.append(snapshot.manifest_list)
    for manifest in snapshot.manifests(io):
        paths.append(manifest.manifest_path)
        paths += [e.data_file.file_path for e in manifest.fetch_manifest_entry(io)]

spark = spark_session("cluster-smoke", master=config.spark_master("local[1]"), driver_memory="512m", extra_conf={
    "spark.executor.memory": "512m", "spark.executor.cores": "1", "spark.cores.max": "2",
    "spark.scheduler.minRegisteredResourcesRatio": "1.0", "spark.scheduler.maxRegisteredResourcesWaitingTime": "90s"})
frame = spark.read.option("file-open-cost", str(256 << 20)).table("skewless.smoke.events")

def where(rows):
    yield os.getcwd(), sum(r.id for r in rows)

tasks = frame.rdd.mapPartitions(where).collect()
print(json.dumps({"paths": paths, "tasks": tasks, "master": spark.sparkContext.master,
                  "total": spark.sql("SELECT sum(id) FROM skewless.smoke.events").collect()[0][0]}))
spark.stop()
"""


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
        "kafka-cluster": 3, "flink-cluster": 3, "redis-cluster": 6, "object-store": 1, "catalog-db": 1, "spark-cluster": 3}
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
    assert "topology: cluster" in table and table.count("  node ") == 17, table

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
    deadline = time.monotonic() + 30  # a broker that has not learned of the topic yet answers with no partitions
    while not ((partitions := admin.list_topics(topic, timeout=30).topics[topic].partitions) and len(partitions) == 3
               and all(len(p.replicas) == 3 for p in partitions.values())) and time.monotonic() < deadline:
        time.sleep(0.2)
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

    # the archives write through the profile's shared catalog (PostgreSQL, s3:// warehouse), not a local sqlite one
    assert all(rows[name]["endpoints"]["table"].startswith("postgres catalog postgresql://") for name in archives), rows
    listed = subprocess.run([sys.executable, "-c", "from skewless.engines.iceberg_catalog import load_catalog; "
                             "c = load_catalog(); print('\\n'.join('.'.join(t) + ' ' + c.load_table(t).location() "
                             "for ns in c.list_namespaces() for t in c.list_tables(ns)))"],
                            env=plain, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    shared_tables = dict(line.split(" ", 1) for line in listed.stdout.splitlines())
    raw_tables = {s.name: s.table for s in kafka_fed_sources()}
    for name in archives:
        table = raw_tables[name[len("archive-"):]]
        assert shared_tables.get(table, "").startswith("s3://skewless-warehouse/"), (table, shared_tables)

    # the offline half, through the same profile: PyIceberg on the PostgreSQL catalog writes into s3:// on s3proxy,
    # Spark's standalone master runs the read-back on both workers through Iceberg's S3 FileIO
    spark_base = int(cluster_env["SKEWLESS_SPARK_MASTER_PORT"])
    offline = subprocess.run([sys.executable, "-c", OFFLINE_PROBE], env=plain, capture_output=True, text=True,
                             timeout=400)
    assert offline.returncode == 0, offline.stderr[-4000:]
    result = json.loads(offline.stdout.strip().splitlines()[-1])
    assert result["master"] == f"spark://127.0.0.1:{spark_base}"
    assert len(result["paths"]) > 10 and all(p.startswith("s3://skewless-warehouse/warehouse/") for p in result["paths"])
    assert result["total"] == sum(range(400))
    worker_dirs = {Path(cwd).relative_to(state / "spark-cluster").parts[0] for cwd, _ in result["tasks"]}
    assert worker_dirs == {"worker-1", "worker-2"}, result["tasks"]  # the executors' work dirs: both workers ran tasks
    assert sorted(total for _, total in result["tasks"]) == sorted(sum(range(100 * i, 100 * (i + 1))) for i in range(4))
    # the objects are in s3proxy's filesystem backend, and the catalog's rows in PostgreSQL
    stored = state / "object-store" / "data" / "skewless-warehouse" / "warehouse" / "smoke.db" / "events"
    assert len(list((stored / "data").glob("*.parquet"))) == 4 and list((stored / "metadata").glob("*.metadata.json"))
    secrets_dir = state / "secrets"
    assert all(oct(f.stat().st_mode)[-3:] == "600" for f in secrets_dir.iterdir())
    secret_values = [f.read_text().strip() for f in secrets_dir.iterdir()]
    logged = "".join(f.read_text(errors="replace") for f in (state / "logs").glob("*.log")) + up.stdout + offline.stdout
    assert not any(v in logged for v in secret_values)  # credentials: in 0600 files only, never in logs or output
    cmdlines = [Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace") for p in every_pid if pid_alive(p)]
    assert not any(v in c for v in secret_values for c in cmdlines)  # nor in any started process's argv

    # bad input on the offline half: one line naming the component and the fix, exit 2, no secret, no hang
    import yaml

    good = yaml.safe_load(profile.read_text())["profiles"]["cluster"]
    free = free_port()
    cases = {
        **bad_offline_cases(good, free),
        "bad catalog password": ({"catalog": {**good["catalog"], "password": {"env": "WRONG_PG_PASSWORD"}}},
                                 {"WRONG_PG_PASSWORD": "not-the-password"}, "password authentication failed"),
    }
    for case, (override, extra_env, message) in cases.items():
        bad = state / f"bad-{case.replace(' ', '-')}.yaml"
        bad.write_text(yaml.safe_dump({"default_profile": "cluster", "profiles": {"cluster": {**good, **override}}}))
        res = skewless(plain | {"SKEWLESS_CONFIG": str(bad)} | extra_env, "archive", "status", timeout=60)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and message in lines[0] and "fix" in lines[0], (case, res.stderr)
        assert not any(v in res.stderr + res.stdout for v in secret_values), case

    # loopback only: every listening socket of every started process (and its children)
    ours = every_pid | {d for p in every_pid for d in descendants(p)}
    sockets = listening(ours)
    assert sockets and all(address in ("127.0.0.1", "[::ffff:127.0.0.1]") for address, _, _ in sockets), sockets
    expected = {kafka_base + i for i in range(6)} | {redis_base + i for i in range(6)}
    expected |= {redis_base + 10000 + i for i in range(6)} | {int(cluster_env["SKEWLESS_FLINK_REST_PORT"])}
    expected |= {int(cluster_env["SKEWLESS_S3_PORT"]), int(cluster_env["SKEWLESS_POSTGRES_PORT"])}
    expected |= {spark_base + i for i in range(4)}  # the master, its web UI, the workers' web UIs
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
