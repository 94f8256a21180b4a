"""The engine-neutral point-in-time plan: which views, aggregations and columns a training set needs.

Built from the core plan (:func:`skewless.core.plan.plan_view`) of every view the feature references
touch. Per feature view it keeps the aggregations the requested features need (derived features pull in
their inputs), split by how the contract's window is assembled (docs/training.md, "Algorithm"):

- **stream-served** (W <= 1 day): folded from the offline events of ``[floor(T - W, H), T)``;
- **batch-served** (W > 1 day, lifetime): whole days ``[floor(T - W, 1d), floor(T, 1d))`` from the
  batch path's daily tiles plus the head ``[floor(T, 1d), T)`` from the offline events.

Per snapshot view it keeps the lookup (table, timestamp, created_at, ttl). Engines compile the
:class:`ViewPlan` of each view with their own :class:`~skewless.core.compiler.Compiler` subclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from skewless.core.dsl import Agg, FeatureView, SnapshotView
from skewless.core.expr import closure
from skewless.core.plan import Derive, Serving, TileAgg, ViewPlan, plan_view
from skewless.core.repo import Repository
from skewless.core.sql import invertible_aggs
from skewless.core.staleness import STATUS_SUFFIX
from skewless.offline.spark_compiler import run_fingerprint

INVERTIBLE = invertible_aggs()  # tiles merge by subtraction of prefix sums


class TrainingInputError(ValueError):
    """The entity_df or the arguments cannot give a training set; the message names the column or feature."""


@dataclass(frozen=True)
class AggregationPit:
    """One aggregation a training set computes: its tile spec, window and how the window is assembled."""

    spec: TileAgg
    width_ms: int | None  # None = lifetime
    tile_ms: int
    batch_served: bool

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def agg(self) -> Agg:
        return Agg(self.spec.agg)

    @property
    def width_days(self) -> int | None:
        return None if self.width_ms is None else self.width_ms // 86_400_000


@dataclass(frozen=True)
class OutputColumn:
    """A requested feature and the output column holding it."""

    view: str
    feature: str
    column: str


@dataclass(frozen=True)
class ViewPit:
    """What a training set needs from one view."""

    view: FeatureView | SnapshotView
    plan: ViewPlan
    outputs: tuple[OutputColumn, ...]
    aggregations: tuple[AggregationPit, ...] = ()  # feature views: every aggregation the outputs need
    derives: tuple[Derive, ...] = ()  # feature views: derived features the outputs need, inputs first
    field_types: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def keys(self) -> tuple[tuple[str, str], ...]:
        return self.plan.keys

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.plan.keys)

    @property
    def is_snapshot(self) -> bool:
        return self.plan.snapshot is not None

    @property
    def status_column(self) -> str:
        return f"{self.name}{STATUS_SUFFIX}"

    @property
    def batch_aggregations(self) -> tuple[AggregationPit, ...]:
        return tuple(a for a in self.aggregations if a.batch_served)

    @property
    def stream_aggregations(self) -> tuple[AggregationPit, ...]:
        return tuple(a for a in self.aggregations if not a.batch_served)

    @property
    def computed(self) -> tuple[str, ...]:
        """Every feature the engine computes for this view (aggregations, then derived)."""
        return tuple(a.name for a in self.aggregations) + tuple(d.feature for d in self.derives)


@dataclass(frozen=True)
class PitPlan:
    """The training set's views, their output columns and the entity columns the input must have."""

    views: tuple[ViewPit, ...]

    @property
    def outputs(self) -> tuple[OutputColumn, ...]:
        return tuple(o for v in self.views for o in v.outputs)

    @property
    def key_columns(self) -> dict[str, str]:
        """Join key -> type ("string" | "int64") over every view."""
        out: dict[str, str] = {}
        for v in self.views:
            for k, t in v.keys:
                out.setdefault(k, t)
        return out

    @property
    def output_columns(self) -> tuple[str, ...]:
        """Feature columns, then one status column per view, in that order."""
        return tuple(o.column for o in self.outputs) + tuple(v.status_column for v in self.views)


def _feature_view_pit(view: FeatureView, plan: ViewPlan, outputs: tuple[OutputColumn, ...],
                      field_types: dict[str, str]) -> ViewPit:
    needed = closure((o.feature for o in outputs), {d.feature: d.expr for d in plan.derives})
    specs = plan.tile_aggregations()
    aggs = tuple(
        AggregationPit(specs[m.feature], m.width_ms, m.tile_ms, m.serving is Serving.BATCH_AND_STREAM)
        for m in plan.merges if m.feature in needed
    )
    return ViewPit(view, plan, outputs, aggs, tuple(d for d in plan.derives if d.feature in needed), field_types)


def column_names(pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Output column per (view, feature): the feature name, or ``view__feature`` when two selected views
    share the feature name."""
    counts: dict[str, int] = {}
    for _, f in pairs:
        counts[f] = counts.get(f, 0) + 1
    return {(v, f): (f if counts[f] == 1 else f"{v}__{f}") for v, f in pairs}


def check_versions_explicit(repo: Repository, triples: Sequence[tuple[Any, str, bool]]) -> None:
    """A training set names the version of a view declared in two (an upgrade; docs/streaming.md): the versions
    differ in meaning, and which one serves online is a switch in the online store, not part of the definitions."""
    for view, feature, pinned in triples:
        if not pinned and repo.is_upgrading(view.name):
            declared = [v.version for v in repo.versions(view.name)]
            raise TrainingInputError(
                f"feature view {view.name!r} is declared in versions {', '.join(f'v{n}' for n in declared)} (an upgrade): "
                f"a training set names the version, e.g. '{view.name}@v{declared[-1]}:{feature}' or "
                f"'{view.name}@v{declared[-1]}'")
    seen: dict[str, int] = {}
    for view, _, _ in triples:
        if seen.setdefault(view.name, view.version) != view.version:
            raise TrainingInputError(f"the features name two versions of view {view.name!r} (v{seen[view.name]} and "
                                     f"v{view.version}); build one training set per version")


def build_pit_plan(repo: Repository, features: Any) -> PitPlan:
    """The plan for feature references (``view:feature``, ``view``, a service or its name).

    Raises :class:`~skewless.core.repo.UnknownFeatureError` for unknown references (with close matches).
    """
    triples = repo.resolve_versions(features)
    if not triples:
        raise TrainingInputError("no features requested: pass 'view:feature' references, view names or a feature service")
    check_versions_explicit(repo, triples)
    resolved = [(v, f) for v, f, _ in triples]
    names = column_names([(v.name, f) for v, f in resolved])
    by_view: dict[str, list[OutputColumn]] = {}
    views: dict[str, Any] = {}
    for v, f in resolved:
        views[v.name] = v
        by_view.setdefault(v.name, []).append(OutputColumn(v.name, f, names[(v.name, f)]))
    out: list[ViewPit] = []
    for name, outputs in by_view.items():
        view = views[name]
        plan = plan_view(view)
        if isinstance(view, FeatureView):
            schema = repo.try_schema(view.source.schema)
            types = {f.name: f.type for f in schema.fields} if schema else {}
            out.append(_feature_view_pit(view, plan, tuple(outputs), types))
        else:
            out.append(ViewPit(view, plan, tuple(outputs)))
    return PitPlan(tuple(out))


def batch_run_fingerprint(pit: ViewPit) -> str:
    """The fingerprint the batch path's runs log records for this view's tiles."""
    return run_fingerprint(pit.plan.semantic_fingerprint)
