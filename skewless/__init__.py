"""skewless: one feature definition for streaming serving and point-in-time training sets.

The definition DSL is re-exported here: ``from skewless import Entity, EventSource, FeatureView, ...``,
and the user facade: ``from skewless import FeatureStore`` (imported on first use, so the CLI and the
definition layer never load the engines).
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
    "FeatureStore",
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


def __getattr__(name: str) -> object:
    if name == "FeatureStore":
        from skewless.store import FeatureStore

        return FeatureStore
    raise AttributeError(f"module 'skewless' has no attribute {name!r}")
