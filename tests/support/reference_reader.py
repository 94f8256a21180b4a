"""The reference online reader: slow and plainly written from docs/semantics.md §10-§11, the second opinion the
tests hold :class:`skewless.serving.OnlineStore` (and the stream and batch writers) to.

:func:`read_windowed` answers windowed feature values for entities in ONE Redis round trip per call: for each
requested view and entity the keys of :func:`read_plan` are fetched in one pipeline (plus the epoch, each view's
meta and each source's progress hash); values and statuses come from :func:`evaluate_read` (tiles merged with
the shared laws); derived features are evaluated on the merged values at the same instant
(:func:`skewless.core.expr.evaluate`; a derived feature is ``incomplete`` if an input is) and staleness is
:mod:`skewless.core.staleness`'s rule.

``as_of`` None reads at "now" (docs/semantics.md §10: applied events stamped at or after now count);
an explicit ``as_of`` must be a multiple of every tile size stored for the view (and within what Redis
retains, else ``incomplete``); other instants raise :class:`AsOfNotAlignedError`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from math import lcm
from typing import Any, Iterable, Mapping, Sequence

from skewless.core import laws, layout
from skewless.core.dsl import Agg, Derived, FeatureView
from skewless.core.expr import evaluate, refs
from skewless.core.repo import load_repository
from skewless.core.routing import BATCH_TAIL_DAYS, BATCH_TILE_MS, is_stream_served
from skewless.core.staleness import INCOMPLETE, PRESENT, STALE, stream_status
from skewless.core.timeutil import floor_ms, to_epoch_ms


@dataclass(frozen=True)
class ReadPlan:
    """What to fetch for one entity of one feature view, and the instant it answers.

    Fetch: GET ``epoch_key``; HGETALL ``entity_key`` (the entity hash: tiles of every size, the batch record and
    the manifest) and ``meta_key``. ``as_of_ms`` None means "now" (the caller passes the read instant to
    :func:`evaluate_read`).
    """

    view: FeatureView
    epoch_key: str
    meta_key: str
    entity_key: str
    groups: tuple[layout.TileGroup, ...]
    has_batch: bool
    as_of_ms: int | None


def read_plan(project: str, view: FeatureView, entity_key: Sequence[Any], as_of_ms: int | None = None) -> ReadPlan:
    """The keys one entity's read of a view needs. An as-of read (``as_of_ms`` given) is exact only at an
    instant that is a multiple of every stored tile size of the view; other instants raise (use the
    training-set path)."""
    groups = layout.tile_groups(view)
    if as_of_ms is not None:
        for g in groups:
            if as_of_ms % g.tile_ms:
                raise ValueError(
                    f"as_of {as_of_ms} is not a multiple of tile {g.tile_ms} ms of {view.name}: online as-of reads are "
                    "exact only at tile-aligned instants; use the training-set path"
                )
    return ReadPlan(
        view=view,
        epoch_key=layout.epoch_key(project),
        meta_key=layout.view_meta_key(project, view),
        entity_key=layout.entity_key(project, view, entity_key),
        groups=groups,
        has_batch=bool(layout.batch_windows(view)),
        as_of_ms=as_of_ms,
    )


def _text(v: Any) -> Any:
    return v.decode("utf-8") if isinstance(v, bytes) else v


def evaluate_read(plan: ReadPlan, fetched: Mapping[str, Any], now_ms: int) -> dict[str, tuple[Any, str]]:
    """Aggregation values ``{name: (value, status)}`` from what :func:`read_plan` fetched (``fetched`` maps
    each key to GET/HGETALL output). Statuses: ``incomplete`` (null) when the epoch is missing or differs,
    the stream started after the window start, a needed tile is past retention, or the batch part is too
    late, or a part of the entity hash its manifest lists is missing (a lost tile: the aggregations of that tile size,
    for windows reaching back to the loss; a lost batch record: the batch-served ones); ``stale`` (value kept) for a
    lifetime window whose batch is older than the tail allows."""
    view = plan.view
    T = now_ms if plan.as_of_ms is None else plan.as_of_ms
    epoch = _text(fetched.get(plan.epoch_key))
    meta = {_text(k): _text(v) for k, v in (fetched.get(plan.meta_key) or {}).items()}
    applied_from = int(meta["applied_from_ms"]) if "applied_from_ms" in meta else None
    tiles: dict[int, dict[int, tuple]] = {}
    newest: dict[int, int] = {}
    epoch_ok = epoch is not None and meta.get("epoch") == epoch
    entity = layout.read_entity_hash(fetched.get(plan.entity_key))
    for group in plan.groups:
        decoded = {}
        for start, value in entity.tiles.get(group.tile_ms, {}).items():
            _, tile_epoch, accs = layout.decode_tile_vector(value, group.aggs)
            epoch_ok = epoch_ok and tile_epoch == epoch
            decoded[start] = accs
        tiles[group.tile_ms] = decoded
        newest[group.tile_ms] = max(decoded, default=floor_ms(now_ms, group.tile_ms))
    batch_lost = plan.has_batch and entity.batch_lost(view)
    batch = None
    if plan.has_batch and not batch_lost:
        batch = layout.decode_batch_record(view, entity.batch or {})
    run_cutoff = int(meta[layout.META_BATCH_CUTOFF]) if plan.has_batch and layout.META_BATCH_CUTOFF in meta else None
    if (not batch_lost and run_cutoff is not None and (batch is None or batch.cutoff_ms < run_cutoff)
            and meta.get("batch_epoch") == epoch):
        batch = layout.empty_batch_record(view, run_cutoff, epoch)  # not in the newest run: no events before its cut-off
    if batch is not None and batch.epoch != epoch:
        epoch_ok = False

    out: dict[str, tuple[Any, str]] = {}
    for group in plan.groups:
        group_lost, lost_upto = entity.tiles_lost(group.tile_ms)
        for index, f in enumerate(group.aggregations):
            lw = laws.LAWS[Agg(f.agg)]
            width = layout.width_ms_of(f)
            end = None if plan.as_of_ms is None else T

            def stream_part(start: int) -> tuple[Any, bool]:
                ok = applied_from is not None and applied_from <= start and not group_lost and start > lost_upto
                ok = ok and start >= newest[group.tile_ms] - group.retention_ms
                parts = [accs[index] for s, accs in tiles[group.tile_ms].items() if s >= start and (end is None or s < end)]
                return lw.merge_all(parts), ok

            if not epoch_ok or group_lost:
                out[f.name] = (None, INCOMPLETE)
                continue
            if is_stream_served(width):
                start = floor_ms(T - width, group.tile_ms)
                acc, ok = stream_part(start)
                out[f.name] = (lw.finalize(acc), PRESENT) if ok and lw.in_range(acc) else (None, INCOMPLETE)
                continue
            if batch is None or batch.cutoff_ms > T:
                out[f.name] = (None, INCOMPLETE)
                continue
            field = layout.LIFETIME_FIELD if width is None else f"w:{width}"
            vec_index = layout.batch_windows(view)[field].index(f)
            parts = batch.windows[field]
            days_late = (T - batch.cutoff_ms) // BATCH_TILE_MS
            stream_acc, ok = stream_part(batch.cutoff_ms)
            if width is None:
                acc = lw.merge(parts[0][vec_index], stream_acc)
                status = STALE if days_late > BATCH_TAIL_DAYS else PRESENT
                out[f.name] = (lw.finalize(acc), status) if ok and lw.in_range(acc) else (None, INCOMPLETE)
                continue
            if days_late > BATCH_TAIL_DAYS or not ok:
                out[f.name] = (None, INCOMPLETE)
                continue
            tails = [parts[1 + i][vec_index] for i in range(days_late, BATCH_TAIL_DAYS)]
            acc = lw.merge_all([parts[0][vec_index], *tails, stream_acc])
            out[f.name] = (lw.finalize(acc), PRESENT) if lw.in_range(acc) else (None, INCOMPLETE)
    return {name: out[name] for name in view.feature_names if name in out}


class AsOfNotAlignedError(ValueError):
    """An as-of instant the online store cannot answer exactly (not a multiple of a stored tile size)."""


@dataclass(frozen=True)
class EntityValues:
    """One entity's values: ``features[name] = (value, status)``."""

    entity_key: tuple
    features: dict[str, tuple[Any, str]]

    def value(self, name: str) -> Any:
        return self.features[name][0]

    def status(self, name: str) -> str:
        return self.features[name][1]


@dataclass(frozen=True)
class WindowedRead:
    """The answer of one call: per entity and view the values, the instant answered, and what the
    stream had applied (per source and partition: offset, max event time, last write, counters)."""

    as_of_ms: int | None  # None: a read at "now"
    now_ms: int
    entities: dict[str, list[EntityValues]]  # view name -> one entry per requested entity key, in order
    progress: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)

    def row(self, view: str, index: int = 0) -> dict[str, Any]:
        """Plain values of one entity (by position in the request)."""
        return {k: v for k, (v, _) in self.entities[view][index].features.items()}


@lru_cache(maxsize=4)
def _default_repo(path: str) -> Any:
    return load_repository(path)


def _resolve(features: Iterable[Any] | str, repo: Any) -> dict[str, tuple[FeatureView, list[str]]]:
    """view name -> (view, requested feature names in view order)."""
    if isinstance(features, (str, FeatureView)):
        features = [features]
    wanted: dict[str, tuple[FeatureView, set[str] | None]] = {}
    for ref in features:
        if isinstance(ref, FeatureView):
            wanted[ref.name] = (ref, None)
            continue
        name, _, feature = str(ref).partition(":")
        view = repo.view(name)
        if not isinstance(view, FeatureView):
            raise ValueError(f"{name} is a {type(view).__name__}: read_windowed reads feature views")
        current = wanted.get(name, (view, set()))[1]
        if not feature or current is None:
            wanted[name] = (view, None)
        else:
            if feature not in view.feature_names:
                raise KeyError(f"view {name} has no feature {feature!r}; it has {list(view.feature_names)}")
            wanted[name] = (view, current | {feature})
    return {n: (v, [f for f in v.feature_names if names is None or f in names]) for n, (v, names) in wanted.items()}


def _check_aligned(plan_view: FeatureView, as_of_ms: int) -> None:
    groups = layout.tile_groups(plan_view)
    step = lcm(1, *(g.tile_ms for g in groups))
    if as_of_ms % step:
        before, after = as_of_ms - as_of_ms % step, as_of_ms - as_of_ms % step + step
        raise AsOfNotAlignedError(
            f"as_of {as_of_ms} is not a multiple of {step} ms (the tile sizes {[g.tile_ms for g in groups]} stored for "
            f"{plan_view.name}): the online store answers exactly only at aligned instants such as {before} or {after}; "
            "use the training-set path (point-in-time retrieval) for other instants")


def read_windowed(
    redis_client: Any,
    project: str,
    features: Iterable[Any] | str,
    entity_keys: Sequence[Any],
    as_of: int | datetime | None = None,
    *,
    repo: Any = None,
    now_ms: int | None = None,
) -> WindowedRead:
    """Values of ``features`` (``"view"``, ``"view:feature"`` or FeatureView objects) for ``entity_keys``
    (tuples of join-key values, or bare values for single-key entities) at "now" or an aligned ``as_of``.

    One Redis round trip (a pipeline). ``now_ms`` overrides the read instant (replays and tests).
    """
    repo = repo or _default_repo("feature_defs")
    views = _resolve(features, repo)
    now = int(time.time() * 1000) if now_ms is None else int(now_ms)
    as_of_ms = None if as_of is None else to_epoch_ms(as_of)
    keys = [tuple(k) if isinstance(k, (tuple, list)) else (k,) for k in entity_keys]
    plans: dict[str, list[ReadPlan]] = {}
    for name, (view, _) in views.items():
        if as_of_ms is not None:
            _check_aligned(view, as_of_ms)
        plans[name] = [read_plan(project, view, key, as_of_ms) for key in keys]

    fetch: list[tuple[str, str]] = []  # (command, key), deduplicated, in pipeline order
    seen: set[str] = set()

    def want(cmd: str, key: str | None) -> None:
        if key is not None and key not in seen:
            seen.add(key)
            fetch.append((cmd, key))

    sources = sorted({v.source.name for v, _ in views.values()})
    want("get", layout.epoch_key(project))
    for src in sources:
        want("hgetall", layout.progress_key(project, src))
    for ps in plans.values():
        for p in ps:
            want("hgetall", p.meta_key)
            want("hgetall", p.entity_key)
    pipe = redis_client.pipeline(transaction=False)
    for cmd, key in fetch:
        getattr(pipe, cmd)(key)
    fetched = dict(zip((k for _, k in fetch), pipe.execute()))

    progress = {src: _progress(fetched.get(layout.progress_key(project, src)) or {}) for src in sources}
    out: dict[str, list[EntityValues]] = {}
    for name, (view, wanted) in views.items():
        T = now if as_of_ms is None else as_of_ms
        stale = as_of_ms is None and _is_stale(view, fetched, project, now)
        rows = []
        for key, plan in zip(keys, plans[name]):
            values = evaluate_read(plan, fetched, now)
            if stale:
                values = {f: (v, STALE if s == PRESENT else s) for f, (v, s) in values.items()}
            values.update(_derived(view, values, T))
            rows.append(EntityValues(key, {f: values[f] for f in wanted}))
        out[name] = rows
    return WindowedRead(as_of_ms, now, out, progress)


def _derived(view: FeatureView, values: Mapping[str, tuple[Any, str]], t: int) -> dict[str, tuple[Any, str]]:
    done: dict[str, tuple[Any, str]] = dict(values)
    pending = [f for f in view.features if isinstance(f, Derived)]
    while pending:
        progressed = False
        for f in list(pending):
            inputs = set(refs(f.expr))
            if not inputs <= set(done):
                continue
            statuses = [done[i][1] for i in inputs]
            if INCOMPLETE in statuses:
                done[f.name] = (None, INCOMPLETE)
            else:
                value = evaluate(f.expr, {i: done[i][0] for i in inputs}, t)
                done[f.name] = (value, STALE if STALE in statuses else PRESENT)
            pending.remove(f)
            progressed = True
        if not progressed:
            raise ValueError(f"{view.name}: derived features {[f.name for f in pending]} reference unknown features")
    return {k: v for k, v in done.items() if k not in values}


def _progress(fields: Mapping[Any, Any]) -> dict[int, dict[str, Any]]:
    out = {}
    for k, v in fields.items():
        k = k.decode() if isinstance(k, bytes) else k
        if k.startswith("p:"):
            out[int(k[2:])] = json.loads(v)
    return out


def _is_stale(view: FeatureView, fetched: Mapping[str, Any], project: str, now: int) -> bool:
    """Older than the view's freshness SLA: :func:`skewless.core.staleness.stream_status` over the source's
    progress hash and the store epoch."""
    if view.source.is_batch_only:
        return False
    epoch = fetched.get(layout.epoch_key(project))
    epoch = epoch.decode() if isinstance(epoch, bytes) else epoch
    return stream_status(view, fetched.get(layout.progress_key(project, view.source.name)) or {}, epoch, now) == STALE


__all__ = ["AsOfNotAlignedError", "EntityValues", "ReadPlan", "WindowedRead", "evaluate_read", "read_plan", "read_windowed"]
