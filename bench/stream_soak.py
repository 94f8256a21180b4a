"""Soak benchmark (not a test): does the streaming job's state stay bounded as event time runs for months?

A fixed population of users sends orders at a steady rate over 60 simulated days (parity's rates of duplicates,
late, future and malformed records: the generator's defaults), produced in phases into a local Kafka while the job is
stopped with a savepoint (then restored: one job's state throughout, each phase applied from a full topic rather
than at the producer's pace), configured as ``skewless submit`` configures it (``run_view.py``'s defaults: parallelism 1, checkpoints
every 10 s, mini-batch 2 s, hashmap state backend; 3 partitions). The event time advances with the records, so
60 days pass in minutes. The 60 days lie in the near future (from 10 minutes after the start; the topic accepts
such record timestamps): the online store expires an entity's hash by wall-clock time (newest tile + H + retention),
so days in the past would be written to hashes that expire at once while the last days' hashes stay — every phase
must pay the same Redis work (live hashes, old tiles pruned), as a job in production does. Before the job, a
warm-up job over ``WARMUP`` other records runs in the same JVM (another project), so day 7 is not measured on a
cold JVM. After simulated days 7, 30 and 60 it reports:

- ``stream_state_bytes_day{7,30,60}``: the size on disk of a checkpoint begun after the job applied every record up
  to that day and the next ``NUDGE_MS`` (2 h; so that its event-time clock passed the mark, see ``run``) (the
  hashmap backend writes full checkpoints: the whole state);
- ``stream_state_entries_day{7,30,60}``: counted by operator counters, not the State Processor API: live tile
  accumulators (the tile operator's counter, gauge ``skewless_tile_entries``, read in this JVM:
  ``TileAggregateOperator.liveEntries``) + live de-duplication entries (the Deduplicate's count, progress field
  ``dedup_entries``, summed over partitions);
- ``stream_soak_events_per_s_day{7,30,60}``: the rate over the 7 simulated days before the mark (equal phases),
  from the progress hash's record count between two of the job's progress writes: the first past 10% of the
  phase and the last before the one covering it (start-up and the idle tail excluded; ``_phase_rate``).

``stream_soak_events_per_s`` is the day-60 rate. Goals: bytes at day 60 <= 1.2x day 7, rate at day 60 >= 0.9x
day 7, and at the end every sampled user's stream-served ``user_orders_last_1h`` equals the oracle over the
admitted events (``stream_soak_oracle_mismatches`` = 0).

Environment: ``SKEWLESS_SOAK_EVENTS`` (default 3000000), ``SKEWLESS_SOAK_USERS`` (20000), ``SKEWLESS_SOAK_SAMPLE``
(300 users).
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from bench.stream import local_services, stream_progress, tear_down

EVENTS = int(os.environ.get("SKEWLESS_SOAK_EVENTS", "3000000"))
WARMUP = min(EVENTS // 10, 200_000)
USERS = int(os.environ.get("SKEWLESS_SOAK_USERS", "20000"))
SAMPLE = int(os.environ.get("SKEWLESS_SOAK_SAMPLE", "300"))
DAYS = 60
MARKS = (7, 30, 60)
MEASURED_DAYS = 7  # each mark's rate: over the 7 simulated days before it
NUDGE_MS = 2 * 3_600_000  # the event time applied past each mark before its state is counted
PARTITIONS = 3  # what `skewless submit` creates
PROJECT = "soak"
VIEW = "user_order_stats"
FEATURE = "user_orders_last_1h"  # stream-served
os.environ.setdefault("JVM_ARGS", "-Xmx1536m -XX:+UseParallelGC")  # as bench/stream.py


def _start_job(bootstrap: str, url: str, topic: str, ckpt: Path, project: str = PROJECT,
               savepoint: str | None = None) -> Any:
    """The job as ``skewless submit`` starts it (run_view.py's arguments and defaults; ``--from-savepoint``), run
    asynchronously here."""
    from skewless.core.repo import load_repository
    from skewless.engines.flink_env import create_stream_env
    from streaming_jobs.flink_compiler import compile_repository
    from streaming_jobs.job import JobOptions, add_source_job
    from streaming_jobs.run_view import parse_args, stream_conf

    args = parse_args(["--view", VIEW, "--starting-offsets", "earliest", "--bootstrap", bootstrap, "--redis", url,
                       "--project", project, "--topic", topic, "--checkpoint-dir", str(ckpt)])
    jobs = compile_repository(load_repository(args.repo), [VIEW])
    env, t_env = create_stream_env(parallelism=args.parallelism or 1, checkpoint_dir=args.checkpoint_dir,
                                   checkpoint_interval=args.checkpoint_interval,
                                   extra_conf={**stream_conf(args.mini_batch_latency, args.mini_batch_size,
                                                             args.buffer_timeout_ms), "state.backend.type": "hashmap",
                                               **({"execution.savepoint.path": savepoint} if savepoint else {})})
    for job in jobs:
        add_source_job(env, t_env, job, JobOptions(
            bootstrap=args.bootstrap, redis_url=args.redis, project=args.project, repo_path=args.repo, topic=args.topic,
            starting_offsets=args.starting_offsets, group=f"soak-{uuid.uuid4().hex[:6]}", flush_ms=args.flush_ms))
    return env.execute_async(f"bench-soak-{topic}")


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, client: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        status = str(client.get_job_status().result())
        if any(s in status for s in ("FAILED", "CANCELED", "FINISHED")):
            raise RuntimeError(f"the soak job ended ({status}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


def _checkpoints(ckpt: Path) -> list[Path]:
    return sorted((p.parent for p in ckpt.glob("*/chk-*/_metadata")), key=lambda p: int(p.name.split("-")[1]))


def _newest_checkpoint_bytes(ckpt: Path) -> tuple[Path, int]:
    """The newest completed checkpoint and its size on disk (again if Flink deleted it while it was read)."""
    for _ in range(5):
        chk = _checkpoints(ckpt)[-1]
        try:
            return chk, sum(f.stat().st_size for f in chk.rglob("*") if f.is_file())
        except FileNotFoundError:
            continue
    raise RuntimeError(f"checkpoints under {ckpt} kept disappearing while read")


def _phase_rate(samples: list[tuple[float, int]], lo: int, hi: int) -> float:
    """events/s of the phase [lo, hi] between two progress writes: the first past 10% of it and the last one before
    the write that covers it (the job writes progress once per mini-batch, every 2 s while busy; the last mini-batch
    waits for its timer with the source idle, so it is left out), or that one if there is none in between."""
    # the samples where the count changed: each within a sampling interval after its write (the first sample's count
    # may be seconds older than the sample: it does not count)
    writes = [(t, n) for (t, n), (_, before) in zip(samples[1:], samples) if n != before]
    t_a, n_a = next((t, n) for t, n in writes if n > lo + (hi - lo) // 10)
    inner = [n for _, n in writes if n_a < n < hi]
    n_b = max(inner) if inner else next(n for _, n in writes if n >= hi)
    t_b = next(t for t, n in writes if n == n_b)
    return (n_b - n_a) / max(t_b - t_a, 1e-3)


def _oracle_mismatches(url: str, records: list, positions: dict[int, tuple[int, int]], sample: int) -> tuple[int, int]:
    """(users read, mismatches): the stream-served feature of sampled users read at the last admitted event + 1 ms
    against the oracle over the admitted events (admission.py over every produced record)."""
    import redis
    from skewless.core import admission, oracle
    from skewless.core.repo import load_repository
    from skewless.core.schemas import validator
    from tests.support.reference_reader import read_windowed

    repo = load_repository()
    view = repo.view(VIEW)
    raw = sorted(({"partition": positions[r.seq][0], "offset": positions[r.seq][1], "timestamp_ms": r.timestamp_ms,
                   "value": r.value, "key": r.key} for r in records), key=lambda x: (x["partition"], x["offset"]))
    admitted = list(admission.admit(raw, view.source, validator(view.source.schema), key_fields=view.entity.key_names).admitted)
    end = max(e["event_time"] for e in admitted) + 1
    recent = sorted({e["user_id"] for e in admitted if e["event_time"] >= end - 2 * 3_600_000})
    users = sorted(set(random.Random(5).sample(recent, min(len(recent), sample // 2)))
                   | set(random.Random(6).sample(sorted({e["user_id"] for e in admitted}), sample // 2)))
    r = redis.Redis.from_url(url)
    got = read_windowed(r, PROJECT, [f"{VIEW}:{FEATURE}"], users, repo=repo, now_ms=end)
    mine = {}
    for e in admitted:
        if e["user_id"] in set(users) and e["event_time"] >= end - 2 * 3_600_000:
            mine.setdefault(e["user_id"], []).append(e)
    bad = 0
    for i, user in enumerate(users):
        want = oracle.feature_value(view, FEATURE, mine.get(user, []), (user,), end, now_read=True)
        bad += got.entities[VIEW][i].features[FEATURE] != (want, "present")
    return len(users), bad


def accept_future_timestamps(bootstrap: str, topics: list[str]) -> None:
    """Let ``topics`` take record timestamps of any future time (Kafka refuses those over an hour ahead by default)."""
    from confluent_kafka.admin import ConfigResource

    from skewless.engines.kafka import admin_client

    admin = admin_client(bootstrap)
    futures = admin.alter_configs([ConfigResource("topic", t, set_config={"message.timestamp.after.max.ms": str(2**63 - 1)})
                                   for t in topics])
    for f in futures.values():
        f.result(timeout=30)


def run() -> dict[str, Any]:
    import redis
    from skewless.producer import GeneratorConfig, generate
    from skewless.producer.kafka_producer import produce_records
    from skewless.stack.kafka import create_topics
    from streaming_jobs.job import TILES_CLASS, java_class
    from streaming_jobs.savepoint import stop_with_savepoint

    root = Path(tempfile.mkdtemp(prefix="skewless-bench-soak-"))
    bootstrap, url, stops = local_services(root)
    client = None
    day = 86_400_000
    try:
        # in the near future: every phase writes to live hashes (see the module's doc)
        start = int(time.time() * 1000) + 600_000
        rate = EVENTS / (DAYS * 86_400.0)
        count = EVENTS + round(rate * NUDGE_MS / 1000)  # and the NUDGE_MS after day 60
        print(f"soak: generating {count} records", file=sys.stderr, flush=True)
        records, _ = generate(GeneratorConfig(count=count, rate=rate, seed=11, partitions=PARTITIONS, users=USERS,
                                              start_ms=start))

        def first(at_ms: int) -> int:  # the first record at or after start + at_ms
            return next((i for i, rec in enumerate(records) if rec.timestamp_ms >= start + at_ms), len(records))

        # groups of phases produced together, each ending at a mark: the measured phase (the 7 days before the mark)
        # last, so the job's rate over it is not limited by the producer (which is faster and done by then); then the
        # nudge: the next NUDGE_MS of records, produced once the phase is applied and measured, so that the state is
        # counted with the job's event-time clock past the mark (the tile operator advances its clock with the data
        # of the next bundle: without them the last bundle's releases wait, up to a bundle's worth of event time,
        # which here, 60 days in minutes, is about a day)
        groups, nudges = [], []
        done = 0
        for m in MARKS:
            cut = max(done, first((m - MEASURED_DAYS) * day))
            groups.append([(lo, hi) for lo, hi in ((done, cut), (cut, first(m * day))) if hi > lo])
            nudges.append((first(m * day), len(records) if m == MARKS[-1] else first(m * day + NUDGE_MS)))
            done = nudges[-1][1]
        topic, warm_topic = f"orders-{uuid.uuid4().hex[:6]}", f"warm-{uuid.uuid4().hex[:6]}"
        create_topics(bootstrap, {topic: PARTITIONS, warm_topic: PARTITIONS})
        accept_future_timestamps(bootstrap, [topic, warm_topic])
        r = redis.Redis.from_url(url)
        warm, _ = generate(GeneratorConfig(count=WARMUP, rate=WARMUP / (7 * 86_400.0), seed=12, partitions=PARTITIONS,
                                           users=USERS, start_ms=start))
        produce_records(bootstrap, warm_topic, warm)
        client = _start_job(bootstrap, url, warm_topic, root / "ckpt-warm", f"{PROJECT}-warm")
        wait_for(lambda: sum(p.get("records", 0) for p in stream_progress(r, f"{PROJECT}-warm").values()) >= WARMUP,
                 600, "the warm-up records", client)
        client.cancel().result()
        client = None
        positions: dict[int, tuple[int, int]] = {}
        samples: list[tuple[float, int]] = []
        result: dict[str, Any] = {}
        applied = lambda: sum(p.get("records", 0) for p in stream_progress(r, PROJECT).values())  # noqa: E731
        savepoint: str | None = None
        for mark, group, (nudge_lo, nudge_hi) in zip(MARKS, groups, nudges):
            # each group fills the topic while the job is stopped (with a savepoint after the previous mark), so its
            # phases are applied from a full topic, not at the producer's pace
            for lo, hi in group:
                positions.update(produce_records(bootstrap, topic, records[lo:hi]).positions)
            ckpt = root / f"ckpt-day{mark}"  # this run's checkpoints only
            client = _start_job(bootstrap, url, topic, ckpt, savepoint=savepoint)
            job_id = str(client.get_job_id())
            lo, hi = group[-1]

            def covered() -> bool:
                samples.append((time.monotonic(), applied()))
                return samples[-1][1] >= hi

            samples.clear()
            wait_for(covered, 900, f"records up to {hi}", client)
            rate = _phase_rate(samples, lo, hi)
            positions.update(produce_records(bootstrap, topic, records[nudge_lo:nudge_hi]).positions)
            wait_for(lambda: applied() >= nudge_hi, 300, f"the records up to {nudge_hi} after day {mark}", client)
            # a checkpoint two after the newest one now: its barrier came after every record up to the mark was
            # applied (Flink keeps only the newest checkpoint: read it at once)
            newest = lambda: max((int(c.name.split("-")[1]) for c in _checkpoints(ckpt)), default=0)  # noqa: E731
            wanted = newest() + 2
            wait_for(lambda: newest() >= wanted, 120, f"checkpoint {wanted} after day {mark}", client)
            chk, size = _newest_checkpoint_bytes(ckpt)
            tiles = int(java_class(TILES_CLASS).liveEntries(job_id))
            dedup = sum(p.get("dedup_entries", 0) for p in stream_progress(r, PROJECT).values())
            result[f"stream_state_bytes_day{mark}"] = {"value": size, "unit": "bytes",
                                                       "note": f"checkpoint {chk.name}, {nudge_hi} records applied"}
            result[f"stream_state_entries_day{mark}"] = {"value": tiles + dedup, "unit": "entries", "tiles": tiles,
                                                         "dedup": dedup}
            result[f"stream_soak_events_per_s_day{mark}"] = {"value": round(rate), "unit": "events/s",
                                                             "note": f"records {lo}-{hi} (days {mark - MEASURED_DAYS}-{mark})"}
            print(f"soak: day {mark}: {size} bytes ({chk.name}), {tiles} tiles + {dedup} dedup entries, {rate:.0f} events/s",
                  file=sys.stderr, flush=True)
            savepoint = stop_with_savepoint(client, (root / "savepoints").resolve().as_uri())
            client = None
        users, bad = _oracle_mismatches(url, records, positions, SAMPLE)
        b7, b60 = result["stream_state_bytes_day7"]["value"], result["stream_state_bytes_day60"]["value"]
        e7, e60 = result["stream_soak_events_per_s_day7"]["value"], result["stream_soak_events_per_s_day60"]["value"]
        scale = (f"{EVENTS} events over {DAYS} simulated days, {USERS} users, {PARTITIONS} partitions, parallelism 1, "
                 f"after a {WARMUP}-record warm-up job")
        result["stream_state_bytes_day60"].update(goal="<= 1.2x day 7", ratio_to_day7=round(b60 / b7, 3))
        result["stream_soak_events_per_s_day60"].update(goal=">= 0.9x day 7", ratio_to_day7=round(e60 / e7, 3))
        result["stream_soak_events_per_s"] = {"value": e60, "unit": "events/s", "note": f"day 60's rate; {scale}"}
        result["stream_soak_oracle_mismatches"] = {"value": bad, "unit": "users", "goal": "0",
                                                   "note": f"{users} sampled users, {FEATURE} read at the end"}
        return result
    finally:
        tear_down(client, stops, root)


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
