"""ReplyStream over a real socket pair fed with RESP2 bytes as Redis encodes them, delivered in pieces: parsed
replies equal hiredis's, span() is exactly their bytes, skip() passes over equal bytes only and never waits on a
reply that already differs, errors and leftovers are reported."""

from __future__ import annotations

import random
import socket
import threading
from typing import Any

import hiredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ResponseError

from skewless.serving.reply_stream import ReplyStream, resp_len


def encode(r: Any) -> bytes:
    if r is None:
        return b"$-1\r\n"
    if isinstance(r, bytes):
        return b"$%d\r\n%s\r\n" % (len(r), r)
    return b"*%d\r\n" % len(r) + b"".join(encode(x) for x in r)


class Conn:
    """What ReplyStream uses of a redis-py connection: its socket and its parser's error factory."""

    class _Parser:
        @staticmethod
        def parse_error(message: str) -> Exception:
            return ResponseError(message)

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._parser = self._Parser()

    def _host_error(self) -> str:
        return "test socket"


def stream_of(data: bytes, piece: int, close: bool = True) -> ReplyStream:
    """A stream whose socket receives ``data`` in pieces of ``piece`` bytes (then closes, if ``close``)."""
    a, b = socket.socketpair()
    a.settimeout(5)

    def feed() -> None:
        for i in range(0, len(data), piece):
            b.sendall(data[i:i + piece])
        if close:
            b.close()

    threading.Thread(target=feed, daemon=True).start()
    return ReplyStream(Conn(a))


def replies(rng: random.Random, n: int) -> list[Any]:
    out: list[Any] = []
    for _ in range(n):
        kind = rng.randrange(4)
        if kind == 0:
            out.append(None)
        elif kind == 1:
            out.append(bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 9, 10, 99, 100, 5000]))))
        else:
            out.append([b"%d" % rng.randrange(10 ** rng.randrange(1, 14)) for _ in range(rng.randrange(0, 12))])
    return out


@pytest.mark.parametrize("piece", [1, 7, 100, 1 << 16])
def test_parse_equals_hiredis_and_span_is_the_bytes(piece: int) -> None:
    rng = random.Random(piece)
    rs = replies(rng, 60)
    data = b"".join(encode(r) for r in rs)
    reader = hiredis.Reader()
    reader.feed(data)
    assert [reader.gets() for _ in rs] == rs  # the encoder is Redis's framing
    stream = stream_of(data, piece)
    got, at = [], 0
    while len(got) < len(rs):
        k = rng.randrange(1, 4)
        part = stream.parse(min(k, len(rs) - len(got)))
        assert stream.span() == data[at:at + len(stream.span())] == b"".join(encode(r) for r in part)
        at += len(stream.span())
        got += part
    assert got == rs
    stream.finish()
    assert all(resp_len(r) == len(encode(r)) for r in rs)


@pytest.mark.parametrize("piece", [1, 3, 1 << 16])
def test_skip_passes_over_equal_bytes_and_refuses_others_without_consuming(piece: int) -> None:
    one, two = [b"1700000000000", b"7|e1|[1,2]"], [b"1700000000000", b"7|e1|[1,3]"]
    data = encode(one) + encode(None) + encode(two) + encode(b"row")
    stream = stream_of(data, piece, close=False)  # a differing reply must be seen without waiting for more bytes
    assert stream.skip(encode(one) + encode(None))
    assert not stream.skip(encode(one))  # same length, one byte differs
    assert not stream.skip(encode([b"x"]))  # shorter
    assert stream.parse(1) == [two]
    assert not stream.skip(encode(b"row-longer"))
    assert stream.parse(1) == [b"row"]
    stream.finish()


def test_leftover_bytes_error_replies_and_a_closed_socket_raise() -> None:
    stream = stream_of(encode(b"a") + encode(b"b"), 1 << 16)
    stream.parse(1)
    for _ in range(100):  # the second reply arrives with the first or shortly after
        stream._recv() if len(stream.buf) == stream.pos else None
        if len(stream.buf) > stream.pos:
            break
    with pytest.raises(InvalidResponse, match="after the last expected reply"):
        stream.finish()
    stream = stream_of(b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n", 1 << 16)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        stream.parse(1)
    stream = stream_of(encode([b"a", b"b"])[:-3], 1 << 16)
    with pytest.raises(RedisConnectionError, match="closed"):
        stream.parse(1)
    stream = stream_of(b":12\r\n+OK\r\n", 1 << 16)
    assert stream.parse(1) == [12] and stream.span() == b":12\r\n"
    with pytest.raises(InvalidResponse, match="framing"):  # a status reply (+OK): not what GET/HGETALL send
        stream.parse(1)


@pytest.mark.parametrize("piece", [1, 5, 1 << 16])
def test_unmeasured_parses_settle_before_a_skip_and_at_finish(piece: int) -> None:
    rng = random.Random(piece + 1)
    rs = replies(rng, 30)
    tail = [b"k1", b"v1"]
    data = b"".join(encode(r) for r in rs) + encode(tail) + encode(None)
    stream = stream_of(data, piece)
    parsed, spans = stream.take([None] * 10, 3, spans=False)
    assert [x for p in parsed for x in p] == rs and spans == []  # type: ignore[union-attr]
    assert stream.skip(encode(tail))  # the position is settled first
    assert stream.parse(1, False) == [None]
    stream.finish()
    leftover = stream_of(encode(b"a") + encode(b"b"), 1 << 16)
    assert leftover.parse(1, False) == [b"a"]
    with pytest.raises(InvalidResponse, match="after the last expected reply"):
        for _ in range(1000):  # until the second reply has arrived
            if len(leftover.buf) < len(encode(b"a") + encode(b"b")):
                leftover._recv()
            leftover.finish()


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("piece", [1, 7, 1 << 16])
def test_a_run_with_nothing_kept_is_parsed_at_once_with_each_entitys_bytes(piece: int, k: int) -> None:
    rng = random.Random(piece * 10 + k)
    rs = replies(rng, 12 * k)
    before, after = [b"h"], [b"t", None]
    data = encode(before) + b"".join(encode(r) for r in rs) + b"".join(encode(r) for r in after)
    stream = stream_of(data, piece)
    assert stream.parse(1, False) == [before]  # left unmeasured: settled first
    parsed, spans = stream.take([None] * 12, k)
    assert parsed == [rs[i:i + k] for i in range(0, len(rs), k)]
    assert spans == [b"".join(encode(r) for r in rs[i:i + k]) for i in range(0, len(rs), k)]
    assert stream.span() == spans[-1]
    assert stream.skip(encode(after[0])) and stream.parse(1) == [None]
    stream.finish()
