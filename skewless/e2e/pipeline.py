"""The pipeline's steps as calls the parity harness and the demo share: produce, read back, stream, archive,
backfill, materialize. Each step runs the project's real code (no feature logic here)."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Callable

from skewless import config
from skewless.core.timeutil import MS_PER_DAY, from_epoch_ms

Log = Callable[[str], None]


@dataclass
class Targets:
    """Where the pipeline runs: Kafka, Redis (one or a cluster), the Iceberg catalog, Flink and Spark.

    ``catalog_db``/``warehouse``: a private sqlite catalog and local warehouse; both None: the active profile's
    catalog (the cluster topology's PostgreSQL catalog with its ``s3://`` warehouse). ``flink``: ``"session"``
    submits the job to the Flink session cluster at ``flink_rest_port`` (``flink run``, at ``parallelism`` when
    given), ``"minicluster"`` runs it in this process; its checkpoints go under ``checkpoint_uri`` (default:
    ``workdir/checkpoints``). ``spark``: a SparkSession over the same catalog, or None to start one here on
    ``spark_master`` with ``spark_conf``.
    """

    bootstrap: str
    redis_url: str
    catalog_db: Path | None
    warehouse: Path | None
    flink: str = "session"
    flink_rest_port: int | None = None
    spark: Any = None
    workdir: Path = field(default_factory=lambda: config.paths().state / "parity")
    parallelism: int | None = None
    checkpoint_uri: str | None = None
    spark_master: str = "local[2]"
    spark_conf: dict[str, str] = field(default_factory=dict)

    @property
    def catalog_name(self) -> str:
        """How logs name the catalog: the sqlite file, or the profile's shared catalog and warehouse."""
        if self.catalog_db is not None:
            return str(self.catalog_db)
        shared = config.shared_catalog()
        return f"{shared.uri} ({shared.warehouse})" if shared is not None else str(config.paths().catalog_db)

    def catalog(self) -> Any:
        from skewless.engines.iceberg_catalog import load_catalog

        return load_catalog(catalog_db=self.catalog_db, warehouse=self.warehouse)

    def redis(self) -> Any:
        """A client of ``redis_url`` (a Redis Cluster client for ``redis+cluster://``) connected as
        :func:`skewless.config.redis_target` says (password, TLS, timeouts)."""
        from skewless.engines.redis_client import open_redis

        return open_redis(config.redis_target(self.redis_url))

    def spark_session(self) -> Any:
        if self.spark is None:
            from skewless.engines.spark_session import spark_session

            self.spark = spark_session("skewless-e2e", master=self.spark_master, warehouse=self.warehouse,
                                       catalog_db=self.catalog_db,
                                       extra_conf={"spark.ui.showConsoleProgress": "false", **self.spark_conf})
            self.spark.sparkContext.setLogLevel("ERROR")
        return self.spark

    @staticmethod
    def local_stack(workdir: Path) -> Targets:
        """The `make up` stack's Kafka, Redis and Flink, with a private catalog under ``workdir``."""
        ports = config.ports()
        return Targets(bootstrap=f"{config.HOST}:{ports.kafka}", redis_url=config.redis_url(ports.redis),
                       catalog_db=workdir / "catalog.db", warehouse=workdir / "warehouse", flink="session",
                       flink_rest_port=ports.flink_rest, workdir=workdir)


class Phases:
    """Phase lines with timings: ``[  12.3 s] stream: 3000 records -> Redis (8.1 s)``."""

    def __init__(self, log: Log) -> None:
        self.log, self.t0 = log, time.monotonic()
        self.timings: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any], done: Callable[[Any], str] | None = None) -> Any:
        self.log(f"[{time.monotonic() - self.t0:7.1f} s] {name} ...")
        t = time.monotonic()
        result = fn()
        took = self.timings[name] = time.monotonic() - t
        detail = f": {done(result)}" if done else ""
        self.log(f"[{time.monotonic() - self.t0:7.1f} s] {name} done in {took:.1f} s{detail}")
        return result


def day_of(ms: int) -> date:
    return from_epoch_ms(ms).date()


# --- Kafka ---------------------------------------------------------------------------------------------


def create_topic(bootstrap: str, topic: str, partitions: int, retention_ms: int | None = None) -> None:
    """Create ``topic`` (existing: left as is); ``retention_ms=-1`` keeps old-stamped history."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    from skewless.engines.kafka import admin_client, create_topics

    create_topics(bootstrap, {topic: partitions})
    if retention_ms is not None:
        admin = admin_client(bootstrap, 30)
        res = ConfigResource("TOPIC", topic, incremental_configs=[
            ConfigEntry("retention.ms", str(retention_ms), incremental_operation=AlterConfigOpType.SET)])
        for fut in admin.incremental_alter_configs([res]).values():
            fut.result(timeout=30)


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """High watermark per partition."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"e2e-probe-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in meta.partitions}
    finally:
        consumer.close()


def read_topic(bootstrap: str, topic: str, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """Every record of ``topic`` up to its current end, as admission.py takes them."""
    from confluent_kafka import Consumer, TopicPartition

    ends = end_offsets(bootstrap, topic)
    expected = sum(ends.values())
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"e2e-read-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for m in consumer.consume(5000, timeout=1.0):
                if m.error() is None and m.offset() < ends[m.partition()]:
                    out.append({"partition": m.partition(), "offset": m.offset(), "timestamp_ms": m.timestamp()[1],
                                "value": m.value(), "key": m.key()})
    finally:
        consumer.close()
    if len(out) < expected:
        raise RuntimeError(f"read {len(out)} of {expected} records of {topic} within {timeout_s:.0f} s")
    out.sort(key=lambda r: (r["partition"], r["offset"]))
    return out


# --- streaming -------------------------------------------------------------------------------------------


def stream_progress(client: Any, project: str, source: str) -> dict[int, dict[str, Any]]:
    import json

    from skewless.core import layout

    raw = client.hgetall(layout.progress_key(project, source))
    out = {}
    for k, v in raw.items():
        k = k.decode() if isinstance(k, bytes) else k
        if k.startswith("p:"):
            out[int(k[2:])] = json.loads(v)
    return out


def run_stream_bounded(targets: Targets, view: str, topic: str, project: str, log: Log,
                       stop_offsets: dict[int, int] | None = None) -> str | None:
    """The compiled streaming job of ``view`` over ``topic`` from offset 0 to its current end (bounded), or to
    ``stop_offsets`` per partition (records produced while the job runs); the session cluster's job id (None on
    a MiniCluster)."""
    ckpt: str | Path = (f"{targets.checkpoint_uri.rstrip('/')}/{project}" if targets.checkpoint_uri
                        else targets.workdir / "checkpoints" / project)
    group = f"e2e-{project}"
    if targets.flink == "session":
        from skewless.stack.flink import FlinkSessionCluster

        script = config.PROJECT_ROOT / "streaming_jobs" / "run_view.py"
        args = ["--view", view, "--topic", topic, "--project", project, "--bounded", "--bootstrap", targets.bootstrap,
                "--redis", targets.redis_url, "--checkpoint-dir", str(ckpt), "--checkpoint-interval", "5 s",
                "--applied-from-ms", "0", "--group", group, "--flush-ms", "100", "--mini-batch-latency", "500 ms",
                "--name", f"skewless-e2e-{project}"]
        if stop_offsets is not None:
            args += ["--stop-offsets", ",".join(f"{p}:{o}" for p, o in sorted(stop_offsets.items()))]
        if targets.parallelism is not None:
            args += ["--parallelism", str(targets.parallelism)]
        cluster = FlinkSessionCluster(rest_port=targets.flink_rest_port)
        return cluster.submit_python_job(script, args, detached=False, timeout_s=1800)
    from skewless.core.repo import load_repository
    from skewless.engines.flink_env import create_stream_env
    from streaming_jobs.flink_compiler import compile_repository
    from streaming_jobs.job import JobOptions, add_source_job
    from streaming_jobs.run_view import stream_conf

    (job,) = compile_repository(load_repository(), [view])
    env, t_env = create_stream_env(parallelism=1, checkpoint_dir=ckpt, checkpoint_interval="5 s",
                                   extra_conf=stream_conf("500 ms", 10_000))
    add_source_job(env, t_env, job, JobOptions(
        bootstrap=targets.bootstrap, redis_url=targets.redis_url, project=project,
        repo_path=str(config.PROJECT_ROOT / "feature_defs"), topic=topic, bounded=True, group=group,
        ns=f"sk_{project}", applied_from_ms=0, flush_ms=100, stop_offsets=stop_offsets))
    env.execute(f"skewless-e2e-{project}")
    return None


# --- archive ---------------------------------------------------------------------------------------------


def archive_drain(targets: Targets, source: Any, topic: str) -> Any:
    """The raw archive of ``source`` read from ``topic`` into the targets' catalog, until caught up."""
    from skewless.archive.runner import ArchiveConfig, RunStats, run_archives

    src = dataclasses.replace(source, topic=topic)
    results = run_archives([src], targets.catalog, ArchiveConfig(bootstrap=targets.bootstrap, max_interval_s=2.0),
                           threading.Event(), drain=True)
    outcome = results[src.name]
    if not isinstance(outcome, RunStats):
        raise RuntimeError(f"archive of {src.name} stopped: {outcome}")
    return outcome


def batch_day(catalog: Any, source: Any) -> date:
    """The newest day D whose batch run the archive gate admits (cut-off D+1 <= complete_until)."""
    from skewless.offline.archive_progress import archive_progress

    until = archive_progress(catalog, source).complete_until_ms
    if until is None:
        raise RuntimeError(f"the archive of {source.name} has no complete_until yet")
    return day_of(until // MS_PER_DAY * MS_PER_DAY) - timedelta(days=1)


def backfill(targets: Targets, view: Any, repo: Any, start: date, end: date, log: Log) -> Any:
    """``batch_jobs.runner.run_range`` (what `skewless backfill` runs) with the archive gate on."""
    from batch_jobs.runner import RunOptions, compile_view, run_range

    return run_range(targets.spark_session(), view, compile_view(repo, view), start, end,
                     RunOptions(chunk_days=400, catalog=targets.catalog(), log=log))


def materialize(targets: Targets, repo: Any, day: date, project: str) -> list[Any]:
    """Every view's batch run of ``day`` into Redis (`skewless materialize`), no quality gate."""
    from batch_jobs.materialize import materialize_feature_view, materialize_snapshot_view
    from skewless.core import layout
    from skewless.core.dsl import FeatureView

    catalog, client = targets.catalog(), targets.redis()
    reports = []
    for view in sorted(repo.views, key=lambda v: v.name):
        if isinstance(view, FeatureView):
            if layout.batch_windows(view):
                reports.append(materialize_feature_view(catalog, client, view, day, project=project, init_epoch=True))
        else:
            reports.append(materialize_snapshot_view(catalog, client, view, day, project=project, init_epoch=True))
    return reports


def write_snapshot_rows(catalog: Any, table: str, rows: list[dict[str, Any]]) -> None:
    """Append snapshot rows (epoch-ms ``event_time``/``created_at``) to ``table`` (created if missing)."""
    import pyarrow as pa
    from pyiceberg.exceptions import NoSuchTableError

    schema = pa.schema([("user_id", pa.string()), ("credit_score", pa.int64()), ("segment", pa.string()),
                        ("event_time", pa.timestamp("us", tz="UTC")), ("created_at", pa.timestamp("us", tz="UTC"))])
    data = pa.table({"user_id": [r["user_id"] for r in rows], "credit_score": [r["credit_score"] for r in rows],
                     "segment": [r["segment"] for r in rows],
                     "event_time": [from_epoch_ms(r["event_time"]) for r in rows],
                     "created_at": [from_epoch_ms(r["created_at"]) for r in rows]}, schema=schema)
    ns = table.split(".")[0]
    if (ns,) not in catalog.list_namespaces():
        catalog.create_namespace(ns)
    try:
        t = catalog.load_table(table)
    except NoSuchTableError:
        t = catalog.create_table(table, schema=schema)
    t.append(data)


def delete_project_keys(client: Any, project: str) -> int:
    """Remove every Redis key of ``project`` (the parity run's private prefix), on every master of a cluster."""
    from skewless.engines.redis_client import scan_masters

    n = 0
    for key in list(scan_masters(client, match=f"{project}:*")):
        n += client.delete(key)
    return n
