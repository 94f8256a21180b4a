"""The entity_df checked and reduced to the request table engines read: ``__rid``, join keys, ``__t``.

``__rid`` is the input row's position (output order), ``__t`` its timestamp in epoch ms (naive = UTC,
aware converted, finer precision floored, docs/semantics.md §1). Every problem is a
:class:`~skewless.training.plan.TrainingInputError` naming the column.
"""

from __future__ import annotations

import difflib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from skewless.training.plan import PitPlan, TrainingInputError

RID = "__rid"
T = "__t"
_UNIT_PER_MS = {"s": None, "ms": 1, "us": 1_000, "ns": 1_000_000}


def to_arrow(entity_df: Any) -> pa.Table:
    """A pandas DataFrame, Arrow table or record batch as an Arrow table (pandas index dropped)."""
    if isinstance(entity_df, pa.Table):
        return entity_df
    if isinstance(entity_df, pa.RecordBatch):
        return pa.Table.from_batches([entity_df])
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None and isinstance(entity_df, pd.DataFrame):
        try:
            return pa.Table.from_pandas(entity_df, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise TrainingInputError(f"entity_df cannot be read as a table: {exc}") from None
    raise TrainingInputError(f"entity_df must be a pandas DataFrame or a pyarrow Table, got {type(entity_df).__name__}")


def _missing(name: str, what: str, table: pa.Table) -> TrainingInputError:
    close = difflib.get_close_matches(name, table.column_names, n=2)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return TrainingInputError(f"entity_df has no {what} column {name!r}{hint} (columns: {', '.join(table.column_names)})")


def epoch_ms(column: pa.ChunkedArray, name: str) -> np.ndarray:
    """A timestamp column as int64 epoch ms, floored (naive = UTC); nulls are an error."""
    ctype = column.type
    if pa.types.is_date(ctype):
        column = column.cast(pa.timestamp("ms"))
        ctype = column.type
    if not pa.types.is_timestamp(ctype):
        hint = " (parse it first, e.g. pd.to_datetime(df[col], utc=True))" if pa.types.is_string(ctype) or \
            pa.types.is_large_string(ctype) else ""
        raise TrainingInputError(f"timestamp column {name!r} is {ctype}, not a timestamp{hint}")
    if column.null_count:
        first = int(pc.index(pc.is_null(column), True).as_py())
        raise TrainingInputError(f"timestamp column {name!r} has {column.null_count} null value(s) (first at row {first}); "
                                 "every row needs an instant")
    raw = column.cast(pa.timestamp(ctype.unit)).cast(pa.int64()).to_numpy()
    if ctype.unit == "s":
        return raw * 1000
    return np.floor_divide(raw, _UNIT_PER_MS[ctype.unit])


def _key_column(column: pa.ChunkedArray, name: str, ktype: str) -> pa.ChunkedArray:
    ctype = column.type
    if pa.types.is_dictionary(ctype):
        column = column.cast(ctype.value_type)
        ctype = column.type
    if ktype == "string":
        if pa.types.is_string(ctype) or pa.types.is_large_string(ctype):
            return column.cast(pa.string())
        if pa.types.is_null(ctype):
            return column.cast(pa.string())
        raise TrainingInputError(f"entity key column {name!r} is {ctype}; the entity declares it as a string "
                                 "(convert it, e.g. df[col].astype(str))")
    if pa.types.is_integer(ctype):
        try:
            return column.cast(pa.int64())
        except pa.ArrowInvalid:
            raise TrainingInputError(f"entity key column {name!r} has values outside int64") from None
    if pa.types.is_null(ctype):
        return column.cast(pa.int64())
    hint = " (a pandas integer column with missing values becomes float: use dtype 'Int64')" \
        if pa.types.is_floating(ctype) else ""
    raise TrainingInputError(f"entity key column {name!r} is {ctype}; the entity declares it as int64{hint}")


def request_table(entity_df: pa.Table, plan: PitPlan, timestamp_column: str) -> pa.Table:
    """``__rid``, the join keys (typed as the entities declare them) and ``__t`` (epoch ms)."""
    if entity_df.num_rows == 0:
        raise TrainingInputError("entity_df is empty: a training set needs at least one (entity, timestamp) row")
    clash = sorted(set(plan.output_columns) & set(entity_df.column_names))
    if clash:
        raise TrainingInputError(f"entity_df columns {clash} have the names of output feature/status columns; "
                                 "rename them (docs/semantics.md §12)")
    if timestamp_column not in entity_df.column_names:
        raise _missing(timestamp_column, "timestamp", entity_df)
    columns: dict[str, Any] = {RID: pa.array(np.arange(entity_df.num_rows, dtype=np.int64))}
    for key, ktype in plan.key_columns.items():
        if key not in entity_df.column_names:
            views = [v.name for v in plan.views if key in v.key_names]
            raise _missing(key, f"entity key (of {', '.join(views)})", entity_df)
        columns[key] = _key_column(entity_df.column(key), key, ktype)
    columns[T] = pa.array(epoch_ms(entity_df.column(timestamp_column), timestamp_column))
    return pa.table(columns)
