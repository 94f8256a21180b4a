"""The job's Deduplicate (Java ``DedupFunction``, state bounded by event time) on the real Flink job: copies inside
and outside the lateness bound, a quiet partition receiving a copy after another partition moved hours ahead,
exact per-partition ``duplicate`` counts and live ``dedup_entries`` in the progress hash, values equal to the oracle."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from skewless.core import admission, layout
from skewless.core.repo import load_repository
from skewless.core.schemas import validator
from skewless.core.timeutil import MS_PER_HOUR, MS_PER_MINUTE, td_ms
from skewless.producer import GeneratedRecord
from skewless.producer.kafka_producer import produce_records
from streaming_jobs.udf import deduplicate
from tests.integration.test_streaming import (VIEW, assert_last_hour_equals_oracle, duplicates_per_partition, read_topic,
                                             run_bounded_job)

pytestmark = pytest.mark.integration


def _record(seq: int, partition: int, eid: str, ts: int, user: str, amount: int) -> GeneratedRecord:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts // 1000)) + f".{ts % 1000:03d}Z"
    value = json.dumps({"event_id": eid, "user_id": user, "order_id": f"o-{eid}", "amount": amount, "currency": "EUR",
                        "status": "placed", "event_time": stamp}, separators=(",", ":")).encode()
    return GeneratedRecord(seq, "clean", user.encode(), value, ts + 1000, partition, eid)


def _orders(now: int) -> list[GeneratedRecord]:
    """Partition 1: an order every 5 min for 12 h (copies 25 min and 100 min behind its max, and one at the end);
    partition 0: two orders 12 h ago, a copy of the first (duplicate), then one 30 min ago and the copy again (late)."""
    base = now // MS_PER_MINUTE * MS_PER_MINUTE - 12 * MS_PER_HOUR
    p1 = [(f"e1-{i}", base + i * 5 * MS_PER_MINUTE, f"u{i % 4}", 100 + i) for i in range(144)]
    rows: list[tuple[int, str, int, str, int]] = []
    for i, row in enumerate(p1):
        rows.append((1, *row))
        if i == 60:
            rows += [(1, *p1[55]), (1, *p1[40])]  # inside the bound: duplicate; 100 min behind: late
    rows.append((1, *p1[140]))
    q, r = ("q", base - MS_PER_MINUTE, "u0", 7), ("r", base + MS_PER_MINUTE, "u1", 9)
    rows += [(0, *q), (0, *r), (0, *q), (0, "s", now - 30 * MS_PER_MINUTE, "u2", 11), (0, *q)]
    return [_record(i, p, eid, ts, user, amount) for i, (p, eid, ts, user, amount) in enumerate(rows)]


def test_bounded_dedup_state_counts_duplicates_exactly(
    flink_stream_env: Any, kafka_bootstrap: str, kafka_topic: Callable[..., str], redis_url: str, redis_client: Any,
    tmp_path: Path,
) -> None:
    repo = load_repository()
    view = repo.view(VIEW)
    source = view.source
    lateness = td_ms(source.allowed_lateness)
    assert lateness == MS_PER_HOUR  # the copies above are placed for L = 1 h
    topic = kafka_topic(partitions=2, prefix="orders-dedup")
    records = _orders(int(time.time() * 1000))
    produce_records(kafka_bootstrap, topic, records)
    raw = read_topic(kafka_bootstrap, topic, len(records))
    result = admission.admit(raw, source, validator(source.schema), key_fields=view.entity.key_names)
    dups = duplicates_per_partition(result, (0, 1))
    late = {p: sum(1 for d in result.dead_letters if d.partition == p and d.reason == "late") for p in (0, 1)}
    assert dups == {0: 1, 1: 2} and late == {0: 1, 1: 1}

    project = f"d{uuid.uuid4().hex[:8]}"
    run_bounded_job(kafka_bootstrap, topic, redis_url, project, tmp_path / "ckpt")

    progress = {int(k.decode()[2:]): json.loads(v)
                for k, v in redis_client.hgetall(layout.progress_key(project, source.name)).items()}
    assert {p: progress[p]["duplicate"] for p in (0, 1)} == dups
    assert {p: progress[p]["late"] for p in (0, 1)} == late
    # live entries: what the logic class keeps for the same rows, far below what the partition admitted
    ordered = sorted((r["partition"], r["offset"], json.loads(r["value"])) for r in raw)
    logic = deduplicate(lateness, [(p, v["event_id"], admission.parse_event_time(v["event_time"])) for p, _, v in ordered])
    final = {p: live for (p, _, _), (_, live) in zip(ordered, logic)}
    assert {p: progress[p]["dedup_entries"] for p in (0, 1)} == final
    admitted = {p: sum(1 for e in result.admitted if e["_kafka_partition"] == p) for p in (0, 1)}
    assert final[0] == 1 and 13 <= final[1] <= 25 and admitted[1] == 144  # within [M - 2L, M] of 5-min orders

    assert_last_hour_equals_oracle(redis_client, project, repo, list(result.admitted))
