"""Training sets end to end: seeded raw events in Iceberg, the batch path's backfill for the daily tiles, a
snapshot table written with PyIceberg; both engines equal the oracle row for row, and each other."""

from __future__ import annotations

import json
import random
import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from batch_jobs.runner import RunOptions, compile_feature_view, cutoff_ms, run_range
from skewless.core.timeutil import day_start_ms
from skewless.core import oracle
from skewless.core.dsl import Field, SnapshotView, TableSource
from skewless.core.repo import Repository
from skewless.core.timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE, floor_ms, from_epoch_ms, iso_ms
from skewless.store import FeatureStore
from tests.integration.test_batch import FIELD_TYPES, USER, make_records, make_view, offline_events, write_raw

pytestmark = pytest.mark.integration

END = date(2024, 3, 1)
START = END - timedelta(days=400)
C = cutoff_ms(END)
FIRST_FULL = day_start_ms(START) + 366 * MS_PER_DAY  # every window is covered by the tiles from here on
TTL = MS_PER_DAY
STREAM_SERVED = {"n_1h", "amt_1h"}  # of make_view: the features that never need the tiles


def _snapshot_view(name: str, table: str) -> SnapshotView:
    src = TableSource(name=f"src_{name}", schema="customer_profile", table=table, timestamp="event_time",
                      created_at="created_at")
    return SnapshotView(name=name, entity=USER, source=src, ttl=timedelta(milliseconds=TTL),
                        fields=[Field("credit_score", "int64"), Field("segment", "string")])


def _snapshot_rows(seed: int, users: list[str]) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows, seen = [], set()
    for _ in range(300):
        u = rng.choice(users)
        ts = C - rng.randrange(1, 30) * MS_PER_DAY + rng.choice([0, 0, 1, -1, rng.randrange(MS_PER_DAY)])
        created = ts + rng.choice([0, 0, 5 * MS_PER_MINUTE, 2 * MS_PER_HOUR, 3 * MS_PER_DAY, -MS_PER_HOUR])
        if (u, ts, created) in seen:
            continue
        seen.add((u, ts, created))
        rows.append({"user_id": u, "credit_score": rng.randrange(300, 851) if rng.random() > 0.1 else None,
                     "segment": rng.choice(["new", "regular", "vip", "dormant"]), "event_time": ts, "created_at": created})
    return rows


def _write_snapshot(catalog: Any, table: str, rows: list[dict[str, Any]]) -> None:
    def dt(ms: int) -> datetime:
        return from_epoch_ms(ms)

    schema = pa.schema([("user_id", pa.string()), ("credit_score", pa.int64()), ("segment", pa.string()),
                        ("event_time", pa.timestamp("us", tz="UTC")), ("created_at", pa.timestamp("us", tz="UTC"))])
    data = pa.table({"user_id": [r["user_id"] for r in rows], "credit_score": [r["credit_score"] for r in rows],
                     "segment": [r["segment"] for r in rows], "event_time": [dt(r["event_time"]) for r in rows],
                     "created_at": [dt(r["created_at"]) for r in rows]}, schema=schema)
    ns = table.split(".")[0]
    if (ns,) not in catalog.list_namespaces():
        catalog.create_namespace(ns)
    catalog.create_table(table, schema=schema).append(data)


class Dataset:
    def __init__(self, spark: Any, catalog: Any, seed: int):
        uid = uuid.uuid4().hex[:8]
        self.view = make_view(f"tr_{uid}", f"raw.orders_tr_{uid}")
        self.job = compile_feature_view(self.view, FIELD_TYPES)
        self.records = make_records(seed, day_start_ms(END))
        self.events = [e for e in offline_events(self.records, self.view) if e["event_time"] >= day_start_ms(START)]
        write_raw(spark, catalog, self.view, self.records)
        run_range(spark, self.view, self.job, START, END, RunOptions(chunk_days=200, log=lambda _: None, force=True))
        self.users = sorted({e["user_id"] for e in self.events})
        self.snapshot = _snapshot_view(f"sn_{uid}", f"crm.profile_{uid}")
        self.rows = _snapshot_rows(seed, self.users[:6])
        _write_snapshot(catalog, self.snapshot.source.table, self.rows)
        self.repo = Repository.of([self.view, self.snapshot])
        self.store = FeatureStore(self.repo, catalog=catalog, spark=spark)


@pytest.fixture(scope="module")
def ds(spark: Any, iceberg_catalog: Any) -> Dataset:
    return Dataset(spark, iceberg_catalog, seed=11)


def _instants(ds: Dataset, seed: int) -> list[int]:
    rng = random.Random(seed)
    out = {C, C - 1, FIRST_FULL, C + 3 * MS_PER_HOUR}
    ts = [e["event_time"] for e in ds.events if e["event_time"] >= FIRST_FULL]
    for t in rng.sample(ts, 40):  # exactly at an event, 1 ms around it, on day and tile edges
        out |= {t, t + 1, t - 1, floor_ms(t, MS_PER_DAY), floor_ms(t, 5 * MS_PER_MINUTE), floor_ms(t, MS_PER_HOUR) + MS_PER_HOUR}
    for r in rng.sample(ds.rows, 30):  # snapshot edges: at ts, created_at, ttl and the forgotten edge
        out |= {r["event_time"], r["created_at"], r["created_at"] - 1, r["event_time"] + TTL, r["event_time"] + TTL + 1,
                r["event_time"] + TTL + 7 * MS_PER_DAY, r["event_time"] + TTL + 7 * MS_PER_DAY + 1}
    return sorted(x for x in out if x >= FIRST_FULL)


def _entity_df(ds: Dataset) -> pd.DataFrame:
    rng = random.Random(5)
    rows = []
    for t in _instants(ds, 3):
        for u in rng.sample(ds.users, 2) + (["nobody"] if rng.random() < 0.05 else []):
            rows.append({"user_id": u, "event_timestamp": from_epoch_ms(t).replace(tzinfo=None), "label": len(rows)})
    rows += rows[:7]  # duplicate input rows are kept
    rng.shuffle(rows)
    return pd.DataFrame(rows)


def _expected(ds: Dataset, df: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for u, ts in zip(df["user_id"], df["event_timestamp"]):
        t = int(ts.replace(tzinfo=timezone.utc).timestamp() * 1000)
        row = dict(oracle.feature_row(ds.view, ds.events, (u,), t))
        covered = floor_ms(t, MS_PER_DAY) <= C  # the tiles end at the cut-off C: later days are incomplete
        if not covered:
            row.update({k: None for k in row if k not in STREAM_SERVED})
        snap = oracle.snapshot_row(ds.snapshot, ds.rows, (u,), t)
        row.update({k: v for k, (v, _) in snap.items()})
        row[f"{ds.view.name}__status"] = "present" if covered else "incomplete"
        row[f"{ds.snapshot.name}__status"] = next(iter(snap.values()))[1]
        out.append(row)
    return out


def _as_python(df: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    out = []
    for rec in df[columns].astype(object).to_dict("records"):
        out.append({k: (None if v is pd.NA or (isinstance(v, float) and v != v) else v) for k, v in rec.items()})
    return out


@pytest.mark.parametrize("engine", ["duckdb", "spark"])
def test_training_set_equals_the_oracle_row_for_row(ds: Dataset, engine: str) -> None:
    df = _entity_df(ds)
    got = ds.store.get_historical_features(df, [ds.view.name, ds.snapshot.name], engine=engine, progress=False)
    assert list(got.columns[:3]) == ["user_id", "event_timestamp", "label"]
    assert got["label"].tolist() == df["label"].tolist() and got.index.equals(df.index)
    expected = _expected(ds, df)
    columns = [c for c in got.columns if c not in df.columns]
    rows = _as_python(got, columns)
    assert len(rows) == len(expected)
    for i, (g, w) in enumerate(zip(rows, expected)):
        assert g == w, (i, df.iloc[i].to_dict(), {k: (g[k], w[k]) for k in g if g[k] != w[k]})


def test_engines_agree_and_report_incomplete_outside_the_tiles(ds: Dataset) -> None:
    ts = [C - 3 * MS_PER_DAY, FIRST_FULL - 2 * MS_PER_DAY, C + 5 * MS_PER_DAY, day_start_ms(START) + 10 * MS_PER_HOUR]
    df = pa.table({"user_id": [ds.users[0]] * len(ts),
                   "event_timestamp": pa.array([from_epoch_ms(t) for t in ts], pa.timestamp("ms", tz="UTC"))})
    features = [f"{ds.view.name}:n_1h", f"{ds.view.name}:n_365d", f"{ds.view.name}:avg_ltv_365d",
                f"{ds.view.name}:last_status", f"{ds.snapshot.name}:segment"]
    a = ds.store.get_historical_features(df, features, engine="duckdb", progress=False)
    b = ds.store.get_historical_features(df, features, engine="spark", progress=False)
    assert isinstance(a, pa.Table) and a.to_pylist() == b.to_pylist()
    status = a.column(f"{ds.view.name}__status").to_pylist()
    assert status == ["present", "incomplete", "incomplete", "incomplete"]
    assert a.column("n_365d").to_pylist()[1:] == [None, None, None]
    assert a.column("n_1h").to_pylist()[1] == oracle.feature_value(ds.view, "n_1h", ds.events, (ds.users[0],), ts[1])
    # lifetime windows count from the first tile day: on that day they are the head alone
    assert a.column("last_status").to_pylist()[3] == oracle.feature_value(ds.view, "last_status", ds.events,
                                                                          (ds.users[0],), ts[3])


@pytest.mark.parametrize("vectorised", [True, False])
def test_prefix_paths_equal_the_oracle(ds: Dataset, vectorised: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a lifetime MIN/MAX the embedded engine computes prefixes with numpy (skewless.training.prefix);
    that path and the SQL one (window + ASOF join) both give the oracle's values."""
    from skewless.training import duckdb_engine

    monkeypatch.setattr(duckdb_engine, "VECTORISED_PREFIX", vectorised)
    used = []
    build = duckdb_engine.TilePrefix.build
    monkeypatch.setattr(duckdb_engine.TilePrefix, "build", lambda *a: used.append(1) or build(*a))
    df = _entity_df(ds)
    names = [f.name for f in ds.view.features if f.name not in ("last_ts", "days_since_last")]
    got = ds.store.get_historical_features(df, [f"{ds.view.name}:{n}" for n in names], progress=False)
    assert bool(used) == vectorised
    expected = _expected(ds, df)
    columns = names + [f"{ds.view.name}__status"]
    rows = _as_python(got, columns)
    for i, (g, w) in enumerate(zip(rows, expected)):
        assert g == {k: w[k] for k in columns}, (i, {k: (g[k], w[k]) for k in columns if g[k] != w[k]})


# --- events archived after the newest backfill (issue 19, item 1) ----------------------------------------


def _record(partition: int, offset: int, ts: int, kafka_ts: int, event_id: str, user: str, status: str,
            amount: int) -> dict[str, Any]:
    return {"partition": partition, "offset": offset, "timestamp_ms": kafka_ts,
            "value": json.dumps({"event_id": event_id, "user_id": user, "order_id": f"o-{event_id}", "amount": amount,
                                 "currency": "EUR", "status": status, "event_time": iso_ms(ts)})}


class ArchivedAfter:
    """A backfill through END (raw snapshot S1), then records archived in a second commit (S2): three `placed`
    orders of one user on END+1 12:00-12:02, late events for days the run covered (one on END, one 3 days
    before, one 200 days before), and a re-sent copy of an archived event (same id and time: not counted)."""

    def __init__(self, spark: Any, catalog: Any, seed: int):
        uid = uuid.uuid4().hex[:8]
        self.view = make_view(f"aa_{uid}", f"raw.orders_aa_{uid}")
        job = compile_feature_view(self.view, FIELD_TYPES)
        base = make_records(seed, day_start_ms(END))
        write_raw(spark, catalog, self.view, base)
        run_range(spark, self.view, job, START, END, RunOptions(chunk_days=200, log=lambda _: None, force=True))
        nxt = {p: 1 + max(r["offset"] for r in base if r["partition"] == p) for p in {r["partition"] for r in base}}

        def at(user: int) -> tuple[int, int]:
            p = user % 3
            nxt[p] += 1
            return p, nxt[p] - 1

        head = C + 12 * MS_PER_HOUR  # END+1 12:00, after the run's cut-off
        extra = [_record(*at(1), head + i * MS_PER_MINUTE, head + i * MS_PER_MINUTE + 1000, f"new-{i}", "u1",
                         "placed", 100 + i) for i in range(3)]
        self.late_days = [END, END - timedelta(days=3), END - timedelta(days=200)]
        for i, (d, user) in enumerate(zip(self.late_days, (2, 1, 3))):
            ts = day_start_ms(d) + MS_PER_DAY - 1 if i == 0 else day_start_ms(d) + 10 * MS_PER_HOUR
            extra.append(_record(*at(user), ts, head + 5 * MS_PER_MINUTE, f"late-{i}", f"u{user}",
                                 "placed" if i != 1 else "completed", 1000 + i))
        copied = next(r for r in base if json.loads(r["value"])["user_id"] == "u1"
                      and json.loads(r["value"])["event_time"] < iso_day(END))
        p = json.loads(copied["value"])
        extra.append(_record(*at(1), _ms_of(p["event_time"]), head + 6 * MS_PER_MINUTE, p["event_id"], "u1",
                             p["status"], 77777))
        write_raw(spark, catalog, self.view, extra, complete_until_ms=head)
        self.events = [e for e in offline_events(base + extra, self.view) if e["event_time"] >= day_start_ms(START)]
        self.extra_times = sorted(_ms_of(json.loads(r["value"])["event_time"]) for r in extra)
        self.store = FeatureStore(Repository.of([self.view]), catalog=catalog, spark=spark)


def iso_day(d: date) -> str:
    return d.isoformat() + "T00:00:00.000Z"


def _ms_of(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


@pytest.fixture(scope="module")
def archived_after(spark: Any, iceberg_catalog: Any) -> ArchivedAfter:
    return ArchivedAfter(spark, iceberg_catalog, seed=23)


def _request(rows: list[tuple[str, int]]) -> pa.Table:
    return pa.table({"user_id": [u for u, _ in rows],
                     "event_timestamp": pa.array([from_epoch_ms(t) for _, t in rows], pa.timestamp("ms", tz="UTC"))})


@pytest.mark.parametrize("engine", ["duckdb", "spark"])
def test_events_archived_after_the_newest_backfill_are_counted(archived_after: ArchivedAfter, engine: str) -> None:
    """The issue's repro: `n_1h` at END+1 12:30 is 3 alone and 3 with a batch-served feature in the request."""
    aa, view = archived_after, archived_after.view.name
    t = C + 12 * MS_PER_HOUR + 30 * MS_PER_MINUTE
    alone = aa.store.get_historical_features(_request([("u1", t)]), [f"{view}:n_1h"], engine=engine, progress=False)
    both = aa.store.get_historical_features(_request([("u1", t)]), [f"{view}:n_1h", f"{view}:n_365d"], engine=engine,
                                            progress=False)
    assert alone.column("n_1h").to_pylist() == [3]
    assert both.column("n_1h").to_pylist() == [3], both.to_pylist()
    assert both.column("n_365d").to_pylist() == [oracle.feature_value(aa.view, "n_365d", aa.events, ("u1",), t)]
    assert both.column(f"{view}__status").to_pylist() == ["present"]


@pytest.mark.parametrize("engine", ["duckdb", "spark"])
def test_late_events_for_covered_days_archived_after_the_backfill_equal_the_oracle(archived_after: ArchivedAfter,
                                                                                  engine: str) -> None:
    """Every feature, around every record archived after the run and on the days after them, equals the oracle
    over the whole offline set (late events in days the run's tiles cover included)."""
    aa = archived_after
    instants = set()
    for ts in aa.extra_times:
        day = floor_ms(ts, MS_PER_DAY)
        instants |= {ts, ts + 1, day + MS_PER_DAY, day + MS_PER_DAY + 1, day + 2 * MS_PER_DAY + 5 * MS_PER_HOUR, C,
                     C + 12 * MS_PER_HOUR + 30 * MS_PER_MINUTE}
    rows = [(u, t) for t in sorted(x for x in instants if FIRST_FULL <= x < C + MS_PER_DAY) for u in ("u0", "u1", "u2", "u3")]
    got = aa.store.get_historical_features(_request(rows), [aa.view.name], engine=engine, progress=False).to_pylist()
    bad = []
    for (u, t), g in zip(rows, got, strict=True):
        want = dict(oracle.feature_row(aa.view, aa.events, (u,), t))
        assert g[f"{aa.view.name}__status"] == "present", (u, t, g)
        diff = {k: (g[k], w) for k, w in want.items() if g[k] != w}
        if diff:
            bad.append((u, t, diff))
    assert not bad, bad[:10]


@pytest.mark.parametrize("engine", ["duckdb", "spark"])
def test_online_frames_have_the_training_sets_columns_and_dtypes(ds: Dataset, redis_client: Any, engine: str) -> None:
    """The same features online (``OnlineResponse.to_pandas``) and in a training set: the same output columns
    (feature columns, then one ``<view>__status`` per view) with the same dtypes — online from each feature's
    declared type, offline from the engine's columns — for COUNT, SUM, MIN, MAX, AVG, a ratio, a timestamp MAX,
    DaysSince, LAST of a string and int/string snapshot fields."""
    features = [ds.view.name, ds.snapshot.name]
    users = [ds.users[0], "nobody"]
    df = pd.DataFrame({"user_id": users, "event_timestamp": [from_epoch_ms(C).replace(tzinfo=None)] * 2})
    offline = ds.store.get_historical_features(df, features, engine=engine, progress=False)
    online = FeatureStore(ds.repo, redis=redis_client, project=f"t{uuid.uuid4().hex[:8]}").get_online_features(
        {"user_id": users}, features).to_pandas()
    columns = [c for c in offline.columns if c not in df.columns]
    assert list(online.columns) == ["user_id", *columns]
    assert {c: str(online[c].dtype) for c in columns} == {c: str(offline[c].dtype) for c in columns}
    assert str(offline["n_365d"].dtype) == "Int64" and str(offline["avg_7d"].dtype) == "Float64"
