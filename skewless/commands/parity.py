"""``skewless parity``: the end-to-end consistency proof (docs/parity.md)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any
from urllib.parse import urlsplit

NAME = "parity"
HELP = "the consistency proof: a seeded random stream through Kafka, Flink, Redis, the archive, Spark and both training engines vs the oracle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="generator seed (make parity SEED=n)")
    parser.add_argument("--topology", choices=("single", "cluster"), default="single",
                        help="single: the `make up` stack (default); cluster: the running `make up TOPOLOGY=cluster` "
                             "(every component from its profile), asserting the run spread over its nodes")
    parser.add_argument("--events", type=int, default=3000, help="records to generate (default 3000)")
    parser.add_argument("--entities", type=int, default=60, help="users (Zipf-skewed; default 60)")
    parser.add_argument("--days", type=float, default=3.0, help="history span ending now, > 2 (default 3)")
    parser.add_argument("--sample", type=int, default=30, help="entities compared (default 30)")
    parser.add_argument("--bootstrap", default=None, help="Kafka (default: the profile's, else the `make up` stack)")
    parser.add_argument("--redis-url", default=None, help="Redis (default: the profile's, else the `make up` stack)")
    parser.add_argument("--minicluster", action="store_true", help="run the Flink job in this process instead of the session cluster")
    parser.add_argument("--workdir", default=None, help="private Iceberg catalog + checkpoints (default .skewless/parity/seed-N-<time>)")
    parser.add_argument("--keep", action="store_true", help="keep the run's Redis keys")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from skewless import config
    from skewless.e2e.parity import ParityConfig, Targets
    from skewless.stack.flink import FlinkSessionCluster
    from skewless.engines.kafka import metadata_ok

    if args.days <= 2:
        print("skewless parity: --days must be > 2 (batch and stream parts must both matter)", file=sys.stderr)
        return 2
    if args.topology == "cluster":
        return run_on_cluster(args)
    workdir = Path(args.workdir) if args.workdir else config.paths().state / "parity" / f"seed-{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    targets = Targets.local_stack(workdir)
    targets.bootstrap = args.bootstrap or config.kafka_bootstrap()  # a flag, else the profile (docs/deploy.md)
    targets.redis_url = args.redis_url or config.redis_target().url
    targets.flink_rest_port = urlsplit(config.flink_rest_url()).port
    if args.minicluster:
        targets.flink = "minicluster"
    problems = []
    if not metadata_ok(targets.bootstrap):
        problems.append(f"Kafka at {targets.bootstrap} does not answer")
    if targets.flink == "session" and not FlinkSessionCluster(rest_port=targets.flink_rest_port).healthy():
        problems.append(f"no Flink session cluster with a free slot on port {targets.flink_rest_port}")
    if problems:
        print("skewless parity: " + "; ".join(problems) + ". Start the stack with `make up` (or pass --bootstrap/"
              "--redis-url and --minicluster).", file=sys.stderr)
        return 2
    cfg = ParityConfig(seed=args.seed, events=args.events, entities=args.entities, days=args.days, sample=args.sample,
                       keep=args.keep)
    return run_and_report(cfg, targets, None, f"catalog and checkpoints in {workdir}")


def run_and_report(cfg: Any, targets: Any, probe: Any, where: str) -> int:
    """Run the proof, print the report; 0 when it holds."""
    from skewless.core.repo import load_repository
    from skewless.e2e.parity import FEATURE_VIEW, SNAPSHOT_VIEW, format_report, run_parity

    t0 = time.monotonic()
    try:
        report = run_parity(cfg, targets, log=lambda line: print(line, flush=True), probe=probe)
    finally:
        if targets.spark is not None:
            targets.spark.stop()
    repo = load_repository()
    print()
    print(format_report(report, repo.view(FEATURE_VIEW), repo.view(SNAPSHOT_VIEW)))
    print(f"took {time.monotonic() - t0:.0f} s; {where}")
    return 0 if report.ok else 1


def run_on_cluster(args: argparse.Namespace) -> int:
    """The proof on the running cluster topology (skewless/e2e/parity_cluster.py): a private catalog database and
    warehouse prefix, every other component as the topology's profile names it."""
    import uuid
    from pathlib import Path

    from skewless import config
    from skewless.e2e.parity import ParityConfig
    from skewless.e2e.parity_cluster import (ClusterNotReady, ClusterProbe, cluster_targets, create_run_database,
                                             running_cluster, write_run_profile)
    from skewless.stack.cluster import CLUSTER_PROFILE, SERVICE_NAMES, SparkCluster, cluster_profile_path
    from skewless.stack.manager import make_service, read_record
    from skewless.stack.offline import FLINK_STATE_URI

    if args.bootstrap or args.redis_url or args.minicluster:
        print("skewless parity: --topology cluster takes Kafka, Redis and Flink from the cluster topology's profile; "
              "drop --bootstrap/--redis-url/--minicluster", file=sys.stderr)
        return 2
    try:
        services = running_cluster(read_record(), cluster_profile_path(), make_service, SERVICE_NAMES)
    except ClusterNotReady as exc:
        print(f"skewless parity: {exc}", file=sys.stderr)
        return 2
    spark: SparkCluster = services[SparkCluster.name]
    stamp = time.strftime("%Y%m%d%H%M%S")
    run = f"parity_{args.seed}_{stamp}_{uuid.uuid4().hex[:4]}"
    workdir = Path(args.workdir) if args.workdir else config.paths().state / "parity" / f"cluster-{run}"
    with config.selected(profile=CLUSTER_PROFILE, file=cluster_profile_path()) as profile:
        shared = config.shared_catalog(profile)
        if shared is None or profile.flink.parallelism is None:
            print(f"skewless parity: {cluster_profile_path()} names no postgres catalog or Flink parallelism; restart "
                  "the topology (`make down`, `make up TOPOLOGY=cluster`)", file=sys.stderr)
            return 2
        warehouse = f"s3://{shared.bucket}/parity/{run}"
        uri = create_run_database(shared, run)
        run_profile = write_run_profile(cluster_profile_path(), CLUSTER_PROFILE, uri, warehouse, workdir / "profile.yaml")
    with config.selected(profile=CLUSTER_PROFILE, file=run_profile) as profile:
        targets = cluster_targets(profile, workdir, f"{FLINK_STATE_URI}/parity/{run}")
        probe = ClusterProbe(config.flink_rest_url(profile), profile.flink.parallelism,
                             f"http://{config.HOST}:{spark.ui_port}", warehouse)
        cfg = ParityConfig(seed=args.seed, events=args.events, entities=args.entities, days=args.days,
                           sample=args.sample, keep=args.keep, topology="cluster")
        return run_and_report(cfg, targets, probe, f"catalog: database {run} ({warehouse}); profile {run_profile}")
