"""Compilers turn a :class:`~skewless.core.plan.ViewPlan` into something an engine runs.

One module per engine subclasses :class:`Compiler` (Flink for the stream part, Spark for the batch
part). The base class walks the plan's nodes, asks the ``supports`` hooks about each one and turns
every unsupported node into one :class:`UnsupportedFeatureError` naming the engine, view, feature and
what to do, before ``emit`` is called. :class:`ExplainCompiler` renders plans as text for
``skewless plan``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Generic, Iterable, TypeVar

from skewless.core.plan import (
    Derive,
    Filter,
    PlanNode,
    RepositoryPlan,
    Scan,
    ServicePlan,
    SnapshotLookup,
    TileAgg,
    TileAggregate,
    ViewPlan,
    WindowMerge,
    render_expr,
)
from skewless.core.dsl import Where
from skewless.core.timeutil import format_duration

T = TypeVar("T")


@dataclass(frozen=True)
class Unsupported:
    """One node an engine cannot compile."""

    engine: str
    view: str
    feature: str | None
    what: str
    hint: str

    def __str__(self) -> str:
        feature = f" feature '{self.feature}'" if self.feature else ""
        return f"{self.engine} compiler: view '{self.view}'{feature}: {self.what} is not supported; {self.hint}"


class UnsupportedFeatureError(Exception):
    """A plan uses something an engine's compiler cannot compile; lists every such use."""

    def __init__(self, items: Iterable[Unsupported]):
        self.items = tuple(items)
        super().__init__("\n".join(str(i) for i in self.items))


def node_features(node: PlanNode) -> tuple[str, ...]:
    """The features a node computes (empty for scans and filters)."""
    if isinstance(node, (WindowMerge, Derive)):
        return (node.feature,)
    if isinstance(node, TileAggregate):
        return tuple(a.name for a in node.aggregations)
    if isinstance(node, SnapshotLookup):
        return tuple(name for name, _ in node.fields)
    return ()


def describe_node(node: PlanNode) -> str:
    """Short text of a node for messages, e.g. ``Agg.LAST over a lifetime window``."""
    if isinstance(node, WindowMerge):
        window = "a lifetime window" if node.width_ms is None else f"a {format_duration(node.width_ms)} window"
        return f"Agg.{node.agg.name} over {window}"
    if isinstance(node, TileAggregate):
        return f"{format_duration(node.tile_ms)} tiles of {', '.join(f'Agg.{a.agg.name}' for a in node.aggregations)}"
    if isinstance(node, Filter):
        return "filter " + " and ".join(f"{w.field} {getattr(w.op, 'value', w.op)} {w.value!r}" for w in node.predicates)
    if isinstance(node, Derive):
        return f"derived expression {render_expr(node.expr)}"
    if isinstance(node, SnapshotLookup):
        return "snapshot lookup"
    if isinstance(node, Scan):
        return f"scan of source '{node.source}'"
    return type(node).__name__


def offline_nodes(view_plan: ViewPlan) -> list[PlanNode]:
    """What the offline engines (batch, training sets) compile for a view: its scan, every streaming tile
    aggregate (whose tiles they recompute) and the batch aggregate."""
    nodes: list[PlanNode] = [view_plan.scan]
    nodes += [t.aggregate for t in (view_plan.stream.tiles if view_plan.stream else ())]
    if view_plan.batch:
        nodes.append(view_plan.batch.aggregate)
    return nodes


class Compiler(abc.ABC, Generic[T]):
    """Base of the engine compilers. Subclasses set ``engine``, override the ``supports`` hooks and
    ``hint``, optionally ``select`` (which nodes they compile), and implement ``emit``."""

    engine: str = "abstract"

    def select(self, view_plan: ViewPlan) -> Iterable[PlanNode]:
        """The nodes this engine compiles (default: all of them)."""
        return view_plan.nodes()

    def supports(self, node: PlanNode) -> bool:
        """Whether the engine can compile ``node`` as a whole (default: yes)."""
        return True

    def supports_aggregation(self, node: TileAggregate, index: int) -> bool:
        """Whether the engine can compute ``node.aggregations[index]`` in tiles (default: yes)."""
        return True

    def hint(self, node: PlanNode) -> str:
        """What the user can do instead (shown in :class:`UnsupportedFeatureError`)."""
        return "serve the feature from another engine or change its definition"

    def check(self, view_plan: ViewPlan) -> list[Unsupported]:
        """Every unsupported node of the plan (empty if the engine can compile it)."""
        out: list[Unsupported] = []
        for node in self.select(view_plan):
            features = node_features(node) or (None,)
            if not self.supports(node):
                what = describe_node(node)
                out.extend(Unsupported(self.engine, view_plan.name, f, what, self.hint(node)) for f in features)
            elif isinstance(node, TileAggregate):
                for i, a in enumerate(node.aggregations):
                    if not self.supports_aggregation(node, i):
                        out.append(
                            Unsupported(self.engine, view_plan.name, a.name,
                                        f"Agg.{a.agg.name} in {format_duration(node.tile_ms)} tiles", self.hint(node))
                        )
        return out

    def compile(self, view_plan: ViewPlan) -> T:
        """Check every node, then emit; raises :class:`UnsupportedFeatureError` listing all unsupported uses."""
        problems = self.check(view_plan)
        if problems:
            raise UnsupportedFeatureError(problems)
        return self.emit(view_plan)

    @abc.abstractmethod
    def emit(self, view_plan: ViewPlan) -> T:
        """The engine artifact for a plan every node of which is supported."""


class ExplainCompiler(Compiler[str]):
    """Renders a plan as human-readable text (``skewless plan``)."""

    engine = "explain"

    def emit(self, view_plan: ViewPlan) -> str:
        return "\n".join(_render_view(view_plan))

    def explain(self, plan: RepositoryPlan) -> str:
        """The whole repository: every view, then the feature services and notes."""
        parts = [self.compile(v) for v in plan.views]
        parts.append("\n".join(_render_services(plan.services)))
        if plan.notes:
            parts.append("\n".join(["notes"] + [f"  {n}" for n in plan.notes]))
        return "\n\n".join(parts)


# --- text rendering ------------------------------------------------------------------------------


def _where_text(predicates: Iterable[Where]) -> str:
    return " and ".join(f"{w.field} {getattr(w.op, 'value', w.op)} {w.value!r}" for w in predicates)


def _agg_text(a: TileAgg) -> str:
    text = f"{a.agg.name}({a.field or '*'})"
    return f"{text} where {_where_text(a.where)}" if a.where else text


def _table(rows: list[tuple[str, ...]], indent: str) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))] if rows else []
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _render_view(v: ViewPlan) -> list[str]:
    keys = ", ".join(f"{k} {t}" for k, t in v.keys)
    out = [f"{v.kind} {v.name} v{v.version} (entity {v.entity}: {keys})"]
    out.append(f"  fingerprint {v.semantic_fingerprint[:16]} (semantics only: not SLA, expectations, descriptions)")
    s = v.scan
    if v.snapshot is not None:
        tie = f"ties broken by latest {s.created_at}" if s.created_at else "no created_at: duplicate rows are a data error"
        out.append(f"  source {s.source}: table {s.table}, timestamp {s.event_time}, {tie}")
        out.append(f"  snapshot: latest row at or before T, null once older than ttl {format_duration(v.snapshot.ttl_ms)}")
        out.append("  fields")
        out += _table([(name, dtype) for name, dtype in v.snapshot.fields], "    ")
        out.append("  stream: none   batch: load rows of the table as they land")
    else:
        topic = f"topic {s.topic}" if s.topic else "no topic (batch only)"
        out.append(
            f"  source {s.source}: {topic}, table {s.table}; event_time {s.event_time}, event_id {s.event_id}; "
            f"allowed lateness {format_duration(s.allowed_lateness_ms)}, clock skew {format_duration(s.clock_skew_tolerance_ms)}"
        )
        out += _render_features(v)
        out += _render_stream(v)
        out += _render_batch(v)
    out.append("  statuses")
    out += _table([(r.status.value, r.when) for r in v.statuses], "    ")
    meta = v.metadata_form()
    n = len(meta["expectations"])
    out.append(f"  freshness SLA {format_duration(meta['freshness_sla_ms'])}; {n} expectation{'s' if n != 1 else ''}")
    return out


def _render_features(v: ViewPlan) -> list[str]:
    specs = v.tile_aggregations()
    rows = [
        (m.feature, _agg_text(specs[m.feature]), format_duration(m.width_ms), f"tile {format_duration(m.tile_ms)}", m.serving.value)
        for m in v.merges
    ]
    rows += [(d.feature, "= " + render_expr(d.expr), "", "", "derived") for d in v.derives]
    return ["  features"] + _table(rows, "    ")


def _render_stream(v: ViewPlan) -> list[str]:
    if v.stream is None:
        return ["  stream: none (batch-only source)"]
    out = ["  stream"]
    rows = [
        (f"{format_duration(t.tile_ms)} tiles", f"keep {format_duration(t.retention_ms)}", t.purpose,
         ", ".join(a.name for a in t.aggregate.aggregations))
        for t in v.stream.tiles
    ]
    return out + _table(rows, "    ")


def _render_batch(v: ViewPlan) -> list[str]:
    if v.batch is None:
        return ["  batch: nothing to serve online (every window is stream-served)"]
    b = v.batch
    out = [f"  batch: {format_duration(b.tile_ms)} tiles; {b.cutoff_rule}",
           f"    tail: the first {b.tail_days} daily tiles of each window are stored apart from the merged body"]
    rows = [
        (w.feature, "lifetime: body of every day before C, no tail" if w.width_ms is None
         else f"{format_duration(w.width_ms)}: body {w.body_days}d + tail {w.tail_days}d")
        for w in b.windows
    ]
    return out + _table(rows, "    ")


def _render_services(services: Iterable[ServicePlan]) -> list[str]:
    out = ["feature services"]
    for s in services:
        out.append(f"  {s.name}: {len(s.features)} features from {', '.join(s.views)}")
        for view in s.views:
            out.append(f"    {view}: {', '.join(f for vv, f in s.features if vv == view)}")
    return out


__all__ = [
    "Compiler",
    "ExplainCompiler",
    "Unsupported",
    "UnsupportedFeatureError",
    "describe_node",
    "node_features",
]
