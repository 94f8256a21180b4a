"""What the archive has landed, as recorded in the raw table's properties with every commit.

Properties of the raw table (all JSON, written in the same Iceberg transaction as the rows):

* ``skewless.archive.offsets``  ``{"<partition>": next_offset}``: every record below ``next_offset`` of the
  partition is in the raw table or (malformed) in the dead-letter table, exactly once. Resume seeks here.
* ``skewless.archive.progress`` ``{"topic", "committed_at_ms", "complete_until_ms", "partitions":
  {"<p>": {"last_offset", "max_event_time_ms", "caught_up"}}}``.
* ``skewless.archive.topic``    the Kafka topic the offsets belong to.
* ``skewless.archive.stopped``  why the source's archive stopped (schema drift), until a commit clears it.

The dead-letter table has its own ``skewless.archive.offsets`` (see docs/archive.md, "Exactly once").

``complete_until_ms`` (docs/archive.md, "Progress"): with ``M_p`` the max event time of the non-malformed,
non-future records archived from partition ``p`` and ``L`` the source's allowed lateness, a partition *holds*
if it was not caught up (its next offset below the high watermark) when the batch was cut. Then

* some holding partition has no event yet -> unknown (the previous value stays);
* else if some partition holds -> ``min over holding p of (M_p - L)``;
* else (every partition caught up) -> ``max over p of (M_p - L)``;

and the value never decreases. Every event with event time below it is archived, except records that are
late beyond ``L`` for their partition (the contract's ``late``), which may still arrive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Mapping

from skewless.core.dsl import EventSource
from skewless.core.timeutil import MS_PER_DAY, td_ms, to_epoch_ms
from skewless.offline.raw import dead_letter_table_name

OFFSETS_PROP = "skewless.archive.offsets"
PROGRESS_PROP = "skewless.archive.progress"
TOPIC_PROP = "skewless.archive.topic"
STOPPED_PROP = "skewless.archive.stopped"
RECORDS_SUMMARY = "skewless.archive.records"
DEAD_LETTERS_SUMMARY = "skewless.archive.dead-letters"


@dataclass(frozen=True)
class PartitionProgress:
    """One Kafka partition: ``next_offset`` (resume point), the last archived offset, the max event time."""

    next_offset: int
    max_event_time_ms: int | None = None
    caught_up: bool = False

    @property
    def last_offset(self) -> int:
        return self.next_offset - 1


@dataclass(frozen=True)
class ArchiveProgress:
    """A source's archive progress. ``state`` is one of ``batch-only``, ``not-started``, ``running``
    (committed at least once) or ``stopped`` (``stopped_reason`` says why)."""

    source: str
    table: str
    state: str
    topic: str | None = None
    partitions: Mapping[int, PartitionProgress] = field(default_factory=dict)
    dead_letter_offsets: Mapping[int, int] = field(default_factory=dict)
    complete_until_ms: int | None = None
    committed_at_ms: int | None = None
    snapshot_id: int | None = None
    stopped_reason: str | None = None

    def is_complete_until(self, instant_ms: int) -> bool:
        """True if every (non-late) event with event time < ``instant_ms`` is archived."""
        return self.complete_until_ms is not None and self.complete_until_ms >= instant_ms

    def is_day_complete(self, day: date) -> bool:
        """True if batch may compute UTC day ``day`` (every non-late event of the day is archived)."""
        start = to_epoch_ms(datetime(day.year, day.month, day.day, tzinfo=timezone.utc))
        return self.is_complete_until(start + MS_PER_DAY)


def parse_offsets(raw: str | None) -> dict[int, int]:
    """``{"0": 12}`` -> ``{0: 12}`` (empty for None)."""
    if not raw:
        return {}
    return {int(p): int(o) for p, o in json.loads(raw).items()}


def dump_offsets(offsets: Mapping[int, int]) -> str:
    return json.dumps({str(p): int(o) for p, o in sorted(offsets.items())}, separators=(",", ":"))


def parse_partitions(raw: str | None, offsets: Mapping[int, int]) -> dict[int, PartitionProgress]:
    """Partition progress from the progress property (offsets win: they are the resume point)."""
    doc = json.loads(raw) if raw else {}
    parts = doc.get("partitions", {})
    out: dict[int, PartitionProgress] = {}
    for p, nxt in offsets.items():
        entry = parts.get(str(p), {})
        out[p] = PartitionProgress(nxt, entry.get("max_event_time_ms"), bool(entry.get("caught_up", False)))
    return out


def complete_until(partitions: Mapping[int, PartitionProgress], lateness_ms: int, previous: int | None) -> int | None:
    """``complete_until_ms`` per the module doc (never below ``previous``)."""
    holding = [pp for pp in partitions.values() if not pp.caught_up]
    value: int | None
    if any(pp.max_event_time_ms is None for pp in holding):
        value = None
    elif holding:
        value = min(pp.max_event_time_ms for pp in holding) - lateness_ms  # type: ignore[type-var,operator]
    else:
        seen = [pp.max_event_time_ms for pp in partitions.values() if pp.max_event_time_ms is not None]
        value = max(seen) - lateness_ms if seen else None
    if previous is None:
        return value
    return previous if value is None else max(previous, value)


def progress_document(topic: str, partitions: Mapping[int, PartitionProgress], complete_until_ms: int | None,
                      committed_at_ms: int) -> str:
    return json.dumps(
        {
            "topic": topic,
            "committed_at_ms": committed_at_ms,
            "complete_until_ms": complete_until_ms,
            "partitions": {
                str(p): {"last_offset": pp.last_offset, "max_event_time_ms": pp.max_event_time_ms, "caught_up": pp.caught_up}
                for p, pp in sorted(partitions.items())
            },
        },
        separators=(",", ":"),
    )


def progress_from_tables(source: EventSource, raw_table: Any, dead_table: Any | None) -> ArchiveProgress:
    """Progress from loaded tables (no Kafka access)."""
    props = raw_table.properties
    offsets = parse_offsets(props.get(OFFSETS_PROP))
    doc = json.loads(props[PROGRESS_PROP]) if props.get(PROGRESS_PROP) else {}
    stopped = props.get(STOPPED_PROP)
    state = "stopped" if stopped else ("running" if offsets else "not-started")
    snapshot = raw_table.current_snapshot()
    return ArchiveProgress(
        source=source.name,
        table=source.table,
        state=state,
        topic=props.get(TOPIC_PROP),
        partitions=parse_partitions(props.get(PROGRESS_PROP), offsets),
        dead_letter_offsets=parse_offsets(dead_table.properties.get(OFFSETS_PROP)) if dead_table is not None else {},
        complete_until_ms=doc.get("complete_until_ms"),
        committed_at_ms=doc.get("committed_at_ms"),
        snapshot_id=snapshot.snapshot_id if snapshot else None,
        stopped_reason=stopped,
    )


def archive_progress(catalog: Any, source: EventSource) -> ArchiveProgress:
    """The archive progress of ``source`` as last committed (batch: ``archive_progress(...).is_day_complete(d)``).

    Batch-only sources answer ``state="batch-only"``; a source whose tables do not exist yet ``not-started``.
    """
    from pyiceberg.exceptions import NoSuchTableError

    if source.is_batch_only:
        return ArchiveProgress(source.name, source.table, "batch-only")
    try:
        raw = catalog.load_table(source.table)
    except NoSuchTableError:
        return ArchiveProgress(source.name, source.table, "not-started", topic=source.topic)
    try:
        dead = catalog.load_table(dead_letter_table_name(source))
    except NoSuchTableError:
        dead = None
    return progress_from_tables(source, raw, dead)


def lateness_ms(source: EventSource) -> int:
    return td_ms(source.allowed_lateness)
