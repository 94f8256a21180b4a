"""The offline path on object storage, a shared catalog and a Spark cluster against local disk, same run (issue 22).

Metrics (``run() -> dict``), sizes at ``SKEWLESS_BENCH_SCALE`` (default 1.0: 2M events over 365 days of 20k users,
E = 1M entity rows); on 2 cores the ratios measure overhead, not scale-out:

- ``backfill_cluster_365d_s``  `skewless backfill` of 365 days (daily tiles + serving rows) submitted to the
  standalone master with 2 workers (1 core each), the warehouse on s3proxy, the catalog in PostgreSQL; floor: the
  same command on ``local[2]`` with the local-disk warehouse and sqlite catalog. Wall clock of the command (JVM
  start included), both reported.
- ``pit_windowed_s3_1m_s``  the DuckDB training engine (``get_historical_features``) on the S3 warehouse (its
  tiles and raw events scanned by DuckDB as PyArrow datasets on the table's S3 file system); floor: the same
  request on the local-disk warehouse; median of ``SKEWLESS_BENCH_OFFLINE_S3_REPEAT`` (default 3) interleaved runs; values checked equal
  (goal <= 1.5x).

The services (s3proxy, PostgreSQL, Spark master + 2 workers) are started through ``skewless.stack`` on free ports
in a temp state dir and stopped afterwards. Run alone: ``.venv/bin/python -m bench.offline_s3``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bench.pit import write_raw_events

SCALE = float(os.environ.get("SKEWLESS_BENCH_SCALE", "1.0"))
REPEAT = int(os.environ.get("SKEWLESS_BENCH_OFFLINE_S3_REPEAT", "3"))
DAY = 86_400_000
T0 = 1704067200000  # 2024-01-01
START, END = date(2024, 1, 1), date(2024, 12, 30)  # 365 days
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

UP = """
import sys
from skewless.stack.manager import up
from skewless.stack.offline import CatalogDatabase, ObjectStore, SparkCluster
sys.exit(up([ObjectStore(), CatalogDatabase(), SparkCluster()], topology="cluster"))
"""

VIEWS = '''
from datetime import timedelta
from skewless.core.dsl import Agg, Aggregation, Entity, EventSource, FeatureView, Where, Window

source = EventSource(name="bench_orders", schema="orders", table="raw.bench_orders", topic="bench_orders",
                     partition_key="user_id", allowed_lateness=timedelta(hours=1),
                     clock_skew_tolerance=timedelta(minutes=5))
bench_stats = FeatureView(name="bench_stats", entity=Entity("user", {"user_id": "string"}), source=source, features=[
    Aggregation("orders_1h", Agg.COUNT, None, Window.hours(1), where=Where("status", "==", "placed")),
    Aggregation("ltv_365d", Agg.SUM, "amount", Window.days(365), where=Where("status", "==", "completed")),
    Aggregation("avg_amount_30d", Agg.AVG, "amount", Window.days(30)),
    Aggregation("max_amount_7d", Agg.MAX, "amount", Window.days(7)),
    Aggregation("last_status", Agg.LAST, "status", Window.lifetime()),
])
'''


def scaled(x: float) -> int:
    return max(10, int(x * SCALE))


def cli(env: dict[str, str], *args: str, timeout: float = 3600) -> tuple[float, str]:
    """Run ``skewless ARGS`` with ``env``; (wall seconds, stdout). Raises on a non-zero exit."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "skewless.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"skewless {' '.join(args[:2])} failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return time.perf_counter() - t0, proc.stdout


def backfill(env: dict[str, str], defs: Path, master: str | None, driver_memory: str) -> tuple[float, str]:
    argv = ["backfill", "--repo", str(defs), "--view", "bench_stats", "--start", START.isoformat(),
            "--end", END.isoformat(), "--force", "--driver-memory", driver_memory]
    return cli(env, *argv, *(["--master", master] if master else []))


def with_profile(profile: Path | None) -> None:
    """Point this process's configuration at ``profile`` (None: the local default)."""
    if profile is None:
        os.environ.pop("SKEWLESS_CONFIG", None)
    else:
        os.environ["SKEWLESS_CONFIG"] = str(profile)


def run() -> dict[str, Any]:
    from skewless.core.repo import load_repository
    from skewless.engines.iceberg_catalog import load_catalog
    from skewless.stack.cluster import free_cluster_ports_env
    from skewless.store import FeatureStore

    events, users, requests = scaled(2_000_000), scaled(20_000), scaled(1_000_000)
    tmp = Path(tempfile.mkdtemp(prefix="skewless-bench-offline-s3-"))
    tmp.chmod(0o711)  # PostgreSQL runs as the postgres user and must reach its data dir
    for name in ("SKEWLESS_LOG_DIR", "SKEWLESS_CONFIG", "SKEWLESS_PROFILE", "SKEWLESS_SPARK_MASTER",
                 "SKEWLESS_CATALOG_DB", "SKEWLESS_WAREHOUSE"):  # this process and its children: only what is set here
        os.environ.pop(name, None)
    base = dict(os.environ)
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    cluster_env = {**base, "SKEWLESS_STATE_DIR": str(tmp / "state"), **free_cluster_ports_env()}
    local_env = {**base, "SKEWLESS_STATE_DIR": str(tmp / "local")}
    defs = tmp / "repo" / "defs"
    defs.mkdir(parents=True)
    shutil.copytree(ROOT / "schemas", tmp / "repo" / "schemas")
    (defs / "views.py").write_text(VIEWS)
    up = subprocess.run([sys.executable, "-c", UP], env=cluster_env, cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
    try:
        if up.returncode != 0:
            raise RuntimeError(f"stack up failed: {(up.stderr or up.stdout).strip()[-2000:]}")
        profile = tmp / "state" / "cluster-profile.yaml"
        cluster_env["SKEWLESS_CONFIG"] = str(profile)
        repo = load_repository(str(defs))
        view = repo.view("bench_stats")

        # the same raw events into both warehouses
        t0 = time.perf_counter()
        os.environ["SKEWLESS_STATE_DIR"] = local_env["SKEWLESS_STATE_DIR"]
        with_profile(None)
        local_catalog = load_catalog()
        write_raw_events(local_catalog, view.source, events, users, chunk=500_000)
        os.environ["SKEWLESS_STATE_DIR"] = cluster_env["SKEWLESS_STATE_DIR"]
        with_profile(profile)
        s3_catalog = load_catalog()
        write_raw_events(s3_catalog, view.source, events, users, chunk=500_000)
        print(f"raw events written to both warehouses in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

        # 1. the backfill: local[2] + local disk, then the standalone cluster + S3 + PostgreSQL
        local_s, local_out = backfill(local_env, defs, "local[2]", "2g")
        cluster_s, cluster_out = backfill(cluster_env, defs, None, "768m")
        assert " on spark://" in cluster_out, cluster_out[-500:]
        print(f"backfill: local {local_s:.1f} s, cluster+s3 {cluster_s:.1f} s", file=sys.stderr)

        # 2. the DuckDB training engine on each warehouse, interleaved
        rng = np.random.default_rng(3)
        entity_df = pa.table({
            "user_id": pa.array(np.char.add("u", rng.integers(0, users, requests).astype(str))),
            "event_timestamp": pa.array(T0 + 30 * DAY + rng.integers(0, 330 * DAY, requests), pa.int64())
            .cast(pa.timestamp("ms"))})
        stores = {"local": FeatureStore(repo, catalog=local_catalog), "s3": FeatureStore(repo, catalog=s3_catalog)}
        secs: dict[str, list[float]] = {"local": [], "s3": []}
        outs: dict[str, Any] = {}
        for _ in range(max(1, REPEAT)):
            for name, store in stores.items():
                with_profile(profile if name == "s3" else None)
                t = time.perf_counter()
                outs[name] = store.get_historical_features(entity_df, "bench_stats", engine="duckdb", progress=False)
                secs[name].append(time.perf_counter() - t)
            print(f"pit: local {secs['local'][-1]:.2f} s, s3 {secs['s3'][-1]:.2f} s", file=sys.stderr)
        agree = outs["local"].equals(outs["s3"]) if hasattr(outs["local"], "equals") else outs["local"] == outs["s3"]
        if not agree:
            raise AssertionError("the training sets from the S3 and the local-disk warehouse differ")
        pit_local, pit_s3 = statistics.median(secs["local"]), statistics.median(secs["s3"])
        where = "s3proxy 4.1.0 (filesystem backend) + PostgreSQL catalog on this machine"
        return {
            "backfill_cluster_365d_s": {
                "value": round(cluster_s, 1), "unit": "s",
                "floor": {"value": round(local_s, 1), "unit": "s",
                          "name": "the same backfill on local[2], local-disk warehouse + sqlite catalog, same run"},
                "ratio_to_local": round(cluster_s / local_s, 2), "events": events, "users": users, "scale": SCALE,
                "goal": "report both (2 cores: overhead, not scale-out)",
                "detail": f"365 days of tiles + serving rows; Spark standalone master + 2 workers (1 core, 1 GiB "
                          f"each), warehouse on {where}; wall clock of `skewless backfill`, JVM start included"},
            "pit_windowed_s3_1m_s": {
                "value": round(pit_s3, 2), "unit": "s",
                "floor": {"value": round(pit_local, 2), "unit": "s",
                          "name": "the same DuckDB-engine request on the local-disk warehouse, same run"},
                "ratio": round(pit_s3 / pit_local, 2), "goal": "<= 1.5x local disk", "E": requests, "scale": SCALE,
                "runs": [{"local": round(a, 2), "s3": round(b, 2)} for a, b in zip(secs["local"], secs["s3"])],
                "detail": f"tiles and raw events scanned by DuckDB as PyArrow datasets on the table's S3 file system, {where}; "
                          "values equal to the local run's"},
        }
    finally:
        with_profile(None)
        subprocess.run([sys.executable, "-m", "skewless.cli", "stack", "down"], env=cluster_env, cwd=ROOT,
                       capture_output=True, timeout=180)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(run(), indent=2, default=str))
