"""Transport of an online read: one round trip to Redis, its replies parsed at once (straight from redis-py's hiredis
reader when it can) or left in a :class:`~skewless.serving.reply_stream.ReplyStream` for the evaluation to consume;
on a Redis Cluster one pipelined exchange per master involved (:class:`ClusterExchange`).
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

from binascii import crc_hqx

from redis.exceptions import AskError, ClusterDownError, MovedError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as _RedisConnectionError
from redis.exceptions import TimeoutError as _RedisTimeoutError

from skewless.serving.evaluate import CACHE_MAX, ENTRY_OVERHEAD, ReadCaches, as_dict, view_cache
from skewless.engines.redis_client import CLUSTER_SLOTS, OnlineStoreError, hash_slot
from skewless.serving.read_plan import GET, HMGET, K_GET, K_HASH, K_PAIR, SNAPSHOT_FIELDS, ReadPlan, ViewReadPlan
from skewless.serving.reply_stream import ReplyStream, open_stream

try:  # redis-py's hiredis parser: replies are taken from its reader directly (what Connection.read_response does)
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
    from redis._parsers.hiredis import _HiredisParser
except ImportError:  # pragma: no cover - another redis-py layout: the generic path
    _HiredisParser = None  # type: ignore[assignment,misc]

STREAM_MIN = 8  # entities from which a read consumes its replies as a stream (fewer: parsed at once, cheaper)


def _read_hiredis(conn: Any, parser: Any, kinds: list[int]) -> list[Any]:
    """The replies of the commands already sent on ``conn`` (one ``K_*`` kind each) read straight from the
    hiredis reader: the same parsing as ``conn.read_response(disable_decoding=True)`` per reply, without its
    per-reply Python layers; ``K_TILES`` hashes stay flat lists. An error reply (e.g. WRONGTYPE) is returned in its
    place, for the evaluation to mark what depends on that key ``incomplete``."""
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
            if kind == K_HASH:
                it = iter(r)
                r = dict(zip(it, it))
        elif t is not bytes and t is not dict:
            if isinstance(r, Exception):
                append(r)
                continue
            if r is None and kind != K_GET:
                r = {}
        append(r)
    if conn.health_check_interval:
        conn.next_health_check = time.time() + conn.health_check_interval
    return out


def execute(client: Any, names: list[tuple[bytes, bytes]]) -> list[Any]:
    """One round trip through ``client``'s own pipeline (Redis Cluster, other clients); GET -> bytes|None,
    HGETALL -> dict[bytes, bytes], HMGET (a snapshot entity hash) -> [row, manifest], an error reply in its place."""
    pipe = client.pipeline(transaction=False)
    for cmd, key in names:
        if cmd == HMGET:
            pipe.hmget(key.decode(), *SNAPSHOT_FIELDS)
        else:
            (pipe.get if cmd == GET else pipe.hgetall)(key.decode())
    out = []
    for (cmd, _), r in zip(names, pipe.execute(raise_on_error=False)):
        if isinstance(r, Exception):
            out.append(r)
        elif cmd == GET:
            out.append(r.encode() if isinstance(r, str) else r)
        elif cmd == HMGET:
            out.append([v.encode() if isinstance(v, str) else v for v in r])
        else:
            out.append({(k.encode() if isinstance(k, str) else k): (v.encode() if isinstance(v, str) else v)
                        for k, v in (r or {}).items()})
    return out


def round_trip(conn: Any, packed: bytes, kinds: list[int], nhead: int, streamed: bool
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
                if kinds[i] != K_GET:
                    head[i] = as_dict(r)
            return head, stream
        parser = getattr(conn, "_parser", None)
        if (_HiredisParser is not None and type(parser) is _HiredisParser and parser._reader is not None
                and parser._next_response is _NOT_ENOUGH_DATA):
            return _read_hiredis(conn, parser, kinds), None
        out = []
        for kind in kinds:
            r = conn.read_response(disable_decoding=True)
            if isinstance(r, Exception):  # an error reply: returned in its place (see _read_hiredis)
                out.append(r)
                continue
            if kind != K_GET and kind != K_PAIR:
                r = as_dict(r)
            out.append(r)
    except BaseException:
        conn.disconnect()  # unread replies must not leak into the next command (it reconnects on next use)
        raise
    return out, None


def read_replies(conn: Any, kinds: list[int]) -> list[Any]:
    """The replies (one per ``kinds``) of the commands already sent on ``conn``, parsed as :func:`round_trip` parses
    them (straight from the hiredis reader when the connection has one, also redis-py's cluster parser); an error
    reply (MOVED, WRONGTYPE, ...) is returned in its place. On any other failure ``conn`` is disconnected."""
    try:
        parser = getattr(conn, "_parser", None)
        if (_HiredisParser is not None and isinstance(parser, _HiredisParser) and parser._reader is not None
                and parser._next_response is _NOT_ENOUGH_DATA):
            return _read_hiredis(conn, parser, kinds)
        out = []
        for kind in kinds:
            try:
                r = conn.read_response(disable_decoding=True)
            except ResponseError as exc:  # the generic parser raises an error reply: returned in its place
                out.append(exc)
                continue
            if isinstance(r, Exception):
                out.append(r)
                continue
            if kind != K_GET and kind != K_PAIR:
                r = as_dict(r)
            out.append(r)
        return out
    except BaseException:
        conn.disconnect()  # unread replies must not leak into the next command
        raise


REDIRECTS = (MovedError, AskError, TryAgainError, ClusterDownError)  # replies after which the slot map is read again


class ClusterExchange:
    """The transport of reads on a Redis Cluster client (redis-py ``RedisCluster``): the commands of a read grouped
    by the master serving each key's slot (an entity's keys share its hash tag's slot; the epoch, progress and meta
    keys have theirs), each master's commands sent as one pipelined write on a connection kept per master, all sent
    before any is read (the masters work in parallel), the replies put back in the read's order.

    A MOVED/ASK/TRYAGAIN/CLUSTERDOWN reply (a slot moved, a failover) reads the slot map again and the whole exchange
    is retried once; if a redirect remains, the read goes through redis-py's cluster pipeline (which follows ASK).
    A master that refuses the connection: the map is read again and the exchange retried once; then (or on a
    timeout, at once) :class:`~skewless.engines.redis_client.OnlineStoreError` naming the master (a
    ``redis.ConnectionError``: the HTTP server answers 503), within the configured timeouts."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._conns: dict[str, list[Any]] = {}  # node name -> connections kept for the next call
        self._heads: dict[int, tuple[ReadPlan, list[bytes], list[int]]] = {}  # id(plan) -> its head commands, slots
        self._pid = os.getpid()
        self.failed = "?"  # the master of the last failed exchange

    def head(self, plan: ReadPlan) -> tuple[list[bytes], list[int]]:
        """The shared commands of ``plan`` packed one by one, and the slot of each."""
        hit = self._heads.get(id(plan))
        if hit is None or hit[0] is not plan:
            packed = [b"*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(cmd), cmd, len(key), key) for cmd, key in plan.head_names]
            if len(self._heads) >= 1024:
                self._heads.clear()
            hit = self._heads[id(plan)] = (plan, packed, [hash_slot(key) for _, key in plan.head_names])
        return hit[1], hit[2]

    def read(self, plan: ReadPlan, tags: list[list[bytes]], n: int, caches: ReadCaches) -> list[Any]:
        """All replies of the read of ``n`` entities (``tags`` per entity spec of ``plan``) in the order of the
        single-node read: the shared ones, then per view and entity its commands."""
        head_packed, head_slots = self.head(plan)
        commands = list(head_packed)
        kinds = list(plan.head_kinds)
        slots = list(head_slots)
        entity_slots = [[crc_hqx(t, 0) & (CLUSTER_SLOTS - 1) for t in ts] for ts in tags]  # the hash tag is the entity
        packed_cache = caches.packed
        for vp in plan.views:
            cache = packed_cache.get(vp.serial)  # entity tag -> the entity's packed commands of that view
            if cache is None or len(cache) >= CACHE_MAX:
                cache = packed_cache[vp.serial] = {}
            pieces = vp.pieces
            k = len(vp.kinds)
            for t, slot in zip(tags[vp.entity_index], entity_slots[vp.entity_index]):
                one = cache.get(t)
                if one is None:
                    one = cache[t] = b"".join([piece % (c + len(t), t) for piece, c in pieces])
                    caches.charge(len(t) + len(one) + ENTRY_OVERHEAD)
                commands.append(one)  # the entity's k commands of the view, one write
                kinds += vp.kinds
                slots.append(slot)
                if k > 1:
                    commands += [b""] * (k - 1)
                    slots += [slot] * (k - 1)
        try:
            replies = self._exchange(commands, kinds, slots)
            if not any(type(r) in REDIRECTS for r in replies):
                return replies
        except _RedisTimeoutError as exc:  # a hung master: no retry (the read has waited its timeout)
            raise self._named(exc) from None
        except (_RedisConnectionError, OSError):  # refused / reset: the slot map may be stale (a failover)
            pass
        self._refresh()
        try:
            replies = self._exchange(commands, kinds, slots)
        except (_RedisTimeoutError, _RedisConnectionError, OSError) as exc:
            raise self._named(exc) from None
        if any(type(r) in REDIRECTS for r in replies):  # still moving (ASK during a slot migration)
            names = list(plan.head_names)
            for vp in plan.views:
                names += [(cmd, vp.prefix + t + suffix) for t in tags[vp.entity_index] for cmd, suffix in vp.key_suffixes]
            return execute(self.client, names)
        return replies

    def _named(self, exc: BaseException) -> BaseException:
        """``exc`` as one line naming the master (a timeout stays a ``redis.TimeoutError``)."""
        if isinstance(exc, OnlineStoreError):
            return exc
        text = (f"Redis Cluster master {self.failed} did not answer the read ({type(exc).__name__}: {str(exc)[:160]}); "
                "start it, or wait for its replica to take over, then retry")
        return _RedisTimeoutError(text) if isinstance(exc, _RedisTimeoutError) else OnlineStoreError(text)

    def _refresh(self) -> None:
        try:
            self.client.nodes_manager.initialize()
        except Exception as exc:  # noqa: BLE001 - no node answers: say so in one line
            raise OnlineStoreError(f"the Redis Cluster's slot map cannot be read again ({str(exc)[:200]}); start its "
                                   "nodes or fix online_store.nodes") from None

    def _exchange(self, commands: list[bytes], kinds: list[int], slots: list[int]) -> list[Any]:
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours
            self._conns, self._pid = {}, os.getpid()
        slots_cache = self.client.nodes_manager.slots_cache
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for i, slot in enumerate(slots):
            nodes = slots_cache.get(slot)
            if not nodes:
                raise OnlineStoreError(f"no Redis Cluster master serves slot {slot} (the cluster lost a master without a "
                                       "replica to promote?); check it with `redis-cli --cluster check`")
            node = nodes[0]
            entry = by_node.get(node.name)
            if entry is None:
                entry = by_node[node.name] = (node, [])
            entry[1].append(i)
        sent: list[tuple[str, Any, list[int]]] = []
        name = "?"
        try:
            for name, (node, positions) in by_node.items():
                kept = self._conns.setdefault(name, [])
                conn = kept.pop() if kept else node.redis_connection.connection_pool.get_connection()
                sent.append((name, conn, positions))
                conn.send_packed_command([b"".join([commands[i] for i in positions])], check_health=False)
            out: list[Any] = [None] * len(commands)
            for name, conn, positions in sent:
                got = read_replies(conn, [kinds[i] for i in positions])
                for i, r in zip(positions, got):
                    out[i] = r
        except BaseException:
            self.failed = name  # the master being written to or read from
            for _, conn, _ in sent:
                conn.disconnect()  # unread replies must not reach the next command
            raise
        finally:
            for name, conn, _ in sent:
                self._conns[name].append(conn)
        return out


def snapshot_replies(vp: ViewReadPlan, stream: ReplyStream, tags: Sequence[bytes], caches: ReadCaches) -> list[Any]:
    """The HMGET reply (``[row, manifest]``) of each entity of a snapshot view from ``stream``: the kept one when its raw
    reply is the one kept for that entity in ``caches.snap_raw`` (no parsing), else parsed (and kept;
    ``caches.kept[1]`` counts them)."""
    if stream.pending:  # replies parsed unmeasured before (no memo)
        return [r[0] for r in stream.take([None] * len(tags), 1, False)[0]]  # type: ignore[index]
    added = caches.kept
    memo = view_cache(caches.snap_raw, added, 1, vp.serial)
    kept = list(map(memo.get, tags))
    parsed, spans = stream.take([None if e is None else e[0] for e in kept], 1)
    out = []
    for t, e, p, raw in zip(tags, kept, parsed, spans):
        if p is None:
            out.append(e[1])  # type: ignore[index]
        else:
            memo[t] = (raw, p[0])
            added[1] += 1
            caches.charge(len(t) + 2 * len(raw) + ENTRY_OVERHEAD)
            out.append(p[0])
    return out
