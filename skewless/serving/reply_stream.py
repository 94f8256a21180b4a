"""The RESP2 replies of a pipeline already sent on a redis-py connection, consumed in order from its socket.

:class:`ReplyStream` reads the socket itself (the connection's hiredis parser holds no data: checked by
:func:`open_stream`) and lets the reader of a 100-entity read do one of two things per entity:

- ``skip(expected)``: the next replies are exactly ``expected`` (the raw bytes those replies had on an earlier
  read, kept by the caller's memo): they are passed over with one ``startswith``, no object is built; RESP is
  self-delimiting, so equal bytes are equal replies and unequal bytes differ before either ends;
- ``parse(k)``: the next ``k`` replies parsed by hiredis (what ``Connection.read_response(disable_decoding=True)``
  gives: bytes, None, flat lists), with ``span()`` the raw bytes they were sent as.

Errors follow redis-py: a closed socket raises ``ConnectionError``, a timeout ``TimeoutError``, an error reply
the parser's ``ResponseError``. Whoever holds the stream disconnects the connection when it stops before
``finish()`` (unread replies must never reach another command).
"""

from __future__ import annotations

import itertools
import socket
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse
from redis.exceptions import TimeoutError as RedisTimeoutError

_RECV = 1 << 16
_FEED = 1 << 13  # bytes handed to hiredis at a time (a miss parses a few hundred bytes, not the whole remainder)
_BULK_OVERHEAD = [len(b"$%d\r\n\r\n" % n) for n in range(1 << 12)]  # framing bytes of a bulk string of length n
_BYTES = frozenset((bytes,))


def resp_len(r: Any) -> int:
    """Length of the RESP2 encoding Redis sends for a parsed reply (bulk strings, nil, integers, arrays of them)."""
    t = type(r)
    if t is list and _BYTES.issuperset(map(type, r)):  # an array of bulk strings (a hash): in C loops
        lens = list(map(len, r))
        try:
            return len(b"*%d\r\n" % len(lens)) + sum(lens) + sum(map(_BULK_OVERHEAD.__getitem__, lens))
        except IndexError:  # a value of 4 KiB or more
            pass
    if t is bytes:
        n = len(r)
        return n + (_BULK_OVERHEAD[n] if n < 4096 else len(b"$%d\r\n\r\n" % n))
    if t is list:
        return len(b"*%d\r\n" % len(r)) + sum([resp_len(x) for x in r])
    if r is None:
        return 5  # $-1\r\n
    if t is int:
        return len(b":%d\r\n" % r)
    raise InvalidResponse(f"unexpected reply type {t.__name__} in a pipeline of GET/HGETALL")


class ReplyStream:
    """Replies of commands already sent on ``conn`` (see the module doc); one per read, not shared."""

    __slots__ = ("conn", "sock", "buf", "pos", "reader", "fed", "start", "parse_error", "pending")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.sock = conn._sock
        self.parse_error = conn._parser.parse_error
        self.buf = b""
        self.pos = 0  # replies before it are consumed
        self.reader: Any = None  # a hiredis reader positioned at ``pos`` (None after a skip)
        self.fed = 0  # the reader holds buf[..fed]
        self.start = 0  # where the replies of the last parse() began
        self.pending: list[Any] = []  # replies parsed after ``pos`` whose length is not counted yet

    def _recv(self) -> None:
        try:
            data = self.sock.recv(_RECV)
        except socket.timeout:
            raise RedisTimeoutError(f"Timeout reading from {self.conn._host_error()}") from None
        except OSError as exc:
            raise RedisConnectionError(f"Error while reading from {self.conn._host_error()} : {exc.args}") from None
        if not data:
            raise RedisConnectionError("Connection closed by server.")
        pos = self.pos
        if pos:  # drop what is consumed (positions shift by pos)
            self.buf = self.buf[pos:] + data
            self.fed -= pos
            self.start -= pos
            self.pos = 0
        else:
            self.buf += data

    def _settle(self) -> None:
        """Move ``pos`` past the replies parsed without measuring them: to the end of what the reader was fed when
        it holds nothing more, else by their encoded lengths."""
        if self.reader is not None and not self.reader.has_data():
            self.pos = self.fed
        else:
            self.pos += sum([resp_len(r) for r in self.pending])
        self.pending = []
        if self.pos > self.fed or self.buf[self.pos - 2:self.pos] != b"\r\n":
            raise InvalidResponse("reply framing differs from RESP2 (a proxy or another protocol?)")

    def skip(self, expected: bytes) -> bool:
        """Pass over the next replies if their raw bytes are ``expected`` (True); else consume nothing (False)."""
        if self.pending:
            self._settle()
        n = len(expected)
        while True:
            buf, pos = self.buf, self.pos
            if len(buf) - pos >= n:
                if buf.startswith(expected, pos):
                    self.pos = pos + n
                    self.reader = None
                    return True
                return False
            if not expected.startswith(buf[pos:]):
                return False
            self._recv()

    def parse(self, k: int, measure: bool = True) -> list[Any]:
        """The next ``k`` replies, parsed; ``span()`` is then their raw bytes (``measure=False``: no ``span()``, their
        length is counted when the position is next needed, usually for free)."""
        reader = self.reader
        if reader is None:
            reader = self.reader = hiredis.Reader(protocolError=InvalidResponse, replyError=self.parse_error)
            self.fed = self.pos
        out = []
        append = out.append
        for _ in range(k):
            r = reader.gets(False)
            while r is False:
                fed, size = self.fed, len(self.buf)
                if fed < size:
                    m = min(size - fed, _FEED)
                    reader.feed(self.buf, fed, m)
                    self.fed = fed + m
                else:
                    self._recv()
                r = reader.gets(False)
            t = type(r)
            if t is list:
                if r and isinstance(r[0], RedisConnectionError):
                    raise r[0]
            elif t is not bytes and r is not None and isinstance(r, Exception):
                raise r
            append(r)
        if not measure:
            self.pending += out
            return out
        if self.pending:
            self._settle()
        start = self.start = self.pos
        end = start + sum([resp_len(r) for r in out])
        if end > self.fed or self.buf[end - 2:end] != b"\r\n":
            raise InvalidResponse("reply framing differs from RESP2 (a proxy or another protocol?)")
        self.pos = end
        return out

    def take(self, kept: list[bytes | None], k: int, spans: bool = True) -> tuple[list[list[Any] | None], list[bytes]]:
        """For a run of entities of ``k`` replies each: per entity None when its raw replies are ``kept[i]`` (passed
        over), else its parsed replies; and per entity those raw bytes (``spans=False``: none kept, none wanted:
        the replies are only parsed). When every entity has kept bytes, the run is first compared whole."""
        if not spans:  # one parse of the run's replies, then split per entity
            replies = self.parse(k * len(kept), False)
            if k == 1:
                return [[r] for r in replies], []
            return [replies[i:i + k] for i in range(0, len(replies), k)], []
        if kept and None not in kept and self.skip(b"".join(kept)):  # type: ignore[arg-type]
            return [None] * len(kept), kept  # type: ignore[return-value]
        if kept and not any(kept):  # nothing kept (ever-new entities): the run parsed in one call, then split
            return self._parse_run(len(kept), k)
        parsed: list[list[Any] | None] = []
        spans: list[bytes] = []
        skip, parse = self.skip, self.parse
        for raw in kept:
            if raw is not None and skip(raw):
                parsed.append(None)
                spans.append(raw)
            else:
                parsed.append(parse(k))
                spans.append(self.buf[self.start:self.pos])
        return parsed, spans

    def _parse_run(self, n: int, k: int) -> tuple[list[list[Any] | None], list[bytes]]:
        """``take`` of ``n`` entities of ``k`` replies with nothing kept: parsed at once, each entity's raw bytes
        measured from its parsed replies."""
        if self.pending:
            self._settle()
        replies = self.parse(n * k, False)
        self.pending = []
        lens = [resp_len(r) for r in replies]
        buf, start = self.buf, self.pos  # parse() only drops bytes before pos, which marks where the run began
        if k == 1:
            ends = list(itertools.accumulate(lens, initial=start))
            parsed: list[list[Any] | None] = [[r] for r in replies]
        else:
            ends = list(itertools.accumulate([sum(lens[i:i + k]) for i in range(0, len(lens), k)], initial=start))
            parsed = [replies[i:i + k] for i in range(0, len(replies), k)]
        end = ends[-1]
        if end > self.fed or buf[end - 2:end] != b"\r\n":
            raise InvalidResponse("reply framing differs from RESP2 (a proxy or another protocol?)")
        spans = list(map(buf.__getitem__, map(slice, ends, ends[1:])))
        self.start, self.pos = ends[-2] if n else start, end
        return parsed, spans

    def span(self) -> bytes:
        """The raw bytes of the replies the last ``parse`` returned."""
        return self.buf[self.start:self.pos]

    def finish(self) -> None:
        """Every reply consumed: nothing may be left over (else the connection is out of step)."""
        if self.pending:
            if self.fed < len(self.buf) and self.reader is not None:
                self.reader.feed(self.buf, self.fed, len(self.buf) - self.fed)  # has_data() then sees any leftover
                self.fed = len(self.buf)
            self._settle()
        if self.pos != len(self.buf):
            raise InvalidResponse(f"{len(self.buf) - self.pos} bytes after the last expected reply")


def open_stream(conn: Any, hiredis_parser: type | None, not_enough_data: Any) -> ReplyStream | None:
    """A stream over ``conn`` (commands sent) when it speaks RESP2 through an idle redis-py hiredis parser; else None."""
    parser = getattr(conn, "_parser", None)
    if (hiredis_parser is None or type(parser) is not hiredis_parser or parser._reader is None
            or parser._next_response is not not_enough_data or parser._reader.has_data()
            or str(getattr(conn, "protocol", 2) or 2) != "2" or conn._sock is None):
        return None
    return ReplyStream(conn)


__all__ = ["ReplyStream", "open_stream"]
