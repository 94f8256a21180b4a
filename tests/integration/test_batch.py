"""The batch path end to end on real Spark + Iceberg + Redis: compiled jobs over seeded raw tables equal the oracle."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest

from batch_jobs import tables as T
from batch_jobs.runner import RunOptions, compile_feature_view, cutoff_ms, day_start_ms, run_range
from skewless.core import laws, layout, oracle
from skewless.core.dsl import Agg, Aggregation
from skewless.core.routing import is_stream_served
from skewless.core.timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE, floor_ms
from tests.integration.batch_data import FIELD_TYPES, make_records, make_view, offline_events, write_raw

pytestmark = pytest.mark.integration

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


def test_daily_tiles_equal_the_laws_over_the_oracle_offline_set(spark: Any, ds: Dataset, backfilled: Any) -> None:
    report, lines = backfilled
    assert report.serving_rows and report.tile_rows > 0
    assert any("tile rows" in line for line in lines)
    tables = T.ViewTables("features", ds.name, 1)
    expected: dict[tuple, dict[str, Any]] = defaultdict(dict)
    batch_aggs = [f for f in ds.view.features if isinstance(f, Aggregation) and not is_stream_served(layout.width_ms_of(f))]
    by_key: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for e in ds.events:
        if day_start_ms(START) <= e["event_time"] < C:
            by_key[(e["user_id"], floor_ms(e["event_time"], MS_PER_DAY))].append(e)
    for key, evs in by_key.items():
        for f in batch_aggs:
            lw = laws.law(f.agg)
            expected[key][f.name] = lw.aggregate(
                (laws.contribution(f, e), (e["event_time"], e["_partition"], e["_offset"])) for e in evs)
    from batch_jobs.codec import to_intermediate

    got = {}
    for r in _rows(spark, tables.tiles, "user_id, day"):
        got[(r["user_id"], day_start_ms(r["day"]))] = {f.name: to_intermediate(f.agg, r[f.name]) for f in batch_aggs}
    assert got == dict(expected)


def _sample_instants(ds: Dataset) -> list[int]:
    rng = __import__("random").Random(3)
    ts = sorted({e["event_time"] for e in ds.events if e["event_time"] < C + 2 * MS_PER_DAY})
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


def test_serving_rows_hold_body_and_tails_as_the_layout_encodes_them(spark: Any, ds: Dataset, backfilled: Any) -> None:
    tables = T.ViewTables("features", ds.name, 1)
    rows = _rows(spark, tables.serving, "user_id")
    assert {r["cutoff_ms"] for r in rows} == {C}
    windows = layout.batch_windows(ds.view)
    history = [e for e in ds.events if e["event_time"] >= day_start_ms(START)]
    for r in rows[:6]:
        key = (r["user_id"],)
        fields = {"cutoff": str(C), "run": r["run_id"], "epoch": "E"}
        fields.update({f: r[f.replace(":", "_")] for f in windows})
        record = layout.decode_batch_record(ds.view, fields)
        for fname, aggs in windows.items():
            width = None if fname == layout.LIFETIME_FIELD else int(fname[2:])
            spans = [(None, C)] if width is None else [
                (C - width + 2 * MS_PER_DAY, C), (C - width, C - width + MS_PER_DAY),
                (C - width + MS_PER_DAY, C - width + 2 * MS_PER_DAY)]
            for part, (lo, hi) in zip(record.windows[fname], spans):
                for acc, f in zip(part, aggs):
                    evs = [e for e in history if e["user_id"] == key[0] and (lo is None or e["event_time"] >= lo)
                           and e["event_time"] < hi]
                    want = laws.law(f.agg).aggregate(
                        (laws.contribution(f, e), (e["event_time"], e["_partition"], e["_offset"])) for e in evs)
                    assert acc == want, (key, fname, f.name)


def _fetch(client: Any, plan: Any) -> dict[str, Any]:
    fetched: dict[str, Any] = {plan.epoch_key: client.get(plan.epoch_key), plan.meta_key: client.hgetall(plan.meta_key)}
    for _, key in plan.tile_keys:
        fetched[key] = client.hgetall(key)
    if plan.batch_key:
        fetched[plan.batch_key] = client.hgetall(plan.batch_key)
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

    batch_features = [f.name for f in ds.view.features
                      if isinstance(f, Aggregation) and not is_stream_served(layout.width_ms_of(f))]
    before_cutoff = [e for e in ds.events if e["event_time"] < C]  # no stream tiles: nothing after C applied
    for days_late in range(4):
        t = C + days_late * MS_PER_DAY
        for user in ds.users[:6] + ["u99"]:
            plan = layout.read_plan(project, ds.view, (user,), as_of_ms=t)
            fetched = _fetch(redis_client, plan)
            got = layout.evaluate_read(plan, fetched, now_ms=t)
            for name in batch_features:
                want = oracle.feature_value(ds.view, name, before_cutoff, (user,), t)
                value, status = got[name]
                width = layout.width_ms_of(ds.view.feature(name))
                if user == "u99":  # no event before C: no batch record, and the layout's reader says incomplete
                    assert (value, status) == (None, "incomplete")
                elif days_late <= 2:
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
