"""What both training-set compilers share (one compiler module per engine builds on this)."""

from __future__ import annotations

import abc
from typing import Callable, TypeVar

from skewless.core.compiler import Compiler, offline_nodes
from skewless.core.expr import closure
from skewless.core.plan import PlanNode, Scan, TileAggregate, ViewPlan
from skewless.core.sql import Dialect, derived_sql, fold_sql, int64_range, law_sql
from skewless.training.plan import AggregationPit, ViewPit
from skewless.training.requests import T

PRESENT, EXPIRED, INCOMPLETE = "present", "expired", "incomplete"
UNNEST_MAX_DAYS = 31  # windowed MIN/MAX/LAST over tiles: up to this many days per request, one row per day

Out = TypeVar("Out")


class TrainingCompiler(Compiler[Out], abc.ABC):
    """Compiles the part of a view's plan a training set needs: the scan, the stream and batch tile
    aggregates (read as raw-event range folds and daily-tile prefixes) and, for snapshot views, the lookup."""

    def __init__(self, pit: ViewPit):
        self.pit = pit

    def select(self, view_plan: ViewPlan) -> list[PlanNode]:
        return offline_nodes(view_plan)

    def supports(self, node: PlanNode) -> bool:
        if isinstance(node, Scan) and not self.pit.is_snapshot:
            return node.event_id is not None
        return True

    def supports_aggregation(self, node: TileAggregate, index: int) -> bool:
        a = node.aggregations[index]
        known = set(self.pit.field_types) | {self.pit.plan.scan.event_time}
        return (a.field is None or a.field in known) and all(w.field in known for w in a.where)

    def hint(self, node: PlanNode) -> str:
        return "declare every field the feature reads (and filters on) in the source's JSON Schema"

    def emit(self, view_plan: ViewPlan) -> Out:
        return self._snapshot(view_plan) if self.pit.is_snapshot else self._feature_view(view_plan)

    # --- SQL both engines build the same way (their dialect and the columns' places differ) ---------------

    def _fold_columns(self, d: Dialect, day_start: str) -> list[str]:
        """Per aggregation, its intermediate's parts over the offline events ``e`` of the request ``r``'s days
        before ``T`` from the head day (``day_start``, batch-served) or the window's first tile (stream-served)."""
        cols = []
        for a in self.pit.aggregations:
            start = day_start if a.batch_served else f"r.{d.quote('s__' + a.name)}"
            for prefix, sql in fold_sql(d, a.agg, f"e.{d.quote('c__' + a.name)}", f"e.__ts >= {start}",
                                        ts="e.__ts", partition="e.__partition", offset="e.__offset",
                                        decimal=self._decimal(a)):
                cols.append(f"{sql} AS {d.quote(prefix + a.name)}")
        return cols

    def _decimal(self, a: AggregationPit) -> bool:
        return self.pit.field_types.get(a.spec.field or "") == "decimal"

    def _output_columns(self, d: Dialect, running: Callable[[str, str], str],
                        framed: frozenset[str] = frozenset()) -> list[str]:
        """The output and status columns over the requests ``r``, the event folds ``hd``, the prefix lookups
        ``pe`` (before the head day) and ``ps_<W>`` (before the window's first day; ``running(alias, column)``
        reads one) and the windowed MIN/MAX/LAST ``rj``, or, for the aggregations named in ``framed``, the
        ``w__<name>`` the lookup before the head day carries (docs/training.md, "Algorithm")."""
        pit = self.pit
        values: dict[str, str] = {}
        covered: dict[str, str] = {}
        in_range: list[str] = []  # the int sums fit int64 (else their value is null, the status incomplete: §4)
        for a in pit.aggregations:
            law = law_sql(d, a.agg)
            if a.batch_served:
                lo = "r.__tday >= {first_day}" if a.width_ms is None else f"r.{d.quote('a__' + a.name)} >= {{first_day}}"
                covered[a.name] = f"(r.__tday <= {{last_day}} + 1 AND {lo})"
            if law.invertible:  # each part: the head's + the prefix before the head day - the prefix before W
                parts = []
                for (fold, _), (prefix, _, _) in zip(law.fold, law.running):
                    terms = [f"hd.{d.quote(fold + a.name)}"]
                    if a.batch_served:
                        terms.append(running("pe", prefix + a.name))
                        if a.width_ms is not None:
                            terms.append("-" + running(f"ps_{a.width_ms}", prefix + a.name))
                    parts.append(" + ".join(_zero(t) for t in terms))
                total, count = parts[0], parts[-1]
                values[a.name] = law.value.format(s=total, n=count, exact=d.exact_sum(total, self._decimal(a)))
                if law.sums and not self._decimal(a):
                    in_range.append(int64_range(total))
            else:
                merged = f"hd.{d.quote(law.fold[0][0] + a.name)}"
                if a.batch_served:
                    if a.width_ms is None:
                        other = running("pe", "p__" + a.name)
                    else:
                        other = running("pe", "w__" + a.name) if a.name in framed else f"rj.{d.quote('w__' + a.name)}"
                    merged = law.pair.format(x=merged, y=other)
                values[a.name] = law.value.format(x=merged)
        for dv in pit.derives:
            values[dv.feature] = derived_sql(d, dv.expr, values, f"r.{T}")
        batch = {a.name for a in pit.batch_aggregations}
        exprs = {dv.feature: dv.expr for dv in pit.derives}
        cols = []
        for o in pit.outputs:
            deps = sorted(n for n in closure([o.feature], exprs) if n in batch)
            expr = values[o.feature]
            if deps:
                expr = f"CASE WHEN {' AND '.join(covered[n] for n in deps)} THEN {expr} END"
            cols.append(f"{expr} AS {d.quote(o.column)}")
        every = [covered[a.name] for a in pit.batch_aggregations] + in_range
        status = (f"CASE WHEN {' AND '.join(every)} THEN '{PRESENT}' ELSE '{INCOMPLETE}' END" if every
                  else f"'{PRESENT}'")
        cols.append(f"{status} AS {d.quote(pit.status_column)}")
        return cols

    @abc.abstractmethod
    def _feature_view(self, view_plan: ViewPlan) -> Out:
        """The engine's statements for a windowed feature view."""

    @abc.abstractmethod
    def _snapshot(self, view_plan: ViewPlan) -> Out:
        """The engine's statements for a snapshot (table-source) view."""


def _zero(term: str) -> str:
    """A sum's term with null as 0 (a leading ``-`` stays outside)."""
    return f"-coalesce({term[1:]}, 0)" if term.startswith("-") else f"coalesce({term}, 0)"

