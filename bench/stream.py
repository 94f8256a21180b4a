"""Streaming benchmark (not a test): Kafka -> Flink (compiled job, MiniCluster) -> Redis on this machine.

Starts its own Kafka and Redis as local processes on free 127.0.0.1 ports, then measures in one run:

- ``stream_floor_events_per_s``: a plain confluent-kafka consumer -> Redis (one pipelined HINCRBY per event
  per batch): what moving the bytes costs without Flink.
- ``stream_events_per_s``: the compiled ``user_order_stats`` job over a pre-filled topic (admission, late
  and duplicate handling, two tile sizes, the Redis sink), from the first progress write to the last
  (JVM start and job submission excluded), read from the job's own progress hash.
- ``stream_freshness_p50_s`` / ``p99_s``: with the job running, events produced at a steady rate; per
  record, produce time -> the job's progress hash covering its offset (written after its tiles, in the
  same flush, so the online read shows it).

Environment: ``SKEWLESS_BENCH_EVENTS`` (default 400000), ``SKEWLESS_BENCH_PARALLELISM`` (2),
``SKEWLESS_BENCH_FRESH_RATE`` (2000 events/s), ``SKEWLESS_BENCH_FRESH_S`` (30).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

EVENTS = int(os.environ.get("SKEWLESS_BENCH_EVENTS", "400000"))
PARALLELISM = int(os.environ.get("SKEWLESS_BENCH_PARALLELISM", "2"))
FRESH_RATE = float(os.environ.get("SKEWLESS_BENCH_FRESH_RATE", "2000"))
FRESH_S = float(os.environ.get("SKEWLESS_BENCH_FRESH_S", "30"))
MINI_BATCH = os.environ.get("SKEWLESS_BENCH_MINI_BATCH", "5 s")  # throughput phase
FRESH_MINI_BATCH = os.environ.get("SKEWLESS_BENCH_FRESH_MINI_BATCH", "500 ms")  # freshness phase
PARTITIONS = 4
PROJECT = "bench"
# Measured on 2 cores: Python workers as processes (not loopback threads in the driver) and a capped
# gateway heap (docs/streaming.md).
os.environ.setdefault("_python_worker_execution_mode", "process")
os.environ.setdefault("JVM_ARGS", "-Xmx1536m")


def _services(root: Path) -> tuple[str, str, list]:
    from skewless.stack.base import free_port
    from skewless.stack.kafka import KafkaBroker
    from skewless.stack.procs import wait_until
    from skewless.stack.redis import RedisServer, redis_url

    stops = []
    broker = KafkaBroker(port=free_port(), controller_port=free_port())
    started = broker.start(root / "kafka", root / "logs")
    stops.append(lambda: broker.stop(started))
    server = RedisServer(port=free_port())
    rs = server.start(root / "redis", root / "logs")
    stops.append(lambda: server.stop(rs))
    wait_until(broker.healthy, 180, "bench kafka")
    wait_until(server.healthy, 60, "bench redis")
    return broker.bootstrap, redis_url(server.port), stops


def _records(count: int, seed: int, start_ms: int, rate: float) -> list:
    from skewless.producer import GeneratorConfig, generate

    records, _ = generate(GeneratorConfig(count=count, rate=rate, seed=seed, partitions=PARTITIONS, users=20_000,
                                          start_ms=start_ms))
    return records


def floor_consumer(bootstrap: str, topic: str, url: str, count: int) -> float:
    """events/s of a plain Kafka -> Redis consumer (per event HINCRBY on its user, pipelined per batch)."""
    import redis
    from confluent_kafka import Consumer

    r = redis.Redis.from_url(url)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"floor-{uuid.uuid4().hex}", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "fetch.max.bytes": 52_428_800})
    c.subscribe([topic])
    seen, t0 = 0, None
    while seen < count:
        batch = c.consume(10_000, timeout=1.0)
        if not batch:
            continue
        t0 = t0 or time.perf_counter()
        pipe = r.pipeline(transaction=False)
        for m in batch:
            pipe.hincrby(f"floor:{(m.key() or b'').decode()}", "n", 1)
        pipe.execute()
        seen += len(batch)
    took = time.perf_counter() - t0
    c.close()
    r.close()
    return seen / took


def _progress(r: Any) -> dict[int, dict]:
    from skewless.core import layout

    return {int(k[2:]): json.loads(v) for k, v in ((k.decode(), v) for k, v in
                                                    r.hgetall(layout.progress_key(PROJECT, "orders")).items())}


def _start_job(bootstrap: str, url: str, topic: str, ckpt: Path, starting: str, mini_batch: str) -> Any:
    from skewless.core.repo import load_repository
    from skewless.engines.flink_env import create_stream_env
    from streaming_jobs.flink_compiler import compile_repository
    from streaming_jobs.job import JobOptions, add_source_job
    from streaming_jobs.run_view import stream_conf

    (job,) = compile_repository(load_repository(), ["user_order_stats"])
    conf = stream_conf(mini_batch, 1_000_000)
    env, t_env = create_stream_env(parallelism=PARALLELISM, checkpoint_dir=ckpt, checkpoint_interval="10 s", extra_conf=conf)
    add_source_job(env, t_env, job, JobOptions(bootstrap=bootstrap, redis_url=url, project=PROJECT, repo_path="feature_defs",
                                               topic=topic, starting_offsets=starting, ns=f"b{uuid.uuid4().hex[:6]}"))
    return env.execute_async(f"bench-stream-{topic}")


def run() -> dict[str, Any]:
    import redis
    from skewless.producer.kafka_producer import make_producer, produce_records
    from skewless.stack.kafka import create_topics

    root = Path(tempfile.mkdtemp(prefix="skewless-bench-stream-"))
    bootstrap, url, stops = _services(root)
    client = None
    try:
        now = int(time.time() * 1000)
        topic = f"orders-{uuid.uuid4().hex[:6]}"
        create_topics(bootstrap, {topic: PARTITIONS})
        records = _records(EVENTS, 1, now - 3_600_000, EVENTS / 3000.0)
        t0 = time.perf_counter()
        produce_records(bootstrap, topic, records)
        produce_rate = EVENTS / (time.perf_counter() - t0)
        floor = floor_consumer(bootstrap, topic, url, EVENTS)

        # throughput: the job over the pre-filled topic, measured from its progress hash
        r = redis.Redis.from_url(url)
        client = _start_job(bootstrap, url, topic, root / "ckpt", "earliest", MINI_BATCH)
        samples: list[tuple[float, int]] = []
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            prog = _progress(r)
            done = sum(p.get("records", 0) for p in prog.values())
            if done:
                samples.append((time.monotonic(), done))
            if done >= EVENTS:
                break
            time.sleep(0.25)
        first = next(s for s in samples if s[1] > 0)
        last = samples[-1]
        events_per_s = (last[1] - first[1]) / max(last[0] - first[0], 1e-9)

        client.cancel().result()
        time.sleep(3)
        if FRESH_S <= 0:
            return {"stream_events_per_s": {"value": round(events_per_s), "unit": "events/s"},
                    "stream_floor_events_per_s": {"value": round(floor), "unit": "events/s"}}
        # freshness: steady production into a job with a short mini-batch, started at the topic's end
        client = _start_job(bootstrap, url, topic, root / "ckpt2", "latest", FRESH_MINI_BATCH)
        time.sleep(20)  # job start
        fresh = _records(int(FRESH_RATE * FRESH_S), 2, int(time.time() * 1000), FRESH_RATE)
        sent: dict[tuple[int, int], float] = {}
        producer = make_producer(bootstrap, **{"linger.ms": 1})
        lags: list[float] = []
        stop = threading.Event()

        def watch() -> None:
            pending = {}
            while not stop.is_set() or pending:
                for (p, o), t in list(sent.items()):
                    pending[(p, o)] = t
                    sent.pop((p, o), None)
                prog = _progress(r)
                now_s = time.time()
                for (p, o), t in list(pending.items()):
                    if p in prog and prog[p]["offset"] >= o:
                        lags.append(prog[p]["written_ms"] / 1000.0 - t)
                        del pending[(p, o)]
                if stop.is_set() and time.time() - max(pending.values(), default=now_s) > 60:
                    break
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        # record produce time of every 50th record (delivery report gives its offset)
        def make_cb(t: float):
            def cb(err, msg):
                if err is None:
                    sent[(msg.partition(), msg.offset())] = t
            return cb

        t_start = time.monotonic()
        for i, rec in enumerate(fresh):
            ahead = i / FRESH_RATE - (time.monotonic() - t_start)
            if ahead > 0.001:
                time.sleep(ahead)
            ts = int(time.time() * 1000)
            cb = make_cb(time.time()) if i % 50 == 0 else None
            producer.produce(topic, value=rec.value, key=rec.key, partition=rec.partition, timestamp=ts, on_delivery=cb)
            producer.poll(0)
        producer.flush(60)
        time.sleep(5)
        stop.set()
        watcher.join(90)
        lags.sort()
        p50 = statistics.median(lags) if lags else float("nan")
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else float("nan")
        peer = {"name": f"parallelism {PARALLELISM}, mini-batch {MINI_BATCH}, {EVENTS} events, {PARTITIONS} partitions"}
        return {
            "stream_events_per_s": {"value": round(events_per_s), "unit": "events/s", "goal": ">= 50000",
                                    "peer": {**peer, "value": round(produce_rate), "unit": "events/s (producer)"}},
            "stream_floor_events_per_s": {"value": round(floor), "unit": "events/s",
                                          "note": "plain confluent-kafka consumer -> Redis pipeline, same run"},
            "stream_freshness_p50_s": {"value": round(p50, 3), "unit": "s",
                                       "note": f"{len(lags)} samples at {FRESH_RATE:.0f} events/s, mini-batch {FRESH_MINI_BATCH}"},
            "stream_freshness_p99_s": {"value": round(p99, 3), "unit": "s", "goal": "< 2"},
        }
    finally:
        if client is not None:
            try:
                client.cancel().result()
            except Exception:  # noqa: BLE001 - best effort: the services stop next anyway
                pass
        for stop_fn in reversed(stops):
            stop_fn()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
