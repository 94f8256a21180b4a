"""Time as the contract defines it: UTC, integer milliseconds since the Unix epoch.

Naive datetimes are taken as UTC, aware ones converted; finer precision is floored to the millisecond (toward the past, as Java's Instant does).
Every engine adapter converts through these functions, so all paths agree on the same integer.
"""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta, timezone

MS_PER_SECOND = 1000
MS_PER_MINUTE = 60 * MS_PER_SECOND
MS_PER_HOUR = 60 * MS_PER_MINUTE
MS_PER_DAY = 24 * MS_PER_HOUR
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def td_ms(delta: timedelta) -> int:
    """A timedelta as whole milliseconds, floored like Java's ``Instant.toEpochMilli`` (so -1.5 ms is -2)."""
    return (delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds) // 1000


def to_epoch_ms(value: datetime | int) -> int:
    """A datetime (naive = UTC) or an int already in epoch ms, as epoch ms (floored to the ms)."""
    if isinstance(value, bool):
        raise TypeError("a bool is not a timestamp")
    if isinstance(value, int):
        return value
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime or epoch milliseconds, got {type(value).__name__}: {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return td_ms(value - _EPOCH)


def from_epoch_ms(ms: int) -> datetime:
    """Epoch ms as an aware UTC datetime."""
    return _EPOCH + timedelta(milliseconds=ms)


def iso_utc(ms: int | None) -> str:
    """Epoch ms as ISO-8601 UTC for a person to read: ``2026-12-01T00:00:00Z``, with ``.mmm`` only when the
    instant has milliseconds (``2026-12-01T10:17:22.671Z``); ``-`` for None."""
    if ms is None:
        return "-"
    text = from_epoch_ms(ms).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{ms % 1000:03d}Z" if ms % 1000 else f"{text}Z"


def floor_ms(ms: int, step_ms: int) -> int:
    """Largest multiple of ``step_ms`` (epoch-aligned) that is <= ``ms``; correct for negative ms too."""
    return (ms // step_ms) * step_ms


def default_tile_ms(width_ms: int | None) -> int:
    """The contract's default tile for a window width: 1 day for W > 1 day (every batch-served window,
    and lifetime), 1 hour for 12 hours <= W <= 1 day, else 5 minutes."""
    if width_ms is None or width_ms > MS_PER_DAY:
        return MS_PER_DAY
    if width_ms >= 12 * MS_PER_HOUR:
        return MS_PER_HOUR
    return 5 * MS_PER_MINUTE


def window_start_ms(as_of_ms: int, width_ms: int | None, tile_ms: int) -> int | None:
    """First instant of the window of width W with tile H as of T: ``floor(T - W, H)``; None for lifetime.

    The window is ``[window_start_ms, T)``: exact at the head, rounded down to the tile at the tail.
    """
    if width_ms is None:
        return None
    return floor_ms(as_of_ms - width_ms, tile_ms)


def iso_ms(ms: int) -> str:
    """Epoch ms as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (the example schemas' event-time format)."""
    return from_epoch_ms(ms).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def now_ms() -> int:
    """The wall clock as epoch ms."""
    return time.time_ns() // 1_000_000


def day_start_ms(day: date) -> int:
    """00:00 UTC of ``day`` as epoch ms."""
    return to_epoch_ms(datetime(day.year, day.month, day.day, tzinfo=timezone.utc))


def format_duration(ms: int | None) -> str:
    """Compact duration: ``365d``, ``1h``, ``5m``, ``1d12h``, ``lifetime`` for None."""
    if ms is None:
        return "lifetime"
    if ms == 0:
        return "0s"
    sign, ms = ("-", -ms) if ms < 0 else ("", ms)
    parts = []
    for unit, size in (("d", MS_PER_DAY), ("h", MS_PER_HOUR), ("m", MS_PER_MINUTE), ("s", MS_PER_SECOND), ("ms", 1)):
        if ms >= size:
            parts.append(f"{ms // size}{unit}")
            ms %= size
    return sign + "".join(parts)
