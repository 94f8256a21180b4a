"""``skewless monitor``: freshness, data quality, drift and online/offline consistency of the feature views."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Any

NAME = "monitor"
HELP = "monitor views: freshness | quality | drift | consistency | serve (Prometheus exporter)"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", default="feature_defs", help="feature repository folder (default: feature_defs)")
    p.add_argument("--schemas", default=None, help="JSON Schema folder (default: schemas/ next to the repository)")


def _redis(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis-url", default=None, help="online store (default: redis://127.0.0.1:$SKEWLESS_REDIS_PORT/0)")
    p.add_argument("--project", default=None, help="key prefix of the online store (default: $SKEWLESS_PROJECT or skewless)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="monitor_command", metavar="WHAT")

    p = sub.add_parser("freshness", help="SLA, actual lag and status of every view (exit 1 on a breach)")
    _common(p)
    _redis(p)
    p.add_argument("--view", action="append", help="only this view (repeatable)")
    p.add_argument("--format", choices=["table", "prometheus"], default="table",
                   help="a table for people, or Prometheus text exposition (default: table)")

    p = sub.add_parser("quality", help="check a view's expectations over a parquet/csv file (exit 1 on a failed check)")
    _common(p)
    p.add_argument("--view", required=True, help="the feature view whose expectations are checked")
    p.add_argument("--input", required=True, help="parquet or csv file of feature rows")
    p.add_argument("--run-id", default=None, help="label of the checked run in the stored results (default: a new id)")
    p.add_argument("--store", action="store_true", help="append results to Iceberg monitoring.quality_results")

    p = sub.add_parser("drift", help="PSI/KS drift between a reference and a current sample (files, or --from-stack); "
                                     "table + HTML report")
    _common(p)
    _redis(p)
    p.add_argument("--from-stack", action="store_true",
                   help="reference: a training set of --sample entities over the last --days (every --every); current: "
                        "those entities' values served now from the online store (needs --view and a running stack)")
    p.add_argument("--reference", default=None, help="parquet/csv: training set or offline window")
    p.add_argument("--current", default=None, help="parquet/csv: sampled served values")
    p.add_argument("--view", default=None, help="compare this view's features (default: common columns)")
    p.add_argument("--feature", action="append", help="only this feature (repeatable; names a timestamp feature to include it)")
    p.add_argument("--sample", type=int, default=200, help="--from-stack: entities read from the store (default 200)")
    p.add_argument("--days", type=float, default=7.0, help="--from-stack: reference window, days back from now (default 7)")
    p.add_argument("--every", default="6h", help="--from-stack: reference instants' cadence, e.g. 1h, 1d (default 6h)")
    p.add_argument("--threshold", action="append", default=[], metavar="F=WARN,ALERT[,KS]",
                   help="per-feature thresholds, e.g. customer_ltv_365d=0.2,0.4 (default PSI 0.1/0.25)")
    p.add_argument("--bins", type=int, default=10, help="quantile bins for numeric PSI (default 10)")
    p.add_argument("--html", default=None, help="report path (default: <state dir>/reports/drift-<view>.html)")

    p = sub.add_parser("consistency", help="recompute logged online responses offline; mismatch rate per feature")
    _common(p)
    p.add_argument("--view", required=True, help="the feature view whose logged responses are recomputed")
    p.add_argument("--logged", required=True, help="parquet/csv of logged responses (join keys, request_ms, features)")
    p.add_argument("--recompute", required=True, metavar="MODULE:FUNCTION",
                   help="callable rows -> frame of offline values at each row's request_ms")

    p = sub.add_parser("serve", help="Prometheus exporter of freshness on 127.0.0.1 (GET /metrics)")
    _common(p)
    _redis(p)
    p.add_argument("--port", type=int, default=9464, help="port of the exporter on 127.0.0.1 (default: 9464)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds (default: until Ctrl-C)")


def _load_repo(args: argparse.Namespace) -> Any:
    from skewless.core.repo import RepositoryLoadError, load_repository
    from skewless.core.validation import DefinitionError

    try:
        return load_repository(args.repo, schemas_dir=args.schemas)
    except (DefinitionError, RepositoryLoadError) as exc:
        print(f"skewless monitor: {exc}", file=sys.stderr)
        return None


def _read_frame(path: str) -> Any:
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path} not found")
    if p.suffix.lower() == ".csv":
        return pd.read_csv(p)
    return pd.read_parquet(p)


def _redis_client(args: argparse.Namespace) -> Any:
    """The online store (one Redis or a Redis Cluster) with the configured password/CA and connect/read timeouts
    (:func:`skewless.config.redis_target`), checked once (:func:`skewless.engines.redis_client.check_online_store`)."""
    from skewless.config import redis_target
    from skewless.engines.redis_client import check_online_store, open_redis

    target = redis_target(args.redis_url)
    client = open_redis(target)
    check_online_store(client, target)
    return client


def _project(args: argparse.Namespace) -> str:
    from skewless.config import default_project

    return args.project or default_project()


def _freshness_rows(args: argparse.Namespace, repo: Any) -> list:
    from skewless.monitoring.freshness import freshness

    views = [repo.view(v) for v in args.view] if getattr(args, "view", None) else list(repo.views)
    client = _redis_client(args)
    try:
        return freshness(client, _project(args), views, lane=repo.progress_lane)
    finally:
        client.close()


def _run_freshness(args: argparse.Namespace) -> int:
    from skewless.monitoring import prometheus
    from skewless.monitoring.freshness import render_table

    repo = _load_repo(args)
    if repo is None:
        return 2
    rows = _freshness_rows(args, repo)
    print(prometheus.render(freshness=rows) if args.format == "prometheus" else render_table(rows), end="" if args.format == "prometheus" else "\n")
    return 1 if any(r.breach or r.status == "error" for r in rows) else 0


def _run_quality(args: argparse.Namespace) -> int:
    from skewless.monitoring.quality import check_dataframe, store_results

    repo = _load_repo(args)
    if repo is None:
        return 2
    report = check_dataframe(repo.view(args.view), _read_frame(args.input), run_id=args.run_id)
    print(report.render())
    if args.store:
        from skewless.engines.iceberg_catalog import load_catalog

        ok = store_results(load_catalog(), report)
        print("stored in monitoring.quality_results" if ok else "could not store the results (see log)", file=sys.stderr)
    return 0 if report.passed else 1


def _stack_frames(args: argparse.Namespace, repo: Any, view: Any) -> tuple[Any, Any, str, str]:
    """(reference, current, their names) from the running stack: ``--sample`` entities that hold online state;
    their training set at every ``--every`` over the last ``--days``; their values served now."""
    from datetime import datetime, timedelta, timezone

    from skewless.monitoring.sampling import sample_entities
    from skewless.store import FeatureStore

    client = _redis_client(args)
    try:
        entities = sample_entities(client, _project(args), view, args.sample)
        if not entities:
            raise LookupError(f"no entity holds online state of {view.name} yet: run its streaming job and produce "
                              "events (`skewless submit`, `skewless produce`), or materialize a batch run")
        store = FeatureStore(repo, redis=client, project=_project(args))
        keys = [k for k, _ in view.entity.join_keys]
        features = [f"{view.name}:{f}" for f in view.feature_names]
        online = store.get_online_features([dict(zip(keys, e)) for e in entities], features)
        current = [online.row(i) for i in range(len(online))]
    finally:
        client.close()
    end = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    start = end - timedelta(days=args.days)
    spine = store.spine(features, start, end, args.every, entities=[e[0] for e in entities] if len(keys) == 1 else None)
    reference = store.get_historical_features(spine, features, progress=False)
    return (reference, current, f"training set: {len(entities)} entities every {args.every}, "
            f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC", f"online store now: {len(current)} entities")


def _run_drift(args: argparse.Namespace) -> int:
    from skewless import config
    from skewless.monitoring.drift import TIMESTAMP, DriftThreshold, compare, parse_threshold, timestamp_features
    from skewless.monitoring.report_html import write_html

    files = args.reference is not None or args.current is not None
    if args.from_stack == files or (files and (args.reference is None or args.current is None)):
        print("skewless monitor drift: give --from-stack --view V (a running stack), or both --reference and --current "
              "files", file=sys.stderr)
        return 2
    if args.from_stack and not args.view:
        print("skewless monitor drift: --from-stack needs --view (the view whose features to compare)", file=sys.stderr)
        return 2
    view = repo = None
    if args.view:
        repo = _load_repo(args)
        if repo is None:
            return 2
        view = repo.view(args.view)
    try:
        thresholds = dict(parse_threshold(t) for t in args.threshold)
    except ValueError as exc:
        print(f"skewless monitor drift: {exc}", file=sys.stderr)
        return 2
    default = DriftThreshold(bins=args.bins)
    thresholds = {k: DriftThreshold(v.psi_warn, v.psi_alert, v.ks_alert, args.bins) for k, v in thresholds.items()}
    stamps = timestamp_features(view, repo.try_schema(view.source.schema)) if view is not None else []
    if args.from_stack:
        reference, current, ref_name, cur_name = _stack_frames(args, repo, view)
    else:
        reference, current = _read_frame(args.reference), _read_frame(args.current)
        ref_name, cur_name = Path(args.reference).name, Path(args.current).name
    report = compare(reference, current, view=view, features=args.feature, thresholds=thresholds, default=default,
                     kinds={f: TIMESTAMP for f in stamps}, reference_name=ref_name, current_name=cur_name,
                     left_out={f: "a timestamp: it drifts by construction as time moves on; --feature includes it"
                               for f in stamps})
    print(report.render())
    out = Path(args.html) if args.html else config.paths().state / "reports" / f"drift-{args.view or 'features'}.html"
    write_html(report, str(out))
    print(f"\nreport: {out} (status {report.status})")
    return 1 if report.status in ("alert", "error") else 0


def _load_callable(spec: str) -> Any:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"--recompute {spec!r}: expected MODULE:FUNCTION")
    return getattr(importlib.import_module(module), name)


def _run_consistency(args: argparse.Namespace) -> int:
    from skewless.monitoring.consistency import check_consistency

    repo = _load_repo(args)
    if repo is None:
        return 2
    report = check_consistency(repo.view(args.view), _read_frame(args.logged), _load_callable(args.recompute))
    print(report.render())
    return 0 if report.status == "ok" else 1


def _run_serve(args: argparse.Namespace) -> int:
    from skewless.monitoring import prometheus

    repo = _load_repo(args)
    if repo is None:
        return 2
    try:
        server, thread = prometheus.serve_in_thread(lambda: prometheus.render(freshness=_freshness_rows(args, repo)), args.port)
    except OSError as exc:
        print(f"skewless monitor serve: cannot listen on 127.0.0.1:{args.port} ({exc.strerror or exc}); "
              "pass a free --port, or stop what listens there", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"serving http://{host}:{port}/metrics (Ctrl-C to stop)", flush=True)
    try:
        deadline = None if args.seconds is None else time.monotonic() + args.seconds
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    return 0


def run(args: argparse.Namespace) -> int:
    handlers = {"freshness": _run_freshness, "quality": _run_quality, "drift": _run_drift,
                "consistency": _run_consistency, "serve": _run_serve}
    handler = handlers.get(args.monitor_command or "")
    if handler is None:
        print("usage: skewless monitor {freshness|quality|drift|consistency|serve} ... (see --help)", file=sys.stderr)
        return 2
    import redis

    from skewless.engines.redis_client import OnlineStoreError

    try:
        return handler(args)
    except OnlineStoreError:
        raise  # one line naming the node and the fix (skewless.cli)
    except (FileNotFoundError, ValueError, LookupError, ImportError) as exc:
        print(f"skewless monitor {args.monitor_command}: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"skewless monitor {args.monitor_command}: Redis unreachable ({exc}); is the stack up (`make up`)?",
              file=sys.stderr)
        return 1
