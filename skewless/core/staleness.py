"""The statuses of a served value and the staleness rule every reader and the freshness monitor apply
(docs/semantics.md §10-§11), with the stream's progress hash it reads.

A value read at "now" from a view with a topic is ``stale`` when the newest event the stream applied (the
maximum ``max_event_ms`` over the partitions of the source's progress hash whose epoch is the store's) is
older than the view's freshness SLA, or when no applied event is known.
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


@dataclass(frozen=True)
class Progress:
    """One partition of a progress hash (``p:{partition}`` -> ``{offset, max_event_ms, written_ms, epoch}``)."""

    partition: str
    offset: int | None
    max_event_ms: int | None
    written_ms: int | None
    epoch: str | None
    # the stream's exact per-partition counters at ``offset`` (those present): RECORD_COUNTERS -> count
    counters: tuple[tuple[str, int], ...] = ()


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

    Values are JSON objects; unparsable entries are skipped (a bad writer must not break monitoring).
    """
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
        out.append(Progress(key[2:], as_int(data.get("offset")), as_int(data.get("max_event_ms")),
                            as_int(data.get("written_ms")), None if epoch is None else str(epoch), counters))
    return sorted(out, key=lambda p: p.partition)


def newest_applied_ms(progress: Iterable[Progress], epoch: str | None) -> int | None:
    """Newest applied event time over partitions of the current ``epoch`` (any epoch if None)."""
    times = [p.max_event_ms for p in progress if p.max_event_ms is not None and (epoch is None or p.epoch == epoch)]
    return max(times, default=None)


def is_stale(newest_applied: int | None, now: int, sla_ms: int) -> bool:
    """The rule: no applied event known, or the newest one older than the SLA at ``now``."""
    return newest_applied is None or now - newest_applied > sla_ms


def stream_status(view: FeatureView, progress_fields: Mapping[Any, Any], epoch: str | None, now: int) -> str:
    """``present`` or ``stale`` for a value of ``view`` read at ``now`` (for online readers): :func:`is_stale`
    over the source's progress hash."""
    newest = newest_applied_ms(parse_progress(progress_fields), epoch)
    return STALE if is_stale(newest, now, td_ms(view.freshness_sla)) else PRESENT
