"""`skewless stack up|down|status`: the local Kafka + Flink + Redis stack and the raw archive (see docs/infra.md)."""

from __future__ import annotations

import argparse
import sys

from skewless.stack import manager
from skewless.stack.base import StackError
from skewless.stack.cluster import TOPOLOGIES

NAME = "stack"
HELP = ("start, stop or inspect the local stack on 127.0.0.1: Kafka (KRaft), a Flink session cluster, Redis, and the "
        "raw archive (one `skewless archive run` per Kafka-fed source, Kafka -> Iceberg)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = sub.add_parser("up", help="check prerequisites and ports, start every service and the archive, wait until healthy")
    up.add_argument("--topology", choices=TOPOLOGIES, default="single",
                    help="single (default): one node per service; cluster: 3 Kafka brokers (RF 3, min ISR 2), "
                         "Flink with 2 TaskManagers x 2 slots, Redis Cluster of 3 masters + 3 replicas (docs/infra.md)")
    sub.add_parser("down", help="stop exactly the processes `up` recorded (by pid); idempotent")
    status = sub.add_parser("status", help="per service (archive included): running/healthy, pid, RSS, endpoints; then the running "
                                               "Flink jobs (exit 1 if a recorded service is not healthy)")
    status.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "up":
            return manager.up(topology=args.topology)
        if args.action == "down":
            return manager.down()
        return manager.status(as_json=args.json)
    except StackError as exc:
        print(f"stack: error: {exc}", file=sys.stderr)
        return 1
