"""The online store on a Redis Cluster (not a test): reads and materialization against 3 masters + 3 replicas
(started by the stack's code on free 127.0.0.1 ports) next to one Redis, in the same run.

- ``online_cluster_p99_ms_100_entities``: ``OnlineStore.get_online_features`` of 100 entities x ``churn_model`` on
  the cluster, uncached (the store's memo and decode caches emptied before every call), the entities spread over the
  3 masters; floor: one 2-field HMGET per entity through redis-py's ``RedisCluster`` pipeline (one exchange per
  master), called alternately with the read. The same pair on one Redis is reported beside it (``single``).
- ``materialize_cluster_rows_per_s``: ``materialize_feature_view`` of ``SKEWLESS_BENCH_MAT_ROWS`` serving rows into the
  cluster (per-master pipelined fenced writes, WAIT on each master) against the same rows into one Redis, runs
  alternating; with the Redis CPU (user + sys of every node, replicas included) per row of each.

On 2 cores this measures the topology's overhead, not scale-out: the cluster's 6 processes and the client share them.
Environment: ``SKEWLESS_BENCH_USERS`` (2000), ``SKEWLESS_BENCH_READS`` (600), ``SKEWLESS_BENCH_MAT_ROWS`` (100000).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

USERS = int(os.environ.get("SKEWLESS_BENCH_USERS", "2000"))
READS = int(os.environ.get("SKEWLESS_BENCH_READS", "600"))
MAT_ROWS = int(os.environ.get("SKEWLESS_BENCH_MAT_ROWS", "100000"))
MAT_RUNS = 3  # per topology, alternating
PROJECT = "bench"
SERVICE = "churn_model"


def _redis_cpu_s(nodes: list[Any]) -> float:
    """User + sys CPU seconds of the Redis servers behind ``nodes`` (plain clients) so far."""
    return sum(float(i["used_cpu_user"]) + float(i["used_cpu_sys"]) for i in (n.info("cpu") for n in nodes))


def _serving_rows(view: Any, n: int, cutoff: int, run_id: str, epoch: str) -> Any:
    """``n`` serving rows (one per user) of ``view``: one real batch record (tests.support.fill) repeated per entity."""
    import pyarrow as pa

    from skewless.core import layout
    from tests.support.fill import batch_record, order_events

    _, offline = order_events(400, 4, cutoff - 3 * 86_400_000, 400 / (3 * 86_400), seed=5)
    record = batch_record(view, offline, offline[0]["user_id"], cutoff, run_id, epoch)
    fields = sorted(layout.batch_windows(view))
    cols = {"entity_tag": [layout.encode_entity_key(view.entity, (f"m{i:07d}",)) for i in range(n)], "run_id": [run_id] * n}
    for f in fields:
        cols[f.replace(":", "_")] = [record[f]] * n
    return pa.table(cols)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def _materialize(client: Any, nodes: list[Any], view: Any, day: Any, rows: Any) -> tuple[float, float]:
    """``(rows/s, Redis CPU µs per row)`` of one run."""
    from batch_jobs.materialize import materialize_feature_view

    cpu0 = _redis_cpu_s(nodes)
    report = materialize_feature_view(None, client, view, day, project=PROJECT, rows=rows, init_epoch=True)
    cpu = _redis_cpu_s(nodes) - cpu0
    assert report.written == rows.num_rows, report
    return report.rows_per_s, cpu / rows.num_rows * 1e6


def run() -> dict:
    import redis

    from bench.online import latency_stats
    from skewless.config import redis_target
    from skewless.core.layout import entity_key
    from skewless.core.repo import load_repository
    from skewless.core.timeutil import MS_PER_DAY
    from skewless.engines.redis_client import masters, open_redis
    from skewless.serving.online import OnlineStore
    from skewless.stack.base import free_port
    from skewless.stack.cluster import RedisCluster, free_cluster_ports_env
    from skewless.stack.procs import stop_pids, wait_until
    from skewless.stack.redis import RedisServer
    from tests.support.fill import fill, write

    root = Path(tempfile.mkdtemp(prefix="bench-online-cluster-"))
    cluster = RedisCluster(port=int(free_cluster_ports_env()["SKEWLESS_REDIS_PORT"]))
    single_server = RedisServer(port=free_port())
    started = [single_server.start(root / "single", root)]
    try:
        started.append(cluster.start(root / "cluster", root))
        wait_until(lambda: single_server.healthy() and not cluster.problems(), 90, "bench redis and redis cluster",
                   interval_s=0.5)
        single = redis.Redis(host="127.0.0.1", port=single_server.port)
        on_cluster = open_redis(redis_target(f"redis+cluster://127.0.0.1:{cluster.node_ports[0]}"))
        cluster_nodes = [redis.Redis(host="127.0.0.1", port=p) for p in cluster.node_ports]  # masters and replicas
        repo = load_repository()
        now = int(time.time() * 1000)
        events = USERS * 15
        filled = fill(PROJECT, repo, users=USERS, events=events, start_ms=now - 4 * MS_PER_DAY,
                      rate=events / (4 * MS_PER_DAY / 1000), cutoff_ms=now // MS_PER_DAY * MS_PER_DAY)
        write(single, filled.data)
        write(on_cluster, filled.data)
        users = filled.users
        stats_view = repo.view("user_order_stats")
        keys = [entity_key(PROJECT, stats_view, (u,)) for u in users]
        spread = {name: sum(1 for _ in node.scan_iter(match=f"{PROJECT}:*:{{*", count=1000)) for name, node in masters(on_cluster)}

        def block(i: int) -> list[str]:
            base = (i * 100) % max(1, len(users) - 100)
            return users[base:base + 100]

        def read_pair(client: Any) -> tuple[list[float], list[float]]:
            store = OnlineStore(repo, client, PROJECT)
            index = {u: k for u, k in zip(users, keys)}

            def floor(i: int) -> Any:
                p = client.pipeline(transaction=False)
                for u in block(i):
                    p.hmget(index[u], "b:cutoff", "b:run")
                return p.execute()

            def read(i: int) -> Any:
                store.caches.forget_entities()
                return store.get_online_features({"user_id": block(i)}, SERVICE)

            for i in range(30):  # warm-up
                floor(i), read(i)
            lat: tuple[list[float], list[float]] = ([], [])
            for i in range(READS):  # alternating, so a burst of load from elsewhere hits both alike
                for which in ((0, 1) if i % 2 == 0 else (1, 0)):
                    t = time.perf_counter()
                    (floor, read)[which](i)
                    lat[which].append(time.perf_counter() - t)
            return lat

        c_floor, c_read = read_pair(on_cluster)
        s_floor, s_read = read_pair(single)

        cutoff = now // MS_PER_DAY * MS_PER_DAY
        day = datetime.fromtimestamp((cutoff - MS_PER_DAY) / 1000, tz=timezone.utc).date()  # the run of cut-off C
        rows = _serving_rows(stats_view, MAT_ROWS, cutoff, "bench-run", single.get(f"{PROJECT}:v2:epoch").decode())
        mat: dict[str, list[tuple[float, float]]] = {"single": [], "cluster": []}
        for _ in range(MAT_RUNS):
            mat["single"].append(_materialize(single, [single], stats_view, day, rows))
            mat["cluster"].append(_materialize(on_cluster, cluster_nodes, stats_view, day, rows))
    finally:
        for s in started:
            stop_pids(s.pids)
        shutil.rmtree(root, ignore_errors=True)

    sc, fc, ss, fs = latency_stats(c_read), latency_stats(c_floor), latency_stats(s_read), latency_stats(s_floor)
    best = {t: max(runs) for t, runs in mat.items()}  # (rows/s, cpu/row) of each topology's fastest run
    return {
        "online_cluster_p99_ms_100_entities": {
            "value": sc["p99"], "unit": "ms", "p50": sc["p50"], "n": sc["n"],
            "floor": {"value": fc["p99"], "unit": "ms", "p50": fc["p50"],
                      "name": "redis-py RedisCluster pipeline, one 2-field HMGET per entity"},
            "ratio_to_floor": _ratio(sc["p99"], fc["p99"]), "goal": "<= 1.5x floor",
            "single": {"value": ss["p99"], "p50": ss["p50"], "floor_p99": fs["p99"],
                       "ratio_to_floor": _ratio(ss["p99"], fs["p99"])},
            "note": f"{USERS} users, uncached (caches emptied before every call), {SERVICE}; entity hashes per master "
                    f"{sorted(spread.values())}; 3 masters + 3 replicas and the client on 2 cores"},
        "materialize_cluster_rows_per_s": {
            "value": round(best["cluster"][0]), "unit": "rows/s",
            "floor": {"value": round(best["single"][0]), "unit": "rows/s", "name": "the same rows into one Redis"},
            "ratio_to_single": _ratio(best["cluster"][0], best["single"][0]), "goal": ">= 0.6x single",
            "redis_cpu_us_per_row": round(best["cluster"][1], 2), "single_redis_cpu_us_per_row": round(best["single"][1], 2),
            "runs": {t: [round(r) for r, _ in runs] for t, runs in mat.items()},
            "note": f"{MAT_ROWS} rows, best of {MAT_RUNS} alternating runs each; cluster CPU counts masters and replicas "
                    "(each write is applied twice), on the same 2 cores as the client"},
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
