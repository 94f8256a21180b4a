"""The write protocol of the online store (see :mod:`skewless.core.layout`): every write of an entity's state is one
Lua script on the entity's own hash (one key, so one slot), which keeps the hash's manifest; compare-and-set tile
writes (the streaming sink), fenced batch and snapshot writes (materialization), the materialization lease, expiry
instants and the server's eviction policy check.

The manifest (field ``m`` of an entity hash, JSON) lists what the writers put in the hash, so a reader can tell a
missing part from one never written:

- ``t``: per tile size ``H`` (text) ``[count, highest start ever written, lost up to]``: the number of ``t:{H}:*``
  fields; ``lost up to`` (-1: none) is set by a writer that found fewer fields than counted (or fields without a
  manifest): a window starting at or before it may miss a lost tile and reads ``incomplete``;
- ``b``: ``[cut-off, fence, run id]`` of the batch record (fields ``b:*``) of the newest run written;
- ``s``: ``[cut-off, fence]`` of the snapshot row (field ``s``).

A write is fenced by ``(cut-off, fence)``: the fence is taken from the view meta when a run takes the writer lease
(``BATCH_BEGIN_LUA``: larger than every fence before, at least Redis time in ms), so a run that started later wins
over an earlier one of the same cut-off, and a newer cut-off over an older one whatever their fences.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Mapping, Sequence

from skewless.core.dsl import SnapshotView
from skewless.core.layout.keys import EVICTING_POLICIES, TileGroup, batch_fields
from skewless.core.routing import BATCH_TILE_MS, SNAPSHOT_EXPIRED_MEMORY_MS, STREAM_DAILY_TILE_RETENTION_MS
from skewless.core.timeutil import td_ms

log = logging.getLogger("skewless.layout")


def batch_expire_at_ms(cutoff_ms: int) -> int:
    """When a batch record is useless: once the daily stream tiles since its cut-off are gone (the entity hash
    expires no earlier than this after a batch write)."""
    return cutoff_ms + STREAM_DAILY_TILE_RETENTION_MS + BATCH_TILE_MS


def snapshot_expire_at_ms(view: SnapshotView, ts_ms: int) -> int:
    """PEXPIREAT of a snapshot entity hash: ts + ttl + the expired-status memory (so reads can say ``expired``)."""
    return ts_ms + td_ms(view.ttl) + SNAPSHOT_EXPIRED_MEMORY_MS + 1


def script_sha(script: str) -> str:
    """The SHA1 by which Redis names a loaded script (EVALSHA)."""
    return hashlib.sha1(script.encode()).hexdigest()


# --- Lua --------------------------------------------------------------------------------------------------------

_LIB = r"""
local function now_ms()
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- the manifest of an entity hash, and whether the hash holds fields without one (a lost manifest)
local function manifest(key)
  local raw = redis.call("HGET", key, "m")
  if raw then
    local man = cjson.decode(raw)
    if type(man.t) ~= "table" then man.t = {} end
    return man, false
  end
  return {t = {}}, redis.call("HLEN", key) > 0
end
local function newer(stored, cutoff, fence)  -- stored {cut-off, fence, ...} newer than (cutoff, fence)?
  local c, f = tonumber(stored[1]), tonumber(stored[2])
  return c > cutoff or (c == cutoff and f > fence)
end
local function save(key, man, expire_at, exact)
  if next(man.t) == nil then man.t = nil end
  redis.call("HSET", key, "m", cjson.encode(man))
  local cur = redis.call("PEXPIRETIME", key)
  if exact or cur < 0 or cur < expire_at then redis.call("PEXPIREAT", key, expire_at) end
end
"""

TILE_CAS_LUA = _LIB + r"""
-- Batched compare-and-set of tile fields. KEYS[k] is an entity hash (a key may repeat, once per tile size); ARGV
-- holds per KEYS[k]: n, tile_ms, retention_ms, then n pairs (tile start ms, value), value = "<version>|<epoch>|<vector>".
-- Field t:{H}:{start} is written only if the new version >= the stored one (decimal strings, compared by length then
-- text, so versions beyond 2^53 stay exact). Then the size's fields whose start < newest start - retention are
-- deleted, the manifest's count of the size is kept exact, and the hash expires no earlier than newest + tile + retention.
-- A count that differs from the fields found (a tile lost) marks the size lost up to the highest start ever written.
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
  local n = tonumber(ARGV[i]); local tile = ARGV[i + 1]; local retention = tonumber(ARGV[i + 2])
  i = i + 3
  local man, orphaned = manifest(key)
  local pre = "t:" .. tile .. ":"
  local fields, starts = {}, {}
  for _, f in ipairs(redis.call("HKEYS", key)) do
    if string.sub(f, 1, #pre) == pre then
      fields[#fields + 1] = f
      starts[#starts + 1] = tonumber(string.sub(f, #pre + 1))
    end
  end
  local g = man.t[tile]
  if g == nil then
    g = {0, -1, -1}
    if #fields > 0 then orphaned = true end
  end
  if orphaned then  -- tiles without a manifest entry: which were lost is unknown; every window until now + retention
    g[3] = math.max(g[3], g[2], now_ms() + retention)
  elseif #fields ~= g[1] then
    g[3] = math.max(g[3], g[2])
  end
  local count = #fields
  local newest = nil
  for _, s in ipairs(starts) do
    if newest == nil or s > newest then newest = s end
  end
  for j = 1, n do
    local s, value = ARGV[i], ARGV[i + 1]
    i = i + 2
    local field = pre .. s
    local old = redis.call("HGET", key, field)
    if not old then
      redis.call("HSET", key, field, value)
      written = written + 1
      count = count + 1
      fields[#fields + 1] = field
      starts[#starts + 1] = tonumber(s)
    elseif ge(ver(value), ver(old)) then
      redis.call("HSET", key, field, value)
      written = written + 1
    end
    local sn = tonumber(s)
    if newest == nil or sn > newest then newest = sn end
    if sn > g[2] then g[2] = sn end
  end
  if newest ~= nil then
    for j, s in ipairs(starts) do
      if s < newest - retention then
        redis.call("HDEL", key, fields[j])
        count = count - 1
      end
    end
    g[1] = count
    man.t[tile] = g
    save(key, man, newest + tonumber(tile) + retention, false)
  end
end
return written
"""

BATCH_WRITE_LUA = _LIB + r"""
-- Fenced write of one entity's batch record. KEYS[1] = entity hash; ARGV = cutoff_ms, fence, run id, expire_at_ms, then
-- field/value pairs (b:cutoff, b:run, b:epoch, b:w:...: a view version's field set is fixed, so they replace the whole
-- record). Nothing is written when the manifest records a newer run ((cut-off, fence) greater). Returns 1 if written.
local man = manifest(KEYS[1])
local cutoff, fence = tonumber(ARGV[1]), tonumber(ARGV[2])
if man.b and newer(man.b, cutoff, fence) then return 0 end
redis.call("HSET", KEYS[1], unpack(ARGV, 5))
man.b = {ARGV[1], ARGV[2], ARGV[3]}
save(KEYS[1], man, tonumber(ARGV[4]), false)
return 1
"""

SNAPSHOT_WRITE_LUA = _LIB + r"""
-- Fenced write of one entity's snapshot row. KEYS[1] = entity hash; ARGV = cutoff_ms, fence, expire_at_ms, row.
-- Nothing is written when the manifest records a newer run. Returns 1 if written.
local man = manifest(KEYS[1])
if man.s and newer(man.s, tonumber(ARGV[1]), tonumber(ARGV[2])) then return 0 end
redis.call("HSET", KEYS[1], "s", ARGV[4])
man.s = {ARGV[1], ARGV[2]}
save(KEYS[1], man, tonumber(ARGV[3]), true)
return 1
"""

BATCH_META_LUA = r"""
-- KEYS[1] = view meta hash; ARGV = cutoff_ms, epoch. Moves batch_cutoff_ms forward only. Returns 1 if moved.
local old = redis.call("HGET", KEYS[1], "batch_cutoff_ms")
if old and tonumber(old) >= tonumber(ARGV[1]) then return 0 end
redis.call("HSET", KEYS[1], "batch_cutoff_ms", ARGV[1], "batch_epoch", ARGV[2])
return 1
"""

# Materializing a batch run (batch_jobs/materialize.py, the only writer of ``b:*`` fields):
#
# 1. ``BATCH_BEGIN_LUA`` on the view meta hash: the whole run is refused when the meta records a newer materialized
#    run (``batch_cutoff_ms`` > the run's cut-off), or when another materialization of the view holds the writer lease
#    (``batch_writer``/``batch_writer_until``, Redis server time) and is alive (its connection, ``batch_writer_client``,
#    still open: a writer that died or lost its connection is taken over at once); else the lease is taken with a new fence
#    (``batch_fence``: greater than every fence before and at least Redis time in ms). The same script renews the
#    lease before every pipelined batch (``renew``: the lease must still be this writer's, else the run stops).
# 2. per entity ``BATCH_WRITE_LUA`` (:func:`batch_write_args`), fenced by (cut-off, fence): a writer paused past its
#    lease can never replace a newer run's record, even if its pipelined batch reaches Redis after that run.
# 3. ``BATCH_END_LUA``: if the lease is still held, ``batch_cutoff_ms`` moves forward only (the
#    :data:`BATCH_META_LUA` rule) and the lease is released.
BATCH_WRITER = "batch_writer"
BATCH_WRITER_UNTIL = "batch_writer_until"
BATCH_FENCE = "batch_fence"

BATCH_WRITER_CLIENT = "batch_writer_client"

BATCH_BEGIN_LUA = r"""
-- KEYS[1] = view meta hash; ARGV = cutoff_ms, writer token, lease_ms, renew ("1": renew this writer's lease),
-- the writer's connection id on this server (CLIENT ID; "" unknown), the token of a holder known dead ("": none).
-- Returns {1, fence} when the lease is taken or renewed, {0, newer cutoff} when a newer run is recorded,
-- {-1, holder, holder's connection id} when another writer holds an unexpired lease (or, renewing, took it over).
-- A holder known dead (the caller saw that its connection is gone) is taken over at once: the new fence is larger,
-- so nothing the dead holder might still send replaces what the new writer writes.
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call("HGET", KEYS[1], "batch_cutoff_ms")
if cur and tonumber(cur) > tonumber(ARGV[1]) then return {0, cur} end
local holder = redis.call("HGET", KEYS[1], "batch_writer")
local till = redis.call("HGET", KEYS[1], "batch_writer_until")
if ARGV[4] == "1" then
  if holder ~= ARGV[2] then return {-1, holder or "nobody", ""} end
  redis.call("HSET", KEYS[1], "batch_writer_until", tostring(now + tonumber(ARGV[3])), "batch_writer_client", ARGV[5])
  return {1, redis.call("HGET", KEYS[1], "batch_fence")}
end
if holder and holder ~= ARGV[2] and till and tonumber(till) > now and holder ~= ARGV[6] then
  return {-1, holder, redis.call("HGET", KEYS[1], "batch_writer_client") or ""}
end
local fence = math.max(tonumber(redis.call("HGET", KEYS[1], "batch_fence") or "0") + 1, now)
redis.call("HSET", KEYS[1], "batch_writer", ARGV[2], "batch_writer_until", tostring(now + tonumber(ARGV[3])),
           "batch_fence", string.format("%d", fence), "batch_writer_client", ARGV[5])
return {1, string.format("%d", fence)}
"""

BATCH_END_LUA = r"""
-- KEYS[1] = view meta hash; ARGV = cutoff_ms, epoch, writer token. Returns -1 if the lease was lost (nothing
-- changed), else moves batch_cutoff_ms forward only (as BATCH_META_LUA), releases the lease and returns 1 if
-- the cut-off moved, 0 if not.
if redis.call("HGET", KEYS[1], "batch_writer") ~= ARGV[3] then return -1 end
redis.call("HDEL", KEYS[1], "batch_writer", "batch_writer_until", "batch_writer_client")
local old = redis.call("HGET", KEYS[1], "batch_cutoff_ms")
if old and tonumber(old) >= tonumber(ARGV[1]) then return 0 end
redis.call("HSET", KEYS[1], "batch_cutoff_ms", ARGV[1], "batch_epoch", ARGV[2])
return 1
"""

BATCH_ABORT_LUA = r"""
-- KEYS[1] = view meta hash; ARGV = writer token. A failed materialization releases its lease (if still held).
if redis.call("HGET", KEYS[1], "batch_writer") ~= ARGV[1] then return 0 end
redis.call("HDEL", KEYS[1], "batch_writer", "batch_writer_until", "batch_writer_client")
return 1
"""


# --- arguments --------------------------------------------------------------------------------------------------


def tile_cas_args(writes: Sequence[tuple[str, TileGroup, Mapping[int, str]]]) -> tuple[list[str], list[str]]:
    """``(KEYS, ARGV)`` for :data:`TILE_CAS_LUA` from ``(entity key, group, {tile start: encoded value})`` per
    entity and tile size."""
    keys, argv = [], []
    for key, group, fields in writes:
        keys.append(key)
        argv += [str(len(fields)), str(group.tile_ms), str(group.retention_ms)]
        for start, value in sorted(fields.items()):
            if start % group.tile_ms:
                raise ValueError(f"tile start {start} is not a multiple of {group.tile_ms}")
            argv += [str(start), value]
    return keys, argv


def batch_write_args(key: str, record: Mapping[str, str], fence: int) -> tuple[list[str], list[str]]:
    """``(KEYS, ARGV)`` for :data:`BATCH_WRITE_LUA` from a batch record (:func:`~skewless.core.layout.encode_batch_record`:
    cutoff, run, epoch and every window field) and the run's fence; fields sorted."""
    for name in ("cutoff", "run", "epoch"):
        if name not in record:
            raise ValueError(f"batch record lacks {name!r}")
    cutoff = int(record["cutoff"])
    argv = [str(cutoff), str(int(fence)), record["run"], str(batch_expire_at_ms(cutoff))]
    for name, value in sorted(batch_fields(record).items()):
        argv += [name, value]
    return [key], argv


def snapshot_write_args(key: str, view: SnapshotView, cutoff_ms: int, fence: int, ts_ms: int, row: str
                        ) -> tuple[list[str], list[str]]:
    """``(KEYS, ARGV)`` for :data:`SNAPSHOT_WRITE_LUA`: the row (:func:`~skewless.core.layout.encode_snapshot`) of
    a snapshot materialization with cut-off ``cutoff_ms`` and ``fence``."""
    return [key], [str(int(cutoff_ms)), str(int(fence)), str(snapshot_expire_at_ms(view, ts_ms)), row]


# --- the server's eviction policy -------------------------------------------------------------------------------


class EvictingPolicyError(RuntimeError):
    """Redis may evict keys (``maxmemory-policy`` other than ``noeviction``): losing a whole entity hash would read as
    an entity never seen, so the online store refuses to run on it."""


def eviction_problem(policy: str | None) -> str | None:
    """Why the store refuses ``maxmemory-policy`` = ``policy`` (None: it accepts it)."""
    if policy is not None and policy.lower() in EVICTING_POLICIES:
        return (f"Redis maxmemory-policy is {policy}: it may evict keys, and an entity whose online state was evicted "
                "whole reads as one never seen (plausible values marked present). Set maxmemory-policy noeviction "
                "(CONFIG SET maxmemory-policy noeviction, or in redis.conf) and give Redis enough memory")
    return None


def check_eviction_policy(client: Any, who: str) -> None:
    """Once per writer/reader: refuse (:class:`EvictingPolicyError`) a Redis that may evict keys; where ``CONFIG GET``
    is denied (managed Redis) warn and go on. ``client``: a redis-py client (a cluster client asks every node)."""
    try:
        answer = client.config_get("maxmemory-policy")
    except Exception as exc:  # noqa: BLE001 - denied / unknown command: the policy cannot be checked
        if type(exc).__name__ in ("ConnectionError", "TimeoutError", "AuthenticationError"):
            raise
        log.warning("%s: cannot read Redis maxmemory-policy (%s); make sure it is noeviction, or lost keys read as "
                    "entities never seen", who, str(exc)[:200])
        return
    values = answer.values() if isinstance(answer, dict) else [answer]
    for value in values:
        if isinstance(value, dict):  # a cluster client: node -> {name: value}
            value = value.get("maxmemory-policy", value.get(b"maxmemory-policy"))
        if isinstance(value, bytes):
            value = value.decode()
        problem = eviction_problem(value if isinstance(value, str) else None)
        if problem is not None:
            raise EvictingPolicyError(f"{who}: {problem}")


__all__ = ["BATCH_ABORT_LUA", "BATCH_BEGIN_LUA", "BATCH_END_LUA", "BATCH_FENCE", "BATCH_META_LUA", "BATCH_WRITER",
           "BATCH_WRITER_CLIENT", "BATCH_WRITER_UNTIL", "BATCH_WRITE_LUA", "EvictingPolicyError", "SNAPSHOT_WRITE_LUA", "TILE_CAS_LUA",
           "batch_expire_at_ms", "batch_write_args", "check_eviction_policy", "eviction_problem", "script_sha",
           "snapshot_expire_at_ms", "snapshot_write_args", "tile_cas_args"]
