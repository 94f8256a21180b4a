"""Structured Spark/Arrow intermediates <-> the laws' intermediates, and the serving-field encoding.

A tiles or serving row read through Arrow (``to_pylist``) holds COUNT/SUM as ints or Decimals (the exact int
sums of int64 fields as ``decimal(38, 0)``, read back as ints), AVG as ``{"sum", "count"}``, MIN/MAX as values and LAST as ``{"ts", "partition", "offset", "value"}``. These
helpers turn them into :mod:`skewless.core.laws` intermediates; the serving fields are then encoded by
:func:`skewless.core.layout.encode_vector` exactly as :func:`skewless.core.layout.encode_batch_record`
does, so the batch record in Redis is byte-identical to what the layout module would write.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

from skewless.core import laws, layout
from skewless.core.dsl import Agg, Entity, KeyType
from skewless.offline.spark_compiler import BatchWindowSpec, serving_part_column


def to_intermediate(agg: Agg | str, value: Any, int_sum: bool = False) -> Any:
    """A structured (Arrow/Spark) intermediate as the laws' intermediate (``int_sum``: a SUM/AVG of an int64 field,
    whose ``decimal(38, 0)`` sum is the law's int)."""
    agg = Agg(agg)
    if agg in (Agg.COUNT, Agg.SUM):
        return laws.LAWS[agg].init() if value is None else int(value) if int_sum else value
    if agg is Agg.AVG:
        return (0, 0) if value is None else (int(value["sum"]) if int_sum else value["sum"], value["count"])
    if agg is Agg.LAST:
        return None if value is None else (value["ts"], value["partition"], value["offset"], value["value"])
    return value  # MIN / MAX


def window_parts(row: Mapping[str, Any], window: BatchWindowSpec) -> list[tuple]:
    """``[body, tail0, tail1]`` (lifetime: ``[body]``) intermediates of one serving row."""
    return [
        tuple(to_intermediate(a.agg, row[serving_part_column(window, a, part)], a.name in window.int_sums)
              for a in window.aggregations)
        for part in window.parts
    ]


def encode_window(row: Mapping[str, Any], window: BatchWindowSpec) -> str:
    """The batch hash value of one window field, as :func:`layout.encode_batch_record` writes it."""
    aggs = [Agg(a.agg) for a in window.aggregations]
    return laws.dumps([layout.encode_vector(p, aggs) for p in window_parts(row, window)])


def encode_serving_batches(batches: Iterator[Any], entity: Entity, key_names: Sequence[str],
                           windows: Sequence[BatchWindowSpec], cutoff_ms: int, run_id: str) -> Iterator[Any]:
    """``mapInArrow`` body: structured serving rows -> (keys, entity_tag, cutoff_ms, run_id, w_* strings)."""
    import pyarrow as pa

    for batch in batches:
        rows = batch.to_pylist()
        out: dict[str, list[Any]] = {k: [r[k] for r in rows] for k in key_names}
        out["entity_tag"] = [layout.encode_entity_key(entity, tuple(r[k] for k in key_names)) for r in rows]
        out["cutoff_ms"] = [cutoff_ms] * len(rows)
        out["run_id"] = [run_id] * len(rows)
        for w in windows:
            out[w.column] = [encode_window(r, w) for r in rows]
        yield pa.RecordBatch.from_pydict(out)


# --- the same encoding with Spark SQL built-ins (no Python on the serving hot path) ---------------------

_JSON_SHORT = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}
_NEEDS_JSON_ESCAPE = '[\\x00-\\x1f"\\\\]'


def _json_string(col: Any) -> Any:
    """``json.dumps(text, ensure_ascii=False)`` as a Column: quotes, backslashes and control characters
    escaped exactly as Python does (``\\n``-style short forms, else ``\\u00xx`` in lower-case hex)."""
    from pyspark.sql import functions as F

    escaped = F.replace(F.replace(col, F.lit("\\"), F.lit("\\\\")), F.lit('"'), F.lit('\\"'))
    for code in range(0x20):
        escaped = F.replace(escaped, F.lit(chr(code)), F.lit(_JSON_SHORT.get(code, f"\\u{code:04x}")))
    return F.concat(F.lit('"'), F.when(col.rlike(_NEEDS_JSON_ESCAPE), escaped).otherwise(col), F.lit('"'))


def _json_value(col: Any, dtype: Any, int_sum: bool = False) -> Any | None:
    """The laws' JSON of a Spark value of type ``dtype`` (``null`` when null); None when the type has no
    exact SQL encoding here (floats and decimals keep Python's text via :func:`encode_serving_batches`). ``int_sum``:
    the value is (or holds) the exact int sum of an int64 field, a ``decimal(38, 0)`` written as the laws write it."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if int_sum and isinstance(dtype, T.DecimalType) and dtype.scale == 0:  # beyond int64: {"$int": "<digits>"}
        text = F.when(col.between(laws.INT64_MIN, laws.INT64_MAX), col.cast("string")).otherwise(
            F.concat(F.lit('{"$int":"'), col.cast("string"), F.lit('"}')))
    elif isinstance(dtype, (T.LongType, T.IntegerType, T.ShortType, T.ByteType)):
        text = col.cast("string")
    elif isinstance(dtype, T.BooleanType):
        text = F.when(col, F.lit("true")).otherwise(F.lit("false"))
    elif isinstance(dtype, T.StringType):
        text = _json_string(col)
    elif isinstance(dtype, T.StructType):
        parts = [_json_value(col.getField(f.name), f.dataType, int_sum) for f in dtype.fields]
        if any(p is None for p in parts):
            return None
        text = F.when(col.isNotNull(), F.concat(F.lit("["), F.concat_ws(",", *parts), F.lit("]")))
    else:
        return None
    return F.coalesce(text, F.lit("null"))


def _entity_tag(entity: Entity, key_names: Sequence[str]) -> Any:
    """:func:`layout.encode_entity_key` as a Column (``s=`` %-escaped strings, ``i=`` int64s, joined by ',')."""
    from pyspark.sql import functions as F

    parts = []
    for (_, ktype), name in zip(entity.join_keys, key_names):
        col = F.col(name)
        if KeyType(ktype) is KeyType.STRING:
            for ch, esc in layout.ESCAPES.items():  # '%' first: the escapes themselves hold '%'
                col = F.replace(col, F.lit(ch), F.lit(esc))
            parts.append(F.concat(F.lit("s="), col))
        else:
            parts.append(F.concat(F.lit("i="), col.cast("string")))
    return F.concat_ws(",", *parts)


def sql_window_column(schema: Any, window: BatchWindowSpec) -> Any | None:
    """:func:`encode_window` as a Column over the structured serving row (None: not SQL-encodable)."""
    from pyspark.sql import functions as F

    vectors = []
    for part in window.parts:
        items = []
        for a in window.aggregations:
            name = serving_part_column(window, a, part)
            item = _json_value(F.col(name), schema[name].dataType, a.name in window.int_sums)
            if item is None:
                return None
            items.append(item)
        vectors.append(F.concat(F.lit("["), F.concat_ws(",", *items), F.lit("]")))
    return F.concat(F.lit("["), F.concat_ws(",", *vectors), F.lit("]"))


def encode_serving_sql(structured: Any, entity: Entity, key_names: Sequence[str],
                       windows: Sequence[BatchWindowSpec], cutoff_ms: int, run_id: str) -> Any | None:
    """The output of :func:`encode_serving_batches` computed by Spark built-ins, or None when a window holds
    a float or decimal (their text is Python's: encoded by :func:`encode_serving_batches`)."""
    from pyspark.sql import functions as F

    if set(layout.ESCAPES) != {"%", ":", "{", "}", ","} or next(iter(layout.ESCAPES)) != "%":
        return None  # the key escaping changed: only the layout's own function knows it
    encoded = [sql_window_column(structured.schema, w) for w in windows]
    if any(c is None for c in encoded):
        return None
    return structured.select(
        *[F.col(k) for k in key_names], _entity_tag(entity, key_names).alias("entity_tag"),
        F.lit(cutoff_ms).cast("bigint").alias("cutoff_ms"), F.lit(run_id).alias("run_id"),
        *[c.alias(w.column) for c, w in zip(encoded, windows)])
