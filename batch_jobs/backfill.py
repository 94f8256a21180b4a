"""Backfill (and daily run) of feature views: ``spark-submit batch_jobs/backfill.py --view V --start D --end D``.

Recomputes the daily tiles of ``[start, end]`` and the serving rows of the cut-off after ``end``; idempotent
(partitions are replaced), resumable (days logged with the same fingerprint are skipped unless
``--rerun``), gated by the archive's progress (``--force`` skips the gate for closed history or static
data). Runs on ``local[*]`` unless ``--master`` names a cluster (e.g. ``spark://127.0.0.1:7077``).
Progress: one line per day (tile rows, seconds). Exit status 0 on success, 2 on a clear refusal.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any, Sequence

MASTER_RE = re.compile(r"^(local(\[(\d+|\*)(,\d+)?\])?|(spark|k8s|mesos)://\S+|yarn)$")
MEMORY_RE = re.compile(r"^\d+[kmgt]?b?$", re.IGNORECASE)
NAMESPACE_RE = re.compile(r"^[a-z_][a-z0-9_]*$")


CATALOG_OUTAGE_RESUMES = 1  # a run cut by the catalog database going away resumes once it answers again
CATALOG_OUTAGE_WAIT_S = 60.0


def catalog_answers_again(timeout_s: float) -> bool:
    """Whether the profile's shared catalog database accepts logins within ``timeout_s`` (False: none configured)."""
    from skewless.config import shared_catalog
    from skewless.engines import EngineSetupError
    from skewless.engines.object_store import check_catalog_db

    catalog = shared_catalog()
    if catalog is None:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            check_catalog_db(catalog)
            return True
        except EngineSetupError:
            time.sleep(1.0)
    return False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from batch_jobs.runner import DEFAULT_CHUNK_DAYS

    parser.add_argument("--view", action="append", default=None,
                        help="feature view to compute (repeatable; default: every feature view with batch-served windows)")
    parser.add_argument("--start", required=True, help="first day YYYY-MM-DD (UTC)")
    parser.add_argument("--end", required=True, help="last day YYYY-MM-DD (UTC); serving rows are written for its cut-off")
    parser.add_argument("--master", default="local[*]", help="Spark master (default local[*])")
    parser.add_argument("--repo", default="feature_defs", help="feature repository folder")
    parser.add_argument("--namespace", default="features", help="Iceberg namespace of the output tables")
    parser.add_argument("--chunk-days", type=int, default=DEFAULT_CHUNK_DAYS,
                        help=f"days per Spark job and Iceberg commit (default {DEFAULT_CHUNK_DAYS})")
    parser.add_argument("--rerun", action="store_true", help="recompute days already done with the same fingerprint")
    parser.add_argument("--force", action="store_true",
                        help="skip the archive-completeness gate (closed history, static test data)")
    parser.add_argument("--no-serving", action="store_true", help="only daily tiles, no serving rows")
    parser.add_argument("--full-serving", action="store_true",
                        help="merge every tile day for the serving rows, even when the state of the day before allows "
                             "the incremental path (docs/batch.md §4)")
    parser.add_argument("--explain", action="store_true", help="print the compiled Spark SQL and exit (no Spark)")
    parser.add_argument("--driver-memory", default="4g", help="driver memory when this process starts the JVM")


def _views(repo: Any, names: Sequence[str] | None) -> list[Any]:
    from skewless.core.dsl import FeatureView
    from batch_jobs.runner import find_view

    if names:
        return [find_view(repo, n) for n in names]
    return [v for v in sorted(repo.views, key=lambda v: v.name) if isinstance(v, FeatureView)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="backfill.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args)


def prepare(args: argparse.Namespace) -> tuple[Any, Any, list[tuple[Any, Any]], list[str]]:
    """``(start, end, [(view, job), ...], [view without a batch-served window, ...])`` from the arguments, every
    one checked (no Spark): raises :class:`~skewless.offline.tables.BatchError` (or the repository's load errors)
    naming what is wrong."""
    from skewless.core.repo import load_repository

    from batch_jobs.runner import compile_view, parse_day
    from skewless.offline.tables import BatchError

    start, end = parse_day(args.start, "--start"), parse_day(args.end, "--end")
    if start > end:
        raise BatchError(f"--start {start} is after --end {end}")
    if args.chunk_days < 1:
        raise BatchError(f"--chunk-days {args.chunk_days} must be at least 1")
    if not MASTER_RE.match(args.master):
        raise BatchError(f"--master {args.master!r} is not a Spark master URL; use local[*], local[N] or spark://HOST:PORT")
    if not MEMORY_RE.match(args.driver_memory):
        raise BatchError(f"--driver-memory {args.driver_memory!r} is not a JVM memory size; use e.g. 4g or 512m")
    if not NAMESPACE_RE.match(args.namespace):
        raise BatchError(f"--namespace {args.namespace!r} is not an Iceberg namespace name (lower snake case)")
    repo = load_repository(args.repo)
    jobs, skipped = [], []
    for view in _views(repo, args.view):
        job = compile_view(repo, view)
        if job.tile_aggregations:
            jobs.append((view, job))
        else:
            skipped.append(view.name)
    return start, end, jobs, skipped


def run(args: argparse.Namespace) -> int:
    from skewless.core.repo import RepositoryLoadError
    from skewless.core.validation import DefinitionError

    from batch_jobs.runner import RunOptions, run_range
    from skewless.offline.tables import BatchError

    try:
        start, end, jobs, skipped = prepare(args)
    except (BatchError, DefinitionError, RepositoryLoadError) as exc:
        print(f"backfill: {exc}", file=sys.stderr)
        return 2
    for name in skipped:
        print(f"{name}: no batch-served window, skipped")
    if args.explain:
        for _, job in jobs:
            print(job.explain())
        return 0
    if not jobs:
        print("backfill: nothing to compute", file=sys.stderr)
        return 2

    from skewless.engines.object_store import catalog_outage
    from skewless.engines.spark_session import spark_session

    spark = spark_session("skewless-backfill", master=args.master, driver_memory=args.driver_memory,
                          shuffle_partitions=8)
    spark.sparkContext.setLogLevel("WARN")
    status = 0
    try:
        for view, job in jobs:
            t0 = time.monotonic()
            print(f"{view.name} v{view.version}: {start}..{end} on {spark.sparkContext.master}", flush=True)
            options = RunOptions(
                namespace=args.namespace, force=args.force, rerun=args.rerun, chunk_days=args.chunk_days,
                write_serving=not args.no_serving, incremental_serving=not args.full_serving,
                log=lambda line: print(line, flush=True))
            for attempt in range(1, CATALOG_OUTAGE_RESUMES + 2):
                try:
                    report = run_range(spark, view, job, start, end, options)
                    break
                except BatchError as exc:
                    print(f"backfill: {view.name}: {exc}", file=sys.stderr)
                    status, report = 2, None
                    break
                except Exception as exc:
                    what = catalog_outage(exc)
                    if what is None:
                        raise
                    if attempt > CATALOG_OUTAGE_RESUMES or not catalog_answers_again(CATALOG_OUTAGE_WAIT_S):
                        print(f"backfill: {view.name}: the catalog database failed mid-run ({what}); what committed "
                              "is logged: fix or restart the database, then rerun the same command (it resumes)",
                              file=sys.stderr)
                        return 1
                    print(f"{view.name}: the catalog database failed mid-run ({what}); it answers again: resuming "
                          "(days logged are skipped)", flush=True)
            if report is None:
                continue
            print(f"{view.name} v{view.version}: done in {time.monotonic() - t0:.1f} s: "
                  f"{len(report.computed_days)} day(s) computed, {len(report.skipped_days)} skipped, "
                  f"{report.tile_rows} tile rows, serving rows {report.serving_rows} ({report.serving_mode}), run {report.run_id}", flush=True)
    finally:
        spark.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
