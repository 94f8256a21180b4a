"""Declarations users write in a feature repository (``feature_defs/``).

Every object is an immutable, hashable value. Constructors only normalise (e.g. a dict of join keys
into a tuple); every rule about what is *valid* lives in :mod:`skewless.core.validation`, which checks a
whole repository at once and reports every problem with the definition, field, bad value and fix.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Mapping, Union


class KeyType(str, enum.Enum):
    """Type of an entity join key."""

    STRING = "string"
    INT64 = "int64"


class Agg(str, enum.Enum):
    """Aggregations over the events of a window (see docs/semantics.md for each one's contract)."""

    COUNT = "count"
    SUM = "sum"
    AVG = "avg"
    MIN = "min"
    MAX = "max"
    LAST = "last"


def _tuples(obj: Any, *names: str) -> None:
    """Freeze list-valued fields of a frozen dataclass into tuples (so definitions stay hashable)."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, (list, tuple)):
            object.__setattr__(obj, name, tuple(value))


# --- entities and sources ------------------------------------------------------------------------


@dataclass(frozen=True)
class Entity:
    """A thing features describe, identified by its join keys, e.g. ``Entity("user", {"user_id": "string"})``."""

    name: str
    join_keys: tuple[tuple[str, KeyType], ...]
    description: str = ""

    def __init__(self, name: str, join_keys: Mapping[str, str | KeyType] | tuple, description: str = ""):
        object.__setattr__(self, "name", name)
        items = join_keys.items() if isinstance(join_keys, Mapping) else join_keys
        normalised = []
        for key, ktype in items:
            try:
                ktype = KeyType(ktype)
            except ValueError:
                pass  # left as given; validation names it
            normalised.append((key, ktype))
        object.__setattr__(self, "join_keys", tuple(normalised))
        object.__setattr__(self, "description", description)

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.join_keys)


@dataclass(frozen=True)
class EventSource:
    """A stream of immutable events: a Kafka topic (or none, for batch-only sources) plus the Iceberg
    table the same events land in.

    ``schema`` names a JSON Schema in ``schemas/`` (e.g. ``"orders"`` -> ``schemas/orders.schema.json``).
    Events later than ``allowed_lateness`` (behind the source's watermark) are not applied online;
    events stamped more than ``clock_skew_tolerance`` in the future are dead-lettered.
    ``partition_key`` is the field used as the Kafka message key (all events of one key stay in one
    partition, so (partition, offset) orders an entity's events).
    """

    name: str
    schema: str
    table: str
    topic: str | None = None
    event_time: str = "event_time"
    event_id: str = "event_id"
    partition_key: str | None = None
    allowed_lateness: timedelta = timedelta(hours=1)
    clock_skew_tolerance: timedelta = timedelta(minutes=5)
    description: str = ""

    @property
    def is_batch_only(self) -> bool:
        return self.topic is None


@dataclass(frozen=True)
class TableSource:
    """A table of precomputed rows (one per entity and timestamp), for snapshot features.

    ``created_at`` (optional) breaks ties between rows with equal ``timestamp``.
    """

    name: str
    table: str
    schema: str
    timestamp: str = "event_time"
    created_at: str | None = None
    description: str = ""


# --- windows, filters, features ------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A sliding window of ``width`` ending at the request instant, tiled by ``tile`` (epoch-aligned).

    ``width=None`` is the lifetime window (all events before the instant). ``tile=None`` takes the
    contract's default tile for the width (docs/semantics.md).
    """

    width: timedelta | None
    tile: timedelta | None = None

    @staticmethod
    def minutes(n: int) -> Window:
        return Window(timedelta(minutes=n))

    @staticmethod
    def hours(n: int) -> Window:
        return Window(timedelta(hours=n))

    @staticmethod
    def days(n: int) -> Window:
        return Window(timedelta(days=n))

    @staticmethod
    def lifetime() -> Window:
        return Window(None)

    def with_tile(self, tile: timedelta) -> Window:
        return Window(self.width, tile)

    @property
    def is_lifetime(self) -> bool:
        return self.width is None

    def label(self) -> str:
        """Short name used in generated feature names and plans, e.g. ``1h``, ``365d``, ``lifetime``."""
        if self.width is None:
            return "lifetime"
        secs = int(self.width.total_seconds())
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if secs % size == 0:
                return f"{secs // size}{unit}"
        return f"{secs}s"


class Op(str, enum.Enum):
    EQ = "=="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    IN = "in"


@dataclass(frozen=True)
class Where:
    """A row filter on one event field, e.g. ``Where("status", "==", "completed")``.

    An event whose field is null never passes a filter.
    """

    field: str
    op: Op
    value: Any

    def __init__(self, field: str, op: str | Op, value: Any):
        object.__setattr__(self, "field", field)
        try:
            op = Op(op)
        except ValueError:
            pass  # validation names it
        object.__setattr__(self, "op", op)
        if isinstance(value, (list, set, frozenset)):
            value = tuple(sorted(value, key=repr)) if isinstance(value, (set, frozenset)) else tuple(value)
        object.__setattr__(self, "value", value)


@dataclass(frozen=True)
class Aggregation:
    """A windowed aggregate feature: ``Aggregation("customer_ltv", Agg.SUM, "amount", Window.days(365))``.

    ``field`` is None for COUNT (count of events). ``where`` filters the events first.
    """

    name: str
    agg: Agg
    field: str | None
    window: Window
    where: tuple[Where, ...] = ()
    description: str = ""

    def __init__(
        self,
        name: str,
        agg: Agg | str,
        field: str | None,
        window: Window,
        where: Where | tuple[Where, ...] | list[Where] = (),
        description: str = "",
    ):
        object.__setattr__(self, "name", name)
        try:
            agg = Agg(agg)
        except ValueError:
            pass  # validation names it
        object.__setattr__(self, "agg", agg)
        object.__setattr__(self, "field", field)
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "where", (where,) if isinstance(where, Where) else tuple(where))
        object.__setattr__(self, "description", description)


# Derived-feature expressions: a tiny immutable expression tree over other features of the same view.


class _Arithmetic:
    """Lets expressions compose with + - * /, e.g. ``Ref("amount_sum_365d") / Ref("order_count_365d")``."""

    def __truediv__(self, other: Any) -> BinOp:
        return BinOp("/", self, _expr(other))

    def __add__(self, other: Any) -> BinOp:
        return BinOp("+", self, _expr(other))

    def __sub__(self, other: Any) -> BinOp:
        return BinOp("-", self, _expr(other))

    def __mul__(self, other: Any) -> BinOp:
        return BinOp("*", self, _expr(other))


@dataclass(frozen=True)
class Ref(_Arithmetic):
    """The value of another feature of the same view."""

    feature: str


@dataclass(frozen=True)
class Const(_Arithmetic):
    value: int | float


@dataclass(frozen=True)
class BinOp(_Arithmetic):
    op: str  # one of + - * /
    left: Expr
    right: Expr


@dataclass(frozen=True)
class DaysSince:
    """Whole days from a timestamp-valued feature to the request instant: ``floor((T - ts) / 1 day)``."""

    ts: Ref


Expr = Union[Ref, Const, BinOp, DaysSince]


def _expr(value: Any) -> Any:
    return Const(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


@dataclass(frozen=True)
class Derived:
    """A feature computed from other features of the same view at the request instant.

    Null in any input gives null; division by zero gives null. Result is float64 for ``/`` and
    ``DaysSince`` is int64.
    """

    name: str
    expr: Expr
    description: str = ""


Feature = Union[Aggregation, Derived]


@dataclass(frozen=True)
class Field:
    """A column of a snapshot (table-source) view: ``Field("credit_score", "int64")``."""

    name: str
    dtype: str
    description: str = ""


# --- expectations, views, services ---------------------------------------------------------------


class Check(str, enum.Enum):
    NOT_NULL = "not_null"
    RANGE = "range"
    ALLOWED_VALUES = "allowed_values"
    MAX_NULL_RATE = "max_null_rate"


@dataclass(frozen=True)
class Expectation:
    """A data-quality expectation on one feature, checked by monitoring (not part of the semantics)."""

    feature: str
    check: Check
    args: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def not_null(feature: str) -> Expectation:
        return Expectation(feature, Check.NOT_NULL)

    @staticmethod
    def range(feature: str, min: Any = None, max: Any = None) -> Expectation:
        return Expectation(feature, Check.RANGE, (("min", min), ("max", max)))

    @staticmethod
    def allowed_values(feature: str, values: tuple | list) -> Expectation:
        return Expectation(feature, Check.ALLOWED_VALUES, (("values", tuple(values)),))

    @staticmethod
    def max_null_rate(feature: str, rate: float) -> Expectation:
        return Expectation(feature, Check.MAX_NULL_RATE, (("rate", rate),))

    def arg(self, name: str) -> Any:
        return dict(self.args).get(name)


@dataclass(frozen=True)
class FeatureView:
    """Windowed features of one entity computed from one event source; versioned as a unit.

    ``freshness_sla``: how old the newest applied event may be before values are flagged ``stale``.
    ``block_materialization_on_failed_checks``: a failing expectation keeps a batch run out of Redis.
    """

    name: str
    entity: Entity
    source: EventSource
    features: tuple[Feature, ...]
    version: int = 1
    freshness_sla: timedelta = timedelta(minutes=5)
    expectations: tuple[Expectation, ...] = ()
    block_materialization_on_failed_checks: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        _tuples(self, "features", "expectations")

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)


@dataclass(frozen=True)
class SnapshotView:
    """Precomputed feature values from a table source; a row is valid from its timestamp for ``ttl``."""

    name: str
    entity: Entity
    source: TableSource
    fields: tuple[Field, ...]
    ttl: timedelta
    version: int = 1
    freshness_sla: timedelta = timedelta(days=1)
    expectations: tuple[Expectation, ...] = ()
    block_materialization_on_failed_checks: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        _tuples(self, "fields", "expectations")

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)


View = Union[FeatureView, SnapshotView]


@dataclass(frozen=True)
class FeatureService:
    """The set of features one model uses, by reference ``"view:feature"`` or ``"view"`` (all of it)."""

    name: str
    features: tuple[str, ...]
    description: str = ""

    def __post_init__(self) -> None:
        _tuples(self, "features")
