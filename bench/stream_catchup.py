"""Catch-up benchmark (not a test): a job restarted with an hour of backlog, against the steady rate of the same run.

Starts its own Kafka and Redis (:func:`bench.stream.local_services`) and runs the compiled ``user_order_stats`` job
(configured as :mod:`bench.stream` configures it: parallelism, mini-batch, checkpoints every 10 s), all in one
gateway JVM (the local MiniCluster), in this order so that neither side runs on a cold JVM or gets the quieter
minutes:

1. warm-up: a bounded job over ``WARMUP`` orders (not measured);
2. steady (A): bounded over a pre-filled 4-partition topic of ``SKEWLESS_BENCH_CATCHUP_EVENTS`` orders whose event
   times span the last hour: its rate from the job's progress hash (first to last write), as ``stream_events_per_s``;
3. catch-up: on a second topic, the job applies a head of ``HEAD`` orders from an hour earlier and is stopped with a
   savepoint (no drain: its state is kept); then the same hour of orders is produced (the backlog of a job down for
   an hour) and the job is restored from the savepoint: ``stream_catchup_events_per_s`` is the rate over the first
   minute after its first progress write (or, if the backlog is applied sooner, until its last progress write before
  the one covering it: :func:`catchup_rate`), from the progress hash;
4. steady (B): step 2 again.

The online store is emptied before each job (every job writes the same amount). The steady rate compared with is
the mean of A and B (they bracket the catch-up in time). Goal: ``stream_catchup_events_per_s`` >= 0.9x it.
Environment:
``SKEWLESS_BENCH_CATCHUP_EVENTS`` (default 1000000), ``SKEWLESS_BENCH_PARALLELISM`` (2, as bench.stream).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.stream import (MINI_BATCH, PARALLELISM, PARTITIONS, generated_records, local_services, start_job, stream_progress,
                          tear_down, throughput_from_progress)

EVENTS = int(os.environ.get("SKEWLESS_BENCH_CATCHUP_EVENTS", "1000000"))
HEAD = 20_000
WARMUP = min(EVENTS // 4, 250_000)
WINDOW_S = 60.0  # the rate is taken over the first minute after the restart
HOUR_MS = 3_600_000


def catchup_rate(r: Any, already: int, total: int, window_s: float = WINDOW_S) -> float:
    """events/s applied by a restored job from its first progress write past ``already`` records, over ``window_s``
    seconds or, if it applies all ``total`` records sooner, until its last progress write before the one covering
    them: the job writes progress once per mini-batch, and its last mini-batch waits for the timer with the source
    idle (the bounded steady run ends its input instead), so that wait is not counted."""
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        done = sum(p.get("records", 0) for p in stream_progress(r).values())
        now = time.monotonic()
        if done > already:
            samples.append((now, done))
        if done >= total or (samples and now - samples[0][0] >= window_s):
            break
        time.sleep(0.25)
    if len(samples) < 2:
        raise RuntimeError(f"the restored job applied {samples[-1][1] if samples else already} of {total} records in 15 min")
    first, last = samples[0], samples[-1]
    if last[1] >= total:
        inner = [n for _, n in samples if first[1] < n < total]
        if inner:
            last = next(s for s in samples if s[1] == max(inner))
    return (last[1] - first[1]) / max(last[0] - first[0], 1e-9)


def run() -> dict[str, Any]:
    import redis
    from skewless.producer.kafka_producer import produce_records
    from skewless.stack.kafka import create_topics
    from streaming_jobs.savepoint import stop_with_savepoint

    root = Path(tempfile.mkdtemp(prefix="skewless-bench-catchup-"))
    bootstrap, url, stops = local_services(root)
    client = None
    try:
        r = redis.Redis.from_url(url)
        now = int(time.time() * 1000)
        hour = generated_records(EVENTS, 7, now - HOUR_MS, EVENTS / 3600.0)  # an hour of orders
        warm_topic, steady_topic, topic = (f"orders-{uuid.uuid4().hex[:6]}" for _ in range(3))
        create_topics(bootstrap, {warm_topic: PARTITIONS, steady_topic: PARTITIONS, topic: PARTITIONS})
        produce_records(bootstrap, warm_topic, hour[:WARMUP])
        produce_records(bootstrap, steady_topic, hour)

        def bounded_rate(source_topic: str, events: int, name: str) -> float:
            nonlocal client
            r.flushdb()
            client = start_job(bootstrap, url, source_topic, root / f"ckpt-{name}", "earliest", MINI_BATCH, bounded=True)
            rate = throughput_from_progress(r, events)
            client.get_job_execution_result().result()
            client = None
            return rate

        bounded_rate(warm_topic, WARMUP, "warm-up")
        steady_a = bounded_rate(steady_topic, EVENTS, "steady-a")

        r.flushdb()
        head = generated_records(HEAD, 8, now - 2 * HOUR_MS, HEAD / 600.0)  # 10 minutes, an hour before the backlog
        produce_records(bootstrap, topic, head)
        client = start_job(bootstrap, url, topic, root / "ckpt", "earliest", MINI_BATCH)
        deadline = time.monotonic() + 300
        while sum(p.get("records", 0) for p in stream_progress(r).values()) < HEAD:
            if time.monotonic() > deadline:
                raise RuntimeError("the job did not apply the head of the topic within 5 min")
            time.sleep(0.5)
        savepoint = stop_with_savepoint(client, (root / "savepoints").resolve().as_uri())
        client = None
        t0 = time.perf_counter()
        produce_records(bootstrap, topic, hour)  # the hour the job was down
        produce_s = time.perf_counter() - t0
        client = start_job(bootstrap, url, topic, root / "ckpt2", "earliest", MINI_BATCH, savepoint=savepoint)
        catchup = catchup_rate(r, HEAD, HEAD + EVENTS)
        client.cancel().result()
        client = None

        steady_b = bounded_rate(steady_topic, EVENTS, "steady-b")
        steady = (steady_a + steady_b) / 2
        return {
            "stream_catchup_events_per_s": {
                "value": round(catchup), "unit": "events/s", "goal": ">= 0.9x stream_events_per_s (same run)",
                "ratio_to_steady": round(catchup / steady, 3),
                "peer": {"name": "stream_events_per_s (steady, bounded, same run: mean of the runs before and after)",
                         "value": round(steady), "unit": "events/s"},
                "steady_before": round(steady_a), "steady_after": round(steady_b),
                "note": (f"restored from a stop-with-savepoint with {EVENTS} records (an hour of event time) of backlog, "
                         f"produced in {produce_s:.0f} s; rate over the first {WINDOW_S:.0f} s after the first progress "
                         f"write (or until the last write before the one covering the backlog); {PARTITIONS} partitions, "
                         f"parallelism {PARALLELISM}, mini-batch "
                         f"{MINI_BATCH}; after a {WARMUP}-record warm-up job in the same JVM")},
        }
    finally:
        tear_down(client, stops, root)


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
