"""The cluster topology (``skewless stack up --topology cluster``): replicated Kafka, Flink on two
TaskManagers and a Redis Cluster, as local processes on 127.0.0.1 (docs/infra.md, "The cluster topology").

Every port is a configured base port (skewless.config, ``SKEWLESS_*_PORT``) plus a fixed offset:

- Kafka node ``i`` (1..3, combined broker + controller): broker ``SKEWLESS_KAFKA_PORT + 2(i-1)``,
  controller ``SKEWLESS_KAFKA_CONTROLLER_PORT + 2(i-1)`` (defaults 9092/9093, 9094/9095, 9096/9097);
- Flink: REST ``SKEWLESS_FLINK_REST_PORT``; the JobManager's RPC port is picked free at start and the
  TaskManagers' ports are ephemeral, as in the single-node stack;
- Redis node ``i`` (1..6): ``SKEWLESS_REDIS_PORT + (i-1)``, its cluster bus that port + 10000.

Each service records one pid per node (with the node's role and port), so ``stack status`` shows every
node and ``stack down`` stops exactly those processes.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skewless import config
from skewless.profile import dump_profile_file
from skewless.stack.base import Node, NodeService, StackError, Started, port_in_use
from skewless.stack.flink import FlinkSessionCluster
from skewless.engines.kafka import admin_client
from skewless.stack.kafka import DEFAULT_HEAP, LAUNCH_SCRIPT, KafkaBroker
from skewless.stack.offline import (CATALOG_USER, FLINK_STATE_URI, OBJECT_STORE_REGION, WAREHOUSE_URI, CatalogDatabase,
                                    ObjectStore, SparkCluster,
                                    catalog_password_file, object_store_credentials)
from skewless.stack.procs import log_tail, pid_alive, spawn, stop_pids, wait_until
from skewless.stack.redis import REDIS_CONF, ping, redis_args

TOPOLOGIES = ("single", "cluster")
KAFKA_NODES = 3
KAFKA_PORT_STEP = 2  # node i: base + 2(i-1), for the broker and the controller port alike
KAFKA_REPLICATION_FACTOR = 3
KAFKA_MIN_INSYNC_REPLICAS = 2
FLINK_TASKMANAGERS = 2
FLINK_SLOTS_PER_TASKMANAGER = 2
REDIS_MASTERS = 3
REDIS_REPLICAS_PER_MASTER = 1
REDIS_BUS_OFFSET = 10000  # Redis Cluster's bus listens on port + 10000
REDIS_NODE_TIMEOUT_MS = 5000
REDIS_CLUSTER_SLOTS = 16384
CLIENT_TIMEOUT_S = 3.0


# --- Kafka -----------------------------------------------------------------------------------------


class KafkaCluster(NodeService):
    """Three KRaft nodes, each broker + controller, one static quorum; RF 3 and min ISR 2 by default."""

    name = "kafka-cluster"
    start_timeout_s = 240.0

    def __init__(self, port: int | None = None, controller_port: int | None = None, jars_dir: Path | None = None,
                 heap_opts: str = DEFAULT_HEAP) -> None:
        first = KafkaBroker(port, controller_port, jars_dir, heap_opts)  # the base ports (skewless.config)
        self.brokers = [
            KafkaBroker(first.port + KAFKA_PORT_STEP * i, first.controller_port + KAFKA_PORT_STEP * i, jars_dir, heap_opts)
            for i in range(KAFKA_NODES)
        ]

    @property
    def bootstrap(self) -> str:
        """All brokers, comma-separated (a client needs only one that answers)."""
        return ",".join(b.bootstrap for b in self.brokers)

    @property
    def quorum_voters(self) -> str:
        return ",".join(f"{i}@{config.HOST}:{b.controller_port}" for i, b in enumerate(self.brokers, start=1))

    def ports(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i, b in enumerate(self.brokers, start=1):
            out[f"broker {i}"] = b.port
            out[f"controller {i}"] = b.controller_port
        return out

    def port_setting(self, role: str) -> str:
        var = "SKEWLESS_KAFKA_CONTROLLER_PORT" if role.startswith("controller") else "SKEWLESS_KAFKA_PORT"
        offsets = "/".join(f"+{KAFKA_PORT_STEP * i}" for i in range(KAFKA_NODES))
        return f"{var} (the cluster uses it {offsets})"

    def nodes(self) -> list[Node]:
        return [Node(f"broker+controller {i} (controller :{b.controller_port})", b.port)
                for i, b in enumerate(self.brokers, start=1)]

    def cluster_id(self, state_dir: Path) -> str:
        """The id every node is formatted with; made once per state dir (a node re-formatted later joins it)."""
        path = state_dir / "cluster.id"
        if path.exists():
            return path.read_text().strip()
        cluster_id = "-"
        while cluster_id.startswith("-"):  # what `StorageTool random-uuid` prints; '-' would read as a flag
            cluster_id = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        state_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(cluster_id + "\n")
        return cluster_id

    def start(self, state_dir: Path, log_dir: Path) -> Started:
        """Start the three nodes detached, data in ``state_dir/kafka-cluster/node-<i>``, logs ``kafka-<i>.log``."""
        if shutil.which("java") is None:
            raise StackError("kafka: no `java` on PATH; fix: make setup (installs openjdk-17-jdk-headless)")
        pids: list[int] = []
        try:
            for i in range(1, KAFKA_NODES + 1):
                pids.append(self.start_node(i, state_dir, log_dir))
        except BaseException:
            stop_pids(pids)
            raise
        return Started(self.name, tuple(pids), {"bootstrap": self.bootstrap}, log_dir / "kafka-1.log")

    def start_node(self, i: int, state_dir: Path, log_dir: Path) -> int:
        """Start node ``i`` (1..3) detached, data in ``state_dir/kafka-cluster/node-<i>`` (kept: a restarted node
        recovers its log and rejoins), log ``kafka-<i>.log``; its pid."""
        base = state_dir / self.name
        env = self.brokers[i - 1].launch_env(base / f"node-{i}") | {
            "KAFKA_NODE_ID": str(i),
            "KAFKA_QUORUM_VOTERS": self.quorum_voters,
            "KAFKA_CLUSTER_ID": self.cluster_id(base),
            "KAFKA_REPLICATION_FACTOR": str(KAFKA_REPLICATION_FACTOR),
            "KAFKA_MIN_INSYNC_REPLICAS": str(KAFKA_MIN_INSYNC_REPLICAS),
        }
        return spawn(["bash", str(LAUNCH_SCRIPT)], log_dir / f"kafka-{i}.log", env=env)

    def broker_count(self) -> int:
        """Brokers in the cluster's metadata (0 if no broker answers)."""
        from confluent_kafka import KafkaException

        try:
            return len(admin_client(self.bootstrap, CLIENT_TIMEOUT_S).list_topics(timeout=CLIENT_TIMEOUT_S).brokers)
        except KafkaException:
            return 0

    def healthy(self) -> bool:
        """Every broker port is open and the metadata lists all three brokers."""
        return all(port_in_use(b.port) for b in self.brokers) and self.broker_count() == KAFKA_NODES


# --- Flink -----------------------------------------------------------------------------------------


class FlinkCluster(FlinkSessionCluster, NodeService):
    """One JobManager and two TaskManagers with two slots each (four slots)."""

    name = "flink-cluster"
    start_timeout_s = 240.0

    def __init__(self, rest_port: int | None = None, state_dir: Path | None = None, log_dir: Path | None = None,
                 object_store: ObjectStore | None = None) -> None:
        """``object_store``: checkpoints and savepoints go to its bucket (``FLINK_STATE_URI``)."""
        store = (lambda state: (object_store.target(state), FLINK_STATE_URI)) if object_store is not None else None
        super().__init__(rest_port=rest_port, state_dir=state_dir, log_dir=log_dir, slots=FLINK_SLOTS_PER_TASKMANAGER,
                         taskmanagers=FLINK_TASKMANAGERS, state_store=store)

    def nodes(self) -> list[Node]:
        return [Node("jobmanager (REST)", self.rest_port),
                *(Node(f"taskmanager {i} ({self.slots} slots)", None) for i in range(1, self.taskmanagers + 1))]

    def port_setting(self, role: str) -> str:
        return "SKEWLESS_FLINK_REST_PORT"

    def taskmanager_slots(self) -> list[int]:
        """``GET /taskmanagers``: the slot count of each registered TaskManager."""
        return [int(tm.get("slotsNumber", 0)) for tm in self._rest("GET", "/taskmanagers", timeout=3.0).get("taskmanagers", [])]

    def healthy(self) -> bool:
        """The REST API lists both TaskManagers with their slots (four in all)."""
        try:
            slots = self.taskmanager_slots()
        except StackError:
            return False
        return len(slots) == self.taskmanagers and sum(slots) == self.taskmanagers * self.slots


# --- Redis -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterNode:
    """One line of ``CLUSTER NODES``."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    connected: bool
    slots: int  # how many hash slots this node serves

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})


def parse_cluster_nodes(text: str) -> list[ClusterNode]:
    """Parse the reply of ``CLUSTER NODES`` (``<id> <ip:port@bus> <flags> <master> ... <link> <slots>...``)."""
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@")[0]
        slots = 0
        for item in fields[8:]:
            if item.startswith("["):  # a slot being migrated or imported
                continue
            low, _, high = item.partition("-")
            slots += int(high or low) - int(low) + 1
        nodes.append(ClusterNode(
            node_id=fields[0],
            port=int(address.rsplit(":", 1)[1]),
            flags=frozenset(fields[2].split(",")),
            master_id=None if fields[3] == "-" else fields[3],
            connected=fields[7] == "connected",
            slots=slots,
        ))
    return nodes


def cluster_problems(nodes: Sequence[ClusterNode], masters: int, replicas_per_master: int) -> list[str]:
    """What keeps this ``CLUSTER NODES`` view from the wanted shape (all slots on ``masters`` masters,
    each with ``replicas_per_master`` connected replicas, no node failing); empty when it has it."""
    problems = [f"node :{n.port} is {','.join(sorted(n.flags))}" for n in nodes if n.failing]
    serving = [n for n in nodes if n.is_master and n.slots]
    if len(serving) != masters:
        problems.append(f"{len(serving)} masters serve slots, want {masters}")
    covered = sum(n.slots for n in serving)
    if covered != REDIS_CLUSTER_SLOTS:
        problems.append(f"{covered} of {REDIS_CLUSTER_SLOTS} hash slots are served")
    for master in serving:
        replicas = [n for n in nodes if n.master_id == master.node_id and n.connected and not n.failing]
        if len(replicas) < replicas_per_master:
            problems.append(f"master :{master.port} has {len(replicas)} connected replicas, want {replicas_per_master}")
    return problems


class RedisCluster(NodeService):
    """Six ``redis-server`` nodes (``cluster-enabled yes``, ``infra/redis/redis.conf``'s AOF settings)
    joined by ``redis-cli --cluster create ... --cluster-replicas 1``: three masters, three replicas."""

    name = "redis-cluster"
    start_timeout_s = 90.0
    create_timeout_s = 120.0

    def __init__(self, port: int | None = None, binary: str = "redis-server", cli: str = "redis-cli") -> None:
        base = port or config.ports().redis
        self.node_ports = [base + i for i in range(REDIS_MASTERS * (1 + REDIS_REPLICAS_PER_MASTER))]
        self.binary, self.cli = binary, cli

    @property
    def url(self) -> str:
        """The seed node; a cluster client discovers the others from it."""
        return f"redis://{config.HOST}:{self.node_ports[0]}"

    def ports(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i, port in enumerate(self.node_ports, start=1):
            out[f"node {i}"] = port
            out[f"node {i} bus"] = port + REDIS_BUS_OFFSET
        return out

    def port_setting(self, role: str) -> str:
        last = len(self.node_ports) - 1
        return (f"SKEWLESS_REDIS_PORT (the cluster uses it +0..+{last} and, for the cluster bus, "
                f"+{REDIS_BUS_OFFSET}..+{REDIS_BUS_OFFSET + last})")

    def nodes(self) -> list[Node]:
        return [Node("node", port) for port in self.node_ports]

    def node_argv(self, binary: str, port: int, data_dir: Path) -> list[str]:
        """``redis-server`` with the stack's config (bind 127.0.0.1, AOF) in cluster mode."""
        return [binary, str(REDIS_CONF), *redis_args(port, data_dir), "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(REDIS_NODE_TIMEOUT_MS)]

    def start(self, state_dir: Path, log_dir: Path) -> Started:
        """Start the six nodes (data in ``state_dir/redis-cluster/<port>``), then join them into one cluster
        unless their data dirs already hold it. On failure the nodes are stopped again before raising."""
        binary, cli = shutil.which(self.binary), shutil.which(self.cli)
        if binary is None or cli is None:
            raise StackError(f"redis-cluster: `{self.binary}` or `{self.cli}` not found; fix: make setup "
                             "(apt-get install redis-server redis-tools)")
        pids: list[int] = []
        log_files = [log_dir / f"redis-{port}.log" for port in self.node_ports]
        try:
            for port, log_file in zip(self.node_ports, log_files):
                data_dir = state_dir / self.name / str(port)
                data_dir.mkdir(parents=True, exist_ok=True)
                pids.append(spawn(self.node_argv(binary, port, data_dir), log_file))

            def exited() -> str | None:
                return next((f"node :{port} exited; see {log}" for port, log, pid in zip(self.node_ports, log_files, pids)
                             if not pid_alive(pid)), None)

            wait_until(lambda: all(ping(p, CLIENT_TIMEOUT_S) for p in self.node_ports), 30.0, "redis-cluster nodes",
                       interval_s=0.2, abort_if=exited)
            self.form(cli, log_dir / "redis-cluster-create.log", state_dir / self.name)
        except BaseException:
            stop_pids(pids)
            raise
        return Started(self.name, tuple(pids), {"url": self.url, "nodes": ",".join(map(str, self.node_ports))},
                       log_files[0])

    def known_nodes(self, port: int) -> int:
        info = self._command(port, "CLUSTER", "INFO")
        return int(dict(line.split(":", 1) for line in info.splitlines() if ":" in line)["cluster_known_nodes"])

    def form(self, cli: str, log_file: Path, data_root: Path) -> None:
        """``redis-cli --cluster create`` on fresh nodes; nothing when every node already knows all six
        (a restart on kept data); a clear error for anything in between."""
        known = [self.known_nodes(p) for p in self.node_ports]
        if all(k == len(self.node_ports) for k in known):
            return
        if any(k != 1 for k in known):
            raise StackError(f"redis-cluster: the data under {data_root} holds a partly formed cluster "
                             f"(known nodes per node: {known}); fix: rm -rf {data_root} (or make clean)")
        argv = [cli, "--cluster", "create", *(f"{config.HOST}:{p}" for p in self.node_ports),
                "--cluster-replicas", str(REDIS_REPLICAS_PER_MASTER), "--cluster-yes"]
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=self.create_timeout_s)
        except subprocess.TimeoutExpired:
            raise StackError(f"redis-cluster: `redis-cli --cluster create` did not finish in "
                             f"{self.create_timeout_s:.0f} s") from None
        log_file.write_text(f"$ {' '.join(argv)}\n{res.stdout}{res.stderr}")
        if res.returncode != 0:
            raise StackError(f"redis-cluster: `redis-cli --cluster create` failed (exit {res.returncode}):\n"
                             f"{log_tail(log_file, 15)}")

    def cluster_nodes(self) -> list[ClusterNode]:
        """``CLUSTER NODES`` as seen by the first node that answers."""
        import redis

        for port in self.node_ports:
            try:
                return parse_cluster_nodes(self._command(port, "CLUSTER", "NODES"))
            except redis.RedisError:
                continue
        raise StackError(f"redis-cluster: no node answers on ports {self.node_ports}")

    def problems(self) -> list[str]:
        """Why the cluster is not ready (empty when it is): every node says cluster_state:ok and knows all
        six nodes, and the slots sit on three masters with a connected replica each."""
        import redis

        problems = []
        for port in self.node_ports:
            try:
                info = self._command(port, "CLUSTER", "INFO")
            except redis.RedisError as exc:
                problems.append(f"node :{port} does not answer ({exc})")
                continue
            fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
            if fields.get("cluster_state") != "ok":
                problems.append(f"node :{port} has cluster_state:{fields.get('cluster_state')}")
            if int(fields.get("cluster_known_nodes", 0)) != len(self.node_ports):
                problems.append(f"node :{port} knows {fields.get('cluster_known_nodes')} nodes")
        if problems:
            return problems
        return cluster_problems(self.cluster_nodes(), REDIS_MASTERS, REDIS_REPLICAS_PER_MASTER)

    def healthy(self) -> bool:
        return all(port_in_use(p) for p in self.node_ports) and not self.problems()

    def live_roles(self) -> dict[int, str]:
        try:
            nodes = self.cluster_nodes()
        except StackError:
            return {}
        by_id = {n.node_id: n for n in nodes}
        roles = {}
        for n in nodes:
            if n.is_master:
                roles[n.port] = f"master ({n.slots} slots)"
            elif n.master_id in by_id:
                roles[n.port] = f"replica of :{by_id[n.master_id].port}"
            else:
                roles[n.port] = ",".join(sorted(n.flags))
        return roles

    @staticmethod
    def _command(port: int, *args: str) -> str:
        import redis

        client = redis.Redis(host=config.HOST, port=port, socket_timeout=CLIENT_TIMEOUT_S,
                             socket_connect_timeout=CLIENT_TIMEOUT_S, decode_responses=True)
        try:
            return str(client.execute_command(*args))
        finally:
            client.close()


# --- the topology ----------------------------------------------------------------------------------

SERVICE_NAMES = (KafkaCluster.name, FlinkCluster.name, RedisCluster.name, ObjectStore.name, CatalogDatabase.name,
                 SparkCluster.name)


def cluster_services() -> list[NodeService]:
    """What ``stack up --topology cluster`` starts, in order, on the configured base ports: the online half
    (Kafka, Flink, Redis) and the offline half (skewless/stack/offline.py: object store, catalog database, Spark)."""
    store = ObjectStore()
    return [KafkaCluster(), FlinkCluster(object_store=store), RedisCluster(), store, CatalogDatabase(), SparkCluster()]


def cluster_service(name: str, ports: dict[str, int]) -> NodeService:
    """The cluster service ``name`` on the ports recorded in stack.json (role -> port)."""
    if name == KafkaCluster.name:
        return KafkaCluster(port=ports.get("broker 1"), controller_port=ports.get("controller 1"))
    if name == FlinkCluster.name:
        return FlinkCluster(rest_port=ports.get("rest"))
    if name == RedisCluster.name:
        return RedisCluster(port=ports.get("node 1"))
    if name == ObjectStore.name:
        return ObjectStore(port=ports.get("s3"))
    if name == CatalogDatabase.name:
        return CatalogDatabase(port=ports.get("postgres"))
    if name == SparkCluster.name:
        return SparkCluster(port=ports.get("master"))
    raise StackError(f"unknown cluster service {name!r}; known: {', '.join(SERVICE_NAMES)}")


CLUSTER_PROFILE = "cluster"  # the profile `stack up --topology cluster` writes


def cluster_profile_path() -> Path:
    """Where ``stack up --topology cluster`` writes the profile of what it started (removed by ``stack down``)."""
    return config.paths().state / "cluster-profile.yaml"


def write_cluster_profile(services: Sequence[NodeService]) -> Path:
    """A profile file (docs/deploy.md) with the profile ``cluster``: the started Redis Cluster's nodes, the Kafka
    brokers, Flink's REST endpoint, the object store, the PostgreSQL catalog with its ``s3://`` warehouse (or,
    without them, the stack's sqlite catalog) and the Spark master; secrets only as ``{file: ...}`` references
    to the generated files in ``<state>/secrets/``."""
    body: dict[str, Any] = {}
    state = config.paths().state
    for svc in services:
        if isinstance(svc, RedisCluster):
            body["online_store"] = {"type": "redis_cluster", "nodes": [f"{config.HOST}:{p}" for p in svc.node_ports]}
        elif isinstance(svc, KafkaCluster):
            body["kafka"] = {"bootstrap": svc.bootstrap}
        elif isinstance(svc, FlinkCluster):
            body["flink"] = {"rest_url": svc.rest_url, "parallelism": svc.taskmanagers * svc.slots}
        elif isinstance(svc, ObjectStore):
            key_id, key = object_store_credentials(state)
            body["object_store"] = {"endpoint": svc.endpoint, "region": OBJECT_STORE_REGION,
                                    "access_key_id": {"file": str(key_id)}, "secret_access_key": {"file": str(key)},
                                    "path_style_access": True}
        elif isinstance(svc, CatalogDatabase):
            body["catalog"] = {"type": "postgres", "uri": svc.uri, "user": CATALOG_USER,
                               "password": {"file": str(catalog_password_file(state))}, "warehouse": WAREHOUSE_URI}
        elif isinstance(svc, SparkCluster):
            body["spark"] = {"master": svc.master_url}
    if "catalog" not in body:
        where = config.paths()
        body["catalog"] = {"type": "sqlite", "path": str(where.catalog_db), "warehouse": str(where.warehouse)}
    path = cluster_profile_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_profile_file({CLUSTER_PROFILE: body}, CLUSTER_PROFILE, path=path, header=(
        "Written by `skewless stack up --topology cluster` for the processes it started; removed by `stack down`.\n"
        f"Use it: SKEWLESS_CONFIG={path} skewless COMMAND ... (or copy the profile into <repo>/skewless.yaml).\n"
        "The SKEWLESS_*_URL / _BOOTSTRAP variables, if set, win over it (docs/deploy.md).")))
    return path


def check_topology(topology: str) -> str:
    """``topology`` if it is known; else a StackError naming the choices."""
    if topology not in TOPOLOGIES:
        raise StackError(f"unknown topology {topology!r}; use one of: {', '.join(TOPOLOGIES)}")
    return topology


def free_cluster_ports_env(attempts: int = 200) -> dict[str, str]:
    """``SKEWLESS_*_PORT`` values whose derived cluster ports (offsets, Redis bus ports) are all free now.

    For tests: each base is tried at random in 20000-29999 until all of its offsets can be bound.
    """

    def block_free(base: int, offsets: Sequence[int]) -> bool:
        for offset in offsets:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((config.HOST, base + offset))
                except OSError:
                    return False
        return True

    kafka_span = KAFKA_PORT_STEP * KAFKA_NODES  # broker and controller ports interleave: base .. base+5
    redis_nodes = REDIS_MASTERS * (1 + REDIS_REPLICAS_PER_MASTER)
    wanted = {
        "kafka": range(kafka_span),
        "flink": range(1),
        "redis": [*range(redis_nodes), *range(REDIS_BUS_OFFSET, REDIS_BUS_OFFSET + redis_nodes)],
        "s3": range(1),
        "postgres": range(1),
        "spark": range(len(SparkCluster().ports())),
    }
    rng = random.Random()
    bases: dict[str, int] = {}
    taken: set[int] = set()
    for key, offsets in wanted.items():
        for _ in range(attempts):
            base = rng.randrange(20000, 30000)
            ports = {base + o for o in offsets}
            if not ports & taken and block_free(base, list(offsets)):
                bases[key] = base
                taken |= ports
                break
        else:
            raise StackError(f"no free block of ports for {key} based in 20000-29999 after {attempts} attempts")
    return {
        "SKEWLESS_KAFKA_PORT": str(bases["kafka"]),
        "SKEWLESS_KAFKA_CONTROLLER_PORT": str(bases["kafka"] + 1),
        "SKEWLESS_FLINK_REST_PORT": str(bases["flink"]),
        "SKEWLESS_REDIS_PORT": str(bases["redis"]),
        "SKEWLESS_S3_PORT": str(bases["s3"]),
        "SKEWLESS_POSTGRES_PORT": str(bases["postgres"]),
        "SKEWLESS_SPARK_MASTER_PORT": str(bases["spark"]),
    }
