"""The cluster parity run's topology assertions (skewless/e2e/parity_cluster.py) reject a one-node or local case,
each with one line, and accept the spread a cluster gives. Fakes stand in for Redis, Flink's and Spark's REST APIs;
the Iceberg case is a real PyIceberg catalog on a local warehouse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from skewless.e2e import parity_cluster as pc
from skewless.e2e.parity import Check


def one_line(check: Check) -> bool:
    return "\n" not in check.detail and "\n" not in check.name


# --- Redis: the compared entities' keys on >= 2 masters ------------------------------------------------------


class FakeNode:
    def __init__(self, name: str, keys: set[bytes]) -> None:
        self.name, self.keys = name, keys
        self.redis_connection = self

    def exists(self, key: bytes) -> int:
        return int(key in self.keys)


class FakeNodesManager:
    def __init__(self, owner_of: Any) -> None:
        self.owner_of = owner_of

    def get_node_from_slot(self, slot: int) -> FakeNode:
        return self.owner_of(slot)


class FakeCluster(RedisCluster):
    """A cluster client whose slot map is ``owner_of(slot)`` (no server)."""

    def __init__(self, owner_of: Any) -> None:  # noqa: D107 - no RedisCluster.__init__: nothing to connect to
        self.nodes_manager = FakeNodesManager(owner_of)

    def cluster_keyslot(self, key: bytes) -> int:
        return key_slot(key)


class FakeSingleRedis:
    def execute_command(self, *args: Any) -> Any:
        raise redis.ResponseError("ERR This instance has cluster support disabled")


KEYS = [f"p:user_order_stats:v1:{{u{i}}}".encode() for i in range(30)]


def test_keys_on_one_redis_fail_with_one_line() -> None:
    check = pc.masters_check(pc.key_masters(FakeSingleRedis(), KEYS))
    assert not check.ok and one_line(check)
    assert "1 master(s)" in check.detail and "not a Redis Cluster" in check.detail


def test_a_cluster_whose_slots_all_sit_on_one_master_fails() -> None:
    node = FakeNode("127.0.0.1:7000", set(KEYS))
    check = pc.masters_check(pc.key_masters(FakeCluster(lambda slot: node), KEYS))
    assert not check.ok and one_line(check) and "127.0.0.1:7000: 30" in check.detail


def test_keys_over_three_masters_pass_and_a_key_missing_on_its_master_fails() -> None:
    nodes = [FakeNode(f"127.0.0.1:{7000 + i}", set(KEYS)) for i in range(3)]
    cluster = FakeCluster(lambda slot: nodes[slot * 3 // 16384])
    check = pc.masters_check(pc.key_masters(cluster, KEYS))
    assert check.ok and "over 3 masters" in check.detail, check
    nodes[0].keys.clear()  # the keys the slot map puts on node 0 are not there (written elsewhere, or lost)
    lost = pc.masters_check(pc.key_masters(cluster, KEYS))
    assert not lost.ok and one_line(lost) and "on no master of their slot" in lost.detail


def test_no_keys_fail() -> None:
    assert not pc.masters_check({}).ok


# --- Flink: the job's subtasks on >= 2 TaskManagers -----------------------------------------------------------


def fake_flink(monkeypatch: pytest.MonkeyPatch, placement: dict[str, list[str]]) -> None:
    """A REST API whose job has one vertex per ``placement`` entry (vertex id -> TaskManager per subtask)."""
    def get_json(url: str) -> Any:
        if url.endswith("/jobs/j1"):
            return {"vertices": [{"id": v, "name": f"vertex {v}", "parallelism": len(tms)} for v, tms in placement.items()]}
        vid = url.rsplit("/", 1)[1]
        return {"subtasks": [{"subtask": i, "taskmanager-id": tm} for i, tm in enumerate(placement[vid])]}
    monkeypatch.setattr(pc, "get_json", get_json)


def test_a_job_on_one_taskmanager_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_flink(monkeypatch, {"src": ["tm-a"] * 4, "sink": ["tm-a"] * 4})
    check = pc.taskmanagers_check(pc.job_vertices("http://flink", "j1"), 4)
    assert not check.ok and one_line(check) and "on 1 TaskManager(s)" in check.detail


def test_a_job_at_parallelism_one_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_flink(monkeypatch, {"src": ["tm-a"], "sink": ["tm-b"]})
    check = pc.taskmanagers_check(pc.job_vertices("http://flink", "j1"), 4)
    assert not check.ok and one_line(check) and "parallelism 1, want 4" in check.detail


def test_a_job_spread_over_two_taskmanagers_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_flink(monkeypatch, {"src": ["tm-a", "tm-a", "tm-b", "tm-b"], "sink": ["tm-b", "tm-a", "tm-a", "tm-b"]})
    check = pc.taskmanagers_check(pc.job_vertices("http://flink", "j1"), 4)
    assert check.ok and "2 TaskManagers" in check.detail, check


def test_a_vertex_of_several_subtasks_on_one_taskmanager_fails_even_if_others_spread() -> None:
    vertices = [pc.Vertex("src", 4, ("a", "b", "a", "b")), pc.Vertex("sink", 2, ("a", "a"))]
    check = pc.taskmanagers_check(vertices, 4)
    assert not check.ok and "'sink'" in check.detail


# --- Iceberg: every path s3:// --------------------------------------------------------------------------------


def test_a_local_warehouse_fails_with_the_first_local_path(tmp_path: Path) -> None:
    """A real PyIceberg catalog on a local warehouse: its table's paths are file:, so the check fails."""
    import pyarrow as pa

    from skewless.engines.iceberg_catalog import load_catalog

    catalog = load_catalog(catalog_db=tmp_path / "catalog.db", warehouse=tmp_path / "warehouse")
    catalog.create_namespace("raw")
    table = catalog.create_table("raw.orders", schema=pa.schema([("x", pa.int64())]))
    table.append(pa.table({"x": [1, 2]}))
    paths = pc.table_paths(catalog)
    assert set(paths) == {"raw.orders"} and len(paths["raw.orders"]) >= 5  # metadata, location, list, manifest, data
    check = pc.s3_paths_check(paths, "s3://skewless-warehouse/parity/run")
    assert not check.ok and one_line(check) and "file:" in check.detail
    assert not pc.s3_paths_check(paths, (tmp_path / "warehouse").as_uri()).ok  # a local warehouse is no object store


def test_s3_paths_pass_and_one_local_manifest_fails() -> None:
    prefix = "s3://b/parity/r"
    good = {"raw.orders": [f"{prefix}/raw/orders/metadata/00001.metadata.json", f"{prefix}/raw/orders/data/a.parquet"]}
    assert pc.s3_paths_check(good, prefix).ok
    bad = {**good, "features.t": [f"{prefix}/features/t/metadata/1.json", "/tmp/wh/features/t/metadata/snap-1.avro"]}
    check = pc.s3_paths_check(bad, prefix)
    assert not check.ok and one_line(check) and "features.t" in check.detail and "/tmp/wh" in check.detail
    assert not pc.s3_paths_check({}, prefix).ok


# --- Spark: the backfill's tasks on >= 2 workers --------------------------------------------------------------


def fake_spark_master(monkeypatch: pytest.MonkeyPatch, launched: dict[str, list[str]]) -> None:
    """A master whose workers (worker id -> executor ids of app-1) answer /json/."""
    def get_json(url: str) -> Any:
        if url == "http://master/json/":
            return {"workers": [{"id": w, "state": "ALIVE", "webuiaddress": f"http://{w}"} for w in launched]}
        worker = url.split("//", 1)[1].split("/", 1)[0]
        return {"executors": [{"id": int(e), "appid": "app-1"} for e in launched[worker]]
                + [{"id": 9, "appid": "app-other"}], "finishedexecutors": []}
    monkeypatch.setattr(pc, "get_json", get_json)


def test_a_local_master_fails() -> None:
    """local[N]: no worker launched any executor; tasks ran in the driver."""
    tasks = pc.tasks_per_worker({"driver": 0}, {"driver": 40}, {})
    check = pc.workers_check(tasks)
    assert not check.ok and one_line(check) and "0 worker(s)" in check.detail


def test_tasks_on_one_worker_fail_and_on_two_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_spark_master(monkeypatch, {"worker-a": ["0"], "worker-b": ["1"]})
    placed = pc.executor_workers("http://master", "app-1")
    assert placed == {"0": "worker-a", "1": "worker-b"}
    one = pc.workers_check(pc.tasks_per_worker({"0": 5, "1": 3}, {"0": 25, "1": 3}, placed))
    assert not one.ok and one_line(one) and "worker-b: 0" in one.detail
    two = pc.workers_check(pc.tasks_per_worker({"0": 5, "1": 3}, {"0": 25, "1": 9}, placed))
    assert two.ok and "worker-a: 20, worker-b: 6" in two.detail


# --- the running topology ----------------------------------------------------------------------------------------


class FakeService:
    def __init__(self, ok: bool) -> None:
        self.ok = ok

    def healthy(self) -> bool:
        if self.ok is None:
            raise OSError("refused")
        return self.ok


NAMES = ("kafka-cluster", "redis-cluster")


def test_the_cluster_not_running_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    profile = tmp_path / "cluster-profile.yaml"
    profile.write_text("profiles: {}\n")
    cases = {
        "no stack": None,
        "single": {"topology": "single", "services": [{"name": "kafka", "ports": {}}]},
        "partial": {"topology": "cluster", "services": [{"name": "kafka-cluster", "ports": {}}]},
    }
    for case, record in cases.items():
        with pytest.raises(pc.ClusterNotReady) as err:
            pc.running_cluster(record, profile, lambda n, p: FakeService(True), NAMES)
        assert "\n" not in str(err.value) and "make up TOPOLOGY=cluster" in str(err.value), case
    whole = {"topology": "cluster", "services": [{"name": n, "ports": {}} for n in NAMES]}
    with pytest.raises(pc.ClusterNotReady, match="profile .* is missing"):
        pc.running_cluster(whole, tmp_path / "absent.yaml", lambda n, p: FakeService(True), NAMES)
    with pytest.raises(pc.ClusterNotReady, match="not healthy: redis-cluster"):
        pc.running_cluster(whole, profile, lambda n, p: FakeService(n != "redis-cluster" or None), NAMES)
    assert set(pc.running_cluster(whole, profile, lambda n, p: FakeService(True), NAMES)) == set(NAMES)


def test_the_command_without_the_cluster_topology_is_one_line(tmp_path: Path) -> None:
    """`skewless parity --topology cluster` with no stack running: exit 2, one line naming the fix, nothing started."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("SKEWLESS_")} | {"SKEWLESS_STATE_DIR": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "skewless.cli", "parity", "--topology", "cluster", "--seed", "3"],
                         env=env, capture_output=True, text=True, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "no stack runs" in lines[0] and "make up TOPOLOGY=cluster" in lines[0]
    assert not (tmp_path / "parity").exists()
    flags = subprocess.run([sys.executable, "-m", "skewless.cli", "parity", "--topology", "cluster", "--minicluster"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert flags.returncode == 2 and "drop --bootstrap/--redis-url/--minicluster" in flags.stderr
