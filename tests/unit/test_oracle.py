"""The brute-force oracle against hand-computed values: each test mirrors a worked example of
docs/semantics.md (section named in the test's docstring); keep the two in step."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skewless.core import laws, oracle
from skewless.core.admission import admit
from skewless.core.dsl import (
    Agg,
    Aggregation,
    DaysSince,
    Derived,
    Entity,
    EventSource,
    FeatureView,
    Field,
    Ref,
    SnapshotView,
    TableSource,
    Where,
    Window,
)
from skewless.core.oracle import EXPIRED, PRESENT, feature_row, feature_value, snapshot_value, training_rows

MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
D0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def at(day: int, hh: int, mm: int = 0, ss: int = 0, ms: int = 0) -> int:
    return D0 + day * DAY + hh * HOUR + mm * MIN + ss * 1000 + ms


USER = Entity("user", {"user_id": "string"})
ORDERS = EventSource("orders", "orders", "orders", topic="orders", partition_key="user_id",
                     allowed_lateness=timedelta(minutes=10), clock_skew_tolerance=timedelta(minutes=5))
H1 = Window.hours(1)  # tile 5 minutes
VIEW = FeatureView("user_orders", USER, ORDERS, [
    Aggregation("n_1h", Agg.COUNT, None, H1),
    Aggregation("amount_1h", Agg.SUM, "amount", H1),
    Aggregation("avg_amount_1h", Agg.AVG, "amount", H1),
    Aggregation("min_amount_1h", Agg.MIN, "amount", H1),
    Aggregation("max_amount_1h", Agg.MAX, "amount", H1),
    Aggregation("last_status_1h", Agg.LAST, "status", H1),
    Aggregation("n_completed_1h", Agg.COUNT, None, H1, where=Where("status", "==", "completed")),
    Aggregation("n_lifetime", Agg.COUNT, None, Window.lifetime()),
    Aggregation("last_order_ts", Agg.LAST, "event_time", Window.lifetime()),
    Derived("avg_order_1h", Ref("amount_1h") / Ref("n_1h")),
    Derived("days_since_last_order", DaysSince(Ref("last_order_ts"))),
])

_offsets = iter(range(10**6))


def ev(ts: int, amount=None, status=None, user="u1", partition=0, offset=None, **extra) -> dict:
    e = {"event_id": f"id{ts}-{user}", "event_time": ts, "user_id": user, "amount": amount, "status": status,
         "_kafka_partition": partition, "_offset": next(_offsets) if offset is None else offset}
    e.update(extra)
    return e


def row(T: int, events, key=("u1",), **kw) -> dict:
    return feature_row(VIEW, events, key, T, **kw)


# --- windows -------------------------------------------------------------------------------------------


EX1 = [
    ev(at(0, 9, 4, 59, 999), 100, "completed"),
    ev(at(0, 9, 5), 200, "completed"),
    ev(at(0, 9, 6), 300, "cancelled"),
    ev(at(0, 10, 6, 59, 999), 400, "completed"),
    ev(at(0, 10, 7), 500, "completed"),
]


def test_example_window_edges() -> None:
    """Example "Window edges": T = 10:07 sees [09:05, 10:07); at T the event at T is out."""
    r = row(at(0, 10, 7), EX1)
    assert (r["n_1h"], r["amount_1h"], r["avg_amount_1h"]) == (3, 900, 300.0)
    assert (r["min_amount_1h"], r["max_amount_1h"], r["last_status_1h"], r["n_completed_1h"]) == (200, 400, "completed", 2)
    assert r["avg_order_1h"] == 300.0
    cols = ("n_1h", "amount_1h", "avg_amount_1h", "last_status_1h", "n_completed_1h")
    pick = lambda r: tuple(r[c] for c in cols)  # noqa: E731
    assert pick(row(at(0, 10, 5), EX1)) == (2, 500, 250.0, "cancelled", 1)  # tile-aligned T: [09:05, 10:05)
    assert pick(row(at(0, 10, 7, 0, 1), EX1)) == (4, 1400, 350.0, "completed", 3)  # 1 ms later 10:07 is in
    assert pick(row(at(0, 10, 10), EX1)) == (2, 900, 450.0, "completed", 2)  # [09:10, 10:10)


def test_example_lifetime_and_days_since() -> None:
    """Example "Lifetime and DaysSince"."""
    r = row(at(2, 9, 5), EX1)
    assert r["n_lifetime"] == 5 and r["last_order_ts"] == at(0, 10, 7)
    assert r["days_since_last_order"] == 1  # 1 day 22 h 58 min
    assert row(at(2, 10, 7), EX1)["days_since_last_order"] == 2
    assert row(at(0, 10, 7), EX1)["n_lifetime"] == 4


def test_example_empty_window() -> None:
    """Example "Empty window": nothing for u2 (or nothing in u1's window)."""
    expected = {"n_1h": 0, "amount_1h": 0, "avg_amount_1h": None, "min_amount_1h": None, "max_amount_1h": None,
                "last_status_1h": None, "n_completed_1h": 0, "n_lifetime": 0, "last_order_ts": None,
                "avg_order_1h": None, "days_since_last_order": None}
    assert row(at(0, 12), EX1, key=("u2",)) == expected
    r = row(at(0, 12), EX1)
    assert (r["n_1h"], r["amount_1h"], r["avg_amount_1h"], r["avg_order_1h"]) == (0, 0, None, None)
    assert r["days_since_last_order"] == 0


def test_example_nulls() -> None:
    """Example "Nulls": null inputs are skipped; COUNT(*) counts events; a null never passes a filter."""
    events = [ev(at(0, 10, 1), 10, "completed"), ev(at(0, 10, 2), None, "pending"), ev(at(0, 10, 3), 20, None)]
    r = row(at(0, 10, 30), events)
    assert (r["n_1h"], r["amount_1h"], r["avg_amount_1h"], r["min_amount_1h"], r["max_amount_1h"]) == (3, 30, 15.0, 10, 20)
    assert r["last_status_1h"] == "pending" and r["n_completed_1h"] == 1
    assert r["avg_order_1h"] == 10.0


def test_example_last_tie() -> None:
    """Example "LAST tie": equal ts -> the later (partition, offset) wins."""
    events = [ev(at(0, 10), status="paid", offset=42), ev(at(0, 10), status="refunded", offset=41),
              ev(at(0, 10), status="shipped", offset=43, amount=None)]
    assert row(at(0, 10, 5), events)["last_status_1h"] == "shipped"
    events[2]["status"] = None
    assert row(at(0, 10, 5), events)["last_status_1h"] == "paid"


def test_batch_only_last_tie_by_event_id() -> None:
    src = EventSource("hist", "hist", "hist")
    view = FeatureView("v", USER, src, [Aggregation("last", Agg.LAST, "status", Window.days(30))])
    events = [{"event_id": "b", "event_time": at(0, 10), "user_id": "u1", "status": "B"},
              {"event_id": "a", "event_time": at(0, 10), "user_id": "u1", "status": "A"}]
    assert feature_value(view, "last", events, ("u1",), at(1, 0)) == "B"


def test_example_exact_numbers() -> None:
    """Example "Exact numbers": int sums exact; AVG once at the end; a window sum outside int64 is no value."""
    big = 2**53 + 1
    events = [ev(at(0, 10, 1), big), ev(at(0, 10, 2), 1)]
    r = row(at(0, 10, 5), events)
    assert r["amount_1h"] == 2**53 + 2 and r["avg_amount_1h"] == float(2**53 + 2) / 2
    over = oracle.feature_values(VIEW, [ev(at(0, 10, 1), 2**62), ev(at(0, 10, 2), 2**62)], ("u1",), at(0, 10, 5))
    assert over["amount_1h"] == over["avg_amount_1h"] == over["avg_order_1h"] == (None, oracle.INCOMPLETE)
    assert over["n_1h"] == (2, PRESENT) and over["max_amount_1h"] == (2**62, PRESENT)
    assert row(at(0, 10, 5), [ev(at(0, 10, 1), 2**62), ev(at(0, 10, 2), 2**62)])["amount_1h"] is None
    # issue 19 item 7: two int64-max events; a later negative one brings the window back into int64
    big = [ev(at(0, 10, 1), 2**63 - 1), ev(at(0, 10, 2), 2**63 - 1)]
    assert oracle.feature_values(VIEW, big, ("u1",), at(0, 10, 5))["amount_1h"] == (None, oracle.INCOMPLETE)
    back = oracle.feature_values(VIEW, big + [ev(at(0, 10, 3), -(2**63))], ("u1",), at(0, 10, 5))
    assert back["amount_1h"] == (2**63 - 2, PRESENT) and back["avg_amount_1h"] == (float(2**63 - 2) / 3, PRESENT)
    with pytest.raises(TypeError, match="minor units"):
        feature_value(VIEW, "amount_1h", [ev(at(0, 10, 1), 1.5)], ("u1",), at(0, 10, 5))
    dec = [ev(at(0, 10, 1), Decimal("0.10")), ev(at(0, 10, 2), Decimal("0.20"))]
    assert feature_value(VIEW, "amount_1h", dec, ("u1",), at(0, 10, 5)) == Decimal("0.30")
    assert feature_value(VIEW, "avg_amount_1h", dec, ("u1",), at(0, 10, 5)) == 0.15
    floats = [ev(at(0, 10, 1), 0.0), ev(at(0, 10, 2), -0.0)]
    assert str(feature_value(VIEW, "min_amount_1h", floats, ("u1",), at(0, 10, 5))) == "-0.0"


def test_derived_rules() -> None:
    view = FeatureView("d", USER, ORDERS, [
        Aggregation("s", Agg.SUM, "amount", H1),
        Aggregation("n", Agg.COUNT, None, H1),
        Aggregation("mx", Agg.MAX, "amount", H1),
        Derived("ratio", Ref("s") / Ref("n")),
        Derived("plus", Ref("s") + Ref("mx") * 2),
        Derived("minus_c", Ref("s") - 1.5),
    ])
    r = feature_row(view, [ev(at(0, 10), 3), ev(at(0, 10, 1), 4)], ("u1",), at(0, 10, 5))
    assert r == {"s": 7, "n": 2, "mx": 4, "ratio": 3.5, "plus": 15, "minus_c": 5.5}
    assert type(r["plus"]) is int and type(r["ratio"]) is float
    r = feature_row(view, [], ("u1",), at(0, 10, 5))
    assert (r["ratio"], r["plus"], r["minus_c"]) == (None, None, -1.5)


def test_int64_entity_key_is_typed() -> None:
    ent = Entity("acct", {"acct_id": "int64"})
    view = FeatureView("a", ent, ORDERS, [Aggregation("n", Agg.COUNT, None, H1)])
    events = [{"event_id": "x", "event_time": at(0, 10), "acct_id": 7, "_kafka_partition": 0, "_offset": 0},
              {"event_id": "y", "event_time": at(0, 10), "acct_id": "7", "_kafka_partition": 0, "_offset": 1}]
    assert feature_value(view, "n", events, (7,), at(0, 10, 5)) == 1
    assert feature_value(view, "n", events, ("7",), at(0, 10, 5)) == 0


# --- admission -> online and offline values ---------------------------------------------------------------


def admission_example_records() -> list[dict]:
    def r(off: int, eid: str, ts: int, kafka: int, amount: int) -> dict:
        payload = {"event_id": eid, "event_time": ts, "user_id": "u1", "amount": amount}
        return {"partition": 0, "offset": off, "timestamp_ms": kafka, "value": json.dumps(payload)}

    return [
        r(0, "A", at(0, 10, 0), at(0, 10, 0), 1),
        r(1, "B", at(0, 10, 20), at(0, 10, 20), 2),
        r(2, "C", at(0, 10, 10), at(0, 10, 21), 4),
        r(3, "D", at(0, 10, 9, 59, 999), at(0, 10, 21), 8),
        r(4, "B", at(0, 10, 20), at(0, 10, 22), 16),
        r(5, "A", at(0, 10, 0), at(0, 10, 23), 32),
        r(6, "E", at(0, 10, 28), at(0, 10, 23), 64),
        r(7, "F", at(0, 10, 28, 0, 1), at(0, 10, 23), 128),
        {"partition": 0, "offset": 8, "timestamp_ms": at(0, 10, 24), "value": b"{not json"},
    ]


def test_example_admission() -> None:
    """Example "Admission": malformed, future, late, duplicate; online vs offline sums."""
    result = admit(admission_example_records(), ORDERS)
    assert [e["event_id"] for e in result.admitted] == ["A", "B", "C", "E"]
    assert [(d.offset, d.reason) for d in result.dead_letters] == [(3, "late"), (5, "late"), (7, "future"), (8, "malformed")]
    assert [e["_offset"] for e in result.duplicates] == [4]
    assert [e["event_id"] for e in result.offline] == ["A", "B", "C", "D", "E"]
    T = at(0, 11)
    assert feature_value(VIEW, "amount_1h", result.admitted, ("u1",), T) == 71  # 1 + 2 + 4 + 64
    assert feature_value(VIEW, "amount_1h", result.offline, ("u1",), T) == 79  # + 8 (late D)


def test_example_now_read_counts_applied_future_events() -> None:
    """Example "Online reads": an applied event stamped after the read instant."""
    applied = admit(admission_example_records(), ORDERS).admitted
    N = at(0, 10, 24, 30)
    assert feature_value(VIEW, "amount_1h", applied, ("u1",), N, now_read=True) == 71  # E (10:28) counts
    assert feature_value(VIEW, "amount_1h", applied, ("u1",), N) == 7  # training row at T = N: A, B, C
    assert feature_value(VIEW, "amount_1h", applied, ("u1",), at(0, 10, 25)) == 7  # aligned as-of read


# --- snapshots -----------------------------------------------------------------------------------------


SCORES = TableSource("scores", "scores", "scores", timestamp="ts")
SNAP = SnapshotView("credit", USER, SCORES, [Field("score", "int64")], ttl=timedelta(days=1))


@pytest.mark.parametrize("T, expected", [
    (at(1, 0) - 1, (None, PRESENT)),  # before any row
    (at(1, 0), (700, PRESENT)),  # a row is valid from its timestamp (included at T)
    (at(1, 11, 59, 59, 999), (700, PRESENT)),
    (at(1, 12), (710, PRESENT)),
    (at(2, 12), (710, PRESENT)),  # ts == T - ttl: still valid
    (at(2, 12, 0, 0, 1), (None, EXPIRED)),
    (at(9, 12), (None, EXPIRED)),  # ttl + 7 days: last instant the store remembers it
    (at(9, 12, 0, 0, 1), (None, PRESENT)),  # forgotten
])
def test_example_snapshot_ttl(T: int, expected: tuple) -> None:
    """Example "Snapshot TTL edge"."""
    rows = [{"user_id": "u1", "ts": at(1, 0), "score": 700}, {"user_id": "u1", "ts": at(1, 12), "score": 710},
            {"user_id": "u2", "ts": at(1, 12), "score": 1}]
    assert snapshot_value(SNAP, "score", rows, ("u1",), T) == expected


def test_example_snapshot_created_at_ties() -> None:
    """Example "Snapshot ties": created_at orders equal ts, and a row is unknown before its created_at."""
    src = TableSource("scores", "scores", "scores", timestamp="ts", created_at="created")
    snap = SnapshotView("credit", USER, src, [Field("score", "int64")], ttl=timedelta(days=1))
    rows = [{"user_id": "u1", "ts": at(1, 0), "created": at(1, 1), "score": 700},
            {"user_id": "u1", "ts": at(1, 0), "created": at(1, 5), "score": 705}]
    assert snapshot_value(snap, "score", rows, ("u1",), at(1, 0, 30)) == (None, PRESENT)
    assert snapshot_value(snap, "score", rows, ("u1",), at(1, 1)) == (700, PRESENT)
    assert snapshot_value(snap, "score", rows, ("u1",), at(1, 5)) == (705, PRESENT)
    with pytest.raises(ValueError, match="two rows"):
        snapshot_value(snap, "score", rows + [dict(rows[0])], ("u1",), at(1, 5))


def test_snapshot_duplicate_without_created_at_is_an_error() -> None:
    rows = [{"user_id": "u1", "ts": at(1, 0), "score": 700}, {"user_id": "u1", "ts": at(1, 0), "score": 701}]
    with pytest.raises(ValueError, match="declare created_at"):
        snapshot_value(SNAP, "score", rows, ("u1",), at(1, 5))


def test_snapshot_null_field_in_latest_row_is_null_not_older_value() -> None:
    rows = [{"user_id": "u1", "ts": at(1, 0), "score": 700}, {"user_id": "u1", "ts": at(1, 1), "score": None}]
    assert snapshot_value(SNAP, "score", rows, ("u1",), at(1, 2)) == (None, PRESENT)


# --- point-in-time retrieval ------------------------------------------------------------------------------


def test_training_rows_keep_order_columns_and_duplicates() -> None:
    requests = [{"user_id": "u1", "ts": at(0, 10, 7), "label": 1}, {"user_id": "zz", "ts": at(0, 10, 7), "label": 0},
                {"user_id": "u1", "ts": at(0, 10, 7), "label": 1}]
    out = training_rows(VIEW, EX1, requests, "ts")
    assert len(out) == 3 and [r["label"] for r in out] == [1, 0, 1]
    assert out[0]["n_1h"] == 3 and out[1]["n_1h"] == 0 and out[0] == out[2]
    with pytest.raises(ValueError, match="clash"):
        training_rows(VIEW, EX1, [{"user_id": "u1", "ts": 0, "n_1h": 5}], "ts")


# --- the oracle agrees with tiles merged by the laws -------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 150), st.one_of(st.none(), st.integers(-50, 50)),
                          st.sampled_from([None, "completed", "cancelled"])), max_size=25),
       st.integers(0, 160))
def test_oracle_equals_merge_of_tiles(spec, t_minutes) -> None:
    events = [ev(at(0, 9) + m * MIN, amount, status, offset=i) for i, (m, amount, status) in enumerate(spec)]
    T = at(0, 9) + t_minutes * MIN
    for f in VIEW.features:
        if not isinstance(f, Aggregation) or f.window.width is None:
            continue
        start, end = oracle.window_bounds(f, T)
        tile = oracle.tile_ms_of(f)
        lw = laws.LAWS[f.agg]
        tiles: dict[int, object] = {}
        for e in events:
            t0 = (e["event_time"] // tile) * tile
            tiles[t0] = lw.update(tiles.get(t0, lw.init()), laws.contribution(f, e),
                                  (e["event_time"], e["_kafka_partition"], e["_offset"]))
        if T % tile == 0:  # tile-aligned reads merge whole tiles
            merged = lw.merge_all(v for t0, v in tiles.items() if start <= t0 < end)
            assert lw.finalize(merged) == feature_value(VIEW, f.name, events, ("u1",), T)
        now = lw.merge_all(v for t0, v in tiles.items() if t0 >= start)  # a read at "now" merges all from start
        assert lw.finalize(now) == feature_value(VIEW, f.name, events, ("u1",), T, now_read=True)
