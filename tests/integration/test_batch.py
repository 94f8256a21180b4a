"""The batch path end to end on real Spark + Iceberg + Redis: compiled jobs over seeded raw tables equal the oracle."""

from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest

from batch_jobs.runner import RunOptions, compile_feature_view, cutoff_ms, run_range
from skewless.core import laws, layout, oracle
from skewless.core.admission import admit
from skewless.core.dsl import (Agg, Aggregation, DaysSince, Derived, Entity, EventSource, FeatureView, Ref, Where,
                               Window)
from skewless.core.routing import is_stream_served
from skewless.core.timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE, day_start_ms, floor_ms, from_epoch_ms, iso_ms
from skewless.offline import tables as T
from tests.support import reference_reader

pytestmark = pytest.mark.integration

# --- seeded raw tables: Kafka-like records (skew, duplicates, late and future events) in the archive layout

FIELD_TYPES = {"event_id": "string", "user_id": "string", "order_id": "string", "amount": "int64",
               "currency": "string", "status": "string", "event_time": "timestamp"}
STATUSES = ["placed", "completed", "cancelled", "refunded"]
USER = Entity("user", {"user_id": "string"})


def make_view(name: str, table: str, version: int = 1) -> FeatureView:
    source = EventSource(name=f"src_{name}", schema="orders", table=table, topic=f"t_{name}", partition_key="user_id",
                         allowed_lateness=timedelta(hours=1), clock_skew_tolerance=timedelta(minutes=5))
    placed, completed = Where("status", "==", "placed"), Where("status", "==", "completed")
    return FeatureView(
        name=name, entity=USER, source=source, version=version,
        features=[
            Aggregation("n_1h", Agg.COUNT, None, Window.hours(1), where=placed),
            Aggregation("amt_1h", Agg.SUM, "amount", Window.hours(1)),
            Aggregation("min_3d", Agg.MIN, "amount", Window.days(3)),
            Aggregation("avg_7d", Agg.AVG, "amount", Window.days(7), where=Where("status", "in", ["placed", "completed"])),
            Aggregation("max_30d", Agg.MAX, "amount", Window.days(30), where=placed),
            Aggregation("n_365d", Agg.COUNT, None, Window.days(365), where=placed),
            Aggregation("ltv_365d", Agg.SUM, "amount", Window.days(365), where=completed),
            Aggregation("n_completed_365d", Agg.COUNT, None, Window.days(365), where=completed),
            Derived("avg_ltv_365d", Ref("ltv_365d") / Ref("n_completed_365d")),
            Aggregation("last_ts", Agg.MAX, "event_time", Window.lifetime(), where=placed),
            Derived("days_since_last", DaysSince(Ref("last_ts"))),
            Aggregation("last_status", Agg.LAST, "status", Window.lifetime()),
            Aggregation("n_life", Agg.COUNT, None, Window.lifetime()),
        ],
    )


def make_records(seed: int, end_day_ms: int, users: int = 8, n: int = 500) -> list[dict[str, Any]]:
    """Kafka records ``{partition, offset, timestamp_ms, value}`` of order events ending on day ``end_day_ms``."""
    rng = random.Random(seed)
    cutoff = end_day_ms + MS_PER_DAY
    raw: list[tuple[int, int, dict[str, Any]]] = []  # (partition, kafka_ts, payload)

    def add(user: int, ts: int, kafka_ts: int | None = None, event_id: str | None = None,
            amount: int | None = None, status: str | None = None) -> dict[str, Any]:
        payload = {"event_id": event_id or f"e{len(raw)}", "user_id": f"u{user}", "order_id": f"o{rng.randrange(10**6)}",
                   "amount": amount if amount is not None else rng.choice([0, 1, 99, 1250, 10**12, 2**40 + 7]),
                   "currency": "EUR", "status": status or rng.choice(STATUSES), "event_time": iso_ms(ts)}
        raw.append((user % 3, kafka_ts if kafka_ts is not None else ts, payload))
        return payload

    for _ in range(n):
        user = 0 if rng.random() < 0.4 else rng.randrange(1, users)  # skew: u0 has 40%
        r = rng.random()
        if r < 0.15:
            ts = cutoff - rng.randrange(30, 400) * MS_PER_DAY - rng.randrange(MS_PER_DAY)  # sparse old history
        elif r < 0.25:  # exactly on day and tile edges
            ts = cutoff - rng.randrange(1, 370) * MS_PER_DAY + rng.choice([0, -1, 1, 5 * MS_PER_MINUTE, MS_PER_HOUR])
        else:
            ts = cutoff - rng.randrange(1, 12 * MS_PER_DAY)
        add(user, ts)
    for _ in range(30):  # late: stamped hours before their record timestamp (beyond the allowed lateness)
        ts = cutoff - rng.randrange(2, 20) * MS_PER_DAY
        add(rng.randrange(users), ts - 3 * MS_PER_HOUR - rng.randrange(MS_PER_DAY), kafka_ts=ts)
    for _ in range(15):  # future: stamped more than the 5-minute tolerance after the record timestamp
        ts = cutoff - rng.randrange(2, 10) * MS_PER_DAY
        add(rng.randrange(users), ts + 6 * MS_PER_MINUTE, kafka_ts=ts)
    add(1, cutoff - 5 * MS_PER_DAY + 5 * MS_PER_MINUTE, kafka_ts=cutoff - 5 * MS_PER_DAY)  # exactly at the tolerance
    originals = [p for _, _, p in raw]
    for p in rng.sample(originals, 40):  # duplicates: same (id, time), later offset, other amount (first wins)
        ts = int(datetime.fromisoformat(p["event_time"].replace("Z", "+00:00")).timestamp() * 1000)
        user = int(p["user_id"][1:])
        add(user, ts, kafka_ts=ts + rng.randrange(1, MS_PER_HOUR * 5), event_id=p["event_id"], amount=7,
            status=p["status"])
    p = originals[0]
    ts0 = int(datetime.fromisoformat(p["event_time"].replace("Z", "+00:00")).timestamp() * 1000)
    add(int(p["user_id"][1:]), ts0 + 1, event_id=p["event_id"], amount=5)  # same id, other time: distinct event
    moved = dict(p)
    raw.append(((int(p["user_id"][1:]) + 1) % 3, ts0 + 10, moved))  # same (id, time) in another partition: distinct
    for ts in (cutoff + 2 * MS_PER_HOUR, cutoff + 26 * MS_PER_HOUR):  # after the cut-off (also moves the archive on)
        add(99, ts)
    by_partition: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for part, kts, payload in raw:
        by_partition.setdefault(part, []).append((kts, payload))
    records = []
    for part, items in sorted(by_partition.items()):
        items.sort(key=lambda x: x[0])
        for offset, (kts, payload) in enumerate(items):
            records.append({"partition": part, "offset": offset, "timestamp_ms": kts, "value": json.dumps(payload)})
    return records


def offline_events(records: list[dict[str, Any]], view: FeatureView) -> list[dict[str, Any]]:
    return list(admit(records, view.source, key_fields=view.entity.key_names).offline)


def write_raw(spark: Any, catalog: Any, view: FeatureView, records: list[dict[str, Any]],
              complete_until_ms: int | None = None) -> None:
    """Append records to the view's raw table in the archive's layout (``skewless.archive.tables.ensure_tables``),
    then record the archive progress as the archive does (table properties). Malformed records never land here."""
    from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType, TimestampType

    from skewless.offline.archive_progress import OFFSETS_PROP, PROGRESS_PROP
    from skewless.archive.tables import ensure_tables
    from skewless.core.schemas import load_schema

    ensure_tables(catalog, view.source, load_schema("orders"))
    table = "skewless." + view.source.table
    schema = StructType([StructField(n, t) for n, t in [
        ("event_id", StringType()), ("user_id", StringType()), ("order_id", StringType()), ("amount", LongType()),
        ("currency", StringType()), ("status", StringType()), ("event_time", TimestampType()),
        ("_kafka_partition", IntegerType()), ("_offset", LongType()), ("_kafka_ts", TimestampType()),
        ("_ingested_at", TimestampType())]])
    now = datetime.now(timezone.utc)
    rows = []
    for r in records:
        p = json.loads(r["value"])
        ts = datetime.fromisoformat(p["event_time"].replace("Z", "+00:00"))
        rows.append((p["event_id"], p["user_id"], p["order_id"], p["amount"], p["currency"], p["status"], ts,
                     r["partition"], r["offset"], from_epoch_ms(r["timestamp_ms"]), now))
    columns = [f.name for f in spark.table(table).schema.fields]
    spark.createDataFrame(rows, schema).select(*columns).writeTo(table).append()
    if complete_until_ms is None:  # as the archive computes it once every partition caught up
        lateness = int(view.source.allowed_lateness.total_seconds() * 1000)
        skew = int(view.source.clock_skew_tolerance.total_seconds() * 1000)
        times = [json.loads(r["value"])["event_time"] for r in records
                 if _ms(json.loads(r["value"])["event_time"]) <= r["timestamp_ms"] + skew]
        complete_until_ms = max(_ms(t) for t in times) - lateness
    offsets = {}
    for r in records:
        offsets[str(r["partition"])] = max(offsets.get(str(r["partition"]), 0), r["offset"] + 1)
    progress = json.dumps({"complete_until_ms": complete_until_ms, "committed_at_ms": 0, "partitions": {}})
    spark.sql(f"ALTER TABLE {table} SET TBLPROPERTIES ('{OFFSETS_PROP}' = '{json.dumps(offsets)}', "
              f"'{PROGRESS_PROP}' = '{progress}')")


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


# --- tests

END = datetime.now(timezone.utc).date() - timedelta(days=1)  # recent: batch hashes expire 5 days after their cut-off
START = END - timedelta(days=400)
C = cutoff_ms(END)


def _quiet(_: str) -> None:
    pass


class Dataset:
    def __init__(self, spark: Any, catalog: Any, seed: int):
        uid = uuid.uuid4().hex[:8]
        self.name = f"bt_{uid}"
        self.table = f"raw.orders_{uid}"
        self.view = make_view(self.name, self.table)
        self.job = compile_feature_view(self.view, FIELD_TYPES)
        self.records = make_records(seed, day_start_ms(END))
        self.events = offline_events(self.records, self.view)
        write_raw(spark, catalog, self.view, self.records)
        self.users = sorted({e["user_id"] for e in self.events})


@pytest.fixture(scope="module")
def ds(spark: Any, iceberg_catalog: Any) -> Dataset:
    return Dataset(spark, iceberg_catalog, seed=7)


@pytest.fixture(scope="module")
def backfilled(spark: Any, iceberg_catalog: Any, ds: Dataset) -> Any:
    """One backfill of the whole history (gated by the archive: the raw table reaches C + 26 h)."""
    lines: list[str] = []
    report = run_range(spark, ds.view, ds.job, START, END, RunOptions(chunk_days=120, log=lines.append,
                                                                      catalog=iceberg_catalog))
    return report, lines


def _rows(spark: Any, table: str, order: str) -> list[dict[str, Any]]:
    return [r.asDict(recursive=True) for r in spark.sql(f"SELECT * FROM {table} ORDER BY {order}").collect()]


def _expected_tiles(view: FeatureView, events: list[dict[str, Any]]) -> tuple[dict[tuple, dict[str, Any]], int]:
    """The laws' daily tiles of ``view``'s batch aggregations over the offline ``events`` in [START, C), keyed by
    (user, day ms), for the (user, day)s with an event some aggregation counts; and how many (user, day)s have
    events at all."""
    batch_aggs = [f for f in view.features if isinstance(f, Aggregation) and not is_stream_served(layout.width_ms_of(f))]
    by_key: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if day_start_ms(START) <= e["event_time"] < C:
            by_key[(e["user_id"], floor_ms(e["event_time"], MS_PER_DAY))].append(e)
    expected: dict[tuple, dict[str, Any]] = {}
    for key, evs in by_key.items():
        if all(laws.contribution(f, e) is None for f in batch_aggs for e in evs):
            continue  # nothing counted: every law's identity, no tile row
        expected[key] = {f.name: laws.law(f.agg).aggregate(
            (laws.contribution(f, e), (e["event_time"], e["_kafka_partition"], e["_offset"])) for e in evs)
            for f in batch_aggs}
    return expected, len(by_key)


def _tiles_by_key(spark: Any, view: FeatureView) -> dict[tuple, dict[str, Any]]:
    from batch_jobs.codec import to_intermediate

    batch_aggs = [f for f in view.features if isinstance(f, Aggregation) and not is_stream_served(layout.width_ms_of(f))]
    return {(r["user_id"], day_start_ms(r["day"])): {f.name: to_intermediate(f.agg, r[f.name]) for f in batch_aggs}
            for r in _rows(spark, T.ViewTables("features", view.name, view.version).tiles, "user_id, day")}


def test_daily_tiles_equal_the_laws_over_the_oracle_offline_set(spark: Any, ds: Dataset, backfilled: Any) -> None:
    report, lines = backfilled
    assert report.serving_rows and report.tile_rows > 0
    assert any("tile rows" in line for line in lines)
    expected, _ = _expected_tiles(ds.view, ds.events)
    assert _tiles_by_key(spark, ds.view) == expected


def test_output_files_are_written_without_parquet_dictionaries(spark: Any, iceberg_catalog: Any, ds: Dataset,
                                                                backfilled: Any) -> None:
    """Tiles and serving files carry no dictionary pages (the writer only fell back from them); a table made
    before the property existed gets it on its next run."""
    import pyarrow.parquet as pq

    tables = T.ViewTables("features", ds.name, 1)
    for kind in ("daily_tiles", "serving"):
        table = iceberg_catalog.load_table(tables.ident(kind))
        assert table.properties.get("parquet.enable.dictionary") == "false"
        paths = [t.file.file_path.removeprefix("file:") for t in table.scan().plan_files()]
        assert paths
        for path in paths:
            meta = pq.ParquetFile(path).metadata
            chunks = [meta.row_group(g).column(c) for g in range(meta.num_row_groups) for c in range(meta.num_columns)]
            assert chunks and not any(c.has_dictionary_page for c in chunks), (kind, path)
    # an older table: the property removed, then a one-day run puts it back before writing
    table = iceberg_catalog.load_table(tables.ident("daily_tiles"))
    table.transaction().remove_properties("parquet.enable.dictionary").commit_transaction()
    assert "parquet.enable.dictionary" not in iceberg_catalog.load_table(tables.ident("daily_tiles")).properties
    run_range(spark, ds.view, ds.job, END, END, RunOptions(rerun=True, catalog=iceberg_catalog, log=_quiet))
    assert iceberg_catalog.load_table(tables.ident("daily_tiles")).properties.get("parquet.enable.dictionary") == "false"


def _sample_instants(ds: Dataset) -> list[int]:
    return _sample_instants_of(ds.events)


def _sample_instants_of(events: list[dict[str, Any]]) -> list[int]:
    rng = random.Random(3)
    ts = sorted({e["event_time"] for e in events if e["event_time"] < C + 2 * MS_PER_DAY})
    out = {C, C - 1, C + 1, C - MS_PER_DAY, C - 5 * MS_PER_MINUTE, C - 365 * MS_PER_DAY, C - 364 * MS_PER_DAY + 1}
    for t in rng.sample(ts, 25):
        out |= {t, t + 1, floor_ms(t, MS_PER_DAY), floor_ms(t, MS_PER_DAY) + MS_PER_DAY, floor_ms(t, 5 * MS_PER_MINUTE),
                t + 365 * MS_PER_DAY}
    return sorted(x for x in out if day_start_ms(START) + 366 * MS_PER_DAY <= x <= C)


def test_point_in_time_values_equal_the_oracle_to_the_ms(spark: Any, ds: Dataset, backfilled: Any) -> None:
    from batch_jobs.pit import point_in_time

    instants = _sample_instants(ds)
    requests = [((u,), t) for u in ds.users[:5] for t in instants] + [(("nobody",), C)]
    got = point_in_time(spark, ds.view, ds.job, requests)
    history = [e for e in ds.events if e["event_time"] >= day_start_ms(START)]
    for (key, t), values in zip(requests, got):
        want = oracle.feature_row(ds.view, history, key, t)
        assert values == want, (key, t)


def _assert_serving_rows_equal_the_laws(view: FeatureView, events: list[dict[str, Any]],
                                        rows: list[dict[str, Any]], users: list[str]) -> None:
    """Each of ``users``' serving row (body and tails of every window, decoded as the layout does) equals the laws
    over its offline events; a user without a row has nothing counted in any of them (the identity)."""
    assert {r["cutoff_ms"] for r in rows} == {C}
    windows = layout.batch_windows(view)
    history = [e for e in events if e["event_time"] >= day_start_ms(START)]
    by_user = {r["user_id"]: r for r in rows}
    for user in users:
        r = by_user.get(user)
        record = None
        if r is not None:
            fields = {"cutoff": str(C), "run": r["run_id"], "epoch": "E"}
            fields.update({f: r[f.replace(":", "_")] for f in windows})
            record = layout.decode_batch_record(view, fields)
        for fname, aggs in windows.items():
            width = None if fname == layout.LIFETIME_FIELD else int(fname[2:])
            spans = [(None, C)] if width is None else [
                (C - width + 2 * MS_PER_DAY, C), (C - width, C - width + MS_PER_DAY),
                (C - width + MS_PER_DAY, C - width + 2 * MS_PER_DAY)]
            for i, (lo, hi) in enumerate(spans):
                for j, f in enumerate(aggs):
                    evs = [e for e in history if e["user_id"] == user and (lo is None or e["event_time"] >= lo)
                           and e["event_time"] < hi]
                    lw = laws.law(f.agg)
                    want = lw.aggregate(
                        (laws.contribution(f, e), (e["event_time"], e["_kafka_partition"], e["_offset"])) for e in evs)
                    got = record.windows[fname][i][j] if record is not None else lw.aggregate([])
                    assert got == want, (user, fname, f.name, r is not None)


def test_serving_rows_hold_body_and_tails_as_the_layout_encodes_them(spark: Any, ds: Dataset, backfilled: Any) -> None:
    rows = _rows(spark, T.ViewTables("features", ds.name, 1).serving, "user_id")
    _assert_serving_rows_equal_the_laws(ds.view, ds.events, rows, [r["user_id"] for r in rows[:6]])


def test_only_events_some_aggregation_counts_make_tiles(spark: Any, iceberg_catalog: Any) -> None:
    """A view whose every aggregation filters: (user, day)s without a counted event get no tile row, and users
    without one in a window no serving row; tiles, serving rows and point-in-time values still equal the oracle.
    Later copies that *would* count, of events that do not, change nothing: the filter follows the
    de-duplication (the first copy decides)."""
    from batch_jobs.pit import point_in_time

    uid = uuid.uuid4().hex[:8]
    completed = Where("status", "==", "completed")
    view = FeatureView(
        name=f"bf_{uid}", entity=USER, source=make_view(f"bf_{uid}", f"raw.orders_f{uid}").source, version=1,
        features=[
            Aggregation("ltv_365d", Agg.SUM, "amount", Window.days(365), where=completed),
            Aggregation("avg_7d", Agg.AVG, "amount", Window.days(7), where=completed),
            Aggregation("max_refund_30d", Agg.MAX, "amount", Window.days(30), where=Where("status", "==", "refunded")),
            Aggregation("last_cancelled", Agg.LAST, "order_id", Window.lifetime(),
                        where=Where("status", "==", "cancelled")),
        ])
    job = compile_feature_view(view, FIELD_TYPES)
    records = make_records(11, day_start_ms(END), users=12, n=300)
    next_offset: dict[int, int] = {}
    for r in records:
        next_offset[r["partition"]] = max(next_offset.get(r["partition"], 0), r["offset"] + 1)
    placed = [r for r in records if json.loads(r["value"])["status"] == "placed"
              and _ms(json.loads(r["value"])["event_time"]) < C][:12]
    for r in placed:  # same (id, time, partition), later offset: a duplicate, whatever it holds
        copy = dict(json.loads(r["value"]), status="completed", amount=123)
        records.append({"partition": r["partition"], "offset": next_offset[r["partition"]],
                        "timestamp_ms": r["timestamp_ms"], "value": json.dumps(copy)})
        next_offset[r["partition"]] += 1
    records.sort(key=lambda r: (r["partition"], r["offset"]))
    events = offline_events(records, view)
    write_raw(spark, iceberg_catalog, view, records)
    report = run_range(spark, view, job, START, END, RunOptions(chunk_days=200, log=_quiet, catalog=iceberg_catalog))

    expected, active = _expected_tiles(view, events)
    assert 0 < len(expected) < active  # some (user, day)s had events, none counted
    assert report.tile_rows == len(expected)
    assert _tiles_by_key(spark, view) == expected
    users = sorted({e["user_id"] for e in events})
    rows = _rows(spark, T.ViewTables("features", view.name, 1).serving, "user_id")
    assert 0 < len(rows) < len(users)  # users with events but nothing counted in any window have no row
    _assert_serving_rows_equal_the_laws(view, events, rows, users)
    instants = _sample_instants_of(events)
    requests = [((u,), t) for u in users for t in instants[::3]]
    got = point_in_time(spark, view, job, requests)
    history = [e for e in events if e["event_time"] >= day_start_ms(START)]
    for (key, t), values in zip(requests, got):
        assert values == oracle.feature_row(view, history, key, t), (key, t)


def test_sums_beyond_int64_never_fail_the_backfill(spark: Any, iceberg_catalog: Any) -> None:
    """Issue 19 item 7: every completed order of two users is 2**63 - 1 (the ANSI bigint sum failed the backfill,
    and a replay failed it again). Tiles and serving rows hold the exact sums (decimal(38, 0), written as JSON ints),
    the point-in-time values are null where the window's sum leaves int64, as the oracle's, the rest as usual."""
    from batch_jobs.pit import point_in_time

    uid = uuid.uuid4().hex[:8]
    completed = Where("status", "==", "completed")
    view = FeatureView(
        name=f"bo_{uid}", entity=USER, source=make_view(f"bo_{uid}", f"raw.orders_o{uid}").source, version=1,
        features=[
            Aggregation("ltv_365d", Agg.SUM, "amount", Window.days(365), where=completed),
            Aggregation("ltv_life", Agg.SUM, "amount", Window.lifetime(), where=completed),
            Aggregation("avg_7d", Agg.AVG, "amount", Window.days(7), where=completed),
            Aggregation("n_365d", Agg.COUNT, None, Window.days(365), where=completed),
            Derived("mean_365d", Ref("ltv_365d") / Ref("n_365d")),
        ])
    job = compile_feature_view(view, FIELD_TYPES)
    records = make_records(13, day_start_ms(END), users=6, n=300)
    for r in records:
        payload = json.loads(r["value"])
        if payload.get("status") == "completed" and payload.get("user_id") in ("u0", "u1"):
            r["value"] = json.dumps(dict(payload, amount=2**63 - 1))
    events = offline_events(records, view)
    write_raw(spark, iceberg_catalog, view, records)
    report = run_range(spark, view, job, START, END, RunOptions(chunk_days=200, log=_quiet, catalog=iceberg_catalog))
    assert report.serving_rows
    expected, _ = _expected_tiles(view, events)
    assert any(v["ltv_365d"] > 2**63 - 1 for v in expected.values())  # a day's tile beyond int64
    assert _tiles_by_key(spark, view) == expected
    users = sorted({e["user_id"] for e in events})
    rows = _rows(spark, T.ViewTables("features", view.name, 1).serving, "user_id")
    _assert_serving_rows_equal_the_laws(view, events, rows, users)
    requests = [((u,), t) for u in users for t in _sample_instants_of(events)[::3]]
    got = point_in_time(spark, view, job, requests)
    history = [e for e in events if e["event_time"] >= day_start_ms(START)]
    none = 0
    for (key, t), values in zip(requests, got):
        want = oracle.feature_values(view, history, key, t)
        assert values == {name: v for name, (v, _) in want.items()}, (key, t)
        none += want["ltv_life"][1] == oracle.INCOMPLETE
    assert none and none < len(requests)


def _fetch(client: Any, plan: Any) -> dict[str, Any]:
    fetched: dict[str, Any] = {plan.epoch_key: client.get(plan.epoch_key), plan.meta_key: client.hgetall(plan.meta_key)}
    fetched[plan.entity_key] = client.hgetall(plan.entity_key)
    return fetched


def test_materialize_then_online_read_equals_the_oracle_up_to_two_days_late(
        spark: Any, iceberg_catalog: Any, redis_client: Any, ds: Dataset, backfilled: Any) -> None:
    from batch_jobs.materialize import StoreNotInitialisedError, materialize_feature_view

    project = "bt"
    with pytest.raises(StoreNotInitialisedError):
        materialize_feature_view(iceberg_catalog, redis_client, ds.view, END, project=project)
    redis_client.set(layout.epoch_key(project), "E1")
    redis_client.hset(layout.view_meta_key(project, ds.view), mapping={"applied_from_ms": C - MS_PER_DAY, "epoch": "E1"})
    report = materialize_feature_view(iceberg_catalog, redis_client, ds.view, END, project=project)
    assert report.rows == report.written > 0
    snapshot = {k: redis_client.hgetall(k) for k in sorted(redis_client.keys(f"{project}:*:b"))}
    again = materialize_feature_view(iceberg_catalog, redis_client, ds.view, END, project=project)
    assert again.written == report.rows
    assert {k: redis_client.hgetall(k) for k in sorted(redis_client.keys(f"{project}:*:b"))} == snapshot
    # an older run is refused as a whole, up front; a second writer of the view is refused while one holds the lease
    from batch_jobs.materialize import ConcurrentMaterializationError, NewerRunMaterializedError, read_serving

    rows = read_serving(iceberg_catalog, ds.view, END)
    with pytest.raises(NewerRunMaterializedError):
        materialize_feature_view(iceberg_catalog, redis_client, ds.view, END - timedelta(days=1), project=project, rows=rows)
    meta_key = layout.view_meta_key(project, ds.view)
    assert not redis_client.hexists(meta_key, layout.BATCH_WRITER)  # released by the finished runs
    redis_client.hset(meta_key, mapping={layout.BATCH_WRITER: "other", layout.BATCH_WRITER_UNTIL: 2**53})
    with pytest.raises(ConcurrentMaterializationError):
        materialize_feature_view(iceberg_catalog, redis_client, ds.view, END, project=project)
    redis_client.hdel(meta_key, layout.BATCH_WRITER, layout.BATCH_WRITER_UNTIL)
    assert {k: redis_client.hgetall(k) for k in sorted(redis_client.keys(f"{project}:*:b"))} == snapshot
    assert int(redis_client.hget(meta_key, layout.META_BATCH_CUTOFF)) == C

    batch_features = [f.name for f in ds.view.features
                      if isinstance(f, Aggregation) and not is_stream_served(layout.width_ms_of(f))]
    before_cutoff = [e for e in ds.events if e["event_time"] < C]  # no stream tiles: nothing after C applied
    for days_late in range(4):
        t = C + days_late * MS_PER_DAY
        for user in ds.users[:6] + ["u99"]:
            plan = reference_reader.read_plan(project, ds.view, (user,), as_of_ms=t)
            fetched = _fetch(redis_client, plan)
            got = reference_reader.evaluate_read(plan, fetched, now_ms=t)
            for name in batch_features:
                want = oracle.feature_value(ds.view, name, before_cutoff, (user,), t)
                value, status = got[name]
                width = layout.width_ms_of(ds.view.feature(name))
                # u99 has no event before C: no batch hash, but the view's meta names the run, so its
                # batch part is empty and it reads like everyone else (COUNT 0, MAX null, ...)
                if days_late <= 2:
                    assert (value, status) == (want, "present"), (user, days_late, name)
                elif width is None:
                    assert (value, status) == (want, "stale"), (user, days_late, name)
                else:
                    assert (value, status) == (None, "incomplete"), (user, days_late, name)


def test_quality_gate_blocks_materialization(iceberg_catalog: Any, redis_client: Any, ds: Dataset,
                                             backfilled: Any) -> None:
    from batch_jobs.materialize import QualityGateBlocked, materialize_feature_view

    redis_client.set(layout.epoch_key("bt"), "E1")

    def gate(view: Any, day: date, rows: Any) -> bool:
        assert rows.num_rows > 0
        return False

    with pytest.raises(QualityGateBlocked):
        materialize_feature_view(iceberg_catalog, redis_client, ds.view, END, project="bt", quality_gate=gate)
    assert redis_client.keys("bt:*:b") == []


def _table_rows(spark: Any, namespace: str, name: str) -> tuple[list, list]:
    tables = T.ViewTables(namespace, name, 1)
    return _rows(spark, tables.tiles, "user_id, day"), _rows(spark, tables.serving, "user_id")


def test_backfill_twice_is_identical_and_a_killed_backfill_resumes_to_the_same_tables(
        spark: Any, iceberg_catalog: Any, ds: Dataset) -> None:
    start = END - timedelta(days=20)
    opts = dict(chunk_days=7, catalog=iceberg_catalog, log=_quiet)
    first = run_range(spark, ds.view, ds.job, start, END, RunOptions(namespace="bt_a", **opts))
    assert len(first.computed_days) == 21
    clean = _table_rows(spark, "bt_a", ds.name)
    again = run_range(spark, ds.view, ds.job, start, END, RunOptions(namespace="bt_a", rerun=True, **opts))
    assert len(again.computed_days) == 21 and _table_rows(spark, "bt_a", ds.name) == clean
    resumed = run_range(spark, ds.view, ds.job, start, END, RunOptions(namespace="bt_a", **opts))
    assert resumed.computed_days == [] and resumed.serving_rows is None  # all done: nothing recomputed

    def die(chunk: list[date]) -> None:
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        run_range(spark, ds.view, ds.job, start, END, RunOptions(namespace="bt_b", after_chunk=die, **opts))
    rest = run_range(spark, ds.view, ds.job, start, END, RunOptions(namespace="bt_b", **opts))
    assert len(rest.skipped_days) == 7 and len(rest.computed_days) == 14
    assert _table_rows(spark, "bt_b", ds.name) == clean


STATE_COLUMNS = ("cutoff_ms", "fingerprint", "tiles_snapshot_id")


def _daily_runs_match_full_merges(spark: Any, catalog: Any, view: FeatureView, job: Any, ns: str,
                                  days: int, keep: int = 7) -> tuple[list, list[set]]:
    """History up to END - days (full serving), then one daily run per day to END, each served from the state of
    the day before: every state equals the full statement over the same tiles. Returns the last serving rows and
    the entities served each day. The state keeps the newest ``keep`` cut-offs."""
    opts = dict(namespace=ns, catalog=catalog, log=_quiet, serving_state_days=keep)
    first = run_range(spark, view, job, START, END - timedelta(days=days), RunOptions(**opts))
    assert first.serving_mode == "full"
    tables = T.ViewTables(ns, view.name, 1)
    entities: list[set] = []
    for k in range(days - 1, -1, -1):
        d = END - timedelta(days=k)
        daily = run_range(spark, view, job, d, d, RunOptions(**opts))
        assert daily.serving_mode == "incremental" and daily.computed_days == [d], (d, daily.serving_mode)
        T.read_table(spark, tables.tiles).createOrReplaceTempView("inc_tiles")
        want = [r.asDict(recursive=True) for r in spark.sql(job.serving_sql("inc_tiles", cutoff_ms(d))).collect()]
        state = spark.sql(f"SELECT * FROM {tables.state} WHERE cutoff_ms = {cutoff_ms(d)}").drop(*STATE_COLUMNS)
        got = [r.asDict(recursive=True) for r in state.collect()]
        key = lambda r: r["user_id"]  # noqa: E731
        assert sorted(got, key=key) == sorted(want, key=key), d
        assert len(got) == daily.serving_rows
        entities.append({r["user_id"] for r in got})
    cutoffs = [cutoff_ms(END - timedelta(days=k)) for k in range(days, -1, -1)]
    kept = sorted(r[0] for r in spark.sql(f"SELECT DISTINCT cutoff_ms FROM {tables.state}").collect())
    assert kept == cutoffs[-keep:]
    return _rows(spark, tables.serving, "user_id"), entities


def test_daily_runs_serve_from_the_previous_state_exactly_as_a_full_merge(
        spark: Any, iceberg_catalog: Any, ds: Dataset, backfilled: Any) -> None:
    served, _ = _daily_runs_match_full_merges(spark, iceberg_catalog, ds.view, ds.job, "bt_inc", days=4)
    whole = _rows(spark, T.ViewTables("features", ds.name, 1).serving, "user_id")
    assert whole and [r for r in served if r["cutoff_ms"] == C] == [r for r in whole if r["cutoff_ms"] == C]  # the same rows (and run id) as the one backfill of the whole history
    opts = dict(namespace="bt_inc", catalog=iceberg_catalog, log=_quiet)
    again = run_range(spark, ds.view, ds.job, END - timedelta(days=1), END, RunOptions(rerun=True, **opts))
    assert again.serving_mode == "full"  # an earlier day recomputed: its tiles may differ from the state's
    assert run_range(spark, ds.view, ds.job, END, END, RunOptions(rerun=True, **opts)).serving_mode == "full"
    # (the tiles changed since the state of the day before was built)


def test_daily_runs_without_a_lifetime_window_drop_and_add_entities_as_a_full_merge(
        spark: Any, iceberg_catalog: Any) -> None:
    """Sparse users (40 users, 200 events) and windows of 2 to 5 days: entities leave and re-enter the serving
    rows from one day to the next."""
    uid = uuid.uuid4().hex[:8]
    source = make_view(f"short_{uid}", f"raw.short_{uid}").source
    view = FeatureView(name=f"short_{uid}", entity=USER, source=source, version=1, features=[
        Aggregation("n_2d", Agg.COUNT, None, Window.days(2)),
        Aggregation("amt_3d", Agg.SUM, "amount", Window.days(3), where=Where("status", "==", "completed")),
        Aggregation("avg_5d", Agg.AVG, "amount", Window.days(5)),
        Aggregation("max_5d", Agg.MAX, "amount", Window.days(5)),
        Aggregation("last_3d", Agg.LAST, "status", Window.days(3)),
    ])
    job = compile_feature_view(view, FIELD_TYPES)
    write_raw(spark, iceberg_catalog, view, make_records(23, day_start_ms(END), users=40, n=200))
    _, entities = _daily_runs_match_full_merges(spark, iceberg_catalog, view, job, "bt_short", days=6, keep=3)
    assert any(a - b for a, b in zip(entities, entities[1:])), entities  # someone left
    assert any(b - a for a, b in zip(entities, entities[1:])), entities  # someone (re-)entered


def test_sql_serving_encoding_is_byte_identical_to_the_python_encoder(spark: Any) -> None:
    """Spark built-ins encode serving rows exactly as ``layout``/``laws`` do (JSON escapes, key escapes, nulls,
    structs, booleans, int64 edges); a float window is left to the Python encoder."""
    from batch_jobs.codec import encode_serving_sql, encode_window

    src = EventSource(name="s_enc", schema="orders", table="raw.enc", topic="t_enc", partition_key="user_id")
    types = {**FIELD_TYPES, "flag": "bool", "price": "float64"}
    weird = ["plain", 'q"uote', "back\\slash", "nl\nx\r\t\b\f", "".join(map(chr, range(32))) + "\x7f\u2028é😀",
             "\\u001A", "a:b{c}d,e%f%25", ""]
    for entity, keys in ((USER, weird), (Entity("acct", {"acct": "int64"}), [-2**63, 2**63 - 1, 0, 7])):
        key = entity.key_names[0]
        view = FeatureView(name="enc", entity=entity, source=src, features=[
            Aggregation("n", Agg.COUNT, None, Window.days(30)), Aggregation("s", Agg.SUM, "amount", Window.days(30)),
            Aggregation("avg", Agg.AVG, "amount", Window.days(30)), Aggregation("mx", Agg.MAX, "amount", Window.days(3)),
            Aggregation("mn", Agg.MIN, "event_time", Window.days(3)), Aggregation("last", Agg.LAST, "status", Window.lifetime()),
            Aggregation("lastb", Agg.LAST, "flag", Window.lifetime())])
        job = compile_feature_view(view, {**types, key: entity.join_keys[0][1]})
        ktype = "string" if key == "user_id" else "bigint"
        tiles = []
        for i, k in enumerate(keys):
            status = weird[i % len(weird)]
            for back in (1, 2, 10, 40):
                tiles.append((k, END - timedelta(days=back - 1), i, -2**60 + i, (i * 7, i), None if i % 2 else 2**63 - 1,
                              -i, None if i == 3 else (i, 2, 2**40, status), (5, 0, 1, bool(i % 2))))
        spark.createDataFrame(tiles, f"{key} {ktype}, day date, n bigint, s bigint, avg struct<sum:bigint,count:bigint>, "
                              "mx bigint, mn bigint, last struct<ts:bigint,partition:int,offset:bigint,value:string>, "
                              "lastb struct<ts:bigint,partition:int,offset:bigint,value:boolean>").createOrReplaceTempView("enc_tiles")
        structured = spark.sql(job.serving_sql("enc_tiles", C))
        encoded = {r[key]: r for r in encode_serving_sql(structured, entity, job.key_names, job.windows, C, "r").collect()}
        assert len(encoded) == len(keys)
        for row in structured.collect():
            d = row.asDict(recursive=True)
            got = encoded[d[key]]
            assert got["entity_tag"] == layout.encode_entity_key(entity, (d[key],))
            assert (got["cutoff_ms"], got["run_id"]) == (C, "r")
            for w in job.windows:
                assert got[w.column] == encode_window(d, w), (d[key], w.field)
    floats = FeatureView(name="encf", entity=USER, source=src, features=[Aggregation("p", Agg.MAX, "price", Window.days(3))])
    fjob = compile_feature_view(floats, types)
    spark.createDataFrame([("u", END, 1.5)], "user_id string, day date, p double").createOrReplaceTempView("encf_tiles")
    assert encode_serving_sql(spark.sql(fjob.serving_sql("encf_tiles", C)), USER, ("user_id",), fjob.windows, C, "r") is None


def test_bad_input_is_refused_before_anything_is_written(spark: Any, iceberg_catalog: Any) -> None:
    from batch_jobs.runner import parse_day

    with pytest.raises(T.BatchError, match="2024-02-30"):
        parse_day("2024-02-30")
    uid = uuid.uuid4().hex[:8]
    view = make_view(f"bad_{uid}", f"raw.bad_{uid}")
    job = compile_feature_view(view, FIELD_TYPES)
    with pytest.raises(T.NoRawDataError, match="does not exist"):
        run_range(spark, view, job, END, END, RunOptions(catalog=iceberg_catalog, log=_quiet))
    with pytest.raises(T.BatchError, match="after"):
        run_range(spark, view, job, END, END - timedelta(days=1), RunOptions(catalog=iceberg_catalog, log=_quiet))
    spark.sql(f"CREATE TABLE skewless.raw.bad_{uid} (event_id STRING, user_id STRING, amount STRING, status STRING, "
              "event_time TIMESTAMP, _kafka_partition INT, _offset BIGINT, _kafka_ts TIMESTAMP) USING iceberg")
    with pytest.raises(T.RawSchemaError, match="'amount' is string"):
        run_range(spark, view, job, END, END, RunOptions(catalog=iceberg_catalog, log=_quiet))
    assert not spark.catalog.tableExists(T.ViewTables("features", view.name, 1).tiles)


def test_archive_gate_late_events_and_empty_ranges(spark: Any, iceberg_catalog: Any) -> None:
    uid = uuid.uuid4().hex[:8]
    view = make_view(f"gate_{uid}", f"raw.gate_{uid}")
    job = compile_feature_view(view, FIELD_TYPES)
    records = make_records(11, day_start_ms(END), users=3, n=60)
    records = [r for r in records if r["timestamp_ms"] < C - MS_PER_DAY]  # the archive is a day behind
    write_raw(spark, iceberg_catalog, view, records)
    tables = T.ViewTables("features", view.name, 1)
    with pytest.raises(T.ArchiveNotCompleteError, match="complete until"):
        run_range(spark, view, job, END, END, RunOptions(catalog=iceberg_catalog, log=_quiet))
    assert not spark.catalog.tableExists(tables.tiles)
    d1, d2 = END - timedelta(days=3), END - timedelta(days=1)
    run_range(spark, view, job, d1, d2, RunOptions(catalog=iceberg_catalog, log=_quiet, force=True))
    # a late event for d1 arrives with the next day's records; the run of END recomputes d1 as well
    late_ms = day_start_ms(d1) + 5 * MS_PER_HOUR
    late = {"partition": 0, "offset": 10_000, "timestamp_ms": C - MS_PER_HOUR,
            "value": json.dumps({"event_id": "late-1", "user_id": "u0", "order_id": "o", "amount": 5,
                                                "currency": "EUR", "status": "completed",
                                                "event_time": iso_ms(late_ms)})}
    write_raw(spark, iceberg_catalog, view, [late], complete_until_ms=C)
    report = run_range(spark, view, job, END, END, RunOptions(catalog=iceberg_catalog, log=_quiet))
    assert report.late_days == [d1] and set(report.computed_days) == {d1, END}
    assert report.serving_mode == "full"  # d1's tiles changed: the state of the day before no longer holds
    events = offline_events(records + [late], view)
    want = sum(e["amount"] for e in events if e["status"] == "completed" and floor_ms(e["event_time"], MS_PER_DAY)
               == day_start_ms(d1) and e["user_id"] == "u0")
    got = spark.sql(f"SELECT ltv_365d FROM {tables.tiles} WHERE day = DATE'{d1}' AND user_id = 'u0'").collect()
    assert got[0][0] == want
    empty = run_range(spark, view, job, END - timedelta(days=900), END - timedelta(days=899),
                      RunOptions(catalog=iceberg_catalog, log=_quiet, write_serving=False))
    assert any("no events" in w for w in empty.warnings) and empty.tile_rows == 0, (empty.warnings, empty.tile_rows, empty.computed_days)


def test_snapshot_view_materializes_its_latest_rows_with_ttl(spark: Any, iceberg_catalog: Any, redis_client: Any) -> None:
    from batch_jobs.materialize import materialize_snapshot_view
    from skewless.core.dsl import Field, SnapshotView, TableSource
    from skewless.core.timeutil import from_epoch_ms

    uid = uuid.uuid4().hex[:8]
    table = f"crm.profile_{uid}"
    spark.sql("CREATE NAMESPACE IF NOT EXISTS skewless.crm")
    spark.sql(f"CREATE TABLE skewless.{table} (user_id STRING, credit_score BIGINT, segment STRING, "
              "event_time TIMESTAMP, created_at TIMESTAMP) USING iceberg")
    rows = [("u1", 700, "new", C - 30 * MS_PER_HOUR, C - 29 * MS_PER_HOUR),
            ("u1", 710, "vip", C - 10 * MS_PER_HOUR, C - 9 * MS_PER_HOUR),
            ("u1", 999, "vip", C - 10 * MS_PER_HOUR, C + MS_PER_HOUR),  # created after the cut-off: not yet known
            ("u2", 650, None, C - 3 * MS_PER_DAY, C - 3 * MS_PER_DAY),  # older than the ttl: kept to say `expired`
            ("u3", 600, "new", C + MS_PER_HOUR, C + MS_PER_HOUR)]  # after the cut-off
    spark.createDataFrame([(u, s, g, from_epoch_ms(t), from_epoch_ms(c)) for u, s, g, t, c in rows],
                          "user_id string, credit_score bigint, segment string, event_time timestamp, created_at timestamp"
                          ).writeTo(f"skewless.{table}").append()
    view = SnapshotView(f"prof_{uid}", make_view("x", "raw.x").entity,
                        TableSource(f"src_{uid}", table, "customer_profile", created_at="created_at"),
                        [Field("credit_score", "int64"), Field("segment", "string")], ttl=timedelta(days=1))
    redis_client.set(layout.epoch_key("bt"), "E1")
    report = materialize_snapshot_view(iceberg_catalog, redis_client, view, END, project="bt")
    assert report.rows == 2 and report.written == 2
    row = redis_client.hget(layout.entity_key("bt", view, ("u1",)), layout.SNAPSHOT_FIELD)
    ts, created, epoch, values = layout.decode_snapshot(view, row)
    assert (ts, created, epoch, values) == (C - 10 * MS_PER_HOUR, C - 9 * MS_PER_HOUR, "E1",
                                             {"credit_score": 710, "segment": "vip"})
    assert redis_client.pttl(layout.entity_key("bt", view, ("u2",))) > 0
    assert not redis_client.exists(layout.entity_key("bt", view, ("u3",)))
    stale = report.written
    report = materialize_snapshot_view(iceberg_catalog, redis_client, view, END - timedelta(days=1), project="bt")
    assert report.written == 0 and report.skipped_newer == stale  # an older day never replaces a newer one (fenced)


@pytest.mark.slow
def test_spark_submit_backfill_on_a_standalone_cluster(tmp_path: Any) -> None:
    """``skewless backfill --master spark://127.0.0.1:<port>`` (spark-submit) against a real standalone master and
    worker started from the pyspark wheel, on loopback; raw data written by PyIceberg into a temporary catalog."""
    import os
    import subprocess
    import sys
    import time as _time
    from pathlib import Path

    import pyarrow as pa

    from skewless.offline.archive_progress import OFFSETS_PROP, PROGRESS_PROP
    from skewless.archive.tables import ensure_tables
    from skewless.core.repo import load_repository
    from skewless.core.schemas import load_schema
    from skewless.engines.iceberg_catalog import load_catalog
    from skewless.stack.base import free_port

    repo = load_repository("feature_defs")
    view = next(v for v in repo.views if v.name == "user_order_stats")
    catalog = load_catalog(catalog_db=tmp_path / "catalog.db", warehouse=tmp_path / "warehouse")
    raw, _ = ensure_tables(catalog, view.source, load_schema("orders"))
    records = make_records(5, day_start_ms(END), users=5, n=200)
    rows = []
    for r in records:
        p = json.loads(r["value"])
        rows.append({**p, "event_time": from_epoch_ms(_ms(p["event_time"])), "_kafka_partition": r["partition"],
                     "_offset": r["offset"], "_kafka_ts": from_epoch_ms(r["timestamp_ms"]),
                     "_ingested_at": from_epoch_ms(r["timestamp_ms"])})
    raw.append(pa.Table.from_pylist(rows, schema=raw.schema().as_arrow()))
    with raw.transaction() as tx:
        tx.set_properties({OFFSETS_PROP: '{"0": 1}', PROGRESS_PROP: json.dumps({"complete_until_ms": C + 1})})

    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", SKEWLESS_CATALOG_DB=str(tmp_path / "catalog.db"),
               SKEWLESS_WAREHOUSE=str(tmp_path / "warehouse"), PYSPARK_PYTHON=sys.executable)
    port = free_port()
    logs = {n: open(tmp_path / f"{n}.log", "w") for n in ("master", "worker")}
    master = subprocess.Popen([str(bin_dir / "spark-class"), "org.apache.spark.deploy.master.Master", "--host",
                               "127.0.0.1", "--port", str(port), "--webui-port", str(free_port())],
                              stdout=logs["master"], stderr=subprocess.STDOUT, env=env)
    worker = None
    try:
        deadline = _time.monotonic() + 180
        while "leader" not in (tmp_path / "master.log").read_text() and _time.monotonic() < deadline:
            _time.sleep(1)
        worker = subprocess.Popen([str(bin_dir / "spark-class"), "org.apache.spark.deploy.worker.Worker",
                                   f"spark://127.0.0.1:{port}", "--host", "127.0.0.1", "--cores", "2", "--memory", "2g",
                                   "--webui-port", str(free_port()), "--work-dir", str(tmp_path / "work")],
                                  stdout=logs["worker"], stderr=subprocess.STDOUT, env=env)
        while "Successfully registered" not in (tmp_path / "worker.log").read_text() and _time.monotonic() < deadline:
            _time.sleep(1)
        assert "Successfully registered" in (tmp_path / "worker.log").read_text(), (tmp_path / "worker.log").read_text()
        start = END - timedelta(days=6)
        out = subprocess.run([str(bin_dir / "skewless"), "backfill", "--view", "user_order_stats", "--start",
                              str(start), "--end", str(END), "--master", f"spark://127.0.0.1:{port}",
                              "--driver-memory", "1g"], env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert f"on spark://127.0.0.1:{port}" in out.stdout
        assert sum(line.startswith("user_order_stats v1 2") and "tile rows" in line for line in out.stdout.splitlines()) == 7
        served = catalog.load_table("features.user_order_stats_v1_serving").scan().to_arrow()
        assert served.num_rows == len({e["user_id"] for e in offline_events(records, view) if e["event_time"] < C})
    finally:
        for proc in (worker, master):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for f in logs.values():
            f.close()
