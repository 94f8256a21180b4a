"""The stream's Deduplicate with bounded state (``dev.skewless.flink.Dedup``, run by ``DedupFunction`` in the job):
every row classified as admission.py does (rules 3-4), entries dropped only once ``M(p) - L > ts`` (event time,
per partition), so a quiet partition keeps what it still needs and live entries stay within ``[M - L - max(L, 1 s), M]``."""

from __future__ import annotations

from typing import Any

import pytest

from skewless.core import admission
from skewless.core.repo import load_repository
from skewless.core.schemas import validator
from skewless.core.timeutil import td_ms
from skewless.producer import GeneratorConfig, generate
from streaming_jobs.udf import deduplicate
from tests.support.fill import topic_records

MIN = 60_000
L = 10 * MIN


def _identity(event: dict[str, Any], source: Any) -> str:
    eid = event[source.event_id]
    return f"{type(eid).__name__}:{eid}"


def test_section_6_example_and_a_copy_after_the_horizon() -> None:
    # §6's example (ids A..E, lateness 10 min) then, on partition 0, B again once M - L passed 10:20 (late, not
    # a duplicate), and a copy of E just inside the bound (a duplicate) after its entry's neighbours were swept
    t = 10 * 60 * MIN
    rows = [(0, "A", t), (0, "B", t + 20 * MIN), (0, "C", t + 10 * MIN), (0, "D", t + 10 * MIN - 1), (0, "B", t + 20 * MIN),
            (0, "A", t), (0, "E", t + 28 * MIN), (0, "G", t + 37 * MIN), (0, "B", t + 20 * MIN), (0, "E", t + 28 * MIN),
            (0, "E", t + 35 * MIN)]
    got = [o for o, _ in deduplicate(L, rows)]
    assert got == ["admitted", "admitted", "admitted", "late", "duplicate", "late", "admitted", "admitted", "late",
                   "duplicate", "admitted"]


def test_quiet_partition_keeps_its_entries_while_others_advance() -> None:
    t = 1_700_000_000_000
    rows = [(0, "q", t), (1, "a", t)]
    rows += [(1, f"b{i}", t + i * MIN) for i in range(1, 24 * 60)]  # partition 1 moves a day ahead
    rows += [(0, "q", t), (0, None, t + 1), (0, None, t + 1)]  # partition 0 wakes up: its copy is still a duplicate
    got = deduplicate(L, rows)
    assert [o for o, _ in got[-3:]] == ["duplicate", "admitted", "duplicate"]
    assert got[-1][1] == 2  # q and the null-id event
    lives = [live for (p, _, _), (_, live) in zip(rows, got) if p == 1]
    # partition 1's entries: at most those within L + max(L, 1 s) of its max, i.e. 21 one-minute events
    assert max(lives) <= 21 and lives[-1] >= 11
    assert all(o == "admitted" for (p, _, _), (o, _) in zip(rows, got) if p == 1)


def test_equals_admission_on_generated_records_and_state_stays_bounded() -> None:
    source = load_repository().sources_by_name["orders"]
    lateness = td_ms(source.allowed_lateness)
    records, _ = generate(GeneratorConfig(count=6000, seed=5, quiet_every=700, rate=0.05))
    raw = topic_records(records)
    res = admission.admit(raw, source, validator("orders"), key_fields=("user_id",))
    want: dict[tuple[int, int], tuple[str, dict]] = {}
    for e in res.admitted:
        want[(e["_kafka_partition"], e["_offset"])] = ("admitted", e)
    for e in res.duplicates:
        want[(e["_kafka_partition"], e["_offset"])] = ("duplicate", e)
    for d in res.dead_letters:
        if d.reason == admission.LATE:
            want[(d.partition, d.offset)] = ("late", d.event)
    positions = sorted(want)
    rows = [(p, _identity(want[(p, o)][1], source), want[(p, o)][1][source.event_time]) for p, o in positions]
    got = deduplicate(lateness, rows)
    assert [g[0] for g in got] == [want[k][0] for k in positions]
    counts = {k: sum(1 for g in got if g[0] == k) for k in ("late", "duplicate", "admitted")}
    assert counts["late"] > 40 and counts["duplicate"] > 40

    # live entries: every identity a copy could still match (ts >= M - L) is kept, none older than M - L - max(L, 1 s)
    kept: dict[int, dict[str, int]] = {}
    high: dict[int, int] = {}
    for (p, ident, ts), (outcome, live) in zip(rows, got):
        if outcome == "admitted":
            kept.setdefault(p, {})[f"{ts}:{ident}"] = ts
            high[p] = max(high.get(p, ts), ts)
        needed = sum(1 for t in kept.get(p, {}).values() if t >= high[p] - lateness) if p in high else 0
        allowed = sum(1 for t in kept.get(p, {}).values() if t >= high[p] - lateness - max(lateness, 1000)) if p in high else 0
        assert needed <= live <= allowed, (p, ts, needed, live, allowed)
    total = {p: len(k) for p, k in kept.items()}
    last = {p: live for (p, _, _), (_, live) in zip(rows, got)}
    assert all(last[p] < total[p] / 3 for p in total), (last, total)


def test_negative_lateness_is_refused() -> None:
    from streaming_jobs.udf import UdfBuildError

    with pytest.raises(UdfBuildError, match="allowed lateness must be >= 0"):
        deduplicate(-1, [(0, "a", 1)])


def test_parity_check_of_the_stream_counters() -> None:
    from skewless.e2e.parity import stream_counters_check

    records = [{"partition": p, "offset": o, "timestamp_ms": 10_000_000, "value": v} for p, o, v in [
        (0, 0, b'{"event_id":"a","user_id":"u","event_time":5000000}'), (0, 1, b'{"event_id":"a","user_id":"u","event_time":5000000}'),
        (0, 2, b"not json"), (1, 0, b'{"event_id":"b","user_id":"u","event_time":9000000}'),
        (1, 1, b'{"event_id":"c","user_id":"u","event_time":1000}')]]
    source = load_repository().sources_by_name["orders"]
    result = admission.admit(records, source, key_fields=("user_id",))
    good = {0: {"duplicate": 1, "malformed": 1, "late": 0, "future": 0}, 1: {"duplicate": 0, "malformed": 0, "late": 1, "future": 0}}
    assert stream_counters_check(good, result).ok
    bad = {**good, 0: {**good[0], "duplicate": 0}}
    check = stream_counters_check(bad, result)
    assert not check.ok and "(0, 'duplicate'): (0, 1)" in check.detail


def test_partitions_spread_evenly_over_the_subtasks() -> None:
    from collections import Counter

    from streaming_jobs.udf import dedup_subtasks

    # before: Flink's hash of the Integer partition put partitions 0-3 on one of 2 subtasks (128 key groups)
    assert [s for _, s in dedup_subtasks(128, 2, 4)] == [0, 1, 0, 1]
    for parallelism, partitions in ((2, 6), (4, 8), (3, 12), (8, 64)):
        got = dedup_subtasks(128, parallelism, partitions)
        counts = Counter(s for _, s in got)
        assert max(counts.values()) - min(counts.values()) <= 2 and len(counts) == parallelism, (parallelism, counts)
        assert [k % (1 << 20) for k, _ in got] == list(range(partitions))  # one key per partition, a function of p
    assert dedup_subtasks(256, 2, 4)[0][0] == dedup_subtasks(256, 4, 4)[0][0]  # the key ignores the parallelism
