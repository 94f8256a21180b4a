"""``skewless produce``: generated (or replayed) events of a source into its Kafka topic."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "produce"
HELP = "produce realistic (and deliberately bad) events of a source to Kafka; --replay FILE re-sends a saved run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from skewless import config

    parser.add_argument("--source", default="orders", help="event source (only 'orders' has a generator)")
    parser.add_argument("--rate", type=float, default=1000.0, help="records per second (0 = as fast as possible)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of records to produce")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--partitions", type=int, default=3, help="partitions of the topic (created if missing)")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--bootstrap", default=f"{config.HOST}:{config.ports().kafka}")
    parser.add_argument("--topic", default=None, help="default: the source's topic")
    parser.add_argument("--replay", default=None, help="JSON-lines file of records (written by --save)")
    parser.add_argument("--save", default=None, help="also write the records as JSON lines (for --replay)")
    parser.add_argument("--manifest", default=None, help="write what was injected (JSON) here")
    for kind in ("duplicate", "late", "future", "malformed"):
        parser.add_argument(f"--{kind}", type=float, default=None, help=f"fraction of {kind} records")


def run(args: argparse.Namespace) -> int:
    import time

    from skewless.core.repo import load_repository
    from skewless.core.timeutil import td_ms
    from skewless.producer import GeneratorConfig, generate
    from skewless.producer.kafka_producer import load_records, produce_records, save_records
    from skewless.stack.kafka import create_topics

    repo = load_repository()
    source = repo.sources_by_name.get(args.source)
    if source is None or getattr(source, "topic", None) is None:
        print(f"skewless produce: {args.source!r} is not an event source with a topic", file=sys.stderr)
        return 2
    topic = args.topic or source.topic
    manifest = None
    if args.replay:
        records = load_records(args.replay)
    else:
        overrides = {f"{k}_fraction": getattr(args, k) for k in ("duplicate", "late", "future", "malformed")
                     if getattr(args, k) is not None}
        rate = args.rate or 10_000.0
        cfg = GeneratorConfig(count=max(1, int(rate * args.duration)), rate=rate, seed=args.seed,
                              partitions=args.partitions, users=args.users, start_ms=int(time.time() * 1000),
                              allowed_lateness_ms=td_ms(source.allowed_lateness),
                              clock_skew_ms=td_ms(source.clock_skew_tolerance), **overrides)
        records, manifest = generate(cfg)
    if args.save:
        save_records(args.save, records)
    create_topics(args.bootstrap, {topic: args.partitions})
    t0 = time.monotonic()
    report = produce_records(args.bootstrap, topic, records, rate=args.rate or None, wall_clock_timestamps=True)
    took = time.monotonic() - t0
    if args.manifest and manifest is not None:
        with open(args.manifest, "w") as f:
            json.dump(manifest.to_json(), f, indent=1)
    counts = manifest.counts if manifest else {}
    print(f"skewless produce: {report.delivered} records to {topic} in {took:.1f} s "
          f"({report.delivered / max(took, 1e-9):,.0f}/s) {counts}")
    return 0
