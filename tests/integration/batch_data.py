"""Seeded raw tables for the batch tests: Kafka-like records (skew, duplicates, late and future events) written
to an Iceberg raw table with the archive's layout, plus the oracle's offline event set of the same records."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from typing import Any

from skewless.core.admission import admit
from skewless.core.dsl import (Agg, Aggregation, DaysSince, Derived, Entity, EventSource, FeatureView, Ref, Where,
                               Window)
from skewless.core.timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE, from_epoch_ms

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


def iso(ms: int) -> str:
    return from_epoch_ms(ms).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def make_records(seed: int, end_day_ms: int, users: int = 8, n: int = 500) -> list[dict[str, Any]]:
    """Kafka records ``{partition, offset, timestamp_ms, value}`` of order events ending on day ``end_day_ms``."""
    rng = random.Random(seed)
    cutoff = end_day_ms + MS_PER_DAY
    raw: list[tuple[int, int, dict[str, Any]]] = []  # (partition, kafka_ts, payload)

    def add(user: int, ts: int, kafka_ts: int | None = None, event_id: str | None = None,
            amount: int | None = None, status: str | None = None) -> dict[str, Any]:
        payload = {"event_id": event_id or f"e{len(raw)}", "user_id": f"u{user}", "order_id": f"o{rng.randrange(10**6)}",
                   "amount": amount if amount is not None else rng.choice([0, 1, 99, 1250, 10**12, 2**40 + 7]),
                   "currency": "EUR", "status": status or rng.choice(STATUSES), "event_time": iso(ts)}
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

    from skewless.archive.progress import OFFSETS_PROP, PROGRESS_PROP
    from skewless.archive.tables import ensure_tables
    from skewless.core.schemas import load_schema

    ensure_tables(catalog, view.source, load_schema("orders"))
    table = "skewless." + view.source.table
    schema = StructType([StructField(n, t) for n, t in [
        ("event_id", StringType()), ("user_id", StringType()), ("order_id", StringType()), ("amount", LongType()),
        ("currency", StringType()), ("status", StringType()), ("event_time", TimestampType()),
        ("_partition", IntegerType()), ("_offset", LongType()), ("_kafka_ts", TimestampType()),
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
