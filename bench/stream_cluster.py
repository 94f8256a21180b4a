"""Streaming into a Redis Cluster (not a test): the compiled ``user_order_stats`` job (gateway MiniCluster, parallelism
``SKEWLESS_BENCH_PARALLELISM``, 2) over one pre-filled topic of a local Kafka, into a Redis Cluster of 3 masters + 3
replicas (the stack's ``RedisCluster`` on free ports; the sink groups writes by slot, pipelines per master and WAITs
for a replica before each progress write and checkpoint) and, in the same run, into one Redis (bench/stream.py's
services and job):

- ``stream_cluster_events_per_s``: events/s into the cluster, first to last progress write (bench/stream.py's
  measure), with ``ratio_to_single``: against the same job over the same topic into one Redis (goal >= 0.7);
- ``stream_cluster_freshness_p99_s`` / ``p50_s``: with the job running into the cluster, records produced at a steady
  rate; per sampled record, produce time -> the progress write covering it (bench/stream.py's measure; goal < 2 s).

On 2 cores this measures the topology's overhead (six Redis processes, the WAITs), not scale-out.
Environment: ``SKEWLESS_BENCH_CLUSTER_EVENTS`` (500000) and bench/stream.py's (parallelism, mini-batch, freshness).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.stream import (FRESH_BUFFER_TIMEOUT_MS, FRESH_FLUSH_MS, FRESH_MINI_BATCH, FRESH_RATE, MINI_BATCH, PARALLELISM,
                          PARTITIONS, PROJECT, freshness_lags, generated_records, local_services, start_job, tear_down,
                          throughput_from_progress)

EVENTS = int(os.environ.get("SKEWLESS_BENCH_CLUSTER_EVENTS", "500000"))


def redis_cluster(root: Path, stops: list) -> str:
    """The stack's Redis Cluster on free ports, ready and replicating (its stop appended to ``stops``); its URL."""
    from skewless.config import cluster_url
    from skewless.stack.cluster import RedisCluster, free_cluster_ports_env
    from skewless.stack.procs import wait_until
    from tests.faults.harness import replicas_synced

    cluster = RedisCluster(port=int(free_cluster_ports_env()["SKEWLESS_REDIS_PORT"]))
    started = cluster.start(root / "redis-cluster", root / "logs")
    stops.append(lambda: cluster.stop(started))
    wait_until(lambda: not cluster.problems() and replicas_synced(cluster), 120, "bench redis cluster", interval_s=0.3)
    return cluster_url(tuple(f"127.0.0.1:{p}" for p in cluster.node_ports))


def run() -> dict[str, Any]:
    import redis

    from skewless.config import redis_target
    from skewless.core import layout
    from skewless.engines.redis_client import open_redis
    from skewless.producer.kafka_producer import produce_records
    from skewless.stack.kafka import create_topics

    root = Path(tempfile.mkdtemp(prefix="skewless-bench-stream-cluster-"))
    bootstrap, single_url, stops = local_services(root)
    job = None
    try:
        cluster_url = redis_cluster(root, stops)
        topic = f"orders-{uuid.uuid4().hex[:6]}"
        create_topics(bootstrap, {topic: PARTITIONS})
        produce_records(bootstrap, topic, generated_records(EVENTS, 1, int(time.time() * 1000) - 3_600_000, EVENTS / 3000.0))
        clients = {"single": redis.Redis.from_url(single_url), "cluster": open_redis(redis_target(cluster_url))}
        urls = {"single": single_url, "cluster": cluster_url}
        rates: dict[str, float] = {}
        for name in ("single", "cluster"):  # bounded: the end of the input flushes the last mini-batch at once
            job = start_job(bootstrap, urls[name], topic, root / f"ckpt-{name}", "earliest", MINI_BATCH, bounded=True)
            rates[name] = throughput_from_progress(clients[name], EVENTS)
            job.get_job_execution_result().result()
            job = None
        ratio = rates["cluster"] / rates["single"]
        runs = f"parallelism {PARALLELISM}, mini-batch {MINI_BATCH}, {EVENTS} events, {PARTITIONS} partitions"
        result: dict[str, Any] = {
            "stream_cluster_events_per_s": {
                "value": round(rates["cluster"]), "unit": "events/s", "goal": ">= 0.7x single", "ratio_to_single": round(ratio, 3),
                "peer": {"name": f"the same job into one Redis, same run ({runs})", "value": round(rates["single"]),
                         "unit": "events/s"},
                "note": "Redis Cluster 3 masters + 3 replicas on the same 2 cores; WAIT before each progress write"},
        }
        time.sleep(3)
        clients["cluster"].delete(layout.progress_key(PROJECT, "orders"))  # the freshness job's progress starts empty
        job = start_job(bootstrap, cluster_url, topic, root / "ckpt-fresh", "latest", FRESH_MINI_BATCH, FRESH_FLUSH_MS,
                        FRESH_BUFFER_TIMEOUT_MS)
        lags = freshness_lags(bootstrap, topic, clients["cluster"]) or [float("nan")]
        result["stream_cluster_freshness_p50_s"] = {
            "value": round(statistics.median(lags), 3), "unit": "s",
            "note": f"{len(lags)} samples at {FRESH_RATE:.0f} events/s into the cluster, mini-batch {FRESH_MINI_BATCH}, "
                    f"flush {FRESH_FLUSH_MS} ms, buffer timeout {FRESH_BUFFER_TIMEOUT_MS} ms"}
        result["stream_cluster_freshness_p99_s"] = {"value": round(lags[int((len(lags) - 1) * 0.99)], 3), "unit": "s",
                                                    "goal": "< 2"}
        return result
    finally:
        tear_down(job, stops, root)


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
