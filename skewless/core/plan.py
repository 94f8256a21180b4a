"""The engine-neutral plan: what streaming and batch must compute for each view.

Plans are trees of immutable, hashable nodes (ibis/Chronon style). Engine compilers
(:mod:`skewless.core.compiler`) walk them; nothing here knows Flink or Spark.

Per feature view: ``Scan`` the source, ``Filter`` events per aggregation, ``TileAggregate`` them into
epoch-aligned tiles (the stream keeps each window's own tile size for stream-served windows and daily
tiles after the batch cut-off for the others; batch writes daily tiles split into body and tail, see
:mod:`skewless.core.routing`), ``WindowMerge`` tiles into each feature's window at the request instant,
and ``Derive`` the derived features. A ``semantic_fingerprint`` identifies what the values mean.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Iterator, Mapping, Union

from skewless.core.dsl import (
    Agg,
    Aggregation,
    BinOp,
    Const,
    DaysSince,
    EventSource,
    FeatureView,
    Ref,
    SnapshotView,
    Where,
)
from skewless.core.expr import derived_order
from skewless.core.repo import Repository
from skewless.core.routing import (
    BATCH_TAIL_DAYS,
    BATCH_TILE_MS,
    STREAM_DAILY_TILE_RETENTION_MS,
    is_stream_served,
)
from skewless.core.timeutil import MS_PER_DAY, format_duration, td_ms, to_epoch_ms
from skewless.core.validation import effective_tile_ms, iter_notes

Expr = Union[Ref, Const, BinOp, DaysSince]


class Serving(str, enum.Enum):
    """Which engines produce a feature's online value."""

    STREAM = "stream"  # width <= 1 day: the stream's tiles alone
    BATCH_AND_STREAM = "batch+stream"  # wider or lifetime: batch body/tail + the stream's daily tiles after the cut-off
    SNAPSHOT = "snapshot"  # a table source's latest row within the TTL


class Status(str, enum.Enum):
    """Serving statuses an online read can report for a view."""

    OK = "ok"
    STALE = "stale"
    INCOMPLETE = "incomplete"


# --- nodes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scan:
    """Read a source: its events (event source) or rows (table source)."""

    source: str
    table: str
    topic: str | None = None
    event_time: str = "event_time"
    event_id: str | None = "event_id"
    allowed_lateness_ms: int = 0
    clock_skew_tolerance_ms: int = 0
    created_at: str | None = None


@dataclass(frozen=True)
class Filter:
    """Keep events passing every predicate (AND); a null field never passes."""

    predicates: tuple[Where, ...]


@dataclass(frozen=True)
class TileAgg:
    """One aggregation computed per tile: ``name`` is the feature, ``field`` None counts events."""

    name: str
    agg: Agg
    field: str | None
    where: tuple[Where, ...] = ()


@dataclass(frozen=True)
class TileAggregate:
    """Aggregate events per entity into epoch-aligned tiles of ``tile_ms``."""

    view: str
    keys: tuple[str, ...]
    tile_ms: int
    aggregations: tuple[TileAgg, ...]


@dataclass(frozen=True)
class WindowMerge:
    """Merge the tiles of ``[floor(T - width, tile), T)`` into the feature's value (lifetime: width None)."""

    feature: str
    width_ms: int | None
    tile_ms: int
    agg: Agg
    serving: Serving


@dataclass(frozen=True)
class Derive:
    """Compute a derived feature from other features of the view at the request instant."""

    feature: str
    expr: Expr


@dataclass(frozen=True)
class SnapshotLookup:
    """The latest row with ``timestamp <= T`` (ties: greatest ``created_at``), if younger than ``ttl_ms``."""

    view: str
    keys: tuple[str, ...]
    fields: tuple[tuple[str, str], ...]
    ttl_ms: int


PlanNode = Union[Scan, Filter, TileAggregate, WindowMerge, Derive, SnapshotLookup]


# --- view plans ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamTiles:
    """Tiles of one size the stream maintains, and how long they are kept."""

    tile_ms: int
    retention_ms: int
    aggregate: TileAggregate
    purpose: str  # "stream-served windows" and/or "after the batch cut-off"


@dataclass(frozen=True)
class StreamPart:
    """What the streaming job maintains for a view (empty for batch-only sources)."""

    tiles: tuple[StreamTiles, ...]


@dataclass(frozen=True)
class BatchWindow:
    """A batch-served window: body days merged into one partial, tail days stored as separate tiles."""

    feature: str
    width_ms: int | None
    body_days: int | None  # None for lifetime: every day before the cut-off
    tail_days: int


@dataclass(frozen=True)
class BatchPart:
    """What the batch job writes for a view for day D: daily tiles up to the cut-off ``C = D+1 00:00 UTC``."""

    aggregate: TileAggregate
    windows: tuple[BatchWindow, ...]
    tile_ms: int = BATCH_TILE_MS
    tail_days: int = BATCH_TAIL_DAYS
    cutoff_rule: str = "run for day D covers events with event_time < C = D+1 00:00 UTC; the stream serves [C, T)"


@dataclass(frozen=True)
class StatusRule:
    status: Status
    when: str


@dataclass(frozen=True)
class ViewPlan:
    """Everything engines need to know about one view, plus its semantic fingerprint."""

    name: str
    kind: str  # "feature view" | "snapshot view"
    version: int
    entity: str
    keys: tuple[tuple[str, str], ...]
    scan: Scan
    stream: StreamPart | None
    batch: BatchPart | None
    merges: tuple[WindowMerge, ...]
    derives: tuple[Derive, ...]
    snapshot: SnapshotLookup | None
    statuses: tuple[StatusRule, ...]
    semantic_fingerprint: str
    canonical: str  # canonical JSON of the semantics the fingerprint covers
    metadata: str  # canonical JSON of what the fingerprint leaves out (SLA, expectations)

    def nodes(self) -> Iterator[PlanNode]:
        """Every node, inputs first: scan, filters, tile aggregates, merges, derives, snapshot lookup."""
        yield self.scan
        seen: set[tuple[Where, ...]] = set()
        aggregates = [t.aggregate for t in (self.stream.tiles if self.stream else ())]
        if self.batch:
            aggregates.append(self.batch.aggregate)
        for aggregate in aggregates:
            for a in aggregate.aggregations:
                if a.where and a.where not in seen:
                    seen.add(a.where)
                    yield Filter(a.where)
        yield from aggregates
        yield from self.merges
        yield from self.derives
        if self.snapshot:
            yield self.snapshot

    def tile_aggregations(self) -> dict[str, TileAgg]:
        """Every aggregation's tile spec by feature (the stream's tiles, then the batch's), in that order."""
        specs: dict[str, TileAgg] = {}
        aggregates = [t.aggregate for t in (self.stream.tiles if self.stream else ())]
        for aggregate in aggregates + ([self.batch.aggregate] if self.batch else []):
            for a in aggregate.aggregations:
                specs.setdefault(a.name, a)
        return specs

    def canonical_form(self) -> dict[str, Any]:
        return json.loads(self.canonical)

    def metadata_form(self) -> dict[str, Any]:
        return json.loads(self.metadata)


@dataclass(frozen=True)
class ServicePlan:
    name: str
    features: tuple[tuple[str, str], ...]  # (view, feature)

    @property
    def views(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v for v, _ in self.features))


@dataclass(frozen=True)
class RepositoryPlan:
    views: tuple[ViewPlan, ...]
    services: tuple[ServicePlan, ...]
    notes: tuple[str, ...] = ()

    def view(self, name: str) -> ViewPlan:
        for v in self.views:
            if v.name == name:
                return v
        raise KeyError(name)


# --- canonical form ------------------------------------------------------------------------------


def _value(v: Any) -> Any:
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        return {"float": repr(v)}
    if isinstance(v, Decimal):
        return {"decimal": str(v)}
    if isinstance(v, datetime):
        return {"timestamp_ms": to_epoch_ms(v)}
    if isinstance(v, timedelta):
        return {"duration_ms": td_ms(v)}
    if isinstance(v, (tuple, list)):
        return [_value(x) for x in v]
    return {"repr": repr(v)}


def _where(ws: tuple[Where, ...]) -> list[Any]:
    return sorted(([w.field, _value(w.op), _value(w.value)] for w in ws), key=json.dumps)


def canonical_expr(expr: Any) -> Any:
    """An expression as nested lists, e.g. ``["/", ["ref", "a"], ["ref", "b"]]``."""
    if isinstance(expr, Ref):
        return ["ref", expr.feature]
    if isinstance(expr, Const):
        return ["const", _value(expr.value)]
    if isinstance(expr, BinOp):
        return [expr.op, canonical_expr(expr.left), canonical_expr(expr.right)]
    if isinstance(expr, DaysSince):
        return ["days_since", canonical_expr(expr.ts)]
    return ["?", repr(expr)]


def render_expr(expr: Any) -> str:
    """An expression as text, e.g. ``customer_ltv_365d / completed_orders_365d``."""
    if isinstance(expr, Ref):
        return expr.feature
    if isinstance(expr, Const):
        return repr(expr.value)
    if isinstance(expr, BinOp):
        def side(e: Any) -> str:
            return f"({render_expr(e)})" if isinstance(e, BinOp) else render_expr(e)
        return f"{side(expr.left)} {expr.op} {side(expr.right)}"
    if isinstance(expr, DaysSince):
        return f"days_since({render_expr(expr.ts)})"
    return repr(expr)


def _keys(view: Any) -> list[list[str]]:
    return [[k, _value(t)] for k, t in view.entity.join_keys]


def read_fields(v: FeatureView) -> list[str]:
    """Every source field a feature view reads: join keys, event time and id, aggregated and filtered fields."""
    names = [*v.entity.key_names, v.source.event_time, v.source.event_id]
    for f in v.features:
        if isinstance(f, Aggregation):
            names += [f.field] if f.field else []
            names += [w.field for w in f.where]
    return sorted(set(names))


def _canonical_feature_view(v: FeatureView, field_types: Mapping[str, str] | None) -> dict[str, Any]:
    s = v.source
    features: dict[str, Any] = {}
    for f in v.features:
        if isinstance(f, Aggregation):
            width = td_ms(f.window.width) if f.window.width is not None else None
            features[f.name] = {
                "agg": _value(f.agg),
                "field": f.field,
                "window": {"width_ms": width, "tile_ms": effective_tile_ms(f.window)},
                "where": _where(f.where),
            }
        else:
            features[f.name] = {"derived": canonical_expr(f.expr)}
    canonical = {
        "kind": "feature view",
        "keys": _keys(v),
        "source": {
            "event_time": s.event_time,
            "event_id": s.event_id,
            "allowed_lateness_ms": td_ms(s.allowed_lateness),
            "clock_skew_tolerance_ms": td_ms(s.clock_skew_tolerance),
        },
        "features": features,
    }
    if field_types is not None:  # e.g. amount int64 -> decimal changes what a SUM means
        canonical["field_types"] = {name: field_types.get(name) for name in read_fields(v)}
    return canonical


def _canonical_snapshot_view(v: SnapshotView) -> dict[str, Any]:
    return {
        "kind": "snapshot view",
        "keys": _keys(v),
        "source": {"timestamp": v.source.timestamp, "created_at": v.source.created_at},
        "features": {f.name: {"dtype": f.dtype} for f in v.fields},
        "ttl_ms": td_ms(v.ttl),
    }


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def semantic_fingerprint(canonical: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no whitespace)."""
    return hashlib.sha256(_dumps(canonical).encode()).hexdigest()


def _metadata(v: Any) -> dict[str, Any]:
    return {
        "freshness_sla_ms": td_ms(v.freshness_sla),
        "expectations": sorted(
            f"{e.check.value}({e.feature}{''.join(f', {k}={_dumps(_value(a))}' for k, a in e.args)})" for e in v.expectations
        ),
        "block_materialization_on_failed_checks": bool(v.block_materialization_on_failed_checks),
    }


# --- building ------------------------------------------------------------------------------------


def _plan_feature_view(v: FeatureView, field_types: Mapping[str, str] | None) -> ViewPlan:
    s: EventSource = v.source
    keys = v.entity.key_names
    aggs = [f for f in v.features if isinstance(f, Aggregation)]
    merges: list[WindowMerge] = []
    stream_aggs: dict[int, list[tuple[TileAgg, int, str]]] = {}
    batch_aggs: list[TileAgg] = []
    batch_windows: list[BatchWindow] = []
    for f in aggs:
        width = td_ms(f.window.width) if f.window.width is not None else None
        tile = effective_tile_ms(f.window)
        spec = TileAgg(f.name, f.agg, f.field, f.where)
        if is_stream_served(width):
            merges.append(WindowMerge(f.name, width, tile, f.agg, Serving.STREAM))
            stream_aggs.setdefault(tile, []).append((spec, width + tile, "stream-served windows"))
        else:
            merges.append(WindowMerge(f.name, width, BATCH_TILE_MS, f.agg, Serving.BATCH_AND_STREAM))
            stream_aggs.setdefault(BATCH_TILE_MS, []).append((spec, STREAM_DAILY_TILE_RETENTION_MS, "after the batch cut-off"))
            batch_aggs.append(spec)
            days = None if width is None else width // MS_PER_DAY
            tail = 0 if days is None else min(BATCH_TAIL_DAYS, days)
            batch_windows.append(BatchWindow(f.name, width, None if days is None else days - tail, tail))
    stream = None
    if not s.is_batch_only:
        tiles = []
        for tile in sorted(stream_aggs):
            entries = stream_aggs[tile]
            purpose = " + ".join(dict.fromkeys(p for _, _, p in entries))
            aggregate = TileAggregate(v.name, keys, tile, tuple(spec for spec, _, _ in entries))
            tiles.append(StreamTiles(tile, max(r for _, r, _ in entries), aggregate, purpose))
        stream = StreamPart(tuple(tiles))
    batch = None
    if batch_aggs:
        batch = BatchPart(TileAggregate(v.name, keys, BATCH_TILE_MS, tuple(batch_aggs)), tuple(batch_windows))
    sla = format_duration(td_ms(v.freshness_sla))
    statuses = [StatusRule(Status.OK, "fresh and complete")]
    stale_when = [f"the newest applied event is older than the freshness SLA {sla}"]
    if any(w.width_ms is None for w in batch_windows):
        stale_when.append(f"lifetime windows while the batch is more than {BATCH_TAIL_DAYS} days late (exact but old)")
    statuses.append(StatusRule(Status.STALE, "; ".join(stale_when)))
    bounded = [w.feature for w in batch_windows if w.width_ms is not None]
    if bounded:
        statuses.append(
            StatusRule(
                Status.INCOMPLETE,
                f"batch more than {BATCH_TAIL_DAYS} days late: the window start moved past the tail ({', '.join(bounded)})",
            )
        )
    canonical = _canonical_feature_view(v, field_types)
    return ViewPlan(
        name=v.name,
        kind="feature view",
        version=v.version,
        entity=v.entity.name,
        keys=tuple((k, str(_value(t))) for k, t in v.entity.join_keys),
        scan=Scan(s.name, s.table, s.topic, s.event_time, s.event_id, td_ms(s.allowed_lateness), td_ms(s.clock_skew_tolerance)),
        stream=stream,
        batch=batch,
        merges=tuple(merges),
        derives=tuple(Derive(d.name, d.expr) for d in derived_order(v)),
        snapshot=None,
        statuses=tuple(statuses),
        semantic_fingerprint=semantic_fingerprint(canonical),
        canonical=_dumps(canonical),
        metadata=_dumps(_metadata(v)),
    )


def _plan_snapshot_view(v: SnapshotView) -> ViewPlan:
    s = v.source
    canonical = _canonical_snapshot_view(v)
    sla = format_duration(td_ms(v.freshness_sla))
    return ViewPlan(
        name=v.name,
        kind="snapshot view",
        version=v.version,
        entity=v.entity.name,
        keys=tuple((k, str(_value(t))) for k, t in v.entity.join_keys),
        scan=Scan(s.name, s.table, None, s.timestamp, None, 0, 0, s.created_at),
        stream=None,
        batch=None,
        merges=(),
        derives=(),
        snapshot=SnapshotLookup(v.name, v.entity.key_names, tuple((f.name, f.dtype) for f in v.fields), td_ms(v.ttl)),
        statuses=(
            StatusRule(Status.OK, f"a row younger than the ttl {format_duration(td_ms(v.ttl))} (older rows give null values)"),
            StatusRule(Status.STALE, f"the newest loaded row is older than the freshness SLA {sla}"),
        ),
        semantic_fingerprint=semantic_fingerprint(canonical),
        canonical=_dumps(canonical),
        metadata=_dumps(_metadata(v)),
    )


def plan_view(view: FeatureView | SnapshotView, field_types: Mapping[str, str] | None = None) -> ViewPlan:
    """The plan of one (valid) view. ``field_types`` (source field name -> type) puts the types of the fields
    a feature view reads into its fingerprint (:func:`build_plan` and the batch compiler give them; a snapshot
    view's dtypes are part of it anyway)."""
    return _plan_feature_view(view, field_types) if isinstance(view, FeatureView) else _plan_snapshot_view(view)


def source_field_types(repo: Repository, view: FeatureView | SnapshotView) -> dict[str, str] | None:
    """Field name -> type of the view's source schema (None if it cannot be read)."""
    schema = repo.try_schema(view.source.schema)
    return None if schema is None else {f.name: f.type for f in schema.fields}


def build_plan(repo: Repository) -> RepositoryPlan:
    """The plan of a validated repository (see :func:`skewless.core.repo.load_repository`)."""
    views = tuple(plan_view(v, source_field_types(repo, v)) for v in sorted(repo.views, key=lambda v: (v.name, v.version)))
    services = tuple(
        ServicePlan(s.name, tuple((v.name, f) for v, f in repo.resolve_features(s)))
        for s in sorted(repo.services, key=lambda s: s.name)
    )
    return RepositoryPlan(views, services, tuple(iter_notes(repo)))
