"""Expectations over small pandas/Arrow frames, the materialization gate, sampled online checks, sampling."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pyarrow as pa
import pytest

from skewless import Agg, Aggregation, Entity, EventSource, Expectation, FeatureView, Window
from skewless.monitoring.quality import (
    check_dataframe,
    check_online_sample,
    gate,
    materialization_gate,
    report_rows,
    sample_online,
)
from skewless.monitoring.sampling import ValueSampler

USER = Entity("user", {"user_id": "string"})
ORDERS = EventSource("orders", "orders", "raw.orders", topic="orders")


def make_view(block: bool = True) -> FeatureView:
    return FeatureView(
        "stats", USER, ORDERS,
        [Aggregation("n_1h", Agg.COUNT, None, Window.hours(1)),
         Aggregation("ltv", Agg.SUM, "amount", Window.days(365)),
         Aggregation("status", Agg.LAST, "status", Window.lifetime()),
         Aggregation("avg", Agg.AVG, "amount", Window.days(365))],
        freshness_sla=timedelta(minutes=5),
        expectations=[
            Expectation.not_null("n_1h"),
            Expectation.range("n_1h", min=0, max=10),
            Expectation.range("ltv", min=0),
            Expectation.allowed_values("status", ["placed", "completed"]),
            Expectation.max_null_rate("avg", 0.5),
        ],
        block_materialization_on_failed_checks=block,
    )


GOOD = {"n_1h": [0, 3, 10, 1], "ltv": [0, 5, 7, None], "status": ["placed", None, "completed", "placed"],
        "avg": [1.5, None, 2.0, float("nan")]}
BAD = {"n_1h": [None, 11, -1, 1], "ltv": [-5, 5, 7, None], "status": ["placed", "lost", "gone", "lost"],
       "avg": [None, None, None, 1.0]}


def by_label(report):
    return {r.expectation: r for r in report.results}


def test_good_frame_passes_every_check():
    report = check_dataframe(make_view(), pd.DataFrame(GOOD), run_id="r1")
    assert report.status == "ok" and report.rows == 4 and len(report.results) == 5
    r = by_label(report)
    assert r["max_null_rate(avg, 0.5)"].observed == 0.5  # None and NaN are both null; 2 of 4 <= 0.5
    assert r["range(n_1h, min=0, max=10)"].observed == 0
    assert gate(report, make_view())


def test_bad_frame_counts_violations():
    report = check_dataframe(make_view(), pd.DataFrame(BAD))
    r = by_label(report)
    assert (r["not_null(n_1h)"].observed, r["not_null(n_1h)"].passed) == (1, False)
    assert r["range(n_1h, min=0, max=10)"].observed == 2  # 11 and -1; the null is not a range violation
    assert r["range(ltv, min=0)"].observed == 1
    assert r["allowed_values(status, ['placed', 'completed'])"].observed == 3
    assert "'gone', 'lost'" in r["allowed_values(status, ['placed', 'completed'])"].detail
    assert r["max_null_rate(avg, 0.5)"].observed == 0.75 and not r["max_null_rate(avg, 0.5)"].passed
    assert report.status == "failed" and len(report.failures) == 5
    assert "NO" in report.render()


def test_arrow_table_and_row_dicts_are_accepted():
    table = pa.Table.from_pydict(GOOD)
    assert check_dataframe(make_view(), table).status == "ok"
    rows = pd.DataFrame(GOOD).to_dict("records")
    assert check_dataframe(make_view(), rows).status == "ok"


def test_missing_column_fails_and_input_is_not_modified():
    df = pd.DataFrame({k: v for k, v in GOOD.items() if k != "ltv"})
    before = df.copy()
    report = check_dataframe(make_view(), df)
    assert by_label(report)["range(ltv, min=0)"].detail == "column 'ltv' missing"
    assert report.status == "failed"
    pd.testing.assert_frame_equal(df, before)


def test_empty_frame():
    report = check_dataframe(make_view(), pd.DataFrame({k: [] for k in GOOD}))
    assert report.status == "ok" and by_label(report)["max_null_rate(avg, 0.5)"].observed == 0.0


def test_gate_follows_the_view_flag():
    failed = check_dataframe(make_view(), pd.DataFrame(BAD))
    assert gate(failed, make_view(block=True)) is False
    assert gate(failed, make_view(block=False)) is True
    assert gate(failed) is False


def test_a_broken_monitor_reports_error_and_does_not_block():
    report = check_dataframe(make_view(), 42)
    assert report.status == "error" and "TypeError" in report.error
    assert gate(report, make_view()) is True
    assert gate(report, make_view(), block_on_error=True) is False
    rows = report_rows(report)
    assert len(rows) == 1 and rows[0]["status"] == "error"


def test_sampled_online_check_skips_incomplete_values():
    store = {
        "u1": {"n_1h": (1, "present"), "ltv": (5, "present"), "status": ("placed", "present"), "avg": (None, "incomplete")},
        "u2": {"n_1h": (None, "incomplete"), "ltv": (None, "incomplete"), "status": ("placed", "stale"), "avg": (None, "incomplete")},
        "u3": {"n_1h": 2, "ltv": 9, "status": "completed", "avg": 4.5},
    }
    df = sample_online(make_view(), list(store), store.get, n=10, seed=1)
    assert len(df) == 3 and set(df["__entity"]) == {"u1", "u2", "u3"}
    report = check_online_sample(make_view(), list(store), store.get, n=10, seed=1)
    assert report.status == "ok", report.render()
    bad = dict(store, u4={"n_1h": (-3, "present"), "ltv": (1, "present"), "status": ("??", "present"), "avg": (1.0, "present")})
    report = check_online_sample(make_view(), list(bad), bad.get, n=2, seed=3)
    assert report.rows == 2
    full = check_online_sample(make_view(), list(bad), bad.get, n=10)
    assert full.status == "failed"


def test_sampled_online_check_survives_a_failing_reader():
    def read(key):
        raise ConnectionError("redis down")

    report = check_online_sample(make_view(), ["u1"], read)
    assert report.status == "error" and "redis down" in report.error


def test_value_sampler_rate_and_capacity():
    s = ValueSampler(rate=0.5, capacity=100, seed=7)
    for i in range(1000):
        s.observe("v", {"x": (i, "present"), "y": "a"})
    assert s.observed == 1000 and 400 < s.sampled < 600
    rows = s.rows("v")
    assert len(rows) == 100 and rows[-1]["y"] == "a" and isinstance(rows[-1]["x"], int)
    assert list(s.frame("v").columns) == ["x", "y"]
    s.observe("v", None)  # type: ignore[arg-type] - bad input never raises
    with pytest.raises(ValueError):
        ValueSampler(rate=2)


def test_materialization_gate_hook():
    from datetime import date

    hook = materialization_gate(None)
    assert hook(make_view(), date(2024, 1, 1), pa.Table.from_pydict(dict(GOOD, extra=[1, 2, 3, 4]))) is True
    assert hook(make_view(block=False), date(2024, 1, 1), pa.Table.from_pydict(BAD)) is False  # the materializer warns
    assert hook(make_view(), date(2024, 1, 1), "garbage") is True  # a broken monitor does not stop the pipeline
    assert materialization_gate(None, block_on_error=True)(make_view(), date(2024, 1, 1), "garbage") is False
