"""The online key layout: the one module every Redis writer and reader uses (docs/semantics.md,
"Online store layout").

Keys (``L`` = :data:`LAYOUT_VERSION`; the entity sits in a Redis Cluster hash tag, so all keys of one
entity share a slot; each view has its own keys, so views expire separately)::

    {project}:vL:epoch                                   string  random id of this store's life
    {project}:vL:progress:{source}                       hash    p:{partition} -> {offset, max_event_ms, written_ms, epoch}
    {project}:vL:{view}:v{n}:meta                        hash    applied_from_ms, epoch (stream start of this view version),
                                                                 batch_cutoff_ms, batch_epoch (newest materialized run),
                                                                 batch_writer, batch_writer_until (materialization lease)
    {project}:vL:{view}:v{n}:{<entity>}:t:{H}            hash    {tile start ms} -> "version|epoch|[acc, ...]"
    {project}:vL:{view}:v{n}:{<entity>}:b                hash    cutoff, run, epoch, w:{width ms|life} -> [body, tail0, tail1]
    {project}:vL:{view}:v{n}:{<entity>}:s                string  {"ts", "created_at", "values", "epoch"}

A tile hash holds, per tile start, the vector of partial aggregates of the view's aggregations stored
with tile size H (stream-served windows with tile H; with H = 1 day also the stream part of batch-served
windows), in view declaration order, prefixed by a tile version (compare-and-set) and the epoch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from skewless.core import laws
from skewless.core.dsl import Agg, Aggregation, Entity, FeatureView, KeyType, SnapshotView
from skewless.core.routing import (
    BATCH_TAIL_DAYS,
    BATCH_TILE_MS,
    SNAPSHOT_EXPIRED_MEMORY_MS,
    STREAM_DAILY_TILE_RETENTION_MS,
    is_stream_served,
)
from skewless.core.timeutil import MS_PER_HOUR, default_tile_ms, floor_ms, td_ms

LAYOUT_VERSION = 1
TILE_RETENTION_SLACK_MS = MS_PER_HOUR  # beyond W + H (+ the source's clock-skew tolerance)
LIFETIME_FIELD = "w:life"
_FORBIDDEN_IN_NAMES = set(":{}%, \t\r\n")
_ESCAPES = {"%": "%25", ":": "%3A", "{": "%7B", "}": "%7D", ",": "%2C"}


# --- names and entity keys -------------------------------------------------------------------------------


def check_name(name: str, what: str) -> str:
    """A project, view or source name usable in keys: non-empty, without ``: { } % ,`` or whitespace."""
    if not isinstance(name, str) or not name or set(name) & _FORBIDDEN_IN_NAMES:
        raise ValueError(f"{what} name {name!r} must be non-empty without ':', '{{', '}}', '%', ',' or whitespace")
    return name


def _escape(text: str) -> str:
    return "".join(_ESCAPES.get(ch, ch) for ch in text)


def encode_entity_key(entity: Entity, key: Sequence[Any]) -> str:
    """Stable typed text of an entity key: ``s=<escaped string>`` or ``i=<int64>`` per join key, joined by
    ',' (so the string "7" and the integer 7 differ; ':', '{', '}', ',' and '%' are %-escaped)."""
    key = tuple(key)
    if len(key) != len(entity.join_keys):
        raise ValueError(f"entity {entity.name} has {len(entity.join_keys)} join keys, got {len(key)} values: {key!r}")
    parts = []
    for (name, ktype), value in zip(entity.join_keys, key):
        if KeyType(ktype) is KeyType.STRING:
            if not isinstance(value, str):
                raise TypeError(f"join key {name} is a string, got {value!r}")
            parts.append("s=" + _escape(value))
        else:
            if isinstance(value, bool) or not isinstance(value, int) or not laws.INT64_MIN <= value <= laws.INT64_MAX:
                raise TypeError(f"join key {name} is an int64, got {value!r}")
            parts.append(f"i={value}")
    return ",".join(parts)


def decode_entity_key(text: str) -> tuple[str | int, ...]:
    """Inverse of :func:`encode_entity_key`."""
    out: list[str | int] = []
    for part in text.split(","):
        kind, _, body = part.partition("=")
        if kind == "i":
            out.append(int(body))
        elif kind == "s":
            value, i = [], 0
            while i < len(body):
                if body[i] == "%":
                    value.append(chr(int(body[i + 1:i + 3], 16)))
                    i += 3
                else:
                    value.append(body[i])
                    i += 1
            out.append("".join(value))
        else:
            raise ValueError(f"not an encoded entity key: {text!r}")
    return tuple(out)


# --- keys --------------------------------------------------------------------------------------------------


def store_prefix(project: str) -> str:
    return f"{check_name(project, 'project')}:v{LAYOUT_VERSION}"


def view_prefix(project: str, view: FeatureView | SnapshotView) -> str:
    return f"{store_prefix(project)}:{check_name(view.name, 'view')}:v{int(view.version)}"


def entity_prefix(project: str, view: FeatureView | SnapshotView, entity_key: Sequence[Any]) -> str:
    return f"{view_prefix(project, view)}:{{{encode_entity_key(view.entity, entity_key)}}}"


def epoch_key(project: str) -> str:
    return f"{store_prefix(project)}:epoch"


def progress_key(project: str, source_name: str) -> str:
    return f"{store_prefix(project)}:progress:{check_name(source_name, 'source')}"


def view_meta_key(project: str, view: FeatureView | SnapshotView) -> str:
    return f"{view_prefix(project, view)}:meta"


def tile_key(project: str, view: FeatureView, entity_key: Sequence[Any], tile_ms: int) -> str:
    return f"{entity_prefix(project, view, entity_key)}:t:{int(tile_ms)}"


def batch_key(project: str, view: FeatureView, entity_key: Sequence[Any]) -> str:
    return f"{entity_prefix(project, view, entity_key)}:b"


def snapshot_key(project: str, view: SnapshotView, entity_key: Sequence[Any]) -> str:
    return f"{entity_prefix(project, view, entity_key)}:s"


# --- which aggregation lives where ---------------------------------------------------------------------------


def width_ms_of(aggregation: Aggregation) -> int | None:
    return None if aggregation.window.width is None else td_ms(aggregation.window.width)


def tile_ms_of(aggregation: Aggregation) -> int:
    """The aggregation's stream tile: its window's H when stream-served, else the daily tile."""
    width = width_ms_of(aggregation)
    if not is_stream_served(width):
        return BATCH_TILE_MS
    return td_ms(aggregation.window.tile) if aggregation.window.tile is not None else default_tile_ms(width)


@dataclass(frozen=True)
class TileGroup:
    """The aggregations stored in one tile hash (one tile size), in vector order, and its retention."""

    tile_ms: int
    aggregations: tuple[Aggregation, ...]
    retention_ms: int

    @property
    def aggs(self) -> tuple[Agg, ...]:
        return tuple(Agg(a.agg) for a in self.aggregations)


def stream_tile_retention_ms(width_ms: int | None, tile_ms: int, clock_skew_ms: int) -> int:
    """How far behind the newest tile of a hash a tile is kept: W + H + slack + clock-skew tolerance for
    stream-served windows, :data:`STREAM_DAILY_TILE_RETENTION_MS` for daily tiles after a batch cut-off."""
    if is_stream_served(width_ms):
        return width_ms + tile_ms + TILE_RETENTION_SLACK_MS + clock_skew_ms  # type: ignore[operator]
    return STREAM_DAILY_TILE_RETENTION_MS


def tile_groups(view: FeatureView) -> tuple[TileGroup, ...]:
    """The view's tile hashes, by tile size ascending."""
    skew = td_ms(view.source.clock_skew_tolerance)
    groups: dict[int, list[Aggregation]] = {}
    for f in view.features:
        if isinstance(f, Aggregation):
            groups.setdefault(tile_ms_of(f), []).append(f)
    return tuple(
        TileGroup(tile, tuple(aggs), max(stream_tile_retention_ms(width_ms_of(a), tile, skew) for a in aggs))
        for tile, aggs in sorted(groups.items())
    )


def batch_windows(view: FeatureView) -> dict[str, tuple[Aggregation, ...]]:
    """Batch-hash field -> aggregations (vector order) for the view's batch-served windows."""
    out: dict[str, list[Aggregation]] = {}
    for f in view.features:
        if isinstance(f, Aggregation) and not is_stream_served(width_ms_of(f)):
            width = width_ms_of(f)
            out.setdefault(LIFETIME_FIELD if width is None else f"w:{width}", []).append(f)
    return {k: tuple(v) for k, v in out.items()}


# --- values --------------------------------------------------------------------------------------------------


def encode_vector(accs: Sequence[Any], aggs: Sequence[Agg]) -> list:
    if len(accs) != len(aggs):
        raise ValueError(f"{len(accs)} intermediates for {len(aggs)} aggregations")
    return [laws.LAWS[Agg(a)].encode(acc) for acc, a in zip(accs, aggs)]


def decode_vector(data: Any, aggs: Sequence[Agg]) -> tuple:
    if not isinstance(data, list) or len(data) != len(aggs):
        raise ValueError(f"expected a vector of {len(aggs)} intermediates, got {data!r}")
    return tuple(laws.LAWS[Agg(a)].decode(d) for d, a in zip(data, aggs))


def encode_tile_vector(version: int, epoch: str, accs: Sequence[Any], aggs: Sequence[Agg]) -> str:
    """A tile field value: ``"<version>|<epoch>|<json vector>"``; version is a non-negative int (writers
    use the offset of the last event applied to the tile) compared by :data:`TILE_CAS_LUA`."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"tile version must be a non-negative int, got {version!r}")
    if not epoch or "|" in epoch:
        raise ValueError(f"epoch must be non-empty without '|', got {epoch!r}")
    return f"{version}|{epoch}|{laws.dumps(encode_vector(accs, aggs))}"


def decode_tile_vector(text: str | bytes, aggs: Sequence[Agg]) -> tuple[int, str, tuple]:
    """``(version, epoch, intermediates)`` of a tile field value."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    version, epoch, body = text.split("|", 2)
    return int(version), epoch, decode_vector(json.loads(body), aggs)


def encode_batch_record(view: FeatureView, cutoff_ms: int, run_id: str, epoch: str,
                        windows: Mapping[str, Sequence[Sequence[Any]]]) -> dict[str, str]:
    """Fields of a batch hash. ``windows`` maps each :func:`batch_windows` field to its parts:
    ``[body, tail0, tail1]`` (each a vector of intermediates) or ``[body]`` for lifetime."""
    if cutoff_ms % BATCH_TILE_MS:
        raise ValueError(f"cut-off {cutoff_ms} is not at 00:00 UTC")
    expected = batch_windows(view)
    if set(windows) != set(expected):
        raise ValueError(f"batch record needs windows {sorted(expected)}, got {sorted(windows)}")
    fields = {"cutoff": str(cutoff_ms), "run": run_id, "epoch": epoch}
    for name, parts in windows.items():
        aggs = [Agg(a.agg) for a in expected[name]]
        want = 1 if name == LIFETIME_FIELD else 1 + BATCH_TAIL_DAYS
        if len(parts) != want:
            raise ValueError(f"{name}: expected {want} parts (body + tail tiles), got {len(parts)}")
        fields[name] = laws.dumps([encode_vector(p, aggs) for p in parts])
    return fields


@dataclass(frozen=True)
class BatchRecord:
    cutoff_ms: int
    run_id: str
    epoch: str
    windows: Mapping[str, tuple[tuple, ...]]  # field -> (body, tail0, tail1) intermediates


def decode_batch_record(view: FeatureView, fields: Mapping[str | bytes, str | bytes]) -> BatchRecord | None:
    """The batch hash as read (HGETALL); None when it is absent."""
    if not fields:
        return None
    f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in fields.items()}
    windows = {}
    for name, aggs in batch_windows(view).items():
        parts = json.loads(f[name])
        windows[name] = tuple(decode_vector(p, [Agg(a.agg) for a in aggs]) for p in parts)
    return BatchRecord(int(f["cutoff"]), f["run"], f["epoch"], windows)


def empty_batch_record(view: FeatureView, cutoff_ms: int, epoch: str) -> BatchRecord:
    """The batch part of an entity that the run with this cut-off did not list: it had no event inside any
    batch window before the cut-off, so every part is the laws' identity (COUNT 0, SUM 0, MIN null, ...)."""
    windows = {}
    for name, aggs in batch_windows(view).items():
        parts = 1 if name == LIFETIME_FIELD else 1 + BATCH_TAIL_DAYS
        windows[name] = tuple(tuple(laws.LAWS[Agg(a.agg)].init() for a in aggs) for _ in range(parts))
    return BatchRecord(cutoff_ms, "", epoch, windows)


def batch_expire_at_ms(cutoff_ms: int) -> int:
    """PEXPIREAT of a batch hash: useless once the daily stream tiles since its cut-off are gone."""
    return cutoff_ms + STREAM_DAILY_TILE_RETENTION_MS + BATCH_TILE_MS


def encode_snapshot(view: SnapshotView, ts_ms: int, created_at_ms: int | None, values: Mapping[str, Any],
                    epoch: str) -> str:
    return laws.dumps({"ts": ts_ms, "created_at": created_at_ms, "epoch": epoch,
                       "values": [laws.encode_value(values.get(f.name)) for f in view.fields]})


def decode_snapshot(view: SnapshotView, text: str | bytes) -> tuple[int, int | None, str, dict[str, Any]]:
    """``(ts, created_at, epoch, values)`` of a snapshot key."""
    data = json.loads(text)
    values = {f.name: laws.decode_value(v) for f, v in zip(view.fields, data["values"])}
    return data["ts"], data["created_at"], data["epoch"], values


def snapshot_expire_at_ms(view: SnapshotView, ts_ms: int) -> int:
    """PEXPIREAT of a snapshot key: ts + ttl + the expired-status memory (so reads can say ``expired``)."""
    return ts_ms + td_ms(view.ttl) + SNAPSHOT_EXPIRED_MEMORY_MS + 1


# --- Lua: compare-and-set writes --------------------------------------------------------------------------------

TILE_CAS_LUA = r"""
-- Batched compare-and-set of tile fields of one entity (all KEYS share the entity's hash tag).
-- For each KEYS[k], ARGV holds: n, tile_ms, retention_ms, then n pairs (tile start ms, value), where
-- value = "<version>|<epoch>|<vector>". A field is written only if the new version >= the stored one
-- (decimal strings, compared by length then text, so versions beyond 2^53 stay exact). Then fields
-- whose start < newest start - retention are deleted and the key expires at newest + tile + retention.
-- Returns the number of fields written.
local function ver(v)
  return string.match(v, "^(%d+)|")
end
local function ge(a, b)
  if #a ~= #b then return #a > #b end
  return a >= b
end
local written = 0
local i = 1
for k = 1, #KEYS do
  local key = KEYS[k]
  local n = tonumber(ARGV[i]); local tile = tonumber(ARGV[i + 1]); local retention = tonumber(ARGV[i + 2])
  i = i + 3
  for j = 1, n do
    local field, value = ARGV[i], ARGV[i + 1]
    i = i + 2
    local old = redis.call("HGET", key, field)
    if (not old) or ge(ver(value), ver(old)) then
      redis.call("HSET", key, field, value)
      written = written + 1
    end
  end
  local fields = redis.call("HKEYS", key)
  local newest = nil
  for _, f in ipairs(fields) do
    local s = tonumber(f)
    if newest == nil or s > newest then newest = s end
  end
  if newest ~= nil then
    for _, f in ipairs(fields) do
      if tonumber(f) < newest - retention then redis.call("HDEL", key, f) end
    end
    redis.call("PEXPIREAT", key, newest + tile + retention)
  end
end
return written
"""

# The view-level record of the newest fully materialized batch run: written after every entity's batch hash
# of that run, so a reader that finds no hash (or an older one) for an entity knows the run had no events of it.
META_BATCH_CUTOFF = "batch_cutoff_ms"

BATCH_META_LUA = r"""
-- KEYS[1] = view meta hash; ARGV = cutoff_ms, epoch. Moves batch_cutoff_ms forward only. Returns 1 if moved.
local old = redis.call("HGET", KEYS[1], "batch_cutoff_ms")
if old and tonumber(old) >= tonumber(ARGV[1]) then return 0 end
redis.call("HSET", KEYS[1], "batch_cutoff_ms", ARGV[1], "batch_epoch", ARGV[2])
return 1
"""

# Materializing a batch run (batch_jobs/materialize.py, the only writer of ``…:b`` hashes):
#
# 1. ``BATCH_BEGIN_LUA`` on the view meta hash, once: the whole run is refused when the meta records a newer
#    materialized run (``batch_cutoff_ms`` > the run's cut-off), or when another materialization of the view
#    holds the writer lease (``batch_writer``/``batch_writer_until``, Redis server time); else the lease is
#    taken. The same script renews the lease before every pipelined batch (a lost lease stops the writer).
# 2. per entity the commands of :func:`batch_write_commands`: one ``HSET`` of every field (cut-off, run,
#    epoch and every window field: a view version's field set is fixed, so one HSET replaces the whole
#    record atomically and nothing of an older run remains), then ``PEXPIREAT``; pipelined.
# 3. ``BATCH_END_LUA``: if the lease is still held, ``batch_cutoff_ms`` moves forward only (the
#    :data:`BATCH_META_LUA` rule) and the lease is released.
BATCH_WRITER = "batch_writer"
BATCH_WRITER_UNTIL = "batch_writer_until"

BATCH_BEGIN_LUA = r"""
-- KEYS[1] = view meta hash; ARGV = cutoff_ms, writer token, lease_ms.
-- Returns {1, ""} when the lease is taken or renewed, {0, newer cutoff} when a newer run is recorded,
-- {-1, holder} when another writer holds an unexpired lease.
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call("HGET", KEYS[1], "batch_cutoff_ms")
if cur and tonumber(cur) > tonumber(ARGV[1]) then return {0, cur} end
local holder = redis.call("HGET", KEYS[1], "batch_writer")
local till = redis.call("HGET", KEYS[1], "batch_writer_until")
if holder and holder ~= ARGV[2] and till and tonumber(till) > now then return {-1, holder} end
redis.call("HSET", KEYS[1], "batch_writer", ARGV[2], "batch_writer_until", tostring(now + tonumber(ARGV[3])))
return {1, ""}
"""

BATCH_END_LUA = r"""
-- KEYS[1] = view meta hash; ARGV = cutoff_ms, epoch, writer token. Returns -1 if the lease was lost (nothing
-- changed), else moves batch_cutoff_ms forward only (as BATCH_META_LUA), releases the lease and returns 1 if
-- the cut-off moved, 0 if not.
if redis.call("HGET", KEYS[1], "batch_writer") ~= ARGV[3] then return -1 end
redis.call("HDEL", KEYS[1], "batch_writer", "batch_writer_until")
local old = redis.call("HGET", KEYS[1], "batch_cutoff_ms")
if old and tonumber(old) >= tonumber(ARGV[1]) then return 0 end
redis.call("HSET", KEYS[1], "batch_cutoff_ms", ARGV[1], "batch_epoch", ARGV[2])
return 1
"""

BATCH_ABORT_LUA = r"""
-- KEYS[1] = view meta hash; ARGV = writer token. A failed materialization releases its lease (if still held).
if redis.call("HGET", KEYS[1], "batch_writer") ~= ARGV[1] then return 0 end
redis.call("HDEL", KEYS[1], "batch_writer", "batch_writer_until")
return 1
"""

# A single-entity conditional writer (kept for tools and tests that write one record outside a run; the
# materializer uses batch_write_commands).
BATCH_WRITE_LUA = r"""
-- Atomic replace of one entity's batch hash, unless it holds a newer cut-off.
-- KEYS[1] = batch hash; ARGV = expire_at_ms, cutoff_ms, then field/value pairs (including "cutoff").
-- Returns 1 if written, 0 if a newer cut-off is stored.
local old = redis.call("HGET", KEYS[1], "cutoff")
if old and tonumber(old) > tonumber(ARGV[2]) then return 0 end
redis.call("DEL", KEYS[1])
for i = 3, #ARGV, 2 do redis.call("HSET", KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call("PEXPIREAT", KEYS[1], tonumber(ARGV[1]))
return 1
"""


def tile_cas_args(writes: Sequence[tuple[str, TileGroup, Mapping[int, str]]]) -> tuple[list[str], list[str]]:
    """``(KEYS, ARGV)`` for :data:`TILE_CAS_LUA` from ``(key, group, {tile start: encoded value})`` per key."""
    keys, argv = [], []
    for key, group, fields in writes:
        keys.append(key)
        argv += [str(len(fields)), str(group.tile_ms), str(group.retention_ms)]
        for start, value in sorted(fields.items()):
            if start % group.tile_ms:
                raise ValueError(f"tile start {start} is not a multiple of {group.tile_ms}")
            argv += [str(start), value]
    return keys, argv


def batch_write_commands(key: str, fields: Mapping[str, str]) -> list[list[str]]:
    """The commands that write one entity's batch hash inside a materialization (after ``BATCH_BEGIN_LUA``):
    ``HSET key <every field, sorted>`` (atomic: it replaces the whole record, whose field set is fixed per
    view version) and ``PEXPIREAT key`` :func:`batch_expire_at_ms`."""
    cutoff = int(fields["cutoff"])
    for name in ("run", "epoch"):
        if name not in fields:
            raise ValueError(f"batch record lacks {name!r}")
    hset = ["HSET", key]
    for name, value in sorted(fields.items()):
        hset += [name, value]
    return [hset, ["PEXPIREAT", key, str(batch_expire_at_ms(cutoff))]]


def batch_write_args(key: str, fields: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """``(KEYS, ARGV)`` for :data:`BATCH_WRITE_LUA`."""
    cutoff = int(fields["cutoff"])
    argv = [str(batch_expire_at_ms(cutoff)), str(cutoff)]
    for name, value in sorted(fields.items()):
        argv += [name, value]
    return [key], argv


# --- reads ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadPlan:
    """What to fetch for one entity of one feature view, and the instant it answers.

    Fetch: GET ``epoch_key``; HGETALL each of ``tile_keys`` and ``batch_key``; HGETALL ``meta_key``.
    ``as_of_ms`` None means "now" (the caller passes the read instant to :func:`evaluate_read`).
    """

    view: FeatureView
    epoch_key: str
    meta_key: str
    tile_keys: tuple[tuple[TileGroup, str], ...]
    batch_key: str | None
    as_of_ms: int | None


def read_plan(project: str, view: FeatureView, entity_key: Sequence[Any], as_of_ms: int | None = None) -> ReadPlan:
    """The keys one entity's read of a view needs. An as-of read (``as_of_ms`` given) is exact only at an
    instant that is a multiple of every stored tile size of the view; other instants raise (use the
    training-set path)."""
    groups = tile_groups(view)
    if as_of_ms is not None:
        for g in groups:
            if as_of_ms % g.tile_ms:
                raise ValueError(
                    f"as_of {as_of_ms} is not a multiple of tile {g.tile_ms} ms of {view.name}: online as-of reads are "
                    "exact only at tile-aligned instants; use the training-set path"
                )
    return ReadPlan(
        view=view,
        epoch_key=epoch_key(project),
        meta_key=view_meta_key(project, view),
        tile_keys=tuple((g, tile_key(project, view, entity_key, g.tile_ms)) for g in groups),
        batch_key=batch_key(project, view, entity_key) if batch_windows(view) else None,
        as_of_ms=as_of_ms,
    )


INCOMPLETE = "incomplete"
PRESENT = "present"
STALE = "stale"


def _text(v: Any) -> Any:
    return v.decode("utf-8") if isinstance(v, bytes) else v


def evaluate_read(plan: ReadPlan, fetched: Mapping[str, Any], now_ms: int) -> dict[str, tuple[Any, str]]:
    """Aggregation values ``{name: (value, status)}`` from what :func:`read_plan` fetched (``fetched`` maps
    each key to GET/HGETALL output). Statuses: ``incomplete`` (null) when the epoch is missing or differs,
    the stream started after the window start, a needed tile is past retention, or the batch part is too
    late; ``stale`` (value kept) for a lifetime window whose batch is older than the tail allows."""
    view = plan.view
    T = now_ms if plan.as_of_ms is None else plan.as_of_ms
    epoch = _text(fetched.get(plan.epoch_key))
    meta = {_text(k): _text(v) for k, v in (fetched.get(plan.meta_key) or {}).items()}
    applied_from = int(meta["applied_from_ms"]) if "applied_from_ms" in meta else None
    tiles: dict[int, dict[int, tuple]] = {}
    newest: dict[int, int] = {}
    epoch_ok = epoch is not None and meta.get("epoch") == epoch
    for group, key in plan.tile_keys:
        decoded = {}
        for field, value in (fetched.get(key) or {}).items():
            _, tile_epoch, accs = decode_tile_vector(value, group.aggs)
            epoch_ok = epoch_ok and tile_epoch == epoch
            decoded[int(_text(field))] = accs
        tiles[group.tile_ms] = decoded
        newest[group.tile_ms] = max(decoded, default=floor_ms(now_ms, group.tile_ms))
    batch = decode_batch_record(view, fetched.get(plan.batch_key) or {}) if plan.batch_key else None
    run_cutoff = int(meta[META_BATCH_CUTOFF]) if plan.batch_key and META_BATCH_CUTOFF in meta else None
    if run_cutoff is not None and (batch is None or batch.cutoff_ms < run_cutoff) and meta.get("batch_epoch") == epoch:
        batch = empty_batch_record(view, run_cutoff, epoch)  # not in the newest run: no events before its cut-off
    if batch is not None and batch.epoch != epoch:
        epoch_ok = False

    out: dict[str, tuple[Any, str]] = {}
    for group, _ in plan.tile_keys:
        for index, f in enumerate(group.aggregations):
            lw = laws.LAWS[Agg(f.agg)]
            width = width_ms_of(f)
            end = None if plan.as_of_ms is None else T

            def stream_part(start: int) -> tuple[Any, bool]:
                ok = applied_from is not None and applied_from <= start
                ok = ok and start >= newest[group.tile_ms] - group.retention_ms
                parts = [accs[index] for s, accs in tiles[group.tile_ms].items() if s >= start and (end is None or s < end)]
                return lw.merge_all(parts), ok

            if not epoch_ok:
                out[f.name] = (None, INCOMPLETE)
                continue
            if is_stream_served(width):
                start = floor_ms(T - width, group.tile_ms)
                acc, ok = stream_part(start)
                out[f.name] = (lw.finalize(acc), PRESENT) if ok else (None, INCOMPLETE)
                continue
            if batch is None or batch.cutoff_ms > T:
                out[f.name] = (None, INCOMPLETE)
                continue
            field = LIFETIME_FIELD if width is None else f"w:{width}"
            vec_index = batch_windows(view)[field].index(f)
            parts = batch.windows[field]
            days_late = (T - batch.cutoff_ms) // BATCH_TILE_MS
            stream_acc, ok = stream_part(batch.cutoff_ms)
            if width is None:
                acc = lw.merge(parts[0][vec_index], stream_acc)
                status = STALE if days_late > BATCH_TAIL_DAYS else PRESENT
                out[f.name] = (lw.finalize(acc), status) if ok else (None, INCOMPLETE)
                continue
            if days_late > BATCH_TAIL_DAYS or not ok:
                out[f.name] = (None, INCOMPLETE)
                continue
            tails = [parts[1 + i][vec_index] for i in range(days_late, BATCH_TAIL_DAYS)]
            acc = lw.merge_all([parts[0][vec_index], *tails, stream_acc])
            out[f.name] = (lw.finalize(acc), PRESENT)
    return {name: out[name] for name in view.feature_names if name in out}
