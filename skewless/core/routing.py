"""Which engine serves which window (docs/semantics.md, "Which engine serves what").

- Stream-served: a window of width <= ``STREAM_MAX_WIDTH``. The online value is the merge of the
  streaming tiles (tile size H) inside ``[floor(T - W, H), T)``.
- Batch + stream: wider windows and lifetime windows. Batch runs for day D write, per entity, the partial
  aggregate of the window up to the cut-off ``C = D+1 00:00 UTC``; the stream writes daily tiles for
  ``[C, T)``. To stay exact while the batch is up to ``BATCH_TAIL_DAYS`` days late, a batch run stores
  the window's first ``BATCH_TAIL_DAYS`` daily tiles separately (the "tail") and the rest merged (the
  "body"). Later than that, the online read answers ``incomplete`` for windows whose start moved past
  the tail, and ``stale`` for lifetime windows (still exact, but old).
"""

from __future__ import annotations

from skewless.core.timeutil import MS_PER_DAY

STREAM_MAX_WIDTH_MS = MS_PER_DAY
BATCH_TAIL_DAYS = 2
BATCH_TILE_MS = MS_PER_DAY  # batch tiles and the stream's tiles after a batch cut-off are daily
# How long the stream keeps daily tiles for batch-served windows: the late-batch allowance, the current
# day and one day of slack for a late batch run.
STREAM_DAILY_TILE_RETENTION_MS = (BATCH_TAIL_DAYS + 2) * MS_PER_DAY


def is_stream_served(width_ms: int | None) -> bool:
    """True when the stream alone serves a window of this width (None = lifetime: never)."""
    return width_ms is not None and width_ms <= STREAM_MAX_WIDTH_MS


# How long after its TTL the online store keeps a snapshot row, so a read can still say ``expired``; a row
# older than ttl + this is forgotten (null, ``present``) on every path (docs/semantics.md, "Snapshots").
SNAPSHOT_EXPIRED_MEMORY_MS = 7 * MS_PER_DAY
