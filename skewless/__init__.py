"""skewless: one feature definition for streaming serving and point-in-time training sets.

The definition DSL is re-exported here: ``from skewless import Entity, EventSource, FeatureView, ...``.
"""

from skewless.core.dsl import (
    Agg,
    Aggregation,
    BinOp,
    Check,
    Const,
    DaysSince,
    Derived,
    Entity,
    EventSource,
    Expectation,
    FeatureService,
    FeatureView,
    Field,
    KeyType,
    Op,
    Ref,
    SnapshotView,
    TableSource,
    Where,
    Window,
)

__version__ = "0.1.0"

__all__ = [
    "Agg",
    "Aggregation",
    "BinOp",
    "Check",
    "Const",
    "DaysSince",
    "Derived",
    "Entity",
    "EventSource",
    "Expectation",
    "FeatureService",
    "FeatureView",
    "Field",
    "KeyType",
    "Op",
    "Ref",
    "SnapshotView",
    "TableSource",
    "Where",
    "Window",
    "__version__",
]
