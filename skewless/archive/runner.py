"""The archive job of one Kafka-fed source: a confluent-kafka consumer appending to Iceberg with PyIceberg.

Exactly once (docs/archive.md): the consumer never uses Kafka's committed offsets. Each batch is committed as

1. (if it holds malformed records) one transaction on the dead-letter table: append + its next offsets;
2. one transaction on the raw table: append + next offsets + progress (table properties and snapshot summary).

On start the consumer is assigned at the raw table's recorded offsets; dead letters below the dead-letter
table's recorded offsets are skipped. A commit whose outcome is unknown is resolved by re-reading the recorded
offsets (already there -> it landed; unchanged -> retry; anything else -> another writer, stop). Kafka's
consumer-group offsets are committed after the table, for lag monitoring only.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from skewless.archive.columnar import Chunk, ColumnarConverter
from skewless.archive.records import RecordConverter
from skewless.archive.tables import (
    INGESTED_AT_COL,
    KAFKA_TS_COL,
    OFFSET_COL,
    PARTITION_COL,
    PAYLOAD_COL,
    REASON_COL,
    ArchiveTableError,
    IncompatibleSchemaError,
    dead_letter_table_name,
    decimal_scales,
    ensure_tables,
    evolve_raw_table,
)
from skewless.config import kafka_client_properties, kafka_timeout_properties
from skewless.core.dsl import EventSource
from skewless.core.schemas import EventSchema, SchemaError, load_schema
from skewless.core.timeutil import td_ms
from skewless.offline import archive_progress as P

log = logging.getLogger("skewless.archive")

CRASH_ENV = "SKEWLESS_ARCHIVE_CRASH_AT"  # test hook: "<point>:<n>" -> os._exit(CRASH_EXIT_CODE) at the n-th hit
CRASH_EXIT_CODE = 86
FAULT_POINTS = ("after-dead-letter-commit", "after-raw-commit")
FaultHook = Callable[[str, int], None]


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector around a fetch and its conversion.

    A fetch allocates ~10,000 Message objects and as many parsed dicts, all freed by reference counting; with
    the collector on, those allocations trigger collections that scan the whole heap (PyIceberg, pyarrow
    ...) again and again: a third of the archive's CPU time. Pausing it (nested or from several threads
    alike: each restores what it found) leaves the collector to run between fetches.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class ArchiveError(Exception):
    """The archive of a source cannot go on (the message names the source, the problem and the fix)."""


def env_fault_hook() -> FaultHook | None:
    """The crash hook from ``SKEWLESS_ARCHIVE_CRASH_AT`` (e.g. ``after-raw-commit:2``), or None."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return None
    point, _, nth = spec.partition(":")
    if point not in FAULT_POINTS or not nth.isdigit():
        raise ArchiveError(f"{CRASH_ENV}={spec!r}: use <point>:<n> with point one of {', '.join(FAULT_POINTS)}")

    def hook(at: str, count: int) -> None:
        if at == point and count == int(nth):
            log.error("%s: crashing at %s #%d (test hook)", CRASH_ENV, at, count)
            logging.shutdown()
            os._exit(CRASH_EXIT_CODE)

    return hook


@dataclass
class ArchiveConfig:
    """How one archive job runs. A batch is committed at ``max_records`` or ``max_interval_s`` after its first record."""

    bootstrap: str
    max_records: int = 50_000
    max_interval_s: float = 5.0
    poll_records: int = 10_000
    metadata_refresh_s: float = 10.0
    commit_attempts: int = 8
    schemas_dir: Path | None = None
    kafka: Mapping[str, Any] = field(default_factory=dict)
    fault: FaultHook | None = None


@dataclass
class RunStats:
    """Counts, and where the time went: Kafka fetches, conversion, commits (seconds, wall clock)."""

    records: int = 0
    dead_letters: int = 0
    commits: int = 0
    skipped: int = 0
    columnar: int = 0  # records converted by the columnar path (the rest went record by record)
    consume_s: float = 0.0
    convert_s: float = 0.0
    commit_s: float = 0.0


class _Batch:
    """Records consumed since the last commit, as columns: Arrow chunks (the columnar path) plus lists (the
    per-record path)."""

    def __init__(self) -> None:
        self.chunks: list[dict[str, Any]] = []
        self.rows: dict[str, list[Any]] = defaultdict(list)
        self.n_rows = 0
        self.dead: dict[str, list[Any]] = defaultdict(list)
        self.n_dead = 0
        self.next_offsets: dict[int, int] = {}
        self.max_event_ms: dict[int, int] = {}
        self.first_at: float | None = None


class SourceArchiver:
    """Archives one source's topic into its raw and dead-letter tables (one consumer, one thread)."""

    def __init__(self, source: EventSource, catalog: Any, config: ArchiveConfig):
        if source.is_batch_only:
            raise ArchiveError(f"source {source.name!r} has no topic: batch-only sources are read in place, not archived")
        self.source = source
        self.topic: str = source.topic  # type: ignore[assignment]
        self.catalog = catalog
        self.config = config
        self.fault = config.fault
        self.stats = RunStats()
        self._hits: dict[str, int] = defaultdict(int)
        self._skew_ms = td_ms(source.clock_skew_tolerance)
        self._lateness_ms = td_ms(source.allowed_lateness)
        self._consumer: Any = None
        self._assigned: set[int] = set()

    # -- state -------------------------------------------------------------------------------------

    def _load_schema(self) -> EventSchema:
        return load_schema(self.source.schema, self.config.schemas_dir)

    def _open(self) -> None:
        self.event_schema = self._load_schema()
        self.raw, self.dead = ensure_tables(self.catalog, self.source, self.event_schema)
        self._evolve(self.event_schema)
        props = self.raw.properties
        recorded_topic = props.get(P.TOPIC_PROP)
        if recorded_topic is not None and recorded_topic != self.topic:
            raise ArchiveError(
                f"source {self.source.name!r}: table {self.source.table} holds offsets of topic {recorded_topic!r} but the "
                f"source now reads {self.topic!r}; offsets of one topic mean nothing in another. Fix: point the source at a "
                "new table (or restore the topic name)"
            )
        self.raw_next = P.parse_offsets(props.get(P.OFFSETS_PROP))
        self.dl_next = P.parse_offsets(self.dead.properties.get(P.OFFSETS_PROP))
        self.partitions = P.parse_partitions(props.get(P.PROGRESS_PROP), self.raw_next)
        doc = props.get(P.PROGRESS_PROP)
        self.complete_until_ms = json.loads(doc).get("complete_until_ms") if doc else None
        self._converters(self.event_schema)
        log.info("archive %s: resuming %s at offsets %s (dead letters at %s)", self.source.name, self.source.table,
                 self.raw_next or "{} (earliest)", self.dl_next or "{}")

    def _converters(self, event_schema: EventSchema) -> None:
        self.converter = RecordConverter(self.source, event_schema, decimal_scales(event_schema), self.config.schemas_dir)
        self.columnar = ColumnarConverter(self.converter)

    def _evolve(self, event_schema: EventSchema) -> None:
        try:
            added = evolve_raw_table(self.raw, self.source, event_schema)
        except IncompatibleSchemaError as exc:
            self._mark_stopped(str(exc))
            raise
        if added:
            log.warning("archive %s: schema %s added field(s) %s: table %s evolved (older rows hold null)",
                        self.source.name, event_schema.name, ", ".join(added), self.source.table)

    def _mark_stopped(self, reason: str) -> None:
        try:
            self.raw.refresh()
            with self.raw.transaction() as tx:
                tx.set_properties({P.STOPPED_PROP: reason})
        except Exception as exc:  # noqa: BLE001 - the original error matters more
            log.error("archive %s: could not record the stop reason in %s: %s", self.source.name, self.source.table, exc)

    # -- Kafka -------------------------------------------------------------------------------------

    def _make_consumer(self) -> Any:
        from confluent_kafka import Consumer

        conf = {
            "bootstrap.servers": self.config.bootstrap,
            "group.id": f"skewless-archive.{self.source.name}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error",  # never skip silently: records below the log start are lost, say so
            "fetch.max.bytes": 64 * 1024 * 1024,
            "queued.max.messages.kbytes": 256 * 1024,
            "client.id": f"skewless-archive-{self.source.name}",
            **kafka_timeout_properties(),
            **kafka_client_properties(),
            **self.config.kafka,
        }
        return Consumer(conf)

    def _refresh_partitions(self, first: bool = False) -> None:
        from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

        try:
            md = self._consumer.list_topics(self.topic, timeout=30)
        except KafkaException as exc:
            if first:
                raise ArchiveError(
                    f"source {self.source.name!r}: cannot reach Kafka at {self.config.bootstrap} ({exc}); "
                    "fix: start the stack (make up) or pass --bootstrap HOST:PORT"
                ) from exc
            log.warning("archive %s: kafka metadata failed (%s); retrying", self.source.name, exc)
            return
        topic_md = md.topics.get(self.topic)
        if topic_md is None or topic_md.error is not None or not topic_md.partitions:
            why = topic_md.error if topic_md is not None and topic_md.error is not None else "no such topic"
            log.warning("archive %s: topic %r not available (%s); waiting (create it: auto-creation is off)",
                        self.source.name, self.topic, why)
            return
        new = sorted(set(topic_md.partitions) - self._assigned)
        if new:
            tps = [TopicPartition(self.topic, p, self.raw_next.get(p, OFFSET_BEGINNING)) for p in new]
            self._consumer.incremental_assign(tps)
            self._assigned.update(new)
            log.info("archive %s: assigned partitions %s of %r", self.source.name, new, self.topic)

    def _watermarks(self) -> dict[int, tuple[int, int]]:
        from confluent_kafka import TopicPartition

        out = {}
        for p in sorted(self._assigned):
            tp = TopicPartition(self.topic, p)
            try:
                # The high watermark of the last fetch response is what "caught up" means here; a broker round
                # trip (slow: ~0.4 s) only when no fetch has returned yet.
                low, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if low < 0 or high < 0:
                    low, high = self._consumer.get_watermark_offsets(tp, timeout=10)
                out[p] = (low, high)
            except Exception as exc:  # noqa: BLE001 - progress then treats the partition as not caught up
                log.warning("archive %s: no watermarks for partition %d: %s", self.source.name, p, exc)
        return out

    # -- records -----------------------------------------------------------------------------------

    def _kafka_error(self, err: Any) -> None:
        from confluent_kafka import KafkaError, KafkaException

        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.code() == KafkaError._AUTO_OFFSET_RESET:
            raise ArchiveError(
                f"source {self.source.name!r}: {err.str()}: the recorded offsets {self.raw_next} are no longer in "
                f"topic {self.topic!r} (retention deleted them before they were archived). Those records are lost "
                f"to the archive; to go on, set {P.OFFSETS_PROP} on {self.source.table} to the topic's earliest "
                "offsets deliberately"
            )
        if err.fatal():
            raise KafkaException(err)
        log.warning("archive %s: kafka: %s", self.source.name, err.str())

    def _add_all(self, batch: _Batch, msgs: list[Any]) -> None:
        """Add one fetch: the columnar converter takes what it can certify, the rest goes record by record."""
        from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

        errors = list(map(Message.error, msgs))
        if errors.count(None) != len(msgs):
            for err in errors:
                if err is not None:
                    self._kafka_error(err)
            msgs = [m for m, err in zip(msgs, errors) if err is None]
        parts: list[int] = list(map(Message.partition, msgs))
        offsets: list[int] = list(map(Message.offset, msgs))
        below = self.raw_next
        if any(o < below.get(p, 0) for p, o in self._firsts(parts, offsets)):
            keep = [i for i, (p, o) in enumerate(zip(parts, offsets)) if o >= below.get(p, 0)]
            self.stats.skipped += len(parts) - len(keep)  # already archived (cannot happen after the seek; a guard)
            msgs = [msgs[i] for i in keep]
            parts, offsets = [parts[i] for i in keep], [offsets[i] for i in keep]
        if not msgs:
            return
        values: list[Any] = list(map(Message.value, msgs))
        kinds, stamps = zip(*map(Message.timestamp, msgs))
        kafka_ms = np.array(stamps, np.int64)
        no_ts = np.array(kinds) == TIMESTAMP_NOT_AVAILABLE
        chunk = self.columnar.convert(values)
        self.stats.columnar += len(chunk.rows)
        for i in chunk.rest:
            self._add(batch, parts[i], offsets[i], None if no_ts[i] else stamps[i], values[i])
        if len(chunk.rows):
            self._add_chunk(batch, chunk, parts, offsets, kafka_ms, no_ts)
        next_offsets = batch.next_offsets
        for p, o in zip(parts, offsets):
            next_offsets[p] = o + 1
        if batch.first_at is None:
            batch.first_at = time.monotonic()

    @staticmethod
    def _firsts(parts: list[int], offsets: list[int]) -> set[tuple[int, int]]:
        """The lowest offset of each partition in a fetch (offsets rise within a partition)."""
        lowest: dict[int, int] = {}
        for p in set(parts):
            lowest[p] = offsets[parts.index(p)]
        return set(lowest.items())

    def _add_chunk(self, batch: _Batch, chunk: Chunk, parts: list[int], offsets: list[int], kafka_ms: np.ndarray,
                   no_ts: np.ndarray) -> None:
        """Rows the columnar converter made: Arrow columns, and each partition's max (non-future) event time."""
        import pyarrow as pa

        rows = chunk.rows
        p_arr = np.asarray(parts, np.int64)[rows]
        missing, kafka_ms = no_ts[rows], kafka_ms[rows]
        arrays = dict(chunk.arrays)
        arrays[PARTITION_COL] = pa.array(p_arr, pa.int32())
        arrays[OFFSET_COL] = pa.array(np.asarray(offsets, np.int64)[rows])
        arrays[KAFKA_TS_COL] = pa.array(kafka_ms * 1000, pa.int64(), mask=missing)
        batch.chunks.append(arrays)
        batch.n_rows += len(rows)
        et = chunk.event_ms
        counted = missing | (et <= kafka_ms + self._skew_ms)  # 'future' never advances progress
        for p in np.unique(p_arr[counted]).tolist():
            top = int(et[counted & (p_arr == p)].max())
            if top > batch.max_event_ms.get(p, -(2**63)):
                batch.max_event_ms[p] = top

    def _add(self, batch: _Batch, p: int, o: int, kafka_ts_ms: int | None, value: Any) -> None:
        """One record through :meth:`RecordConverter.convert`: a row, or a dead letter."""
        converted = self.converter.convert(value)
        if converted.row is not None:
            rows = batch.rows
            for k, v in zip(self.converter.columns, converted.row):
                rows[k].append(v)
            rows[PARTITION_COL].append(p)
            rows[OFFSET_COL].append(o)
            rows[KAFKA_TS_COL].append(None if kafka_ts_ms is None else kafka_ts_ms * 1000)
            batch.n_rows += 1
            et = converted.event_time_ms
            if et is not None and (kafka_ts_ms is None or et <= kafka_ts_ms + self._skew_ms):  # 'future' never advances progress
                if et > batch.max_event_ms.get(p, -(2**63)):
                    batch.max_event_ms[p] = et
        elif o >= self.dl_next.get(p, 0):
            batch.dead[PARTITION_COL].append(p)
            batch.dead[OFFSET_COL].append(o)
            batch.dead[KAFKA_TS_COL].append(None if kafka_ts_ms is None else kafka_ts_ms * 1000)
            batch.dead[REASON_COL].append(converted.reason)
            batch.dead[PAYLOAD_COL].append(value)
            batch.n_dead += 1

    @staticmethod
    def _arrow(table: Any, columns: Mapping[str, list[Any]], n: int, ingested_us: int,
               chunks: list[dict[str, Any]] | None = None) -> Any:
        """The table's rows: the Arrow ``chunks`` followed by the ``n`` rows held as lists in ``columns``."""
        import pyarrow as pa

        schema = table.schema().as_arrow()
        chunks = chunks or []
        sizes = [len(c[OFFSET_COL]) for c in chunks]
        total = sum(sizes) + n
        arrays = []
        for f in schema:
            if f.name == INGESTED_AT_COL:
                arrays.append(pa.repeat(pa.scalar(ingested_us, pa.int64()).cast(f.type), total))
                continue
            pieces = [c[f.name].cast(f.type) if f.name in c else pa.nulls(size, f.type) for c, size in zip(chunks, sizes)]
            if n or not pieces:
                pieces.append(pa.array(columns.get(f.name) or [None] * n, type=f.type))
            arrays.append(pa.concat_arrays(pieces) if len(pieces) > 1 else pieces[0])
        return pa.Table.from_arrays(arrays, schema=schema)

    # -- commits -----------------------------------------------------------------------------------

    def _hit(self, point: str) -> None:
        self._hits[point] += 1
        if self.fault is not None:
            self.fault(point, self._hits[point])

    def _commit_table(self, table: Any, name: str, before: Mapping[int, int], target: Mapping[int, int],
                      apply: Callable[[Any], None]) -> None:
        """Commit ``apply(tx)`` so that the table's offsets go from ``before`` to ``target``, exactly once."""
        from pyiceberg.exceptions import CommitFailedException

        delay = 0.2
        for attempt in range(1, self.config.commit_attempts + 1):
            try:  # the re-check reads the catalog and the metadata file: an outage there is retried as well
                if attempt > 1:
                    table.refresh()
                recorded = P.parse_offsets(table.properties.get(P.OFFSETS_PROP))
                if recorded == dict(target):
                    log.warning("archive %s: commit to %s had landed before the error; not repeating it",
                                self.source.name, name)
                    return
                if recorded != dict(before):
                    raise ArchiveError(
                        f"source {self.source.name!r}: {name} records offsets {recorded}, expected {dict(before)}: "
                        "another archive process writes this table. Run one `skewless archive run` per source; stop "
                        "the other"
                    )
                with table.transaction() as tx:
                    apply(tx)
                return
            except (CommitFailedException, OSError) as exc:
                err: Exception = exc
            except Exception as exc:  # sqlite "database is locked" and friends: outcome unknown, re-check
                if type(exc).__module__.split(".")[0] not in ("sqlalchemy", "sqlite3"):
                    raise
                err = exc
            log.warning("archive %s: commit to %s failed (attempt %d): %s; re-checking", self.source.name, name, attempt, err)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise ArchiveError(f"source {self.source.name!r}: {self.config.commit_attempts} commits to {name} failed; see the log")

    def _commit(self, batch: _Batch) -> None:
        if not batch.next_offsets:
            return
        t0 = time.perf_counter()
        try:
            self._commit_batch(batch)
        finally:
            self.stats.commit_s += time.perf_counter() - t0

    def _commit_batch(self, batch: _Batch) -> None:
        ingested_us = time.time_ns() // 1000
        target = {**self.raw_next, **batch.next_offsets}

        if batch.n_dead:
            # max, not overwrite: after a crash between the two commits, the dead-letter table is ahead of the raw
            # table, and a batch re-reading that gap must not move its offsets back.
            dl_target = {p: max(self.dl_next.get(p, 0), batch.next_offsets.get(p, 0)) for p in {*self.dl_next, *batch.next_offsets}}
            dl_rows = self._arrow(self.dead, batch.dead, batch.n_dead, ingested_us)
            dl_json = P.dump_offsets(dl_target)

            def apply_dead(tx: Any) -> None:
                tx.append(dl_rows, snapshot_properties={P.OFFSETS_PROP: dl_json, P.DEAD_LETTERS_SUMMARY: str(batch.n_dead)})
                tx.set_properties({P.OFFSETS_PROP: dl_json, P.TOPIC_PROP: self.topic})

            self._commit_table(self.dead, dead_letter_table_name(self.source), self.dl_next, dl_target, apply_dead)
            self.dl_next = dl_target
            self._hit("after-dead-letter-commit")

        watermarks = self._watermarks()
        parts: dict[int, P.PartitionProgress] = {}
        for p in sorted(self._assigned | set(target)):
            old = self.partitions.get(p)
            max_et = max((x for x in (old.max_event_time_ms if old else None, batch.max_event_ms.get(p)) if x is not None), default=None)
            low, high = watermarks.get(p, (0, 2**63 - 1))
            position = target.get(p, low)
            parts[p] = P.PartitionProgress(position, max_et, position >= high)
        complete = P.complete_until(parts, self._lateness_ms, self.complete_until_ms)
        committed_at = time.time_ns() // 1_000_000
        n_listed = batch.n_rows - sum(len(c[OFFSET_COL]) for c in batch.chunks)
        raw_rows = self._arrow(self.raw, batch.rows, n_listed, ingested_us, batch.chunks)
        offsets_json = P.dump_offsets(target)
        recorded_parts = {p: pp for p, pp in parts.items() if p in target}
        props = {
            P.OFFSETS_PROP: offsets_json,
            P.TOPIC_PROP: self.topic,
            P.PROGRESS_PROP: P.progress_document(self.topic, recorded_parts, complete, committed_at),
        }

        def apply_raw(tx: Any) -> None:
            tx.append(raw_rows, snapshot_properties={
                P.OFFSETS_PROP: offsets_json, P.RECORDS_SUMMARY: str(batch.n_rows), P.DEAD_LETTERS_SUMMARY: str(batch.n_dead)})
            tx.set_properties(props)
            if P.STOPPED_PROP in tx.table_metadata.properties:
                tx.remove_properties(P.STOPPED_PROP)

        self._commit_table(self.raw, self.source.table, self.raw_next, target, apply_raw)
        self.raw_next = target
        self.partitions = recorded_parts
        self.complete_until_ms = complete
        self.stats.records += batch.n_rows
        self.stats.dead_letters += batch.n_dead
        self.stats.commits += 1
        self._hit("after-raw-commit")
        self._commit_kafka(target)
        log.info("archive %s: committed %d rows, %d dead letters (snapshot %s); complete until %s",
                 self.source.name, batch.n_rows, batch.n_dead, self.raw.current_snapshot().snapshot_id, complete)

    def _commit_kafka(self, offsets: Mapping[int, int]) -> None:
        """Consumer-group offsets, after the table and for lag monitoring only (resume never reads them)."""
        from confluent_kafka import TopicPartition

        try:
            self._consumer.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in offsets.items()], asynchronous=True)
        except Exception as exc:  # noqa: BLE001 - monitoring only
            log.debug("archive %s: kafka offset commit failed: %s", self.source.name, exc)

    # -- schema drift ------------------------------------------------------------------------------

    def _check_schema(self, batch: _Batch) -> _Batch:
        """Evolve the table if the schema file changed (committing the batch read under the old schema first)."""
        try:
            current = self._load_schema()
        except SchemaError as exc:  # e.g. read mid-write: keep archiving under the schema in force, retry later
            log.warning("archive %s: cannot read schema %r now (%s); keeping the current one, retrying in %g s",
                        self.source.name, self.source.schema, exc, self.config.metadata_refresh_s)
            return batch
        if current == self.event_schema:
            return batch
        self._commit(batch)
        batch = _Batch()
        self._evolve(current)
        self.event_schema = current
        self._converters(current)
        return batch

    # -- the loop ----------------------------------------------------------------------------------

    def _caught_up(self) -> bool:
        if not self._assigned:
            return False
        marks = self._watermarks()
        if len(marks) != len(self._assigned):
            return False
        return all(self.raw_next.get(p, low) >= high for p, (low, high) in marks.items())

    def run(self, stop: threading.Event | None = None, drain: bool = False) -> RunStats:
        """Archive until ``stop`` is set (or, with ``drain``, until every partition is archived up to its end).

        The batch in hand is committed on the way out; an error leaves it uncommitted (it is re-read on resume).
        """
        stop = stop or threading.Event()
        self._open()
        self._consumer = self._make_consumer()
        try:
            self._refresh_partitions(first=True)
            next_refresh = time.monotonic() + self.config.metadata_refresh_s
            batch = _Batch()
            while not stop.is_set():
                room = max(1, min(self.config.poll_records, self.config.max_records - batch.n_rows - batch.n_dead))
                t0 = time.perf_counter()
                with _no_cyclic_gc():
                    msgs = self._consumer.consume(num_messages=room, timeout=0.2) if self._assigned else []
                    t1 = time.perf_counter()
                    if msgs:
                        self._add_all(batch, msgs)
                n_msgs = len(msgs)
                del msgs  # the Message objects go now, by reference counting
                if not self._assigned:
                    stop.wait(1.0)
                self.stats.consume_s += t1 - t0
                self.stats.convert_s += time.perf_counter() - t1
                now = time.monotonic()
                size = batch.n_rows + batch.n_dead
                if size and (size >= self.config.max_records or now - (batch.first_at or now) >= self.config.max_interval_s):
                    self._commit(batch)
                    batch = _Batch()
                if now >= next_refresh:
                    batch = self._check_schema(batch)
                    self._refresh_partitions()
                    next_refresh = now + self.config.metadata_refresh_s
                if drain and not n_msgs:
                    if batch.next_offsets:
                        self._commit(batch)
                        batch = _Batch()
                    if self._caught_up():
                        break
            if batch.next_offsets:
                self._commit(batch)
            return self.stats
        finally:
            try:
                self._consumer.close()
            except Exception:  # noqa: BLE001
                pass


def run_archives(sources: list[EventSource], catalog_factory: Callable[[], Any], config: ArchiveConfig,
                 stop: threading.Event, drain: bool = False) -> dict[str, BaseException | RunStats]:
    """One archiver thread per source. A source that fails (e.g. incompatible schema drift) stops alone;
    the others go on until ``stop`` (or, with ``drain``, until caught up). Returns each source's outcome."""
    results: dict[str, BaseException | RunStats] = {}
    # One catalog per thread, opened here one after the other: opening a fresh sqlite catalog creates its
    # tables, which concurrent openers would race on.
    catalogs = [catalog_factory() for _ in sources]

    def work(source: EventSource, catalog: Any) -> None:
        try:
            archiver = SourceArchiver(source, catalog, config)
            results[source.name] = archiver.run(stop, drain=drain)
        except BaseException as exc:  # noqa: BLE001 - reported per source
            log.error("archive %s: STOPPED: %s", source.name, exc)
            results[source.name] = exc

    threads = [threading.Thread(target=work, args=(s, c), name=f"archive-{s.name}", daemon=True)
               for s, c in zip(sources, catalogs)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)
    return results


__all__ = ["ArchiveConfig", "ArchiveError", "ArchiveTableError", "RunStats", "SourceArchiver", "run_archives"]
