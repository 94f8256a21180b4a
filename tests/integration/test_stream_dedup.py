"""The job's bounded state on the real Flink job. The Deduplicate (Java ``DedupFunction``): copies inside and outside
the lateness bound, a quiet partition receiving a copy after another partition moved hours ahead, exact per-partition
``duplicate`` counts and live ``dedup_entries`` in the progress hash. The tile state (Java ``TileAggregateOperator``):
released on event time only (a quiet partition holds it), versions continuing after a release. Values equal the oracle."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from skewless.core import admission, layout
from skewless.core.repo import load_repository
from skewless.core.schemas import validator
from skewless.core.timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE, td_ms
from skewless.producer import GeneratedRecord
from skewless.producer.kafka_producer import produce_records
from streaming_jobs.udf import deduplicate
from tests.integration.test_streaming import (VIEW, wait_for, assert_last_hour_equals_oracle, duplicates_per_partition,
                                             read_topic, run_bounded_job)

pytestmark = pytest.mark.integration


def _record(seq: int, partition: int, eid: str, ts: int, user: str, amount: int) -> GeneratedRecord:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts // 1000)) + f".{ts % 1000:03d}Z"
    value = json.dumps({"event_id": eid, "user_id": user, "order_id": f"o-{eid}", "amount": amount, "currency": "EUR",
                        "status": "placed", "event_time": stamp}, separators=(",", ":")).encode()
    return GeneratedRecord(seq, "clean", user.encode(), value, ts + 1000, partition, eid)


def _orders(now: int) -> list[GeneratedRecord]:
    """Partition 1: an order every 5 min for 12 h (copies 25 min and 100 min behind its max, and one at the end);
    partition 0: two orders 12 h ago, a copy of the first (duplicate), then one 30 min ago and the copy again (late)."""
    base = now // MS_PER_MINUTE * MS_PER_MINUTE - 12 * MS_PER_HOUR
    p1 = [(f"e1-{i}", base + i * 5 * MS_PER_MINUTE, f"u{i % 4}", 100 + i) for i in range(144)]
    rows: list[tuple[int, str, int, str, int]] = []
    for i, row in enumerate(p1):
        rows.append((1, *row))
        if i == 60:
            rows += [(1, *p1[55]), (1, *p1[40])]  # inside the bound: duplicate; 100 min behind: late
    rows.append((1, *p1[140]))
    q, r = ("q", base - MS_PER_MINUTE, "u0", 7), ("r", base + MS_PER_MINUTE, "u1", 9)
    rows += [(0, *q), (0, *r), (0, *q), (0, "s", now - 30 * MS_PER_MINUTE, "u2", 11), (0, *q)]
    return [_record(i, p, eid, ts, user, amount) for i, (p, eid, ts, user, amount) in enumerate(rows)]


def test_bounded_dedup_state_counts_duplicates_exactly(
    flink_stream_env: Any, kafka_bootstrap: str, kafka_topic: Callable[..., str], redis_url: str, redis_client: Any,
    tmp_path: Path,
) -> None:
    repo = load_repository()
    view = repo.view(VIEW)
    source = view.source
    lateness = td_ms(source.allowed_lateness)
    assert lateness == MS_PER_HOUR  # the copies above are placed for L = 1 h
    topic = kafka_topic(partitions=2, prefix="orders-dedup")
    records = _orders(int(time.time() * 1000))
    produce_records(kafka_bootstrap, topic, records)
    raw = read_topic(kafka_bootstrap, topic, len(records))
    result = admission.admit(raw, source, validator(source.schema), key_fields=view.entity.key_names)
    dups = duplicates_per_partition(result, (0, 1))
    late = {p: sum(1 for d in result.dead_letters if d.partition == p and d.reason == "late") for p in (0, 1)}
    assert dups == {0: 1, 1: 2} and late == {0: 1, 1: 1}

    project = f"d{uuid.uuid4().hex[:8]}"
    run_bounded_job(kafka_bootstrap, topic, redis_url, project, tmp_path / "ckpt")

    progress = {int(k.decode()[2:]): json.loads(v)
                for k, v in redis_client.hgetall(layout.progress_key(project, source.name)).items() if k.startswith(b"p:")}
    assert {p: progress[p]["duplicate"] for p in (0, 1)} == dups
    assert {p: progress[p]["late"] for p in (0, 1)} == late
    # live entries: what the logic class keeps for the same rows, far below what the partition admitted
    ordered = sorted((r["partition"], r["offset"], json.loads(r["value"])) for r in raw)
    logic = deduplicate(lateness, [(p, v["event_id"], admission.parse_event_time(v["event_time"])) for p, _, v in ordered])
    final = {p: live for (p, _, _), (_, live) in zip(ordered, logic)}
    assert {p: progress[p]["dedup_entries"] for p in (0, 1)} == final
    admitted = {p: sum(1 for e in result.admitted if e["_kafka_partition"] == p) for p in (0, 1)}
    assert final[0] == 1 and 13 <= final[1] <= 25 and admitted[1] == 144  # within [M - 2L, M] of 5-min orders

    assert_last_hour_equals_oracle(redis_client, project, repo, list(result.admitted))


def _live_tiles_model(view: Any, lateness: int, seen: list[tuple[int, str, int]]) -> int:
    """Tile accumulators the release rule keeps after the admitted rows ``(partition, user, ts)``: those whose
    end + retention > min over partitions of (M(p) - L)."""
    low = min(max(ts for q, _, ts in seen if q == p) for p in {q for q, _, _ in seen}) - lateness
    tiles = {(g.tile_ms, g.retention_ms, user, ts // g.tile_ms * g.tile_ms) for g in layout.tile_groups(view) for _, user, ts in seen}
    return sum(1 for tile, retention, _, start in tiles if start + tile + retention > low)


def _tile_count(view: Any, seen: list[tuple[int, str, int]]) -> int:
    return len({(g.tile_ms, user, ts // g.tile_ms) for g in layout.tile_groups(view) for _, user, ts in seen})


def test_tile_state_released_on_event_time_and_versions_continue(
    flink_stream_env: Any, kafka_bootstrap: str, kafka_topic: Callable[..., str], redis_url: str, redis_client: Any,
    tmp_path: Path,
) -> None:
    """Partition 1 runs 3.5 h ahead while partition 0 stays quiet: no tile is released (min over partitions); an
    admissible event of partition 0 then lands on its old tile. Once partition 0 moves too, the 5-minute tiles
    past end + retention are released (the operator's live count is the rule's), and a late-but-admissible event
    for a neighbouring tile of the same user continues that tile's version (2, not a restart the CAS would refuse)."""
    from skewless.engines.flink_env import create_stream_env
    from streaming_jobs.flink_compiler import compile_repository
    from streaming_jobs.job import TILES_CLASS, JobOptions, add_source_job, java_class
    from streaming_jobs.run_view import stream_conf

    repo = load_repository()
    view = repo.view(VIEW)
    source = view.source
    lateness = td_ms(source.allowed_lateness)
    five = layout.tile_groups(view)[0]
    assert (five.tile_ms, five.retention_ms, lateness) == (5 * MS_PER_MINUTE, 130 * MS_PER_MINUTE, MS_PER_HOUR)
    now = int(time.time() * 1000)
    # 4 h ago: the store's hashes expire by wall-clock time (newest tile + H + retention), so keep the 5-minute tiles
    # of the end within their retention of now
    base = now // (5 * MS_PER_MINUTE) * (5 * MS_PER_MINUTE) - 4 * MS_PER_HOUR
    minute = MS_PER_MINUTE
    phase1 = [(0, "a1", base + minute, "u0"), (1, "b1", base + 2 * minute, "u1"), (1, "c1", base + 155 * minute, "u0"),
              (1, "z", base + 210 * minute, "u2")]
    phase2 = [(0, "a2", base + 3 * minute, "u0"), (0, "y", base + 210 * minute, "u3")]
    phase3 = [(1, "late", base + 156 * minute, "u0")]  # behind M(1) = base + 3.5 h, within L: admissible
    rows = phase1 + phase2 + phase3
    records = [_record(i, p, eid, ts, user, 10 + i) for i, (p, eid, ts, user) in enumerate(rows)]
    topic = kafka_topic(partitions=2, prefix="orders-tiles")
    project = f"t{uuid.uuid4().hex[:8]}"
    (job,) = compile_repository(repo, [VIEW])
    env, t_env = create_stream_env(parallelism=1, checkpoint_dir=tmp_path / "ckpt", checkpoint_interval="2 s",
                                   extra_conf=stream_conf("300 ms", 10_000))
    add_source_job(env, t_env, job, JobOptions(
        bootstrap=kafka_bootstrap, redis_url=redis_url, project=project, repo_path="feature_defs", topic=topic,
        stop_offsets={0: 3, 1: 4}, ns=f"sk_{uuid.uuid4().hex[:8]}", applied_from_ms=0, flush_ms=100))
    produce_records(kafka_bootstrap, topic, records[:len(phase1)])
    client = env.execute_async(f"test-tiles-{project}")
    live = lambda: java_class(TILES_CLASS).liveEntries(str(client.get_job_id()))  # noqa: E731
    seen = [(p, user, ts) for p, _, ts, user in phase1]
    want = _live_tiles_model(view, lateness, seen)
    assert want == _tile_count(view, seen)  # none released: partition 0 is quiet 3.5 h behind
    wait_for(lambda: live() == want, 120, f"{want} live tiles after phase 1", client, lambda: f"live {live()}")

    produce_records(kafka_bootstrap, topic, records[len(phase1):len(phase1) + len(phase2)])
    seen += [(p, user, ts) for p, _, ts, user in phase2]
    want = _live_tiles_model(view, lateness, seen)
    assert want == _tile_count(view, seen) - 2  # u0's and u1's 5-minute tiles at base: end + 2 h 10 min <= base + 3.5 h - 1 h
    wait_for(lambda: live() == want, 120, f"{want} live tiles after phase 2", client, lambda: f"live {live()}")

    produce_records(kafka_bootstrap, topic, records[len(phase1) + len(phase2):])
    client.get_job_execution_result().result()  # ends at the stop offsets

    raw = read_topic(kafka_bootstrap, topic, len(records))
    result = admission.admit(raw, source, validator(source.schema), key_fields=view.entity.key_names)
    assert len(result.admitted) == len(records)
    stored = layout.read_entity_hash(redis_client.hgetall(layout.entity_key(project, view, ("u0",))))
    version, _, _ = layout.decode_tile_vector(stored.tiles[five.tile_ms][base + 155 * minute], five.aggs)
    assert version == 2  # c1, then the late event after the release of the tile before it
    daily = layout.tile_groups(view)[-1]
    day = (base + 155 * minute) // MS_PER_DAY * MS_PER_DAY
    version, _, _ = layout.decode_tile_vector(stored.tiles[daily.tile_ms][day], daily.aggs)
    assert version == sum(1 for _, _, ts, user in rows if user == "u0" and ts // MS_PER_DAY * MS_PER_DAY == day)
    assert_last_hour_equals_oracle(redis_client, project, repo, list(result.admitted))
