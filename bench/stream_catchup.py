"""Catch-up benchmark (not a test): a job restarted with an hour of backlog, against the steady rate of the same run.

Starts its own Kafka and Redis (:func:`bench.stream.local_services`) and runs the compiled ``user_order_stats`` job
(configured as :mod:`bench.stream` configures it: parallelism, mini-batch, checkpoints every 10 s) twice:

- steady: bounded over a pre-filled 4-partition topic of ``SKEWLESS_BENCH_CATCHUP_EVENTS`` orders whose event times
  span the last hour: its rate from the job's progress hash (first to last write), as ``stream_events_per_s``.
- catch-up: on a second topic, the job applies a head of ``HEAD`` orders from an hour earlier and is stopped with a
  savepoint (no drain: its state is kept); then the same hour of orders is produced (the backlog of a job down for
  an hour) and the job is restored from the savepoint: ``stream_catchup_events_per_s`` is the rate over the first
  minute after its first progress write (or until the backlog is applied, if sooner), from the progress hash.

Goal: ``stream_catchup_events_per_s`` >= 0.9x the steady rate of the same run. Environment:
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

from bench.stream import (MINI_BATCH, PARTITIONS, generated_records, local_services, start_job, stream_progress,
                          tear_down, throughput_from_progress)

EVENTS = int(os.environ.get("SKEWLESS_BENCH_CATCHUP_EVENTS", "1000000"))
HEAD = 20_000
WINDOW_S = 60.0  # the rate is taken over the first minute after the restart
HOUR_MS = 3_600_000


def catchup_rate(r: Any, already: int, total: int, window_s: float = WINDOW_S) -> float:
    """events/s applied by a restored job from its first progress write past ``already`` records, over ``window_s``
    seconds or until ``total`` records are applied."""
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
    return (last[1] - first[1]) / max(last[0] - first[0], 1e-9)


def run() -> dict[str, Any]:
    import redis
    from skewless.core import layout
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
        steady_topic, topic = f"orders-{uuid.uuid4().hex[:6]}", f"orders-{uuid.uuid4().hex[:6]}"
        create_topics(bootstrap, {steady_topic: PARTITIONS, topic: PARTITIONS})
        produce_records(bootstrap, steady_topic, hour)
        client = start_job(bootstrap, url, steady_topic, root / "ckpt-steady", "earliest", MINI_BATCH, bounded=True)
        steady = throughput_from_progress(r, EVENTS)
        client.get_job_execution_result().result()
        client = None
        r.delete(layout.progress_key("bench", "orders"))

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
        return {
            "stream_catchup_events_per_s": {
                "value": round(catchup), "unit": "events/s", "goal": ">= 0.9x stream_events_per_s (same run)",
                "ratio_to_steady": round(catchup / steady, 3),
                "peer": {"name": "stream_events_per_s (steady, bounded, same run)", "value": round(steady), "unit": "events/s"},
                "note": (f"restored from a stop-with-savepoint with {EVENTS} records (an hour of event time) of backlog, "
                         f"produced in {produce_s:.0f} s; rate over the first {WINDOW_S:.0f} s after the first progress "
                         f"write (or until applied); {PARTITIONS} partitions, mini-batch {MINI_BATCH}")},
        }
    finally:
        tear_down(client, stops, root)


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
