"""Stack logic without JVMs: config/port mapping, preflight, pid handling, rollback on failure."""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skewless import config
from skewless.stack import manager
from skewless.stack.base import Service, StackError, Started, free_port
from skewless.stack.cluster import (
    KafkaCluster,
    Node,
    NodeService,
    RedisCluster,
    cluster_problems,
    free_cluster_ports_env,
    parse_cluster_nodes,
)
from skewless.stack.kafka import KafkaBroker
from skewless.stack.procs import log_tail, pid_alive, rss_bytes, spawn, start_time, stop_pids, wait_until
from skewless.stack.redis import REDIS_CONF, RedisServer, redis_args

PORT_VARS = ("SKEWLESS_KAFKA_PORT", "SKEWLESS_KAFKA_CONTROLLER_PORT", "SKEWLESS_FLINK_REST_PORT", "SKEWLESS_REDIS_PORT",
             "SKEWLESS_S3_PORT", "SKEWLESS_POSTGRES_PORT", "SKEWLESS_SPARK_MASTER_PORT")


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SKEWLESS_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("SKEWLESS_LOG_DIR", raising=False)
    return tmp_path


class Sleeper(Service):
    """A fake service: a `sleep` process; healthy when told so."""

    start_timeout_s = 3.0

    def __init__(self, name: str, port: int, healthy: bool = True) -> None:
        self.name, self.port, self._healthy = name, port, healthy
        self.pids: list[int] = []

    def ports(self) -> dict[str, int]:
        return {"main": self.port}

    def start(self, state_dir: Path, log_dir: Path) -> Started:
        pid = spawn(["sleep", "300"], log_dir / f"{self.name}.log")
        self.pids.append(pid)
        return Started(self.name, (pid,), {"url": f"fake://{self.port}"}, log_dir / f"{self.name}.log")

    def healthy(self) -> bool:
        return self._healthy


def test_every_port_has_its_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    for i, var in enumerate(PORT_VARS):
        monkeypatch.setenv(var, str(40000 + i))
    mapping = manager.port_env_vars()
    assert mapping == {40000 + i: var for i, var in enumerate(PORT_VARS)}


def test_services_read_ports_from_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKEWLESS_KAFKA_PORT", "41001")
    monkeypatch.setenv("SKEWLESS_KAFKA_CONTROLLER_PORT", "41002")
    monkeypatch.setenv("SKEWLESS_REDIS_PORT", "41003")
    assert KafkaBroker().ports() == {"broker": 41001, "controller": 41002}
    assert KafkaBroker().bootstrap == "127.0.0.1:41001"
    assert RedisServer().url == "redis://127.0.0.1:41003/0"
    assert KafkaBroker(port=5, controller_port=6).ports() == {"broker": 5, "controller": 6}


def test_bad_port_env_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKEWLESS_REDIS_PORT", "six")
    with pytest.raises(ValueError, match="SKEWLESS_REDIS_PORT"):
        config.ports()


def test_taken_port_names_service_port_and_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        monkeypatch.setenv("SKEWLESS_REDIS_PORT", str(port))
        problems = manager.port_problems([RedisServer()])
    assert len(problems) == 1
    assert "redis" in problems[0] and str(port) in problems[0] and "SKEWLESS_REDIS_PORT" in problems[0]


def test_port_configured_twice_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("SKEWLESS_KAFKA_PORT", str(port))
    monkeypatch.setenv("SKEWLESS_REDIS_PORT", str(port))
    problems = manager.port_problems([KafkaBroker(), RedisServer()])
    assert any("redis" in p and "also configured for kafka" in p for p in problems), problems


def test_redis_argv_uses_repo_config() -> None:
    assert REDIS_CONF.exists()
    assert redis_args(1234, "/d") == ["--port", "1234", "--dir", "/d"]
    text = REDIS_CONF.read_text()
    assert "bind 127.0.0.1" in text and "appendonly yes" in text and "appendfsync everysec" in text


def test_kafka_template_is_loopback_only() -> None:
    text = (config.PROJECT_ROOT / "infra" / "kafka" / "server.properties").read_text()
    listeners = [line for line in text.splitlines() if line.startswith(("listeners=", "advertised.listeners="))]
    assert listeners and all("0.0.0.0" not in line and "127.0.0.1" in line for line in listeners)
    assert "auto.create.topics.enable=false" in text


def test_spawn_stop_and_pid_identity(tmp_path: Path) -> None:
    pid = spawn([sys.executable, "-c", "print('hello', flush=True); import time; time.sleep(300)"], tmp_path / "x.log")
    wait_until(lambda: log_tail(tmp_path / "x.log").endswith("hello"), 20, "child output")
    assert pid_alive(pid) and start_time(pid) is not None and rss_bytes([pid]) > 0
    stop_pids([pid], timeout_s=5)
    assert not pid_alive(pid)
    stop_pids([pid], timeout_s=1)  # already gone: a no-op


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(300)"
    pid = spawn([sys.executable, "-c", code], tmp_path / "stubborn.log")
    wait_until(lambda: log_tail(tmp_path / "stubborn.log").endswith("ready"), 20, "child ready")
    t0 = time.monotonic()
    stop_pids([pid], timeout_s=1)
    assert not pid_alive(pid) and time.monotonic() - t0 < 6


def test_stop_takes_the_process_group(tmp_path: Path) -> None:
    pid = spawn(["bash", "-c", "sleep 300 & echo child=$!; wait"], tmp_path / "g.log")
    wait_until(lambda: log_tail(tmp_path / "g.log").rstrip()[-1].isdigit(), 20, "grandchild")
    child = int(log_tail(tmp_path / "g.log").split("child=")[-1].split()[0])
    stop_pids([pid], timeout_s=5)
    wait_until(lambda: not pid_alive(child), 5, "grandchild gone")


def test_wait_until_messages() -> None:
    with pytest.raises(StackError, match="widget not ready after 0 s"):
        wait_until(lambda: False, 0.2, "widget", interval_s=0.05)
    with pytest.raises(StackError, match="widget: it crashed"):
        wait_until(lambda: False, 10, "widget", interval_s=0.05, abort_if=lambda: "it crashed")


def test_up_then_down_with_fake_services(state: Path) -> None:
    a, b = Sleeper("alpha", free_port()), Sleeper("beta", free_port())
    out = io.StringIO()
    assert manager.up([a, b], out=out) == 0, out.getvalue()
    record = json.loads((state / "stack.json").read_text())
    assert [s["name"] for s in record["services"]] == ["alpha", "beta"]
    assert all(pid_alive(p) for p in a.pids + b.pids)
    assert manager.live_pids(record["services"][0]) == a.pids
    # `down` rebuilds services by name; unknown names are still stopped by pid
    assert manager.down(out=out) == 0, out.getvalue()
    assert not any(pid_alive(p) for p in a.pids + b.pids)
    assert not (state / "stack.json").exists()
    assert manager.down(out=out) == 0


def test_failed_service_rolls_back_everything(state: Path) -> None:
    good, bad = Sleeper("good", free_port()), Sleeper("bad", free_port(), healthy=False)
    out = io.StringIO()
    assert manager.up([good, bad], out=out) == 1
    text = out.getvalue()
    assert "bad: not healthy after 3 s" in text and "last lines of" in text and "fix:" in text
    assert not any(pid_alive(p) for p in good.pids + bad.pids)
    assert not (state / "stack.json").exists()


def test_recycled_pid_is_not_ours(state: Path) -> None:
    proc = subprocess.Popen(["sleep", "300"])
    try:
        entry = {"pids": [{"pid": proc.pid, "start_time": (start_time(proc.pid) or 0) - 100}]}
        assert manager.live_pids(entry) == []  # same pid, other start time: never signalled
        entry["pids"][0]["start_time"] = start_time(proc.pid)
        assert manager.live_pids(entry) == [proc.pid]
    finally:
        proc.kill()
        proc.wait()


def test_status_without_a_stack(state: Path) -> None:
    out = io.StringIO()
    assert manager.status(out=out) == 0
    assert "not running" in out.getvalue()


# --- the cluster topology (no processes but `sleep`) -------------------------------------------------

CLUSTER_NODES_OK = """\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
a2 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922
a3 127.0.0.1:7002@17002 master - 0 0 3 connected 10923-16383
b1 127.0.0.1:7003@17003 slave a2 0 0 2 connected
b2 127.0.0.1:7004@17004 slave a3 0 0 3 connected
b3 127.0.0.1:7005@17005 slave a1 0 0 1 connected
"""


def test_cluster_ports_derive_from_the_base_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKEWLESS_KAFKA_PORT", "41000")
    monkeypatch.setenv("SKEWLESS_KAFKA_CONTROLLER_PORT", "41001")
    monkeypatch.setenv("SKEWLESS_REDIS_PORT", "42000")
    kafka, redis_cluster = KafkaCluster(), RedisCluster()
    assert kafka.ports() == {"broker 1": 41000, "controller 1": 41001, "broker 2": 41002, "controller 2": 41003,
                             "broker 3": 41004, "controller 3": 41005}
    assert kafka.bootstrap == "127.0.0.1:41000,127.0.0.1:41002,127.0.0.1:41004"
    assert kafka.quorum_voters == "1@127.0.0.1:41001,2@127.0.0.1:41003,3@127.0.0.1:41005"
    assert sorted(redis_cluster.ports().values()) == [*range(42000, 42006), *range(52000, 52006)]
    assert [n.port for n in redis_cluster.nodes()] == list(range(42000, 42006))
    # rebuilt from the record's ports (how `down` and `status` find them)
    assert manager.make_service("kafka-cluster", kafka.ports()).ports() == kafka.ports()
    assert manager.make_service("redis-cluster", redis_cluster.ports()).ports() == redis_cluster.ports()


def test_redis_cluster_node_runs_the_stack_config_in_cluster_mode() -> None:
    argv = RedisCluster(port=42000).node_argv("redis-server", 42001, Path("/d"))
    assert argv[:2] == ["redis-server", str(REDIS_CONF)] and redis_args(42001, "/d") == argv[2:6]
    assert argv[argv.index("--cluster-enabled") + 1] == "yes"


def test_a_taken_cluster_bus_port_is_found_before_starting(state: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        bus = s.getsockname()[1]
        base = bus - 10000 - 2  # node 3's bus port is taken, its client port is free
        if base < 1024:
            pytest.skip("no room below this ephemeral port")
        problems = manager.port_problems([RedisCluster(port=base)])
    assert len(problems) == 1, problems
    assert "redis-cluster (node 3 bus)" in problems[0] and str(bus) in problems[0] and "SKEWLESS_REDIS_PORT" in problems[0]


def test_unknown_topology_is_one_clear_line(state: Path) -> None:
    out = io.StringIO()
    assert manager.up(out=out, topology="mesh") == 1
    assert out.getvalue().strip() == "stack: unknown topology 'mesh'; use one of: single, cluster"
    assert not (state / "stack.json").exists()


def test_free_cluster_ports_env_gives_free_blocks() -> None:
    env = free_cluster_ports_env()
    kafka, redis_base = int(env["SKEWLESS_KAFKA_PORT"]), int(env["SKEWLESS_REDIS_PORT"])
    assert int(env["SKEWLESS_KAFKA_CONTROLLER_PORT"]) == kafka + 1
    ports = [*range(kafka, kafka + 6), *range(redis_base, redis_base + 6), *range(redis_base + 10000, redis_base + 10006),
             int(env["SKEWLESS_FLINK_REST_PORT"])]
    assert len(set(ports)) == len(ports) and not any(manager.port_in_use(p) for p in ports)


def test_parse_cluster_nodes_and_the_wanted_shape() -> None:
    nodes = parse_cluster_nodes(CLUSTER_NODES_OK)
    assert [(n.port, n.is_master, n.slots) for n in nodes[:3]] == [(7000, True, 5461), (7001, True, 5462), (7002, True, 5461)]
    assert nodes[3].master_id == "a2" and not nodes[3].is_master
    assert cluster_problems(nodes, masters=3, replicas_per_master=1) == []


def test_cluster_problems_name_what_is_missing() -> None:
    lines = CLUSTER_NODES_OK.splitlines()
    no_replica = parse_cluster_nodes("\n".join(lines[:5]))  # a1 lost its replica
    assert cluster_problems(no_replica, 3, 1) == ["master :7000 has 0 connected replicas, want 1"]
    failed = parse_cluster_nodes(CLUSTER_NODES_OK.replace("slave a3 0 0 3 connected", "slave,fail a3 0 0 3 disconnected"))
    assert cluster_problems(failed, 3, 1) == ["node :7004 is fail,slave", "master :7002 has 0 connected replicas, want 1"]
    uncovered = parse_cluster_nodes(CLUSTER_NODES_OK.replace("10923-16383", "10923-16000"))
    assert cluster_problems(uncovered, 3, 1) == ["16001 of 16384 hash slots are served"]
    assert "2 masters serve slots, want 3" in cluster_problems(parse_cluster_nodes("\n".join(lines[:2] + lines[3:])), 3, 1)


class SleeperCluster(Sleeper, NodeService):
    """A fake multi-node service: two `sleep` processes, one role each."""

    def start(self, state_dir: Path, log_dir: Path) -> Started:
        first = super().start(state_dir, log_dir)
        second = super().start(state_dir, log_dir)
        return Started(self.name, first.pids + second.pids, first.endpoints, first.log_file)

    def nodes(self) -> list[Node]:
        return [Node("leader", self.port), Node("follower", None)]


def test_status_shows_every_node_and_down_stops_each(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = SleeperCluster("pair", free_port())
    monkeypatch.setattr(manager, "make_service", lambda name, ports=None: svc)
    out = io.StringIO()
    assert manager.up([svc], out=out, topology="cluster") == 0, out.getvalue()
    record = json.loads((state / "stack.json").read_text())
    assert record["topology"] == "cluster"
    assert [(p["role"], p["port"]) for p in record["services"][0]["pids"]] == [("leader", svc.port), ("follower", None)]
    (row,) = manager.status_rows()
    assert [(n["role"], n["pid"], n["running"]) for n in row["nodes"]] == [("leader", svc.pids[0], True),
                                                                       ("follower", svc.pids[1], True)]
    assert all(n["rss"] > 0 for n in row["nodes"])
    text = io.StringIO()
    manager.status(out=text)
    assert "topology: cluster" in text.getvalue()
    assert f"leader on 127.0.0.1:{svc.port}" in text.getvalue() and "follower (ephemeral ports)" in text.getvalue()
    assert manager.down(out=out) == 0
    assert not any(pid_alive(p) for p in svc.pids)


def test_kafka_template_placeholders_are_all_filled_by_the_launcher() -> None:
    template = (config.PROJECT_ROOT / "infra" / "kafka" / "server.properties").read_text()
    script = (config.PROJECT_ROOT / "infra" / "kafka" / "run-kafka.sh").read_text()
    settings = "\n".join(line for line in template.splitlines() if not line.startswith("#"))
    placeholders = set(re.findall(r"@[A-Z_]+@", settings))
    assert {"@KAFKA_NODE_ID@", "@KAFKA_QUORUM_VOTERS@", "@KAFKA_REPLICATION_FACTOR@", "@KAFKA_MIN_INSYNC_REPLICAS@"} <= placeholders
    assert all(f"s|{p}|" in script for p in placeholders)


def test_a_redis_cluster_node_that_exits_fails_up_naming_it(state: Path) -> None:
    env = free_cluster_ports_env()
    svc = RedisCluster(port=int(env["SKEWLESS_REDIS_PORT"]), binary="false")  # every "node" exits at once
    out = io.StringIO()
    assert manager.up([svc], out=out) == 1
    text = out.getvalue()
    named = re.search(r"redis-cluster: could not start: redis-cluster nodes: node :(\d+) exited; see \S+redis-\1.log", text)
    assert named and int(named.group(1)) in svc.node_ports, text
    assert "fix:" in text and not (state / "stack.json").exists()


def test_up_of_another_topology_while_one_runs_is_refused(state: Path) -> None:
    svc = Sleeper("alpha", free_port())
    out = io.StringIO()
    assert manager.up([svc], out=out) == 0
    try:
        again = io.StringIO()
        assert manager.up(out=again, topology="cluster") == 1
        assert again.getvalue().strip() == ("stack: the single topology is running; to start the cluster topology run "
                                            "`skewless stack down` first")
        assert all(pid_alive(p) for p in svc.pids)
    finally:
        assert manager.down(out=out) == 0
