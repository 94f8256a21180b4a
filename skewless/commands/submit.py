"""``skewless submit <view|all>``: the compiled streaming job on the `make up` Flink cluster.

A view computed by a job that is still active is not submitted twice (two jobs computing the same features,
double the work and two writers on the same online keys): submit refuses, naming the job, unless
``--replace`` cancels it first.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from skewless.commands import CommandError, positive_int
from skewless.commands.jobs import ACTIVE_STATES, describe
from streaming_jobs.flink_compiler import job_label, views_of_stream_job
from streaming_jobs.savepoint import IncompatibleSavepointError, check_restorable

if TYPE_CHECKING:
    from skewless.stack.flink import FlinkSessionCluster

NAME = "submit"
HELP = "submit the streaming job of a feature view (or all) to the local Flink session cluster"
CANCEL_TIMEOUT_S = 120.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("view", nargs="?", default="all",
                        help="feature view name, 'all' (default), or view@vN: the newer version of a view declared in two "
                             "(an upgrade), a job of its own next to the source's (docs/streaming.md)")
    parser.add_argument("--repo", default="feature_defs", help="feature repository folder (default: feature_defs)")
    parser.add_argument("--starting-offsets", default="earliest", choices=("earliest", "latest", "group"),
                        help="where the job starts reading the topic: from the start (rebuilds every window), "
                             "new records only, or the consumer group's committed offsets")
    parser.add_argument("--parallelism", type=positive_int, default=None,
                        help="parallelism of the job (default: the profile's flink.parallelism, else 1)")
    parser.add_argument("--replace", action="store_true",
                        help="cancel a running job that computes the same view(s) before submitting, instead of "
                             "refusing")
    parser.add_argument("--from-savepoint", default=None, metavar="PATH",
                        help="restore the job's state from a savepoint (`skewless jobs --stop ID` prints its path) or a "
                             "retained checkpoint; refused when an incompatible job graph took it")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], metavar="ARG",
                        help="more run_view.py arguments (everything after --extra)")


def conflicting_jobs(jobs: Iterable[dict[str, Any]], views: Sequence[str]) -> list[dict[str, Any]]:
    """The active jobs (``/jobs/overview`` entries) that already compute any of ``views``, oldest first."""
    wanted = set(views)
    return sorted((j for j in jobs if j.get("state") in ACTIVE_STATES and views_of_stream_job(j.get("name", "")) & wanted),
                  key=lambda j: j.get("start-time", 0))


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
    views = [v for j in jobs for v in job_label(j)]  # an upgrade job is named by its lane (view@vN)
    if args.from_savepoint:
        try:
            check_restorable(args.from_savepoint, [j.source for j in jobs], args.view)
        except IncompatibleSavepointError as exc:
            raise CommandError(str(exc)) from None
    cluster = FlinkSessionCluster.at(config.flink_rest_url())
    running = conflicting_jobs(cluster.list_jobs(), views)
    if running and not args.replace:
        first = running[0]
        more = f" (and {len(running) - 1} more)" if len(running) > 1 else ""
        raise CommandError(
            f"{describe(first)}{more} already computes {', '.join(sorted(views_of_stream_job(first['name']) & set(views)))}; "
            "a second job would compute the same features again (two writers on the same online keys)",
            f"`skewless submit {args.view} --replace` cancels it and submits again; `skewless jobs --cancel "
            f"{first['jid']}` only cancels it")
    for job in running:
        replace(cluster, job, views, args.starting_offsets)
    profile = config.active_profile()
    bootstrap = config.kafka_bootstrap(profile)
    create_topics(bootstrap, {j.topic: 3 for j in jobs})
    script = config.PROJECT_ROOT / "streaming_jobs" / "run_view.py"
    # no credentials in argv: the job reads the Redis password and Kafka security settings from the environment
    # and the same profile (--profile, and SKEWLESS_CONFIG, which the command's environment carries to it)
    job_args = ["--view", args.view, "--starting-offsets", args.starting_offsets, "--bootstrap", bootstrap,
                "--redis", config.redis_target(profile=profile).url, "--repo", os.path.abspath(args.repo),
                "--profile", profile.name, *args.extra]
    if args.from_savepoint:
        job_args += ["--from-savepoint", args.from_savepoint]
    parallelism = args.parallelism or profile.flink.parallelism
    if parallelism:
        job_args += ["--parallelism", str(parallelism)]
    job_id = cluster.submit_python_job(script, job_args, detached=True, parallelism=parallelism)
    print(f"skewless submit: {args.view} -> Flink job {job_id} (views {', '.join(views)}); "
          "`skewless jobs` lists, `skewless jobs --cancel ID` cancels")
    return 0


def replace(cluster: FlinkSessionCluster, job: dict[str, Any], views: Sequence[str], starting_offsets: str) -> None:
    """Cancel ``job`` (which computes some of ``views``) and wait until Flink reports it gone.

    A plain cancel: the replacing job may compute changed definitions (another job graph), so it rebuilds its windows
    from Kafka (``--starting-offsets``). A restart that keeps the graph goes through ``skewless jobs --stop ID``
    (stop-with-savepoint) and ``skewless submit --from-savepoint PATH``.
    """
    others = sorted(views_of_stream_job(job["name"]) - set(views))
    restart = ("rebuilds its windows from the start of the topic" if starting_offsets == "earliest" else
               f"starts at the {starting_offsets} offsets without the old job's window state")
    print(f"skewless submit: --replace: cancelling {describe(job)}; a plain cancel, not stop-with-savepoint: the "
          f"new job {restart} (--starting-offsets {starting_offsets})"
          + (f"; it also computed {', '.join(others)}, which stop until submitted again" if others else ""))
    cluster.cancel_job(job["jid"])
    cluster.wait_job(job["jid"], states=("CANCELED",), timeout_s=CANCEL_TIMEOUT_S)  # StackError if still there
