"""Contract time functions: UTC epoch ms, flooring, default tiles, window starts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from skewless.core.timeutil import (
    MS_PER_DAY,
    MS_PER_HOUR,
    MS_PER_MINUTE,
    default_tile_ms,
    floor_ms,
    from_epoch_ms,
    td_ms,
    to_epoch_ms,
    window_start_ms,
)


def test_naive_is_utc_and_aware_is_converted() -> None:
    assert to_epoch_ms(datetime(2024, 1, 1)) == 1_704_067_200_000
    assert to_epoch_ms(datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))) == 1_704_067_200_000
    assert to_epoch_ms(1234) == 1234


def test_sub_millisecond_is_floored_toward_the_past() -> None:
    assert to_epoch_ms(datetime(2024, 1, 1, 0, 0, 0, 999)) == 1_704_067_200_000
    assert to_epoch_ms(datetime(1969, 12, 31, 23, 59, 59, 999_500)) == -1  # -0.5 ms floors to -1
    assert td_ms(timedelta(microseconds=-1500)) == -2
    assert td_ms(timedelta(microseconds=1500)) == 1


def test_round_trip_and_type_errors() -> None:
    assert from_epoch_ms(1_704_067_200_123) == datetime(2024, 1, 1, 0, 0, 0, 123_000, tzinfo=timezone.utc)
    with pytest.raises(TypeError):
        to_epoch_ms(True)
    with pytest.raises(TypeError):
        to_epoch_ms("2024-01-01")  # type: ignore[arg-type]


def test_floor_is_epoch_aligned_and_correct_for_negatives() -> None:
    assert floor_ms(10, 5) == 10
    assert floor_ms(14, 5) == 10
    assert floor_ms(-1, 5) == -5


@pytest.mark.parametrize("width, tile", [
    (MS_PER_MINUTE, 5 * MS_PER_MINUTE),
    (10 * MS_PER_MINUTE, 5 * MS_PER_MINUTE),
    (12 * MS_PER_HOUR - 1, 5 * MS_PER_MINUTE),
    (12 * MS_PER_HOUR, MS_PER_HOUR),
    (MS_PER_DAY, MS_PER_HOUR),
    (MS_PER_DAY + MS_PER_HOUR, MS_PER_DAY),
    (7 * MS_PER_DAY, MS_PER_DAY),  # every batch-served window has daily tiles
    (365 * MS_PER_DAY, MS_PER_DAY),
    (None, MS_PER_DAY),
])
def test_default_tiles(width, tile) -> None:
    assert default_tile_ms(width) == tile


def test_window_start_is_rounded_down_to_the_tile() -> None:
    t = 10 * MS_PER_HOUR + 7 * MS_PER_MINUTE  # 10:07
    assert window_start_ms(t, MS_PER_HOUR, 5 * MS_PER_MINUTE) == 9 * MS_PER_HOUR + 5 * MS_PER_MINUTE  # 09:05
    assert window_start_ms(10 * MS_PER_HOUR, MS_PER_HOUR, 5 * MS_PER_MINUTE) == 9 * MS_PER_HOUR
    assert window_start_ms(t, None, MS_PER_DAY) is None
