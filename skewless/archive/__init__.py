"""The raw archive: every record of every Kafka-fed event source in Iceberg, exactly once (docs/archive.md).

The progress it publishes (:mod:`skewless.offline.archive_progress`) and the raw tables' names
(:mod:`skewless.offline.raw`) belong to the offline store, where the batch job (its archive gate) and training
read them; the table builders are :mod:`skewless.archive.tables`.
"""

from skewless.archive.tables import (
    ArchiveTableError,
    IncompatibleSchemaError,
    dead_letter_schema,
    dead_letter_table_name,
    ensure_tables,
    raw_table_schema,
)
from skewless.offline.archive_progress import ArchiveProgress, PartitionProgress, archive_progress

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
