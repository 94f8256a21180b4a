"""The embedded engine's inputs as DuckDB relations over the Iceberg tables.

When the scan allows it (:func:`skewless.training.sources.parquet_files`: no delete files, Parquet,
one schema in the table's history) DuckDB reads the data files itself, filtered in SQL: a view over
``read_parquet`` of the files the Iceberg manifests select when they are local, or over a PyArrow dataset
of them on the table's own file system when they are on object storage (this DuckDB has no ``httpfs``;
DuckDB pushes the columns and the filter into the dataset's scan, so only the row groups and columns the
query needs are fetched). That skips building an Arrow table of every row in Python and converting it
again in DuckDB. Otherwise the PyIceberg scan's Arrow table is registered under the same name, so the SQL
over it is the same either way.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import pyarrow as pa
import pyarrow.dataset as pa_dataset

from skewless.training import sources


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _files_sql(files: Sequence[str]) -> str:
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


def relation(con: Any, name: str, catalog: Any, ident: str, columns: Sequence[str], *, where: str = "",
             snapshot_id: int | None = None, iceberg_filter: Any = None,
             read_arrow: Callable[[], pa.Table]) -> str:
    """Register ``name`` as the selected columns of the table's rows passing ``where`` (SQL, the same
    condition as ``iceberg_filter``); ``read_arrow`` is the PyIceberg fallback. Returns how it was read
    (``"parquet"``, ``"dataset"`` for object-store files, or ``"arrow"``)."""
    files = sources.parquet_files(catalog, ident, snapshot_id=snapshot_id, row_filter=iceberg_filter)
    if files is None:
        con.register(name, read_arrow())
        return "arrow"
    cols = ", ".join(_q(c) for c in dict.fromkeys(columns))
    if files.filesystem is None:
        source, how = f"read_parquet({_files_sql(files.paths)})", "parquet"
    else:
        source, how = _dataset_name(name), "dataset"
        con.register(source, pa_dataset.dataset(files.paths, format="parquet", filesystem=files.filesystem))
    con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT {cols} FROM {source}"
                + (f" WHERE {where}" if where else ""))
    return how


def _dataset_name(name: str) -> str:
    return name + "__files"


def drop(con: Any, name: str) -> None:
    """Forget a relation made by :func:`relation` (either kind)."""
    con.unregister(name)
    con.execute(f"DROP VIEW IF EXISTS {name}")
    con.unregister(_dataset_name(name))


def snapshot_rows(con: Any, name: str, catalog: Any, ident: str, columns: Sequence[str]) -> str:
    """Every row of a snapshot source (selected columns)."""
    return relation(con, name, catalog, ident, columns,
                    read_arrow=lambda: sources.read_table(catalog, ident, columns, "snapshot source"))


def raw_events(con: Any, name: str, catalog: Any, ident: str, snapshot_id: int | None, columns: Sequence[str],
               event_time: str, start_ms: int, end_ms: int) -> str:
    """Raw rows with ``start_ms <= event_time < end_ms`` at ``snapshot_id`` (None: the current snapshot)."""
    from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

    flt = And(GreaterThanOrEqual(event_time, sources.iso_utc(start_ms)), LessThan(event_time, sources.iso_utc(end_ms)))
    et = _q(event_time)
    where = f"{et} >= make_timestamp({start_ms * 1000}) AND {et} < make_timestamp({end_ms * 1000})"
    return relation(con, name, catalog, ident, columns, where=where, snapshot_id=snapshot_id, iceberg_filter=flt,
                    read_arrow=lambda: sources.read_raw_events(catalog, ident, snapshot_id, columns, event_time,
                                                               start_ms, end_ms))


def daily_tiles(con: Any, name: str, catalog: Any, ident: str, key_names: Sequence[str], columns: Sequence[str],
                first_day: int, last_day: int) -> str:
    """Daily tiles of ``first_day..last_day`` as keys, ``__day`` (day number) and the tile columns (a view:
    Parquet files are read again by each query that uses them, cheaper than a copy in DuckDB)."""
    from pyiceberg.expressions import And, GreaterThanOrEqual, LessThanOrEqual

    lo, hi = sources.day_of(first_day).isoformat(), sources.day_of(last_day).isoformat()
    src = name + "_src"
    how = relation(con, src, catalog, ident, tuple(key_names) + ("day",) + tuple(columns),
                   where=f"day >= DATE '{lo}' AND day <= DATE '{hi}'",
                   iceberg_filter=And(GreaterThanOrEqual("day", lo), LessThanOrEqual("day", hi)),
                   read_arrow=lambda: sources.read_daily_tiles(catalog, ident, key_names, columns, first_day, last_day))
    keys = ", ".join(_q(k) for k in key_names)
    rest = "".join(", " + _q(c) for c in columns)
    con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT {keys}, CAST(day - DATE '1970-01-01' AS INTEGER) "
                f"AS __day{rest} FROM {src}")
    return how

