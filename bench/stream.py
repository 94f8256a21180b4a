"""Streaming benchmark (not a test): Kafka -> Flink (compiled job, MiniCluster) -> Redis on this machine.

Starts its own Kafka and Redis as local processes on free 127.0.0.1 ports, then measures in one run:

- ``stream_floor_events_per_s``: a plain confluent-kafka consumer -> Redis (one pipelined HINCRBY per event
  per batch): what moving the bytes costs without Flink.
- ``stream_events_per_s``: the compiled ``user_order_stats`` job over a pre-filled topic, bounded at its end
  offsets (admission, late and duplicate handling, two tile sizes, the Redis sink), from the first progress
  write to the one covering the last record (JVM start and job submission excluded; the end of the input
  flushes the last mini-batch at once), read from the job's own progress hash.
- ``stream_freshness_p50_s`` / ``p99_s``: with the job running, events produced at a steady rate; per
  record, produce time -> the job's progress hash covering its offset (written after its tiles, in the
  same flush, so the online read shows it).

  Samples count only once the job is live (its first progress write + 5 s): job start-up is not freshness.
- with ``SKEWLESS_BENCH_JFR=1``, ``stream_cpu_share_pct``: where the CPU goes during the throughput run (a JDK
  Flight Recording of the gateway JVM, started and stopped with ``jcmd``; execution samples per operator chain).
- with ``SKEWLESS_BENCH_PROFILE=1``, ``stream_profile``: bounded runs of growing prefixes of the compiled job
  (raw read, + admission function, + running-max OVER, + the whole changelog) into blackhole sinks, one
  slot, seconds each (start-up included; the differences are the stages' cost).

Environment: ``SKEWLESS_BENCH_EVENTS`` (default 1000000), ``SKEWLESS_BENCH_PARALLELISM`` (2),
``SKEWLESS_BENCH_FRESH_RATE`` (1000 events/s), ``SKEWLESS_BENCH_FRESH_S`` (30), ``SKEWLESS_BENCH_PROFILE`` (0), ``SKEWLESS_BENCH_JFR`` (0).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

EVENTS = int(os.environ.get("SKEWLESS_BENCH_EVENTS", "1000000"))
PARALLELISM = int(os.environ.get("SKEWLESS_BENCH_PARALLELISM", "2"))
FRESH_RATE = float(os.environ.get("SKEWLESS_BENCH_FRESH_RATE", "1000"))
FRESH_S = float(os.environ.get("SKEWLESS_BENCH_FRESH_S", "30"))
MINI_BATCH = os.environ.get("SKEWLESS_BENCH_MINI_BATCH", "5 s")  # throughput phase
# freshness phase: mini-batch, sink flush timer, network buffer timeout (throughput settings: 5 s, 200 ms,
# Flink's 100 ms)
FRESH_MINI_BATCH = os.environ.get("SKEWLESS_BENCH_FRESH_MINI_BATCH", "200 ms")
FRESH_FLUSH_MS = int(os.environ.get("SKEWLESS_BENCH_FRESH_FLUSH_MS", "50"))
FRESH_BUFFER_TIMEOUT_MS = int(os.environ.get("SKEWLESS_BENCH_FRESH_BUFFER_TIMEOUT_MS", "10"))
PROFILE = os.environ.get("SKEWLESS_BENCH_PROFILE", "0") == "1"
LIVE_GRACE_S = 5.0  # after the first progress write, before freshness samples count
PARTITIONS = 4
PROJECT = "bench"
JFR = os.environ.get("SKEWLESS_BENCH_JFR", "0") == "1"
# the gateway JVM runs the MiniCluster: a capped heap and the throughput collector (as the session cluster's
# TaskManager, infra/flink/config.yaml; ~8% less CPU per record than G1 here, docs/streaming.md)
os.environ.setdefault("JVM_ARGS", "-Xmx1536m -XX:+UseParallelGC")


def tear_down(client: Any, stops: list, root: Path) -> None:
    """Cancel the job (if any), stop the local services, remove the scratch directory."""
    if client is not None:
        try:
            client.cancel().result()
        except Exception:  # noqa: BLE001 - best effort: the services stop next anyway
            pass
    for stop_fn in reversed(stops):
        stop_fn()
    shutil.rmtree(root, ignore_errors=True)


def local_services(root: Path) -> tuple[str, str, list]:
    """Kafka and Redis as local processes on free ports: (bootstrap, Redis URL, their stop functions)."""
    from skewless.stack.base import free_port
    from skewless.stack.kafka import KafkaBroker
    from skewless.stack.procs import wait_until
    from skewless.config import redis_url
    from skewless.stack.redis import RedisServer

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


def generated_records(count: int, seed: int, start_ms: int, rate: float) -> list:
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


def stream_progress(r: Any, project: str = PROJECT) -> dict[int, dict]:
    """The job's progress hash of the orders source, per partition."""
    from skewless.core import layout

    fields = ((k.decode(), v) for k, v in r.hgetall(layout.progress_key(project, "orders")).items())
    # only the partition fields p:<partition> (the hash may hold other fields, e.g. a duplicate counter)
    return {int(k[2:]): json.loads(v) for k, v in fields if k.startswith("p:")}


def start_job(bootstrap: str, url: str, topic: str, ckpt: Path, starting: str, mini_batch: str,
               flush_ms: int = 200, buffer_timeout_ms: int | None = None,
               bounded: bool = False, savepoint: str | None = None) -> Any:
    """The compiled ``user_order_stats`` job on the gateway's MiniCluster (``savepoint``: restored from it)."""
    from skewless.core.repo import load_repository
    from skewless.engines.flink_env import create_stream_env
    from streaming_jobs.flink_compiler import compile_repository
    from streaming_jobs.job import JobOptions, add_source_job
    from streaming_jobs.run_view import stream_conf

    (job,) = compile_repository(load_repository(), ["user_order_stats"])
    conf = stream_conf(mini_batch, 1_000_000, buffer_timeout_ms)
    if savepoint is not None:
        conf["execution.savepoint.path"] = savepoint
    env, t_env = create_stream_env(parallelism=PARALLELISM, checkpoint_dir=ckpt, checkpoint_interval="10 s", extra_conf=conf)
    add_source_job(env, t_env, job, JobOptions(bootstrap=bootstrap, redis_url=url, project=PROJECT, repo_path="feature_defs",
                                               topic=topic, starting_offsets=starting, ns=f"b{uuid.uuid4().hex[:6]}", bounded=bounded,
                                               flush_ms=flush_ms))
    return env.execute_async(f"bench-stream-{topic}")


def profile_stages(bootstrap: str, topic: str, events: int) -> dict[str, float]:
    """Seconds of bounded one-slot runs of growing prefixes of the job into blackhole sinks."""
    from pyflink.table import Schema, TableDescriptor
    from pyflink.table.expressions import col
    from skewless.core.repo import load_repository
    from skewless.engines.flink_env import create_stream_env
    from streaming_jobs.flink_compiler import compile_repository
    from streaming_jobs.job import add_udf_jar, share_view
    from streaming_jobs.run_view import stream_conf

    (job,) = compile_repository(load_repository(), ["user_order_stats"])
    env, t_env = create_stream_env(parallelism=1, extra_conf=stream_conf(MINI_BATCH, 1_000_000))
    add_udf_jar(env, t_env)
    statements, query = job.render(ns="prof", topic=topic, bootstrap=bootstrap, group="prof", startup_mode="earliest-offset",
                                   extra_source_options=", 'scan.bounded.mode' = 'latest-offset'")
    for statement in statements:
        t_env.execute_sql(statement)
        if statement.startswith("CREATE TEMPORARY VIEW `prof_ordered`"):
            share_view(t_env, "prof_ordered", job, PARTITIONS)
    out = {}
    for stage in ("raw", "parsed", "ordered", "contrib", "changelog"):  # contrib: the tile rows before the Java fold
        table = t_env.sql_query(query) if stage == "changelog" else t_env.from_path(f"`prof_{stage}`")
        table = table.select(*[col(n) for n in table.get_schema().get_field_names() if n != "pt"])
        t_env.create_temporary_table(f"bh_{stage}", TableDescriptor.for_connector("blackhole").schema(
            Schema.new_builder().from_row_data_type(table.get_schema().to_row_data_type()).build()).build())
        t0 = time.monotonic()
        table.execute_insert(f"bh_{stage}").wait()
        out[f"{stage}_s"] = round(time.monotonic() - t0, 1)
    out["events"] = events
    return out


# thread-name prefixes of the compiled job's operator chains -> what they do (JFR breakdown)
_STAGES = (("Source Data Fetcher", "Kafka fetcher thread"), ("Source: ", "Kafka source + admission + parse (chain)"),
           ("OverAggregate", "late check (running-max OVER) + shared view"),
           ("deduplicate-", "dedup (Java, keyed by partition) + tile expansion + tile pre-aggregation + local progress aggregates"),
           ("tiles-", "tile merge (Java, keyed by out, key, tile; released on event time)"),
           ("GlobalGroupAggregate", "global aggregate (progress)"),
           ("ConstraintEnforcer", "sinks (Redis tiles/progress, dead letters)"),
           ("kafka-producer", "dead-letter producer thread"))


def _gateway_pid() -> int | None:
    """The PyFlink gateway JVM (runs the MiniCluster), a child of this process."""
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
                cmdline = Path(f"/proc/{d}/cmdline").read_bytes()
            except OSError:
                continue
            # not the bench's Kafka broker, also a java child of this process
            if int(stat[1]) == os.getpid() and b"PythonGatewayServer" in cmdline:
                return int(d)
    return None


def _jfr(pid: int | None, action: str, path: Path) -> bool:
    if pid is None or shutil.which("jcmd") is None:
        return False
    args = ["name=bench", "settings=profile"] if action == "start" else ["name=bench", f"filename={path}"]
    return subprocess.run(["jcmd", str(pid), f"JFR.{action}", *args], capture_output=True).returncode == 0


def jfr_breakdown(path: Path) -> dict[str, float]:
    """Share of JFR execution samples per stage of the job (thread names of its operator chains), percent."""
    done = subprocess.run(["jfr", "print", "--json", "--events", "jdk.ExecutionSample", str(path)],
                          capture_output=True, text=True, check=True)
    counts: dict[str, int] = {}
    for e in json.loads(done.stdout)["recording"]["events"]:
        name = (e["values"].get("sampledThread") or {}).get("javaName") or ""
        stage = next((label for prefix, label in _STAGES if name.startswith(prefix)), "other (runtime, JIT, GC-side)")
        counts[stage] = counts.get(stage, 0) + 1
    total = sum(counts.values()) or 1
    return {k: round(100 * v / total, 1) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}


def throughput_from_progress(r: Any, events: int) -> float:
    """events/s of the running job over the pre-filled topic, from its progress hash (first to last write)."""
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        done = sum(p.get("records", 0) for p in stream_progress(r).values())
        if done:
            samples.append((time.monotonic(), done))
        if done >= events:
            break
        time.sleep(0.25)
    first, last = samples[0], samples[-1]
    return (last[1] - first[1]) / max(last[0] - first[0], 1e-9)


def freshness_lags(bootstrap: str, topic: str, r: Any) -> list[float]:
    """Produce at FRESH_RATE into the running job; per sampled record, produce time -> progress write covering
    it. Runs until FRESH_S seconds of samples after the job is live (first progress write + grace)."""
    from skewless.engines.kafka import make_producer

    fresh = generated_records(int(FRESH_RATE * (FRESH_S + 150)), 2, int(time.time() * 1000), FRESH_RATE)
    sent: dict[tuple[int, int], float] = {}
    lags: list[tuple[float, float]] = []  # (produce time, lag)
    live: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        pending: dict[tuple[int, int], float] = {}
        while not stop.is_set() or pending:
            for key in list(sent):
                pending[key] = sent.pop(key)
            prog = stream_progress(r)
            if prog and not live:
                live.append(min(p["written_ms"] for p in prog.values()) / 1000.0 + LIVE_GRACE_S)
            for (p, o), t in list(pending.items()):
                if p in prog and prog[p]["offset"] >= o:
                    lags.append((t, prog[p]["written_ms"] / 1000.0 - t))
                    del pending[(p, o)]
            if stop.is_set() and time.time() - max(pending.values(), default=time.time()) > 60:
                break
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    producer = make_producer(bootstrap, **{"linger.ms": 1})

    def make_cb(t: float):
        def cb(err, msg):
            if err is None:
                sent[(msg.partition(), msg.offset())] = t
        return cb

    t_start = time.monotonic()
    for i, rec in enumerate(fresh):  # every 50th record is a sample (its delivery report gives the offset)
        ahead = i / FRESH_RATE - (time.monotonic() - t_start)
        if ahead > 0.001:
            time.sleep(ahead)
        if live and time.time() > live[0] + FRESH_S:
            break
        cb = make_cb(time.time()) if i % 50 == 0 else None
        producer.produce(topic, value=rec.value, key=rec.key, partition=rec.partition, timestamp=int(time.time() * 1000),
                         on_delivery=cb)
        producer.poll(0)
    producer.flush(60)
    time.sleep(5)
    stop.set()
    watcher.join(90)
    return sorted(lag for t, lag in lags if live and t >= live[0])


def run() -> dict[str, Any]:
    import redis
    from skewless.core import layout
    from skewless.producer.kafka_producer import produce_records
    from skewless.stack.kafka import create_topics

    root = Path(tempfile.mkdtemp(prefix="skewless-bench-stream-"))
    bootstrap, url, stops = local_services(root)
    client = None
    try:
        now = int(time.time() * 1000)
        topic = f"orders-{uuid.uuid4().hex[:6]}"
        create_topics(bootstrap, {topic: PARTITIONS})
        records = generated_records(EVENTS, 1, now - 3_600_000, EVENTS / 3000.0)
        t0 = time.perf_counter()
        produce_records(bootstrap, topic, records)
        produce_rate = EVENTS / (time.perf_counter() - t0)
        floor = floor_consumer(bootstrap, topic, url, EVENTS)
        profile = profile_stages(bootstrap, topic, EVENTS) if PROFILE else None

        r = redis.Redis.from_url(url)
        # bounded: the end of the input flushes the last mini-batch at once (no wait for its timer), so the
        # measured span ends when the last record is applied
        client = start_job(bootstrap, url, topic, root / "ckpt", "earliest", MINI_BATCH, bounded=True)
        recording = JFR and _jfr(_gateway_pid(), "start", root / "bench.jfr")
        events_per_s = throughput_from_progress(r, EVENTS)
        client.get_job_execution_result().result()
        breakdown = jfr_breakdown(root / "bench.jfr") if recording and _jfr(_gateway_pid(), "stop", root / "bench.jfr") else None
        client = None
        time.sleep(3)
        r.delete(layout.progress_key(PROJECT, "orders"))  # the freshness job's progress starts empty
        peer = {"name": f"parallelism {PARALLELISM}, mini-batch {MINI_BATCH}, {EVENTS} events, {PARTITIONS} partitions"}
        result: dict[str, Any] = {
            "stream_events_per_s": {"value": round(events_per_s), "unit": "events/s", "goal": ">= 50000",
                                    "ratio_to_floor": round(events_per_s / floor, 3),
                                    "peer": {**peer, "value": round(produce_rate), "unit": "events/s (producer)"}},
            "stream_floor_events_per_s": {"value": round(floor), "unit": "events/s",
                                          "note": "plain confluent-kafka consumer -> Redis pipeline, same run"},
        }
        if breakdown is not None:
            result["stream_cpu_share_pct"] = {"value": max(breakdown.values()), "unit": "% of samples", "stages": breakdown,
                                              "note": "JFR execution samples of the throughput run, by operator chain"}
        if profile is not None:
            result["stream_profile"] = {"value": profile["changelog_s"], "unit": "s", "stages": profile,
                                        "note": "bounded one-slot runs into blackhole sinks, start-up included"}
        if FRESH_S <= 0:
            return result
        # freshness: steady production into a job with a short mini-batch, started at the topic's end
        client = start_job(bootstrap, url, topic, root / "ckpt2", "latest", FRESH_MINI_BATCH, FRESH_FLUSH_MS,
                            FRESH_BUFFER_TIMEOUT_MS)
        lags = freshness_lags(bootstrap, topic, r)
        p50 = statistics.median(lags) if lags else float("nan")
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else float("nan")
        note = (f"{len(lags)} samples at {FRESH_RATE:.0f} events/s, mini-batch {FRESH_MINI_BATCH}, flush {FRESH_FLUSH_MS} ms, "
                f"buffer timeout {FRESH_BUFFER_TIMEOUT_MS} ms")
        result["stream_freshness_p50_s"] = {"value": round(p50, 3), "unit": "s", "note": note}
        result["stream_freshness_p99_s"] = {"value": round(p99, 3), "unit": "s", "goal": "< 2"}
        return result
    finally:
        tear_down(client, stops, root)


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
