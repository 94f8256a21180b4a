"""The staleness rule over progress hashes (docs/semantics.md §11): the age is the partition furthest behind's, a
caught-up quiet partition counts as current up to the job's offset check, and a hash without the check (a job of
an earlier version) never reads `present` because one partition is current."""

from __future__ import annotations

import json
from datetime import timedelta

from skewless import Agg, Aggregation, Entity, EventSource, FeatureView, Window
from skewless.core.staleness import (LOG_END_FIELD, PRESENT, STALE, newest_applied_ms, parse_progress,
                                     stream_status)
from skewless.core.timeutil import MS_PER_HOUR, MS_PER_MINUTE

NOW = 1_704_100_000_000
SLA = 5 * MS_PER_MINUTE
USER = Entity("user", {"user_id": "string"})
ORDERS = EventSource("orders", "orders", "raw.orders", topic="orders", allowed_lateness=timedelta(minutes=10))
VIEW = FeatureView("v", USER, ORDERS, [Aggregation("n", Agg.COUNT, None, Window.hours(1))],
                   freshness_sla=timedelta(minutes=5))


def part(offset: int, max_event_ms: int | None, epoch: str = "E") -> bytes:
    return json.dumps({"epoch": epoch, "max_event_ms": max_event_ms, "offset": offset, "records": offset + 1,
                       "written_ms": NOW - 500}).encode()


def log_end(checked_ms: int, parts: dict[int, tuple[int, int]]) -> bytes:
    return json.dumps({"checked_ms": checked_ms, "partitions": {str(p): list(v) for p, v in parts.items()}}).encode()


def applied(fields: dict) -> int | None:
    return newest_applied_ms(parse_progress(fields), "E")


def test_one_caught_up_partition_does_not_hide_the_others_backlog() -> None:
    # the failed catch-up read: partition 0 drained its backlog first, 1 and 2 are an hour behind
    fields = {b"p:0": part(999, NOW - 94_000), b"p:1": part(20, NOW - MS_PER_HOUR), b"p:2": part(25, NOW - MS_PER_HOUR + 7)}
    assert applied(fields) == NOW - MS_PER_HOUR
    assert stream_status(VIEW, fields, "E", NOW) == STALE
    # with the job's offset check: 1 and 2 are below their log ends, so their newest events bound the age
    fields[LOG_END_FIELD.encode()] = log_end(NOW - 300, {0: (0, 1000), 1: (0, 4000), 2: (0, 4100)})
    assert applied(fields) == NOW - MS_PER_HOUR
    assert stream_status(VIEW, fields, "E", NOW) == STALE


def test_a_quiet_partition_at_its_log_end_counts_as_current_up_to_the_check() -> None:
    fields = {b"p:0": part(999, NOW - 20_000), b"p:1": part(49, NOW - 3 * MS_PER_HOUR)}  # 1: quiet for 3 h
    assert stream_status(VIEW, fields, "E", NOW) == STALE  # no check: unsure, never present
    fields[LOG_END_FIELD.encode()] = log_end(NOW - 800, {0: (0, 1200), 1: (0, 50)})
    assert applied(fields) == NOW - 20_000  # 1 is current up to the check (NOW - 800), 0 (behind) up to its newest event
    assert stream_status(VIEW, fields, "E", NOW) == PRESENT
    # the check itself gets old (the job stopped checking): the quiet partition's age grows with it
    fields[LOG_END_FIELD.encode()] = log_end(NOW - 6 * MS_PER_MINUTE, {0: (0, 1200), 1: (0, 50)})
    assert applied(fields) == NOW - 6 * MS_PER_MINUTE
    assert stream_status(VIEW, fields, "E", NOW) == STALE
    # one record more in the quiet partition's log than it applied: behind, its newest event counts
    fields[LOG_END_FIELD.encode()] = log_end(NOW - 800, {0: (0, 1200), 1: (0, 51)})
    assert applied(fields) == NOW - 3 * MS_PER_HOUR


def test_partitions_named_by_the_check_without_progress() -> None:
    fields = {b"p:0": part(9, NOW - 1000), LOG_END_FIELD.encode(): log_end(NOW - 200, {0: (0, 10), 1: (0, 7)})}
    assert applied(fields) is None  # partition 1 holds records the job never applied
    assert stream_status(VIEW, fields, "E", NOW) == STALE
    fields[LOG_END_FIELD.encode()] = log_end(NOW - 200, {0: (0, 10), 1: (7, 7)})  # 1 holds nothing (empty or expired)
    assert applied(fields) == NOW - 200  # both current up to the check
    fields[LOG_END_FIELD.encode()] = log_end(NOW - 200, {0: (0, 10), 1: (0, 0)})
    assert stream_status(VIEW, fields, "E", NOW) == PRESENT


def test_a_partition_of_another_epoch_applied_nothing_in_this_one() -> None:
    fields = {b"p:0": part(9, NOW - 1000), b"p:1": part(7, NOW - 1000, epoch="OLD")}
    assert applied(fields) is None
    fields[LOG_END_FIELD.encode()] = log_end(NOW - 200, {0: (0, 10), 1: (0, 8)})
    assert applied(fields) is None  # its offset 7 was applied to another store
    assert newest_applied_ms(parse_progress(fields), None) == NOW - 200  # any epoch: caught up


def test_an_unreadable_check_is_ignored() -> None:
    base = {b"p:0": part(9, NOW - 1000), b"p:1": part(3, NOW - MS_PER_HOUR)}
    for bad in (b"{", b"[]", b'{"checked_ms": "x", "partitions": {}}', b'{"checked_ms": 1, "partitions": {"1": 5}}'):
        fields = {**base, LOG_END_FIELD.encode(): bad}
        assert applied(fields) == NOW - MS_PER_HOUR, bad
    assert applied({}) is None
    text_keys = {"p:0": part(9, NOW - 1000).decode(), LOG_END_FIELD: log_end(NOW, {0: (0, 10)}).decode()}
    assert applied(text_keys) == NOW
