"""Structured Spark/Arrow intermediates <-> the laws' intermediates, and the serving-field encoding.

A tiles or serving row read through Arrow (``to_pylist``) holds COUNT/SUM as ints or Decimals, AVG as
``{"sum", "count"}``, MIN/MAX as values and LAST as ``{"ts", "partition", "offset", "value"}``. These
helpers turn them into :mod:`skewless.core.laws` intermediates; the serving fields are then encoded by
:func:`skewless.core.layout.encode_vector` exactly as :func:`skewless.core.layout.encode_batch_record`
does, so the batch record in Redis is byte-identical to what the layout module would write.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

from skewless.core import laws, layout
from skewless.core.dsl import Agg, Entity

from batch_jobs.spark_compiler import BatchWindowSpec, serving_part_column


def to_intermediate(agg: Agg | str, value: Any) -> Any:
    """A structured (Arrow/Spark) intermediate as the laws' intermediate."""
    agg = Agg(agg)
    if agg in (Agg.COUNT, Agg.SUM):
        return laws.LAWS[agg].init() if value is None else value
    if agg is Agg.AVG:
        return (0, 0) if value is None else (value["sum"], value["count"])
    if agg is Agg.LAST:
        return None if value is None else (value["ts"], value["partition"], value["offset"], value["value"])
    return value  # MIN / MAX


def window_parts(row: Mapping[str, Any], window: BatchWindowSpec) -> list[tuple]:
    """``[body, tail0, tail1]`` (lifetime: ``[body]``) intermediates of one serving row."""
    return [
        tuple(to_intermediate(a.agg, row[serving_part_column(window, a, part)]) for a in window.aggregations)
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
