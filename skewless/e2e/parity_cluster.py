"""The consistency proof on the cluster topology (``skewless parity --topology cluster``, docs/parity.md).

The run of :func:`skewless.e2e.parity.run_parity` against the running ``stack up --topology cluster``: the stream
job at the profile's parallelism (4) on the Flink session cluster's two TaskManagers, into the Redis Cluster,
through the replicated Kafka (RF 3, min ISR 2, every producer ``acks=all``); the archive into the ``s3://``
warehouse through the PostgreSQL catalog (a private database ``parity_<run>`` on the stack's server, warehouse
``s3://<bucket>/parity/<run>``, so runs never share tables), the backfill on the Spark workers, materialization into
the Redis Cluster, training sets by both engines from that warehouse.

So that a one-node "cluster" cannot pass, the run also asserts where things ran (:class:`ClusterProbe`), each a
:class:`~skewless.e2e.parity.Check` whose failure is one line:

- the compared entities' keys sit on at least 2 Redis masters (each key's slot, ``CLUSTER KEYSLOT``, in the slot
  map, and the key present on that master itself);
- the job's subtasks ran on at least 2 TaskManagers (Flink REST ``/jobs/<id>/vertices/<vid>``'s subtasks);
- every Iceberg table's metadata file, metadata log, manifest lists, manifests and data files are ``s3://``
  paths (read through PyIceberg);
- the backfill's tasks ran on at least 2 Spark workers (the application's ``/api/v1/.../executors`` task counts
  before and after the backfill, each executor placed on its worker by the workers' ``/json/``).

The checks are pure functions of what was fetched (unit-tested with fakes: tests/unit/test_parity_cluster.py).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import redis

from skewless import config
from skewless.archive.maintenance import referenced_files
from skewless.core import layout
from skewless.e2e.parity import FEATURE_VIEW, Check, RunContext, TopologyProbe
from skewless.e2e.pipeline import Targets
from skewless.engines.redis_client import is_cluster, node_of_slot

MIN_MASTERS = 2
MIN_TASKMANAGERS = 2
MIN_WORKERS = 2
HTTP_TIMEOUT_S = 10.0
SPARK_EXECUTOR_MEMORY = "640m"  # fits a worker's 1 GiB for executors (skewless/stack/offline.py)
NO_WORKER = "<no worker>"  # tasks of executors no Spark worker launched (the driver of a local master)
RUN_DATABASE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class ClusterNotReady(RuntimeError):
    """The cluster topology is not running (or not whole); the message is one line naming what and the fix."""


# --- the checks (pure) -------------------------------------------------------------------------------------


def masters_check(key_masters: Mapping[str, str | None], minimum: int = MIN_MASTERS) -> Check:
    """The compared entities' keys -> the master holding each (None: on no master): at least ``minimum`` masters."""
    name = f"compared entities' keys sit on >= {minimum} Redis masters"
    missing = sorted(k for k, m in key_masters.items() if m is None)
    spread: dict[str, int] = {}
    for master in key_masters.values():
        if master is not None:
            spread[master] = spread.get(master, 0) + 1
    if not key_masters:
        return Check(name, False, "no keys were compared")
    if missing:
        return Check(name, False, f"{len(missing)} of {len(key_masters)} keys are on no master of their slot, "
                                  f"e.g. {missing[:3]}")
    detail = ", ".join(f"{m}: {n}" for m, n in sorted(spread.items()))
    if len(spread) < minimum:
        return Check(name, False, f"all {len(key_masters)} keys sit on {len(spread)} master(s) ({detail}): "
                                  "not a Redis Cluster of several masters")
    return Check(name, True, f"{len(key_masters)} keys over {len(spread)} masters ({detail})")


@dataclass(frozen=True)
class Vertex:
    """One vertex of a Flink job: its name, parallelism and the TaskManager id of each subtask."""

    name: str
    parallelism: int
    taskmanagers: tuple[str, ...]


def taskmanagers_check(vertices: Sequence[Vertex], parallelism: int, minimum: int = MIN_TASKMANAGERS) -> Check:
    """The job ran at ``parallelism`` and every vertex of parallelism > 1 spread its subtasks over at least
    ``minimum`` TaskManagers."""
    name = f"the stream job's subtasks ran on >= {minimum} TaskManagers at parallelism {parallelism}"
    if not vertices:
        return Check(name, False, "the job has no vertices (was it found on the session cluster?)")
    top = max(v.parallelism for v in vertices)
    if top != parallelism:
        return Check(name, False, f"the job ran at parallelism {top}, want {parallelism}")
    narrow = [v for v in vertices if v.parallelism > 1 and len(set(v.taskmanagers)) < minimum]
    used = sorted({tm for v in vertices for tm in v.taskmanagers})
    if narrow or len(used) < minimum:
        v = narrow[0] if narrow else vertices[0]
        return Check(name, False, f"vertex {v.name[:60]!r} ran its {v.parallelism} subtasks on "
                                  f"{len(set(v.taskmanagers))} TaskManager(s); the job used {len(used)}")
    return Check(name, True, f"{len(vertices)} vertices, {sum(len(v.taskmanagers) for v in vertices)} subtasks on "
                             f"{len(used)} TaskManagers ({', '.join(used)})")


def s3_paths_check(table_paths: Mapping[str, Sequence[str]], prefix: str) -> Check:
    """Every table's metadata file, metadata log, manifest lists, manifests and data files are under ``prefix``
    (an ``s3://`` warehouse)."""
    name = "every Iceberg table's metadata, manifest lists, manifests and data files are s3:// paths"
    if not prefix.startswith("s3://"):
        return Check(name, False, f"the warehouse {prefix} is not on an object store (s3://)")
    if not table_paths:
        return Check(name, False, "the catalog lists no tables")
    for table, paths in sorted(table_paths.items()):
        if not paths:
            return Check(name, False, f"table {table} references no files")
        other = [p for p in paths if not p.startswith(prefix)]
        if other:
            return Check(name, False, f"table {table}: {len(other)} of {len(paths)} paths are not under {prefix}, "
                                      f"e.g. {other[0]}")
    total = sum(len(p) for p in table_paths.values())
    return Check(name, True, f"{len(table_paths)} tables, {total} paths, all under {prefix}")


def workers_check(tasks_by_worker: Mapping[str, int], minimum: int = MIN_WORKERS) -> Check:
    """The backfill's tasks per Spark worker: at least ``minimum`` workers ran some."""
    name = f"the backfill's tasks ran on >= {minimum} Spark workers"
    busy = {w: n for w, n in tasks_by_worker.items() if n > 0 and w != NO_WORKER}
    detail = ", ".join(f"{w}: {n}" for w, n in sorted(tasks_by_worker.items())) or "no executor on any worker"
    if len(busy) < minimum:
        return Check(name, False, f"tasks ran on {len(busy)} worker(s) ({detail}): not a Spark cluster of several workers")
    return Check(name, True, f"tasks per worker: {detail}")


def tasks_per_worker(before: Mapping[str, int], after: Mapping[str, int], worker_of: Mapping[str, str]) -> dict[str, int]:
    """Tasks each worker's executors ran between two snapshots of ``executor id -> total tasks``; an executor no
    worker launched (the driver, a local master) counts under :data:`NO_WORKER`."""
    out: dict[str, int] = {}
    for executor, total in after.items():
        worker = worker_of.get(executor, NO_WORKER)
        out[worker] = out.get(worker, 0) + total - before.get(executor, 0)
    return out


# --- fetching what the checks read ---------------------------------------------------------------------------


def get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise RuntimeError(f"GET {url} failed: {exc}") from None


def key_masters(client: Any, keys: Sequence[bytes]) -> dict[str, str | None]:
    """Per key, the master holding it: its slot (``CLUSTER KEYSLOT``) in the client's slot map, and the key present
    on that master itself (``EXISTS`` sent to the node, no redirection). One Redis: ``CLUSTER KEYSLOT`` fails,
    so every key is on ``"one Redis (cluster support disabled)"``."""
    out: dict[str, str | None] = {}
    if not is_cluster(client):
        try:
            client.execute_command("CLUSTER", "KEYSLOT", "x")
        except redis.ResponseError:
            return {k.decode(): "one Redis (cluster support disabled)" for k in keys}
        return {k.decode(): "one Redis node (named without its cluster)" for k in keys}
    for key in keys:
        slot = int(client.cluster_keyslot(key))
        node = node_of_slot(client, slot)
        out[key.decode()] = node.name if node is not None and node.redis_connection.exists(key) else None
    return out


def job_vertices(rest_url: str, job_id: str) -> list[Vertex]:
    """The job's vertices with the TaskManager of each subtask (``GET /jobs/<id>``, ``/jobs/<id>/vertices/<vid>``)."""
    job = get_json(f"{rest_url}/jobs/{job_id}")
    out = []
    for v in job.get("vertices", []):
        detail = get_json(f"{rest_url}/jobs/{job_id}/vertices/{v['id']}")
        tms = tuple(str(s.get("taskmanager-id", "(unknown)")) for s in detail.get("subtasks", []))
        out.append(Vertex(str(v.get("name", v["id"])), int(v.get("parallelism", len(tms))), tms))
    return out


def table_paths(catalog: Any) -> dict[str, list[str]]:
    """Per table of ``catalog``: its metadata file, location, metadata log and every file its snapshots reference."""
    out = {}
    for namespace in catalog.list_namespaces():
        for ident in catalog.list_tables(namespace):
            table = catalog.load_table(ident)
            out[".".join(ident)] = [table.metadata_location, table.location(),
                                    *(e.metadata_file for e in table.metadata.metadata_log),
                                    *sorted(referenced_files(table, table.metadata.snapshots))]
    return out


def executor_tasks(spark: Any) -> dict[str, int]:
    """``executor id -> total tasks`` of the session's application (its UI's ``/api/v1/applications/<id>/executors``;
    the driver left out). Needs the UI (``spark.ui.enabled``)."""
    ui = spark.sparkContext.uiWebUrl
    if not ui:
        raise RuntimeError("the Spark session has no web UI (spark.ui.enabled=false): its executors cannot be listed")
    app = spark.sparkContext.applicationId
    return {str(e["id"]): int(e.get("totalTasks", 0)) for e in get_json(f"{ui}/api/v1/applications/{app}/executors")
            if e.get("id") != "driver"}


def executor_workers(master_ui: str, app_id: str) -> dict[str, str]:
    """``executor id -> worker id`` of the application ``app_id``: the master's ``/json/`` lists the workers, each
    worker's ``/json/`` the executors it launched (running or finished)."""
    out = {}
    for worker in get_json(f"{master_ui}/json/").get("workers", []):
        if worker.get("state") != "ALIVE":
            continue
        state = get_json(f"{worker['webuiaddress'].rstrip('/')}/json/")
        for e in [*state.get("executors", []), *state.get("finishedexecutors", [])]:
            if e.get("appid") == app_id:
                out[str(e["id"])] = str(worker["id"])
    return out


class ClusterProbe(TopologyProbe):
    """The cluster assertions of a parity run (the module's docstring)."""

    def __init__(self, flink_rest_url: str, parallelism: int, spark_master_ui: str, warehouse: str) -> None:
        self.flink_rest_url, self.parallelism = flink_rest_url, parallelism
        self.spark_master_ui, self.warehouse = spark_master_ui, warehouse

    def stream_done(self, ctx: RunContext) -> list[Check]:
        if ctx.job_id is None:
            return [Check(f"the stream job's subtasks ran on >= {MIN_TASKMANAGERS} TaskManagers", False,
                          "the job ran in this process (MiniCluster), not on the session cluster")]
        return [taskmanagers_check(job_vertices(self.flink_rest_url, ctx.job_id), self.parallelism)]

    def backfill(self, ctx: RunContext, run: Callable[[], Any]) -> tuple[Any, list[Check]]:
        spark = ctx.targets.spark_session()
        before = executor_tasks(spark)
        result = run()
        after = executor_tasks(spark)
        placed = executor_workers(self.spark_master_ui, spark.sparkContext.applicationId)
        return result, [workers_check(tasks_per_worker(before, after, placed))]

    def run_done(self, ctx: RunContext, catalog: Any) -> list[Check]:
        view = ctx.repo.view(FEATURE_VIEW)
        keys = [layout.entity_key(ctx.project, view, (u,)) for u in ctx.sample]
        keys = [k.encode() if isinstance(k, str) else k for k in keys]
        return [masters_check(key_masters(ctx.targets.redis(), keys)), s3_paths_check(table_paths(catalog), self.warehouse)]


# --- the running cluster topology ------------------------------------------------------------------------------


def running_cluster(record: Mapping[str, Any] | None, profile_path: Path,
                    make: Callable[[str, dict[str, int]], Any], names: Sequence[str]) -> dict[str, Any]:
    """The recorded cluster services by name (built by ``make(name, ports)``), each healthy; else
    :class:`ClusterNotReady` naming what is missing or unhealthy and the fix."""
    fix = "start it with `make up TOPOLOGY=cluster` (skewless stack up --topology cluster) on these ports"
    if not record or record.get("topology") != "cluster":
        running = f"the {record.get('topology', 'single')} topology runs" if record else "no stack runs"
        raise ClusterNotReady(f"--topology cluster needs the cluster topology running, but {running}; {fix}")
    if not profile_path.is_file():
        raise ClusterNotReady(f"the cluster topology's profile {profile_path} is missing; restart it "
                              "(`make down`, then `make up TOPOLOGY=cluster`)")
    entries = {e["name"]: e for e in record.get("services", [])}
    missing = [n for n in names if n not in entries]
    if missing:
        raise ClusterNotReady(f"the cluster topology runs without {', '.join(missing)}; {fix}")
    services = {n: make(n, entries[n]["ports"]) for n in names}
    unhealthy = [n for n, svc in services.items() if not healthy(svc)]
    if unhealthy:
        raise ClusterNotReady(f"cluster services not healthy: {', '.join(unhealthy)} (`skewless stack status` shows "
                              "which node); fix them or restart the topology (`make down`, `make up TOPOLOGY=cluster`)")
    return services


def healthy(service: Any) -> bool:
    try:
        return bool(service.healthy())
    except Exception:  # noqa: BLE001 - a probe that raises is "not healthy"
        return False


def create_run_database(shared: config.SharedCatalog, name: str) -> str:
    """``CREATE DATABASE name`` on the catalog's PostgreSQL server (as the catalog's user); its ``postgresql://`` URI."""
    import pg8000

    if not RUN_DATABASE.match(name):
        raise ValueError(f"database name {name!r}: use lower-case letters, digits and _")
    host, port, _ = shared.host_port_db
    conn = pg8000.connect(user=shared.user, password=shared.password, host=host, port=port, database="postgres",
                          timeout=shared.timeout_s)
    try:
        conn.autocommit = True
        conn.run(f"CREATE DATABASE {name}")
    finally:
        conn.close()
    return f"postgresql://{host}:{port}/{name}"


def write_run_profile(cluster_profile: Path, profile_name: str, catalog_uri: str, warehouse: str, out: Path) -> Path:
    """A copy of the cluster topology's profile whose catalog is ``catalog_uri`` with the warehouse ``warehouse``."""
    import yaml

    from skewless.profile import dump_profile_file

    doc = yaml.safe_load(cluster_profile.read_text())
    body = dict(doc["profiles"][profile_name])
    body["catalog"] = {**body["catalog"], "uri": catalog_uri, "warehouse": warehouse}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dump_profile_file({profile_name: body}, profile_name, path=out, header=(
        f"A parity run's copy of {cluster_profile}: its own catalog database and warehouse prefix.")))
    return out


def cluster_targets(profile: config.Profile, workdir: Path, checkpoint_uri: str) -> Targets:
    """Targets of the profile (the run's copy of the cluster topology's): every component from it, the catalog the
    profile's (no private sqlite), Spark on its standalone master with a UI on a free port (the executors' task
    counts) and the job at its parallelism."""
    return Targets(
        bootstrap=config.kafka_bootstrap(profile), redis_url=config.redis_target(profile=profile).url,
        catalog_db=None, warehouse=None, flink="session", flink_rest_port=urlsplit(config.flink_rest_url(profile)).port,
        workdir=workdir, parallelism=profile.flink.parallelism, checkpoint_uri=checkpoint_uri,
        spark_master=config.spark_master("local[2]", profile),
        spark_conf={"spark.executor.memory": SPARK_EXECUTOR_MEMORY, "spark.ui.enabled": "true", "spark.ui.port": "0",
                    "spark.scheduler.minRegisteredResourcesRatio": "1.0",
                    "spark.scheduler.maxRegisteredResourcesWaitingTime": "60s"})


__all__ = ["ClusterNotReady", "ClusterProbe", "Vertex", "cluster_targets", "create_run_database", "executor_tasks",
           "executor_workers", "job_vertices", "key_masters", "masters_check", "running_cluster", "s3_paths_check",
           "table_paths", "taskmanagers_check", "tasks_per_worker", "workers_check",
           "write_run_profile"]
