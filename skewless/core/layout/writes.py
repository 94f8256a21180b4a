"""The write protocol of the online store: compare-and-set tile writes, the batch materialization's lease and
records, expiry instants (see :mod:`skewless.core.layout`)."""

from __future__ import annotations

from typing import Mapping, Sequence

from skewless.core.dsl import SnapshotView
from skewless.core.layout.keys import TileGroup
from skewless.core.routing import BATCH_TILE_MS, SNAPSHOT_EXPIRED_MEMORY_MS, STREAM_DAILY_TILE_RETENTION_MS
from skewless.core.timeutil import td_ms


def batch_expire_at_ms(cutoff_ms: int) -> int:
    """PEXPIREAT of a batch hash: useless once the daily stream tiles since its cut-off are gone."""
    return cutoff_ms + STREAM_DAILY_TILE_RETENTION_MS + BATCH_TILE_MS


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
