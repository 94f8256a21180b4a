"""Archive throughput and produced -> readable lag (goal: keep up with 50,000 events/s, lag < 1 min).

A Kafka broker is started here (free ports, temporary data dir; stopped by pid at the end) unless
``SKEWLESS_BENCH_KAFKA=host:port`` names one; Iceberg is a temporary sqlite catalog + file warehouse.

1. ``archive_events_per_s``: ``N_THROUGHPUT`` order events (1% malformed) are produced to a 3-partition topic
   first; then one archiver (default config: commit at 50,000 records or 5 s) drains them into a fresh table.
   events/s = records / wall time of the drain, start-up included; the median of ``REPEATS`` drains, each
   next to the floors measured right before it on the same topic:

   * ``floor_consume``: a plain confluent-kafka consumer reading every record's value (the same fetch settings);
   * ``floor_parse_write``: those values (the well-formed ones) parsed by ``pyarrow.json`` as one NDJSON buffer
     and written as one Parquet file: the conversion and write with no per-record Python at all.

   ``profile`` splits the drain's time into consume (Kafka fetch), convert (classification and columns)
   and commit (Arrow table, Parquet files, Iceberg commits), from the runner's own counters.
3. ``archive_s3_events_per_s`` (issue 22): the same backlog drained into the object store's warehouse
   (s3proxy, filesystem backend, with PostgreSQL as the Iceberg catalog, both started here through
   skewless.stack.offline on free ports) and, alternately, into the local-disk warehouse, ``REPEATS`` times each;
   the medians and their ratio (goal: S3 >= 0.7x local). On one machine this measures the S3 protocol's and the
   catalog's overhead, not a remote store's latency.
2. ``archive_lag_p99_s``: while the archiver runs, a producer process sends events at ``LAG_RATE`` events/s for
   ``LAG_SECONDS``. A record's lag = (end of the Iceberg commit that made it readable, taken by the runner's
   after-commit hook) - (its Kafka record timestamp, stamped by the producer). p50/p99/max over every record.

``run() -> dict`` returns ``{metric: {"value", "unit", "goal", ...}}``. Run alone: ``.venv/bin/python bench/archive.py``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from skewless.core.dsl import EventSource  # noqa: E402

N_THROUGHPUT = int(os.environ.get("SKEWLESS_BENCH_ARCHIVE_N", "300000"))
REPEATS = int(os.environ.get("SKEWLESS_BENCH_ARCHIVE_REPEATS", "3"))
LAG_RATE = int(os.environ.get("SKEWLESS_BENCH_ARCHIVE_RATE", "10000"))
LAG_SECONDS = 30
PARTITIONS = 3
GOAL_EPS = 50_000
GOAL_LAG_S = 60.0


def _payloads(n: int, start: int, now_ms: int) -> list[tuple[bytes, bytes]]:
    from datetime import datetime, timezone

    out = []
    for i in range(start, start + n):
        user = f"u{i % 5000}"
        ms = now_ms - (i % 600_000)
        ts = datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        if i % 100 == 99:
            value = b'{"event_id": "broken", "amount": '
        else:
            value = json.dumps({"event_id": f"e{i}", "user_id": user, "order_id": f"o{i}", "amount": i % 10_000,
                                "currency": "EUR", "status": "placed", "event_time": ts}).encode()
        out.append((user.encode(), value))
    return out


def _producer(bootstrap: str, topic: str, rate: int, seconds: float, start: int) -> None:
    """Produce ``rate`` events/s for ``seconds`` (a separate process: its CPU is not the archiver's)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "1"})
    step = max(1, rate // 100)  # 100 ticks a second
    t0 = time.monotonic()
    sent = 0
    while sent < rate * seconds:
        for key, value in _payloads(step, start + sent, int(time.time() * 1000)):
            producer.produce(topic, key=key, value=value)
        sent += step
        producer.poll(0)
        ahead = t0 + sent / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    producer.flush(60)


def _produce_now(bootstrap: str, topic: str, n: int) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "1", "queue.buffering.max.messages": 1_000_000})
    now = int(time.time() * 1000)
    for key, value in _payloads(n, 0, now):
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0


def _kafka(tmp: Path) -> tuple[str, Any]:
    from skewless.stack.base import free_port
    from skewless.stack.kafka import KafkaBroker
    from skewless.stack.procs import wait_until

    if os.environ.get("SKEWLESS_BENCH_KAFKA"):
        return os.environ["SKEWLESS_BENCH_KAFKA"], lambda: None
    broker = KafkaBroker(port=free_port(), controller_port=free_port())
    started = broker.start(tmp, tmp)
    try:
        wait_until(broker.healthy, 180, "bench kafka", interval_s=0.5)
    except Exception:
        broker.stop(started)
        raise
    return broker.bootstrap, lambda: broker.stop(started)


def _object_store_catalog(tmp: Path) -> tuple[Any, Any]:
    """A PyIceberg catalog in a fresh PostgreSQL with its warehouse on a fresh s3proxy (skewless.stack.offline,
    free ports, state under ``tmp``); returns it and a function that stops both."""
    import dataclasses

    from pyiceberg.catalog.sql import SqlCatalog

    from skewless.config import ICEBERG_CATALOG_NAME
    from skewless.engines.object_store import pyiceberg_properties
    from skewless.stack.base import free_port
    from skewless.stack.offline import CatalogDatabase, ObjectStore

    tmp.chmod(0o711)  # PostgreSQL runs as the postgres user and must reach its data dir
    state = tmp / "offline"
    (state / "logs").mkdir(parents=True)
    store, database = ObjectStore(port=free_port(), state_dir=state), CatalogDatabase(port=free_port(), state_dir=state)
    started = [(store, store.start(state, state / "logs"))]
    try:
        started.append((database, database.start(state, state / "logs")))
    except BaseException:
        store.stop(started[0][1])
        raise
    shared = dataclasses.replace(database.shared(state), s3=store.target(state))

    def stop() -> None:
        for svc, run in reversed(started):
            svc.stop(run)

    return SqlCatalog(ICEBERG_CATALOG_NAME, **pyiceberg_properties(shared)), stop


def _drain_eps(catalog: Any, bootstrap: str, topic: str, table: str) -> float:
    """One archiver draining the whole topic into a fresh ``table``: events/s."""
    from skewless.archive.runner import ArchiveConfig, SourceArchiver

    source = EventSource("orders", "orders", table, topic=topic, partition_key="user_id")
    t0 = time.perf_counter()
    stats = SourceArchiver(source, catalog, ArchiveConfig(bootstrap=bootstrap)).run(drain=True)
    archived = stats.records + stats.dead_letters
    assert archived == N_THROUGHPUT, f"archived {archived} of {N_THROUGHPUT}"
    return archived / (time.perf_counter() - t0)


def _s3_vs_local(catalog: Any, bootstrap: str, topic: str, tmp: Path) -> dict[str, Any]:
    """``archive_s3_events_per_s``: drains into the object store's warehouse and the local one, alternately."""
    s3_catalog, stop = _object_store_catalog(tmp)
    try:
        local, s3 = [], []
        for r in range(REPEATS):
            local.append(_drain_eps(catalog, bootstrap, topic, f"bench.orders_local{r}"))
            s3.append(_drain_eps(s3_catalog, bootstrap, topic, f"bench.orders_s3{r}"))
            print(f"drain {r}: local {local[-1]:,.0f} events/s, s3 {s3[-1]:,.0f} events/s", file=sys.stderr)
    finally:
        stop()
    s3_eps, local_eps = sorted(s3)[len(s3) // 2], sorted(local)[len(local) // 2]
    return {
        "value": round(s3_eps), "unit": "events/s", "goal": ">= 0.7x the local-disk archive (same run)",
        "floor": {"value": round(local_eps), "unit": "events/s", "name": "the same drain into the local-disk warehouse"},
        "ratio_to_local": round(s3_eps / local_eps, 3),
        "runs": [{"local": round(a), "s3": round(b)} for a, b in zip(local, s3)],
        "detail": f"{N_THROUGHPUT:,} records drained {REPEATS}x into each, alternately; s3proxy 4.1.0 (filesystem "
                  "backend) + PostgreSQL catalog on this machine, PyIceberg's PyArrow S3 FileIO",
    }


def _floor_consume(bootstrap: str, topic: str, n: int) -> tuple[float, list[bytes]]:
    """events/s of a plain consumer reading ``n`` records (values touched), and the values."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    t0 = time.perf_counter()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-floor", "enable.auto.commit": False,
                         "fetch.max.bytes": 64 * 1024 * 1024, "queued.max.messages.kbytes": 256 * 1024})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    values: list[bytes] = []
    while len(values) < n:
        for msg in consumer.consume(num_messages=10_000, timeout=0.2):
            if msg.error() is None:
                values.append(msg.value())
    consumer.close()
    return n / (time.perf_counter() - t0), values


def _floor_parse_write(values: list[bytes], tmp: Path) -> float:
    """events/s of pyarrow.json parsing the well-formed values as NDJSON + one Parquet write."""
    import io

    import pyarrow.json as pj
    import pyarrow.parquet as pq

    good = [v for v in values if v.endswith(b"}")]
    t0 = time.perf_counter()
    table = pj.read_json(io.BytesIO(b"\n".join(good)))
    pq.write_table(table, tmp / "floor.parquet")
    return len(values) / (time.perf_counter() - t0)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run() -> dict[str, Any]:
    import logging

    from skewless.archive.runner import ArchiveConfig, SourceArchiver
    from skewless.engines.iceberg_catalog import load_catalog
    from skewless.stack.kafka import create_topics

    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="skewless-bench-archive-"))
    bootstrap, stop_kafka = _kafka(tmp)
    try:
        topic = "bench-orders"
        create_topics(bootstrap, {topic: PARTITIONS})
        catalog = load_catalog(catalog_db=tmp / "catalog.db", warehouse=tmp / "warehouse")

        # 1. throughput: drain a backlog (REPEATS times into fresh tables), each next to the floors
        _produce_now(bootstrap, topic, N_THROUGHPUT)
        runs = []
        for r in range(REPEATS):
            floor_eps, values = _floor_consume(bootstrap, topic, N_THROUGHPUT)
            parse_write_eps = _floor_parse_write(values, tmp)
            del values
            fresh = EventSource("orders", "orders", f"bench.orders_drain{r}", topic=topic, partition_key="user_id")
            t0 = time.perf_counter()
            stats = SourceArchiver(fresh, catalog, ArchiveConfig(bootstrap=bootstrap)).run(drain=True)
            drain_s = time.perf_counter() - t0
            archived = stats.records + stats.dead_letters
            assert archived == N_THROUGHPUT, f"archived {archived} of {N_THROUGHPUT}"
            runs.append((archived / drain_s, floor_eps, parse_write_eps, drain_s, stats))
            print(f"drain {r}: {archived / drain_s:,.0f} events/s (floor consume {floor_eps:,.0f}, "
                  f"parse+write {parse_write_eps:,.0f})", file=sys.stderr)
        eps, floor_eps, parse_write_eps, drain_s, stats = sorted(runs, key=lambda x: x[0])[len(runs) // 2]
        ratios = sorted(e / f for e, f, _, _, _ in runs)
        source = fresh  # the lag phase goes on from the last drain's table (archived up to the backlog's end)
        s3_metric = _s3_vs_local(catalog, bootstrap, topic, tmp) if os.environ.get("SKEWLESS_BENCH_ARCHIVE_S3", "1") != "0" else None

        # 2. lag at a steady rate: commit-end time per offset range, from the after-commit hook
        commits: list[tuple[float, dict[int, int]]] = []
        holder: dict[str, SourceArchiver] = {}

        def hook(point: str, _count: int) -> None:
            if point == "after-raw-commit":
                commits.append((time.time(), dict(holder["a"].raw_next)))

        archiver = SourceArchiver(source, catalog, ArchiveConfig(bootstrap=bootstrap, fault=hook))
        holder["a"] = archiver
        start_offsets = dict(archiver_offsets(catalog, source))
        commits.append((0.0, start_offsets))
        stop = threading.Event()
        worker = threading.Thread(target=archiver.run, args=(stop,), daemon=True)
        worker.start()
        ctx = multiprocessing.get_context("spawn")
        producer = ctx.Process(target=_producer, args=(bootstrap, topic, LAG_RATE, LAG_SECONDS, N_THROUGHPUT))
        producer.start()
        producer.join(LAG_SECONDS + 120)
        deadline = time.monotonic() + 60
        produced = LAG_RATE * LAG_SECONDS
        while time.monotonic() < deadline and sum(commits[-1][1].values()) - sum(start_offsets.values()) < produced:
            time.sleep(0.2)
        stop.set()
        worker.join(60)
        lags = _lags(catalog, source, commits)
        return {
            "archive_events_per_s": {
                "value": round(eps), "unit": "events/s", "goal": f">= {GOAL_EPS:,} events/s",
                "floor": {"value": round(floor_eps), "unit": "events/s", "name": "plain confluent-kafka consume, same run"},
                "floor_parse_write": {"value": round(parse_write_eps), "unit": "events/s",
                                      "name": "pyarrow.json NDJSON parse + one Parquet write, same values"},
                "ratio_to_floor": round(eps / floor_eps, 3), "median_ratio_to_floor": round(ratios[len(ratios) // 2], 3),
                "runs": [{"events_per_s": round(e), "floor_consume": round(f), "floor_parse_write": round(w)} for e, f, w, _, _ in runs],
                "profile": {"consume_s": round(stats.consume_s, 2), "convert_s": round(stats.convert_s, 2),
                            "commit_s": round(stats.commit_s, 2),
                            "other_s": round(drain_s - stats.consume_s - stats.convert_s - stats.commit_s, 2),
                            "columnar_share": round(stats.columnar / max(1, stats.records), 4)},
                "detail": f"{N_THROUGHPUT:,} records (1% malformed) drained in {drain_s:.1f} s (median of {len(runs)}), "
                          f"{stats.commits} commits, {PARTITIONS} partitions, one archiver (one Python thread) on a 2-core machine",
            },
            **({"archive_s3_events_per_s": s3_metric} if s3_metric else {}),
            "archive_lag_p99_s": {
                "value": round(_pct(lags, 0.99), 2), "unit": "s", "goal": f"< {GOAL_LAG_S:g} s",
                "p50_s": round(_pct(lags, 0.5), 2), "max_s": round(max(lags), 2),
                "detail": f"{len(lags):,} records at {LAG_RATE:,} events/s for {LAG_SECONDS} s; commit every 5 s or 50,000 records",
            },
        }
    finally:
        stop_kafka()
        shutil.rmtree(tmp, ignore_errors=True)


def archiver_offsets(catalog: Any, source: EventSource) -> dict[int, int]:
    from skewless.offline.archive_progress import OFFSETS_PROP, parse_offsets

    return parse_offsets(catalog.load_table(source.table).properties.get(OFFSETS_PROP))


def _lags(catalog: Any, source: EventSource, commits: list[tuple[float, dict[int, int]]]) -> list[float]:
    """Lag of every raw row committed after ``commits[0]``: its commit's end - its Kafka timestamp."""
    import bisect

    rows = catalog.load_table(source.table).scan(selected_fields=("_kafka_partition", "_offset", "_kafka_ts")).to_arrow()
    bounds: dict[int, list[tuple[int, float]]] = {}
    for at, offsets in commits[1:]:
        for p, o in offsets.items():
            bounds.setdefault(p, []).append((o, at))
    first = commits[0][1]
    lags = []
    for p, o, ts in zip(rows["_kafka_partition"].to_pylist(), rows["_offset"].to_pylist(), rows["_kafka_ts"].to_pylist()):
        if o < first.get(p, 0):
            continue
        ends = bounds[p]
        i = bisect.bisect_right([b for b, _ in ends], o)
        lags.append(ends[i][1] - ts.timestamp())
    return lags


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
