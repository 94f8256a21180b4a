"""Iceberg tables of the offline store (batch job and training): names, creation, schema checks and the runs log.

Per feature view version ``<view>_v<n>`` in namespace ``features`` (all in catalog ``skewless``):

- ``<view>_v<n>_daily_tiles``  keys, ``day`` DATE, one intermediate column per batch-served aggregation
  (see :mod:`skewless.offline.spark_compiler`), ``raw_snapshot_id``; partitioned by ``day``.
- ``<view>_v<n>_serving``      keys, ``entity_tag``, ``cutoff_ms``, ``run_id``, one string column per batch
  field of the layout (``w_<W ms>``, ``w_life``) holding the exact Redis hash value; partitioned by
  ``cutoff_ms``.
- ``<view>_v<n>_runs``         the runs log: one row per computed day (fingerprint, raw snapshot, rows,
  seconds); resumable backfills skip days logged with the same fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Mapping

from skewless.config import ICEBERG_CATALOG_NAME

DEFAULT_NAMESPACE = "features"
CATALOG = ICEBERG_CATALOG_NAME


class BatchError(Exception):
    """A batch run cannot start or finish; the message says why and what to do. Nothing was written."""


class ArchiveNotCompleteError(BatchError):
    """The archive has not passed the cut-off plus the allowed lateness for a requested day."""


class RawSchemaError(BatchError):
    """The raw table lacks a column the view reads, or its type changed."""


class NoRawDataError(BatchError):
    """The raw table does not exist or has no snapshot."""


@dataclass(frozen=True)
class ViewTables:
    """Fully qualified Spark names (``skewless.features.x``) and PyIceberg identifiers (``features.x``)."""

    namespace: str
    view: str
    version: int

    @property
    def base(self) -> str:
        return f"{self.view}_v{self.version}"

    def ident(self, kind: str) -> str:
        """PyIceberg / DuckDB identifier, e.g. ``features.user_order_stats_v1_daily_tiles``."""
        return f"{self.namespace}.{self.base}_{kind}"

    def spark(self, kind: str) -> str:
        return f"{CATALOG}.{self.ident(kind)}"

    @property
    def tiles(self) -> str:
        return self.spark("daily_tiles")

    @property
    def serving(self) -> str:
        return self.spark("serving")

    @property
    def runs(self) -> str:
        return self.spark("runs")

    @property
    def state(self) -> str:
        """The serving state: the structured serving rows (intermediates) per cut-off, for the next daily run."""
        return self.spark("serving_state")


def spark_name(table: str) -> str:
    """A source table (``raw.orders``) in the shared catalog (``skewless.raw.orders``)."""
    return table if table.startswith(CATALOG + ".") else f"{CATALOG}.{table}"


# --- raw tables ----------------------------------------------------------------------------------------


_TYPE_OK = {
    "string": ("StringType",),
    "int64": ("LongType", "IntegerType"),
    "int32": ("IntegerType", "LongType"),
    "float64": ("DoubleType",),
    "decimal": ("DecimalType",),
    "timestamp": ("TimestampType",),
    "bool": ("BooleanType",),
}


# Iceberg's read.split.target-size default, given explicitly: Iceberg then does not adapt the split size down
# to the cluster's parallelism, which cuts a small day-partitioned table into a task per 2-4 small files
# (the serving step read 365 tile files in 92 tasks; with this, 12: 10.7-16.4 s -> 6.8-8.1 s at 1M events)
READ_SPLIT_BYTES = 128 << 20


def read_table(spark: Any, name: str, snapshot_id: int | None = None) -> Any:
    """An Iceberg table (optionally at a snapshot) as a DataFrame, split by :data:`READ_SPLIT_BYTES`."""
    reader = spark.read.option("split-size", str(READ_SPLIT_BYTES))
    if snapshot_id is not None:
        reader = reader.option("versionAsOf", str(snapshot_id))
    return reader.table(name)


def table_exists(spark: Any, name: str) -> bool:
    return bool(spark.catalog.tableExists(name))


def check_raw_schema(spark: Any, table: str, needed: Mapping[str, str]) -> None:
    """Every column the view reads exists with a compatible type, else :class:`RawSchemaError`."""
    if not table_exists(spark, table):
        raise NoRawDataError(f"raw table {table} does not exist: the archive has not written this source yet "
                             "(or the source's table name is wrong)")
    fields = {f.name: f.dataType for f in spark.table(table).schema.fields}
    problems = []
    for col, ftype in needed.items():
        if col not in fields:
            problems.append(f"column {col!r} ({ftype}) is missing")
            continue
        got = type(fields[col]).__name__
        if got not in _TYPE_OK.get(ftype, ()):
            problems.append(f"column {col!r} is {fields[col].simpleString()}, the view needs {ftype}"
                            + (" (timestamp with zone, not timestamp_ntz)" if ftype == "timestamp" else ""))
    if problems:
        raise RawSchemaError(f"raw table {table} changed: " + "; ".join(problems)
                             + ". Fix the archive table or the schema in schemas/, then bump the view version")


def current_snapshot_id(spark: Any, table: str) -> int | None:
    """The table's current snapshot, read from the catalog now (the archive commits with PyIceberg); Spark's cached
    copy of the table is refreshed, so a ``VERSION AS OF`` read of this snapshot finds it."""
    sid = _snapshot_of(iceberg_table(spark, table))
    spark.catalog.refreshTable(table)
    return sid


def snapshot_id(spark: Any, table: str) -> int | None:
    """A table's current snapshot (None: no table, or no snapshot yet), from the catalog (PyIceberg)."""
    catalog = pyiceberg_catalog(spark)
    return _snapshot_of(catalog.load_table(_ident(table))) if catalog.table_exists(_ident(table)) else None


def _snapshot_of(table: Any) -> int | None:
    sid = table.metadata.current_snapshot_id
    return None if sid is None else int(sid)


def delete_partitions_before(spark: Any, table: str, column: str, value: int) -> int:
    """Delete the rows with ``column < value`` from a table partitioned by ``column`` (whole data files: nothing is
    rewritten; no commit when nothing matches). Returns the rows deleted."""
    import pyiceberg.expressions as E

    t = iceberg_table(spark, table)
    older = E.LessThan(column, value)
    rows = sum(int(task.file.record_count) for task in t.scan(row_filter=older).plan_files())
    if rows:
        t.delete(delete_filter=older)
        spark.catalog.refreshTable(table)
    return rows


def serving_state_info(spark: Any, table: str, cutoff_ms: int) -> dict[str, Any] | None:
    """Fingerprint and tiles snapshot of the serving state of ``cutoff_ms`` (None: no such state)."""
    import pyiceberg.expressions as E

    catalog = pyiceberg_catalog(spark)
    if not catalog.table_exists(_ident(table)):
        return None
    rows = catalog.load_table(_ident(table)).scan(
        row_filter=E.EqualTo("cutoff_ms", cutoff_ms), selected_fields=("fingerprint", "tiles_snapshot_id"),
        limit=1).to_arrow().to_pylist()
    return rows[0] if rows else None


def iceberg_table(spark: Any, table: str) -> Any:
    """The PyIceberg table behind a Spark name (``skewless.raw.orders``), loaded from the catalog now."""
    return pyiceberg_catalog(spark).load_table(_ident(table))


def _ident(table: str) -> str:
    """``skewless.features.x`` -> ``features.x`` (PyIceberg identifier)."""
    return table.removeprefix(CATALOG + ".")


_PYICEBERG: dict[tuple[str, str], Any] = {}


def pyiceberg_catalog(spark: Any) -> Any:
    """The PyIceberg view of the Spark session's ``skewless`` catalog (same sqlite file and warehouse, or the
    profile's PostgreSQL catalog and its ``s3://`` warehouse)."""
    from skewless.engines.iceberg_catalog import load_catalog

    uri = spark.conf.get(f"spark.sql.catalog.{CATALOG}.uri")
    warehouse = spark.conf.get(f"spark.sql.catalog.{CATALOG}.warehouse")
    key = (uri, warehouse)
    if key not in _PYICEBERG:
        if uri.startswith("jdbc:sqlite:"):
            _PYICEBERG[key] = load_catalog(catalog_db=uri.removeprefix("jdbc:sqlite:"),
                                           warehouse=warehouse.removeprefix("file://"))
        else:  # the profile's shared (postgres) catalog, which the session was built from
            _PYICEBERG[key] = load_catalog()
    return _PYICEBERG[key]


# --- output tables -----------------------------------------------------------------------------------


def ensure_namespace(spark: Any, namespace: str) -> None:
    spark.sql(f"CREATE NAMESPACE IF NOT EXISTS {CATALOG}.{namespace}")


# Properties of the tiles and serving tables. Parquet dictionary encoding off: a tile file holds one day, where
# every entity key occurs once and most other columns are unique or nearly so, so the writer built dictionaries only
# to fall back from them; without them the 8M-row tiles write of the 10M-event bench took 6-8 s instead of
# 14-17 s, the files grew 5% (250 -> 262 MB, zstd) and reading them back was no slower (docs/batch.md §7).
OUTPUT_TABLE_PROPERTIES = {"format-version": "2", "parquet.enable.dictionary": "false"}


def ensure_table(spark: Any, name: str, df: Any, partition_col: str) -> None:
    """Create ``name`` with ``df``'s schema (partitioned by ``partition_col``) or check it matches; an existing
    table gets :data:`OUTPUT_TABLE_PROPERTIES` it lacks (a table made by an older version)."""
    from pyspark.sql import functions as F

    if not table_exists(spark, name):
        writer = df.limit(0).writeTo(name).using("iceberg").partitionedBy(F.col(partition_col))
        for key, value in OUTPUT_TABLE_PROPERTIES.items():
            writer = writer.tableProperty(key, value)
        try:
            writer.create()
            return
        except Exception:  # noqa: BLE001 - another run of the view created it meanwhile: checked below like any
            if not table_exists(spark, name):
                raise
    table = iceberg_table(spark, name)
    missing = {k: v for k, v in OUTPUT_TABLE_PROPERTIES.items() if k != "format-version" and table.properties.get(k) != v}
    if missing:
        table.transaction().set_properties(missing).commit_transaction()
        spark.catalog.refreshTable(name)
    have = [(f.name, f.dataType.simpleString()) for f in spark.table(name).schema.fields]
    want = [(f.name, f.dataType.simpleString()) for f in df.schema.fields]
    if have != want:
        raise RawSchemaError(
            f"{name} has columns {have}, this run produces {want}: the raw schema or the compiler changed "
            "the intermediate types; bump the view version (new tables) or drop the table to rebuild it"
        )


def partition_counts(spark: Any, name: str, first: Any, last: Any | None = None) -> dict[Any, int]:
    """Rows per partition value in ``[first, last]`` (``last`` None: only ``first``) of a single-column-partitioned
    table at its current snapshot, summed from the data files' record counts in the manifests (PyIceberg: no
    data file read, no Spark job)."""
    import pyiceberg.expressions as E

    table = iceberg_table(spark, name)
    col = table.spec().fields[0].name
    hi = first if last is None else last
    bounds = [v.isoformat() if isinstance(v, date) else v for v in (first, hi)]  # PyIceberg takes dates as text
    counts: dict[Any, int] = {}
    for task in table.scan(row_filter=E.And(E.GreaterThanOrEqual(col, bounds[0]),
                                            E.LessThanOrEqual(col, bounds[1]))).plan_files():
        value = task.file.partition[0]
        if isinstance(first, date) and isinstance(value, int):
            value = date.fromordinal(EPOCH_ORDINAL + value)  # a date partition holds days since 1970-01-01
        counts[value] = counts.get(value, 0) + int(task.file.record_count)
    return counts


EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


RUNS_DDL = """CREATE TABLE IF NOT EXISTS {name} (
  day DATE, cutoff_ms BIGINT, fingerprint STRING, run_id STRING, raw_table STRING, raw_snapshot_id BIGINT,
  tile_rows BIGINT, serving_rows BIGINT, seconds DOUBLE, finished_at TIMESTAMP
) USING iceberg"""


def ensure_runs_table(spark: Any, name: str) -> None:
    if not pyiceberg_catalog(spark).table_exists(_ident(name)):
        spark.sql(RUNS_DDL.format(name=name))


def done_days(spark: Any, runs_table: str, fingerprint: str) -> dict[date, dict[str, Any]]:
    """Latest runs-log row per day computed with ``fingerprint`` (read with PyIceberg: the log is small, and a
    Spark job for it costs a cold JVM about a second)."""
    import pyiceberg.expressions as E

    catalog = pyiceberg_catalog(spark)
    if not catalog.table_exists(_ident(runs_table)):
        return {}
    cols = ("day", "raw_snapshot_id", "serving_rows", "run_id", "tile_rows", "finished_at")
    rows = catalog.load_table(_ident(runs_table)).scan(
        row_filter=E.EqualTo("fingerprint", fingerprint), selected_fields=cols).to_arrow().to_pylist()
    latest: dict[date, dict[str, Any]] = {}
    for r in rows:
        r["finished_at"] = r["finished_at"].replace(tzinfo=None)  # UTC, as Spark's session time zone gave it
        if r["day"] not in latest or r["finished_at"] >= latest[r["day"]]["finished_at"]:
            latest[r["day"]] = r
    return {d: {k: v for k, v in r.items() if k != "day"} for d, r in latest.items()}


def append_runs(spark: Any, runs_table: str, rows: list[dict[str, Any]]) -> None:
    """Append runs-log rows (one PyIceberg commit); Spark's cached copy of the table is refreshed after."""
    import pyarrow as pa

    table = iceberg_table(spark, runs_table)
    now = datetime.now(timezone.utc)
    cols: dict[str, list[Any]] = {
        "day": [r["day"] for r in rows], "cutoff_ms": [r["cutoff_ms"] for r in rows],
        "fingerprint": [r["fingerprint"] for r in rows], "run_id": [r["run_id"] for r in rows],
        "raw_table": [r["raw_table"] for r in rows], "raw_snapshot_id": [r["raw_snapshot_id"] for r in rows],
        "tile_rows": [r["tile_rows"] for r in rows], "serving_rows": [r.get("serving_rows") for r in rows],
        "seconds": [float(r["seconds"]) for r in rows], "finished_at": [now] * len(rows),
    }
    schema = table.schema().as_arrow()
    table.append(pa.Table.from_pydict(cols, schema=schema))
    spark.catalog.refreshTable(runs_table)
