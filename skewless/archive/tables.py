"""The raw archive's Iceberg tables: one raw table per Kafka-fed event source, plus its dead letters.

This layout is a contract with the batch engine (docs/archive.md, "Tables"): the tables' names live with the
offline store (:mod:`skewless.offline.raw`), which the batch job and training read.

Raw table ``<source.table>`` (e.g. ``raw.orders``), partitioned by ``day(<event_time>)``:

* one column per schema field: string -> ``string``, int64 -> ``long``, float64 -> ``double``,
  decimal -> ``decimal(38, s)`` (``s`` from ``"x-skewless-scale"`` on the property, default
  :data:`DEFAULT_DECIMAL_SCALE`), bool -> ``boolean``, timestamp (the event-time field and any other
  date-time field) -> ``timestamptz`` (microsecond type holding millisecond values). Schema columns are
  optional in Iceberg (a field added later is null in older rows);
* ``_kafka_partition int``, ``_offset long`` (the Kafka position; required), ``_kafka_ts timestamptz`` (the
  Kafka record timestamp; null only for records without one), ``_ingested_at timestamptz`` (required).

Dead letters ``<namespace>.<table>_dead_letters``, partitioned by ``day(_ingested_at)``:
``_kafka_partition int, _offset long, _kafka_ts timestamptz, _ingested_at timestamptz, reason string,
payload binary`` (the original record bytes; null only for a tombstone).
"""

from __future__ import annotations

import json
from typing import Any

from skewless.core.dsl import EventSource
from skewless.core.schemas import DECIMAL_PRECISION, DEFAULT_DECIMAL_SCALE, EventSchema
from skewless.offline.raw import ArchiveTableError, dead_letter_table_name, table_identifier

PARTITION_COL = "_kafka_partition"
OFFSET_COL = "_offset"
KAFKA_TS_COL = "_kafka_ts"
INGESTED_AT_COL = "_ingested_at"
REASON_COL = "reason"
PAYLOAD_COL = "payload"
METADATA_COLUMNS = (PARTITION_COL, OFFSET_COL, KAFKA_TS_COL, INGESTED_AT_COL)


class IncompatibleSchemaError(ArchiveTableError):
    """The JSON schema changed a field's type: the raw table cannot hold both; the source's archive stops."""

    def __init__(self, source: str, table: str, field: str, table_type: str, schema_type: str):
        self.source, self.table, self.field = source, table, field
        self.table_type, self.schema_type = table_type, schema_type
        super().__init__(
            f"source {source!r}: schema field {field!r} changed type: table {table} has {table_type}, "
            f"the JSON schema now says {schema_type}. Iceberg cannot hold both in one column, so this source's "
            "archive is stopped (others continue). Fix: revert the field's type in the schema, or add the new "
            "type as a new field name (compatible), or point the source at a new table and re-archive."
        )


def decimal_scales(event_schema: EventSchema) -> dict[str, int]:
    """Scale of every decimal field: ``"x-skewless-scale"`` on the property, else :data:`DEFAULT_DECIMAL_SCALE`."""
    fields = [f.name for f in event_schema.fields if f.type == "decimal"]
    if not fields:
        return {}
    doc = json.loads(event_schema.path.read_text(encoding="utf-8"))
    out: dict[str, int] = {}
    for name in fields:
        scale = doc["properties"][name].get("x-skewless-scale", DEFAULT_DECIMAL_SCALE)
        if isinstance(scale, bool) or not isinstance(scale, int) or not 0 <= scale <= DECIMAL_PRECISION:
            raise ArchiveTableError(
                f"schema {event_schema.name!r} field {name!r}: x-skewless-scale {scale!r} must be an integer 0..38"
            )
        out[name] = scale
    return out


def iceberg_type(field_type: str, scale: int = DEFAULT_DECIMAL_SCALE) -> Any:
    """The Iceberg type of a schema field type (see the module docstring)."""
    from pyiceberg.types import (
        BooleanType,
        DecimalType,
        DoubleType,
        LongType,
        StringType,
        TimestamptzType,
    )

    mapping = {
        "string": StringType(),
        "int64": LongType(),
        "float64": DoubleType(),
        "bool": BooleanType(),
        "timestamp": TimestamptzType(),
    }
    if field_type == "decimal":
        return DecimalType(DECIMAL_PRECISION, scale)
    try:
        return mapping[field_type]
    except KeyError:
        raise ArchiveTableError(f"schema field type {field_type!r} has no Iceberg type") from None


def _check_source(source: EventSource, event_schema: EventSchema) -> None:
    for name in (source.event_time, source.event_id):
        if event_schema.field(name) is None:
            raise ArchiveTableError(
                f"source {source.name!r}: field {name!r} is not in schema {event_schema.name!r} ({event_schema.path})"
            )
    if event_schema.type_of(source.event_time) != "timestamp":
        raise ArchiveTableError(
            f"source {source.name!r}: event-time field {source.event_time!r} must be a date-time string in schema "
            f"{event_schema.name!r}, got {event_schema.type_of(source.event_time)}"
        )
    clash = [f.name for f in event_schema.fields if f.name in METADATA_COLUMNS]
    if clash:
        raise ArchiveTableError(
            f"schema {event_schema.name!r} declares {clash}: names starting with '_' that clash with the archive's "
            f"metadata columns {METADATA_COLUMNS}; rename them"
        )


def raw_table_schema(source: EventSource, event_schema: EventSchema) -> Any:
    """The raw table's ``pyiceberg.schema.Schema`` for a source and its event schema."""
    from pyiceberg.schema import Schema
    from pyiceberg.types import IntegerType, LongType, NestedField, TimestamptzType

    _check_source(source, event_schema)
    scales = decimal_scales(event_schema)
    fields = [
        NestedField(i, f.name, iceberg_type(f.type, scales.get(f.name, DEFAULT_DECIMAL_SCALE)), required=False)
        for i, f in enumerate(event_schema.fields, start=1)
    ]
    n = len(fields)
    fields += [
        NestedField(n + 1, PARTITION_COL, IntegerType(), required=True),
        NestedField(n + 2, OFFSET_COL, LongType(), required=True),
        NestedField(n + 3, KAFKA_TS_COL, TimestamptzType(), required=False),
        NestedField(n + 4, INGESTED_AT_COL, TimestamptzType(), required=True),
    ]
    return Schema(*fields)


def dead_letter_schema() -> Any:
    """The dead-letter table's ``pyiceberg.schema.Schema``."""
    from pyiceberg.schema import Schema
    from pyiceberg.types import BinaryType, IntegerType, LongType, NestedField, StringType, TimestamptzType

    return Schema(
        NestedField(1, PARTITION_COL, IntegerType(), required=True),
        NestedField(2, OFFSET_COL, LongType(), required=True),
        NestedField(3, KAFKA_TS_COL, TimestamptzType(), required=False),
        NestedField(4, INGESTED_AT_COL, TimestamptzType(), required=True),
        NestedField(5, REASON_COL, StringType(), required=True),
        NestedField(6, PAYLOAD_COL, BinaryType(), required=False),
    )


def _day_spec(schema: Any, column: str) -> Any:
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.transforms import DayTransform

    source_id = schema.find_field(column).field_id
    return PartitionSpec(PartitionField(source_id=source_id, field_id=1000, transform=DayTransform(), name=f"{column}_day"))


def raw_partition_spec(source: EventSource, schema: Any) -> Any:
    """``day(<event_time>)``."""
    return _day_spec(schema, source.event_time)


def dead_letter_partition_spec(schema: Any) -> Any:
    """``day(_ingested_at)``."""
    return _day_spec(schema, INGESTED_AT_COL)


def _create(catalog: Any, identifier: str, schema: Any, spec: Any) -> Any:
    """Create the namespace and table; a concurrent creator (another source's thread, Spark) may win either
    race, which surfaces as AlreadyExists or as the sqlite unique constraint: then use what exists."""
    from pyiceberg.exceptions import NoSuchTableError

    namespace, _ = table_identifier(identifier)
    try:
        catalog.create_namespace(namespace)
    except Exception:  # noqa: BLE001 - re-raised below unless the namespace now exists
        if (namespace,) not in [tuple(n) for n in catalog.list_namespaces()]:
            raise
    try:
        return catalog.create_table(identifier, schema=schema, partition_spec=spec)
    except Exception:  # noqa: BLE001 - same: someone else created it in between
        try:
            return catalog.load_table(identifier)
        except NoSuchTableError:
            pass
        raise


def _load_or_create(catalog: Any, identifier: str, schema: Any, spec: Any) -> Any:
    from pyiceberg.exceptions import NoSuchTableError

    try:
        return catalog.load_table(identifier)
    except NoSuchTableError:
        return _create(catalog, identifier, schema, spec)


def ensure_tables(catalog: Any, source: EventSource, event_schema: EventSchema | None = None) -> tuple[Any, Any]:
    """Create (if missing) and return ``(raw_table, dead_letter_table)`` for a Kafka-fed source.

    Existing tables are returned as they are: schema evolution is :func:`evolve_raw_table`'s job.
    """
    from skewless.core.schemas import load_schema

    if source.is_batch_only:
        raise ArchiveTableError(f"source {source.name!r} has no topic: batch-only sources are read in place, not archived")
    event_schema = event_schema or load_schema(source.schema)
    raw_schema = raw_table_schema(source, event_schema)
    raw = _load_or_create(catalog, source.table, raw_schema, raw_partition_spec(source, raw_schema))
    dl_schema = dead_letter_schema()
    dead = _load_or_create(catalog, dead_letter_table_name(source), dl_schema, dead_letter_partition_spec(dl_schema))
    return raw, dead


def schema_changes(source: EventSource, event_schema: EventSchema, table_schema: Any) -> list[Any]:
    """Columns to add so the table holds ``event_schema``'s fields (as optional ``NestedField``s).

    A field whose type differs from its column raises :class:`IncompatibleSchemaError`; columns the schema
    no longer declares stay (null from then on).
    """
    desired = raw_table_schema(source, event_schema)
    missing = []
    for field in desired.fields:
        try:
            existing = table_schema.find_field(field.name)
        except ValueError:
            missing.append(field)
            continue
        if existing.field_type != field.field_type:
            raise IncompatibleSchemaError(source.name, source.table, field.name, str(existing.field_type), str(field.field_type))
    return missing


def evolve_raw_table(table: Any, source: EventSource, event_schema: EventSchema) -> list[str]:
    """Add the schema's new fields to the raw table as optional columns (one schema commit).

    Returns the added column names; raises :class:`IncompatibleSchemaError` on a type change.
    """
    missing = schema_changes(source, event_schema, table.schema())
    if missing:
        with table.update_schema() as update:
            for field in missing:
                update.add_column(field.name, field.field_type, doc=f"added by the archive from schema {event_schema.name!r}")
    return [f.name for f in missing]
