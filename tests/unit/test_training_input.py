"""Training-set input checks, output naming, spine and the embedded engine's snapshot path (no JVM)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from skewless.core import oracle
from skewless.core.dsl import Entity, Field, SnapshotView, TableSource
from skewless.core.repo import Repository, UnknownFeatureError, load_repository
from skewless.core.timeutil import MS_PER_DAY, MS_PER_HOUR, from_epoch_ms
from skewless.store import FeatureStore
from skewless.training import TrainingInputError
from skewless.training.plan import build_pit_plan, column_names
from skewless.training.requests import T, epoch_ms, request_table, to_arrow
from skewless.training.spine import build_spine, parse_every

D0 = datetime(2024, 1, 1)


@pytest.fixture(scope="module")
def repo() -> Repository:
    return load_repository("feature_defs")


def _df(**cols: Any) -> pd.DataFrame:
    base = {"user_id": ["u1", "u2"], "event_timestamp": [D0, D0 + timedelta(hours=1)]}
    base.update(cols)
    return pd.DataFrame(base)


def _requests(repo: Repository, df: Any, features: Any = "churn_model", ts: str = "event_timestamp") -> pa.Table:
    return request_table(to_arrow(df), build_pit_plan(repo, features), ts)


def test_requests_hold_row_ids_typed_keys_and_epoch_ms(repo: Repository) -> None:
    r = _requests(repo, _df())
    assert r.column_names == ["__rid", "user_id", "__t"]
    assert r.column(T).to_pylist() == [1704067200000, 1704070800000]


def test_naive_is_utc_aware_is_converted_and_finer_precision_is_floored() -> None:
    naive = pa.chunked_array([pa.array([D0, datetime(1969, 12, 31, 23, 59, 59, 999500)], pa.timestamp("us"))])
    assert epoch_ms(naive, "t").tolist() == [1704067200000, -1]
    aware = pd.Series([pd.Timestamp("2024-01-01T01:00:00.0009+01:00")])
    assert epoch_ms(pa.chunked_array([pa.Array.from_pandas(aware)]), "t").tolist() == [1704067200000]


@pytest.mark.parametrize("df, message", [
    (_df().drop(columns=["user_id"]), "no entity key (of user_order_stats, customer_profile) column 'user_id'"),
    (_df(user_id=[1, 2]), "entity key column 'user_id' is int64; the entity declares it as a string"),
    (_df(event_timestamp=["2024-01-01", "2024-01-02"]), "timestamp column 'event_timestamp' is string, not a timestamp"),
    (_df().rename(columns={"event_timestamp": "event_timestmp"}), "did you mean 'event_timestmp'"),
    (_df(event_timestamp=[D0, None]), "timestamp column 'event_timestamp' has 1 null value(s) (first at row 1)"),
    (_df().iloc[:0], "entity_df is empty"),
    (_df(segment=["a", "b"]), "entity_df columns ['segment'] have the names of output"),
])
def test_bad_input_names_the_column(repo: Repository, df: pd.DataFrame, message: str) -> None:
    with pytest.raises(TrainingInputError) as err:
        _requests(repo, df)
    assert message in str(err.value)


def test_unknown_features_suggest_close_matches(repo: Repository) -> None:
    with pytest.raises(UnknownFeatureError, match="did you mean 'user_orders_last_1h'"):
        build_pit_plan(repo, ["user_order_stats:user_orders_last_1hr"])
    with pytest.raises(UnknownFeatureError, match="churn_model"):
        build_pit_plan(repo, ["churn_modle"])


def test_plan_pulls_in_derived_inputs_and_names_columns(repo: Repository) -> None:
    plan = build_pit_plan(repo, ["user_order_stats:avg_order_value_365d", "customer_profile:segment"])
    stats = plan.views[0]
    assert [a.name for a in stats.aggregations] == ["completed_orders_365d", "customer_ltv_365d"]
    assert plan.output_columns == ("avg_order_value_365d", "segment", "user_order_stats__status", "customer_profile__status")
    assert column_names([("a", "x"), ("b", "x"), ("b", "y")]) == {("a", "x"): "a__x", ("b", "x"): "b__x", ("b", "y"): "y"}


def test_spine_is_entities_times_instants(repo: Repository) -> None:
    plan = build_pit_plan(repo, "churn_model")
    spine = build_spine(plan, "2024-01-01", "2024-01-01T03:00:00Z", "1h", entities=["a", "b"])
    assert spine.column("user_id").to_pylist() == ["a"] * 3 + ["b"] * 3
    assert [t.hour for t in spine.column("event_timestamp").to_pylist()] == [0, 1, 2] * 2
    assert parse_every("15m") == 900_000
    with pytest.raises(TrainingInputError, match="cadence"):
        parse_every("hourly")


# --- the embedded engine on a snapshot view, against the oracle (PyIceberg only) -------------------------


@pytest.mark.parametrize("created_at,evolved,join", [
    (True, False, None), (True, False, True), (True, False, False), (False, False, None), (False, True, None),
    (True, True, None)], ids=["created_at", "created_at-join-path", "created_at-asof-path", "plain",
                              "plain-evolved-schema", "created_at-evolved-schema"])
def test_snapshot_view_equals_the_oracle_at_every_edge(tmp_path: Any, monkeypatch: Any, created_at: bool, evolved: bool,
                                                        join: bool | None) -> None:
    """Rows at sub-millisecond instants (floored, §1), T at and around every row, TTL and forgotten edges.
    A table whose schema changed is read through PyIceberg; otherwise DuckDB reads its Parquet files. With
    created_at, both of the embedded engine's paths (a join within ttl + 7 d, or ASOF joins) and its choice."""
    from pyiceberg.types import StringType

    from skewless.training import duckdb_engine

    monkeypatch.setattr(duckdb_engine, "SNAPSHOT_JOIN", join)

    from skewless.engines.iceberg_catalog import load_catalog
    from skewless.training.sources import parquet_files

    catalog = load_catalog(catalog_db=tmp_path / "c.db", warehouse=tmp_path / "wh")
    catalog.create_namespace("crm")
    user = Entity("user", {"user_id": "string"})
    view = SnapshotView(name="profile", entity=user, ttl=timedelta(days=1),
                        source=TableSource(name="p", schema="customer_profile", table="crm.p", timestamp="event_time",
                                           created_at="created_at" if created_at else None),
                        fields=[Field("credit_score", "int64"), Field("segment", "string")])
    rng = random.Random(3)
    base = 1704067200000
    rows, seen = [], set()
    for _ in range(400):
        u = f"u{rng.randrange(5)}"
        ts = base + rng.randrange(20) * MS_PER_DAY + rng.choice([0, 1, -1, rng.randrange(MS_PER_DAY)])
        created = ts + rng.choice([0, 60_000, 2 * MS_PER_HOUR, 3 * MS_PER_DAY, -MS_PER_HOUR])
        ident = (u, ts, created) if created_at else (u, ts)
        if ident not in seen:  # the contract's one row per (entity, ts[, created_at]) in ms
            seen.add(ident)
            rows.append({"user_id": u, "credit_score": rng.choice([None, rng.randrange(300, 851)]),
                         "segment": rng.choice(["new", "vip"]), "event_time": ts, "created_at": created,
                         "us": rng.choice([0, 0, 1, 999])})  # sub-ms part of the stored timestamps
    schema = pa.schema([("user_id", pa.string()), ("credit_score", pa.int64()), ("segment", pa.string()),
                        ("event_time", pa.timestamp("us", tz="UTC")), ("created_at", pa.timestamp("us", tz="UTC"))])
    data = {k: [r[k] for r in rows] for k in ("user_id", "credit_score", "segment")}
    data.update({k: [from_epoch_ms(r[k]) + timedelta(microseconds=r["us"]) for r in rows]
                 for k in ("event_time", "created_at")})
    table = catalog.create_table("crm.p", schema=schema)
    table.append(pa.table(data, schema=schema))
    if evolved:
        with table.update_schema() as update:
            update.add_column("note", StringType())
    assert (parquet_files(catalog, "crm.p") is None) == evolved
    instants = set()
    for r in rng.sample(rows, 60):
        ttl = MS_PER_DAY
        instants |= {r["event_time"], r["event_time"] - 1, r["created_at"], r["created_at"] - 1, r["event_time"] + ttl,
                     r["event_time"] + ttl + 1, r["event_time"] + ttl + 7 * MS_PER_DAY,
                     r["event_time"] + ttl + 7 * MS_PER_DAY + 1}
    req = [(u, t) for t in sorted(instants) for u in ("u0", "u1", "u2", "u3", "u4", "nobody") if rng.random() < 0.4]
    df = pd.DataFrame({"user_id": [u for u, _ in req],
                       "event_timestamp": pd.to_datetime(np.array([t for _, t in req]), unit="ms", utc=True)})
    store = FeatureStore(Repository.of([view]), catalog=catalog)
    got = store.get_historical_features(df, "profile", progress=False)
    oracle_rows = [{**r, "event_time": data["event_time"][i], "created_at": data["created_at"][i]}
                   for i, r in enumerate(rows)]
    statuses = set()
    for (u, t), score, seg, status in zip(req, got["credit_score"], got["segment"], got["profile__status"]):
        want = oracle.snapshot_row(view, oracle_rows, (u,), t)
        assert (None if score is pd.NA else score, None if seg is pd.NA else seg, status) == \
            (want["credit_score"][0], want["segment"][0], want["segment"][1]), (u, t)
        statuses.add((status, seg is pd.NA))
    assert statuses == {("present", True), ("present", False), ("expired", True)}
    # Arrow in, Arrow out; chunked runs give the same rows in input order
    arrow = store.get_historical_features(pa.Table.from_pandas(df), "profile", progress=False)
    from skewless.training import historical_features

    chunked = historical_features(store.repo, catalog, pa.Table.from_pandas(df), "profile", progress=False, chunk_rows=37)
    assert arrow.to_pylist() == chunked.to_pylist()
    assert arrow.column("profile__status").to_pylist() == got["profile__status"].tolist()


@pytest.mark.parametrize("evolved", [False, True], ids=["parquet", "pyiceberg"])
def test_a_null_created_at_in_the_snapshot_source_is_one_line_naming_the_rows(tmp_path: Any, evolved: bool) -> None:
    """The created_at rule needs every row's created_at: a null one fails before any value is computed, with the
    count (read from the files' statistics or the PyIceberg rows alike)."""
    from pyiceberg.types import StringType

    from skewless.engines.iceberg_catalog import load_catalog
    from skewless.training import TrainingDataError

    catalog = load_catalog(catalog_db=tmp_path / "c.db", warehouse=tmp_path / "wh")
    catalog.create_namespace("crm")
    view = SnapshotView(name="profile", entity=Entity("user", {"user_id": "string"}), ttl=timedelta(days=1),
                        source=TableSource(name="p", schema="customer_profile", table="crm.p", timestamp="event_time",
                                           created_at="created_at"),
                        fields=[Field("credit_score", "int64"), Field("segment", "string")])
    schema = pa.schema([("user_id", pa.string()), ("credit_score", pa.int64()), ("segment", pa.string()),
                        ("event_time", pa.timestamp("us", tz="UTC")), ("created_at", pa.timestamp("us", tz="UTC"))])
    table = catalog.create_table("crm.p", schema=schema)
    table.append(pa.table({"user_id": ["u1", "u2", "u3"], "credit_score": [1, 2, 3], "segment": ["a", "b", "c"],
                           "event_time": [D0, D0, D0], "created_at": [D0, None, None]}, schema=schema))
    if evolved:
        with table.update_schema() as update:
            update.add_column("note", StringType())
    store = FeatureStore(Repository.of([view]), catalog=catalog)
    with pytest.raises(TrainingDataError, match=r"crm\.p of 'profile' has 2 row\(s\) with a null created_at"):
        store.get_historical_features(_df(), "profile", progress=False)


def test_training_set_command_reports_bad_input(tmp_path: Any, capsys: Any) -> None:
    from skewless.cli import main

    path = tmp_path / "entities.parquet"
    pd.DataFrame({"user_id": ["u1"], "ts": [1]}).to_parquet(path)
    out = tmp_path / "train.parquet"
    assert main(["training-set", "--features", "churn_model", "--entities", str(path), "--timestamp-column", "ts",
                 "--out", str(out)]) == 2
    assert "timestamp column 'ts' is int64, not a timestamp" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == [path]
