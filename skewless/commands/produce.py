"""``skewless produce``: generated (or replayed) events of a source into its Kafka topic."""

from __future__ import annotations

import argparse
import json

from skewless.commands import CommandError, existing_file, fraction, non_negative_float, positive_int

NAME = "produce"
HELP = "produce realistic (and deliberately bad) events of a source to Kafka; --replay FILE re-sends a saved run"
KAFKA_PROBE_TIMEOUT_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from skewless.producer import GeneratorConfig

    parser.add_argument("--source", default="orders", help="event source (only 'orders' has a generator)")
    parser.add_argument("--repo", default="feature_defs", help="feature repository folder (default: feature_defs)")
    parser.add_argument("--rate", type=non_negative_float, default=1000.0, help="records per second (0 = as fast as possible)")
    parser.add_argument("--duration", type=non_negative_float, default=10.0, help="seconds of records to produce")
    parser.add_argument("--seed", type=int, default=GeneratorConfig.seed,
                        help="generator seed: the same seed and options give the same records")
    parser.add_argument("--partitions", type=positive_int, default=3, help="partitions of the topic (created if missing)")
    parser.add_argument("--users", type=positive_int, default=1000,
                        help="distinct users (entity ids) the orders come from")
    parser.add_argument("--bootstrap", default=None, metavar="HOST:PORT",
                        help="Kafka bootstrap servers (default: the profile's kafka.bootstrap, else 127.0.0.1:$SKEWLESS_KAFKA_PORT)")
    parser.add_argument("--topic", default=None, help="topic to write to (default: the source's topic)")
    parser.add_argument("--replay", type=existing_file, default=None, metavar="FILE",
                        help="send the records of this JSON-lines file (written by --save) instead of generating")
    parser.add_argument("--save", default=None, metavar="FILE", help="also write the records as JSON lines (for --replay)")
    parser.add_argument("--manifest", default=None, metavar="FILE",
                        help="write what was injected (counts and sequence numbers, JSON) here")
    for kind in ("duplicate", "late", "future", "malformed"):
        parser.add_argument(f"--{kind}", type=fraction, default=getattr(GeneratorConfig, f"{kind}_fraction"),
                            metavar="FRACTION", help=f"share of {kind} records, 0..1")


def summary(delivered: int, topic: str, seconds: float, counts: dict[str, int], replayed: str | None = None,
            manifest: str | None = None) -> list[str]:
    """The lines ``produce`` prints: what reached which topic how fast, then what was injected."""
    rate = delivered / max(seconds, 1e-9)
    lines = [f"skewless produce: {delivered:,} records to topic {topic} in {seconds:.1f} s ({rate:,.0f}/s)"]
    if replayed:
        lines.append(f"  replayed from {replayed}")
    if counts:
        kinds = ", ".join(f"{n:,} {kind}" for kind, n in counts.items())
        lines.append(f"  generated: {kinds}")
        if manifest:
            lines.append(f"  which records were injected: {manifest}")
    return lines


def run(args: argparse.Namespace) -> int:
    import time

    from skewless import config

    from skewless.core.repo import load_repository
    from skewless.core.timeutil import td_ms
    from skewless.producer import GeneratorConfig, generate
    from skewless.producer.kafka_producer import (ProduceError, ReplayFileError, load_records, produce_records,
                                                  save_records)
    from skewless.engines.kafka import metadata_ok
    from skewless.stack.kafka import create_topics

    repo = load_repository(args.repo)
    source = repo.sources_by_name.get(args.source)
    if source is None or getattr(source, "topic", None) is None:
        raise CommandError(f"{args.source!r} is not an event source with a topic",
                           "pass --source NAME of an event source with a topic")
    topic = args.topic or source.topic
    manifest = None
    if args.replay:
        try:
            records = load_records(args.replay)
        except ReplayFileError as exc:
            raise CommandError(str(exc)) from None
    else:
        overrides = {f"{k}_fraction": getattr(args, k) for k in ("duplicate", "late", "future", "malformed")}
        rate = args.rate or 10_000.0
        cfg = GeneratorConfig(count=max(1, int(rate * args.duration)), rate=rate, seed=args.seed,
                              partitions=args.partitions, users=args.users, start_ms=int(time.time() * 1000),
                              allowed_lateness_ms=td_ms(source.allowed_lateness),
                              clock_skew_ms=td_ms(source.clock_skew_tolerance), **overrides)
        try:
            records, manifest = generate(cfg)
        except ValueError as exc:  # the generator's own checks (e.g. fractions adding up to more than 1)
            raise CommandError(str(exc)) from None
    args.bootstrap = args.bootstrap or config.kafka_bootstrap()
    if not metadata_ok(args.bootstrap, timeout_s=KAFKA_PROBE_TIMEOUT_S):
        raise CommandError(f"cannot reach Kafka at {args.bootstrap} (no answer within {KAFKA_PROBE_TIMEOUT_S:g} s)",
                           "start the stack (`make up`) or pass --bootstrap HOST:PORT")
    if args.save:
        save_records(args.save, records)
    create_topics(args.bootstrap, {topic: args.partitions})
    t0 = time.monotonic()
    try:
        report = produce_records(args.bootstrap, topic, records, rate=args.rate or None, wall_clock_timestamps=True)
    except ProduceError as exc:
        raise CommandError(f"Kafka at {args.bootstrap} did not acknowledge every record: {exc}",
                           "check the broker (`skewless stack status`) and run again") from None
    took = time.monotonic() - t0
    if args.manifest and manifest is not None:
        with open(args.manifest, "w") as f:
            json.dump(manifest.to_json(), f, indent=1)
    print("\n".join(summary(report.delivered, topic, took, manifest.counts if manifest else {}, args.replay,
                           args.manifest if manifest else None)))
    return 0
