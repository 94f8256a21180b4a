"""Entry point of the streaming job: ``python streaming_jobs/run_view.py --view V|all`` (local MiniCluster)
or ``flink run -py streaming_jobs/run_view.py -- --view all`` (``skewless submit``).

Compiles the named views (all streamable ones for ``all``) from the feature repository, one pipeline per
event source, and runs them in one Flink job with checkpointing, mini-batch and the Redis sink.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `flink run -py` starts the script without the project on the path
    sys.path.insert(0, str(ROOT))

DEFAULT_MINI_BATCH = "2 s"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from skewless import config

    p = argparse.ArgumentParser(prog="run_view.py", description=__doc__.splitlines()[0])
    p.add_argument("--view", default="all", help="feature view name (or view@vN: the newer version of an upgrade, in a job "
                                                 "of its own), comma-separated names, or 'all'")
    p.add_argument("--bootstrap", default=None, help="Kafka (default: the profile's, else 127.0.0.1:$SKEWLESS_KAFKA_PORT)")
    p.add_argument("--redis", default=None, help="online store URL (default: the profile's, else the local Redis)")
    p.add_argument("--project", default=None, help="key prefix (default: $SKEWLESS_PROJECT, the profile's, skewless)")
    p.add_argument("--repo", default=str(ROOT / "feature_defs"))
    p.add_argument("--profile", default=None, help="profile of <repo>/skewless.yaml or $SKEWLESS_CONFIG (no secrets "
                                                   "in argv: the job resolves the profile's secret references)")
    p.add_argument("--topic", default=None, help="override the source topic (one source only)")
    p.add_argument("--starting-offsets", default="earliest", choices=("earliest", "latest", "group"))
    p.add_argument("--group", default=None, help="Kafka consumer group (default skewless-<source>)")
    p.add_argument("--parallelism", type=int, default=None,
                   help="the job's parallelism (default: the profile's flink.parallelism, else 1)")
    p.add_argument("--checkpoint-dir", default=str(config.paths().state / "flink" / "checkpoints"))
    p.add_argument("--checkpoint-interval", default="10 s")
    p.add_argument("--mini-batch-latency", default=DEFAULT_MINI_BATCH)
    p.add_argument("--mini-batch-size", type=int, default=100_000)
    p.add_argument("--bounded", action="store_true", help="stop at the offsets that were latest at start")
    p.add_argument("--stop-offsets", default=None, type=parse_stop_offsets,
                   help="stop at these offsets, 'PARTITION:OFFSET,...' for every partition (records may arrive later)")
    p.add_argument("--flush-ms", type=int, default=200)
    p.add_argument("--buffer-timeout-ms", type=int, default=None, help="network buffer timeout (10 for freshness)")
    p.add_argument("--applied-from-ms", type=int, default=None)
    p.add_argument("--name", default=None, help="Flink job name (default skewless-stream-<views>)")
    p.add_argument("--from-savepoint", default=None, metavar="PATH",
                   help="restore the job's state from this savepoint (or retained checkpoint) directory; refused when it "
                        "was taken by an incompatible job graph")
    return p.parse_args(argv)


def parse_stop_offsets(text: str) -> dict[int, int]:
    """``"0:120,1:300"`` as ``{0: 120, 1: 300}``."""
    try:
        pairs = [item.split(":") for item in text.split(",") if item.strip()]
        out = {int(p): int(o) for p, o in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--stop-offsets {text!r}: expected PARTITION:OFFSET,... (integers)") from None
    if not out or any(p < 0 or o < 0 for p, o in out.items()):
        raise argparse.ArgumentTypeError(f"--stop-offsets {text!r}: expected PARTITION:OFFSET,... (non-negative)")
    return out


def stream_conf(mini_batch_latency: str = DEFAULT_MINI_BATCH, mini_batch_size: int = 100_000,
                buffer_timeout_ms: int | None = None) -> dict[str, str]:
    """Table/Python settings of the streaming job (measured on 2 cores, see docs/streaming.md). For freshness
    rather than throughput: a short mini-batch and ``buffer_timeout_ms`` 10."""
    conf = {
        "table.exec.mini-batch.enabled": "true",
        "table.exec.mini-batch.allow-latency": mini_batch_latency,
        "table.exec.mini-batch.size": str(mini_batch_size),
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "table.exec.source.idle-timeout": "0 ms",
        # the sink is idempotent (CAS on the tile version): no upsert materializer state in front of it
        "table.exec.sink.upsert-materialize": "NONE",
        # chained operators pass rows without a serializer copy (the SQL runtime is reuse-safe; the sink's
        # bucket key only reads the row): 0.31 -> 0.49 of the plain-consumer floor, medians of 2 A/B runs each
        "pipeline.object-reuse": "true",
    }
    if buffer_timeout_ms is not None:
        conf["execution.buffer-timeout"] = f"{buffer_timeout_ms} ms"
    return conf


def main(argv: list[str] | None = None) -> int:
    from skewless import config

    args = parse_args(argv)
    with config.selected(args.repo, args.profile) as profile:  # the sink spec resolves the profile's secrets
        args.bootstrap = args.bootstrap or config.kafka_bootstrap(profile)
        args.redis = args.redis or config.redis_target(profile=profile).url
        args.project = args.project or config.default_project(profile)
        args.parallelism = args.parallelism or profile.flink.parallelism
        return run(args)


def run(args: argparse.Namespace) -> int:
    """Compile the views of ``args`` and execute the job (under the selected profile)."""
    # a local MiniCluster runs in the PyFlink gateway JVM started below: the throughput collector, as the
    # session cluster's TaskManager (infra/flink/config.yaml); ignored when submitted with `flink run`
    os.environ.setdefault("JVM_ARGS", "-XX:+UseParallelGC")
    from skewless.core.repo import load_repository
    from skewless.engines.flink_env import create_stream_env
    from streaming_jobs.flink_compiler import compile_repository, job_label, stream_job_name
    from streaming_jobs.job import JobOptions, add_source_job
    from streaming_jobs.savepoint import IncompatibleSavepointError, check_restorable

    repo = load_repository(args.repo)
    names = None if args.view == "all" else [n.strip() for n in args.view.split(",") if n.strip()]
    jobs = compile_repository(repo, names)
    if not jobs:
        print("run_view: no streamable feature views", file=sys.stderr)
        return 1
    if args.topic and len(jobs) > 1:
        print("run_view: --topic needs views of a single source", file=sys.stderr)
        return 2
    conf = stream_conf(args.mini_batch_latency, args.mini_batch_size, args.buffer_timeout_ms)
    if args.from_savepoint:
        try:
            check_restorable(args.from_savepoint, [j.source for j in jobs], args.view)
        except IncompatibleSavepointError as exc:
            print(f"run_view: {exc}", file=sys.stderr)
            return 2
        conf["execution.savepoint.path"] = args.from_savepoint
    env, t_env = create_stream_env(parallelism=args.parallelism or 1, checkpoint_dir=args.checkpoint_dir,
                                   checkpoint_interval=args.checkpoint_interval, extra_conf=conf)
    for job in jobs:
        add_source_job(env, t_env, job, JobOptions(
            bootstrap=args.bootstrap, redis_url=args.redis, project=args.project, repo_path=args.repo, topic=args.topic,
            starting_offsets=args.starting_offsets, group=args.group, bounded=args.bounded,
            stop_offsets=args.stop_offsets, applied_from_ms=args.applied_from_ms, flush_ms=args.flush_ms))
    env.execute(args.name or stream_job_name(v for j in jobs for v in job_label(j)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
