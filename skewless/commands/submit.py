"""``skewless submit <view|all>``: the compiled streaming job on the `make up` Flink cluster."""

from __future__ import annotations

import argparse
import os

from skewless.commands import CommandError, positive_int

NAME = "submit"
HELP = "submit the streaming job of a feature view (or all) to the local Flink session cluster"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("view", nargs="?", default="all", help="feature view name, or 'all' (default)")
    parser.add_argument("--repo", default="feature_defs", help="feature repository folder (default: feature_defs)")
    parser.add_argument("--starting-offsets", default="earliest", choices=("earliest", "latest", "group"))
    parser.add_argument("--parallelism", type=positive_int, default=None)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more run_view.py arguments")


def run(args: argparse.Namespace) -> int:
    from skewless import config
    from skewless.core.repo import load_repository
    from skewless.stack.flink import FlinkSessionCluster
    from skewless.stack.kafka import create_topics
    from streaming_jobs.flink_compiler import compile_repository

    repo = load_repository(args.repo)
    try:
        jobs = compile_repository(repo, None if args.view == "all" else [args.view])
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    bootstrap = f"{config.HOST}:{config.ports().kafka}"
    create_topics(bootstrap, {j.topic: 3 for j in jobs})
    script = config.PROJECT_ROOT / "streaming_jobs" / "run_view.py"
    # no credentials in argv: the job reads the Redis password and Kafka security settings from the environment
    job_args = ["--view", args.view, "--starting-offsets", args.starting_offsets, "--bootstrap", bootstrap,
                "--redis", f"redis://{config.HOST}:{config.ports().redis}/0", "--repo", os.path.abspath(args.repo),
                *args.extra]
    if args.parallelism:
        job_args += ["--parallelism", str(args.parallelism)]
    job_id = FlinkSessionCluster().submit_python_job(script, job_args, detached=True, parallelism=args.parallelism)
    print(f"skewless submit: {args.view} -> Flink job {job_id} (views {', '.join(v for j in jobs for v in j.views)}); "
          "`skewless jobs` lists, `skewless jobs --cancel ID` cancels")
    return 0
