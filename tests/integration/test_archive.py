"""The raw archive against real Kafka and Iceberg: exactly once (with malformed records, crashes between the
Iceberg commit and what follows, SIGKILL, restarts, compaction) and schema drift per source."""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from skewless.archive.tables import dead_letter_table_name
from skewless.config import PROJECT_ROOT
from skewless.core.dsl import EventSource
from skewless.offline import archive_progress as P

pytestmark = pytest.mark.integration

ORDERS_SCHEMA = PROJECT_ROOT / "schemas" / "orders.schema.json"
BASE_MS = 1_714_564_800_000  # 2024-05-01T12:00:00Z


def _iso(ms: int) -> str:
    from skewless.core.timeutil import from_epoch_ms

    return from_epoch_ms(ms).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _events(seed: int, n: int, start: int = 0) -> list[tuple[bytes, bytes | None]]:
    """``n`` (key, value) records: valid orders over two days, ~8% malformed, some exact duplicates."""
    rng = random.Random(seed)
    out: list[tuple[bytes, bytes | None]] = []
    for i in range(start, start + n):
        user = f"u{rng.randint(0, 20)}"
        event = {"event_id": f"s{seed}-e{i}", "user_id": user, "order_id": f"o{i}", "amount": rng.randint(0, 10_000),
                 "currency": "EUR", "status": rng.choice(["placed", "completed"]),
                 "event_time": _iso(BASE_MS + rng.randint(0, 36 * 3600 * 1000))}
        roll = rng.random()
        if roll < 0.02:
            value: bytes | None = b"\xff not utf-8"
        elif roll < 0.04:
            value = b'{"event_id": "x", "event_id": "y"}'
        elif roll < 0.06:
            value = json.dumps({**event, "amount": -1}).encode()
        elif roll < 0.08:
            value = json.dumps({**event, "event_time": "yesterday"}).encode()
        else:
            value = json.dumps(event).encode()
        out.append((user.encode(), value))
        if roll > 0.97:
            out.append((user.encode(), value))  # an exact duplicate: a raw fact, archived twice
    return out


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None]]) -> list[tuple[int, int, bytes | None]]:
    """Produce and return ``(partition, offset, value)`` of every record as Kafka stored it."""
    from confluent_kafka import Producer

    stored: list[tuple[int, int, bytes | None]] = []
    errors: list[Any] = []

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err)
        else:
            stored.append((msg.partition(), msg.offset(), msg.value()))

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=report)
        producer.poll(0)
    assert producer.flush(60) == 0 and not errors, f"produce failed: {errors[:3]}"
    return stored


@functools.lru_cache(maxsize=1)
def _converter() -> Any:
    from skewless.archive.records import RecordConverter
    from skewless.core.schemas import load_schema

    return RecordConverter(EventSource(name="x", schema="orders", topic="x", table="x.y", partition_key="user_id"),
                           load_schema("orders"))


def _is_malformed(value: bytes | None) -> bool:
    return _converter().convert(value).row is None


def _repo(tmp: Path, sources: dict[str, tuple[str, str]], schema_docs: dict[str, dict] | None = None) -> tuple[Path, Path]:
    """A feature repository with ``{name: (topic, table)}`` sources (schema = name); returns (defs, schemas)."""
    defs, schemas = tmp / "defs", tmp / "schemas"
    defs.mkdir(parents=True, exist_ok=True)
    schemas.mkdir(parents=True, exist_ok=True)
    lines = ["from skewless import EventSource"]
    for name, (topic, table) in sources.items():
        lines.append(f"{name} = EventSource(name={name!r}, schema={name!r}, topic={topic!r}, table={table!r}, partition_key='user_id')")
        doc = (schema_docs or {}).get(name) or json.loads(ORDERS_SCHEMA.read_text())
        (schemas / f"{name}.schema.json").write_text(json.dumps(doc))
    (defs / "sources.py").write_text("\n".join(lines) + "\n")
    return defs, schemas


def _source(defs: Path, schemas: Path, name: str) -> EventSource:
    from skewless.core.repo import load_repository

    return load_repository(defs, schemas_dir=schemas).sources_by_name[name]


def _check_exactly_once(catalog: Any, source: EventSource, stored: list[tuple[int, int, bytes | None]]) -> None:
    """Raw rows == the well-formed records by (event id, partition, offset); dead letters == the malformed ones."""
    raw = catalog.load_table(source.table).scan(selected_fields=("event_id", "_kafka_partition", "_offset")).to_arrow()
    dead = catalog.load_table(dead_letter_table_name(source)).scan().to_arrow()
    got_raw = sorted(zip(raw["event_id"].to_pylist(), raw["_kafka_partition"].to_pylist(), raw["_offset"].to_pylist()))
    want_raw = sorted((json.loads(v)["event_id"], p, o) for p, o, v in stored if not _is_malformed(v))
    assert len(got_raw) == len(set(got_raw)), "a raw row is doubled"
    assert got_raw == want_raw
    _check_values(catalog, source, stored)
    got_dead = sorted(zip(dead["_kafka_partition"].to_pylist(), dead["_offset"].to_pylist(), dead["payload"].to_pylist()))
    want_dead = sorted((p, o, v) for p, o, v in stored if _is_malformed(v))
    assert len(got_dead) == len(set(got_dead)), f"a dead letter is doubled: {sorted(k for k in got_dead if got_dead.count(k) > 1)}"
    assert got_dead == want_dead
    assert all(r for r in dead["reason"].to_pylist())
    ends: dict[int, int] = {}
    for p, o, _ in stored:
        ends[p] = max(ends.get(p, 0), o + 1)
    assert P.parse_offsets(catalog.load_table(source.table).properties[P.OFFSETS_PROP]) == ends


def _check_values(catalog: Any, source: EventSource, stored: list[tuple[int, int, bytes | None]]) -> None:
    """Every raw row holds exactly the per-record converter's values (the columnar path included)."""
    import pyarrow as pa

    columns = _converter().columns
    table = catalog.load_table(source.table).scan(selected_fields=(*columns, "_kafka_partition", "_offset")).to_arrow()
    as_py = {name: (table[name].cast(pa.int64()) if pa.types.is_timestamp(table[name].type) else table[name]).to_pylist()
             for name in table.column_names}
    got = {(p, o): tuple(as_py[c][i] for c in columns)
           for i, (p, o) in enumerate(zip(as_py["_kafka_partition"], as_py["_offset"]))}
    want = {(p, o): _converter().convert(v).row for p, o, v in stored if not _is_malformed(v)}
    assert got == want


def _archiver(catalog: Any, source: EventSource, bootstrap: str, schemas: Path, **kw: Any):
    from skewless.archive.runner import ArchiveConfig, SourceArchiver

    config = ArchiveConfig(bootstrap=bootstrap, schemas_dir=schemas, **{"max_records": 150, "max_interval_s": 0.5, **kw})
    return SourceArchiver(source, catalog, config)


class Crash(Exception):
    pass


def test_exactly_once_with_crashes_and_compaction(kafka_bootstrap: str, kafka_topic: Callable[..., str],
                                                 iceberg_catalog: Any, tmp_path: Path) -> None:
    from skewless.archive.maintenance import compact
    from skewless.offline.archive_progress import archive_progress

    topic = kafka_topic(partitions=3, prefix="archive")
    ns = f"arch_{uuid.uuid4().hex[:8]}"
    defs, schemas = _repo(tmp_path, {"orders": (topic, f"{ns}.orders")})
    source = _source(defs, schemas, "orders")
    stored = _produce(kafka_bootstrap, topic, _events(1, 900))
    assert any(_is_malformed(v) for _, _, v in stored)

    # 1. crash right after a dead-letter commit (before the raw commit), then re-read that gap in smaller batches
    #    and crash right after a raw commit
    for point, nth, size in (("after-dead-letter-commit", 1, 500), ("after-raw-commit", 4, 37)):
        def hook(at: str, count: int, point: str = point, nth: int = nth) -> None:
            if at == point and count == nth:
                raise Crash(f"{at} #{count}")
        with pytest.raises(Crash):
            _archiver(iceberg_catalog, source, kafka_bootstrap, schemas, fault=hook, max_records=size).run(drain=True)
    stats = _archiver(iceberg_catalog, source, kafka_bootstrap, schemas).run(drain=True)
    assert stats.commits >= 1
    _check_exactly_once(iceberg_catalog, source, stored)

    progress = archive_progress(iceberg_catalog, source)
    assert progress.state == "running" and all(pp.caught_up for pp in progress.partitions.values())
    raw = iceberg_catalog.load_table(source.table).scan(selected_fields=("event_time",)).to_arrow()
    max_ms = max(t.timestamp() * 1000 for t in raw["event_time"].to_pylist())
    assert progress.complete_until_ms == int(max_ms) - 3600 * 1000  # all caught up: max event time - lateness

    # 2. compaction (while nothing runs): same rows, offsets kept, and the archive resumes after it
    before_files = len(list(iceberg_catalog.load_table(source.table).scan().plan_files()))
    results = compact(iceberg_catalog, source, keep_snapshots=2, min_age_s=0)
    assert results[0].rows > 0 and len(list(iceberg_catalog.load_table(source.table).scan().plan_files())) < before_files
    _check_exactly_once(iceberg_catalog, source, stored)
    stored += _produce(kafka_bootstrap, topic, _events(2, 300))
    _archiver(iceberg_catalog, source, kafka_bootstrap, schemas).run(drain=True)
    _check_exactly_once(iceberg_catalog, source, stored)

    # 3. compaction concurrent with a running archive: nothing lost, nothing doubled
    stop = threading.Event()
    archiver = _archiver(iceberg_catalog, source, kafka_bootstrap, schemas, max_records=50, max_interval_s=0.2)
    worker = threading.Thread(target=archiver.run, args=(stop,))
    worker.start()
    try:
        for i in range(3):
            stored += _produce(kafka_bootstrap, topic, _events(3 + i, 150))
            compact(iceberg_catalog, source, keep_snapshots=3, min_age_s=0)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            offsets = P.parse_offsets(iceberg_catalog.load_table(source.table).properties.get(P.OFFSETS_PROP))
            if sum(offsets.values()) >= len(stored):
                break
            time.sleep(0.3)
    finally:
        stop.set()
        worker.join(120)
    assert not worker.is_alive()
    _check_exactly_once(iceberg_catalog, source, stored)


def _cli(defs: Path, schemas: Path, catalog: Any, bootstrap: str, *extra: str, env: dict | None = None) -> subprocess.Popen:
    loc = catalog.properties
    db = loc["uri"].removeprefix("sqlite:///")
    warehouse = loc["warehouse"].removeprefix("file://")
    argv = [sys.executable, "-m", "skewless.cli", "archive", "run", "--repo", str(defs), "--schemas", str(schemas),
            "--catalog-db", db, "--warehouse", warehouse, "--bootstrap", bootstrap, "--max-records", "100",
            "--max-interval", "0.3", *extra]
    return subprocess.Popen(argv, cwd=PROJECT_ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_sigkill_and_crash_after_commit_in_a_process(kafka_bootstrap: str, kafka_topic: Callable[..., str],
                                                    iceberg_catalog: Any, tmp_path: Path) -> None:
    from skewless.archive.runner import CRASH_ENV, CRASH_EXIT_CODE

    topic = kafka_topic(partitions=3, prefix="archive-kill")
    ns = f"arch_{uuid.uuid4().hex[:8]}"
    defs, schemas = _repo(tmp_path, {"orders": (topic, f"{ns}.orders")})
    source = _source(defs, schemas, "orders")
    stored = _produce(kafka_bootstrap, topic, _events(10, 400))

    # SIGKILL while it runs and producers keep producing
    proc = _cli(defs, schemas, iceberg_catalog, kafka_bootstrap)
    try:
        deadline = time.monotonic() + 120
        snapshots = 0
        while time.monotonic() < deadline and snapshots < 3:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            stored += _produce(kafka_bootstrap, topic, _events(11, 40, start=len(stored)))
            try:
                snapshots = len(iceberg_catalog.load_table(source.table).metadata.snapshots)
            except Exception:  # noqa: BLE001 - table not created yet
                pass
            time.sleep(0.2)
        assert snapshots >= 3, "the archive committed nothing in 120 s"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)

    # a crash right after the Iceberg commit, before anything else (Kafka commit, logging, next batch)
    stored += _produce(kafka_bootstrap, topic, _events(12, 300))
    crashed = _cli(defs, schemas, iceberg_catalog, kafka_bootstrap, "--drain", env={CRASH_ENV: "after-raw-commit:1"})
    out, _ = crashed.communicate(timeout=180)
    assert crashed.returncode == CRASH_EXIT_CODE, out

    done = _cli(defs, schemas, iceberg_catalog, kafka_bootstrap, "--drain")
    out, _ = done.communicate(timeout=180)
    assert done.returncode == 0, out
    _check_exactly_once(iceberg_catalog, source, stored)


def _replace(path: Path, doc: dict) -> None:
    """Write a schema file atomically, as a deployment would."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def test_schema_drift_evolves_or_stops_one_source(kafka_bootstrap: str, kafka_topic: Callable[..., str],
                                                 iceberg_catalog: Any, iceberg_location: Any, tmp_path: Path) -> None:
    from skewless.engines.iceberg_catalog import load_catalog

    from skewless.archive.runner import ArchiveConfig, RunStats, run_archives
    from skewless.archive.tables import IncompatibleSchemaError

    ta, tb = kafka_topic(partitions=1, prefix="drift-a"), kafka_topic(partitions=1, prefix="drift-b")
    ns = f"arch_{uuid.uuid4().hex[:8]}"
    defs, schemas = _repo(tmp_path, {"orders_a": (ta, f"{ns}.orders_a"), "orders_b": (tb, f"{ns}.orders_b")})
    sources = [_source(defs, schemas, "orders_a"), _source(defs, schemas, "orders_b")]
    _produce(kafka_bootstrap, ta, _events(20, 50))
    _produce(kafka_bootstrap, tb, _events(21, 50))
    config = ArchiveConfig(bootstrap=kafka_bootstrap, schemas_dir=schemas, max_records=100, max_interval_s=0.3,
                           metadata_refresh_s=0.3)
    stop = threading.Event()
    results: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: results.update(run_archives(sources, lambda: load_catalog(iceberg_location.catalog_db, iceberg_location.warehouse), config, stop)))
    worker.start()

    def rows(table: str) -> Any:
        try:
            return iceberg_catalog.load_table(table).scan().to_arrow()
        except Exception:  # noqa: BLE001 - not created yet
            return None

    def wait_for(cond: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if cond():
                return
            assert worker.is_alive() or cond(), f"archives ended early: {results}"
            time.sleep(0.5)
        props = {}
        for s in sources:
            try:
                props[s.name] = iceberg_catalog.load_table(s.table).properties
            except Exception as exc:  # noqa: BLE001 - diagnostics only
                props[s.name] = repr(exc)
        raise AssertionError(f"timed out waiting for {what}; results {results}; table properties {props}")

    try:
        wait_for(lambda: all((r := rows(s.table)) is not None and r.num_rows > 0 for s in sources), "first commits")
        doc = json.loads(ORDERS_SCHEMA.read_text())
        compatible = {**doc, "properties": {**doc["properties"], "coupon": {"type": ["string", "null"]}}}
        _replace(schemas / "orders_a.schema.json", compatible)
        incompatible = {**doc, "properties": {**doc["properties"], "amount": {"type": "number", "minimum": 0}}}
        _replace(schemas / "orders_b.schema.json", incompatible)
        wait_for(lambda: isinstance(results.get("orders_b"), BaseException) or
                 P.STOPPED_PROP in iceberg_catalog.load_table(sources[1].table).properties, "orders_b to stop")
        wait_for(lambda: "coupon" in iceberg_catalog.load_table(sources[0].table).schema().column_names, "orders_a to evolve")
        ev = {"event_id": "with-coupon", "user_id": "u1", "order_id": "o1", "amount": 5, "currency": "EUR",
              "status": "placed", "event_time": _iso(BASE_MS), "coupon": "SPRING"}
        _produce(kafka_bootstrap, ta, [(b"u1", json.dumps(ev).encode())])
        wait_for(lambda: "SPRING" in (rows(sources[0].table) or {"coupon": []})["coupon"].to_pylist()
                 if "coupon" in rows(sources[0].table).column_names else False, "orders_a to archive the new field")
    finally:
        stop.set()
        worker.join(120)
    assert isinstance(results["orders_a"], RunStats)
    err = results["orders_b"]
    assert isinstance(err, IncompatibleSchemaError) and "'amount'" in str(err) and "long" in str(err) and "double" in str(err)
    stopped = iceberg_catalog.load_table(sources[1].table).properties[P.STOPPED_PROP]
    assert "'amount'" in stopped
    # restarting with the drift still there stops again, at once, with the same error
    from skewless.archive.runner import SourceArchiver

    with pytest.raises(IncompatibleSchemaError):
        SourceArchiver(sources[1], iceberg_catalog, config).run(drain=True)
