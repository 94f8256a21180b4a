"""The engine-neutral plan (skewless.core.plan) and the compiler base (skewless.core.compiler)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from skewless import Agg, Aggregation, Expectation, FeatureView, Where, Window
from skewless.core.compiler import Compiler, ExplainCompiler, UnsupportedFeatureError
from skewless.core.plan import (
    BatchWindow,
    Derive,
    Filter,
    PlanNode,
    Scan,
    Serving,
    SnapshotLookup,
    Status,
    TileAggregate,
    ViewPlan,
    WindowMerge,
    build_plan,
    plan_view,
)
from skewless.core.repo import load_repository
from skewless.core.routing import BATCH_TAIL_DAYS, STREAM_DAILY_TILE_RETENTION_MS
from skewless.core.timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def repo():
    return load_repository(ROOT / "feature_defs")


@pytest.fixture(scope="module")
def plan(repo):
    return build_plan(repo)


@pytest.fixture(scope="module")
def orders_view(repo) -> FeatureView:
    return repo.view("user_order_stats")


def test_nodes_are_immutable_and_hashable(plan) -> None:
    for vp in plan.views:
        hash(vp)
        for node in vp.nodes():
            hash(node)
            with pytest.raises(AttributeError):
                node.__setattr__("x", 1)  # frozen
    assert build_plan(load_repository(ROOT / "feature_defs")) == plan


def test_stream_part_tiles_and_retention(plan) -> None:
    vp = plan.view("user_order_stats")
    tiles = {t.tile_ms: t for t in vp.stream.tiles}
    assert set(tiles) == {5 * MS_PER_MINUTE, MS_PER_DAY}
    five = tiles[5 * MS_PER_MINUTE]
    assert [a.name for a in five.aggregate.aggregations] == ["user_orders_last_1h"]
    assert five.retention_ms == MS_PER_HOUR + 5 * MS_PER_MINUTE
    daily = tiles[MS_PER_DAY]
    assert daily.retention_ms == STREAM_DAILY_TILE_RETENTION_MS
    assert "user_order_stats" == daily.aggregate.view and daily.aggregate.keys == ("user_id",)
    assert {a.name for a in daily.aggregate.aggregations} == {
        "max_order_amount_7d", "cancelled_orders_30d", "refunded_orders_90d", "user_total_orders_365d",
        "completed_orders_365d", "customer_ltv_365d", "last_order_ts", "last_order_status"}


def test_batch_part_body_and_tail(plan) -> None:
    b = plan.view("user_order_stats").batch
    assert b.tile_ms == MS_PER_DAY and b.tail_days == BATCH_TAIL_DAYS
    windows = {w.feature: w for w in b.windows}
    assert windows["user_total_orders_365d"] == BatchWindow("user_total_orders_365d", 365 * MS_PER_DAY, 363, 2)
    assert windows["max_order_amount_7d"].body_days == 5
    assert windows["last_order_ts"] == BatchWindow("last_order_ts", None, None, 0)
    assert "user_orders_last_1h" not in windows
    assert "D+1 00:00 UTC" in b.cutoff_rule


def test_merges_and_derives(plan) -> None:
    vp = plan.view("user_order_stats")
    merges = {m.feature: m for m in vp.merges}
    assert merges["user_orders_last_1h"] == WindowMerge("user_orders_last_1h", MS_PER_HOUR, 5 * MS_PER_MINUTE, Agg.COUNT, Serving.STREAM)
    assert merges["last_order_ts"].serving is Serving.BATCH_AND_STREAM and merges["last_order_ts"].width_ms is None
    assert [d.feature for d in vp.derives] == ["avg_order_value_365d", "days_since_last_order"]
    kinds = [type(n) for n in vp.nodes()]
    assert kinds[0] is Scan and Filter in kinds and kinds.index(TileAggregate) < kinds.index(WindowMerge) < kinds.index(Derive)


def test_statuses(plan) -> None:
    fv = {r.status for r in plan.view("user_order_stats").statuses}
    assert fv == {Status.OK, Status.STALE, Status.INCOMPLETE}
    sv = plan.view("customer_profile")
    assert {r.status for r in sv.statuses} == {Status.OK, Status.STALE}
    assert sv.stream is None and sv.batch is None and isinstance(sv.snapshot, SnapshotLookup)
    assert sv.snapshot.ttl_ms == MS_PER_DAY


def test_stream_only_view_has_no_incomplete_status(orders_view) -> None:
    view = replace(orders_view, features=[orders_view.features[0]], expectations=[])
    vp = plan_view(view)
    assert vp.batch is None
    assert {r.status for r in vp.statuses} == {Status.OK, Status.STALE}


def test_batch_only_source_has_no_stream_part(orders_view) -> None:
    view = replace(orders_view, source=replace(orders_view.source, topic=None), features=orders_view.features[4:6])
    assert plan_view(view).stream is None


def test_derived_features_are_ordered_by_dependency(orders_view) -> None:
    from skewless import Derived, Ref

    feats = list(orders_view.features) + [Derived("aov_x2", Ref("aov_plus") * 2), Derived("aov_plus", Ref("avg_order_value_365d") + 1)]
    vp = plan_view(replace(orders_view, features=feats, expectations=[]))
    order = [d.feature for d in vp.derives]
    assert order.index("avg_order_value_365d") < order.index("aov_plus") < order.index("aov_x2")


# --- fingerprint ---------------------------------------------------------------------------------


def fp(view) -> str:
    return plan_view(view).semantic_fingerprint


def test_fingerprint_ignores_sla_expectations_descriptions_and_order(orders_view) -> None:
    base = fp(orders_view)
    assert len(base) == 64
    assert fp(replace(orders_view, freshness_sla=timedelta(hours=1))) == base
    assert fp(replace(orders_view, expectations=[Expectation.not_null("last_order_ts")])) == base
    assert fp(replace(orders_view, description="other", block_materialization_on_failed_checks=False)) == base
    assert fp(replace(orders_view, version=7)) == base
    assert fp(replace(orders_view, features=list(reversed(orders_view.features)))) == base
    described = [replace(f, description="x") for f in orders_view.features]
    assert fp(replace(orders_view, features=described)) == base
    assert fp(replace(orders_view, entity=replace(orders_view.entity, description="x"))) == base
    assert fp(replace(orders_view, source=replace(orders_view.source, description="x", topic="orders_v2"))) == base


def _change_feature(view, feature, **kw):
    return replace(view, features=[replace(f, **kw) if f.name == feature else f for f in view.features])


@pytest.mark.parametrize(
    "change",
    [
        lambda v: _change_feature(v, "max_order_amount_7d", window=Window.days(14)),
        lambda v: _change_feature(v, "user_orders_last_1h", window=Window.hours(1).with_tile(timedelta(minutes=1))),
        lambda v: _change_feature(v, "max_order_amount_7d", agg=Agg.MIN),
        lambda v: _change_feature(v, "customer_ltv_365d", where=(Where("status", "==", "placed"),)),
        lambda v: _change_feature(v, "user_orders_last_1h", where=()),
        lambda v: _change_feature(v, "avg_order_value_365d", expr=v.feature("avg_order_value_365d").expr * 100),
        lambda v: _change_feature(v, "user_orders_last_1h", name="orders_last_1h"),
        lambda v: replace(v, features=list(v.features) + [Aggregation("orders_2h", Agg.COUNT, None, Window.hours(2))]),
        lambda v: replace(v, features=list(v.features)[1:]),
        lambda v: replace(v, source=replace(v.source, allowed_lateness=timedelta(hours=2))),
        lambda v: replace(v, source=replace(v.source, clock_skew_tolerance=timedelta(minutes=1))),
        lambda v: replace(v, source=replace(v.source, event_id="order_id")),
        lambda v: replace(v, entity=replace(v.entity, join_keys={"order_id": "string"})),
    ],
)
def test_fingerprint_changes_with_semantics(orders_view, change) -> None:
    assert fp(change(orders_view)) != fp(orders_view)


def test_fingerprint_distinguishes_value_types(orders_view) -> None:
    a = _change_feature(orders_view, "max_order_amount_7d", where=(Where("amount", ">", 1),))
    b = _change_feature(orders_view, "max_order_amount_7d", where=(Where("amount", ">", 1.0),))
    assert fp(a) != fp(b)


def test_snapshot_fingerprint(repo) -> None:
    view = repo.view("customer_profile")
    assert fp(replace(view, ttl=timedelta(days=2))) != fp(view)
    assert fp(replace(view, freshness_sla=timedelta(hours=1))) == fp(view)
    assert fp(replace(view, source=replace(view.source, created_at=None))) != fp(view)


# --- compiler base -------------------------------------------------------------------------------


class NoLifetimeCompiler(Compiler[list]):
    """A test engine: no aggregation over lifetime windows, no LAST in tiles, no derived features."""

    engine = "toy"

    def supports(self, node: PlanNode) -> bool:
        if isinstance(node, WindowMerge):
            return node.width_ms is not None
        return not isinstance(node, Derive)

    def supports_aggregation(self, node: TileAggregate, index: int) -> bool:
        return node.aggregations[index].agg is not Agg.LAST

    def hint(self, node: PlanNode) -> str:
        return "serve it from batch or use a bounded window"

    def emit(self, view_plan: ViewPlan) -> list:
        return list(view_plan.nodes())


def test_compiler_names_engine_view_feature_and_fix(plan) -> None:
    with pytest.raises(UnsupportedFeatureError) as info:
        NoLifetimeCompiler().compile(plan.view("user_order_stats"))
    msg = str(info.value)
    assert "toy compiler: view 'user_order_stats' feature 'last_order_ts': Agg.MAX over a lifetime window is not supported; serve it from batch" in msg
    assert "feature 'last_order_status': Agg.LAST in 1d tiles" in msg
    assert "feature 'days_since_last_order': derived expression days_since(last_order_ts)" in msg
    features = {i.feature for i in info.value.items}
    assert {"last_order_ts", "last_order_status", "avg_order_value_365d", "days_since_last_order"} <= features
    assert all(i.engine == "toy" and i.view == "user_order_stats" for i in info.value.items)


def test_compiler_emits_when_everything_is_supported(plan) -> None:
    nodes = NoLifetimeCompiler().compile(plan.view("customer_profile"))
    assert isinstance(nodes[-1], SnapshotLookup)


def test_compiler_select_limits_what_is_checked(plan) -> None:
    class StreamOnly(NoLifetimeCompiler):
        def select(self, view_plan):
            return [t.aggregate for t in view_plan.stream.tiles if t.tile_ms < MS_PER_DAY]

    assert StreamOnly().check(plan.view("user_order_stats")) == []


def test_compiler_is_abstract() -> None:
    with pytest.raises(TypeError):
        Compiler()  # type: ignore[abstract]


def test_explain_compiler_renders_every_feature_and_part(plan) -> None:
    text = ExplainCompiler().explain(plan)
    for needle in ("feature view user_order_stats v1", "snapshot view customer_profile v1", "5m tiles", "keep 1h5m",
                   "1d tiles", "keep 4d", "body 363d + tail 2d", "incomplete", "stale", "feature services",
                   "churn_model: 9 features from user_order_stats, customer_profile"):
        assert needle in text, needle
    for vp in plan.views:
        for m in vp.merges:
            assert m.feature in text
