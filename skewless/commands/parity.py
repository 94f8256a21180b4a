"""``skewless parity``: the end-to-end consistency proof (docs/parity.md)."""

from __future__ import annotations

import argparse
import sys
import time
from urllib.parse import urlsplit

NAME = "parity"
HELP = "the consistency proof: a seeded random stream through Kafka, Flink, Redis, the archive, Spark and both training engines vs the oracle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="generator seed (make parity SEED=n)")
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
    from skewless.core.repo import load_repository
    from skewless.e2e.parity import FEATURE_VIEW, SNAPSHOT_VIEW, ParityConfig, Targets, format_report, run_parity
    from skewless.stack.flink import FlinkSessionCluster
    from skewless.engines.kafka import metadata_ok

    if args.days <= 2:
        print("skewless parity: --days must be > 2 (batch and stream parts must both matter)", file=sys.stderr)
        return 2
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
    t0 = time.monotonic()
    try:
        report = run_parity(cfg, targets, log=lambda line: print(line, flush=True))
    finally:
        if targets.spark is not None:
            targets.spark.stop()
    repo = load_repository()
    print()
    print(format_report(report, repo.view(FEATURE_VIEW), repo.view(SNAPSHOT_VIEW)))
    print(f"took {time.monotonic() - t0:.0f} s; catalog and checkpoints in {workdir}")
    return 0 if report.ok else 1
