"""Admission of Kafka records: malformed, future, late, duplicate, and the offline set (docs/semantics.md)."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skewless.core.admission import (
    FUTURE,
    LATE,
    MALFORMED,
    MalformedError,
    admit,
    dedupe_batch_only,
    parse_event_time,
)
from skewless.core.dsl import EventSource

MIN = 60_000
SRC = EventSource(
    "orders", schema="orders", table="orders", topic="orders", partition_key="user_id",
    allowed_lateness=timedelta(minutes=10), clock_skew_tolerance=timedelta(minutes=5),
)


def rec(offset: int, ts, *, eid=None, kafka_ts=None, partition=0, **extra) -> dict:
    payload = {"event_id": eid if eid is not None else f"e{partition}-{offset}", "event_time": ts, "user_id": "u1"}
    payload.update(extra)
    kts = kafka_ts if kafka_ts is not None else (ts if isinstance(ts, int) else 0)
    return {"partition": partition, "offset": offset, "timestamp_ms": kts, "value": json.dumps(payload).encode()}


def offsets(events) -> list[int]:
    return [e["_offset"] for e in events]


# --- event time formats ----------------------------------------------------------------------------


def test_event_time_formats() -> None:
    assert parse_event_time(1_700_000_000_123) == 1_700_000_000_123
    assert parse_event_time("2024-01-01T00:00:00Z") == 1_704_067_200_000
    assert parse_event_time("2024-01-01T01:00:00+01:00") == 1_704_067_200_000
    assert parse_event_time("2023-12-31T19:00:00-05:00") == 1_704_067_200_000
    assert parse_event_time("2024-01-01T00:00:00.1239Z") == 1_704_067_200_123  # floored to the ms
    assert parse_event_time("2024-01-01T00:00:00.5Z") == 1_704_067_200_500
    assert parse_event_time("1970-01-01T00:00:00Z") == 0


@pytest.mark.parametrize("bad", [
    "2024-01-01T00:00:00",  # no zone
    "2024-01-01 00:00:00Z",
    "2024-02-30T00:00:00Z",
    "2024-01-01T00:00:60Z",
    "2024-01-01T00:00:00+24:00",
    "2024-01-01t00:00:00z",
    1.7e12,
    True,
    None,
    -1,
    "1969-12-31T23:59:59Z",
])
def test_event_time_rejects(bad) -> None:
    with pytest.raises(MalformedError):
        parse_event_time(bad)


# --- malformed ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    b"\xff\xfe",
    b"not json",
    b"[1, 2]",
    b'{"event_id": "a", "event_id": "b", "event_time": 5, "user_id": "u"}',
    b'{"event_id": "a", "event_time": 5, "user_id": "u", "x": NaN}',
    b'{"event_id": "a", "event_time": 5, "user_id": "u", "x": 9223372036854775808}',
    b'{"event_time": 5, "user_id": "u"}',
    b'{"event_id": null, "event_time": 5, "user_id": "u"}',
    b'{"event_id": 1.5, "event_time": 5, "user_id": "u"}',
    b'{"event_id": "a", "user_id": "u"}',
    b'{"event_id": "a", "event_time": "yesterday", "user_id": "u"}',
    b'{"event_id": "a", "event_time": 5}',
    b'{"event_id": "a", "event_time": 5, "user_id": true}',
])
def test_malformed_records_are_dead_lettered(value: bytes) -> None:
    result = admit([{"partition": 0, "offset": 0, "timestamp_ms": 5, "value": value}], SRC)
    assert [d.reason for d in result.dead_letters] == [MALFORMED]
    assert result.admitted == () and result.offline == ()


def test_schema_violation_is_malformed_and_key_fields_required() -> None:
    result = admit([rec(0, 1000, amount="x"), rec(1, 1000)], SRC,
                   validate=lambda p: "amount must be integer" if isinstance(p.get("amount"), str) else None)
    assert [(d.offset, d.reason) for d in result.dead_letters] == [(0, MALFORMED)]
    assert "amount must be integer" in result.dead_letters[0].detail
    result = admit([rec(0, 1000)], SRC, key_fields=["merchant_id"])
    assert result.dead_letters[0].reason == MALFORMED


def test_normalised_event() -> None:
    result = admit([rec(3, "1970-01-01T00:00:01.000Z", kafka_ts=1000, partition=2, price="12.50")], SRC,
                   decimal_fields=["price"])
    (event,) = result.admitted
    assert event == {"event_id": "e2-3", "event_time": 1000, "user_id": "u1", "price": Decimal("12.50"),
                     "_kafka_partition": 2, "_offset": 3}


# --- future --------------------------------------------------------------------------------------------


def test_future_boundary_is_inclusive_of_tolerance() -> None:
    records = [rec(0, 100 * MIN, kafka_ts=95 * MIN), rec(1, 100 * MIN + 1, kafka_ts=95 * MIN)]
    result = admit(records, SRC)
    assert offsets(result.admitted) == [0]
    assert [(d.offset, d.reason) for d in result.dead_letters] == [(1, FUTURE)]
    assert offsets(result.offline) == [0]  # future events are in neither path


# --- late ---------------------------------------------------------------------------------------------


def test_late_boundary_and_watermark_from_admitted_only() -> None:
    records = [
        rec(0, 100 * MIN),
        rec(1, 90 * MIN, kafka_ts=100 * MIN),  # exactly max - lateness: admitted
        rec(2, 90 * MIN - 1, kafka_ts=100 * MIN),  # 1 ms beyond: late
        rec(3, 200 * MIN, kafka_ts=100 * MIN),  # future: does not move the partition max
        rec(4, 95 * MIN, kafka_ts=100 * MIN),  # admitted (max still 100 min)
    ]
    result = admit(records, SRC)
    assert offsets(result.admitted) == [0, 1, 4]
    assert [(d.offset, d.reason) for d in result.dead_letters] == [(2, LATE), (3, FUTURE)]
    assert offsets(result.offline) == [0, 1, 2, 4]  # late included offline


def test_lateness_is_per_partition() -> None:
    records = [rec(0, 100 * MIN, partition=0), rec(0, 10 * MIN, partition=1, kafka_ts=100 * MIN)]
    assert len(admit(records, SRC).admitted) == 2


# --- duplicates ---------------------------------------------------------------------------------------


def test_duplicate_first_copy_wins_both_paths() -> None:
    records = [rec(0, 100 * MIN, eid="A", amount=1), rec(1, 100 * MIN, eid="A", amount=2)]
    result = admit(records, SRC)
    assert [e["amount"] for e in result.admitted] == [1]
    assert [e["amount"] for e in result.offline] == [1]
    assert offsets(result.duplicates) == [1]
    assert result.counts() == {"admitted": 1, "duplicate": 1, MALFORMED: 0, FUTURE: 0, LATE: 0}


def test_copy_beyond_lateness_is_late_not_duplicate() -> None:
    records = [rec(0, 100 * MIN, eid="A"), rec(1, 200 * MIN), rec(2, 100 * MIN, eid="A", kafka_ts=200 * MIN)]
    result = admit(records, SRC)
    assert offsets(result.admitted) == [0, 1]
    assert [(d.offset, d.reason) for d in result.dead_letters] == [(2, LATE)]
    assert result.duplicates == ()
    assert offsets(result.offline) == [0, 1]  # de-duplicated offline: the event counts once everywhere


def test_same_id_different_time_are_distinct_events() -> None:
    records = [rec(0, 100 * MIN, eid="A"), rec(1, 101 * MIN, eid="A")]
    assert offsets(admit(records, SRC).admitted) == [0, 1]


def test_string_and_int_ids_are_distinct() -> None:
    records = [rec(0, 100 * MIN, eid="1"), rec(1, 100 * MIN, eid=1)]
    assert offsets(admit(records, SRC).admitted) == [0, 1]


def test_copy_after_malformed_or_future_original_is_admitted() -> None:
    records = [rec(0, 100 * MIN, eid="A", kafka_ts=0), rec(1, 100 * MIN, eid="A", kafka_ts=100 * MIN)]
    result = admit(records, SRC)
    assert offsets(result.admitted) == [1] and offsets(result.offline) == [1]


def test_records_are_taken_in_partition_offset_order() -> None:
    records = [rec(1, 100 * MIN, eid="A", amount=2), rec(0, 100 * MIN, eid="A", amount=1)]
    assert [e["amount"] for e in admit(records, SRC).admitted] == [1]


def test_bad_input_is_an_error_not_a_dead_letter() -> None:
    with pytest.raises(ValueError, match="two records"):
        admit([rec(0, 1), rec(0, 2)], SRC)
    with pytest.raises(ValueError, match="timestamp_ms"):
        admit([{"partition": 0, "offset": 0, "value": b"{}"}], SRC)
    with pytest.raises(ValueError, match="batch-only"):
        admit([], EventSource("b", "b", "b"))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 40), st.integers(0, 4), st.integers(-3, 8)),
                max_size=30))
def test_online_is_offline_minus_late_and_each_event_once(spec) -> None:
    records = []
    for i, (partition, minute, eid, skew) in enumerate(spec):
        ts = minute * MIN
        records.append(rec(i, ts, eid=f"id{eid}", partition=partition, kafka_ts=ts - skew * MIN))
    result = admit(records, SRC)
    ident = lambda e: (e["_kafka_partition"], e["event_id"], e["event_time"])  # noqa: E731
    online = [ident(e) for e in result.admitted]
    offline = [ident(e) for e in result.offline]
    late = [ident(d.event) for d in result.dead_letters if d.reason == LATE]
    assert len(set(online)) == len(online) and len(set(offline)) == len(offline)
    assert set(online) <= set(offline)
    assert set(offline) - set(online) <= set(late)
    # admitted copies are the same records offline uses (first copy wins in both)
    admitted_pos = {(e["_kafka_partition"], e["_offset"]) for e in result.admitted}
    offline_pos = {(e["_kafka_partition"], e["_offset"]) for e in result.offline}
    assert admitted_pos <= offline_pos
    total = len(result.admitted) + len(result.dead_letters) + len(result.duplicates)
    assert total == len(records)


def test_batch_only_dedupe() -> None:
    src = EventSource("b", "b", "b")
    rows = [{"event_id": 2, "event_time": 5, "v": "x"}, {"event_id": 1, "event_time": 5, "v": "y"},
            {"event_id": 2, "event_time": 5, "v": "x"}]
    assert [r["event_id"] for r in dedupe_batch_only(rows, src)] == [1, 2]
