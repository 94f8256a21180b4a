"""Aggregate laws shared by every engine (docs/semantics.md, "Aggregations").

Each :class:`Agg` has an intermediate form (the value of a tile, a batch body or a whole window) with

- ``init()``: the identity (aggregate of no events);
- ``update(acc, value, order_key)``: add one event's field value (``None`` = null, skipped);
- ``merge(a, b)``: combine two intermediates of disjoint event sets (associative, commutative);
- ``finalize(acc)``: the feature value;
- ``in_range(acc)``: whether the feature value exists: False for a SUM (or AVG's sum) of int64 values that
  does not fit int64 (docs/semantics.md §4: the value is null with status ``incomplete``; ``finalize``
  then raises :class:`SumOverflowError`);
- ``encode(acc)`` / ``decode(data)``: a stable JSON-able form for Redis and Iceberg (ints stay ints,
  decimals travel as strings, sums never become floats).

All functions are pure; intermediates are immutable (ints, Decimals, floats, tuples, None).

Intermediates:

===========  =====================================  ==============================================
Agg          intermediate                            encoding
===========  =====================================  ==============================================
COUNT        ``int``                                 ``int``
SUM          ``int`` (exact, any size) or ``Decimal``    ``int`` (beyond int64 ``{"$int": "<digits>"}``) or
                                                     decimal string ``"12.50"``
AVG          ``(sum, count_nonnull)``                ``[sum, count]``
MIN / MAX    value or ``None``                       value (decimal as ``{"$decimal": "1.5"}``) or null
LAST         ``(ts, partition, offset, value)``      ``[ts, partition, offset, value]`` or null
             or ``None``
===========  =====================================  ==============================================

The LAST order key is ``(ts, partition, offset)``; for batch-only sources it is ``(ts, 0, event_id)``.

Integer sums never overflow: intermediates (tiles, bodies, merges) are exact Python ints, as the engines
hold them in 38 digits (``DECIMAL(38, 0)``, 128-bit, ``BigInteger``), which no count of int64 values an
engine can store exceeds; only the window's value must fit int64 (``in_range``).
"""

from __future__ import annotations

import decimal
import json
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Iterable, Mapping

from skewless.core.dsl import Agg, Aggregation, Op, Where

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
DECIMAL_MAX_DIGITS = 38  # Spark/Iceberg decimal(38, s)

OrderKey = tuple  # (ts, partition, offset) or (ts, 0, event_id)

# Exact decimal arithmetic: anything that would round is an error, never a silent change of value.
_DECIMAL_CONTEXT = decimal.Context(
    prec=DECIMAL_MAX_DIGITS,
    rounding=decimal.ROUND_HALF_EVEN,
    traps=[decimal.Inexact, decimal.Rounded, decimal.Overflow, decimal.InvalidOperation, decimal.DivisionByZero],
)

_DECIMAL_TAG = "$decimal"
# an int sum beyond int64, as text: JSON readers (orjson, JavaScript) turn such integers into floats
_INT_TAG = "$int"


class SumOverflowError(OverflowError):
    """A count left int64, a decimal sum 38 digits, or a window's int sum int64 was finalized: never a wrap-around."""


# --- value checks ------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int64(value: int, what: str = "value") -> int:
    """``value`` unchanged if it fits int64, else :class:`SumOverflowError`."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise SumOverflowError(f"{what} {value} is outside int64; the contract makes int64 overflow an error")
    return value


def _summable(value: Any) -> int | Decimal:
    if _is_int(value):
        return check_int64(value, "input")
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"decimal {value} is not finite")
        return value
    if isinstance(value, float):
        raise TypeError(
            "SUM/AVG over a float field is not allowed (float sums depend on order): "
            "store amounts as integer minor units or as decimals"
        )
    raise TypeError(f"SUM/AVG needs int64 or decimal values, got {type(value).__name__}: {value!r}")


def exact_add(a: int | Decimal, b: int | Decimal) -> int | Decimal:
    """``a + b`` exactly: ints as ints of any size (partial sums may leave int64); with a decimal, exact to 38
    digits."""
    if _is_int(a) and _is_int(b):
        return a + b
    try:
        result = _DECIMAL_CONTEXT.add(Decimal(a), Decimal(b))
    except decimal.DecimalException as exc:
        raise SumOverflowError(f"decimal sum of {a} and {b} is not exact in {DECIMAL_MAX_DIGITS} digits") from exc
    return result


def _comparable(value: Any) -> Any:
    if _is_int(value) or isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            raise ValueError("NaN is not a value the contract accepts")
        return value
    raise TypeError(f"MIN/MAX need numeric values (int64, float64, decimal), got {type(value).__name__}: {value!r}")


def value_order_key(value: Any) -> tuple:
    """Total order used by MIN/MAX: numeric order, with -0.0 before 0.0 (as Java's ``Double.compare``).

    Equal values of one field are identical in practice (fields have one type, decimals one scale); the
    last element only makes the order total so merges stay commutative.
    """
    zero_sign = -1 if isinstance(value, float) and value == 0.0 and math.copysign(1.0, value) < 0 else 0
    return (value, zero_sign, repr(value))


def sum_in_range(total: int | Decimal) -> bool:
    """Whether a window's sum is a value: decimals always, ints when they fit int64 (docs/semantics.md §4)."""
    return not _is_int(total) or INT64_MIN <= total <= INT64_MAX


def window_sum(total: int | Decimal) -> int | Decimal:
    """A window's SUM value; :class:`SumOverflowError` when it is an int outside int64 (check ``in_range``)."""
    if not sum_in_range(total):
        raise SumOverflowError(f"sum {total} is outside int64: the value is null with status incomplete")
    return total


def avg_of(total: int | Decimal, count: int) -> float | None:
    """The contract's AVG: ``float64(sum) / count`` computed once, or null when nothing was counted."""
    if count == 0:
        return None
    return float(window_sum(total)) / count


# --- value encoding (for MIN/MAX/LAST values) -----------------------------------------------------------


def encode_value(value: Any) -> Any:
    """A field value as JSON: ints, strings, floats, bools and null as themselves, decimals tagged."""
    if isinstance(value, Decimal):
        return {_DECIMAL_TAG: str(value)}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} cannot be encoded (not finite)")
        return value
    raise TypeError(f"cannot encode a {type(value).__name__} value: {value!r}")


def decode_value(data: Any) -> Any:
    if isinstance(data, Mapping):
        if set(data) != {_DECIMAL_TAG}:
            raise ValueError(f"not an encoded value: {data!r}")
        return Decimal(data[_DECIMAL_TAG])
    if data is None or isinstance(data, (bool, int, str, float)):
        return data
    raise ValueError(f"not an encoded value: {data!r}")


def _encode_sum(total: int | Decimal) -> int | str | dict[str, str]:
    if _is_int(total):
        return total if INT64_MIN <= total <= INT64_MAX else {_INT_TAG: str(total)}
    return str(total)


def _decode_sum(data: Any) -> int | Decimal:
    if _is_int(data):
        return data
    if isinstance(data, str):
        return Decimal(data)
    if isinstance(data, Mapping) and set(data) == {_INT_TAG} and isinstance(data[_INT_TAG], str):
        return int(data[_INT_TAG])
    raise ValueError(f"not an encoded sum: {data!r}")


def dumps(data: Any) -> str:
    """Canonical compact JSON text of an encoded value (same input, same bytes)."""
    return json.dumps(data, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False)


def loads(text: str | bytes) -> Any:
    return json.loads(text)


# --- the laws -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Law:
    """The intermediate form of one aggregation; see the module docstring."""

    agg: Agg
    init: Callable[[], Any]
    update: Callable[[Any, Any, OrderKey | None], Any]
    merge: Callable[[Any, Any], Any]
    finalize: Callable[[Any], Any]
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]
    in_range: Callable[[Any], bool] = lambda acc: True  # noqa: E731 - every law but SUM/AVG: always a value

    def merge_all(self, tiles: Iterable[Any]) -> Any:
        """Merge any number of intermediates (``init()`` for none)."""
        acc = self.init()
        for tile in tiles:
            acc = self.merge(acc, tile)
        return acc

    def aggregate(self, values: Iterable[tuple[Any, OrderKey | None]]) -> Any:
        """Intermediate of ``(value, order_key)`` pairs, folded with ``update``."""
        acc = self.init()
        for value, order_key in values:
            acc = self.update(acc, value, order_key)
        return acc


# COUNT


def _count_update(acc: int, value: Any, order_key: OrderKey | None = None) -> int:
    return acc if value is None else check_int64(acc + 1, "count")


def _count_merge(a: int, b: int) -> int:
    return check_int64(a + b, "count")


def _decode_count(data: Any) -> int:
    if not _is_int(data):
        raise ValueError(f"not an encoded count: {data!r}")
    return data


# SUM


def _sum_update(acc: int | Decimal, value: Any, order_key: OrderKey | None = None) -> int | Decimal:
    return acc if value is None else exact_add(acc, _summable(value))


# AVG


def _avg_update(acc: tuple, value: Any, order_key: OrderKey | None = None) -> tuple:
    if value is None:
        return acc
    return (exact_add(acc[0], _summable(value)), check_int64(acc[1] + 1, "count"))


def _avg_merge(a: tuple, b: tuple) -> tuple:
    return (exact_add(a[0], b[0]), check_int64(a[1] + b[1], "count"))


def _avg_encode(acc: tuple) -> list:
    return [_encode_sum(acc[0]), acc[1]]


def _avg_decode(data: Any) -> tuple:
    if not isinstance(data, list) or len(data) != 2 or not _is_int(data[1]):
        raise ValueError(f"not an encoded AVG intermediate: {data!r}")
    return (_decode_sum(data[0]), data[1])


# MIN / MAX


def _extreme(pick_max: bool) -> tuple[Callable, Callable]:
    def merge(a: Any, b: Any) -> Any:
        if a is None:
            return b
        if b is None:
            return a
        ka, kb = value_order_key(a), value_order_key(b)
        if pick_max:
            return a if ka >= kb else b
        return a if ka <= kb else b

    def update(acc: Any, value: Any, order_key: OrderKey | None = None) -> Any:
        return acc if value is None else merge(acc, _comparable(value))

    return update, merge


_min_update, _min_merge = _extreme(pick_max=False)
_max_update, _max_merge = _extreme(pick_max=True)


# LAST


def _last_update(acc: tuple | None, value: Any, order_key: OrderKey | None = None) -> tuple | None:
    if value is None:
        return acc
    if order_key is None or len(order_key) != 3:
        raise ValueError("LAST needs the event's order key (ts, partition, offset)")
    return _last_merge(acc, (*order_key, value))


def _last_merge(a: tuple | None, b: tuple | None) -> tuple | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a[:3] >= b[:3] else b  # equal keys are the same event


def _last_encode(acc: tuple | None) -> list | None:
    if acc is None:
        return None
    ts, partition, offset, value = acc
    return [ts, partition, offset, encode_value(value)]


def _last_decode(data: Any) -> tuple | None:
    if data is None:
        return None
    if not isinstance(data, list) or len(data) != 4 or not _is_int(data[0]):
        raise ValueError(f"not an encoded LAST intermediate: {data!r}")
    return (data[0], data[1], data[2], decode_value(data[3]))


def _identity(x: Any) -> Any:
    return x


def _decode_nullable_value(data: Any) -> Any:
    return decode_value(data)


LAWS: Mapping[Agg, Law] = {
    Agg.COUNT: Law(Agg.COUNT, lambda: 0, _count_update, _count_merge, _identity, _identity, _decode_count),
    Agg.SUM: Law(Agg.SUM, lambda: 0, _sum_update, exact_add, window_sum, _encode_sum, _decode_sum, sum_in_range),
    Agg.AVG: Law(
        Agg.AVG, lambda: (0, 0), _avg_update, _avg_merge, lambda acc: avg_of(*acc), _avg_encode, _avg_decode,
        lambda acc: sum_in_range(acc[0]),
    ),
    Agg.MIN: Law(Agg.MIN, lambda: None, _min_update, _min_merge, _identity, encode_value, _decode_nullable_value),
    Agg.MAX: Law(Agg.MAX, lambda: None, _max_update, _max_merge, _identity, encode_value, _decode_nullable_value),
    Agg.LAST: Law(Agg.LAST, lambda: None, _last_update, _last_merge, lambda acc: None if acc is None else acc[3],
                  _last_encode, _last_decode),
}


def law(agg: Agg | str) -> Law:
    """The law of an aggregation (accepts the enum or its name)."""
    try:
        return LAWS[Agg(agg)]
    except ValueError:
        raise ValueError(f"unknown aggregation {agg!r}; expected one of {[a.value for a in Agg]}") from None


def merge_all(agg: Agg | str, tiles: Iterable[Any]) -> Any:
    """Merge intermediates of one aggregation."""
    return law(agg).merge_all(tiles)


# --- per-event helpers every engine shares --------------------------------------------------------------


def where_passes(where: Where, event: Mapping[str, Any]) -> bool:
    """Whether an event passes one filter. A null (or missing) field never passes; values of
    incompatible types (e.g. a string against a number, a bool against a number) never pass."""
    actual = event.get(where.field)
    if actual is None:
        return False
    op = Op(where.op)
    if op is Op.IN:
        return any(_same_kind(actual, v) and actual == v for v in where.value)
    expected = where.value
    if expected is None or not _same_kind(actual, expected):
        return False
    if op is Op.EQ:
        return actual == expected
    if op is Op.NE:
        return actual != expected
    if isinstance(actual, bool):
        return False  # booleans have no order
    if op is Op.LT:
        return actual < expected
    if op is Op.LE:
        return actual <= expected
    if op is Op.GT:
        return actual > expected
    return actual >= expected


def value_kind(v: Any) -> str:
    """A value's kind for filters: ``bool``, ``number`` (int, float, Decimal), ``string``, else its type's name."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float, Decimal)):
        return "number"
    if isinstance(v, str):
        return "string"
    return type(v).__name__


def _same_kind(a: Any, b: Any) -> bool:
    return value_kind(a) == value_kind(b)


def contribution(aggregation: Aggregation, event: Mapping[str, Any]) -> Any:
    """The value an event feeds to ``update`` for an aggregation: None when the event is filtered out or
    the field is null; ``1`` for COUNT(*)."""
    if not all(where_passes(w, event) for w in aggregation.where):
        return None
    if aggregation.field is None:
        if Agg(aggregation.agg) is not Agg.COUNT:
            raise ValueError(f"{aggregation.name}: only COUNT may omit the field")
        return 1
    return event.get(aggregation.field)
