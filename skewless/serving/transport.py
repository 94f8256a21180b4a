"""Transport of an online read: one round trip to Redis, its replies parsed at once (straight from redis-py's hiredis
reader when it can) or left in a :class:`~skewless.serving.reply_stream.ReplyStream` for the evaluation to consume.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from redis.exceptions import ConnectionError as _RedisConnectionError
from redis.exceptions import TimeoutError as _RedisTimeoutError

from skewless.serving.evaluate import ENTRY_OVERHEAD, ReadCaches, as_dict, view_cache
from skewless.serving.read_plan import GET, HMGET, K_GET, K_HASH, K_PAIR, SNAPSHOT_FIELDS, ViewReadPlan
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
