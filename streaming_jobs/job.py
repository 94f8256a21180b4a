"""Builds a compiled source job into a PyFlink environment: SQL views -> one upsert changelog -> the
Java Redis and dead-letter sinks. Used by ``run_view.py`` (MiniCluster or ``flink run -py``) and by the integration tests."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from skewless.config import kafka_client_properties, kafka_timeout_properties
from skewless.core.staleness import Progress, parse_progress
from skewless.core.timeutil import iso_ms
from skewless.engines.kafka import admin_client, create_topics
from streaming_jobs.flink_compiler import (CONTRIB_VIEW, DEDUP_VIEW, SHARED_SUFFIX, SHARED_VIEWS, FlinkSourceJob,
                                            dead_letter_topic, lane_id)
from streaming_jobs.sink import SinkConfig, attach_sinks
from streaming_jobs.udf import redis_client_jars, udf_jar

KEY_COLUMNS = ("kind", "view_name", "tile_ms")
DEDUP_CLASS = "dev.skewless.flink.DedupFunction"
TILES_CLASS = "dev.skewless.flink.TileAggregateOperator"


@dataclass(frozen=True)
class JobOptions:
    bootstrap: str
    redis_url: str
    project: str
    repo_path: str
    topic: str | None = None  # default: the source's topic
    starting_offsets: str = "earliest"  # earliest | latest | group
    group: str | None = None
    bounded: bool = False  # stop at the offsets that were latest at start (tests)
    # stop once every partition reached its offset here (tests; records may still be produced after the start)
    stop_offsets: dict[int, int] | None = None
    ns: str | None = None  # table-name namespace (unique per job in a shared MiniCluster)
    applied_from_ms: int | None = None  # default: from the topic's low watermarks (see applied_from)
    flush_rows: int = 2000
    flush_ms: int = 200


_STARTUP = {"earliest": "earliest-offset", "latest": "latest-offset", "group": "group-offsets"}


def applied_from(bootstrap: str, topic: str, starting_offsets: str) -> int:
    """Event time from which the stream applies every event: 0 when it reads a topic from offset 0 of
    every partition, else the job's start time (conservative: older windows read ``incomplete``)."""
    if starting_offsets == "earliest" and all(low == 0 for low in low_watermarks(bootstrap, topic).values()):
        return 0
    return int(time.time() * 1000)


def low_watermarks(bootstrap: str, topic: str) -> dict[int, int]:
    """Per partition of ``topic``, the first offset Kafka still holds (retention moves it up)."""
    return {p: low for p, (low, _) in watermarks(bootstrap, topic).items()}


def watermarks(bootstrap: str, topic: str) -> dict[int, tuple[int, int]]:
    """Per partition of ``topic``, the first offset Kafka still holds and the next offset it will write."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "skewless-probe", "enable.auto.commit": False,
                         **kafka_timeout_properties(), **kafka_client_properties()})
    try:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30) for p in meta.partitions}
    finally:
        consumer.close()


def record_upgrade_start(options: JobOptions, job: FlinkSourceJob, views: Mapping[str, Any], topic: str) -> None:
    """An upgrade job's start in its view version's meta (once: a restart keeps the first): the offsets live on the
    topic when it started (``start_offsets``, JSON partition -> next offset), which ``skewless promote`` requires its
    progress to pass."""
    import json

    from skewless.config import redis_target
    from skewless.core import layout
    from skewless.engines.redis_client import open_redis

    live = {str(p): high for p, (_, high) in sorted(watermarks(options.bootstrap, topic).items())}
    client = open_redis(redis_target(options.redis_url))
    try:
        for name in job.views:
            client.hsetnx(layout.view_meta_key(options.project, views[name]), layout.META_START_OFFSETS, json.dumps(live))
    finally:
        client.close()


def lost_partitions(progress: Iterable[Progress], lows: Mapping[int, int]) -> dict[int, tuple[int, int]]:
    """The partitions with records the stream never applied and Kafka no longer holds (retention passed them while the
    job was stopped): ``{partition: (next offset to apply, first offset held)}``. Nothing when nothing was applied
    yet (a first start); a partition without progress then counts from offset 0."""
    applied = {int(p.partition): p.offset for p in progress if p.offset is not None}
    if not applied:
        return {}
    return {p: (applied.get(p, -1) + 1, low) for p, low in sorted(lows.items()) if low > applied.get(p, -1) + 1}


def records_lost(options: JobOptions, source: str, topic: str, lane: str = "") -> dict[int, tuple[int, int]]:
    """:func:`lost_partitions` of the job's progress hash in the online store and the topic."""
    from skewless.config import redis_target
    from skewless.core import layout
    from skewless.engines.redis_client import open_redis

    client = open_redis(redis_target(options.redis_url))
    try:
        progress = parse_progress(client.hgetall(layout.progress_key(options.project, source, lane)))
    finally:
        client.close()
    return lost_partitions(progress, low_watermarks(options.bootstrap, topic))


def kafka_source_options(properties: dict[str, str]) -> str:
    """Kafka client properties as options of the Kafka table source (``, 'properties.K' = 'V'``, quotes doubled):
    the job's consumer gets the same security settings as every other client (Flink masks option values whose
    key names a password or JAAS config in its logs)."""
    return "".join(f", 'properties.{k}' = '{v.replace(chr(39), chr(39) * 2)}'" for k, v in properties.items())


def java_class(name: str) -> Any:
    """A class of the job's jar through the gateway."""
    from pyflink.java_gateway import get_gateway

    cls = get_gateway().jvm
    for part in name.split("."):
        cls = getattr(cls, part)
    return cls


def share_view(t_env: Any, name: str, dedup: FlinkSourceJob | None = None, partitions: int = 0) -> None:
    """Register ``<name>_shared``: the insert-only view as a DataStream and back (JVM only), so every
    query reading it shares one copy of its operators; it gets a fresh processing-time column ``pt``. With
    ``dedup`` the stream passes through the Java Deduplicate (``DedupFunction``, keyed by partition),
    which appends the ``dup`` and ``dedup_entries`` columns and the tile state's clock (``low_ms``: min over the
    subtask's partitions, of the topic's ``partitions``, of M(p) - L; ``low_src``: the subtask)."""
    from pyflink.datastream import DataStream
    from pyflink.table import Schema

    stream = t_env.to_data_stream(t_env.from_path(f"`{name}`"))
    if dedup is not None:
        stream = DataStream(java_class(DEDUP_CLASS).apply(stream._j_data_stream, dedup.allowed_lateness_ms, dedup.source,
                                                          partitions))
    table = t_env.from_data_stream(stream, Schema.new_builder().column_by_expression("pt", "PROCTIME()").build())
    t_env.create_temporary_view(f"`{name}{SHARED_SUFFIX}`", table)


def add_udf_jar(env: Any, t_env: Any) -> None:
    """Ship the jar of the job's Java code (``skewless_admit``, the sinks) and the Redis client's jars with the job
    (``pipeline.jars`` of the stream and table configs: the table config's value is the one a job submitted from the
    table environment carries)."""
    config = t_env.get_config()
    jars = [j for j in (config.get_configuration().get_string("pipeline.jars", "") or "").split(";") if j]
    missing = [u for u in (p.resolve().as_uri() for p in (udf_jar(), *redis_client_jars())) if u not in jars]
    if missing:
        config.set("pipeline.jars", ";".join([*jars, *missing]))
        env.add_jars(*missing)


def tile_bundle(t_env: Any, default_ms: int) -> str:
    """The tile pre-aggregation's bundle interval (a Flink duration): the SQL mini-batch's latency, as the SQL
    aggregates use, or ``default_ms`` without a mini-batch."""
    conf = t_env.get_config().get_configuration()
    latency = conf.get_string("table.exec.mini-batch.allow-latency", "") or ""
    enabled = (conf.get_string("table.exec.mini-batch.enabled", "false") or "").lower() == "true"
    return latency if enabled and latency.strip() else f"{default_ms} ms"


def add_source_job(env: Any, t_env: Any, job: FlinkSourceJob, options: JobOptions) -> None:
    """Register the job's SQL and attach its changelog to the sinks (``env.execute`` runs it)."""
    from pyflink.datastream import DataStream
    from pyflink.table import DataTypes, Schema
    from pyflink.table.changelog_mode import ChangelogMode

    topic = options.topic or job.topic
    ns = options.ns or f"sk_{job.source}"
    extra = kafka_source_options({**kafka_timeout_properties("flink"), **kafka_client_properties("flink")})
    partitions = len(admin_client(options.bootstrap).list_topics(topic, timeout=30).topics[topic].partitions)
    dl_topic = dead_letter_topic(topic, job.lane)
    views = load_views(options.repo_path, job.views, job.versions)
    if job.lane:
        record_upgrade_start(options, job, views, topic)
    create_topics(options.bootstrap, {dl_topic: max(1, partitions)})
    extra += ", 'scan.bounded.mode' = 'latest-offset'" if options.bounded else ""
    if options.stop_offsets is not None:
        if set(options.stop_offsets) != set(range(partitions)):
            raise ValueError(f"stop offsets name partitions {sorted(options.stop_offsets)}; {topic} has {partitions}")
        offsets = ";".join(f"partition:{p},offset:{o}" for p, o in sorted(options.stop_offsets.items()))
        extra += f", 'scan.bounded.mode' = 'specific-offsets', 'scan.bounded.specific-offsets' = '{offsets}'"
    statements, query = job.render(ns=ns, topic=topic, bootstrap=options.bootstrap,
                                   group=options.group or f"skewless-{job.source}" + (f"-{lane_id(job.lane)}" if job.lane else ""),
                                   startup_mode=_STARTUP[options.starting_offsets],
                                   extra_source_options=extra)
    add_udf_jar(env, t_env)
    for statement in statements:
        t_env.execute_sql(statement)
        for name in SHARED_VIEWS:
            if statement.startswith(f"CREATE TEMPORARY VIEW `{ns}_{name}`"):
                share_view(t_env, f"{ns}_{name}", job if name == DEDUP_VIEW else None, partitions)
    table = t_env.sql_query(query)
    key_cols = [*KEY_COLUMNS, *(f"k{i}" for i in range(job.key_width)), "tile_start"]
    builder = Schema.new_builder()
    for name in ("kind", "view_name"):
        builder.column(name, DataTypes.STRING().not_null())
    builder.column("tile_ms", DataTypes.BIGINT().not_null())
    for i in range(job.key_width):
        builder.column(f"k{i}", DataTypes.STRING().not_null())
    builder.column("tile_start", DataTypes.BIGINT().not_null())
    builder.column("version", DataTypes.BIGINT())
    for i in range(job.value_width):
        builder.column(f"c{i}", DataTypes.STRING())
    builder.primary_key(*key_cols)
    changelog = t_env.to_changelog_stream(table, builder.build(), ChangelogMode.upsert())
    contrib = t_env.to_data_stream(t_env.from_path(f"`{ns}_{CONTRIB_VIEW}`"))
    changelog = DataStream(java_class(TILES_CLASS).attach(changelog._j_data_stream, contrib._j_data_stream, job.tile_spec,
                                                          tile_bundle(t_env, options.flush_ms), job.source, partitions))
    applied_ms = options.applied_from_ms
    lost = records_lost(options, job.source, topic, job.lane) if applied_ms is None else {}
    if lost:  # the windows before the restart read `incomplete` (not plausible numbers) until the batch covers them
        applied_ms = int(time.time() * 1000)
        gaps = ", ".join(f"partition {p} offsets {a}..{low - 1}" for p, (a, low) in lost.items())
        print(f"skewless: {topic} no longer holds records the job had not applied ({gaps}; retention passed them while "
              f"it was stopped): windows before {iso_ms(applied_ms)} read `incomplete` until `skewless backfill` and "
              "`skewless materialize` cover them", file=sys.stderr)
    elif applied_ms is None:
        applied_ms = applied_from(options.bootstrap, topic, options.starting_offsets)
    config = SinkConfig(
        redis_url=options.redis_url, project=options.project, source=job.source, dead_letter_topic=dl_topic,
        bootstrap=options.bootstrap, applied_from_ms=applied_ms, raise_applied_from=bool(lost),
        flush_rows=options.flush_rows, flush_ms=options.flush_ms, topic=topic, partitions=partitions)
    attach_sinks(changelog, job, views, config)


def load_views(repo_path: str, names: tuple[str, ...], versions: tuple[int, ...] = ()) -> dict[str, Any]:
    """The job's views by name, each in the version the job computes (``versions``; default: the older declared)."""
    from skewless.core.repo import load_repository

    repo = load_repository(repo_path)
    return {n: repo.view(n, versions[i] if versions else None) for i, n in enumerate(names)}
