"""Smoke tests of the engine wiring: Kafka -> PyFlink -> Redis, and Spark <-> Iceberg <-> PyIceberg."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import Any, Callable

import pytest

pytestmark = pytest.mark.integration

EVENTS = [
    {"user_id": "u1", "amount": 3, "ts": 1_700_000_000_000},
    {"user_id": "u2", "amount": 5, "ts": 1_700_000_001_000},
    {"user_id": "u1", "amount": 4, "ts": 1_700_000_002_000},
    {"user_id": "u3", "amount": 1, "ts": 1_700_000_003_000},
    {"user_id": "u2", "amount": 2, "ts": 1_700_000_004_000},
    {"user_id": "u1", "amount": 10, "ts": 1_700_000_005_000},
]


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _produce(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for e in events:
        producer.produce(topic, key=e["user_id"].encode(), value=json.dumps(e).encode())
    assert producer.flush(60) == 0, "not every test event reached Kafka"


def test_flink_kafka_to_redis_via_python_changelog(
    flink_stream_env: tuple[Any, Any],
    kafka_bootstrap: str,
    kafka_topic: Callable[..., str],
    redis_url: str,
    redis_client: Any,
) -> None:
    """Kafka (JSON, earliest, bounded at the latest offset) -> SQL aggregate -> changelog -> Python -> Redis."""
    from pyflink.common import Types
    from pyflink.common.types import Row, RowKind
    from pyflink.datastream.functions import FlatMapFunction, RuntimeContext

    env, t_env = flink_stream_env
    topic = kafka_topic(partitions=1, prefix="smoke-engines")
    _produce(kafka_bootstrap, topic, EVENTS)
    prefix = f"smoke:{uuid.uuid4().hex[:8]}:"
    src = f"src_{uuid.uuid4().hex[:8]}"
    t_env.execute_sql(
        f"""CREATE TEMPORARY TABLE {src} (user_id STRING, amount BIGINT, ts BIGINT) WITH (
            'connector' = 'kafka', 'topic' = '{topic}', 'properties.bootstrap.servers' = '{kafka_bootstrap}',
            'properties.group.id' = 'smoke-{topic}', 'scan.startup.mode' = 'earliest-offset',
            'scan.bounded.mode' = 'latest-offset', 'format' = 'json')"""
    )
    totals = t_env.sql_query(
        f"SELECT user_id, SUM(amount) AS total, COUNT(*) AS n, MAX(ts) AS last_ts FROM {src} GROUP BY user_id"
    )

    class RedisChangelogWriter(FlatMapFunction):
        """Applies the changelog to Redis hashes: +I/+U write, -D delete, -U ignored (the +U follows)."""

        def __init__(self, url: str, key_prefix: str) -> None:
            self.url, self.key_prefix = url, key_prefix

        def open(self, runtime_context: RuntimeContext) -> None:
            import redis

            self.client = redis.Redis.from_url(self.url)

        def flat_map(self, row: Row):  # type: ignore[override]
            key = self.key_prefix + row[0]
            kind = row.get_row_kind()
            if kind in (RowKind.INSERT, RowKind.UPDATE_AFTER):
                self.client.hset(key, mapping={"total": row[1], "n": row[2], "last_ts": row[3]})
            elif kind == RowKind.DELETE:
                self.client.delete(key)
            return iter(())

        def close(self) -> None:
            self.client.close()

    t0 = time.monotonic()
    changelog = t_env.to_changelog_stream(totals)
    changelog.flat_map(RedisChangelogWriter(redis_url, prefix), output_type=Types.STRING()).print()
    env.execute("smoke-kafka-to-redis")
    print(f"\nflink MiniCluster job (Kafka -> Redis) took {time.monotonic() - t0:.1f} s")

    keys = sorted(_text(k) for k in redis_client.keys(prefix + "*"))
    got = {k.removeprefix(prefix): {_text(f): _text(v) for f, v in redis_client.hgetall(k).items()} for k in keys}
    assert got == {
        "u1": {"total": "17", "n": "3", "last_ts": "1700000005000"},
        "u2": {"total": "7", "n": "2", "last_ts": "1700000004000"},
        "u3": {"total": "1", "n": "1", "last_ts": "1700000003000"},
    }
    redis_client.delete(*keys)


def test_spark_writes_iceberg_pyiceberg_reads(spark: Any, iceberg_catalog: Any) -> None:
    from skewless.config import ICEBERG_CATALOG_NAME as CAT

    spark.sql(f"CREATE NAMESPACE IF NOT EXISTS {CAT}.smoke")
    spark.sql(f"CREATE TABLE {CAT}.smoke.from_spark (entity STRING, value DOUBLE, n BIGINT, event_time TIMESTAMP) USING iceberg")
    spark.sql(
        f"""INSERT INTO {CAT}.smoke.from_spark VALUES
            ('a', 1.5, 1, TIMESTAMP '2024-03-01 00:00:00'),
            ('b', -2.25, 20, TIMESTAMP '2024-03-01 23:59:59.123456')"""
    )
    table = iceberg_catalog.load_table("smoke.from_spark")
    rows = sorted(table.scan().to_arrow().to_pylist(), key=lambda r: r["entity"])
    utc = dt.timezone.utc
    assert rows == [
        {"entity": "a", "value": 1.5, "n": 1, "event_time": dt.datetime(2024, 3, 1, 0, 0, 0, tzinfo=utc)},
        {"entity": "b", "value": -2.25, "n": 20, "event_time": dt.datetime(2024, 3, 1, 23, 59, 59, 123456, tzinfo=utc)},
    ]


def test_pyiceberg_writes_spark_reads(spark: Any, iceberg_catalog: Any) -> None:
    import pyarrow as pa
    from pyiceberg.schema import Schema
    from pyiceberg.types import DoubleType, LongType, NestedField, StringType, TimestampType

    from skewless.config import ICEBERG_CATALOG_NAME as CAT

    if ("smoke",) not in iceberg_catalog.list_namespaces():
        iceberg_catalog.create_namespace("smoke")
    schema = Schema(
        NestedField(1, "entity", StringType(), required=False),
        NestedField(2, "value", DoubleType(), required=False),
        NestedField(3, "n", LongType(), required=False),
        NestedField(4, "event_time", TimestampType(), required=False),
    )
    table = iceberg_catalog.create_table("smoke.from_pyiceberg", schema=schema)
    table.append(
        pa.table(
            {
                "entity": pa.array(["x", "y", None], pa.string()),
                "value": pa.array([0.1, 2.0, 3.5], pa.float64()),
                "n": pa.array([7, None, 9], pa.int64()),
                "event_time": pa.array(
                    [dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2, 3, 4, 5), dt.datetime(2024, 2, 29, 12)], pa.timestamp("us")
                ),
            }
        )
    )
    got = [
        r.asDict()
        for r in spark.sql(
            f"SELECT entity, value, n, CAST(event_time AS STRING) AS t FROM {CAT}.smoke.from_pyiceberg ORDER BY value"
        ).collect()
    ]
    assert got == [
        {"entity": "x", "value": 0.1, "n": 7, "t": "2024-01-01 00:00:00"},
        {"entity": "y", "value": 2.0, "n": None, "t": "2024-01-02 03:04:05"},
        {"entity": None, "value": 3.5, "n": 9, "t": "2024-02-29 12:00:00"},
    ]
    assert spark.sql(f"SELECT count(*) AS c FROM {CAT}.smoke.from_pyiceberg.snapshots").first()["c"] == 1
