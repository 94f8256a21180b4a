"""The raw tables the archive writes: their names (the raw table of a source and its dead letters) and reading
one at a snapshot, as a Spark DataFrame.

The archive keeps the Kafka position as ``_kafka_partition`` / ``_offset``. (It once used ``_partition``,
which Iceberg's Spark runtime reserves for its metadata column: any scan projecting it fails with
``ValidationException: Table column names conflict with names reserved for Iceberg metadata columns``.)
Normally Iceberg's own snapshot scan is used (``versionAsOf``, split by ``tables.read_table``), pruned to
the requested event days by a filter on ``event_time`` (the tables are partitioned by ``day(event_time)``).
For a table that still has a reserved column name, or when the caller names the data files (incremental
runs read only what was appended), the rows are read from the snapshot's live data files directly as
Parquet by column name. That is exact for append-only tables (the archive only appends and compacts); a
snapshot with delete files is refused.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from skewless.core.dsl import EventSource
from skewless.offline.tables import EPOCH_ORDINAL, BatchError, iceberg_table, read_table

DEAD_LETTER_SUFFIX = "_dead_letters"


class ArchiveTableError(Exception):
    """A source cannot be archived into its table (bad table name, existing table of another layout)."""


def table_identifier(table: str) -> tuple[str, str]:
    """``"namespace.table"`` as ``(namespace, table)``; :class:`ArchiveTableError` if not of that form."""
    parts = table.split(".")
    if len(parts) != 2 or not all(parts):
        raise ArchiveTableError(f"table {table!r} must be 'namespace.table' (e.g. 'raw.orders')")
    return parts[0], parts[1]


def dead_letter_table_name(source: EventSource) -> str:
    """``<namespace>.<table>_dead_letters`` for the source's raw table."""
    namespace, name = table_identifier(source.table)
    return f"{namespace}.{name}{DEAD_LETTER_SUFFIX}"

ICEBERG_RESERVED = {"_partition", "_file", "_pos", "_deleted", "_spec_id", "_row_id", "_last_updated_sequence_number"}


def has_reserved_columns(spark: Any, table: str) -> bool:
    return any(f.name in ICEBERG_RESERVED for f in spark.table(table).schema.fields)


def data_files(spark: Any, table: str, snapshot_id: int) -> list[tuple[str, dict[str, Any]]]:
    """``(path, {partition field: value})`` of the live data files of ``table`` at ``snapshot_id``, from the
    manifests (PyIceberg: no Spark job; dates as ``date``)."""
    from pyiceberg.types import DateType

    t = iceberg_table(spark, table)
    specs, schema = t.specs(), t.schema()
    files, deletes = [], 0
    for task in t.scan(snapshot_id=snapshot_id).plan_files():
        deletes += len(task.delete_files)
        ptype = specs[task.file.spec_id].partition_type(schema)
        part = {}
        for i, f in enumerate(ptype.fields):
            v = task.file.partition[i]
            part[f.name] = date.fromordinal(EPOCH_ORDINAL + v) if isinstance(f.field_type, DateType) and isinstance(v, int) else v
        files.append((task.file.file_path, part))
    if deletes:
        raise BatchError(f"{table} has {deletes} delete file(s) at snapshot {snapshot_id}: the raw archive is "
                         "append-only; rewrite the table (compaction) before running the batch")
    return files


def _fields(part: Any) -> dict[str, Any]:
    """A partition as a dict (a Spark ``Row`` or a mapping)."""
    if part is None:
        return {}
    return part.asDict() if hasattr(part, "asDict") else dict(part)


def _partition_day(part: Any) -> date | None:
    values = list(_fields(part).values())
    if len(values) != 1:
        return None
    v = values[0]
    if isinstance(v, date):
        return v
    if isinstance(v, int):
        return date.fromordinal(EPOCH_ORDINAL + v)
    return None


def raw_dataframe(spark: Any, table: str, snapshot_id: int, first_day: date | None = None,
                  last_day: date | None = None, files: list[str] | None = None) -> Any:
    """The raw rows of ``table`` at ``snapshot_id`` (optionally only files of days ``first_day..last_day``,
    or only the given ``files``): a DataFrame with the table's columns."""
    if not has_reserved_columns(spark, table) and files is None:
        df = read_table(spark, table, snapshot_id)
        if first_day is not None:
            df = df.where(f"event_time >= TIMESTAMP '{first_day.isoformat()} 00:00:00 UTC'")
        if last_day is not None:
            df = df.where(f"event_time < TIMESTAMP '{last_day.isoformat()} 00:00:00 UTC' + INTERVAL 1 DAY")
        return df
    schema = spark.table(table).schema
    if files is None:
        files = []
        for path, part in data_files(spark, table, snapshot_id):
            day = _partition_day(part)
            if day is not None and ((first_day and day < first_day) or (last_day and day > last_day)):
                continue
            files.append(path)
    if not files:
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).parquet(*files)


def event_day(part: Any, event_time: str) -> date | None:
    """The UTC day of ``event_time`` a data file holds, when its partition is exactly Iceberg's
    ``day(event_time)`` (the archive's layout: one field ``<event_time>_day``); else None."""
    fields = _fields(part)
    value = fields.get(f"{event_time}_day") if len(fields) == 1 else None
    # before 1970 older Iceberg versions truncated instead of flooring: those files are read instead
    return value if isinstance(value, date) and value >= date(1970, 1, 1) else None


def added_files(spark: Any, table: str, since_snapshot: int, snapshot_id: int) -> list[tuple[str, Any]]:
    """Data files live at ``snapshot_id`` that were not live at ``since_snapshot`` (appends in between), with
    their partition struct."""
    before = {p for p, _ in data_files(spark, table, since_snapshot)}
    return [(p, part) for p, part in data_files(spark, table, snapshot_id) if p not in before]
