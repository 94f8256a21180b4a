"""Iceberg tables of the batch path: names, creation, schema checks, the runs log and the archive gate.

Per feature view version ``<view>_v<n>`` in namespace ``features`` (all in catalog ``skewless``):

- ``<view>_v<n>_daily_tiles``  keys, ``day`` DATE, one intermediate column per batch-served aggregation
  (see :mod:`batch_jobs.spark_compiler`), ``raw_snapshot_id``; partitioned by ``day``.
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
from skewless.core.dsl import EventSource

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
    rows = spark.sql(f"SELECT snapshot_id FROM {table}.refs WHERE name = 'main'").collect()
    return int(rows[0][0]) if rows else None


def pyiceberg_catalog(spark: Any) -> Any:
    """The PyIceberg view of the Spark session's ``skewless`` catalog (same sqlite file and warehouse)."""
    from skewless.engines.iceberg_catalog import load_catalog

    uri = spark.conf.get(f"spark.sql.catalog.{CATALOG}.uri")
    warehouse = spark.conf.get(f"spark.sql.catalog.{CATALOG}.warehouse")
    return load_catalog(catalog_db=uri.removeprefix("jdbc:sqlite:"), warehouse=warehouse.removeprefix("file://"))


def check_archive(spark: Any, source: EventSource, cutoff: int, catalog: Any | None = None) -> str:
    """Raise :class:`ArchiveNotCompleteError` unless the archive of ``source`` is complete past the cut-off
    plus the allowed lateness (``skewless.archive.progress``: ``complete_until_ms`` already subtracts the
    lateness, so the rule is ``complete_until_ms >= C``). Returns a short note for the log."""
    from skewless.archive.progress import archive_progress

    progress = archive_progress(catalog if catalog is not None else pyiceberg_catalog(spark), source)
    when = datetime.fromtimestamp(cutoff / 1000, timezone.utc).isoformat()
    if progress.state == "batch-only":
        return f"{source.name} is batch-only: no archive gate"
    if progress.state == "stopped":
        raise ArchiveNotCompleteError(f"the archive of {source.name} is stopped ({progress.stopped_reason}); "
                                      "fix it before running the batch")
    if progress.state == "not-started" or progress.complete_until_ms is None:
        raise ArchiveNotCompleteError(f"the archive of {source.name} has no progress yet ({progress.state}): "
                                      f"cannot tell whether events before {when} are all in {source.table}")
    if not progress.is_complete_until(cutoff):
        until = datetime.fromtimestamp(progress.complete_until_ms / 1000, timezone.utc).isoformat()
        raise ArchiveNotCompleteError(
            f"the archive of {source.name} is complete until {until} (newest event time minus the allowed lateness "
            f"{source.allowed_lateness}); the run needs {when}. Wait for the archive, or pass --force for closed "
            "history / static data")
    return f"archive complete until {progress.complete_until_ms} >= cut-off {cutoff}"


# --- output tables -----------------------------------------------------------------------------------


def ensure_namespace(spark: Any, namespace: str) -> None:
    spark.sql(f"CREATE NAMESPACE IF NOT EXISTS {CATALOG}.{namespace}")


def ensure_table(spark: Any, name: str, df: Any, partition_col: str) -> None:
    """Create ``name`` with ``df``'s schema (partitioned by ``partition_col``) or check it matches."""
    from pyspark.sql import functions as F

    if not table_exists(spark, name):
        (df.limit(0).writeTo(name).using("iceberg").partitionedBy(F.col(partition_col))
         .tableProperty("format-version", "2").create())
        return
    have = [(f.name, f.dataType.simpleString()) for f in spark.table(name).schema.fields]
    want = [(f.name, f.dataType.simpleString()) for f in df.schema.fields]
    if have != want:
        raise RawSchemaError(
            f"{name} has columns {have}, this run produces {want}: the raw schema or the compiler changed "
            "the intermediate types; bump the view version (new tables) or drop the table to rebuild it"
        )


def partition_counts(spark: Any, name: str, where: str) -> dict[Any, int]:
    """Rows per partition value of a single-column-partitioned table at its current snapshot, from Iceberg's
    ``partitions`` metadata table (manifests only, no data files read); ``where`` filters ``partition.<col>``."""
    rows = spark.sql(f"SELECT partition, record_count FROM {name}.partitions WHERE {where}").collect()
    return {r[0][0]: int(r[1]) for r in rows}


RUNS_DDL = """CREATE TABLE IF NOT EXISTS {name} (
  day DATE, cutoff_ms BIGINT, fingerprint STRING, run_id STRING, raw_table STRING, raw_snapshot_id BIGINT,
  tile_rows BIGINT, serving_rows BIGINT, seconds DOUBLE, finished_at TIMESTAMP
) USING iceberg"""


def ensure_runs_table(spark: Any, name: str) -> None:
    spark.sql(RUNS_DDL.format(name=name))


def done_days(spark: Any, runs_table: str, fingerprint: str) -> dict[date, dict[str, Any]]:
    """Latest runs-log row per day computed with ``fingerprint``."""
    if not table_exists(spark, runs_table):
        return {}
    rows = spark.sql(
        f"SELECT day, max_by(named_struct('raw_snapshot_id', raw_snapshot_id, 'serving_rows', serving_rows, "
        f"'run_id', run_id, 'tile_rows', tile_rows, 'finished_at', finished_at), finished_at) AS last FROM {runs_table} WHERE fingerprint = '{fingerprint}' GROUP BY day"
    ).collect()
    return {r["day"]: r["last"].asDict() for r in rows}


def append_runs(spark: Any, runs_table: str, rows: list[dict[str, Any]]) -> None:
    from pyspark.sql.types import (DateType, DoubleType, LongType, StringType, StructField, StructType,
                                   TimestampType)

    schema = StructType([
        StructField("day", DateType()), StructField("cutoff_ms", LongType()), StructField("fingerprint", StringType()),
        StructField("run_id", StringType()), StructField("raw_table", StringType()),
        StructField("raw_snapshot_id", LongType()), StructField("tile_rows", LongType()),
        StructField("serving_rows", LongType()), StructField("seconds", DoubleType()),
        StructField("finished_at", TimestampType()),
    ])
    now = datetime.now(timezone.utc)
    data = [(r["day"], r["cutoff_ms"], r["fingerprint"], r["run_id"], r["raw_table"], r["raw_snapshot_id"],
             r["tile_rows"], r.get("serving_rows"), float(r["seconds"]), now) for r in rows]
    spark.createDataFrame(data, schema).writeTo(runs_table).append()
