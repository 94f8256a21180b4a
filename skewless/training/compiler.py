"""What both training-set compilers share (one compiler module per engine builds on this)."""

from __future__ import annotations

import abc
from typing import TypeVar

from skewless.core.compiler import Compiler, offline_nodes
from skewless.core.plan import PlanNode, Scan, TileAggregate, ViewPlan
from skewless.training.plan import ViewPit

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

    @abc.abstractmethod
    def _feature_view(self, view_plan: ViewPlan) -> Out:
        """The engine's statements for a windowed feature view."""

    @abc.abstractmethod
    def _snapshot(self, view_plan: ViewPlan) -> Out:
        """The engine's statements for a snapshot (table-source) view."""
