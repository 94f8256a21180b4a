"""Training sets: point-in-time correct feature values (docs/training.md, docs/semantics.md §12).

:func:`historical_features` checks the input, builds the engine-neutral plan
(:mod:`skewless.training.plan`), runs it on an engine (:mod:`~skewless.training.duckdb_engine`, the
default, or :mod:`~skewless.training.spark_engine`) and attaches the feature and status columns to the
input rows, in input order.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from skewless.core.schemas import PANDAS_DTYPES
from skewless.training.plan import PitPlan, TrainingInputError, build_pit_plan
from skewless.training.requests import RID, request_table, to_arrow
from skewless.training.sources import TrainingDataError

ENGINES = ("duckdb", "spark")
# the value type of an engine's Arrow output column (timestamps and decimals: see schemas.PANDAS_DTYPES)
_VALUE_TYPES = {pa.int64(): "int64", pa.int32(): "int64", pa.float64(): "float64", pa.string(): "string",
                pa.large_string(): "string", pa.bool_(): "bool"}

__all__ = ["ENGINES", "TrainingDataError", "TrainingInputError", "attach", "historical_features"]


def compute(plan: PitPlan, requests: pa.Table, *, catalog: Any, engine: str = "duckdb", progress: bool = True,
            spark: Any = None, chunk_rows: int | None = None, memory_limit: str | None = None) -> pa.Table:
    """``__rid`` + output columns for a request table, ordered by ``__rid``."""
    if engine == "duckdb":
        from skewless.training import duckdb_engine

        opts = duckdb_engine.DuckDBOptions(progress=progress, memory_limit=memory_limit)
        if chunk_rows:
            opts.chunk_rows = chunk_rows
        return duckdb_engine.run(plan, requests, catalog, opts)
    if engine == "spark":
        from skewless.training import spark_engine

        return spark_engine.run_to_arrow(plan, requests, spark=spark, progress=progress)
    raise TrainingInputError(f"unknown engine {engine!r}: one of {', '.join(ENGINES)}")


def attach(entity_df: Any, table: pa.Table, result: pa.Table, plan: PitPlan) -> Any:
    """The input rows with the output columns appended: pandas in -> pandas out (index kept), Arrow in ->
    Arrow out. Integer, float, string and bool columns (features and statuses) get the nullable pandas dtype of
    their value type (``schemas.PANDAS_DTYPES``, the online response's too: null stays null)."""
    if result.num_rows != table.num_rows:
        raise AssertionError(f"engine returned {result.num_rows} rows for {table.num_rows} input rows")
    columns = [c for c in result.column_names if c != RID]
    if isinstance(entity_df, (pa.Table, pa.RecordBatch)):
        out = table
        for c in columns:
            out = out.append_column(c, result.column(c))
        return out
    import pandas as pd

    mapping = {arrow: pd.api.types.pandas_dtype(PANDAS_DTYPES[t]) for arrow, t in _VALUE_TYPES.items()}
    out = entity_df.copy()
    for c in columns:
        series = result.column(c).to_pandas(types_mapper=mapping.get)
        series.index = out.index
        out[c] = series
    return out


def historical_features(repo: Any, catalog: Any, entity_df: Any, features: Any, *,
                        timestamp_column: str = "event_timestamp", engine: str = "duckdb", progress: bool = True,
                        spark: Any = None, chunk_rows: int | None = None, memory_limit: str | None = None) -> Any:
    """Point-in-time feature values for every row of ``entity_df`` (see :meth:`skewless.store.FeatureStore.
    get_historical_features`)."""
    plan = build_pit_plan(repo, features)
    table = to_arrow(entity_df)
    requests = request_table(table, plan, timestamp_column)
    if callable(catalog) and not hasattr(catalog, "load_table"):
        catalog = catalog()  # opened only once the input is valid
    result = compute(plan, requests, catalog=catalog, engine=engine, progress=progress, spark=spark,
                     chunk_rows=chunk_rows, memory_limit=memory_limit)
    return attach(entity_df, table, result, plan)
