"""The statuses of a served value and the staleness rule every reader and the freshness monitor apply
(docs/semantics.md §10-§11), with the stream's progress hash it reads.

A value read at "now" from a view with a topic is ``stale`` when the time the stream is applied up to is older
than the view's freshness SLA, or unknown. That time is the minimum over the source's partitions (the partition
furthest behind bounds what the value reflects; one caught-up partition must not hide the others' backlog) of
what each partition is applied up to: its newest applied event (``max_event_ms`` of its progress field, if of the
store's epoch), or, when the job saw its applied offset reach the partition's log end in a check at ``checked_ms``
(the ``log_end`` field, written by the sink about every second), that check's time if later, so a caught-up quiet
partition stays current. A hash without ``log_end`` (a job of an earlier version) reads the minimum over the
partitions it lists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from skewless.core.dsl import FeatureView
from skewless.core.timeutil import td_ms

# The status of a served value (docs/semantics.md §10-§11).
PRESENT, STALE, INCOMPLETE, EXPIRED = "present", "stale", "incomplete", "expired"
# A DataFrame's status column of a view (training sets, online responses): ``<view>__status``.
STATUS_SUFFIX = "__status"


# Per-partition counters of the progress hash (docs/streaming.md): records dropped per reason, and the
# Deduplicate's live entries.
RECORD_COUNTERS = ("malformed", "future", "late", "duplicate", "dedup_entries")
# The progress hash's field with the job's newest check of the topic's offsets: JSON ``{"checked_ms": T,
# "partitions": {"<p>": [first offset held, log end offset], ...}}``, both as Kafka answered a request sent at T.
LOG_END_FIELD = "log_end"


@dataclass(frozen=True)
class Progress:
    """One partition of a progress hash (``p:{partition}`` -> ``{offset, max_event_ms, written_ms, epoch}``), with
    the newest offset check of the topic (``log_end`` field) if the hash has one."""

    partition: str
    offset: int | None
    max_event_ms: int | None
    written_ms: int | None
    epoch: str | None
    # the stream's exact per-partition counters at ``offset`` (those present): RECORD_COUNTERS -> count
    counters: tuple[tuple[str, int], ...] = ()
    # the ``log_end`` check: when it was sent, and the partition's first held and log end offsets then
    checked_ms: int | None = None
    log_start: int | None = None
    log_end: int | None = None

    def applied_up_to_ms(self, epoch: str | None) -> int | None:
        """The time this partition is applied up to in ``epoch`` (any if None): the newest applied event, or the
        offset check's time if by then every record the partition held was applied (its offset + 1 reached the
        log end, or the partition held nothing); None when neither is known."""
        mine = epoch is None or self.epoch == epoch
        event = self.max_event_ms if mine else None
        applied = self.offset if mine and self.offset is not None else -1
        caught_up = (self.checked_ms is not None and self.log_end is not None
                     and (applied + 1 >= self.log_end or (self.log_start is not None and self.log_start >= self.log_end)))
        times = [t for t in (event, self.checked_ms if caught_up else None) if t is not None]
        return max(times, default=None)


def as_text(v: Any) -> Any:
    """Bytes decoded as UTF-8; anything else as it is."""
    return v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else v


def as_int(v: Any) -> int | None:
    """An int from an int or its text; None for None or anything unparsable."""
    try:
        return None if v is None else int(v)
    except (TypeError, ValueError):
        return None


def parse_progress(fields: Mapping[Any, Any]) -> list[Progress]:
    """Decode a progress hash (HGETALL) into one :class:`Progress` per partition field ``p:{n}``.

    Values are JSON objects; unparsable entries are skipped (a bad writer must not break monitoring). The
    ``log_end`` field's check is attached to every partition; a partition it names without a progress field gets
    one with nothing applied.
    """
    checked_ms, ends = log_end_check(fields)
    out = []
    for key, value in (fields or {}).items():
        key = as_text(key)
        if not isinstance(key, str) or not key.startswith("p:"):
            continue
        try:
            data = json.loads(as_text(value))
        except (TypeError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        epoch = data.get("epoch")
        counters = tuple((name, n) for name in RECORD_COUNTERS if (n := as_int(data.get(name))) is not None)
        start, end = ends.get(key[2:], (None, None))
        out.append(Progress(key[2:], as_int(data.get("offset")), as_int(data.get("max_event_ms")),
                            as_int(data.get("written_ms")), None if epoch is None else str(epoch), counters,
                            checked_ms if end is not None else None, start, end))
    listed = {p.partition for p in out}
    out += [Progress(part, None, None, None, None, (), checked_ms, start, end)
            for part, (start, end) in ends.items() if part not in listed]
    return sorted(out, key=lambda p: p.partition)


def log_end_check(fields: Mapping[Any, Any]) -> tuple[int | None, dict[str, tuple[int | None, int]]]:
    """``(checked_ms, {partition: (first offset held, log end offset)})`` of a progress hash's ``log_end`` field;
    ``(None, {})`` when it is missing or unreadable (then no partition counts as caught up)."""
    raw = None
    for key, value in (fields or {}).items():
        if as_text(key) == LOG_END_FIELD:
            raw = value
    try:
        data = json.loads(as_text(raw)) if raw is not None else None
    except (TypeError, ValueError):
        data = None
    checked = as_int(data.get("checked_ms")) if isinstance(data, dict) else None
    parts = data.get("partitions") if isinstance(data, dict) else None
    if checked is None or not isinstance(parts, dict):
        return None, {}
    ends: dict[str, tuple[int | None, int]] = {}
    for part, pair in parts.items():
        if isinstance(pair, list) and len(pair) == 2 and (end := as_int(pair[1])) is not None:
            ends[str(part)] = (as_int(pair[0]), end)
    return checked, ends


def newest_applied_ms(progress: Iterable[Progress], epoch: str | None) -> int | None:
    """The time the source is applied up to in ``epoch`` (any if None): the minimum over its partitions of
    :meth:`Progress.applied_up_to_ms` (the partition furthest behind); None when a partition's is unknown or
    there is no partition."""
    times = [p.applied_up_to_ms(epoch) for p in progress]
    return None if not times or None in times else min(t for t in times if t is not None)


def is_stale(newest_applied: int | None, now: int, sla_ms: int) -> bool:
    """The rule: the time applied up to (:func:`newest_applied_ms`) unknown, or older than the SLA at ``now``."""
    return newest_applied is None or now - newest_applied > sla_ms


def stream_status(view: FeatureView, progress_fields: Mapping[Any, Any], epoch: str | None, now: int) -> str:
    """``present`` or ``stale`` for a value of ``view`` read at ``now`` (for online readers): :func:`is_stale`
    over the source's progress hash."""
    newest = newest_applied_ms(parse_progress(progress_fields), epoch)
    return STALE if is_stale(newest, now, td_ms(view.freshness_sla)) else PRESENT
