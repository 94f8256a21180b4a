"""The read plan of a feature selection: what one online read sends (keys, packed commands) and how it evaluates
(laws, tile groups, batch fields, derived order), built once per selection and cached by the store.
"""

from __future__ import annotations

import itertools
import operator
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
K_GET, K_HASH, K_TILES, K_PAIR = 0, 1, 2, 3  # reply kinds: bytes | None; a shared hash (progress, view meta) and an
# entity hash, each as a dict or as hiredis gives it (a flat list); a list as it is (HMGET of a snapshot entity hash:
# [row | None, manifest | None])


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
    compiled_read: tuple | None = None  # (T, window, epoch, view meta, keep, its entity evaluator) of the last read
    # that made one (evaluate.compiled_entity): a read in the same context takes that evaluator; replaced whole
    context: tuple | None = None  # (window, epoch, view meta, memo context number) of the last read (evaluate.window_context)
    out_columns: tuple[int, ...] = ()  # the column index of each output
    key_suffixes: tuple[tuple[bytes, bytes], ...] = ()  # (command, key suffix after the tag) per key of an entity
    kinds: tuple[int, ...] = ()  # reply kind (K_*) per key of an entity
    pieces: tuple[tuple[bytes, int], ...] = ()  # (packed command template, key length without the tag) per key
    snap_outputs: tuple[tuple, ...] = ()  # snapshot views: (nulls, incomplete, present, expired) per output field
    snap_pick: Callable[[Any], tuple] | None = None  # snapshot views: a row's stored values -> the read fields' (a tuple)
    group_of: dict = field(default_factory=dict)  # tile size text (b"300000") -> index into groups
    batch_names: frozenset = frozenset()  # the batch record's fields (b"cutoff", b"run", b"epoch", b"w:...")
    progress_name: str = ""  # its progress hash's name in ReadPlan.sources: the source's, or 'source:lane' (an upgrade job's)
    progress_key: bytes = b""
    choice: int = -1  # a view read in two versions: the index of its ViewChoice in ReadPlan.choices (else -1)
    label: str = ""  # how the response names the view: its name, or 'name@vN' when the references pinned the version

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
            positions = [p for p, _ in self.snapshot_fields]
            self.snap_pick = operator.itemgetter(*positions) if k > 1 else (
                (lambda stored, p=positions[0]: (stored[p],)) if k == 1 else (lambda stored: ()))
            tail = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in SNAPSHOT_FIELDS)
            self.pieces = ((b"*%d\r\n$5\r\nHMGET\r\n$%%d\r\n%s%%s}\r\n%s" % (2 + len(SNAPSHOT_FIELDS), esc, tail),
                            len(self.prefix) + 1),)
        else:
            self.pieces = tuple((b"*2\r\n$%d\r\n%s\r\n$%%d\r\n%s%%s%s\r\n" % (len(cmd), cmd, esc, suffix.replace(b"%", b"%%")),
                                 len(self.prefix) + len(suffix)) for cmd, suffix in self.key_suffixes)
        self.out_columns = tuple(j for _, j in self.outputs)
        dynamic: set[str] = set()
        for name, expr, _ in self.derived:  # dependency order: inputs are classified before their users
            if instant_dependent(expr, dynamic):
                dynamic.add(name)
        self.dynamic_derived = tuple(d for d in self.derived if d[0] in dynamic)
        self.out_dynamic = tuple((i, f) for i, (f, _) in enumerate(self.outputs) if f in dynamic)

    def key_count(self) -> int:
        return 1


@dataclass(frozen=True)
class ViewChoice:
    """A view declared in two versions (an upgrade) and read without a pinned version: both versions' hashes are read
    with the view's active-version record (``layout.active_version_key``, at ``head_index`` of the shared replies), and
    only the version it names is evaluated (no record, or one naming no declared version: the older declared one)."""

    name: str
    head_index: int
    versions: tuple[int, ...]  # declared versions, oldest first
    plans: tuple[int, ...]  # index into ReadPlan.views of each version's plan

    def active(self, record: Any) -> int:
        """The index into ``versions`` the record (bytes | None) makes active: the newest declared version not above
        the one it names, else the older declared one."""
        try:
            named = int(record)
        except (TypeError, ValueError):
            return 0
        best = 0
        for i, v in enumerate(self.versions):
            if v <= named:
                best = i
        return best


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
    one_kinds: tuple[int, ...] = ()  # the reply kinds of a read of one entity (the shared commands', then per view)
    value_types: tuple[str | None, ...] = ()  # per column: its declared value type (schemas.TYPES; None: unknown)
    choices: tuple[ViewChoice, ...] = ()  # views read in two versions (an upgrade); their records end the shared commands
    versions: dict = field(default_factory=dict)  # view (or 'view@vN') -> the version read, for views not in choices
    shared: tuple | None = None  # the shared replies of the last read that read them all, and what the read took from them
    # (epoch, its text, views unreadable, view metas, progress per source, newest event, newest applied): a read whose
    # shared replies are equal reuses it (OnlineStore._evaluate)
    one_names: tuple[tuple[str, ...], ...] | None = None  # per view its outputs' column names when the views' outputs
    # are the columns in order (a one-entity response's dicts are then filled view by view); None: they are not

    def __post_init__(self) -> None:
        self.head_kinds = tuple(K_GET if cmd == GET else K_HASH for cmd, _ in self.head_names)
        self.head_packed = b"".join([_pack(cmd, key) for cmd, key in self.head_names])
        self.one_kinds = self.head_kinds + tuple(kind for vp in self.views for kind in vp.kinds)
        in_order = tuple(j for vp in self.views for j in vp.out_columns) == tuple(range(len(self.columns)))
        self.one_names = tuple(tuple(self.columns[j] for j in vp.out_columns) for vp in self.views) if in_order else None


def active_versions(plan: ReadPlan, replies: Sequence[Any]) -> tuple[frozenset[int], dict[str, int]]:
    """From a read's shared replies (its active-version records at each choice's ``head_index``): the serials of the
    version plans not to evaluate, and the version read per view."""
    inactive: set[int] = set()
    versions = dict(plan.versions)
    for c in plan.choices:
        record = replies[c.head_index]
        chosen = c.active(record if type(record) is bytes else None)  # an error reply: as no record
        versions[c.name] = c.versions[chosen]
        inactive.update(plan.views[i].serial for j, i in enumerate(c.plans) if j != chosen)
    return frozenset(inactive), versions


def _column_names(pairs: Sequence[tuple[str, str]]) -> list[str]:
    counts: dict[str, int] = {}
    for _, f in pairs:
        counts[f] = counts.get(f, 0) + 1
    return [f if counts[f] == 1 else f"{v}__{f}" for v, f in pairs]


def _plan_feature_view(project: str, view: FeatureView, wanted: list[tuple[str, int]], entity_index: int,
                       lane: str = "") -> ViewReadPlan:
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
                     batch_aggs={k: tuple(v) for k, v in batch_aggs.items()},
                     progress_name=view.source.name + (f":{lane}" if lane else ""),
                     progress_key=layout.progress_key(project, view.source.name, lane).encode())


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
        resolved = repo.resolve_versions(refs_in)
    except UnknownFeatureError as exc:
        raise OnlineRequestError(str(exc)) from None
    # a view is named by its name, or 'name@vN' where a reference pinned the version
    pairs = [(f"{v.name}@v{v.version}" if pinned else v.name, f) for v, f, pinned in resolved]
    columns = _column_names(pairs)
    by_view: dict[str, list[tuple[str, int]]] = {}
    views: dict[str, Any] = {}
    for i, ((name, f), (v, _, _)) in enumerate(zip(pairs, resolved)):
        views[name] = v
        by_view.setdefault(name, []).append((f, i))
    entities: list[EntitySpec] = []
    plans: list[ViewReadPlan] = []
    upgrading: list[tuple[str, list[int]]] = []
    for name, wanted in by_view.items():
        view = views[name]
        spec = EntitySpec(view.entity.name, tuple((k, KeyType(t)) for k, t in view.entity.join_keys))
        if spec not in entities:
            entities.append(spec)
        idx = entities.index(spec)
        # unpinned, a view declared in two versions is planned in both (the read evaluates the active one)
        versions = repo.versions(name) if name == view.name and repo.is_upgrading(name) else (view,)
        if len(versions) > 1:
            upgrading.append((name, []))
        for version in versions:
            if len(versions) > 1:
                upgrading[-1][1].append(len(plans))
            if isinstance(version, FeatureView):
                plans.append(_plan_feature_view(project, version, wanted, idx, repo.progress_lane(version)))
            else:
                plans.append(_plan_snapshot_view(project, version, wanted, idx))
            plans[-1].label = name
    join_keys: list[str] = []
    for e in entities:
        for k, _ in e.keys:
            if k not in join_keys:
                join_keys.append(k)
    sources = tuple(sorted({(p.progress_name, p.progress_key) for p in plans if p.stream}))
    head = [(GET, layout.epoch_key(project).encode())] + [(HGETALL, pk) for _, pk in sources] \
        + [(HGETALL, p.meta_key) for p in plans if not p.snapshot]
    choices = []
    for name, indexes in upgrading:
        choices.append(ViewChoice(name, len(head), tuple(plans[i].view.version for i in indexes), tuple(indexes)))
        head.append((GET, layout.active_version_key(project, name).encode()))
        for i in indexes:
            plans[i].choice = len(choices) - 1
    fixed = {name: views[name].version for name in by_view if not any(c.name == name for c in choices)}
    return ReadPlan(tuple(f"{v}:{f}" for v, f in pairs), tuple(columns), tuple(entities), tuple(join_keys), tuple(plans),
                 sources, tuple(head), value_types=tuple(repo.feature_type(v, f) for v, f, _ in resolved),
                 choices=tuple(choices), versions=fixed)
