"""The job's sinks: the unified changelog (tiles, progress, dead letters) applied to Redis and Kafka in the JVM.

The writer is Java (``streaming_jobs/java/src/dev/skewless/flink/``: ``RedisTileSink``, ``TileEncoder``,
``RedisNodes`` (Jedis, one Redis or a Redis Cluster), ``DeadLetterSerializer``, ``SinkGraph``); this module builds its spec from
:mod:`skewless.core.layout` (key prefixes and suffixes per tile output, retention, the CAS script, the
progress, epoch and meta keys), so keys and encodings have one definition. ``TileEncoder`` writes
``layout.encode_tile_vector``'s text byte for byte; ``tests/unit/test_java_sink.py`` checks it against
layout on generated rows (:func:`encode_rows` runs it in a plain JVM).

Semantics (docs/streaming.md): rows are coalesced per tile field and progress field and written when
``flush_rows`` rows are pending, when the ``flush_ms`` timer fires, before every checkpoint and at the end
of a bounded input; a tile field (``t:{H}:{start}`` of the entity hash) is replaced only by a version >= the stored
one (``TILE_CAS_LUA``, which also keeps the hash's manifest and prunes old tiles), so a replay after a restore cannot
move a value backwards. On a Redis Cluster every script call carries keys of one hash slot, the calls are pipelined
per master, and the progress fields are written once the tiles they cover are acknowledged and on a replica
(``WAIT``); a checkpoint completes only when its writes are on a replica. The writer refuses a Redis whose ``maxmemory-policy`` may evict keys (the policies of
``layout.EVICTING_POLICIES``; where ``CONFIG GET`` is denied it warns and goes on). Dead letters go to ``<topic>.dead-letters`` through
Flink's Kafka sink (at least once).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Iterable, Sequence
from urllib.parse import unquote, urlparse

from skewless.config import (REDIS_CLUSTER_SCHEMES, kafka_client_properties, kafka_timeout_properties, kafka_timeout_s,
                             redact_url, redis_target)
from skewless.core import layout

from streaming_jobs.flink_compiler import FlinkSourceJob
from streaming_jobs.udf import UdfBuildError, run_main, udf_jar

SINK_GRAPH_CLASS = "dev.skewless.flink.SinkGraph"
SINK_CLASS = "dev.skewless.flink.RedisTileSink"
ENCODER_CLASS = "dev.skewless.flink.TileEncoder"
CAS_KEYS = 256  # tile keys per TILE_CAS_LUA call (one hash slot per call on a cluster; bounded so Redis is not blocked long)


@dataclass(frozen=True)
class SinkConfig:
    """Where and how the sink writes."""

    redis_url: str
    project: str
    source: str
    dead_letter_topic: str
    bootstrap: str
    applied_from_ms: int
    flush_rows: int = 2000
    # raise the views' applied_from_ms to applied_from_ms (else it is only set when missing): the job lost records
    raise_applied_from: bool = False
    flush_ms: int = 200
    # the topic and its partition count: subtask 0 checks its offsets about every second (the progress hash's
    # ``log_end``, skewless.core.staleness); None: no check (tests of the writer)
    topic: str | None = None
    partitions: int = 0


def redis_endpoint(url: str) -> dict[str, Any]:
    """The sink's Redis (``RedisNodes``): host, port and db of a ``redis[s]://[user[:password]@]host:port[/db]`` URL,
    or the seed ``nodes`` of a Redis Cluster (``redis[s]+cluster://[user[:password]@]HOST:PORT,...``, ``cluster``
    true); the password comes from the URL or else from the configuration (``SKEWLESS_REDIS_PASSWORD[_FILE]``), the
    CA of TLS from ``SKEWLESS_REDIS_TLS_CA_FILE`` (else the JVM's trust store), the connect and read timeouts from
    ``SKEWLESS_REDIS_CONNECT_TIMEOUT_S`` / ``SKEWLESS_REDIS_TIMEOUT_S`` (:func:`skewless.config.redis_timeouts`)."""
    u = urlparse(url)
    if u.scheme in REDIS_CLUSTER_SCHEMES:
        target = redis_target(url)
        where: dict[str, Any] = {"cluster": True, "nodes": list(target.nodes)}
    elif u.scheme in ("redis", "rediss") and u.hostname:
        db = (u.path or "/0").strip("/") or "0"
        if not db.isdigit():
            raise ValueError(f"redis URL {redact_url(url)!r}: database {db!r} is not a number")
        target = redis_target(url)
        where = {"host": u.hostname, "port": u.port or 6379, "db": int(db)}
    else:
        raise ValueError(f"the streaming sink needs a redis[s]://host:port[/db] or redis[s]+cluster://host:port,... URL, "
                         f"got {redact_url(url)!r}")
    user = unquote(u.username) if u.username else target.username
    return {**where, "username": user or None,
            "password": unquote(u.password) if u.password else target.password,
            "tls": target.tls, "tls_ca_file": target.tls_ca_file,
            "connect_timeout_ms": int(target.connect_timeout_s * 1000), "timeout_ms": int(target.timeout_s * 1000)}


def sink_spec(job: FlinkSourceJob, views: dict[str, Any], config: SinkConfig) -> str:
    """The JSON the Java sink is built from: every key part and constant it needs, from layout, and the Redis and
    Kafka credentials (the spec travels inside the job graph, never in argv or a log)."""
    outputs = []
    for out in job.outputs:
        view = views[out.view]
        group = next(g for g in layout.tile_groups(view) if g.tile_ms == out.tile_ms)
        if tuple(c.agg for c in out.columns) != tuple(group.aggs):
            raise AssertionError(f"changelog and layout disagree on the tile vector of {out.view} H={out.tile_ms}")
        prefix = f"{layout.view_prefix(config.project, view)}:{{"
        suffix = "}" + layout.entity_key(config.project, view, _any_key(out.key_types)).rsplit("}", 1)[1]
        outputs.append({"view": out.view, "tile_ms": out.tile_ms, "retention_ms": group.retention_ms,
                        "key_prefix": prefix, "key_suffix": suffix, "key_types": list(out.key_types),
                        "columns": [[c.agg.value, c.value_type] for c in out.columns]})
    return json.dumps({
        "source": job.source, "key_width": job.key_width, "value_width": job.value_width, "outputs": outputs,
        "redis": redis_endpoint(config.redis_url), "progress_key": layout.progress_key(config.project, job.source, job.lane),
        "kafka_properties": {**kafka_timeout_properties("flink"), **kafka_client_properties("flink")},
        "epoch_key": layout.epoch_key(config.project),
        "meta_keys": [layout.view_meta_key(config.project, views[n]) for n in job.views],
        "applied_from_ms": config.applied_from_ms, "raise_applied_from": config.raise_applied_from, "cas_script": layout.TILE_CAS_LUA, "cas_keys": CAS_KEYS,
        "evicting_policies": list(layout.EVICTING_POLICIES),
        "flush_rows": config.flush_rows, "flush_ms": config.flush_ms,
        "topic": config.topic, "partitions": config.partitions, "bootstrap": config.bootstrap,
        "log_end_timeout_ms": max(1, int(kafka_timeout_s() * 1000)),
    }, sort_keys=True)


def _any_key(key_types: Sequence[str]) -> tuple[Any, ...]:
    return tuple(0 if t == "int64" else "x" for t in key_types)


def attach_sinks(changelog: Any, job: FlinkSourceJob, views: dict[str, Any], config: SinkConfig) -> None:
    """Attach ``SinkGraph`` (Redis tiles + progress, Kafka dead letters) to the changelog ``DataStream``."""
    from pyflink.java_gateway import get_gateway

    graph = get_gateway().jvm
    for part in SINK_GRAPH_CLASS.split("."):  # the class from the job's jar (pipeline.jars)
        graph = getattr(graph, part)
    graph.attach(changelog._j_data_stream, sink_spec(job, views, config), config.bootstrap, config.dead_letter_topic,
                 job.source)


def encode_rows(spec: str, epoch: str, rows: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """``TileEncoder`` over changelog rows in a plain JVM (tests): per row ``["T", key, start, value]``,
    ``["P", field, value]`` (written_ms 0), ``["D", key, value]`` or ``["E", error]``."""
    java = shutil.which("java")
    if java is None:
        raise UdfBuildError("java not found: install a JDK 17")
    lines = "".join(json.dumps(list(r), ensure_ascii=False) + "\n" for r in rows)
    done = subprocess.run([java, "-cp", str(udf_jar()), ENCODER_CLASS, spec, epoch], input=lines.encode(),
                          capture_output=True, check=False)
    if done.returncode != 0:
        raise UdfBuildError(f"{ENCODER_CLASS} failed: {done.stderr.decode(errors='replace')}")
    return [json.loads(line) for line in done.stdout.decode().split("\n") if line]  # not splitlines: U+2028


def trace_writes(spec: str, epoch: str, lines: Iterable[Sequence[Any] | str], cluster: bool,
                 failing_write: int = 0) -> list[list[Any]]:
    """``RedisTileSink``'s writer over a recording store in a plain JVM (tests): ``lines`` are changelog rows or
    ``"CHECKPOINT"`` / ``"TIMER"``; per store call ``["pipeline", [[slot, command, key...], ...]]`` or
    ``["confirm"]``, and ``["error", message]`` where a flush failed (``failing_write``: the n-th command fails)."""
    text = "".join((line if isinstance(line, str) else json.dumps(list(line), ensure_ascii=False)) + "\n" for line in lines)
    out = run_main(SINK_CLASS, [spec, epoch, "true" if cluster else "false", str(failing_write)], text, with_flink=True)
    return [json.loads(line) for line in out]
