"""``read_windowed``: windowed feature values for entities in ONE Redis round trip per call.

For each requested view and entity the keys of :func:`skewless.core.layout.read_plan` are fetched in one
pipeline (plus the epoch, each view's meta and each source's progress hash); values and statuses come from
:func:`skewless.core.layout.evaluate_read` (tiles merged with the shared laws); derived features are
evaluated on the merged values at the same instant (a derived feature is ``incomplete`` if an input is).

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
from typing import Any, Iterable, Mapping, Sequence

from skewless.core import layout
from skewless.core.dsl import Derived, FeatureView
from skewless.core.timeutil import to_epoch_ms

PRESENT, STALE, INCOMPLETE = layout.PRESENT, layout.STALE, layout.INCOMPLETE


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
    from skewless.core.repo import load_repository

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


def _refs(expr: Any) -> set[str]:
    from skewless.core.dsl import BinOp, DaysSince, Ref

    if isinstance(expr, Ref):
        return {expr.feature}
    if isinstance(expr, BinOp):
        return _refs(expr.left) | _refs(expr.right)
    if isinstance(expr, DaysSince):
        return _refs(expr.ts)
    return set()


def _check_aligned(plan_view: FeatureView, as_of_ms: int) -> None:
    groups = layout.tile_groups(plan_view)
    step = 1
    for g in groups:
        from math import lcm

        step = lcm(step, g.tile_ms)
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
    plans: dict[str, list[layout.ReadPlan]] = {}
    for name, (view, _) in views.items():
        if as_of_ms is not None:
            _check_aligned(view, as_of_ms)
        plans[name] = [layout.read_plan(project, view, key, as_of_ms) for key in keys]

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
            for _, tk in p.tile_keys:
                want("hgetall", tk)
            want("hgetall", p.batch_key)
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
            values = layout.evaluate_read(plan, fetched, now)
            if stale:
                values = {f: (v, STALE if s == PRESENT else s) for f, (v, s) in values.items()}
            values.update(_derived(view, values, T))
            rows.append(EntityValues(key, {f: values[f] for f in wanted}))
        out[name] = rows
    return WindowedRead(as_of_ms, now, out, progress)


def _derived(view: FeatureView, values: Mapping[str, tuple[Any, str]], t: int) -> dict[str, tuple[Any, str]]:
    from batch_jobs.pit import evaluate_derived  # the shared evaluator of derived expressions (§8)

    done: dict[str, tuple[Any, str]] = dict(values)
    pending = [f for f in view.features if isinstance(f, Derived)]
    while pending:
        progressed = False
        for f in list(pending):
            inputs = _refs(f.expr)
            if not inputs <= set(done):
                continue
            statuses = [done[i][1] for i in inputs]
            if INCOMPLETE in statuses:
                done[f.name] = (None, INCOMPLETE)
            else:
                value = evaluate_derived(f.expr, {i: done[i][0] for i in inputs}, t)
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
    """Older than the view's freshness SLA by the monitor's rule (one rule for reader and monitor):
    :func:`skewless.monitoring.freshness.stream_status` over the source's progress hash and the store epoch."""
    from skewless.monitoring.freshness import stream_status

    if view.source.is_batch_only:
        return False
    epoch = fetched.get(layout.epoch_key(project))
    epoch = epoch.decode() if isinstance(epoch, bytes) else epoch
    return stream_status(view, fetched.get(layout.progress_key(project, view.source.name)) or {}, epoch, now) == STALE


__all__ = ["AsOfNotAlignedError", "EntityValues", "WindowedRead", "read_windowed"]
