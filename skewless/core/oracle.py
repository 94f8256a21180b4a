"""The contract as brute force (docs/semantics.md): obviously correct, never optimised.

Every value is computed by scanning the raw events (or snapshot rows) again, independently of the tile
laws in :mod:`skewless.core.laws`, so tests can check every engine path and the laws against it.

Events are dicts as :mod:`skewless.core.admission` produces them: the source's event-time field as epoch
ms (int), ``_kafka_partition`` and ``_offset`` for Kafka sources (batch-only sources order by event id).

A feature has no value when its window's int SUM (or AVG's sum) does not fit int64 (§4): it is null with
status ``incomplete``, and so is every derived feature using it (:func:`feature_values` gives the statuses).
"""

from __future__ import annotations

import decimal
import math
from datetime import datetime
from decimal import Decimal
from typing import Any, Iterable, Mapping, Sequence

from skewless.core.dsl import (
    Agg,
    Aggregation,
    BinOp,
    Const,
    DaysSince,
    Derived,
    FeatureView,
    KeyType,
    Op,
    Ref,
    SnapshotView,
    Where,
)
from skewless.core.routing import SNAPSHOT_EXPIRED_MEMORY_MS
from skewless.core.timeutil import MS_PER_DAY, default_tile_ms, td_ms, to_epoch_ms

PRESENT = "present"
EXPIRED = "expired"
STALE = "stale"
INCOMPLETE = "incomplete"
STATUSES = (PRESENT, EXPIRED, STALE, INCOMPLETE)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_DECIMAL_DIGITS = 38


# --- small helpers ------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int64(v: int, what: str) -> int:
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise OverflowError(f"{what} {v} is outside int64 (an error by contract, never a wrap)")
    return v


def _decimal_checked(v: Decimal, what: str) -> Decimal:
    if len(v.as_tuple().digits) > _DECIMAL_DIGITS:
        raise OverflowError(f"{what} {v} needs more than {_DECIMAL_DIGITS} digits")
    return v


def _key_matches(view: FeatureView | SnapshotView, row: Mapping[str, Any], entity_key: tuple) -> bool:
    join_keys = view.entity.join_keys
    if len(entity_key) != len(join_keys):
        raise ValueError(f"entity key {entity_key!r} has {len(entity_key)} values; {view.entity.name} has {len(join_keys)}")
    for (name, ktype), wanted in zip(join_keys, entity_key):
        got = row.get(name)
        if KeyType(ktype) is KeyType.STRING:
            if not (isinstance(got, str) and isinstance(wanted, str) and got == wanted):
                return False
        elif not (_is_int(got) and _is_int(wanted) and got == wanted):
            return False
    return True


def tile_ms_of(aggregation: Aggregation) -> int:
    """The tile H of an aggregation's window: declared, or the contract's default for its width."""
    width = None if aggregation.window.width is None else td_ms(aggregation.window.width)
    return td_ms(aggregation.window.tile) if aggregation.window.tile is not None else default_tile_ms(width)


def window_bounds(aggregation: Aggregation, as_of_ms: int, *, now_read: bool = False) -> tuple[int | None, int | None]:
    """``(start, end)`` of the events an aggregation sees at T: ``start <= ts < end``; None = unbounded.

    Start is ``floor(T - W, H)`` (None for lifetime); end is T, or None for an online read at "now"
    (which counts every applied event, including ones stamped after the read instant).
    """
    end = None if now_read else as_of_ms
    if aggregation.window.width is None:
        return None, end
    width, tile = td_ms(aggregation.window.width), tile_ms_of(aggregation)
    if tile <= 0 or width <= 0 or width % tile != 0:
        raise ValueError(f"{aggregation.name}: window width {width} ms must be a positive multiple of tile {tile} ms")
    return ((as_of_ms - width) // tile) * tile, end


def _passes(where: Where, event: Mapping[str, Any]) -> bool:
    value = event.get(where.field)
    if value is None:
        return False

    def same_kind(a: Any, b: Any) -> bool:
        if isinstance(a, bool) or isinstance(b, bool):
            return isinstance(a, bool) and isinstance(b, bool)
        numbers = (int, float, Decimal)
        return (isinstance(a, numbers) and isinstance(b, numbers)) or (isinstance(a, str) and isinstance(b, str))

    op = Op(where.op)
    if op is Op.IN:
        return any(same_kind(value, c) and value == c for c in where.value)
    target = where.value
    if target is None or not same_kind(value, target):
        return False
    if op is Op.EQ:
        return value == target
    if op is Op.NE:
        return value != target
    if isinstance(value, bool):
        return False
    return {Op.LT: value < target, Op.LE: value <= target, Op.GT: value > target, Op.GE: value >= target}[op]


def _order_key(event: Mapping[str, Any], ts: int, event_id_field: str) -> tuple:
    if "_kafka_partition" in event:
        return (ts, event["_kafka_partition"], event["_offset"])
    return (ts, 0, event[event_id_field])


def _min_max_key(v: Any) -> tuple:
    if isinstance(v, bool) or not isinstance(v, (int, float, Decimal)):
        raise TypeError(f"MIN/MAX need numeric values, got {v!r}")
    if isinstance(v, float) and math.isnan(v):
        raise ValueError("NaN is not a contract value")
    negative_zero = isinstance(v, float) and v == 0.0 and math.copysign(1.0, v) < 0
    return (v, -1 if negative_zero else 0)


class _NoValue:
    """A window value that does not exist (an int sum outside int64): null with status ``incomplete``."""

    def __repr__(self) -> str:
        return "<incomplete>"


NO_VALUE = _NoValue()


def _exact_sum(values: list[Any]) -> int | Decimal:
    """The exact sum (ints of any size: the window's value is checked against int64 by the caller)."""
    for v in values:
        if isinstance(v, float):
            raise TypeError("SUM/AVG over a float field is not allowed: use integer minor units or decimal")
        if isinstance(v, bool) or not isinstance(v, (int, Decimal)):
            raise TypeError(f"SUM/AVG need int64 or decimal values, got {v!r}")
    if all(_is_int(v) for v in values):
        return sum(values)
    with decimal.localcontext() as ctx:
        ctx.prec = 200
        total = sum((Decimal(v) for v in values), Decimal(0))
        if not any(isinstance(v, Decimal) for v in values):
            return int(total)
    return _decimal_checked(total, "sum")


# --- aggregations --------------------------------------------------------------------------------------


def _aggregate(view: FeatureView, f: Aggregation, events: Iterable[Mapping[str, Any]], entity_key: tuple,
               as_of_ms: int, now_read: bool) -> Any:
    start, end = window_bounds(f, as_of_ms, now_read=now_read)
    ts_field, id_field = view.source.event_time, view.source.event_id
    chosen = []
    for e in events:
        if not _key_matches(view, e, entity_key):
            continue
        ts = to_epoch_ms(e[ts_field])
        if start is not None and ts < start:
            continue
        if end is not None and ts >= end:
            continue
        if not all(_passes(w, e) for w in f.where):
            continue
        chosen.append((ts, e))

    agg = Agg(f.agg)
    if agg is Agg.COUNT:
        if f.field is None:
            return len(chosen)
        return sum(1 for _, e in chosen if e.get(f.field) is not None)
    if f.field is None:
        raise ValueError(f"{f.name}: {agg.value} needs a field")
    present = [(ts, e, e[f.field]) for ts, e in chosen if e.get(f.field) is not None]
    values = [v for _, _, v in present]
    if agg in (Agg.SUM, Agg.AVG):
        total = _exact_sum(values) if values else 0
        if _is_int(total) and not _INT64_MIN <= total <= _INT64_MAX:
            return NO_VALUE
        if agg is Agg.SUM:
            return total
        return float(total) / len(values) if values else None
    if agg is Agg.MIN:
        return min(values, key=_min_max_key) if values else None
    if agg is Agg.MAX:
        return max(values, key=_min_max_key) if values else None
    if agg is Agg.LAST:
        if not present:
            return None
        return max(present, key=lambda p: _order_key(p[1], p[0], id_field))[2]
    raise ValueError(f"unknown aggregation {f.agg!r}")


# --- derived expressions --------------------------------------------------------------------------------


def _arith(op: str, left: Any, right: Any) -> Any:
    if left is None or right is None:
        return None
    for v in (left, right):
        if isinstance(v, bool) or not isinstance(v, (int, float, Decimal)):
            raise TypeError(f"derived arithmetic needs numbers, got {v!r}")
    if op == "/":
        if right == 0:
            return None
        return float(left) / float(right)
    if op not in ("+", "-", "*"):
        raise ValueError(f"unknown operator {op!r}")
    if isinstance(left, float) or isinstance(right, float):
        left, right = float(left), float(right)
        return left + right if op == "+" else left - right if op == "-" else left * right
    if _is_int(left) and _is_int(right):
        return _int64(left + right if op == "+" else left - right if op == "-" else left * right, "result")
    with decimal.localcontext() as ctx:
        ctx.prec = 200
        a, b = Decimal(left), Decimal(right)
        result = a + b if op == "+" else a - b if op == "-" else a * b
    return _decimal_checked(result, "result")


def _evaluate(view: FeatureView, expr: Any, events: Sequence[Mapping[str, Any]], entity_key: tuple, as_of_ms: int,
              now_read: bool, visiting: tuple[str, ...]) -> Any:
    if isinstance(expr, Ref):
        return _feature(view, expr.feature, events, entity_key, as_of_ms, now_read, visiting)
    if isinstance(expr, Const):
        return expr.value
    if isinstance(expr, BinOp):
        left = _evaluate(view, expr.left, events, entity_key, as_of_ms, now_read, visiting)
        right = _evaluate(view, expr.right, events, entity_key, as_of_ms, now_read, visiting)
        if left is NO_VALUE or right is NO_VALUE:
            return NO_VALUE
        return _arith(expr.op, left, right)
    if isinstance(expr, DaysSince):
        ts = _evaluate(view, expr.ts, events, entity_key, as_of_ms, now_read, visiting)
        if ts is None or ts is NO_VALUE:
            return ts
        if isinstance(ts, datetime):
            ts = to_epoch_ms(ts)
        if not _is_int(ts):
            raise TypeError(f"DaysSince needs an epoch-ms timestamp, got {ts!r}")
        return (as_of_ms - ts) // MS_PER_DAY
    raise TypeError(f"not an expression: {expr!r}")


def _feature(view: FeatureView, name: str, events: Sequence[Mapping[str, Any]], entity_key: tuple, as_of_ms: int,
             now_read: bool, visiting: tuple[str, ...]) -> Any:
    if name in visiting:
        raise ValueError(f"derived features form a cycle: {' -> '.join(visiting + (name,))}")
    f = view.feature(name)
    if isinstance(f, Aggregation):
        return _aggregate(view, f, events, entity_key, as_of_ms, now_read)
    if isinstance(f, Derived):
        return _evaluate(view, f.expr, events, entity_key, as_of_ms, now_read, visiting + (name,))
    raise TypeError(f"{name}: not a feature: {f!r}")


# --- public API ---------------------------------------------------------------------------------------


def feature_value(view: FeatureView, feature_name: str, events: Iterable[Mapping[str, Any]], entity_key: tuple,
                  as_of_ms: int, *, now_read: bool = False) -> Any:
    """The contract's value of one feature of an entity as of T (``as_of_ms``); None also when the feature has
    no value (status ``incomplete``: see :func:`feature_values`).

    ``now_read=True`` is the online read at "now" (T = the read instant): ``events`` are the applied
    events and those stamped at or after T count too (see docs/semantics.md, "Online reads").
    """
    value = _feature(view, feature_name, list(events), tuple(entity_key), as_of_ms, now_read, ())
    return None if value is NO_VALUE else value


def feature_row(view: FeatureView, events: Iterable[Mapping[str, Any]], entity_key: tuple, as_of_ms: int,
                *, now_read: bool = False) -> dict[str, Any]:
    """All features of a view for one entity as of T, in declaration order (None where there is no value)."""
    return {name: value for name, (value, _) in feature_values(view, events, entity_key, as_of_ms,
                                                               now_read=now_read).items()}


def feature_values(view: FeatureView, events: Iterable[Mapping[str, Any]], entity_key: tuple, as_of_ms: int,
                   *, now_read: bool = False) -> dict[str, tuple[Any, str]]:
    """All features of a view for one entity as of T as ``(value, status)``: ``present``, or ``(None,
    incomplete)`` when a window's int sum does not fit int64 (and for derived features using one; §4)."""
    events = list(events)
    out = {}
    for name in view.feature_names:
        value = _feature(view, name, events, tuple(entity_key), as_of_ms, now_read, ())
        out[name] = (None, INCOMPLETE) if value is NO_VALUE else (value, PRESENT)
    return out


def _snapshot_pick(view: SnapshotView, rows: Iterable[Mapping[str, Any]], entity_key: tuple,
                   as_of_ms: int) -> tuple[Mapping[str, Any] | None, str]:
    src = view.source
    mine = [r for r in rows if _key_matches(view, r, tuple(entity_key))]
    seen: set[tuple] = set()
    for r in mine:
        ident = (to_epoch_ms(r[src.timestamp]),) + ((to_epoch_ms(r[src.created_at]),) if src.created_at else ())
        if ident in seen:
            raise ValueError(
                f"{view.name}: two rows for entity {entity_key!r} at {src.timestamp}={ident[0]}"
                + (f" and {src.created_at}={ident[1]}" if src.created_at else " (declare created_at to order them)")
            )
        seen.add(ident)
    visible = []
    for r in mine:
        ts = to_epoch_ms(r[src.timestamp])
        if ts > as_of_ms:
            continue
        created = None
        if src.created_at:
            if r.get(src.created_at) is None:
                raise ValueError(f"{view.name}: a row has a null {src.created_at}")
            created = to_epoch_ms(r[src.created_at])
            if created > as_of_ms:
                continue  # not yet known at T
        visible.append(((ts, created if created is not None else 0), r))
    if not visible:
        return None, PRESENT
    (ts, _), row = max(visible, key=lambda v: v[0])
    ttl = td_ms(view.ttl)
    if ts >= as_of_ms - ttl:
        return row, PRESENT
    if ts >= as_of_ms - ttl - SNAPSHOT_EXPIRED_MEMORY_MS:
        return None, EXPIRED
    return None, PRESENT  # forgotten: as if there never was a row


def snapshot_value(view: SnapshotView, field_name: str, rows: Iterable[Mapping[str, Any]], entity_key: tuple,
                   as_of_ms: int) -> tuple[Any, str]:
    """``(value, status)`` of one snapshot field as of T: the latest row with ``T - ttl <= ts <= T``
    (and ``created_at <= T`` when declared), ties on ts broken by the larger created_at."""
    if field_name not in view.feature_names:
        raise KeyError(field_name)
    row, status = _snapshot_pick(view, rows, entity_key, as_of_ms)
    return (None if row is None else row.get(field_name)), status


def snapshot_row(view: SnapshotView, rows: Iterable[Mapping[str, Any]], entity_key: tuple,
                 as_of_ms: int) -> dict[str, tuple[Any, str]]:
    """All fields of a snapshot view for one entity as of T, each as ``(value, status)``."""
    row, status = _snapshot_pick(view, list(rows), entity_key, as_of_ms)
    return {name: ((None if row is None else row.get(name)), status) for name in view.feature_names}


def training_rows(view: FeatureView, events: Iterable[Mapping[str, Any]], requests: Iterable[Mapping[str, Any]],
                  timestamp_column: str) -> list[dict[str, Any]]:
    """Point-in-time retrieval: one output row per request row, in input order, input columns kept
    (duplicates too), each extended with the view's features as of the row's timestamp."""
    events = list(events)
    keys = view.entity.key_names
    out = []
    for req in requests:
        clash = set(req) & set(view.feature_names)
        if clash:
            raise ValueError(f"request columns {sorted(clash)} clash with feature names of {view.name}")
        row = dict(req)
        row.update(feature_row(view, events, tuple(req[k] for k in keys), to_epoch_ms(req[timestamp_column])))
        out.append(row)
    return out
