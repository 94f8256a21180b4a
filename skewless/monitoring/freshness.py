"""Freshness of every view: SLA, actual lag and status, from what the pipelines publish in Redis.

Parts of a view and where their age comes from (keys from :mod:`skewless.core.layout`):

- ``stream`` (feature views with a topic): ``now - the time the stream is applied up to``: the minimum over the
  source's partitions of each one's (:func:`skewless.core.staleness.newest_applied_ms`: its newest applied event of
  the store's epoch, ``max_event_ms`` of ``p:{partition}`` -> JSON ``{"offset", "max_event_ms", "written_ms",
  "epoch"}``, or the job's offset check ``log_end`` if the partition had applied all it held then). SLA: the view's
  ``freshness_sla``; ``stale`` beyond it. No progress, or no ``meta`` for the view version (the stream
  never started it): ``missing``.
- ``batch`` (feature views with windows wider than a day, or lifetime): ``now - newest batch cut-off``,
  from the view meta field ``batch_cutoff_ms`` if the materializer writes it, else the largest ``cutoff``
  ``b:cutoff`` of up to ``scan_limit`` entity hashes. SLA: ``1 day + allowed_lateness +``
  :data:`BATCH_GRACE_MS` (the next daily run is overdue: ``warn``); ``stale`` once the batch is more than
  ``BATCH_TAIL_DAYS`` days late, when the contract turns windowed values ``incomplete`` and lifetime ones
  ``stale``.
- ``snapshot`` (snapshot views): ``now - newest materialized row timestamp``, from the meta field
  ``snapshot_ts_ms`` if present, else the largest ``ts`` of the rows (field ``s``) of up to ``scan_limit`` entity hashes; ``stale``
  beyond the view's ``freshness_sla``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from skewless.core import layout
from skewless.core.dsl import FeatureView, SnapshotView, View
from skewless.core.routing import BATCH_TAIL_DAYS, BATCH_TILE_MS
from skewless.core.staleness import as_int, as_text, is_stale, newest_applied_ms, parse_progress
from skewless.core.timeutil import MS_PER_DAY, MS_PER_HOUR, now_ms, td_ms
from skewless.monitoring.common import ERROR, MISSING, OK, STALE, WARN, fmt_duration_ms, format_table, guarded

BATCH_GRACE_MS = 6 * MS_PER_HOUR  # time a daily batch run may take after its start (cut-off + lateness)
DEFAULT_SCAN_LIMIT = 200


@dataclass(frozen=True)
class FreshnessRow:
    """One part of one view. ``lag_ms`` is None when nothing was found (status ``missing``/``error``), or when a
    stream partition holding records has nothing applied in the store's epoch (``stale``)."""

    view: str
    version: int
    part: str  # stream | batch | snapshot | view
    sla_ms: int | None
    lag_ms: int | None
    status: str  # ok | warn | stale | missing | error
    detail: str = ""
    newest_ms: int | None = None
    progress_age_ms: int | None = None  # stream: now - the last progress write (liveness of the job)
    source: str = ""  # stream: the event source
    # stream: the progress counters of the store epoch's partitions, (partition, counter, value)
    counters: tuple[tuple[str, str, int], ...] = ()

    @property
    def breach(self) -> bool:
        return self.status in (STALE, MISSING)


def _scan_pattern(prefix: str) -> str:
    """The entity hashes of a view version (layout.entity_key)."""
    escaped = "".join("\\" + c if c in "*?[]\\" else c for c in prefix)
    return f"{escaped}:{{*}}"


def _scan_keys(client: Any, pattern: str, limit: int) -> list[Any]:
    keys: list[Any] = []
    for key in client.scan_iter(match=pattern, count=500):
        keys.append(key)
        if len(keys) >= limit:
            break
    return keys


def _stream_row(client: Any, project: str, view: FeatureView, epoch: str | None, meta: dict, now: int,
                lane: str) -> FreshnessRow:
    sla = td_ms(view.freshness_sla)
    base = dict(view=view.name, version=int(view.version), part="stream", sla_ms=sla)
    progress = parse_progress(client.hgetall(layout.progress_key(project, view.source.name, lane)))
    if not progress:
        return FreshnessRow(**base, lag_ms=None, status=MISSING, detail=f"no progress published for source {view.source.name}")
    if not meta:
        return FreshnessRow(**base, lag_ms=None, status=MISSING,
                            detail=f"no meta for {view.name} v{view.version}: the stream has not started this version")
    if not any(p.epoch == epoch for p in progress):
        epochs = sorted({p.epoch or "-" for p in progress})
        return FreshnessRow(**base, lag_ms=None, status=MISSING,
                            detail=f"no progress of the store epoch {epoch} (found {', '.join(epochs)})")
    newest = newest_applied_ms(progress, epoch)
    written = max((p.written_ms for p in progress if p.written_ms is not None and p.epoch == epoch), default=None)
    detail = f"{len(progress)} partition(s)" + (f", progress written {fmt_duration_ms(now - written)} ago" if written else "")
    unknown = [p.partition for p in progress if p.applied_up_to_ms(epoch) is None]
    if unknown:
        detail += f"; nothing applied in this epoch from partition(s) {', '.join(unknown)}, which hold records"
    counters = tuple((p.partition, name, n) for p in progress if p.epoch == epoch for name, n in p.counters)
    return FreshnessRow(**base, lag_ms=None if newest is None else now - newest,
                        status=STALE if is_stale(newest, now, sla) else OK, detail=detail, newest_ms=newest,
                        progress_age_ms=None if written is None else now - written, source=view.source.name,
                        counters=counters)


def batch_sla_ms(view: FeatureView) -> int:
    """Expected maximum age of the newest batch cut-off: one day + the source's lateness + run time."""
    return MS_PER_DAY + td_ms(view.source.allowed_lateness) + BATCH_GRACE_MS


def _batch_row(client: Any, project: str, view: FeatureView, meta: dict, now: int, scan_limit: int) -> FreshnessRow:
    sla = batch_sla_ms(view)
    base = dict(view=view.name, version=int(view.version), part="batch", sla_ms=sla)
    cutoff = as_int(meta.get("batch_cutoff_ms"))
    source = "meta"
    if cutoff is None:
        keys = _scan_keys(client, _scan_pattern(layout.view_prefix(project, view)), scan_limit)
        cutoffs = [c for c in (as_int(as_text(client.hget(k, layout.BATCH_FIELD_PREFIX + "cutoff"))) for k in keys)
                   if c is not None]
        cutoff = max(cutoffs, default=None)
        source = f"{len(keys)} batch record(s) sampled"
    if cutoff is None:
        return FreshnessRow(**base, lag_ms=None, status=MISSING, detail="no batch run materialized for this view version")
    lag = now - cutoff
    days_late = (now - cutoff) // BATCH_TILE_MS
    if days_late > BATCH_TAIL_DAYS:
        status, why = STALE, f"batch {days_late} days late: windowed values incomplete, lifetime stale"
    elif lag > sla:
        status, why = WARN, "next daily run overdue (values still exact)"
    else:
        status, why = OK, ""
    detail = "; ".join(x for x in (f"cut-off from {source}", why) if x)
    return FreshnessRow(**base, lag_ms=lag, status=status, detail=detail, newest_ms=cutoff)


def _snapshot_row(client: Any, project: str, view: SnapshotView, meta: dict, now: int, scan_limit: int) -> FreshnessRow:
    sla = td_ms(view.freshness_sla)
    base = dict(view=view.name, version=int(view.version), part="snapshot", sla_ms=sla)
    newest = as_int(meta.get("snapshot_ts_ms"))
    source = "meta"
    if newest is None:
        keys = _scan_keys(client, _scan_pattern(layout.view_prefix(project, view)), scan_limit)
        stamps = []
        for raw in (client.hget(k, layout.SNAPSHOT_FIELD) for k in keys):
            try:
                stamps.append(int(json.loads(as_text(raw))["ts"]))
            except (TypeError, ValueError, KeyError):
                continue
        newest = max(stamps, default=None)
        source = f"{len(keys)} snapshot key(s) sampled"
    if newest is None:
        return FreshnessRow(**base, lag_ms=None, status=MISSING, detail="no snapshot materialized for this view version")
    lag = now - newest
    return FreshnessRow(**base, lag_ms=lag, status=STALE if lag > sla else OK, detail=f"newest row from {source}", newest_ms=newest)


def view_freshness(client: Any, project: str, view: View, now: int | None = None,
                   scan_limit: int = DEFAULT_SCAN_LIMIT, lane: str = "") -> list[FreshnessRow]:
    """Freshness rows of one view (one per part). Never raises: a failure is one row with status ``error``. ``lane``:
    the progress lane of the view's streaming job (``Repository.progress_lane``: an upgrade's newer version has its
    own)."""
    now = now_ms() if now is None else int(now)

    def compute() -> list[FreshnessRow]:
        epoch = as_text(client.get(layout.epoch_key(project)))
        meta = {as_text(k): as_text(v) for k, v in (client.hgetall(layout.view_meta_key(project, view)) or {}).items()}
        if isinstance(view, SnapshotView):
            return [_snapshot_row(client, project, view, meta, now, scan_limit)]
        rows = []
        if not view.source.is_batch_only:
            rows.append(_stream_row(client, project, view, epoch, meta, now, lane))
        if layout.batch_windows(view) or view.source.is_batch_only:
            rows.append(_batch_row(client, project, view, meta, now, scan_limit))
        return rows

    return guarded(compute, lambda reason: [FreshnessRow(view.name, int(getattr(view, "version", 0) or 0), "view",
                                                          None, None, ERROR, reason)], f"freshness of {view.name}")


def freshness(client: Any, project: str, views: Iterable[View], now: int | None = None,
              scan_limit: int = DEFAULT_SCAN_LIMIT, lane: Callable[[View], str] | None = None) -> list[FreshnessRow]:
    """Freshness rows of every view, in the given order; ``lane`` gives a view's progress lane (default: the
    source's job, "")."""
    now = now_ms() if now is None else int(now)
    return [row for v in views for row in view_freshness(client, project, v, now, scan_limit, lane(v) if lane else "")]


def render_table(rows: Iterable[FreshnessRow]) -> str:
    return format_table(
        ["view", "version", "part", "sla", "lag", "status", "detail"],
        [[r.view, r.version, r.part, fmt_duration_ms(r.sla_ms), fmt_duration_ms(r.lag_ms), r.status, r.detail] for r in rows],
    )
