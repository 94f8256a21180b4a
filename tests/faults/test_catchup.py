"""Catch-up after downtime (`make test-faults`, marked slow): a job stopped with a savepoint while an hour of orders
arrives, then restored: while it works through the backlog every read says `stale` with the age of the partition
furthest behind (docs/semantics.md §11, from the progress read in the same round trip) — also while one partition
is already caught up and the others are an hour behind — then `present` once it is within the view's SLA, with the
oracle's values (nothing lost or counted twice across the stop).

Real Kafka and Redis (the suite's containers) and the compiled job on the local MiniCluster, as the recovery test.
"""

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
from skewless.core.staleness import LOG_END_FIELD
from skewless.core.timeutil import MS_PER_MINUTE, td_ms
from skewless.producer import GeneratorConfig, generate
from skewless.producer.kafka_producer import produce_records
from skewless.serving.online import OnlineStore
from streaming_jobs.savepoint import check_restorable, stop_with_savepoint
from tests.integration.test_streaming import assert_last_hour_equals_oracle, read_topic, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

VIEW = "user_order_stats"
FEATURE = "user_order_stats:user_orders_last_1h"
HOUR_MS = 60 * MS_PER_MINUTE


def _applied(redis_client: Any, project: str) -> int:
    fields = redis_client.hgetall(layout.progress_key(project, "orders"))
    return sum(json.loads(v)["records"] for k, v in fields.items() if k.startswith(b"p:"))


def head_and_backlog(source: Any, now: int, *, users: int, head_count: int, backlog_count: int,
                     seed: int) -> tuple[list[Any], list[Any]]:
    """Generated records of 3 partitions: ``head_count`` over the hour two hours before ``now`` (one a second),
    then ``backlog_count`` over the last hour (seeds ``seed`` and ``seed + 1``)."""
    gen = {"partitions": 3, "users": users, "allowed_lateness_ms": td_ms(source.allowed_lateness),
           "clock_skew_ms": td_ms(source.clock_skew_tolerance)}
    head, _ = generate(GeneratorConfig(count=head_count, rate=1.0, seed=seed, start_ms=now - 2 * HOUR_MS, **gen))
    backlog, _ = generate(GeneratorConfig(count=backlog_count, rate=backlog_count / 3540.0, seed=seed + 1,
                                          start_ms=now - HOUR_MS, **gen))
    return head, backlog


def drained_first(backlog: list[Any], keep: int = 20) -> list[Any]:
    """The backlog with only the newest ``keep`` records of partition 0: partition 0 is drained with its first fetch,
    mostly while partitions 1 and 2 still hold most of an hour (the case a maximum over partitions read `present`)."""
    newest = sorted((r for r in backlog if r.partition == 0), key=lambda r: r.timestamp_ms)[-keep:]
    kept = {id(r) for r in newest}
    return [r for r in backlog if r.partition != 0 or id(r) in kept]


def _start(job: Any, kafka_bootstrap: str, redis_url: str, topic: str, project: str, ns: str, ckpt: Path,
           savepoint: str | None, applied_from_ms: int | None) -> Any:
    """The compiled job on the local MiniCluster, restored from ``savepoint`` if given (``applied_from_ms`` None:
    from the topic and the progress, as a submitted job)."""
    from skewless.engines.flink_env import create_stream_env
    from streaming_jobs.job import JobOptions, add_source_job
    from streaming_jobs.run_view import stream_conf

    conf = stream_conf("300 ms", 10_000)
    if savepoint is not None:
        conf["execution.savepoint.path"] = savepoint
    env, t_env = create_stream_env(parallelism=1, checkpoint_dir=ckpt, checkpoint_interval="2 s", extra_conf=conf)
    add_source_job(env, t_env, job, JobOptions(bootstrap=kafka_bootstrap, redis_url=redis_url, project=project,
                                               repo_path="feature_defs", topic=topic, ns=ns, group=f"g-{project}",
                                               applied_from_ms=applied_from_ms, flush_ms=100))
    return env.execute_async(f"test-catchup-{project}")


def test_a_restarted_job_reads_stale_with_its_age_while_catching_up_then_present(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], redis_url: str, redis_client: Any, tmp_path: Path,
) -> None:
    from streaming_jobs.flink_compiler import compile_repository

    repo = load_repository()
    view = repo.view(VIEW)
    source = view.source
    sla_ms = td_ms(view.freshness_sla)
    topic = kafka_topic(partitions=3, prefix="orders-catchup")
    now = int(time.time() * 1000)
    head, _ = head_and_backlog(source, now, users=30, head_count=600, backlog_count=1, seed=31)
    project, ns = f"c{uuid.uuid4().hex[:8]}", f"sk_{uuid.uuid4().hex[:8]}"
    (job,) = compile_repository(repo, [VIEW])

    def start(savepoint: str | None) -> Any:
        return _start(job, kafka_bootstrap, redis_url, topic, project, ns, tmp_path / "ckpt", savepoint, 0)

    produce_records(kafka_bootstrap, topic, head)
    client = start(None)
    wait_for(lambda: _applied(redis_client, project) >= len(head), 180, "the head in Redis", client)
    savepoint = stop_with_savepoint(client, (tmp_path / "savepoints").resolve().as_uri())
    # the hour the job was down, ending a minute before now (so that partition 0, drained first, is within the SLA)
    _, backlog = head_and_backlog(source, int(time.time() * 1000), users=30, head_count=1, backlog_count=30_000, seed=31)
    backlog = drained_first(backlog)
    delivered = produce_records(kafka_bootstrap, topic, backlog).positions
    last = {p: max(o for q, o in delivered.values() if q == p) for p in range(3)}  # each partition's last offset
    check_restorable(savepoint, [source.name])
    store = OnlineStore(repo, redis_client, project)
    users = sorted({r.key.decode() for r in head if r.key})[:5]
    # (applied, status, age, read instant, {partition: (offset, newest applied event)} of the same round trip)
    samples: list[tuple[int, str, int | None, int, dict[int, tuple[int, int]]]] = []
    client = start(savepoint)
    try:
        total = len(head) + len(backlog)
        deadline = time.monotonic() + 300
        while (done := _applied(redis_client, project)) < total and time.monotonic() < deadline:
            if done > len(head):  # the restored job wrote
                got = store.get_online_features({"user_id": users}, [FEATURE])
                parts = {int(p): (v["offset"], v["max_event_ms"]) for p, v in got.progress.get(source.name, {}).items()}
                column = got.columns[0]
                samples.append((done, got.statuses[column][0], got.ages_ms[column][0], got.now_ms, parts))
            time.sleep(0.05)
        assert _applied(redis_client, project) >= total, f"the backlog was not applied in 300 s: {samples[-3:]}"
        time.sleep(1.5)  # the last flush timer
        final = store.get_online_features({"user_id": users}, [FEATURE])
        check = json.loads(redis_client.hget(layout.progress_key(project, source.name), LOG_END_FIELD))
        checked_by = int(time.time() * 1000)
        time.sleep(2.5)  # the job checks again every second
        again = json.loads(redis_client.hget(layout.progress_key(project, source.name), LOG_END_FIELD))
    finally:
        client.cancel().result()

    stale = [s for s in samples if s[1] == "stale"]
    assert stale, f"no read during the catch-up said stale: {samples[:5]}"
    for _, status, age, now_ms, parts in samples:
        assert set(parts) == {0, 1, 2} and age is not None, (status, age, parts)
        # a partition behind its log end counts up to its newest applied event, one caught up at least that far: the
        # age is at least the oldest behind partition's and at most the oldest newest event's
        behind = [event for p, (offset, event) in parts.items() if offset < last[p]]
        assert (now_ms - min(behind) if behind else 0) <= age <= now_ms - min(e for _, e in parts.values()), (age, parts)
        assert status == ("stale" if age > sla_ms else "present"), (status, age, sla_ms)
    # the case of the failed run: a partition drained, its newest event within the SLA (a maximum over partitions
    # would read `present`), another more than the SLA behind: stale, never present. Which partition the consumer
    # drains first is its choice (partition 0's tiny backlog, or a whole one of the others): any counts
    drained = [s for s in samples
               if any(o == last[p] and s[3] - e <= sla_ms for p, (o, e) in s[4].items())
               and any(o < last[p] and s[3] - e > sla_ms for p, (o, e) in s[4].items())]
    assert drained, f"no read while a partition was drained and another behind: {[(s[0], s[4]) for s in samples]}"
    assert {s[1] for s in drained} == {"stale"}, [s[:3] for s in drained if s[1] != "stale"]
    # the job's offset check: every partition's log end, sent within the last seconds
    assert check["partitions"] == {str(p): [0, last[p] + 1] for p in range(3)}, check
    assert checked_by - 30_000 < check["checked_ms"] <= checked_by < again["checked_ms"], (check, checked_by, again)
    column = final.columns[0]
    assert set(final.statuses[column]) == {"present"} and all(a <= sla_ms for a in final.ages_ms[column]), final
    raw = read_topic(kafka_bootstrap, topic, total)
    result = admission.admit(raw, source, validator(source.schema), key_fields=view.entity.key_names)
    assert_last_hour_equals_oracle(redis_client, project, repo, list(result.admitted))
    print(f"{len(samples)} reads during the catch-up, {len(stale)} stale (ages {stale[0][2]} .. {stale[-1][2]} ms), "
          f"{len(drained)} of them with a partition drained and another behind")


def test_a_job_stopped_past_the_topics_retention_reads_incomplete_not_plausible_numbers(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], redis_url: str, redis_client: Any, tmp_path: Path,
) -> None:
    """Stopped with a savepoint; while it is down, retention deletes records it never applied (Kafka's
    DeleteRecords moves the log start as retention does). Restored, the job says so in one line, raises the views'
    applied_from_ms to its restart, and the windows before it read `incomplete` (null), never a sum without the
    lost records; `skewless backfill` + `skewless materialize` are what cover them again."""
    from confluent_kafka import TopicPartition

    from skewless.engines.kafka import admin_client
    from streaming_jobs.flink_compiler import compile_repository

    repo = load_repository()
    view = repo.view(VIEW)
    source = view.source
    topic = kafka_topic(partitions=3, prefix="orders-retention")
    now = int(time.time() * 1000)
    head, backlog = head_and_backlog(source, now, users=20, head_count=300, backlog_count=3000, seed=41)
    project, ns = f"c{uuid.uuid4().hex[:8]}", f"sk_{uuid.uuid4().hex[:8]}"
    (job,) = compile_repository(repo, [VIEW])

    def start(savepoint: str | None) -> Any:  # applied_from_ms from the topic and the progress
        return _start(job, kafka_bootstrap, redis_url, topic, project, ns, tmp_path / "ckpt", savepoint, None)

    produce_records(kafka_bootstrap, topic, head)
    client = start(None)
    wait_for(lambda: _applied(redis_client, project) >= len(head), 180, "the head in Redis", client)
    meta = layout.view_meta_key(project, view)
    assert redis_client.hget(meta, "applied_from_ms") == b"0"  # read from offset 0: every window complete
    savepoint = stop_with_savepoint(client, (tmp_path / "savepoints").resolve().as_uri())
    positions = produce_records(kafka_bootstrap, topic, backlog).positions
    # retention passes the head and the first half of the backlog on every partition
    cut = {p: sum(1 for r in head if r.partition == p) + sum(1 for r in backlog[:len(backlog) // 2] if r.partition == p)
           for p in range(3)}
    admin = admin_client(kafka_bootstrap)  # kept referenced until its futures complete
    futures = admin.delete_records([TopicPartition(topic, p, o) for p, o in cut.items()])
    for f in futures.values():
        f.result(timeout=30)
    restart_ms = int(time.time() * 1000)
    client = start(savepoint)
    try:
        kept = sum(sum(1 for r in backlog if r.partition == p) + sum(1 for r in head if r.partition == p) - o
                   for p, o in cut.items())
        wait_for(lambda: _applied(redis_client, project) >= len(head) + kept, 180, "the kept records in Redis", client)
        time.sleep(1.5)  # the last flush timer
    finally:
        client.cancel().result()
    applied_from = int(redis_client.hget(meta, "applied_from_ms"))
    assert applied_from >= restart_ms, (applied_from, restart_ms)  # raised to the restart
    users = sorted({r.key.decode() for r in backlog if r.key})
    got = OnlineStore(repo, redis_client, project).get_online_features({"user_id": users}, [FEATURE])
    column = got.columns[0]
    assert set(got.statuses[column]) == {"incomplete"}, got.statuses  # the last hour began before the restart
    assert all(v is None for v in got.values[column])  # null, never a sum without the lost records
    print(f"positions {positions}, deleted below {cut}, applied_from_ms {applied_from}")
