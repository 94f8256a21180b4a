"""The raw archive: every record of every Kafka-fed event source in Iceberg, exactly once (docs/archive.md).

Batch reads :func:`archive_progress` to decide whether a day may run, and the table builders in
:mod:`skewless.archive.tables` for the layout.
"""

from skewless.archive.progress import ArchiveProgress, PartitionProgress, archive_progress
from skewless.archive.tables import (
    ArchiveTableError,
    IncompatibleSchemaError,
    dead_letter_schema,
    dead_letter_table_name,
    ensure_tables,
    raw_table_schema,
)

__all__ = [
    "ArchiveProgress",
    "ArchiveTableError",
    "IncompatibleSchemaError",
    "PartitionProgress",
    "archive_progress",
    "dead_letter_schema",
    "dead_letter_table_name",
    "ensure_tables",
    "raw_table_schema",
]
