"""``get_online_features``: values, per-value status and age, and source progress from Redis in ONE round trip.

Reads follow docs/semantics.md §10-§11 with the keys of :mod:`skewless.core.layout`:

- feature views: stream tiles and batch parts merged through the shared laws, exactly as
  :func:`skewless.core.layout.evaluate_read` (a test checks equality on generated stores), derived features
  on the merged values at the same instant; ``stale`` for a read at "now" when the source's newest applied
  event is older than the view's SLA (:func:`skewless.monitoring.freshness.stream_status`, the monitor's rule);
- snapshot views: the stored latest row, TTL enforced exactly as offline (``expired`` -> null); a stored row
  not yet visible at the instant read (``ts`` or ``created_at`` after it) is ``incomplete``;
- ``incomplete`` for every value when the store's epoch is missing or differs from the record's.

Everything a call needs (keys, laws, derived order) is planned once per feature selection and cached; a call
packs one pipeline (epoch, progress, view metas, then per entity its tile/batch/snapshot keys: one entity's
keys share a hash tag, so Redis Cluster pipelines split per node) and evaluates only requested features.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from math import lcm
from typing import Any, Callable, Iterable, Mapping, Sequence

from skewless.core import laws, layout
from skewless.core.dsl import (Aggregation, BinOp, DaysSince, Derived, FeatureService, FeatureView, KeyType, Ref,
                               SnapshotView)
from skewless.core.repo import Repository, UnknownFeatureError
from skewless.core.routing import BATCH_TAIL_DAYS, BATCH_TILE_MS, SNAPSHOT_EXPIRED_MEMORY_MS, is_stream_served
from skewless.core.timeutil import MS_PER_DAY, floor_ms, td_ms, to_epoch_ms
from skewless.online.reader import AsOfNotAlignedError
from skewless.serving.reply_stream import ReplyStream, open_stream

try:
    import orjson

    def _loads(data: bytes) -> Any:
        """JSON text -> value (orjson when it can: several times faster; json for what it refuses)."""
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return json.loads(data)
except ImportError:  # pragma: no cover - orjson is a dependency
    _loads = json.loads

PRESENT, STALE, INCOMPLETE, EXPIRED = "present", "stale", "incomplete", "expired"
DEFAULT_MAX_ENTITIES = 1000


class OnlineRequestError(ValueError):
    """Bad input of an online read; the message says what is wrong (the HTTP server answers 400)."""


class AsOfNotAligned(OnlineRequestError, AsOfNotAlignedError):
    """``as_of`` is not a multiple of a tile size stored for a requested view."""


# --- plans (built once per feature selection) --------------------------------------------------------------

_HGETALL, _GET = b"HGETALL", b"GET"
_K_GET, _K_HASH, _K_TILES, _K_MGET = 0, 1, 2, 3  # reply kinds: bytes | None; a hash as a dict; a hash as hiredis
# gives it; an MGET (the snapshot rows of a view, one per entity: expanded into one GET-like reply each)
_SEP = b"\0"


def _pack(cmd: bytes, key: bytes) -> bytes:
    return b"*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(cmd), cmd, len(key), key)



@dataclass(frozen=True)
class _AggSpec:
    name: str
    law: laws.Law
    index: int  # in the tile vector of its group
    width_ms: int | None
    stream_served: bool
    batch_field: str | None
    batch_index: int
    decode: Callable[[Any], Any]  # law.decode with a fast path for plain JSON ints/strings (same result)
    merge: Callable[[Any, Any], Any]  # law.merge with a fast path for two ints (same result, same overflow error)


_I64_MIN, _I64_MAX = laws.INT64_MIN, laws.INT64_MAX
_SERIALS = itertools.count()
_PLAIN = (int, str, float, bool)


def _fast_law(agg: layout.Agg) -> tuple[Callable[[Any], Any], Callable[[Any, Any], Any]]:
    """Decode/merge equal to the law's, skipping its generic type checks for the common plain-JSON cases."""
    law = laws.LAWS[agg]
    slow_decode, slow_merge = law.decode, law.merge
    if agg in (layout.Agg.COUNT, layout.Agg.SUM):
        def decode(d: Any) -> Any:
            return d if type(d) is int else slow_decode(d)

        def merge(a: Any, b: Any) -> Any:
            if type(a) is int and type(b) is int:
                c = a + b
                if _I64_MIN <= c <= _I64_MAX:
                    return c
            return slow_merge(a, b)
        return decode, merge
    if agg in (layout.Agg.MIN, layout.Agg.MAX):
        pick_max = agg is layout.Agg.MAX

        def decode(d: Any) -> Any:
            return d if d is None or type(d) is int or type(d) is str else slow_decode(d)

        def merge(a: Any, b: Any) -> Any:
            if a is None:
                return b
            if b is None:
                return a
            if type(a) is int and type(b) is int:
                return (a if a >= b else b) if pick_max else (a if a <= b else b)
            return slow_merge(a, b)
        return decode, merge
    if agg is layout.Agg.LAST:
        def decode(d: Any) -> Any:
            if d is None:
                return None
            if type(d) is list and len(d) == 4 and type(d[0]) is int and (d[3] is None or type(d[3]) in _PLAIN):
                return (d[0], d[1], d[2], d[3])
            return slow_decode(d)
        return decode, slow_merge
    return slow_decode, slow_merge


@dataclass(frozen=True)
class _GroupSpec:
    tile_ms: int
    retention_ms: int
    suffix: bytes  # b"}:t:{H}"
    aggs: tuple[_AggSpec, ...]  # needed aggregations of this tile hash
    indexes: tuple[int, ...]
    merges: tuple[Callable[[Any, Any], Any], ...] = ()  # aggs[j].merge
    serial: int = field(default_factory=lambda: next(_SERIALS), compare=False)  # names it in the store's caches


@dataclass
class _ViewPlan:
    view: FeatureView | SnapshotView
    entity_index: int  # into _Plan.entities
    prefix: bytes  # view prefix + ":{"
    outputs: tuple[tuple[str, int], ...]  # (feature, column index)
    snapshot: bool
    groups: tuple[_GroupSpec, ...] = ()
    batch_fields: tuple[str, ...] = ()
    derived: tuple[tuple[str, Any, tuple[str, ...]], ...] = ()  # (name, expr, inputs) in dependency order
    meta_key: bytes = b""
    step_ms: int = 1  # as_of must be a multiple (lcm of stored tile sizes)
    stream: bool = False  # the source has a topic (progress, staleness)
    snapshot_fields: tuple[tuple[int, str], ...] = ()  # (position in stored values, name)
    ttl_ms: int = 0
    sla_ms: int = 0  # freshness SLA (stream views)
    batch_aggs: dict = field(default_factory=dict)  # batch field -> needed _AggSpecs reading it
    serial: int = field(default_factory=lambda: next(_SERIALS))  # names it in the store's caches
    # derived features split by whether their value depends on the read instant (DaysSince somewhere below):
    dynamic_derived: tuple[tuple[str, Any, tuple[str, ...]], ...] = ()  # evaluated on every read
    out_dynamic: tuple[tuple[int, str], ...] = ()  # (position in outputs, name) of instant-dependent outputs
    # the window starts at T of the last read and the instants they hold for: (T_lo, T_hi, now_lo, now_hi, as_of,
    # starts per group, their part of the memo context); one tuple, replaced whole (threads read it consistently)
    window: tuple | None = None
    key_suffixes: tuple[tuple[bytes, bytes], ...] = ()  # (command, key suffix after the tag) per key of an entity
    kinds: tuple[int, ...] = ()  # reply kind (_K_*) per key of an entity
    pieces: tuple[tuple[bytes, int], ...] = ()  # (packed command template, key length without the tag) per key
    snap_outputs: tuple[tuple, ...] = ()  # snapshot views: (nulls, incomplete, present, expired) per output field

    def __post_init__(self) -> None:
        if self.snapshot:
            self.key_suffixes, self.kinds = ((_GET, b"}:s"),), (_K_GET,)
        else:
            self.key_suffixes = tuple([(_HGETALL, g.suffix) for g in self.groups]
                                      + ([(_HGETALL, b"}:b")] if self.batch_fields else []))
            self.kinds = (_K_TILES,) * (len(self.groups) + (1 if self.batch_fields else 0))
        esc = self.prefix.replace(b"%", b"%%")
        if self.snapshot:  # one MGET per view on a plain client: each entity's piece is its key
            k = len(self.snapshot_fields)
            self.snap_outputs = ((None,) * k, (INCOMPLETE,) * k, (PRESENT,) * k, (EXPIRED,) * k)
            self.pieces = ((b"$%%d\r\n%s%%s}:s\r\n" % esc, len(self.prefix) + 3),)
        else:
            self.pieces = tuple((b"*2\r\n$%d\r\n%s\r\n$%%d\r\n%s%%s%s\r\n" % (len(cmd), cmd, esc, suffix.replace(b"%", b"%%")),
                                 len(self.prefix) + len(suffix)) for cmd, suffix in self.key_suffixes)
        dynamic: set[str] = set()
        for name, expr, _ in self.derived:  # dependency order: inputs are classified before their users
            if _instant_dependent(expr, dynamic):
                dynamic.add(name)
        self.dynamic_derived = tuple(d for d in self.derived if d[0] in dynamic)
        self.out_dynamic = tuple((i, f) for i, (f, _) in enumerate(self.outputs) if f in dynamic)

    def key_count(self) -> int:
        return 1 if self.snapshot else len(self.groups) + (1 if self.batch_fields else 0)


@dataclass(frozen=True)
class _EntitySpec:
    name: str
    keys: tuple[tuple[str, KeyType], ...]


@dataclass
class _Plan:
    refs: tuple[str, ...]  # "view:feature" per column
    columns: tuple[str, ...]  # output names (feature, or view__feature when two views share a name)
    entities: tuple[_EntitySpec, ...]
    join_keys: tuple[str, ...]  # every join key a request must give
    views: tuple[_ViewPlan, ...]
    sources: tuple[tuple[str, bytes], ...]  # (source name, progress key) of streaming sources
    head_names: tuple[tuple[bytes, bytes], ...] = ()  # the shared commands: epoch, progress hashes, view metas
    head_kinds: tuple[int, ...] = ()
    head_packed: bytes = b""

    def __post_init__(self) -> None:
        self.head_kinds = tuple(_K_GET if cmd == _GET else _K_HASH for cmd, _ in self.head_names)
        self.head_packed = b"".join([_pack(cmd, key) for cmd, key in self.head_names])


_ESCAPE_TABLE = str.maketrans({"%": "%25", ":": "%3A", "{": "%7B", "}": "%7D", ",": "%2C"})
_NEEDS_ESCAPE = re.compile("[%:{},]").search  # no match: the text is its own escaped form


def _instant_dependent(expr: Any, dynamic: set[str]) -> bool:
    """Whether a derived expression's value depends on the read instant (a DaysSince, or a Ref to such a feature)."""
    if isinstance(expr, DaysSince):
        return True
    if isinstance(expr, Ref):
        return expr.feature in dynamic
    if isinstance(expr, BinOp):
        return _instant_dependent(expr.left, dynamic) or _instant_dependent(expr.right, dynamic)
    return False


def _column_names(pairs: Sequence[tuple[str, str]]) -> list[str]:
    counts: dict[str, int] = {}
    for _, f in pairs:
        counts[f] = counts.get(f, 0) + 1
    return [f if counts[f] == 1 else f"{v}__{f}" for v, f in pairs]


def _refs(expr: Any) -> set[str]:
    from skewless.online.reader import _refs as refs

    return refs(expr)


def _plan_feature_view(project: str, view: FeatureView, wanted: list[tuple[str, int]], entity_index: int) -> _ViewPlan:
    by_name = {f.name: f for f in view.features}
    needed: set[str] = set()
    stack = [f for f, _ in wanted]
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        feat = by_name[name]
        if isinstance(feat, Derived):
            stack.extend(_refs(feat.expr))
    groups = []
    batch = layout.batch_windows(view)
    for g in layout.tile_groups(view):
        specs = []
        for index, a in enumerate(g.aggregations):
            if a.name not in needed:
                continue
            width = layout.width_ms_of(a)
            served = is_stream_served(width)
            bfield = None if served else (layout.LIFETIME_FIELD if width is None else f"w:{width}")
            specs.append(_AggSpec(a.name, laws.LAWS[layout.Agg(a.agg)], index, width, served, bfield,
                                  batch[bfield].index(a) if bfield else -1, *_fast_law(layout.Agg(a.agg))))
        groups.append(_GroupSpec(g.tile_ms, g.retention_ms, f"}}:t:{g.tile_ms}".encode(), tuple(specs),
                                 tuple(s.index for s in specs), tuple(s.merge for s in specs)))
    derived = []
    done = {f.name for f in view.features if isinstance(f, Aggregation)}
    pending = [f for f in view.features if isinstance(f, Derived) and f.name in needed]
    while pending:
        ready = [f for f in pending if _refs(f.expr) <= done]
        if not ready:
            raise ValueError(f"{view.name}: derived features {[f.name for f in pending]} reference unknown features")
        for f in ready:
            derived.append((f.name, f.expr, tuple(sorted(_refs(f.expr)))))
            done.add(f.name)
            pending.remove(f)
    step = 1
    for g in layout.tile_groups(view):
        step = lcm(step, g.tile_ms)
    batch_aggs: dict[str, list[_AggSpec]] = {}
    for gs in groups:
        for a in gs.aggs:
            if a.batch_field is not None:
                batch_aggs.setdefault(a.batch_field, []).append(a)
    return _ViewPlan(view=view, entity_index=entity_index, prefix=(layout.view_prefix(project, view) + ":{").encode(),
                     outputs=tuple(wanted), snapshot=False, groups=tuple(groups),
                     batch_fields=tuple(batch) if batch else (), derived=tuple(derived),
                     meta_key=layout.view_meta_key(project, view).encode(), step_ms=step,
                     stream=not view.source.is_batch_only, sla_ms=td_ms(view.freshness_sla),
                     batch_aggs={k: tuple(v) for k, v in batch_aggs.items()})


def _plan_snapshot_view(project: str, view: SnapshotView, wanted: list[tuple[str, int]], entity_index: int) -> _ViewPlan:
    positions = {f.name: i for i, f in enumerate(view.fields)}
    return _ViewPlan(view=view, entity_index=entity_index, prefix=(layout.view_prefix(project, view) + ":{").encode(),
                     outputs=tuple(wanted), snapshot=True,
                     snapshot_fields=tuple((positions[f], f) for f, _ in wanted), ttl_ms=td_ms(view.ttl))


def build_plan(repo: Repository, project: str, features: Any) -> _Plan:
    """The read plan of a feature selection (``view:feature`` refs, view names, a service or its name)."""
    if isinstance(features, (str, FeatureService)):
        refs_in: Any = features
    else:
        refs_in = list(features)
        if not all(isinstance(r, str) for r in refs_in):
            raise OnlineRequestError("features must be 'view:feature' references, view names or a service name (strings)")
    if not refs_in:
        raise OnlineRequestError("no features requested: pass 'view:feature' references, view names or a feature service")
    try:
        resolved = repo.resolve_features(refs_in)
    except UnknownFeatureError as exc:
        raise OnlineRequestError(str(exc)) from None
    pairs = [(v.name, f) for v, f in resolved]
    columns = _column_names(pairs)
    by_view: dict[str, list[tuple[str, int]]] = {}
    views: dict[str, Any] = {}
    for i, (v, f) in enumerate(resolved):
        views[v.name] = v
        by_view.setdefault(v.name, []).append((f, i))
    entities: list[_EntitySpec] = []
    plans = []
    for name, wanted in by_view.items():
        view = views[name]
        spec = _EntitySpec(view.entity.name, tuple((k, KeyType(t)) for k, t in view.entity.join_keys))
        if spec not in entities:
            entities.append(spec)
        idx = entities.index(spec)
        if isinstance(view, FeatureView):
            plans.append(_plan_feature_view(project, view, wanted, idx))
        else:
            plans.append(_plan_snapshot_view(project, view, wanted, idx))
    join_keys: list[str] = []
    for e in entities:
        for k, _ in e.keys:
            if k not in join_keys:
                join_keys.append(k)
    sources = tuple((s, layout.progress_key(project, s).encode()) for s in sorted({p.view.source.name for p in plans if p.stream}))
    head = [(_GET, layout.epoch_key(project).encode())] + [(_HGETALL, pk) for _, pk in sources] \
        + [(_HGETALL, p.meta_key) for p in plans if not p.snapshot]
    return _Plan(tuple(f"{v}:{f}" for v, f in pairs), tuple(columns), tuple(entities), tuple(join_keys), tuple(plans),
                 sources, tuple(head))


# --- the response --------------------------------------------------------------------------------------------


@dataclass
class OnlineResponse:
    """The answer of one read. Column-major: ``values[column][i]`` is entity ``i``'s value of ``column``
    (``columns[j]`` is the output name of ``refs[j]``), with its ``statuses`` and ``ages_ms`` (the read
    instant minus the newest data time the value reflects: newest applied event of the stream, batch cut-off
    of a batch-only source, snapshot row time; None when unknown). ``progress``: per streaming source and
    partition what was applied (offset, max event time, last write); ``batch_runs``: per view the batch runs
    (run id -> cut-off) the values include."""

    columns: tuple[str, ...]
    refs: tuple[str, ...]
    entities: dict[str, list[Any]]
    values: dict[str, list[Any]]
    statuses: dict[str, list[str]]
    ages_ms: dict[str, list[int | None]]
    now_ms: int
    as_of_ms: int | None
    progress: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    batch_runs: dict[str, dict[str, int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.entities.values()), []))

    def row(self, i: int = 0) -> dict[str, Any]:
        """Plain values of entity ``i`` (by position in the request)."""
        return {c: self.values[c][i] for c in self.columns}

    def status(self, column: str, i: int = 0) -> str:
        return self.statuses[column][i]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the HTTP server's response body)."""
        return {
            "features": list(self.columns), "refs": list(self.refs), "entities": self.entities,
            "values": self.values, "statuses": self.statuses, "ages_ms": self.ages_ms,
            "now_ms": self.now_ms, "as_of_ms": self.as_of_ms,
            "progress": {s: {str(p): v for p, v in parts.items()} for s, parts in self.progress.items()},
            "batch_runs": self.batch_runs,
        }

    def to_pandas(self, statuses: bool = True) -> Any:
        """One row per entity: the join keys, then each feature column (and ``<column>__status``)."""
        import pandas as pd

        data: dict[str, list[Any]] = dict(self.entities)
        for c in self.columns:
            data[c] = self.values[c]
            if statuses:
                data[f"{c}__status"] = self.statuses[c]
        return pd.DataFrame(data)


# --- the store -------------------------------------------------------------------------------------------------




class OnlineStore:
    """Online reads of one repository from one Redis (or Redis Cluster) client.

    ``max_entities`` bounds a request (None: unbounded); ``sampler`` (a
    :class:`skewless.monitoring.sampling.ValueSampler`) observes served values per view.
    """

    def __init__(self, repo: Repository, redis_client: Any, project: str | None = None, *,
                 max_entities: int | None = None, sampler: Any = None) -> None:
        from batch_jobs.materialize import default_project

        self.repo = repo
        self.client = redis_client
        self.project = project or default_project()
        self.max_entities = max_entities
        self.sampler = sampler
        self._plans: dict[Any, _Plan] = {}
        self._lock = threading.Lock()
        self._epoch_key = layout.epoch_key(self.project).encode()
        self._fast = hasattr(redis_client, "connection_pool") and not hasattr(redis_client, "get_nodes")
        self._conns: list[Any] = []  # connections taken from the client's pool, free for the next call
        self._pid = os.getpid()
        from batch_jobs.pit import evaluate_derived
        from skewless.monitoring.freshness import newest_applied_ms, parse_progress, stream_status

        self._evaluate_derived: Callable[..., Any] = evaluate_derived
        self._stream_status: Callable[..., str] = stream_status  # its rule, with the parsed progress cached:
        self._parse_progress: Callable[..., Any] = parse_progress
        self._newest_applied: Callable[..., int | None] = newest_applied_ms
        self._progress_cache: dict[Any, tuple] = {}
        self._ctx_ids: dict[tuple, int] = {}  # call context of the entity memo -> a number never used for another
        # bounded caches shared by every plan of this store (keys start with the plan's group/view serial):
        self._memo: dict[int, dict[bytes, list]] = {}  # view serial -> entity tag -> [call context, raw replies, cut-off,
        # its day part, the entity's prepared aggregations, their stale statuses, the outputs at T for a range of T
        # (_days_span), the replies' raw bytes]: a hit compares the replies as they are (no key bytes)
        self._packed: dict[int, dict[bytes, bytes]] = {}  # view serial -> entity tag -> its packed commands
        self._snap_raw: dict[int, dict[bytes, tuple]] = {}  # snapshot view serial -> tag -> (raw GET reply, value)
        self._kept = [0, 0]  # entries added to _memo, to _snap_raw since they were last emptied (bounds both)
        self._decoded: dict[Any, Any] = {}  # (serial, raw bytes) -> decoded tile vector / batch parts / snapshot row
        # [lookups, hits, entity reads left without the memo]: a memo that rarely hits costs its keys, so below
        # _MEMO_MIN_HITS of _MEMO_PROBE lookups it is skipped for _MEMO_PAUSE entity reads (then probed again)
        self._memo_stats = [0, 0, 0]

    # -- planning ------------------------------------------------------------------------------------------

    def plan(self, features: Any) -> _Plan:
        """The cached plan of a feature selection."""
        key = features.name if isinstance(features, FeatureService) else (
            features if isinstance(features, str) else tuple(features) if isinstance(features, (list, tuple)) else None)
        if key is not None:
            try:
                plan = self._plans.get(key)
            except TypeError:  # unhashable items: not a valid selection; build_plan says why
                plan, key = None, None
            if plan is not None:
                return plan
        plan = build_plan(self.repo, self.project, features)
        if key is not None:
            with self._lock:
                if len(self._plans) > 1024:
                    self._plans.clear()
                self._plans[key] = plan
        return plan

    # -- entities ------------------------------------------------------------------------------------------

    def _entity_columns(self, plan: _Plan, entity_rows: Any) -> tuple[dict[str, list[Any]], int]:
        t = type(entity_rows)
        if (t is list or t is tuple) and len(entity_rows) == 1 and type(entity_rows[0]) is dict \
                and len(plan.join_keys) == 1 and plan.join_keys[0] in entity_rows[0]:  # the common one-entity call
            key = plan.join_keys[0]
            return {key: [entity_rows[0][key]]}, 1
        if t is dict and len(entity_rows) == 1 and len(plan.join_keys) == 1 and plan.join_keys[0] in entity_rows:
            key = plan.join_keys[0]
            v = entity_rows[key]
            if type(v) is list and (self.max_entities is None or len(v) <= self.max_entities):
                return {key: list(v)}, len(v)
        if hasattr(entity_rows, "columns") and hasattr(entity_rows, "to_dict"):  # pandas
            cols = {str(c): entity_rows[c].tolist() for c in entity_rows.columns}
        elif isinstance(entity_rows, Mapping):
            cols = {}
            for k, v in entity_rows.items():
                if not isinstance(v, (list, tuple)):
                    raise OnlineRequestError(f"entities[{k!r}] must be a list of values, got {type(v).__name__}")
                cols[k] = list(v)
        elif isinstance(entity_rows, (list, tuple)):
            cols = {k: [] for k in plan.join_keys}
            for i, row in enumerate(entity_rows):
                if not isinstance(row, Mapping):
                    raise OnlineRequestError(f"entity row {i} must be a mapping of join key -> value, got {type(row).__name__}")
                for k in plan.join_keys:
                    if k not in row:
                        raise OnlineRequestError(f"entity row {i} lacks join key {k!r} (needed: {list(plan.join_keys)})")
                    cols[k].append(row[k])
        else:
            raise OnlineRequestError("entity_rows must be a list of dicts, a dict of join key -> list, or a DataFrame")
        missing = [k for k in plan.join_keys if k not in cols]
        if missing:
            raise OnlineRequestError(f"entities lack join key(s) {missing}; the requested views need {list(plan.join_keys)}"
                                     + (f", got {sorted(cols)}" if cols else ""))
        lengths = {len(cols[k]) for k in plan.join_keys}
        if len(lengths) > 1:
            raise OnlineRequestError(f"entity key lists differ in length: "
                                     f"{ {k: len(cols[k]) for k in plan.join_keys} }")
        n = lengths.pop() if lengths else 0
        if self.max_entities is not None and n > self.max_entities:
            raise OnlineRequestError(f"{n} entities requested; the limit is {self.max_entities} per request")
        return {k: cols[k] for k in plan.join_keys}, n

    @staticmethod
    def _tags(spec: _EntitySpec, cols: Mapping[str, list[Any]], n: int) -> list[bytes]:
        parts_per_key = []
        for name, ktype in spec.keys:
            values = cols[name]
            if ktype is KeyType.STRING:
                if n == 1 and len(spec.keys) == 1 and type(values[0]) is str:
                    v = values[0]
                    return [("s=" + (v.translate(_ESCAPE_TABLE) if _NEEDS_ESCAPE(v) else v)).encode()]
                if set(map(type, values)) - {str}:
                    for i, v in enumerate(values):
                        if type(v) is not str:
                            raise OnlineRequestError(f"join key {name!r} is a string; entity {i} has {v!r} ({type(v).__name__})")
                joined = "\0".join(values)
                if len(spec.keys) == 1 and _NEEDS_ESCAPE(joined) is None and joined.count("\0") == len(values) - 1:
                    return ("s=" + "\0s=".join(values)).encode().split(b"\0") if values else []  # one encode, one split
                out = ["s=" + v.translate(_ESCAPE_TABLE) for v in values]
            else:
                out = []
                for i, v in enumerate(values):
                    if type(v) is not int or not laws.INT64_MIN <= v <= laws.INT64_MAX:
                        raise OnlineRequestError(f"join key {name!r} is an int64; entity {i} has {v!r} ({type(v).__name__})")
                    out.append(f"i={v}")
            parts_per_key.append(out)
        if len(parts_per_key) == 1:
            return [p.encode() for p in parts_per_key[0]]
        return [",".join(p).encode() for p in zip(*parts_per_key)]

    # -- the read ------------------------------------------------------------------------------------------

    def get_online_features(self, entity_rows: Any, features: Any, *, as_of: int | datetime | str | None = None,
                            now_ms: int | None = None) -> OnlineResponse:
        """Values of ``features`` for ``entity_rows`` at "now" or at a tile-aligned ``as_of``, in one round trip."""
        plan = self.plan(features)
        cols, n = self._entity_columns(plan, entity_rows)
        now = int(time.time() * 1000) if now_ms is None else int(now_ms)
        as_of_ms = None if as_of is None else _as_of_ms(as_of)
        if as_of_ms is not None:
            for vp in plan.views:
                if as_of_ms % vp.step_ms:
                    before = as_of_ms - as_of_ms % vp.step_ms
                    raise AsOfNotAligned(
                        f"as_of {as_of_ms} is not a multiple of {vp.step_ms} ms (the tile sizes stored for {vp.view.name}): "
                        f"online reads are exact at aligned instants such as {before} or {before + vp.step_ms}; "
                        "use the training-set path (get_historical_features) for other instants")
        tags = [self._tags(spec, cols, n) for spec in plan.entities]

        # one pipeline: epoch, progress per streaming source, meta per feature view, then the entities' keys
        if self._fast:
            kinds = list(plan.head_kinds)
            packed = [plan.head_packed]
            for vp in plan.views:
                if vp.snapshot:
                    if not n:
                        continue
                    kinds.append(_K_MGET)
                    packed.append(b"*%d\r\n$4\r\nMGET\r\n" % (n + 1))
                else:
                    kinds += vp.kinds * n
                cache = self._packed.get(vp.serial)  # entity tag -> the entity's packed commands of that view
                if cache is None or len(cache) >= _CACHE_MAX:
                    cache = self._packed[vp.serial] = {}
                pieces = vp.pieces
                ones = list(map(cache.get, tags[vp.entity_index]))
                if None in ones:
                    for i, t in enumerate(tags[vp.entity_index]):
                        if ones[i] is None:
                            ones[i] = cache[t] = b"".join([piece % (c + len(t), t) for piece, c in pieces])
                packed += ones
            return self._send(b"".join(packed), kinds, plan, cols, n, tags, now, as_of_ms)
        names = list(plan.head_names)
        for vp in plan.views:
            names += [(cmd, vp.prefix + t + suffix) for t in tags[vp.entity_index] for cmd, suffix in vp.key_suffixes]
        return self._evaluate(self._execute(names), None, plan, cols, n, tags, now, as_of_ms)

    def _evaluate(self, replies: list[Any], stream: ReplyStream | None, plan: _Plan, cols: dict[str, list[Any]], n: int,
                  tags: list[list[bytes]], now: int, as_of_ms: int | None) -> OnlineResponse:
        """The response from the replies: all of them in ``replies``, or the shared ones there and the entities'
        still in ``stream`` (consumed view by view, entity by entity)."""
        pos = 0
        epoch = replies[0]
        pos = 1
        progress_raw: dict[str, dict] = {}
        for src, _ in plan.sources:
            progress_raw[src] = replies[pos]
            pos += 1
        metas = {}
        for vp in plan.views:
            if not vp.snapshot:
                metas[vp.view.name] = replies[pos]
                pos += 1

        T = now if as_of_ms is None else as_of_ms
        ncol = len(plan.columns)
        values: list[list[Any]] = [_NO_LIST] * ncol  # every column is set by its view below
        statuses: list[list[str]] = [_NO_LIST] * ncol
        ages: list[list[int | None]] = [_NO_LIST] * ncol
        epoch_text = None if epoch is None else epoch.decode()
        progress = {}
        newest_event = {}
        newest_applied = {}
        for src, raw in progress_raw.items():
            parts, newest_event[src], newest_applied[src] = self._progress_info(raw, epoch_text)
            progress[src] = {p: dict(v) for p, v in parts.items()}  # the response's own copy
        batch_runs: dict[str, dict[str, int]] = {}
        sampler = self.sampler
        for vp in plan.views:
            k = vp.key_count()
            chunk = None
            if stream is None:
                chunk = replies[pos:pos + k * n]
                pos += k * n
            if vp.snapshot:
                if chunk is None:
                    chunk = self._snapshot_replies(vp, stream, tags[vp.entity_index])  # type: ignore[arg-type]
                rows = self._snapshots(vp, chunk, epoch_text, T)
            else:
                stale = False
                age: int | None = None
                if vp.stream:
                    src = vp.view.source.name
                    if as_of_ms is None:  # freshness.stream_status: stale without a newest event or past the SLA
                        applied = newest_applied[src]
                        stale = applied is None or now - applied > vp.sla_ms
                    newest = newest_event.get(src)
                    age = None if newest is None else max(0, T - newest)
                meta = _meta(metas[vp.view.name])
                runs: dict[str, int] = {}
                starts, ctx = _window(vp, T, now, as_of_ms, epoch, meta)
                ctx_ids = self._ctx_ids  # the context named by a number: memo keys hash one int, not its tuples
                ctx_id = ctx_ids.get(ctx)
                if ctx_id is None:
                    if len(ctx_ids) >= 4096:
                        ctx_ids.clear()
                    ctx_id = ctx_ids[ctx] = next(_SERIALS)  # never reused: an old number names no other context
                mstats = self._memo_stats
                use_memo = mstats[2] <= 0
                if not use_memo:
                    mstats[2] -= n
                rows = self._windowed(vp, chunk, n, k, epoch, meta, now, as_of_ms, stale, age, runs, starts, ctx_id,
                                      tags[vp.entity_index], use_memo, stream)
                if runs:
                    batch_runs[vp.view.name] = runs
            if n == 1:
                row_vals, row_sts, row_age = rows[0]
                for jo, (_, j) in enumerate(vp.outputs):
                    values[j] = [row_vals[jo]]
                    statuses[j] = [row_sts[jo]]
                    ages[j] = [row_age]
            else:  # rows -> columns by transposing (C loops), each column its own list
                nout = len(vp.outputs)
                val_cols = list(zip(*[r[0] for r in rows])) or [()] * nout  # no entities: empty columns
                st_cols = list(zip(*[r[1] for r in rows])) or [()] * nout
                age_col = [r[2] for r in rows]
                for jo, (_, j) in enumerate(vp.outputs):
                    values[j] = list(val_cols[jo])
                    statuses[j] = list(st_cols[jo])
                    ages[j] = age_col[:]
            if sampler is not None:
                for row_vals, _, _ in rows:
                    sampler.observe(vp.view.name, {f: row_vals[jo] for jo, (f, _) in enumerate(vp.outputs)})
        if stream is not None:
            stream.finish()
        return OnlineResponse(
            columns=plan.columns, refs=plan.refs, entities=cols,
            values=dict(zip(plan.columns, values)), statuses=dict(zip(plan.columns, statuses)),
            ages_ms=dict(zip(plan.columns, ages)), now_ms=now, as_of_ms=as_of_ms, progress=progress,
            batch_runs=batch_runs)

    def _progress_info(self, raw: Mapping[bytes, bytes] | None, epoch_text: str | None
                       ) -> tuple[dict[int, dict[str, Any]], int | None, int | None]:
        """``(partitions, newest event of the epoch, freshness.newest_applied_ms)`` of a progress hash, cached
        by its raw fields and the epoch (the same bytes give the same answer)."""
        key = (tuple(raw.items()) if raw else (), epoch_text)
        hit = self._progress_cache.get(key)
        if hit is None:
            parts = _progress(raw)
            newest = max((p.get("max_event_ms") for p in parts.values()
                          if p.get("max_event_ms") is not None and p.get("epoch") == epoch_text), default=None)
            hit = (parts, newest, self._newest_applied(self._parse_progress(raw or {}), epoch_text))
            if len(self._progress_cache) >= 256:
                self._progress_cache.clear()
            self._progress_cache[key] = hit
        return hit

    # -- transport -----------------------------------------------------------------------------------------

    def _execute(self, names: list[tuple[bytes, bytes]]) -> list[Any]:
        """One round trip through the client's own pipeline (Redis Cluster, other clients); GET -> bytes|None,
        HGETALL -> dict[bytes, bytes]."""
        pipe = self.client.pipeline(transaction=False)
        for cmd, key in names:
            (pipe.get if cmd == _GET else pipe.hgetall)(key.decode())
        out = []
        for (cmd, _), r in zip(names, pipe.execute()):
            if cmd == _GET:
                out.append(r.encode() if isinstance(r, str) else r)
            else:
                out.append({(k.encode() if isinstance(k, str) else k): (v.encode() if isinstance(v, str) else v)
                            for k, v in (r or {}).items()})
        return out

    def _send(self, packed: bytes, kinds: list[int], plan: _Plan, cols: dict[str, list[Any]], n: int,
              tags: list[list[bytes]], now: int, as_of_ms: int | None) -> OnlineResponse:
        """One round trip on a connection of a plain ``redis.Redis``, evaluated as the replies arrive: the packed
        commands in one write, replies per ``kinds`` (``_K_GET`` bytes|None, ``_K_HASH`` dict, ``_K_TILES`` dict or
        hiredis's flat list). On redis-py's hiredis parser the shared replies are parsed and the entities' are
        left in a :class:`ReplyStream`, where the memo passes over an entity whose raw replies are the kept ones.

        The store keeps the connections it took from the client's pool (one per concurrent caller, taken once):
        every call reads all its replies or disconnects, so the pool's per-checkout "unread data?" probe (a
        syscall) and its locking are not needed on every read. A kept connection the server closed meanwhile
        (restart, idle timeout) is retried once on a fresh socket, as the pool's probe would have reconnected."""
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours
            self._conns, self._pid = [], os.getpid()
        conns = self._conns
        try:
            conn, kept = conns.pop(), True
        except IndexError:
            conn, kept = self.client.connection_pool.get_connection(), False
        try:
            nhead = len(plan.head_kinds)
            try:
                replies, stream = self._round_trip(conn, packed, kinds, nhead, n >= _STREAM_MIN)
            except _RedisConnectionError:
                if not kept:
                    raise
                replies, stream = self._round_trip(conn, packed, kinds, nhead, n >= _STREAM_MIN)  # connects anew
            if stream is None:
                return self._evaluate(replies, None, plan, cols, n, tags, now, as_of_ms)
            try:
                response = self._evaluate(replies, stream, plan, cols, n, tags, now, as_of_ms)
            except BaseException:
                conn.disconnect()  # replies left unread must not reach the next command
                raise
            if conn.health_check_interval:
                conn.next_health_check = time.time() + conn.health_check_interval
            return response
        finally:
            conns.append(conn)

    @staticmethod
    def _round_trip(conn: Any, packed: bytes, kinds: list[int], nhead: int, streamed: bool
                    ) -> tuple[list[Any], ReplyStream | None]:
        """Send; then ``(the nhead shared replies, a stream of the rest)`` if ``streamed`` and the connection allows
        it, else ``(all replies, None)``."""
        try:
            conn.send_packed_command([packed], check_health=False)
            stream = open_stream(conn, _HiredisParser, _NOT_ENOUGH_DATA) if streamed else None
            if stream is not None:
                head = stream.parse(nhead)
                for i in range(nhead):
                    r = head[i]
                    if kinds[i] != _K_GET:
                        head[i] = _as_dict(r)
                return head, stream
            parser = getattr(conn, "_parser", None)
            if (_HiredisParser is not None and type(parser) is _HiredisParser and parser._reader is not None
                    and parser._next_response is _NOT_ENOUGH_DATA):
                return _read_hiredis(conn, parser, kinds), None
            out = []
            error = None
            for kind in kinds:
                r = conn.read_response(disable_decoding=True)
                if isinstance(r, Exception):
                    error = error or r
                    r = None
                if kind == _K_MGET:
                    out += r if isinstance(r, list) else []  # an error reply: raised below
                    continue
                if kind != _K_GET:
                    r = _as_dict(r)
                out.append(r)
        except BaseException:
            conn.disconnect()  # unread replies must not leak into the next command (it reconnects on next use)
            raise
        if error is not None:
            raise error
        return out, None

    def _snapshot_replies(self, vp: _ViewPlan, stream: ReplyStream, tags: Sequence[bytes]) -> list[bytes | None]:
        """The GET reply of each entity of a snapshot view from ``stream``: the kept value when its raw reply is the
        one kept for that entity (no parsing), else parsed (and kept)."""
        serial = vp.serial
        if stream.pending:  # replies parsed unmeasured before (no memo): the MGET parsed whole, its end found for free
            values = stream.parse(1, False)[0] if tags else []
            if type(values) is not list or len(values) != len(tags):
                raise InvalidResponse(f"MGET of {len(tags)} keys did not answer {len(tags)} values")
            return values
        if tags and not stream.skip(b"*%d\r\n" % len(tags)):  # the MGET's array
            stream.parse(1)  # an error reply raises
            raise InvalidResponse(f"MGET of {len(tags)} keys did not answer {len(tags)} values")
        memo = _view_cache(self._snap_raw, self._kept, 1, serial)
        kept = list(map(memo.get, tags))
        parsed, spans = stream.take([None if e is None else e[0] for e in kept], 1)
        out = []
        for t, e, p, raw in zip(tags, kept, parsed, spans):
            if p is None:
                out.append(e[1])  # type: ignore[index]
            else:
                memo[t] = (raw, p[0])
                self._kept[1] += 1
                out.append(p[0])
        return out

    # -- evaluation ------------------------------------------------------------------------------------------

    def _snapshots(self, vp: _ViewPlan, raws: Sequence[bytes | None], epoch: str | None,
                   T: int) -> list[tuple[Sequence[Any], Sequence[str], int | None]]:
        """The entities of a snapshot view: per stored row (or None) ``(values, statuses, age)`` in the order of
        ``vp.snapshot_fields``."""
        nones, incomplete_sts, present, expired = vp.snap_outputs
        absent = (nones, present if epoch is not None else incomplete_sts, None)  # no row (or forgotten); without
        incomplete = (nones, incomplete_sts, None)  # the epoch marker Redis may have lost it
        live_from = T - vp.ttl_ms  # rows from here are within the TTL; from remembered_from: expired
        remembered_from = live_from - SNAPSHOT_EXPIRED_MEMORY_MS
        cache = self._decoded  # (view serial, raw row) -> [ts, created_at, epoch, data, decoded values]
        serial = vp.serial
        out = []
        append = out.append
        for raw in raws:
            if raw is None:
                append(absent)
                continue
            row = cache.get((serial, raw))
            if row is None:
                data = _loads(raw)
                row = [data["ts"], data.get("created_at"), data.get("epoch"), data, None]
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                cache[(serial, raw)] = row
            ts, created = row[0], row[1]
            if epoch is None or row[2] != epoch or ts > T or (created is not None and created > T):
                append(incomplete)
            elif ts >= live_from:
                decoded = row[4]
                if decoded is None:
                    stored = row[3]["values"]
                    decoded = tuple([laws.decode_value(stored[p]) for p, _ in vp.snapshot_fields])
                    if _frozen(decoded):
                        row[4] = decoded
                append((decoded, present, T - ts))
            else:
                append((nones, expired if ts >= remembered_from else present, T - ts))
        return out

    def _windowed(self, vp: _ViewPlan, chunk: Sequence[Any], n: int, k: int, epoch: bytes | None,
                  meta: tuple[Any, ...], now: int, as_of_ms: int | None, stale: bool, age: int | None,
                  runs: dict[str, int], stream_starts: Sequence[list[int | None]], ctx: int,
                  tags: Sequence[bytes], use_memo: bool = True, stream: ReplyStream | None = None,
                  ) -> list[tuple[Sequence[Any], Sequence[str], int | None]]:
        """The ``n`` entities of one feature view (``k`` replies each in ``chunk``): :func:`layout.evaluate_read` +
        the reader's rules; per entity ``(values, statuses, age)`` in the order of ``vp.outputs``.

        An entity's aggregation values and statuses are a function of its raw replies and of the call context
        ``ctx`` (a number naming: epoch, view meta, as_of, the window starts at T and the current tile of each
        group) plus, for a batch part, whether its cut-off is after T and how many days late it is; they are
        memoised on that key (bounded) together with the derived features that do not depend on T. Staleness,
        the derived features that depend on T (``DaysSince``) and the age are applied after, on every read.

        From a ``stream`` (``chunk`` None) an entity's replies are parsed, or passed over when their raw bytes are the
        ones its memo entry kept (then they are that entry's replies, compared by identity)."""
        T = now if as_of_ms is None else as_of_ms
        memo = _view_cache(self._memo, self._kept, 0, vp.serial) if use_memo else {}
        mstats = self._memo_stats
        has_batch = bool(vp.batch_fields)
        run_cutoff, run_epoch_ok = meta[2], meta[3] == epoch
        dynamic = self._dynamic if vp.dynamic_derived else None
        batch_age = not vp.stream and age is None
        rows = []
        append = rows.append
        serial = vp.serial
        entries: list[Any] = list(map(memo.get, tags)) if use_memo else [None] * n
        spans: Sequence[bytes | None]
        if stream is not None:  # replies passed over (None: the entry's) or parsed, and their raw bytes
            parsed, spans = stream.take([None if e is None else e[7] for e in entries], k, use_memo)
            raws_list = [e[1] if p is None else p for e, p in zip(entries, parsed)]
        else:
            raws_list = [(chunk[i],) if k == 1 else chunk[i * k:(i + 1) * k] for i in range(n)]  # type: ignore[index]
            spans = ()  # no raw bytes
        parts: dict[int, tuple] = {}  # batch cut-off -> (after T?, days late at T)
        hits = 0
        i = -1
        for entry, raws in zip(entries, raws_list):
            i += 1
            hit = None
            if entry is not None and entry[0] == ctx and entry[1] == raws:  # the replies compared as they are
                cutoff = entry[2]
                if cutoff is None or entry[3] == (parts.get(cutoff) or _cutoff_part(parts, cutoff, T)):
                    hit = entry[4]
                    hits += 1
                    if entry[7] is None and spans:  # an entry made without the stream: its raw bytes kept from now on
                        entry[7] = spans[i]
            if hit is None:
                key = tags[i] if use_memo else None
                part = None
                if key is not None:
                    try:
                        cutoff = None
                        if has_batch:
                            braw = raws[-1]
                            if type(braw) is list:  # flat [field, value, ...]: the field at an even position
                                if braw:
                                    ci = braw.index(b"cutoff")  # missing: no memo; the evaluation raises the reference's error
                                    if ci & 1:
                                        raise ValueError("a value equals 'cutoff': no memo for this entity")
                                    cutoff = int(braw[ci + 1])
                            else:
                                cutoff = int(braw[b"cutoff"]) if braw else None
                            if run_cutoff is not None and (cutoff is None or cutoff < run_cutoff) and run_epoch_ok:
                                cutoff = run_cutoff
                        part = None if cutoff is None else (cutoff > T, (T - cutoff) // BATCH_TILE_MS)
                    except Exception:  # noqa: BLE001 - malformed replies: the evaluation below raises the reference's error
                        key = None
                agg = self._aggregate(vp, [_as_dict(r) for r in raws], epoch, meta, now, as_of_ms, stream_starts)
                hit = self._prepare(vp, agg)
                entry = None
                if key is not None and _frozen(tuple(agg[0].values())) and _frozen(hit[0]):
                    entry = memo[key] = [ctx, raws, cutoff, part, hit, None, None, spans[i] if spans else None]
                    self._kept[0] += 1
            out_vals, out_sts, run = hit[0], hit[1], hit[2]
            if run is not None:
                runs[run[0]] = run[1]
            if dynamic is not None:
                span = None if entry is None else entry[6]
                if span is not None and span[0] <= T < span[1]:
                    out_vals = span[2]
                else:
                    out_vals = dynamic(vp, hit, T)
                    if entry is not None:
                        entry[6] = _days_span(hit[5], T, out_vals)
            if stale:
                stale_sts = None if entry is None else entry[5]
                if stale_sts is None:
                    stale_sts = tuple([STALE if st == PRESENT else st for st in out_sts])
                    if entry is not None:
                        entry[5] = stale_sts
                out_sts = stale_sts
            append((out_vals, out_sts, max(0, T - hit[3]) if batch_age and hit[3] is not None else age))
        if use_memo:
            mstats[0] += n
            mstats[1] += hits
            if mstats[0] >= _MEMO_PROBE:
                if mstats[1] < _MEMO_MIN_HITS:
                    mstats[2] = _MEMO_PAUSE
                mstats[0] = mstats[1] = 0
        return rows

    def _prepare(self, vp: _ViewPlan, agg: tuple) -> tuple:
        """``(output values, output statuses before staleness, run, batch cut-off, values, to evaluate at T)`` of an
        entity's evaluated aggregations: every derived status (a function of the input statuses, never of T) and
        the values of the derived features that do not depend on T; the instant-dependent ones not incomplete are
        listed ``(name, expr, inputs, their values if all are known now)`` for :meth:`_dynamic`.

        Staleness is applied later to the outputs (PRESENT -> STALE): a derived status computed from its inputs'
        statuses before that (incomplete if any is, else stale if any is) then equals the one from after."""
        agg_vals, agg_sts, run, batch_cutoff = agg
        vals, sts = agg_vals, agg_sts
        pending: list[tuple[str, Any, tuple[str, ...], dict[str, Any] | None]] = []
        if vp.derived:
            vals, sts = dict(agg_vals), dict(agg_sts)
            later = {d[0] for d in vp.dynamic_derived}
            for name, expr, inputs in vp.derived:  # dependency order
                in_status = [sts[i] for i in inputs]
                if INCOMPLETE in in_status:
                    vals[name], sts[name] = None, INCOMPLETE
                    continue
                sts[name] = STALE if STALE in in_status else PRESENT
                if name in later:
                    vals[name] = None  # evaluated at T on every read
                    known = None if any(i in later for i in inputs) else {i: vals[i] for i in inputs}
                    pending.append((name, expr, inputs, known))
                else:
                    vals[name] = self._evaluate_derived(expr, {i: vals[i] for i in inputs}, 0)  # T is not read
        return (tuple([vals.get(f) for f, _ in vp.outputs]), tuple([sts.get(f) for f, _ in vp.outputs]),
                run, batch_cutoff, vals, tuple(pending))

    def _dynamic(self, vp: _ViewPlan, hit: tuple, T: int) -> list[Any]:
        """A prepared entity's output values with the derived features that depend on T evaluated at T."""
        out_vals, vals, pending = hit[0], hit[4], hit[5]
        if not pending:
            return out_vals
        evaluate = self._evaluate_derived
        dv: dict[str, Any] = {}
        for name, expr, inputs, known in pending:
            dv[name] = evaluate(expr, known if known is not None else {i: dv[i] if i in dv else vals[i] for i in inputs}, T)
        out_vals = list(out_vals)
        for pos, name in vp.out_dynamic:
            if name in dv:
                out_vals[pos] = dv[name]
        return out_vals

    def _aggregate(self, vp: _ViewPlan, raws: Sequence[Any], epoch: bytes | None, meta: tuple[Any, ...],
                   now: int, as_of_ms: int | None, stream_starts: Sequence[list[int | None]],
                   ) -> tuple[dict[str, Any], dict[str, str], tuple[str, int] | None, int | None]:
        """``(values, statuses, (run id, cut-off) | None, batch cut-off | None)`` of the view's aggregations for one
        entity, exactly :func:`layout.evaluate_read`, as tight loops.

        ``stream_starts[g]`` holds, per needed aggregation of group g, its window start at T when stream-served
        (None for batch-served ones: their start is the entity's cut-off). Decoded tile vectors and batch parts
        are cached by their raw bytes (identical bytes = identical value); anything a cache cannot take (an
        error, a mutable value) goes through the reference order of decoding, so errors are raised exactly
        where they were."""
        applied_from, meta_epoch, run_cutoff, run_epoch = meta
        T = now if as_of_ms is None else as_of_ms
        epoch_ok = epoch is not None and meta_epoch == epoch
        vals: dict[str, Any] = {}
        sts: dict[str, str] = {}
        groups = vp.groups
        tiles_per_group = []
        for raw in raws[:len(groups)]:
            tiles: dict[int, bytes] = {}
            for fld, value in raw.items():
                _, tile_epoch, body = value.split(b"|", 2)
                if tile_epoch != epoch:
                    epoch_ok = False
                tiles[int(fld)] = body
            tiles_per_group.append(tiles)
        batch = None
        cutoff = None
        empty_batch = False  # the newest run did not list the entity: identity parts (layout.empty_batch_record)
        if vp.batch_fields:
            raw = raws[len(groups)]
            if raw:
                batch, cutoff = raw, int(raw[b"cutoff"])
            if run_cutoff is not None and (cutoff is None or cutoff < run_cutoff) and run_epoch == epoch:
                batch, cutoff, empty_batch = {b"epoch": epoch}, run_cutoff, True
            if batch is not None and batch.get(b"epoch") != epoch:
                epoch_ok = False
        run: tuple[str, int] | None = None
        if not epoch_ok:
            for g in groups:
                for a in g.aggs:
                    vals[a.name], sts[a.name] = None, INCOMPLETE
        else:
            if batch is not None and not empty_batch:
                run = (batch[b"run"].decode(), cutoff)  # type: ignore[assignment]
            parsed_batch: dict[str, Any] = {}
            batch_start = None if batch is None or cutoff > T else cutoff  # type: ignore[operator]
            for g, tiles, call_starts in zip(groups, tiles_per_group, stream_starts):
                aggs = g.aggs
                if not aggs:
                    continue
                newest = max(tiles) if tiles else floor_ms(now, g.tile_ms)
                oldest_kept = newest - g.retention_ms
                starts = call_starts
                if None in starts:  # batch-served aggregations start at the cut-off (None: incomplete)
                    starts = [batch_start if st is None else st for st in starts]
                accs = [a.law.init() for a in aggs]
                known = [x for x in starts if x is not None]
                if known:
                    lo = min(known)
                    merges = g.merges
                    cache = self._decoded
                    serial = g.serial
                    na = len(aggs)
                    for s, body in tiles.items():  # each tile's vector decoded once, merged into every aggregation
                        if s < lo or (as_of_ms is not None and s >= as_of_ms):
                            continue
                        dec = cache.get((serial, body))
                        if dec is None:
                            dec = _decode_tile(g, body, cache)
                        if dec is not None:
                            for j in range(na):
                                st = starts[j]
                                if st is not None and s >= st:
                                    accs[j] = merges[j](accs[j], dec[j])
                        else:  # the reference order: decode only what is merged (same errors)
                            vec = _loads(body)
                            for j, a in enumerate(aggs):
                                st = starts[j]
                                if st is not None and s >= st:
                                    accs[j] = a.merge(accs[j], a.decode(vec[a.index]))
                for j, a in enumerate(aggs):
                    lw, st, stream_acc = a.law, starts[j], accs[j]
                    if st is None:
                        vals[a.name], sts[a.name] = None, INCOMPLETE
                        continue
                    ok = applied_from is not None and applied_from <= st and st >= oldest_kept
                    if a.stream_served:
                        vals[a.name], sts[a.name] = (lw.finalize(stream_acc), PRESENT) if ok else (None, INCOMPLETE)
                        continue
                    days_late = (T - cutoff) // BATCH_TILE_MS  # type: ignore[operator]
                    parts = None  # the batch field's parts (body, tail0, tail1), decoded as used (the reference order)
                    if not empty_batch:
                        parts = parsed_batch.get(a.batch_field, _MISSING)  # type: ignore[arg-type]
                        if parts is _MISSING:
                            parts = parsed_batch[a.batch_field] = _loads(batch[a.batch_field.encode()])  # type: ignore[index,union-attr]
                    bi = a.batch_index
                    body = lw.init() if parts is None else a.decode(parts[0][bi])
                    if a.width_ms is None:
                        if not ok:
                            vals[a.name], sts[a.name] = None, INCOMPLETE
                        else:
                            vals[a.name] = lw.finalize(a.merge(body, stream_acc))
                            sts[a.name] = STALE if days_late > BATCH_TAIL_DAYS else PRESENT
                        continue
                    if days_late > BATCH_TAIL_DAYS or not ok:
                        vals[a.name], sts[a.name] = None, INCOMPLETE
                        continue
                    acc = body
                    if parts is not None:
                        for t in range(days_late, BATCH_TAIL_DAYS):
                            acc = a.merge(acc, a.decode(parts[1 + t][bi]))
                    vals[a.name], sts[a.name] = lw.finalize(a.merge(acc, stream_acc)), PRESENT
        return vals, sts, run, (cutoff if batch is not None else None)



_MISSING = object()
_NO_LIST: list = []
_I64_LOW = -(1 << 63)


def _window(vp: _ViewPlan, T: int, now: int, as_of_ms: int | None, epoch: bytes | None,
            meta: tuple[Any, ...]) -> tuple[list[list[int | None]], tuple]:
    """``(starts, memo context)`` of a feature view's read: per group, each needed aggregation's window start at T
    (None for batch-served ones), and the call context of the entity memo. The starts are a function of T and
    ``as_of`` and the tile floors of ``now``; they are kept with the range of instants they hold for."""
    w = vp.window
    if w is None or not (w[0] <= T < w[1] and w[2] <= now < w[3] and w[4] == as_of_ms):
        starts = [[floor_ms(T - a.width_ms, g.tile_ms) if a.stream_served else None for a in g.aggs]  # type: ignore[operator]
                  for g in vp.groups]
        t_lo, t_hi, n_lo, n_hi = _I64_LOW, -_I64_LOW, _I64_LOW, -_I64_LOW
        for g, st in zip(vp.groups, starts):
            for a, x in zip(g.aggs, st):
                if x is not None:  # floor(T - width, tile) == x  <=>  x + width <= T < x + width + tile
                    t_lo, t_hi = max(t_lo, x + a.width_ms), min(t_hi, x + a.width_ms + g.tile_ms)  # type: ignore[operator]
            c = floor_ms(now, g.tile_ms)
            n_lo, n_hi = max(n_lo, c), min(n_hi, c + g.tile_ms)
        tail = (tuple(tuple(x) for x in starts), tuple(floor_ms(now, g.tile_ms) for g in vp.groups))
        w = vp.window = (t_lo, t_hi, n_lo, n_hi, as_of_ms, starts, tail)
    return w[5], (vp.serial, epoch, meta, as_of_ms) + w[6]
_MEMO_PROBE, _MEMO_MIN_HITS, _MEMO_PAUSE = 4096, 410, 65536  # memo skipped below ~10% hits (see _memo_stats)
_STREAM_MIN = 8  # entities from which a read consumes its replies as a stream (fewer: parsed at once, cheaper)
_MEMO_MAX = 1 << 14  # entity reads (of any view plan) whose aggregations a store keeps; then the memo restarts
_CACHE_MAX = 1 << 16  # decoded tile vectors / batch parts / snapshot rows a store keeps; then the cache restarts
_FROZEN = frozenset((int, str, float, bool, type(None), Decimal))


def _frozen(x: Any) -> bool:
    """Immutable all the way down (safe to share between responses)."""
    t = type(x)
    if t in _FROZEN:
        return True
    if t is not tuple:
        return False
    for y in x:
        if type(y) not in _FROZEN and not (type(y) is tuple and _frozen(y)):
            return False
    return True


def _view_cache(caches: dict[int, dict], added: list[int], which: int, serial: int) -> dict:
    """The per-view dict of a bounded cache of entity entries (``caches``: view serial -> tag -> entry; ``added[which]``
    counts the entries added): all views' entries are dropped once ``_MEMO_MAX`` were added since the last time."""
    if added[which] >= _MEMO_MAX:
        caches.clear()
        added[which] = 0
    cache = caches.get(serial)
    if cache is None:
        cache = caches[serial] = {}
    return cache


def _cutoff_part(parts: dict[int, tuple[bool, int]], cutoff: int, T: int) -> tuple[bool, int]:
    """``(cut-off after T?, days late at T)`` of a batch cut-off, kept in ``parts`` for the rest of the read."""
    part = parts[cutoff] = (cutoff > T, (T - cutoff) // BATCH_TILE_MS)
    return part


def _days_span(pending: Sequence[tuple], T: int, out_vals: Sequence[Any]) -> tuple[int, int, tuple] | None:
    """``(lo, hi, out_vals)``: the instants ``lo <= T' < hi`` at which the instant-dependent outputs of an entity
    equal ``out_vals`` (computed at ``T``), when each is ``DaysSince(Ref)`` of a known int timestamp or None
    (their value ``(T - ts) // day`` is constant within a day from ``ts``); None for any other expression."""
    lo, hi = _I64_LOW, -_I64_LOW
    for _, expr, _, known in pending:
        if known is None or type(expr) is not DaysSince or type(expr.ts) is not Ref:
            return None
        ts = known[expr.ts.feature]
        if ts is None:
            continue
        if type(ts) is not int:
            return None
        start = ts + (T - ts) // MS_PER_DAY * MS_PER_DAY
        lo, hi = max(lo, start), min(hi, start + MS_PER_DAY)
    return lo, hi, tuple(out_vals)


def _decode_tile(g: _GroupSpec, body: bytes, cache: dict) -> tuple | None:
    """The decoded intermediates of ``g.aggs`` in a tile body, cached; None if any of them fails to decode."""
    try:
        vec = _loads(body)
        dec = tuple([a.decode(vec[a.index]) for a in g.aggs])
    except Exception:  # noqa: BLE001 - the caller decodes lazily and raises where the reference does
        return None
    if _frozen(dec):
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[(g.serial, body)] = dec
    return dec


from redis.exceptions import ConnectionError as _RedisConnectionError  # noqa: E402 - with the reader below
from redis.exceptions import InvalidResponse  # noqa: E402
from redis.exceptions import TimeoutError as _RedisTimeoutError  # noqa: E402

try:  # redis-py's hiredis parser: replies are taken from its reader directly (what Connection.read_response does)
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
    from redis._parsers.hiredis import _HiredisParser
except ImportError:  # pragma: no cover - another redis-py layout: the generic path
    _HiredisParser = None  # type: ignore[assignment,misc]


def _as_dict(r: Any) -> dict:
    """A hash reply as a dict (RESP2 gives a flat list of fields and values, RESP3 a dict, a missing key nothing)."""
    if isinstance(r, dict):
        return r
    if not r:
        return {}
    it = iter(r)
    return dict(zip(it, it))


def _read_hiredis(conn: Any, parser: Any, kinds: list[int]) -> list[Any]:
    """The replies of the commands already sent on ``conn`` (one ``_K_*`` kind each) read straight from the
    hiredis reader: the same parsing as ``conn.read_response(disable_decoding=True)`` per reply, without its
    per-reply Python layers; ``_K_TILES`` hashes stay flat lists. An error reply raises (the caller
    disconnects, so unread replies never reach another command)."""
    import socket

    gets = parser._reader.gets
    out = []
    append = out.append
    for kind in kinds:
        r = gets(False)
        while r is _NOT_ENOUGH_DATA:
            try:
                parser.read_from_socket()
            except socket.timeout:
                raise _RedisTimeoutError(f"Timeout reading from {conn._host_error()}") from None
            except OSError as exc:
                raise _RedisConnectionError(f"Error while reading from {conn._host_error()} : {exc.args}") from None
            r = gets(False)
        t = type(r)
        if t is list:
            if r and isinstance(r[0], _RedisConnectionError):
                raise r[0]
            if kind == _K_HASH:
                it = iter(r)
                r = dict(zip(it, it))
            if kind == _K_MGET:
                out += r
                continue
        elif t is not bytes and t is not dict:
            if isinstance(r, Exception):
                raise r
            if r is None and kind != _K_GET:
                r = {}
        append(r)
    if conn.health_check_interval:
        conn.next_health_check = time.time() + conn.health_check_interval
    return out


def _as_of_ms(as_of: Any) -> int:
    if isinstance(as_of, bool):
        raise OnlineRequestError(f"as_of must be epoch ms, an ISO-8601 string with a zone or a datetime, got {as_of!r}")
    if isinstance(as_of, str):
        from skewless.core.admission import MalformedError, parse_event_time

        try:
            return parse_event_time(as_of)
        except MalformedError as exc:
            raise OnlineRequestError(f"as_of: {exc}") from None
    if isinstance(as_of, int):
        if not 0 <= as_of <= laws.INT64_MAX:
            raise OnlineRequestError(f"as_of {as_of} is out of range")
        return as_of
    try:
        return to_epoch_ms(as_of)
    except Exception:  # noqa: BLE001 - anything else is the caller's mistake
        raise OnlineRequestError(f"as_of must be epoch ms, an ISO-8601 string with a zone or a datetime, got {as_of!r}") from None


def _meta(raw: Mapping[bytes, bytes] | None) -> tuple[int | None, bytes | None, int | None, bytes | None]:
    """``(applied_from_ms, epoch, batch_cutoff_ms, batch_epoch)`` of a view meta hash."""
    raw = raw or {}
    af = raw.get(b"applied_from_ms")
    bc = raw.get(layout.META_BATCH_CUTOFF.encode())
    return (None if af is None else int(af)), raw.get(b"epoch"), (None if bc is None else int(bc)), raw.get(b"batch_epoch")


def _progress(raw: Mapping[bytes, bytes] | None) -> dict[int, dict[str, Any]]:
    out = {}
    for k, v in (raw or {}).items():
        if k.startswith(b"p:"):
            try:
                out[int(k[2:])] = _loads(v)
            except ValueError:
                continue
    return out


def open_store(repo: Repository | str = "feature_defs", redis_url: str | None = None, *, project: str | None = None,
               password: str | None = None, tls: bool = False, **kwargs: Any) -> OnlineStore:
    """An :class:`OnlineStore` on ``redis_url`` (default: the project's Redis)."""
    import redis

    from skewless.core.repo import load_repository

    if not isinstance(repo, Repository):
        repo = load_repository(repo)
    if redis_url is None:
        from skewless import config
        from skewless.stack.redis import redis_url as make_url

        redis_url = make_url(config.ports().redis)
    opts: dict[str, Any] = {}
    if password:
        opts["password"] = password
    if tls and redis_url.startswith("redis://"):
        redis_url = "rediss://" + redis_url[len("redis://"):]
    client = redis.Redis.from_url(redis_url, **opts)
    return OnlineStore(repo, client, project, **kwargs)


__all__ = ["AsOfNotAligned", "OnlineRequestError", "OnlineResponse", "OnlineStore", "build_plan", "open_store"]
