"""Evaluation of an online read's replies: per feature view and entity the values, statuses and ages
(docs/semantics.md §10-§11; the tests hold it equal to the reference reader, ``tests/support/reference_reader.py``),
with the store's bounded caches (:class:`ReadCaches`: entity memo, decoded tiles / batch parts / snapshot rows).
"""

from __future__ import annotations

import json
import logging
import time
from decimal import Decimal
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from skewless.core import laws, layout
from skewless.core.dsl import DaysSince, Ref
from skewless.core.expr import evaluate
from skewless.core.routing import BATCH_TAIL_DAYS, BATCH_TILE_MS, SNAPSHOT_EXPIRED_MEMORY_MS
from skewless.core.staleness import INCOMPLETE, PRESENT, STALE
from skewless.core.timeutil import MS_PER_DAY, floor_ms
from skewless.serving.compiled import compile_view
from skewless.serving.read_plan import SERIALS, GroupSpec, ViewReadPlan
from skewless.serving.reply_stream import ReplyStream

try:
    import orjson

    def loads(data: bytes) -> Any:
        """JSON text -> value (orjson when it can: several times faster; json for what it refuses)."""
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return json.loads(data)

    _strict_loads = orjson.loads  # the compiled read's: JSON orjson refuses is left to the generic evaluation
except ImportError:  # pragma: no cover - orjson is a dependency
    loads = _strict_loads = json.loads

_MISSING = object()
_NOT_COMPILED = object()  # a view plan the compiled evaluation does not serve (also: not made yet for this read)
_I64_LOW = -(1 << 63)
_MEMO_PROBE, _MEMO_MIN_HITS, _MEMO_PAUSE = 4096, 410, 65536  # memo skipped below ~10% hits (see ReadCaches.memo_stats)
_MEMO_MAX = 1 << 14  # entity reads (of any view plan) whose aggregations a store keeps; then the memo restarts
CACHE_MAX = 1 << 16  # decoded tile vectors / batch parts / snapshot rows a store keeps; then the cache restarts
DEFAULT_CACHE_BYTES = 128 << 20  # all of a store's value caches together (SKEWLESS_SERVE_CACHE_BYTES)
ENTRY_OVERHEAD = 256  # bytes a cache entry costs beyond its payload (dict slot, list/tuple headers, small objects)
_FROZEN = frozenset((int, str, float, bool, type(None), Decimal))
_PLAIN_VALUES = frozenset((int, str, float, bool, type(None)))  # laws.decode_value gives these unchanged
CORRUPT_LOG_EVERY_S = 60.0  # a corrupt key is logged at most once in this many seconds (per process)
log = logging.getLogger("skewless.serving")
_corrupt_logged: dict[bytes, float] = {}  # key -> when it was last logged (bounded: emptied past 10,000 keys)


def warn_corrupt(key: bytes, why: str, served: str = "the entity's features of this view") -> None:
    """Log that ``key`` holds a value the reader cannot use (``served`` incomplete), at most once a minute per key."""
    now = time.monotonic()
    last = _corrupt_logged.get(key)
    if last is not None and now - last < CORRUPT_LOG_EVERY_S:
        return
    if len(_corrupt_logged) >= 10_000:
        _corrupt_logged.clear()
    _corrupt_logged[key] = now
    log.warning("corrupt stored value in %s (%s): %s served as incomplete", key.decode("utf-8", "replace")[:300],
                why[:300], served)


def _bad_reply(vp: ViewReadPlan, raws: Sequence[Any]) -> int | None:
    """The position of the first of an entity's replies (one per ``vp.key_suffixes``) that cannot be read: an error
    reply, a tile value that is not ``ts|epoch|JSON``, a batch record without a numeric cut-off or with a part that
    is not JSON, a manifest that is not JSON; None when each alone reads (then the combination failed)."""
    for j, r in enumerate(raws):
        if isinstance(r, Exception):
            return j
        try:
            if vp.snapshot:
                row = r[0] if r else None
                data = loads(row) if row is not None else {"ts": 0}
                int(data["ts"])
                continue
            for fld, value in as_dict(r).items():
                if fld.startswith(b"t:"):
                    int(fld.split(b":")[2])
                    loads(value.split(b"|", 2)[2])
                elif fld == b"b:cutoff":
                    int(value)
                elif fld.startswith(b"b:w:") or fld == b"m":
                    loads(value)
        except Exception:  # noqa: BLE001 - this reply is the one that does not read
            return j
    return None


def corrupt_entity(vp: ViewReadPlan, tag: bytes, raws: Sequence[Any], exc: BaseException) -> tuple:
    """The prepared result (see :func:`prepare`) of an entity whose stored values cannot be read: every output of the
    view ``incomplete`` (None), with a warning naming the key (see :func:`warn_corrupt`)."""
    j = _bad_reply(vp, raws)
    suffixes = vp.key_suffixes if j is None else vp.key_suffixes[j:j + 1]
    keys = b", ".join(vp.prefix + tag + suffix for _, suffix in suffixes)
    bad = raws[j] if j is not None else None
    why = f"{type(bad).__name__}: {bad}" if isinstance(bad, Exception) else f"{type(exc).__name__}: {exc}"
    warn_corrupt(keys, why)
    nout = len(vp.outputs)
    return (None,) * nout, (INCOMPLETE,) * nout, None, None, {}, ()


@dataclass
class ReadCaches:
    """The bounded caches one store shares between its reads (keys start with a plan's group/view serial)."""

    memo: dict[int, dict[bytes, list]] = field(default_factory=dict)  # view serial -> entity tag -> [call context,
    # raw replies, cut-off, its day part, the entity's prepared aggregations, their stale statuses, the outputs at T
    # for a range of T (_days_span), the replies' raw bytes]: a hit compares the replies as they are (no key bytes)
    packed: dict[int, dict[bytes, bytes]] = field(default_factory=dict)  # view serial -> entity tag -> its commands
    snap_raw: dict[int, dict[bytes, tuple]] = field(default_factory=dict)  # snapshot view serial -> tag -> (raw, value)
    kept: list[int] = field(default_factory=lambda: [0, 0])  # entries added to memo, to snap_raw since last emptied
    decoded: dict[Any, Any] = field(default_factory=dict)  # (serial, raw bytes) -> decoded tile vector / parts / row
    # [lookups, hits, entity reads left without the memo]: a memo that rarely hits costs its keys, so below
    # _MEMO_MIN_HITS of _MEMO_PROBE lookups it is skipped for _MEMO_PAUSE entity reads (then probed again)
    memo_stats: list[int] = field(default_factory=lambda: [0, 0, 0])
    contexts: dict[tuple, int] = field(default_factory=dict)  # call context of the entity memo -> a number never
    # used for another
    progress: dict[Any, tuple] = field(default_factory=dict)  # (raw progress fields, epoch) -> what they say
    max_bytes: int = DEFAULT_CACHE_BYTES  # memo + packed + snap_raw + decoded, estimated from their payloads
    used_bytes: int = 0
    entity_bytes: int = 0  # the part of used_bytes charged by memo and decoded entries (see forget_entities)

    def charge(self, nbytes: int, entity: bool = False) -> None:
        """Count an entry just added to memo or decoded (``entity``), packed or snap_raw; past ``max_bytes`` all of
        them restart (the per-view dicts emptied in place, so a read holding one keeps counting into the new budget)."""
        self.used_bytes += nbytes
        if entity:
            self.entity_bytes += nbytes
        if self.used_bytes > self.max_bytes:
            self.entity_bytes = 0
            for outer in (self.memo, self.packed, self.snap_raw):
                for inner in outer.values():
                    inner.clear()
                outer.clear()
            self.decoded.clear()
            self.kept[0] = self.kept[1] = 0
            self.used_bytes = 0

    def forget_entities(self) -> None:
        """Empty the entity memo and the decode cache (every entity evaluated from its bytes on the next read)."""
        self.memo.clear()
        self.decoded.clear()
        self.kept[0] = 0
        self.used_bytes -= self.entity_bytes
        self.entity_bytes = 0


def window_starts(vp: ViewReadPlan, T: int, now: int, as_of_ms: int | None, epoch: bytes | None,
            meta: tuple[Any, ...]) -> tuple[list[list[int | None]], tuple]:
    """``(starts, memo context)`` of a feature view's read: per group, each needed aggregation's window start at T
    (None for batch-served ones), and the call context of the entity memo. The starts are a function of T and
    ``as_of`` and the tile floors of ``now``; they are kept with the range of instants they hold for."""
    w = _window(vp, T, now, as_of_ms)
    return w[5], (vp.serial, epoch, meta, as_of_ms) + w[6]


def window_context(vp: ViewReadPlan, T: int, now: int, as_of_ms: int | None, epoch: bytes | None,
                   meta: tuple[Any, ...], contexts: dict[tuple, int]) -> tuple[list[list[int | None]], int]:
    """``(starts, context number)``: :func:`window_starts` with its memo context named by a number (``contexts``: context
    -> number, never reused for another). A read with the same window, epoch and view meta objects as the view's last
    read (the shared replies reused, see ``ReadPlan.shared``) takes that read's number without building the context."""
    w = _window(vp, T, now, as_of_ms)
    last = vp.context
    if last is not None and last[0] is w and last[1] is epoch and last[2] is meta:
        return w[5], last[3]
    ctx = (vp.serial, epoch, meta, as_of_ms) + w[6]
    ctx_id = contexts.get(ctx)
    if ctx_id is None:
        if len(contexts) >= 4096:
            contexts.clear()
        ctx_id = contexts[ctx] = next(SERIALS)  # never reused: an old number names no other context
    vp.context = (w, epoch, meta, ctx_id)  # replaced whole (threads read it consistently)
    return w[5], ctx_id


def _window(vp: ViewReadPlan, T: int, now: int, as_of_ms: int | None) -> tuple:
    """The view's window starts at T and the instants they hold for (``ViewReadPlan.window``), made anew when T, now
    or ``as_of`` left them."""
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
    return w


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


def view_cache(caches: dict[int, dict], added: list[int], which: int, serial: int) -> dict:
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


def _decode_tile(g: GroupSpec, body: bytes, caches: ReadCaches) -> tuple | None:
    """The decoded intermediates of ``g.aggs`` in a tile body, cached; None if any of them fails to decode."""
    try:
        vec = loads(body)
        dec = tuple([a.decode(vec[a.index]) for a in g.aggs])
    except Exception:  # noqa: BLE001 - the caller decodes lazily and raises where the reference does
        return None
    if _frozen(dec):
        cache = caches.decoded
        if len(cache) >= CACHE_MAX:
            cache.clear()
        cache[(g.serial, body)] = dec
        caches.charge(2 * len(body) + ENTRY_OVERHEAD, True)
    return dec


def replies_size(raws: Sequence[Any]) -> int:
    """Bytes an entity's parsed replies hold (bytes, hashes as dicts or flat lists, None), for the cache budget."""
    n = 0
    for r in raws:
        t = type(r)
        if t is bytes:
            n += len(r)
        elif t is dict:
            n += sum(map(len, r)) + sum(map(len, r.values())) + 64 * len(r)
        elif t is list or t is tuple:
            try:
                n += sum(map(len, r)) + 32 * len(r)  # a hash as a flat list of bytes: in C
            except TypeError:  # None in it (HMGET), or another reply inside
                n += sum([len(x) for x in r if type(x) is bytes]) + 32 * len(r)
    return n


def as_dict(r: Any) -> dict:
    """A hash reply as a dict (RESP2 gives a flat list of fields and values, RESP3 a dict, a missing key nothing)."""
    if isinstance(r, dict):
        return r
    if not r:
        return {}
    it = iter(r)
    return dict(zip(it, it))


def view_meta(raw: Mapping[bytes, bytes] | None) -> tuple[int | None, bytes | None, int | None, bytes | None]:
    """``(applied_from_ms, epoch, batch_cutoff_ms, batch_epoch)`` of a view meta hash."""
    raw = raw or {}
    af = raw.get(b"applied_from_ms")
    bc = raw.get(layout.META_BATCH_CUTOFF.encode())
    return (None if af is None else int(af)), raw.get(b"epoch"), (None if bc is None else int(bc)), raw.get(b"batch_epoch")


def snapshots(vp: ViewReadPlan, raws: Sequence[Any], epoch: str | None, T: int,
              caches: ReadCaches, tag_of: Any = None) -> list[tuple[Sequence[Any], Sequence[str], int | None]]:
    """The entities of a snapshot view: per entity hash read (``[row | None, manifest | None]``) ``(values, statuses,
    age)`` in the order of ``vp.snapshot_fields``; the store's decode cache (``caches.decoded``) holds the decoded rows.
    No row and no manifest: no state (read as never seen); one without the other: a part was lost, ``incomplete``. A
    row that does not read is ``incomplete`` with a warning naming its key (``tag_of(i)``: entity i's tag)."""
    cache = caches.decoded
    nones, incomplete_sts, present, expired = vp.snap_outputs
    absent = (nones, present if epoch is not None else incomplete_sts, None)  # no row (or forgotten); without
    incomplete = (nones, incomplete_sts, None)  # the epoch marker Redis may have lost it
    live_from = T - vp.ttl_ms  # rows from here are within the TTL; from remembered_from: expired
    remembered_from = live_from - SNAPSHOT_EXPIRED_MEMORY_MS
    # cache: (view serial, raw row) -> [ts, created_at, epoch, data, decoded values]
    serial = vp.serial
    out = []
    append = out.append
    for i, pair in enumerate(raws):
        if type(pair) is not list or len(pair) != 2:
            corrupt_entity(vp, b"?" if tag_of is None else tag_of(i), [pair], ValueError(f"not a snapshot hash: {pair!r}"))
            append(incomplete)
            continue
        raw, manifest = pair
        if raw is None or manifest is None:
            append(absent if raw is None and manifest is None else incomplete)
            continue
        try:
            row = cache.get((serial, raw))
            if row is None:
                data = loads(raw)
                row = [data["ts"], data.get("created_at"), data.get("epoch"), data, None]
                if len(cache) >= CACHE_MAX:
                    cache.clear()
                cache[(serial, raw)] = row
                caches.charge(3 * len(raw) + ENTRY_OVERHEAD, True)
            ts, created = row[0], row[1]
            if epoch is None or row[2] != epoch or ts > T or (created is not None and created > T):
                append(incomplete)
            elif ts >= live_from:
                decoded = row[4]
                if decoded is None:
                    decoded = vp.snap_pick(row[3]["values"])  # type: ignore[misc]
                    if _PLAIN_VALUES.issuperset(map(type, decoded)):  # plain values: themselves, immutable
                        row[4] = decoded
                    else:
                        decoded = tuple([x if type(x) in _PLAIN_VALUES else laws.decode_value(x) for x in decoded])
                        if _frozen(decoded):
                            row[4] = decoded
                append((decoded, present, T - ts))
            else:
                append((nones, expired if ts >= remembered_from else present, T - ts))
        except Exception as exc:  # noqa: BLE001 - a corrupt row: this entity incomplete, the others served
            if isinstance(raw, bytes):
                cache.pop((serial, raw), None)
            corrupt_entity(vp, b"?" if tag_of is None else tag_of(i), [pair], exc)
            append(incomplete)
    return out


def windowed(caches: ReadCaches, vp: ViewReadPlan, chunk: Sequence[Any], n: int, k: int, epoch: bytes | None,
             meta: tuple[Any, ...], now: int, as_of_ms: int | None, stale: bool, age: int | None,
             runs: dict[str, int], stream_starts: Sequence[list[int | None]], ctx: int,
             tags: Sequence[bytes], use_memo: bool = True, stream: ReplyStream | None = None,
             found: list[bool] | None = None) -> list[tuple[Sequence[Any], Sequence[str], int | None]]:
    """The ``n`` entities of one feature view (``k`` replies each in ``chunk``): the reference reader's
    ``evaluate_read`` + its rules; per entity ``(values, statuses, age)`` in the order of ``vp.outputs``. The store's
    ``caches`` are used: its entity memo (``memo``, ``kept``, ``memo_stats``) and decode cache (``decoded``).

    An entity's aggregation values and statuses are a function of its raw replies and of the call context
    ``ctx`` (a number naming: epoch, view meta, as_of, the window starts at T and the current tile of each
    group) plus, for a batch part, whether its cut-off is after T and how many days late it is; they are
    memoised on that key (bounded) together with the derived features that do not depend on T. Staleness,
    the derived features that depend on T (``DaysSince``) and the age are applied after, on every read.

    From a ``stream`` (``chunk`` None) an entity's replies are parsed, or passed over when their raw bytes are the
    ones its memo entry kept (then they are that entry's replies, compared by identity).

    ``found`` gets, per entity, whether any of its keys of this view exists (a missing hash replies empty)."""
    T = now if as_of_ms is None else as_of_ms
    memo = view_cache(caches.memo, caches.kept, 0, vp.serial) if use_memo else {}
    mstats = caches.memo_stats
    has_batch = bool(vp.batch_fields)
    run_cutoff, run_epoch_ok = meta[2], meta[3] == epoch
    dyn = dynamic if vp.dynamic_derived else None
    batch_age = not vp.stream and age is None
    rows = []
    append = rows.append
    serial = vp.serial
    entries: list[Any] = list(map(memo.get, tags)) if use_memo else [None] * n
    spans: Sequence[bytes | None]
    if stream is not None:  # replies passed over (None: the entry's) or parsed, and their raw bytes
        parsed, spans = stream.take([None if e is None else e[7] for e in entries], k, use_memo)
        raws_list = [e[1] if p is None else p for e, p in zip(entries, parsed)]
    elif n == 1:
        raws_list = [(chunk[0],) if k == 1 else chunk[:k]]  # type: ignore[index]
        spans = ()
    else:
        raws_list = [(chunk[i],) if k == 1 else chunk[i * k:(i + 1) * k] for i in range(n)]  # type: ignore[index]
        spans = ()  # no raw bytes
    if found is not None:
        found += map(any, raws_list)
    parts: dict[int, tuple] = {}  # batch cut-off -> (after T?, days late at T)
    hits = 0
    i = -1
    fast: Any = _NOT_COMPILED  # the compiled evaluation of this read, made on the first entity the memo misses
    for entry, raws in zip(entries, raws_list):
        i += 1
        hit = at_t = None
        if entry is not None and entry[0] == ctx and entry[1] == raws:  # the replies compared as they are
            cutoff = entry[2]
            if cutoff is None or entry[3] == (parts.get(cutoff) or _cutoff_part(parts, cutoff, T)):
                hit = entry[4]
                hits += 1
                if entry[7] is None and spans:  # an entry made without the stream: its raw bytes kept from now on
                    entry[7] = spans[i]
        if hit is None:
            key = tags[i] if use_memo else None
            if fast is _NOT_COMPILED:
                fast = compiled_entity(vp, T, now, epoch, meta, as_of_ms, stream_starts, use_memo)
            if fast is not None:
                try:
                    hit, at_t = fast(raws[0])  # a tuple of frozen values, or None: the generic evaluation decides
                except Exception:  # noqa: BLE001 - anything unusual is the generic evaluation's (same errors)
                    hit = None
            frozen = hit is not None
            part = cutoff = None
            if key is None:
                pass
            elif frozen:  # the memo's cut-off: the record's, never older than the run's (the compiled path's rule)
                cutoff = hit[3]
                if cutoff is not None:
                    part = (cutoff > T, (T - cutoff) // BATCH_TILE_MS)
            else:
                try:
                    if has_batch:
                        braw = raws[-1]
                        if type(braw) is list:  # flat [field, value, ...]: the field at an even position
                            if braw:
                                ci = braw.index(b"b:cutoff") if b"b:cutoff" in braw else -2  # -2: no batch record
                                if ci & 1:
                                    raise ValueError("a value equals 'b:cutoff': no memo for this entity")
                                cutoff = int(braw[ci + 1]) if ci >= 0 else None
                        else:
                            cutoff = int(braw[b"b:cutoff"]) if b"b:cutoff" in braw else None
                        if run_cutoff is not None and (cutoff is None or cutoff < run_cutoff) and run_epoch_ok:
                            cutoff = run_cutoff
                    part = None if cutoff is None else (cutoff > T, (T - cutoff) // BATCH_TILE_MS)
                except Exception:  # noqa: BLE001 - malformed replies: the evaluation below raises the reference's error
                    key = None
            if hit is None:
                try:
                    agg = aggregate(vp, [as_dict(r) for r in raws], epoch, meta, now, as_of_ms, stream_starts, caches)
                    hit = prepare(vp, agg)
                    frozen = _frozen(tuple(agg[0].values())) and _frozen(hit[0])
                except Exception as exc:  # noqa: BLE001 - a corrupt stored value: this entity incomplete, the others served
                    hit, key = corrupt_entity(vp, tags[i], raws, exc), None
            entry = None
            if key is not None and frozen:
                entry = memo[key] = [ctx, raws, cutoff, part, hit, None, None, spans[i] if spans else None]
                caches.kept[0] += 1
                caches.charge(len(key) + (2 * len(spans[i]) if spans else replies_size(raws)) + 4 * ENTRY_OVERHEAD, True)
        out_vals, out_sts, run = hit[0], hit[1], hit[2]
        if run is not None:
            runs[run[0]] = run[1]
        if dyn is not None:
            span = None if entry is None else entry[6]
            if span is not None and span[0] <= T < span[1]:
                out_vals = span[2]
            else:
                out_vals = dyn(vp, hit, T) if at_t is None else at_t
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




def compiled_entity(vp: ViewReadPlan, T: int, now: int, epoch: bytes | None, meta: tuple[Any, ...], as_of_ms: int | None,
                    stream_starts: Sequence[list[int | None]], keep: bool = True) -> Any:
    """The view's compiled evaluation of one entity for this read (:mod:`skewless.serving.compiled`): None when the read
    is one it does not serve (at ``as_of``, without the epoch or the view meta's, before the stream applied); ``keep``
    False: its results are not memoised (their values and pending features None)."""
    factory = vp.compiled
    if factory is None:
        factory = vp.compiled = compile_view(vp, _strict_loads) or _NOT_COMPILED
    applied_from, meta_epoch, run_cutoff, _ = meta
    if factory is _NOT_COMPILED or as_of_ms is not None or epoch is None or meta_epoch != epoch or applied_from is None:
        return None
    # the evaluator is a function of T, the window (its starts; the tile floors of now hold within it), the epoch, the
    # view meta and keep: a read with the same ones (e.g. one-entity reads within one millisecond) takes the last one's
    w = vp.window
    last = vp.compiled_read
    if (last is not None and last[0] == T and last[1] is w and last[2] == epoch and last[3] is meta and last[4] is keep
            and w is not None and w[5] is stream_starts):
        return last[5]
    fast = factory(T, [floor_ms(now, g.tile_ms) for g in vp.groups], epoch, applied_from, run_cutoff, stream_starts, keep)
    vp.compiled_read = (T, w, epoch, meta, keep, fast)
    return fast


def prepare(vp: ViewReadPlan, agg: tuple) -> tuple:
    """``(output values, output statuses before staleness, run, batch cut-off, values, to evaluate at T)`` of an
    entity's evaluated aggregations: every derived status (a function of the input statuses, never of T) and
    the values of the derived features that do not depend on T; the instant-dependent ones not incomplete are
    listed ``(name, expr, inputs, their values if all are known now)`` for :func:`dynamic`.

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
                vals[name] = evaluate(expr, {i: vals[i] for i in inputs}, 0)  # T is not read
    return (tuple([vals.get(f) for f, _ in vp.outputs]), tuple([sts.get(f) for f, _ in vp.outputs]),
            run, batch_cutoff, vals, tuple(pending))


def dynamic(vp: ViewReadPlan, hit: tuple, T: int) -> list[Any]:
    """A prepared entity's output values with the derived features that depend on T evaluated at T."""
    out_vals, vals, pending = hit[0], hit[4], hit[5]
    if not pending:
        return out_vals
    dv: dict[str, Any] = {}
    for name, expr, inputs, known in pending:
        dv[name] = evaluate(expr, known if known is not None else {i: dv[i] if i in dv else vals[i] for i in inputs}, T)
    out_vals = list(out_vals)
    for pos, name in vp.out_dynamic:
        if name in dv:
            out_vals[pos] = dv[name]
    return out_vals


def aggregate(vp: ViewReadPlan, raws: Sequence[Any], epoch: bytes | None, meta: tuple[Any, ...],
              now: int, as_of_ms: int | None, stream_starts: Sequence[list[int | None]], caches: ReadCaches,
              ) -> tuple[dict[str, Any], dict[str, str], tuple[str, int] | None, int | None]:
    """``(values, statuses, (run id, cut-off) | None, batch cut-off | None)`` of the view's aggregations for one
    entity, exactly the reference reader's ``evaluate_read``, as tight loops.

    ``stream_starts[g]`` holds, per needed aggregation of group g, its window start at T when stream-served
    (None for batch-served ones: their start is the entity's cut-off). Decoded tile vectors and batch parts
    are cached in ``caches.decoded`` by their raw bytes (identical bytes = identical value); anything a cache cannot take (an
    error, a mutable value) goes through the reference order of decoding, so errors are raised exactly
    where they were."""
    applied_from, meta_epoch, run_cutoff, run_epoch = meta
    T = now if as_of_ms is None else as_of_ms
    epoch_ok = epoch is not None and meta_epoch == epoch
    vals: dict[str, Any] = {}
    sts: dict[str, str] = {}
    groups = vp.groups
    group_of = vp.group_of
    tiles_per_group: list[dict[int, bytes]] = [{} for _ in groups]
    record: dict[bytes, bytes] = {}
    listed = None  # the manifest (raw)
    entity = raws[0]
    for fld, value in entity.items():  # the entity hash: t:{H}:{start}, b:{name}, m
        head = fld[:2]
        if head == b"t:":
            size, _, start = fld[2:].partition(b":")
            _, tile_epoch, body = value.split(b"|", 2)
            if tile_epoch != epoch:
                epoch_ok = False
            tiles_per_group[group_of[size]][int(start)] = body
        elif head == b"b:":
            record[fld[2:]] = value
        elif fld == b"m":
            listed = value
        else:
            raise ValueError(f"unexpected field {fld!r} in an entity hash")
    # the manifest: a part it lists that is not in the hash (or the reverse) was lost -> incomplete where it feeds
    lost_groups: list[bool] = [False] * len(groups)
    lost_upto: list[int] = [-1] * len(groups)
    batch_lost = False
    record_cutoff = int(record[b"cutoff"]) if b"cutoff" in record else None  # a corrupt one raises (corrupt_entity)
    if entity:
        manifest = loads(listed) if listed is not None else {}
        counts = manifest.get("t") or {}
        for gi, g in enumerate(groups):
            entry = counts.get(g.size.decode())
            if entry is None:
                lost_groups[gi] = len(tiles_per_group[gi]) > 0
            else:
                lost_groups[gi] = len(tiles_per_group[gi]) != entry[0]
                lost_upto[gi] = entry[2]
        if vp.batch_fields:
            in_run = manifest.get("b")
            if in_run is None:
                batch_lost = bool(record)
            else:
                batch_lost = (len(record) != len(vp.batch_names) or not vp.batch_names.issuperset(record)
                              or record_cutoff != int(in_run[0]))
    batch = None
    cutoff = None
    empty_batch = False  # the newest run did not list the entity: identity parts (layout.empty_batch_record)
    if vp.batch_fields:
        if record and not batch_lost:
            batch, cutoff = record, record_cutoff
        if run_cutoff is not None and (cutoff is None or cutoff < run_cutoff) and run_epoch == epoch and not batch_lost:
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
        for g, tiles, call_starts, g_lost, g_lost_upto in zip(groups, tiles_per_group, stream_starts, lost_groups, lost_upto):
            aggs = g.aggs
            if not aggs:
                continue
            if g_lost:  # tiles of this size lost: every aggregation they feed
                for a in aggs:
                    vals[a.name], sts[a.name] = None, INCOMPLETE
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
                cache = caches.decoded
                serial = g.serial
                na = len(aggs)
                for s, body in tiles.items():  # each tile's vector decoded once, merged into every aggregation
                    if s < lo or (as_of_ms is not None and s >= as_of_ms):
                        continue
                    dec = cache.get((serial, body))
                    if dec is None:
                        dec = _decode_tile(g, body, caches)
                    if dec is not None:
                        for j in range(na):
                            st = starts[j]
                            if st is not None and s >= st:
                                accs[j] = merges[j](accs[j], dec[j])
                    else:  # the reference order: decode only what is merged (same errors)
                        vec = loads(body)
                        for j, a in enumerate(aggs):
                            st = starts[j]
                            if st is not None and s >= st:
                                accs[j] = a.merge(accs[j], a.decode(vec[a.index]))
            for j, a in enumerate(aggs):
                lw, st, stream_acc = a.law, starts[j], accs[j]
                if st is None or st <= g_lost_upto or (batch_lost and not a.stream_served):
                    vals[a.name], sts[a.name] = None, INCOMPLETE
                    continue
                ok = applied_from is not None and applied_from <= st and st >= oldest_kept
                if a.stream_served:
                    vals[a.name], sts[a.name] = ((lw.finalize(stream_acc), PRESENT) if ok and lw.in_range(stream_acc)
                                                 else (None, INCOMPLETE))
                    continue
                days_late = (T - cutoff) // BATCH_TILE_MS  # type: ignore[operator]
                parts = None  # the batch field's parts (body, tail0, tail1), decoded as used (the reference order)
                if not empty_batch:
                    parts = parsed_batch.get(a.batch_field, _MISSING)  # type: ignore[arg-type]
                    if parts is _MISSING:
                        parts = parsed_batch[a.batch_field] = loads(batch[a.batch_field.encode()])  # type: ignore[index,union-attr]
                bi = a.batch_index
                body = lw.init() if parts is None else a.decode(parts[0][bi])
                if a.width_ms is None:
                    acc = a.merge(body, stream_acc) if ok else None
                    if not ok or not lw.in_range(acc):  # a sum outside int64 has no value (§4)
                        vals[a.name], sts[a.name] = None, INCOMPLETE
                    else:
                        vals[a.name] = lw.finalize(acc)
                        sts[a.name] = STALE if days_late > BATCH_TAIL_DAYS else PRESENT
                    continue
                if days_late > BATCH_TAIL_DAYS or not ok:
                    vals[a.name], sts[a.name] = None, INCOMPLETE
                    continue
                acc = body
                if parts is not None:
                    for t in range(days_late, BATCH_TAIL_DAYS):
                        acc = a.merge(acc, a.decode(parts[1 + t][bi]))
                acc = a.merge(acc, stream_acc)
                vals[a.name], sts[a.name] = (lw.finalize(acc), PRESENT) if lw.in_range(acc) else (None, INCOMPLETE)
    return vals, sts, run, (cutoff if batch is not None else None)
