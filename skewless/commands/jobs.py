"""``skewless jobs``: list (or cancel) the jobs of the local Flink session cluster."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

NAME = "jobs"
HELP = ("list the Flink jobs of the local cluster; --cancel ID cancels one (ID 'all' cancels every running job); "
        "--stop ID stops one with a savepoint (`skewless submit --from-savepoint` restores it)")
# job states (Flink's JobStatus) of a job that is running or will run again: listed by default, and what
# `skewless submit` refuses to duplicate
ACTIVE_STATES = frozenset({"INITIALIZING", "CREATED", "RUNNING", "RESTARTING", "FAILING", "RECONCILING"})


def started_utc(job: dict[str, Any]) -> str:
    """A ``/jobs/overview`` entry's start time as ``YYYY-MM-DD HH:MM:SS`` (UTC)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(job.get("start-time", 0) / 1000))


def describe(job: dict[str, Any]) -> str:
    """One ``/jobs/overview`` entry for a sentence: ``Flink job <id> '<name>' (RUNNING since ... UTC)``."""
    return f"Flink job {job['jid']} '{job.get('name', '')}' ({job.get('state', '?')} since {started_utc(job)} UTC)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cancel", default=None, metavar="ID", help="job id to cancel, or 'all'")
    parser.add_argument("--all", action="store_true", help="also list finished/cancelled jobs")
    parser.add_argument("--stop", default=None, metavar="ID",
                        help="stop this job with a savepoint (no drain: its window and de-duplication state is kept) "
                             "and print the savepoint's path")
    parser.add_argument("--repo", default="feature_defs",
                        help="feature repository: its views declared in two versions (upgrades) are listed with their "
                             "active version and each version's job and catch-up")
    parser.add_argument("--savepoint-dir", default=None, metavar="DIR",
                        help="where --stop writes the savepoint (default: the cluster's state.savepoints.dir)")


def run(args: argparse.Namespace) -> int:
    from skewless.config import flink_rest_url
    from skewless.stack.base import StackError
    from skewless.stack.flink import FlinkSessionCluster

    cluster = FlinkSessionCluster.at(flink_rest_url())
    try:
        jobs = cluster.list_jobs()
        if args.stop:
            location = cluster.stop_with_savepoint(args.stop, args.savepoint_dir)
            print(f"skewless jobs: stopped {args.stop} with a savepoint at {location}; restore with "
                  f"`skewless submit <view> --from-savepoint {location}`")
            return 0
        if args.cancel:
            running = [j["jid"] for j in jobs if j.get("state") in ACTIVE_STATES]
            targets = running if args.cancel == "all" else [args.cancel]
            for jid in targets:
                cluster.cancel_job(jid)
                print(f"skewless jobs: cancel requested for {jid}")
            return 0
    except StackError as exc:
        print(f"skewless jobs: {exc}", file=sys.stderr)
        return 1
    shown = [j for j in jobs if args.all or j.get("state") in ACTIVE_STATES]
    if not shown:
        print("skewless jobs: no running jobs" + ("" if args.all else " (--all shows finished ones)"))
    else:
        print(f"{'JOB ID':34} {'STATE':10} {'STARTED (UTC)':20} NAME")
        for j in sorted(shown, key=lambda j: j.get("start-time", 0)):
            print(f"{j['jid']:34} {j.get('state', '?'):10} {started_utc(j):20} {j.get('name', '')}")
    print_upgrades(args.repo, [j for j in jobs if j.get("state") in ACTIVE_STATES])
    return 0


def print_upgrades(repo_path: str, running: list[dict[str, Any]]) -> None:
    """The state of every upgrade (a view declared in two versions) of the repository, if it loads and has one."""
    import redis

    from skewless.commands.online import open_checked_client
    from skewless.commands.promote import describe_upgrades
    from skewless.config import default_project
    from skewless.core.repo import RepositoryLoadError, load_repository
    from skewless.core.validation import DefinitionError

    try:
        repo = load_repository(repo_path)
    except (RepositoryLoadError, DefinitionError):
        return  # no repository here: only the jobs
    if not any(repo.is_upgrading(v.name) for v in repo.views):
        return
    try:
        client = open_checked_client(None)
        try:
            lines = describe_upgrades(repo, client, default_project(), running)
        finally:
            client.close()
    except redis.RedisError as exc:
        print(f"skewless jobs: cannot read the upgrades' state from the online store: {exc}", file=sys.stderr)
        return
    print("\n".join(lines))
