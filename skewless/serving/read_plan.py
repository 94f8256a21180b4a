"""The read plan of a feature selection: what one online read sends (keys, packed commands) and how it evaluates
(laws, tile groups, batch fields, derived order), built once per selection and cached by the store.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from math import lcm
from typing import Any, Callable, Sequence

from skewless.core import laws, layout
from skewless.core.dsl import Agg, Derived, FeatureService, FeatureView, KeyType, SnapshotView
from skewless.core.expr import closure, derived_order, instant_dependent, refs
from skewless.core.repo import Repository, UnknownFeatureError
from skewless.core.routing import is_stream_served
from skewless.core.staleness import EXPIRED, INCOMPLETE, PRESENT
from skewless.core.timeutil import td_ms
from skewless.serving.errors import OnlineRequestError

HGETALL, GET, HMGET = b"HGETALL", b"GET", b"HMGET"
SNAPSHOT_FIELDS = (layout.SNAPSHOT_FIELD.encode(), layout.MANIFEST_FIELD.encode())  # what a snapshot read asks (HMGET)
K_GET, K_HASH, K_TILES, K_PAIR = 0, 1, 2, 3  # reply kinds: bytes | None; a hash as a dict; a hash as hiredis
# gives it (an entity hash); a list as it is (HMGET of a snapshot entity hash: [row | None, manifest | None])


def _pack(cmd: bytes, key: bytes) -> bytes:
    return b"*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(cmd), cmd, len(key), key)


@dataclass(frozen=True)
class AggSpec:
    """One needed aggregation of a tile group: its law, where it sits in the tile vector and the batch record."""

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
SERIALS = itertools.count()
_PLAIN = (int, str, float, bool)


def _fast_law(agg: Agg) -> tuple[Callable[[Any], Any], Callable[[Any, Any], Any]]:
    """Decode/merge equal to the law's, skipping its generic type checks for the common plain-JSON cases."""
    law = laws.LAWS[agg]
    slow_decode, slow_merge = law.decode, law.merge
    if agg in (Agg.COUNT, Agg.SUM):
        def decode(d: Any) -> Any:
            return d if type(d) is int else slow_decode(d)

        def merge(a: Any, b: Any) -> Any:
            if type(a) is int and type(b) is int:
                c = a + b
                if _I64_MIN <= c <= _I64_MAX:
                    return c
            return slow_merge(a, b)
        return decode, merge
    if agg in (Agg.MIN, Agg.MAX):
        pick_max = agg is Agg.MAX

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
    if agg is Agg.LAST:
        def decode(d: Any) -> Any:
            if d is None:
                return None
            if type(d) is list and len(d) == 4 and type(d[0]) is int and (d[3] is None or type(d[3]) in _PLAIN):
                return (d[0], d[1], d[2], d[3])
            return slow_decode(d)
        return decode, slow_merge
    return slow_decode, slow_merge


@dataclass(frozen=True)
class GroupSpec:
    """One tile hash of a feature view (one tile size) and the needed aggregations it holds."""

    tile_ms: int
    retention_ms: int
    size: bytes  # the tile size as text (b"300000"): t:{size}:{start} fields of the entity hash, the manifest's t entry
    aggs: tuple[AggSpec, ...]  # needed aggregations of this tile hash
    indexes: tuple[int, ...]
    merges: tuple[Callable[[Any, Any], Any], ...] = ()  # aggs[j].merge
    serial: int = field(default_factory=lambda: next(SERIALS), compare=False)  # names it in the store's caches


@dataclass
class ViewReadPlan:
    """What a read sends and evaluates for one view of a selection: keys and packed commands per entity, tile
    groups, batch fields, derived features in dependency order (or the snapshot fields and TTL)."""

    view: FeatureView | SnapshotView
    entity_index: int  # into ReadPlan.entities
    prefix: bytes  # view prefix + ":{"
    outputs: tuple[tuple[str, int], ...]  # (feature, column index)
    snapshot: bool
    groups: tuple[GroupSpec, ...] = ()
    batch_fields: tuple[str, ...] = ()
    derived: tuple[tuple[str, Any, tuple[str, ...]], ...] = ()  # (name, expr, inputs) in dependency order
    meta_key: bytes = b""
    step_ms: int = 1  # as_of must be a multiple (lcm of stored tile sizes)
    stream: bool = False  # the source has a topic (progress, staleness)
    snapshot_fields: tuple[tuple[int, str], ...] = ()  # (position in stored values, name)
    ttl_ms: int = 0
    sla_ms: int = 0  # freshness SLA (stream views)
    batch_aggs: dict = field(default_factory=dict)  # batch field -> needed AggSpecs reading it
    serial: int = field(default_factory=lambda: next(SERIALS))  # names it in the store's caches
    # derived features split by whether their value depends on the read instant (DaysSince somewhere below):
    dynamic_derived: tuple[tuple[str, Any, tuple[str, ...]], ...] = ()  # evaluated on every read
    out_dynamic: tuple[tuple[int, str], ...] = ()  # (position in outputs, name) of instant-dependent outputs
    # the window starts at T of the last read and the instants they hold for: (T_lo, T_hi, now_lo, now_hi, as_of,
    # starts per group, their part of the memo context); one tuple, replaced whole (threads read it consistently)
    window: tuple | None = None
    compiled: Any = None  # the view's compiled evaluation (skewless.serving.compiled), made on its first read
    key_suffixes: tuple[tuple[bytes, bytes], ...] = ()  # (command, key suffix after the tag) per key of an entity
    kinds: tuple[int, ...] = ()  # reply kind (K_*) per key of an entity
    pieces: tuple[tuple[bytes, int], ...] = ()  # (packed command template, key length without the tag) per key
    snap_outputs: tuple[tuple, ...] = ()  # snapshot views: (nulls, incomplete, present, expired) per output field
    group_of: dict = field(default_factory=dict)  # tile size text (b"300000") -> index into groups
    batch_names: frozenset = frozenset()  # the batch record's fields (b"cutoff", b"run", b"epoch", b"w:...")

    def __post_init__(self) -> None:
        # one key per entity: its hash of this view version (layout.entity_key)
        if self.snapshot:
            self.key_suffixes, self.kinds = ((HMGET, b"}"),), (K_PAIR,)
        else:
            self.key_suffixes, self.kinds = ((HGETALL, b"}"),), (K_TILES,)
            self.group_of = {g.size: i for i, g in enumerate(self.groups)}
            if self.batch_fields:
                self.batch_names = frozenset([b"cutoff", b"run", b"epoch", *(f.encode() for f in self.batch_fields)])
        esc = self.prefix.replace(b"%", b"%%")
        if self.snapshot:
            k = len(self.snapshot_fields)
            self.snap_outputs = ((None,) * k, (INCOMPLETE,) * k, (PRESENT,) * k, (EXPIRED,) * k)
            tail = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in SNAPSHOT_FIELDS)
            self.pieces = ((b"*%d\r\n$5\r\nHMGET\r\n$%%d\r\n%s%%s}\r\n%s" % (2 + len(SNAPSHOT_FIELDS), esc, tail),
                            len(self.prefix) + 1),)
        else:
            self.pieces = tuple((b"*2\r\n$%d\r\n%s\r\n$%%d\r\n%s%%s%s\r\n" % (len(cmd), cmd, esc, suffix.replace(b"%", b"%%")),
                                 len(self.prefix) + len(suffix)) for cmd, suffix in self.key_suffixes)
        dynamic: set[str] = set()
        for name, expr, _ in self.derived:  # dependency order: inputs are classified before their users
            if instant_dependent(expr, dynamic):
                dynamic.add(name)
        self.dynamic_derived = tuple(d for d in self.derived if d[0] in dynamic)
        self.out_dynamic = tuple((i, f) for i, (f, _) in enumerate(self.outputs) if f in dynamic)

    def key_count(self) -> int:
        return 1


@dataclass(frozen=True)
class EntitySpec:
    """An entity of the selection and its typed join keys."""

    name: str
    keys: tuple[tuple[str, KeyType], ...]


@dataclass
class ReadPlan:
    """The plan of one feature selection: output columns, entities, per-view plans and the shared commands
    (epoch, progress hashes, view metas) every read sends first."""

    refs: tuple[str, ...]  # "view:feature" per column
    columns: tuple[str, ...]  # output names (feature, or view__feature when two views share a name)
    entities: tuple[EntitySpec, ...]
    join_keys: tuple[str, ...]  # every join key a request must give
    views: tuple[ViewReadPlan, ...]
    sources: tuple[tuple[str, bytes], ...]  # (source name, progress key) of streaming sources
    head_names: tuple[tuple[bytes, bytes], ...] = ()  # the shared commands: epoch, progress hashes, view metas
    head_kinds: tuple[int, ...] = ()
    head_packed: bytes = b""
    value_types: tuple[str | None, ...] = ()  # per column: its declared value type (schemas.TYPES; None: unknown)

    def __post_init__(self) -> None:
        self.head_kinds = tuple(K_GET if cmd == GET else K_HASH for cmd, _ in self.head_names)
        self.head_packed = b"".join([_pack(cmd, key) for cmd, key in self.head_names])


def _column_names(pairs: Sequence[tuple[str, str]]) -> list[str]:
    counts: dict[str, int] = {}
    for _, f in pairs:
        counts[f] = counts.get(f, 0) + 1
    return [f if counts[f] == 1 else f"{v}__{f}" for v, f in pairs]


def _plan_feature_view(project: str, view: FeatureView, wanted: list[tuple[str, int]], entity_index: int) -> ViewReadPlan:
    needed = closure((f for f, _ in wanted), {f.name: f.expr for f in view.features if isinstance(f, Derived)})
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
            specs.append(AggSpec(a.name, laws.LAWS[Agg(a.agg)], index, width, served, bfield,
                                  batch[bfield].index(a) if bfield else -1, *_fast_law(Agg(a.agg))))
        groups.append(GroupSpec(g.tile_ms, g.retention_ms, str(g.tile_ms).encode(), tuple(specs),
                                 tuple(s.index for s in specs), tuple(s.merge for s in specs)))
    derived = [(f.name, f.expr, tuple(sorted(refs(f.expr)))) for f in derived_order(view) if f.name in needed]
    step = lcm(1, *(g.tile_ms for g in layout.tile_groups(view)))
    batch_aggs: dict[str, list[AggSpec]] = {}
    for gs in groups:
        for a in gs.aggs:
            if a.batch_field is not None:
                batch_aggs.setdefault(a.batch_field, []).append(a)
    return ViewReadPlan(view=view, entity_index=entity_index, prefix=(layout.view_prefix(project, view) + ":{").encode(),
                     outputs=tuple(wanted), snapshot=False, groups=tuple(groups),
                     batch_fields=tuple(batch) if batch else (), derived=tuple(derived),
                     meta_key=layout.view_meta_key(project, view).encode(), step_ms=step,
                     stream=not view.source.is_batch_only, sla_ms=td_ms(view.freshness_sla),
                     batch_aggs={k: tuple(v) for k, v in batch_aggs.items()})


def _plan_snapshot_view(project: str, view: SnapshotView, wanted: list[tuple[str, int]], entity_index: int) -> ViewReadPlan:
    positions = {f.name: i for i, f in enumerate(view.fields)}
    return ViewReadPlan(view=view, entity_index=entity_index, prefix=(layout.view_prefix(project, view) + ":{").encode(),
                     outputs=tuple(wanted), snapshot=True,
                     snapshot_fields=tuple((positions[f], f) for f, _ in wanted), ttl_ms=td_ms(view.ttl))


def build_plan(repo: Repository, project: str, features: Any) -> ReadPlan:
    """The read plan of a feature selection (``view:feature`` refs, view names, a service or its name)."""
    if isinstance(features, (str, FeatureService)):
        refs_in: Any = features
    else:
        try:
            refs_in = list(features)
        except TypeError:
            refs_in = None
        if refs_in is None or not all(isinstance(r, str) for r in refs_in):
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
    entities: list[EntitySpec] = []
    plans = []
    for name, wanted in by_view.items():
        view = views[name]
        spec = EntitySpec(view.entity.name, tuple((k, KeyType(t)) for k, t in view.entity.join_keys))
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
    head = [(GET, layout.epoch_key(project).encode())] + [(HGETALL, pk) for _, pk in sources] \
        + [(HGETALL, p.meta_key) for p in plans if not p.snapshot]
    return ReadPlan(tuple(f"{v}:{f}" for v, f in pairs), tuple(columns), tuple(entities), tuple(join_keys), tuple(plans),
                 sources, tuple(head), value_types=tuple(repo.feature_type(v, f) for v, f in resolved))
