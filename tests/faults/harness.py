"""Shared helpers of the fault tests: a private `skewless stack up` (free ports, temp state dir), a parity run
with a fault hook, waiting, and restarting one of the stack's services in place (same port, same data dir)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from skewless.config import redis_target
from skewless.e2e.pipeline import Targets
from skewless.engines.redis_client import open_redis
from skewless.stack.base import free_port

CFG = dict(events=900, entities=25, days=2.5, sample=12, instants=8)
# records/s produced while the streaming job runs, after its first write (ParityConfig.produce_rate): a fault
# injected once the job wrote lands before its last write (3,000 records: ~70 s of writes after the first)
STREAM_RATE = 40.0


class Stack:
    """A `skewless stack up` on free ports in a temp state dir; its env and recorded pids."""

    def __init__(self, root: Path) -> None:
        self.env = {**os.environ, "SKEWLESS_STATE_DIR": str(root / "state"), "SKEWLESS_KAFKA_PORT": str(free_port()),
                    "SKEWLESS_KAFKA_CONTROLLER_PORT": str(free_port()), "SKEWLESS_FLINK_REST_PORT": str(free_port()),
                    "SKEWLESS_REDIS_PORT": str(free_port())}
        self.env.pop("SKEWLESS_LOG_DIR", None)
        self.state = root / "state"

    def cli(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "skewless.cli", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def record(self) -> dict[str, Any]:
        return json.loads((self.state / "stack.json").read_text())

    def entry(self, name: str) -> dict[str, Any]:
        return next(e for e in self.record()["services"] if e["name"] == name)

    def replace_pid(self, name: str, old: int, new: int) -> None:
        """Record a restarted process so `stack down` stops it."""
        from skewless.stack.procs import start_time

        record = self.record()
        for e in record["services"]:
            if e["name"] == name:
                e["pids"] = [p if p["pid"] != old else {**p, "pid": new, "start_time": start_time(new)} for p in e["pids"]]
        (self.state / "stack.json").write_text(json.dumps(record, indent=2))

    @property
    def kafka(self) -> str:
        return f"127.0.0.1:{self.env['SKEWLESS_KAFKA_PORT']}"

    @property
    def redis_port(self) -> int:
        return int(self.env["SKEWLESS_REDIS_PORT"])

    def service(self, name: str) -> Any:
        """The stack's `name` service object (`redis`, `kafka`) on this stack's ports."""
        from skewless.stack.kafka import KafkaBroker
        from skewless.stack.redis import RedisServer

        if name == "redis":
            return RedisServer(port=self.redis_port)
        if name == "kafka":
            return KafkaBroker(port=int(self.env["SKEWLESS_KAFKA_PORT"]),
                               controller_port=int(self.env["SKEWLESS_KAFKA_CONTROLLER_PORT"]))
        raise ValueError(name)

    def restart(self, name: str, down_s: float = 0.0, healthy_timeout_s: float = 180.0, hard: bool = False,
                while_down: Any = None) -> dict[str, float]:
        """Stop service `name` cleanly (SIGTERM, `stop_pids`; ``hard``: SIGKILL), keep it down `down_s` (calling
        ``while_down()`` first, if given), start it again the way `stack up` does (same port, same data dir under
        the state dir), record the new pid and wait until it is healthy. Returns the timings (stop, down,
        start-to-healthy) in seconds."""
        import signal

        from skewless.stack.procs import pid_alive, stop_pids

        svc = self.service(name)
        (old,) = [p["pid"] for p in self.entry(name)["pids"]]
        t0 = time.monotonic()
        if hard:  # the whole process group (a launch script and its JVM), no shutdown of any kind
            os.killpg(old, signal.SIGKILL) if os.getpgid(old) == old else os.kill(old, signal.SIGKILL)
            wait(lambda: not pid_alive(old), 30, f"{name} {old} to die")
        else:
            stop_pids([old], timeout_s=60.0)
        assert not pid_alive(old), f"{name} {old} still alive"
        stopped = time.monotonic()
        if while_down is not None:
            while_down()
        time.sleep(max(0.0, down_s - (time.monotonic() - stopped)))
        restarted = time.monotonic()
        started = svc.start(self.state, self.state / "logs")
        (new,) = started.pids
        self.replace_pid(name, old, new)
        wait(svc.healthy, healthy_timeout_s, f"{name} to be healthy again", interval_s=0.05)
        return {"stop_s": stopped - t0, "down_s": restarted - t0, "healthy_s": time.monotonic() - restarted,
                "old_pid": old, "new_pid": new}

    def targets(self, workdir: Path) -> Any:
        from skewless.e2e.parity import Targets

        return Targets(bootstrap=self.kafka, redis_url=f"redis://127.0.0.1:{self.redis_port}/0",
                       catalog_db=workdir / "catalog.db", warehouse=workdir / "warehouse", flink="session",
                       flink_rest_port=int(self.env["SKEWLESS_FLINK_REST_PORT"]), workdir=workdir)


def parity(stack: Stack, workdir: Path, seed: int, faults: Any, **overrides: Any) -> Any:
    """One parity run against `stack` with `faults` injected; asserts zero mismatches and every check ok."""
    from skewless.core.repo import load_repository
    from skewless.e2e.parity import FEATURE_VIEW, SNAPSHOT_VIEW, ParityConfig, format_report, run_parity

    targets = stack.targets(workdir)
    try:
        report = run_parity(ParityConfig(seed=seed, **{**CFG, **overrides}), targets, faults=faults)
    finally:
        if targets.spark is not None:
            targets.spark.stop()
    repo = load_repository()
    text = format_report(report, repo.view(FEATURE_VIEW), repo.view(SNAPSHOT_VIEW))
    print("\n" + text)
    assert report.ok, text
    return report


def wait(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def applied(ctx: Any) -> int:
    """Records the run's streaming job has applied so far (its progress hash in Redis)."""
    from skewless.e2e.pipeline import stream_progress

    return sum(p.get("records", 0) for p in stream_progress(ctx.targets.redis(), ctx.project, "orders").values())


def paced_head(ctx: Any) -> int:
    """Records the parity producer sends at once before the job's first write (``_produce_during_stream``: the
    first 5%); every later one is paced at ``produce_rate``."""
    return max(1, ctx.records // 20)


def await_paced_writes(ctx: Any, timeout_s: float = 900) -> int:
    """Wait for the run's streaming job's first write and for the throttled producer to have sent a record after
    it (so records keep arriving while a fault injected now lasts); returns the records applied so far."""
    wait(lambda: applied(ctx) >= 1, timeout_s, "the job's first write", interval_s=0.1)
    wait(lambda: ctx.produced > paced_head(ctx), 120, "the producer's paced records after the first write",
         interval_s=0.05)
    return applied(ctx)


def drain_job(stack: Stack, ctx: Any) -> dict[str, Any]:
    """Wait until the run's streaming job has applied every record (after a fault) and ended. Returns how long the
    records took (``recovered_s``), the failures Flink recorded (``job_failures``) and its end state (``job_state``)."""
    t = time.monotonic()
    wait(lambda: applied(ctx) >= ctx.records, 600, "the job applying every record after the fault")
    recovered_s = round(time.monotonic() - t, 1)
    job = run_job(stack, ctx)
    assert job is not None, "the run's streaming job is not on the cluster"
    wait(lambda: (run_job(stack, ctx) or {}).get("state") in ("FINISHED", "FAILED", "CANCELED"), 600, "the job to end")
    return {"recovered_s": recovered_s, "job_failures": job_exceptions(stack, job["jid"]),
            "job_state": run_job(stack, ctx)["state"]}


def start_taskmanager(stack: Stack, old_pid: int, service: str = "flink") -> int:
    """Start a new TaskManager for the stack's Flink session cluster the way `stack up` does (its log appended to
    ``taskmanager.restart.log``; the conf dir `stack up` wrote, so the same slots), recorded in place of
    ``old_pid`` in the stack's ``service`` entry; returns its pid."""
    from skewless.stack.flink import FlinkSessionCluster, flink_home

    cluster = FlinkSessionCluster(rest_port=int(stack.env["SKEWLESS_FLINK_REST_PORT"]), state_dir=stack.state,
                                  log_dir=stack.state / "logs")
    with open(stack.state / "logs" / "flink" / "taskmanager.restart.log", "ab") as out:
        proc = subprocess.Popen(["bash", str(flink_home() / "bin" / "taskmanager.sh"), "start-foreground"],
                                env=cluster._env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    stack.replace_pid(service, old_pid, proc.pid)
    return proc.pid


def raw_rows(ctx: Any) -> int:
    """Rows of the run's raw archive table now (0 before its first commit)."""
    from pyiceberg.exceptions import NoSuchTableError

    table = ctx.repo.view("user_order_stats").source.table
    try:
        return ctx.targets.catalog().load_table(table).scan(selected_fields=("_kafka_partition",)).to_arrow().num_rows
    except NoSuchTableError:
        return 0


def well_formed(report: Any) -> int:
    """Records of a parity run the raw table holds once archived (all but the malformed)."""
    return report.counts["records"] - report.counts.get("malformed", 0)


def flink(stack: Stack) -> Any:
    from skewless.stack.flink import FlinkSessionCluster

    return FlinkSessionCluster(rest_port=int(stack.env["SKEWLESS_FLINK_REST_PORT"]))


def run_job(stack: Stack, ctx: Any) -> dict[str, Any] | None:
    """The run's streaming job on the session cluster (`/jobs/overview` entry), None before it is submitted."""
    return next((j for j in flink(stack).list_jobs() if j.get("name") == f"skewless-e2e-{ctx.project}"), None)


def job_exceptions(stack: Stack, job_id: str) -> list[str]:
    """The failures Flink recorded for a job (each one a restart under its restart strategy), newest first: the
    first line of each one's stack trace (exception and message), else its exception's name."""
    history = flink(stack)._rest("GET", f"/jobs/{job_id}/exceptions").get("exceptionHistory", {}).get("entries", [])
    return [str((e.get("stacktrace") or "").strip().split("\n", 1)[0] or e.get("exceptionName"))[:300] for e in history]


def ping(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001
        return False


def archive_worker(stack: Stack, ctx: Any, records: int = 150, pause_s: float = 5.0) -> subprocess.Popen[str]:
    """The raw archive of the run's topic in a subprocess, `records`-record commits, printing `commit <n>` after
    each raw-table commit and pausing `pause_s` there (a window to kill it or to fault around it); drains and exits."""
    worker = subprocess.Popen([sys.executable, "-c", ARCHIVE_WORKER, ctx.targets.bootstrap, ctx.topic,
                               str(ctx.targets.catalog_db), str(ctx.targets.warehouse), str(records), str(pause_s)],
                              env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert worker.stdout is not None
    return worker
ARCHIVE_WORKER = r"""
import dataclasses, sys, threading
from skewless.archive.runner import ArchiveConfig, SourceArchiver
from skewless.core.repo import load_repository
from skewless.engines.iceberg_catalog import load_catalog
bootstrap, topic, db, wh, records, pause = sys.argv[1:7]
source = dataclasses.replace(load_repository().view("user_order_stats").source, topic=topic)
def hook(point, n):
    if point == "after-raw-commit":
        print("commit", n, flush=True)
        threading.Event().wait(float(pause))
SourceArchiver(source, load_catalog(db, wh), ArchiveConfig(bootstrap=bootstrap, max_records=int(records), max_interval_s=1.0,
               fault=hook)).run(threading.Event(), drain=True)
"""


# --- the cluster topology (tests/faults/test_cluster_online_faults.py) -----------------------------------------

CLUSTER_PORT_VARS = ("SKEWLESS_KAFKA_PORT", "SKEWLESS_KAFKA_CONTROLLER_PORT", "SKEWLESS_FLINK_REST_PORT",
                     "SKEWLESS_REDIS_PORT", "SKEWLESS_S3_PORT", "SKEWLESS_POSTGRES_PORT", "SKEWLESS_SPARK_MASTER_PORT")
# the online half of `stack up --topology cluster` (skewless/stack/cluster.py): 3 Kafka nodes, Flink JobManager +
# 2 TaskManagers x 2 slots, Redis Cluster 3 masters + 3 replicas, recorded in stack.json (`stack down` stops them)
UP_ONLINE_HALF = r"""
import sys
from skewless.stack import manager
from skewless.stack.cluster import FlinkCluster, KafkaCluster, RedisCluster
sys.exit(manager.up([KafkaCluster(), FlinkCluster(), RedisCluster()], topology="cluster"))
"""
JOB_PARALLELISM = 4  # the topology's four slots: both TaskManagers run subtasks


class ClusterTargets(Targets):
    """The run's targets with a cluster-aware Redis client (``open_redis`` of the ``redis+cluster://`` URL: slot
    map, MOVED, failover), as every reader and writer of the project opens it."""

    def redis(self) -> Any:
        return open_redis(redis_target(self.redis_url))


class ClusterStack(Stack):
    """The online half of the cluster topology in a temp state dir, on the ports the environment names
    (``SKEWLESS_*_PORT``: a helper's own range) or else on free blocks (:func:`free_cluster_ports_env`). The
    offline half (object store, PostgreSQL, Spark) is issue 22's: the parity run's catalog is private (sqlite)."""

    def __init__(self, root: Path) -> None:
        from skewless.stack.cluster import free_cluster_ports_env

        ports = {k: os.environ[k] for k in CLUSTER_PORT_VARS if k in os.environ}
        if "SKEWLESS_REDIS_PORT" not in ports:
            ports = free_cluster_ports_env()
        self.state = root / "state"
        self.env = {**os.environ, **ports, "SKEWLESS_STATE_DIR": str(self.state)}
        self.env.pop("SKEWLESS_LOG_DIR", None)
        self.env.pop("SKEWLESS_CONFIG", None)
        # the streaming job's parallelism (run_view.py reads the selected profile's flink.parallelism)
        self.profile = root / "parallelism.yaml"
        self.profile.write_text(f"default_profile: faults\nprofiles:\n  faults:\n    flink: {{parallelism: {JOB_PARALLELISM}}}\n")

    def up(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", UP_ONLINE_HALF], env=self.env, capture_output=True, text=True,
                              timeout=900)

    def redis_cluster(self) -> Any:
        from skewless.stack.cluster import RedisCluster

        return RedisCluster(port=int(self.env["SKEWLESS_REDIS_PORT"]))

    def kafka_cluster(self) -> Any:
        from skewless.stack.cluster import KafkaCluster

        return KafkaCluster(port=int(self.env["SKEWLESS_KAFKA_PORT"]),
                            controller_port=int(self.env["SKEWLESS_KAFKA_CONTROLLER_PORT"]))

    @property
    def kafka(self) -> str:
        return self.kafka_cluster().bootstrap

    @property
    def redis_url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.redis_cluster().node_ports)

    def pid_of(self, service: str, port: int | None = None, role: str | None = None) -> int:
        """The recorded pid of ``service``'s node on ``port`` (or whose role starts with ``role``)."""
        return next(p["pid"] for p in self.entry(service)["pids"]
                    if (port is None or p.get("port") == port) and (role is None or str(p.get("role", "")).startswith(role)))

    def targets(self, workdir: Path) -> Any:
        return ClusterTargets(
            bootstrap=self.kafka, redis_url=self.redis_url, catalog_db=workdir / "catalog.db",
            warehouse=workdir / "warehouse", flink="session", flink_rest_port=int(self.env["SKEWLESS_FLINK_REST_PORT"]),
            workdir=workdir)

    # --- Redis Cluster nodes ---

    def redis_masters(self) -> dict[int, str]:
        """Port -> node id of every master serving slots, not failing."""
        return {n.port: n.node_id for n in self.redis_cluster().cluster_nodes() if n.is_master and n.slots and not n.failing}

    def kill_redis_node(self, port: int) -> float:
        """SIGKILL the Redis node on ``port``; the monotonic time of its death."""
        import signal

        from skewless.stack.procs import pid_alive

        pid = self.pid_of("redis-cluster", port=port)
        os.kill(pid, signal.SIGKILL)
        wait(lambda: not pid_alive(pid), 30, f"redis :{port} to die", interval_s=0.02)
        return time.monotonic()

    def await_promotion(self, dead: int, timeout_s: float = 90) -> None:
        """Until three masters other than ``dead`` serve every slot (its replica promoted)."""
        from skewless.stack.cluster import REDIS_CLUSTER_SLOTS, REDIS_MASTERS

        def promoted() -> bool:
            try:
                nodes = [n for n in self.redis_cluster().cluster_nodes() if n.port != dead]
            except Exception:  # noqa: BLE001 - a node busy with the failover: ask again
                return False
            serving = [n for n in nodes if n.is_master and n.slots and not n.failing]
            return len(serving) == REDIS_MASTERS and sum(n.slots for n in serving) == REDIS_CLUSTER_SLOTS

        wait(promoted, timeout_s, f"the replica of the killed master :{dead} promoted", interval_s=0.1)

    def restart_redis_node(self, port: int, timeout_s: float = 120) -> float:
        """Start the killed node on ``port`` again (same data dir and nodes.conf: it rejoins as a replica of the
        master that took its slots), record it, and wait until the cluster has its shape again (3 masters with a
        synced replica each); the seconds that took."""
        import shutil

        from skewless.stack.procs import spawn

        cluster = self.redis_cluster()
        old = self.pid_of("redis-cluster", port=port)
        t = time.monotonic()
        new = spawn(cluster.node_argv(shutil.which("redis-server") or "redis-server", port,
                                      self.state / cluster.name / str(port)), self.state / "logs" / f"redis-{port}.log")
        self.replace_pid("redis-cluster", old, new)
        wait(lambda: not cluster.problems() and replicas_synced(cluster), timeout_s,
             f"redis :{port} rejoined as a replica", interval_s=0.2)
        return time.monotonic() - t

    # --- Kafka nodes ---

    def kafka_leaders(self, topic: str) -> dict[int, int]:
        """Partition -> the broker port leading it now."""
        from skewless.engines.kafka import admin_client

        kafka = self.kafka_cluster()
        meta = admin_client(kafka.bootstrap, 10).list_topics(topic, timeout=10)
        port_of = {b.id: b.port for b in meta.brokers.values()}
        return {p: port_of.get(pm.leader, -1) for p, pm in meta.topics[topic].partitions.items()}

    def in_sync(self, topic: str) -> bool:
        """Every partition of ``topic`` has all three replicas in sync."""
        from skewless.engines.kafka import admin_client
        from skewless.stack.cluster import KAFKA_REPLICATION_FACTOR

        try:
            meta = admin_client(self.kafka, 5).list_topics(topic, timeout=5)
        except Exception:  # noqa: BLE001 - brokers busy: ask again
            return False
        return all(len(pm.isrs) == KAFKA_REPLICATION_FACTOR for pm in meta.topics[topic].partitions.values())

    def kill_kafka_node(self, port: int) -> float:
        """SIGKILL the process group of the Kafka node on broker ``port`` (its launch script and JVM: no
        controlled shutdown, no flush); the monotonic time of its death."""
        import signal

        from skewless.stack.procs import pid_alive

        pid = self.pid_of("kafka-cluster", port=port)
        os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGKILL)
        wait(lambda: not pid_alive(pid), 30, f"kafka :{port} to die", interval_s=0.02)
        return time.monotonic()

    def restart_kafka_node(self, port: int) -> int:
        """Start the Kafka node on broker ``port`` again (same data dir: it recovers its log and rejoins), recorded
        in place of the old pid; its new pid."""
        kafka = self.kafka_cluster()
        i = 1 + [b.port for b in kafka.brokers].index(port)
        old = self.pid_of("kafka-cluster", port=port)
        new = kafka.start_node(i, self.state, self.state / "logs")
        self.replace_pid("kafka-cluster", old, new)
        return new


def replicas_synced(cluster: Any) -> bool:
    """Every replica node of ``cluster`` finished its sync (``master_link_status:up``): until then a master's
    ``WAIT`` gets no acknowledgement."""
    import redis

    for port in cluster.node_ports:
        try:
            info = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2).info("replication")
        except redis.RedisError:
            return False
        if info.get("role") == "slave" and info.get("master_link_status") != "up":
            return False
    return True


def applied_now(ctx: Any, last: list[int]) -> int:
    """:func:`applied`, or the last count read while Redis answers no read (a failover): ``last`` holds it."""
    try:
        last[0] = applied(ctx)
    except Exception:  # noqa: BLE001 - the cluster is between masters
        pass
    return last[0]
