"""A restarted stream job that Kafka's retention outran (streaming_jobs.job.lost_partitions): the partitions whose next
record to apply is gone, so the windows before the restart read `incomplete` instead of plausible numbers."""

from __future__ import annotations

from skewless.core.staleness import Progress
from streaming_jobs.job import lost_partitions


def _progress(**offsets: int) -> list[Progress]:
    return [Progress(p[1:], o, 1, 1, "e") for p, o in offsets.items()]


def test_a_partition_whose_next_offset_was_deleted_is_lost() -> None:
    assert lost_partitions(_progress(p0=99, p1=49), {0: 100, 1: 80}) == {1: (50, 80)}


def test_nothing_is_lost_when_the_next_offset_is_still_held() -> None:
    assert lost_partitions(_progress(p0=99, p1=49), {0: 0, 1: 50}) == {}


def test_a_first_start_loses_nothing_and_an_unapplied_partition_counts_from_zero() -> None:
    assert lost_partitions([], {0: 500}) == {}
    assert lost_partitions(_progress(p0=9), {0: 0, 1: 3}) == {1: (0, 3)}
