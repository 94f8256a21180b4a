"""Online/offline consistency: exact comparison by the contract, skipped statuses, errors reported."""

from __future__ import annotations

import pandas as pd
import pytest

from skewless import Agg, Aggregation, Derived, Entity, EventSource, FeatureView, Ref, Window
from skewless.monitoring.consistency import check_consistency, ulp_distance, values_equal

USER = Entity("user", {"user_id": "string"})
VIEW = FeatureView("v", USER, EventSource("orders", "orders", "raw.orders", topic="orders"),
                   [Aggregation("s", Agg.SUM, "amount", Window.hours(1)),
                    Aggregation("n", Agg.COUNT, "amount", Window.hours(1)),
                    Aggregation("last", Agg.LAST, "status", Window.lifetime()),
                    Derived("avg", Ref("s") / Ref("n"))])

LOGGED = pd.DataFrame({
    "user_id": ["a", "b", "c", "d"],
    "request_ms": [1000, 2000, 3000, 4000],
    "s": [7, 10, 0, 9007199254740993],
    "n": [2, 3, 0, 2],
    "last": ["paid", "shipped", None, "paid"],
    "avg": [3.5, 10 / 3, None, 4503599627370497.0],
    "status:s": ["present", "present", "present", "incomplete"],
    "progress": ['{"p:0": 5}'] * 4,
})


def exact_recompute(rows: pd.DataFrame) -> pd.DataFrame:
    assert list(rows.columns) == ["user_id", "request_ms", "progress"]
    table = LOGGED.set_index("user_id")
    return pd.DataFrame([{f: table.at[u, f] for f in ("s", "n", "last", "avg")} for u in rows["user_id"]])


def test_zero_mismatches_when_offline_agrees():
    report = check_consistency(VIEW, LOGGED, exact_recompute)
    assert report.status == "ok", report.render()
    by = {f.feature: f for f in report.features}
    assert (by["s"].compared, by["s"].skipped, by["s"].mismatch_rate) == (3, 1, 0.0)
    assert by["avg"].compared == 4


def test_mismatches_are_counted_with_examples():
    def drifting(rows):
        out = exact_recompute(rows)
        out.loc[0, "s"] = 8  # an integer off by one
        out.loc[1, "avg"] = float.fromhex((10 / 3).hex()) + 4.440892098500626e-16  # one ULP
        out.loc[2, "last"] = "paid"  # null vs value
        return out

    report = check_consistency(VIEW, LOGGED, drifting)
    by = {f.feature: f for f in report.features}
    assert by["s"].mismatches == 1 and by["s"].examples[0].entity == ("a",) and by["s"].examples[0].offline == 8
    assert by["avg"].mismatches == 1 and by["avg"].mismatch_rate == 0.25
    assert by["last"].mismatches == 1 and by["n"].mismatches == 0
    assert report.status == "failed"
    relaxed = check_consistency(VIEW, LOGGED, drifting, float_ulps={"avg": 1})
    assert {f.feature: f.mismatches for f in relaxed.features}["avg"] == 0


def test_values_equal_by_contract():
    assert values_equal(None, float("nan")) and not values_equal(None, 0)
    assert values_equal(5, 5.0) and not values_equal(True, 1) and not values_equal("1", 1)
    assert not values_equal(9007199254740993, 9007199254740992.0)  # beyond 2^53 a float cannot stand for it
    assert not values_equal(-0.0, 0.0)  # MIN/MAX distinguish them
    assert ulp_distance(1.0, 1.0000000000000002) == 1 and ulp_distance(-0.0, 0.0) == 1
    from decimal import Decimal

    assert values_equal(Decimal("0.30"), Decimal("0.3")) and values_equal(Decimal("2"), 2)


def test_failures_are_reported_not_raised():
    short = check_consistency(VIEW, LOGGED, lambda rows: rows.head(1))
    assert short.status == "error" and "1 rows for 4" in short.error

    def boom(rows):
        raise RuntimeError("spark gone")

    assert "spark gone" in check_consistency(VIEW, LOGGED, boom).error
    assert "request_ms" in check_consistency(VIEW, LOGGED.drop(columns=["request_ms"]), exact_recompute).error


def test_recompute_with_the_oracle():
    """The shape the training-set engine will have: recompute = the contract at each row's T (the oracle's
    point-in-time retrieval). Responses logged from the applied events agree; an event applied offline
    only (late online) shows up as a mismatch of exactly the rows whose window holds it."""
    from skewless.core import oracle

    def ev(i, user, ts, amount, status):
        return {"event_id": i, "user_id": user, "event_time": ts, "amount": amount, "status": status,
                "_kafka_partition": 0, "_offset": i}

    applied = [ev(0, "a", 1_000, 3, "paid"), ev(1, "a", 2_000, 4, "shipped"), ev(2, "b", 1_500, 10, "paid")]
    late = ev(3, "b", 1_600, 5, "refunded")
    requests = [{"user_id": "a", "request_ms": 60_000}, {"user_id": "b", "request_ms": 60_000}, {"user_id": "a", "request_ms": 5_000}]
    logged = pd.DataFrame([dict(r, **oracle.feature_row(VIEW, applied, (r["user_id"],), r["request_ms"])) for r in requests])

    def recompute_with(events):
        return lambda rows: pd.DataFrame(oracle.training_rows(VIEW, events, rows.to_dict("records"), "request_ms"))

    assert check_consistency(VIEW, logged, recompute_with(applied)).status == "ok"
    report = check_consistency(VIEW, logged, recompute_with(applied + [late]))
    assert {f.feature: f.mismatches for f in report.features} == {"s": 1, "n": 1, "last": 1, "avg": 1}
    assert report.features[0].examples[0].entity == ("b",)
