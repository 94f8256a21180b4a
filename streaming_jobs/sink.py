"""The Redis sink: the job's unified changelog (tiles, progress, dead letters) applied to Redis and Kafka.

Rows arrive keyed by a bucket (entity or partition). Each row is put into keyed MapState (so a checkpoint
holds what was not yet written: nothing is lost on restore) and the bucket is flushed when it holds
``flush_rows`` rows or when its processing-time timer (``flush_ms``) fires, so a tile's final update is
always written. A flush sends, in one pipeline, one ``TILE_CAS_LUA`` call per entity (all its tile keys;
a field is replaced only by a version >= the stored one, so a replay cannot move a value backwards),
then the progress fields, and produces dead letters to ``<topic>.dead-letters``.

Only the row -> Redis translation lives here; keys, encodings and the CAS script are
:mod:`skewless.core.layout`'s, intermediates :mod:`skewless.core.laws`'.
"""

from __future__ import annotations

import base64
import json
import time
import zlib
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from skewless.core import layout, laws
from skewless.core.dsl import Agg, KeyType

from streaming_jobs.flink_compiler import KIND_DEAD, KIND_PROGRESS, KIND_TILE, AggColumn, FlinkSourceJob, TileOutput

DEFAULT_PROJECT = "skewless"
# laws.dumps with its encoder built once (json.dumps builds one per call with these options)
_DUMPS = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False).encode


@dataclass(frozen=True)
class SinkConfig:
    """Where and how the sink writes."""

    redis_url: str
    project: str
    repo_path: str
    bootstrap: str
    dead_letter_topic: str
    source: str
    applied_from_ms: int
    flush_rows: int = 2000
    flush_ms: int = 200
    buckets: int = 8


# --- decoding one changelog row (pure; unit-tested) ---------------------------------------------------------------


def decode_acc(col: AggColumn, text: str | None) -> Any:
    """The laws intermediate of one aggregation from its changelog text (see FlinkCompiler._agg_sql)."""
    agg = col.agg
    if agg is Agg.COUNT:
        return int(text) if text is not None else 0
    if agg is Agg.SUM:
        return laws.check_int64(int(text), "tile sum") if text is not None else 0
    if agg is Agg.AVG:
        total, count = (text or "0,0").split(",")
        return (laws.check_int64(int(total), "tile sum"), int(count))
    if agg in (Agg.MIN, Agg.MAX):
        return None if text is None else _typed_value(col.value_type, text)
    if agg is Agg.LAST:
        if text is None:
            return None
        return (int(text[:16]), int(text[16:26]), int(text[26:45]), _typed_value(col.value_type, text[45:]))
    raise ValueError(f"aggregation {agg!r}")


def _typed_value(value_type: str | None, text: str) -> Any:
    if value_type in ("int64", "timestamp"):
        return int(text)
    if value_type == "float64":
        return float(text)
    if value_type == "bool":
        return text.lower() == "true"
    return text


def entity_key(out: TileOutput, keys: Sequence[str | None]) -> tuple[Any, ...]:
    return tuple(int(k) if KeyType(t) is KeyType.INT64 else k for k, t in zip(keys, out.key_types))


def bucket_of(row: Sequence[Any], buckets: int) -> int:
    """The sink bucket of a changelog row: by entity key (tiles) or partition (progress, dead letters)."""
    return zlib.crc32(f"{row[0]}|{row[3]}".encode()) % buckets


class TileWriter:
    """Turns changelog rows into Redis writes (used by the Flink sink and by tests without Flink)."""

    KEY_CACHE = 200_000  # tile keys remembered (entity, tile size) -> key; cleared when full
    # tile keys per TILE_CAS_LUA call: the script loops over its KEYS, so one call serves many entities on a
    # standalone Redis (the stack's); bounded so one call does not block Redis for long
    CAS_KEYS = 256

    def __init__(self, job: FlinkSourceJob, config: SinkConfig, views: dict[str, Any], epoch: str) -> None:
        self.job, self.config, self.epoch = job, config, epoch
        self.outputs = {(o.view, o.tile_ms): o for o in job.outputs}
        self.groups = {(name, g.tile_ms): g for name, v in views.items() for g in layout.tile_groups(v)}
        self.aggs = {k: g.aggs for k, g in self.groups.items()}  # computed once: a property builds Agg enums
        self.views = views
        self.kw, self.vw = job.key_width, job.value_width
        self._keys: dict[tuple, str] = {}
        self._encoders: dict[tuple[str, int], tuple[TileOutput, Any, list]] = {}

    def _tile_key(self, view: str, out: TileOutput, keys: Sequence[str | None], tile_ms: int) -> tuple[tuple, str]:
        cached = self._keys.get((view, tile_ms, *keys))
        if cached is None:
            if len(self._keys) >= self.KEY_CACHE:
                self._keys.clear()
            ek = entity_key(out, keys[:len(out.key_names)])
            cached = self._keys[(view, tile_ms, *keys)] = (ek, layout.tile_key(self.config.project, self.views[view], ek, tile_ms))
        return cached

    def split(self, row: Sequence[Any]) -> tuple[str, str, int, list, int, int, list]:
        kind, view, tile_ms = row[0], row[1], row[2]
        keys = list(row[3:3 + self.kw])
        tile_start, version = row[3 + self.kw], row[4 + self.kw]
        values = list(row[5 + self.kw:5 + self.kw + self.vw])
        return kind, view, tile_ms, keys, tile_start, version, values

    def _encoder(self, view: str, tile_ms: int) -> tuple[TileOutput, Any, list[tuple[int, AggColumn, Any]]]:
        """Per tile output, computed once: its group and (column, changelog column, law encoder) triples."""
        enc = self._encoders.get((view, tile_ms))
        if enc is None:
            out = self.outputs[(view, tile_ms)]
            group = self.groups[(view, tile_ms)]
            aggs = self.aggs[(view, tile_ms)]
            if tuple(c.agg for c in out.columns) != tuple(Agg(a) for a in aggs):
                raise AssertionError(f"changelog and layout disagree on the tile vector of {view} H={tile_ms}")
            enc = self._encoders[(view, tile_ms)] = (out, group, [(i, c, laws.LAWS[c.agg].encode) for i, c in enumerate(out.columns)])
        return enc

    def tile_value(self, view: str, tile_ms: int, version: int, values: Sequence[str | None]) -> str:
        """``layout.encode_tile_vector`` of one changelog row (same text; encoders and JSON encoder bound once,
        the unit test compares the two)."""
        _, _, cols = self._encoder(view, tile_ms)
        body = _DUMPS([encode(decode_acc(c, values[i])) for i, c, encode in cols])
        return f"{version}|{self.epoch}|{body}"

    def apply(self, redis_client: Any, rows: Iterable[Sequence[Any]], producer: Any = None) -> int:
        """Write a batch of changelog rows (+I/+U images): the tiles in ``TILE_CAS_LUA`` calls of up to
        ``CAS_KEYS`` keys (many entities per call), then the progress fields, in one pipeline; dead letters
        to Kafka first. Returns the number of rows."""
        tiles: dict[str, tuple[Any, dict[int, str]]] = {}  # tile key -> (group, {start: value})
        progress: dict[str, str] = {}
        dead: list[tuple[str, str]] = []
        n = 0
        kw, vw = self.kw, self.vw
        now = int(time.time() * 1000)
        for row in rows:
            n += 1
            kind, view, tile_ms = row[0], row[1], row[2]
            if kind == KIND_TILE:
                out, group, _ = self._encoder(view, tile_ms)
                keys = row[3:3 + kw]
                _, key = self._tile_key(view, out, keys, tile_ms)
                entry = tiles.get(key)
                if entry is None:
                    entry = tiles[key] = (group, {})
                entry[1][int(row[3 + kw])] = self.tile_value(view, tile_ms, int(row[4 + kw]), row[5 + kw:5 + kw + vw])
                continue
            _, _, _, keys, start, version, values = self.split(row)
            if kind == KIND_PROGRESS:
                max_event, records, admitted, malformed, future, late = values[:6]
                progress[f"p:{keys[0]}"] = laws.dumps({
                    "offset": int(version), "max_event_ms": None if max_event is None else int(max_event),
                    "written_ms": now, "epoch": self.epoch, "records": int(records),
                    "admitted_or_duplicate": int(admitted), "malformed": int(malformed), "future": int(future),
                    "late": int(late)})
            elif kind == KIND_DEAD:
                reason, detail, payload_b64, record_ms = values[:4]
                raw = base64.b64decode(payload_b64) if payload_b64 else b""
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    text = None
                dead.append((f"{keys[0]}:{start}", laws.dumps({
                    "source": self.config.source, "partition": int(keys[0]), "offset": int(start), "reason": reason,
                    "detail": detail, "payload": text, "payload_b64": payload_b64,
                    "record_timestamp_ms": int(record_ms) if record_ms is not None else None})))
        if dead and producer is not None:
            for key, value in dead:
                producer.produce(self.config.dead_letter_topic, key=key.encode(), value=value.encode())
            if producer.flush(60) > 0:
                raise RuntimeError(f"dead letters not acknowledged by Kafka topic {self.config.dead_letter_topic}")
        pipe = redis_client.pipeline(transaction=False)
        writes = [(k, g, f) for k, (g, f) in tiles.items()]
        for i in range(0, len(writes), self.CAS_KEYS):
            cas_keys, argv = layout.tile_cas_args(writes[i:i + self.CAS_KEYS])
            pipe.evalsha(self._sha, len(cas_keys), *cas_keys, *argv)
        if progress:
            pipe.hset(layout.progress_key(self.config.project, self.config.source), mapping=progress)
        if len(pipe):
            pipe.execute()
        return n

    def prepare(self, redis_client: Any) -> None:
        self._sha = redis_client.script_load(layout.TILE_CAS_LUA)


def init_store(redis_client: Any, project: str, views: Iterable[Any], applied_from_ms: int) -> str:
    """The store's epoch (created if missing) and each view's meta (``applied_from_ms`` set once)."""
    redis_client.set(layout.epoch_key(project), base64.b32encode(__import__("os").urandom(10)).decode().lower(), nx=True)
    epoch = redis_client.get(layout.epoch_key(project))
    epoch = epoch.decode() if isinstance(epoch, bytes) else epoch
    for v in views:
        meta = layout.view_meta_key(project, v)
        redis_client.hsetnx(meta, "applied_from_ms", str(applied_from_ms))
        redis_client.hsetnx(meta, "epoch", epoch)
    return epoch


def load_views(repo_path: str, names: Sequence[str]) -> dict[str, Any]:
    from skewless.core.repo import load_repository

    repo = load_repository(repo_path)
    return {n: repo.view(n) for n in names}


# Long.MAX_VALUE: the watermark a Flink source emits when its bounded input ends
END_OF_INPUT_MS = 2**63 - 1


def make_process_function(job: FlinkSourceJob, config: SinkConfig):
    """The PyFlink ``KeyedProcessFunction`` applying the changelog (keyed by :func:`bucket_of`)."""
    from pyflink.common import Types
    from pyflink.common.types import RowKind
    from pyflink.datastream import KeyedProcessFunction, RuntimeContext
    from pyflink.datastream.state import MapStateDescriptor

    upsert_width = 4 + job.key_width  # kind, view, tile size, keys, tile start: the changelog's upsert key

    class RedisTileSink(KeyedProcessFunction):
        def open(self, runtime_context: RuntimeContext) -> None:
            import redis
            from confluent_kafka import Producer

            # pending rows by upsert key, values pickled by PyFlink (no JSON text per row)
            self.pending = runtime_context.get_map_state(
                MapStateDescriptor("pending-rows", Types.STRING(), Types.PICKLED_BYTE_ARRAY()))
            self.client = redis.Redis.from_url(config.redis_url)
            views = load_views(config.repo_path, job.views)
            epoch = init_store(self.client, config.project, views.values(), config.applied_from_ms)
            self.writer = TileWriter(job, config, views, epoch)
            self.writer.prepare(self.client)
            self.producer = Producer({"bootstrap.servers": config.bootstrap, "acks": "all", "linger.ms": 5})
            self.mirror: dict[int, dict[str, list]] = {}
            self.armed: set[int] = set()  # buckets with a flush timer pending (registered by this worker)
            self.drain_armed: set[int] = set()  # buckets with the end-of-input timer registered by this worker
            self.rows_written = 0
            runtime_context.get_metrics_group().gauge("skewless_rows_written", lambda: self.rows_written)

        def process_element(self, row, ctx: "KeyedProcessFunction.Context"):
            if row.get_row_kind() in (RowKind.UPDATE_BEFORE, RowKind.DELETE):
                return []  # upsert changelog: only +I/+U images carry values; tiles are never deleted
            bucket = ctx.get_current_key()
            rows = self._rows(bucket)
            values = list(row)
            field = "|".join(map(str, values[:upsert_width]))
            self.pending.put(field, values)
            rows[field] = values
            if bucket not in self.armed:
                # armed per worker, not per "first pending row": after a restore the bucket's checkpointed
                # rows are pending, and its first new row must still arm a flush (a test once saw a restored
                # bucket never flushed again: one partition's progress stuck at its checkpoint)
                now = ctx.timer_service().current_processing_time()
                ctx.timer_service().register_processing_time_timer(now - now % 50 + config.flush_ms)
                self.armed.add(bucket)
            if bucket not in self.drain_armed:
                # fires only on the watermark a bounded input sends when it ends (the job has no event-time
                # watermarks otherwise): the last rows are written inside the job, before it finishes
                ctx.timer_service().register_event_time_timer(END_OF_INPUT_MS)
                self.drain_armed.add(bucket)
            if len(rows) >= config.flush_rows:
                self._flush(bucket)
            return []  # the sink emits nothing (PyFlink iterates the result)

        def on_timer(self, timestamp: int, ctx: "KeyedProcessFunction.OnTimerContext"):
            bucket = ctx.get_current_key()
            self.armed.discard(bucket)
            self._flush(bucket)
            return []

        def _rows(self, bucket: int) -> dict[str, list]:
            """This bucket's pending rows; on first touch after a restore, those in the checkpoint."""
            rows = self.mirror.get(bucket)
            if rows is None:
                rows = self.mirror[bucket] = dict(self.pending.items())
            return rows

        def _flush(self, bucket: int) -> None:
            rows = self._rows(bucket)
            if rows:
                self.rows_written += self.writer.apply(self.client, rows.values(), self.producer)
                rows.clear()
                self.pending.clear()

        def close(self) -> None:
            # normally empty: the end-of-input timer flushed every bucket (close may run after the job ends)
            for rows in getattr(self, "mirror", {}).values():
                if rows:
                    self.writer.apply(self.client, rows.values(), self.producer)
                    rows.clear()
            if getattr(self, "producer", None) is not None:
                self.producer.flush(30)
            if getattr(self, "client", None) is not None:
                self.client.close()

    return RedisTileSink()
