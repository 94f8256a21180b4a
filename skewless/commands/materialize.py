"""``skewless materialize``: load the serving rows of a batch run (or a snapshot view's latest rows) into Redis."""

from __future__ import annotations

import argparse
import sys

from skewless.commands import CommandError, redis_url

NAME = "materialize"
HELP = "write a batch run's serving rows (feature views) or latest rows (snapshot views) into Redis via the layout"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--view", action="append", default=None, help="view to load (repeatable; default: all views)")
    parser.add_argument("--day", required=True, help="run day YYYY-MM-DD (its cut-off is the next 00:00 UTC)")
    parser.add_argument("--repo", default="feature_defs", help="feature repository folder")
    parser.add_argument("--namespace", default="features", help="Iceberg namespace of the batch tables")
    parser.add_argument("--redis-url", type=redis_url, default=None,
                        help="default redis://127.0.0.1:$SKEWLESS_REDIS_PORT/0 (rediss:// for TLS, redis+cluster://HOST:PORT,... "
                             "for a Redis Cluster); the password comes from $SKEWLESS_REDIS_PASSWORD or "
                             "$SKEWLESS_REDIS_PASSWORD_FILE")
    parser.add_argument("--project", default=None, help="key prefix (default $SKEWLESS_PROJECT or skewless)")
    parser.add_argument("--no-quality-gate", action="store_true", help="skip the data-quality checks")
    parser.add_argument("--init-epoch", action="store_true", help="initialise the store's epoch if missing")


def materialize(args: argparse.Namespace) -> int:
    import redis

    from batch_jobs.materialize import materialize_feature_view, materialize_snapshot_view
    from batch_jobs.runner import find_view, parse_day
    from skewless.offline.tables import BatchError
    from skewless.config import redis_target
    from skewless.core.dsl import FeatureView
    from skewless.core.repo import RepositoryLoadError, load_repository
    from skewless.core.validation import DefinitionError
    from skewless.engines.iceberg_catalog import load_catalog
    from skewless.engines.redis_client import check_online_store, open_redis

    try:
        day = parse_day(args.day, "--day")
        repo = load_repository(args.repo)
        views = [find_view(repo, n) for n in args.view] if args.view else sorted(repo.views, key=lambda v: v.name)
    except (BatchError, DefinitionError, RepositoryLoadError) as exc:
        print(f"skewless {NAME}: {exc}", file=sys.stderr)
        return 2
    catalog = load_catalog()
    target = redis_target(args.redis_url)
    client = open_redis(target)  # a cluster: every master must answer before anything is written
    check_online_store(client, target)
    gate = None
    if not args.no_quality_gate:
        try:
            from skewless.monitoring.quality import materialization_gate

            gate = materialization_gate(catalog)
        except ImportError:
            print("WARNING: no data-quality gate installed (skewless.monitoring.quality)", file=sys.stderr)
    status = 0
    for view in views:
        try:
            if isinstance(view, FeatureView):
                from skewless.core import layout

                if not layout.batch_windows(view):
                    print(f"{view.name}: no batch-served window, nothing to load")
                    continue
                report = materialize_feature_view(catalog, client, view, day, project=args.project,
                                                  namespace=args.namespace, quality_gate=gate,
                                                  init_epoch=args.init_epoch)
            else:
                report = materialize_snapshot_view(catalog, client, view, day, project=args.project, quality_gate=gate,
                                                   init_epoch=args.init_epoch)
        except BatchError as exc:
            print(f"skewless {NAME}: {view.name}: {exc}", file=sys.stderr)
            status = 2
            continue
        except redis.RedisError as exc:
            raise CommandError(f"Redis at {target.redacted}: {type(exc).__name__}: {exc}",
                               "start the stack (`make up`) or pass --redis-url; the password comes from "
                               "SKEWLESS_REDIS_PASSWORD or SKEWLESS_REDIS_PASSWORD_FILE") from None
        for w in report.warnings:
            print(w, file=sys.stderr)
        print(f"{view.name} v{view.version} day {day}: {report.rows} rows, {report.written} written, "
              f"{report.skipped_newer} kept (newer cut-off in Redis), {report.seconds:.2f} s "
              f"({report.rows_per_s:,.0f} rows/s), run {report.run_id}")
    return status


def run(args: argparse.Namespace) -> int:
    return materialize(args)
