"""``skewless archive run|compact|status``: the raw archive of Kafka-fed sources in Iceberg (docs/archive.md)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from skewless.core.timeutil import iso_utc

NAME = "archive"
HELP = "archive every Kafka-fed source into its raw Iceberg table exactly once (run), compact it, show progress"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", default="feature_defs", help="feature repository folder (default: feature_defs)")
    p.add_argument("--schemas", default=None, help="JSON Schema folder (default: schemas/ next to the repository)")
    p.add_argument("--catalog-db", default=None, help="Iceberg sqlite catalog (default: .skewless/catalog.db)")
    p.add_argument("--warehouse", default=None, help="Iceberg warehouse folder (default: .skewless/warehouse)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="archive sources continuously (long-running; SIGTERM/Ctrl-C commits and stops)")
    _common(run)
    run.add_argument("--source", default="all", help="a source name, or 'all' (every source with a topic)")
    run.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: the profile's kafka.bootstrap, else 127.0.0.1:<SKEWLESS_KAFKA_PORT>)")
    run.add_argument("--max-records", type=int, default=50_000, help="commit after this many records (default 50000)")
    run.add_argument("--max-interval", type=float, default=5.0, help="... or this many seconds after a batch's first record (default 5)")
    run.add_argument("--drain", action="store_true", help="stop once every partition is archived up to its current end")
    compact = sub.add_parser("compact", help="rewrite small files per day and expire old snapshots (safe while `run` runs)")
    _common(compact)
    compact.add_argument("--source", required=True, help="a source name, or 'all'")
    compact.add_argument("--min-files", type=int, default=2, help="rewrite a day holding at least this many files (default 2)")
    compact.add_argument("--keep-snapshots", type=int, default=5, help="snapshots to keep (default 5)")
    compact.add_argument("--min-age", type=float, default=600.0, help="never expire snapshots younger than this many seconds (default 600)")
    status = sub.add_parser("status", help="per source: offsets, max event time, state and complete-until (the newest "
                                          "event time minus the allowed lateness: what a backfill may read)")
    _common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")


def _load(args: argparse.Namespace) -> tuple[Any, Any] | None:
    from skewless.core.repo import RepositoryLoadError, load_repository
    from skewless.core.validation import DefinitionError
    from skewless.engines.iceberg_catalog import load_catalog

    try:
        repo = load_repository(args.repo, schemas_dir=args.schemas)
    except (DefinitionError, RepositoryLoadError) as exc:
        print(f"skewless archive: {exc}", file=sys.stderr)
        return None
    return repo, lambda: load_catalog(catalog_db=args.catalog_db, warehouse=args.warehouse)


def _event_sources(repo: Any, which: str) -> list[Any] | None:
    from skewless.core.dsl import EventSource

    sources = [s for s in repo.sources if isinstance(s, EventSource)]
    if which != "all":
        chosen = [s for s in sources if s.name == which]
        if not chosen:
            names = ", ".join(s.name for s in sources) or "none"
            print(f"skewless archive: no event source {which!r} (event sources: {names})", file=sys.stderr)
            return None
        sources = chosen
    for s in [s for s in sources if s.is_batch_only]:
        print(f"archive {s.name}: batch-only (no topic): read in place from {s.table}; nothing to archive", file=sys.stderr)
    return [s for s in sources if not s.is_batch_only]


def _load_sources(args: argparse.Namespace) -> tuple[Any, Any, list[Any]] | None:
    """The repository, its catalog factory and the chosen event sources (None: an error was printed)."""
    loaded = _load(args)
    if loaded is None:
        return None
    repo, catalog_factory = loaded
    sources = _event_sources(repo, args.source)
    return None if sources is None else (repo, catalog_factory, sources)


def _run(args: argparse.Namespace) -> int:
    from skewless.archive.runner import ArchiveConfig, RunStats, env_fault_hook, run_archives
    from skewless.config import kafka_bootstrap

    loaded = _load_sources(args)
    if loaded is None:
        return 1
    repo, catalog_factory, sources = loaded
    if not sources:
        print("skewless archive: no source with a topic; nothing to do", file=sys.stderr)
        return 0
    catalog_factory()  # a wrong catalog or object store: one line (EngineSetupError) before any thread starts
    config = ArchiveConfig(
        bootstrap=args.bootstrap or kafka_bootstrap(),
        max_records=args.max_records,
        max_interval_s=args.max_interval,
        schemas_dir=Path(args.schemas).resolve() if args.schemas else Path(repo.schemas_dir),
        fault=env_fault_hook(),
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"archive: {', '.join(s.name for s in sources)} from {config.bootstrap} "
          f"(commit every {config.max_records} records or {config.max_interval_s:g} s)", file=sys.stderr, flush=True)
    results = run_archives(sources, catalog_factory, config, stop, drain=args.drain)
    failed = {k: v for k, v in results.items() if not isinstance(v, RunStats)}
    for name, outcome in results.items():
        if isinstance(outcome, RunStats):
            print(f"archive {name}: {outcome.records} rows, {outcome.dead_letters} dead letters in {outcome.commits} commits",
                  file=sys.stderr)
        else:
            print(f"archive {name}: STOPPED: {outcome}", file=sys.stderr)
    return 1 if failed else 0


def _compact(args: argparse.Namespace) -> int:
    from skewless.archive.maintenance import compact

    loaded = _load_sources(args)
    if loaded is None:
        return 1
    repo, catalog_factory, sources = loaded
    catalog = catalog_factory()
    for source in sources:
        for r in compact(catalog, source, min_files=args.min_files, keep_snapshots=args.keep_snapshots, min_age_s=args.min_age):
            print(f"{r.table}: rewrote {r.partitions_rewritten} partition(s), {r.files_before} -> {r.files_after} files, "
                  f"{r.rows} rows; expired {r.snapshots_expired} snapshot(s), deleted {r.files_deleted} file(s)")
            for note in r.notes:
                print(f"  {note}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from skewless.offline.archive_progress import archive_progress
    from skewless.core.dsl import EventSource

    loaded = _load(args)
    if loaded is None:
        return 1
    repo, catalog_factory = loaded
    catalog = catalog_factory()
    sources = {s.name: s for s in repo.sources if isinstance(s, EventSource)}
    out = [archive_progress(catalog, source) for source in sources.values()]
    if args.json:
        print(json.dumps([
            {**{k: v for k, v in p.__dict__.items() if k != "partitions" and k != "dead_letter_offsets"},
             "partitions": {str(k): v.__dict__ for k, v in p.partitions.items()},
             "dead_letter_offsets": {str(k): v for k, v in p.dead_letter_offsets.items()}}
            for p in out], indent=2))
        return 0
    for s in repo.sources:
        if not isinstance(s, EventSource):
            print(f"{s.name}: table source (no topic): read in place from {s.table}; the archive does nothing for it")
    for p in out:
        if p.state == "batch-only":
            print(f"{p.source}: batch-only (no topic): read in place from {p.table}; the archive does nothing for it")
            continue
        print(f"{p.source}: {p.state}  topic={p.topic}  table={p.table}  complete_until={iso_utc(p.complete_until_ms)}  "
              f"committed_at={iso_utc(p.committed_at_ms)}")
        lateness = sources[p.source].allowed_lateness
        print(f"  complete_until = the newest archived event time minus the allowed lateness ({lateness}), so it "
              f"trails the stream by that much; a backfill of day D runs once complete_until >= D+1 00:00 UTC")
        if p.stopped_reason:
            print(f"  STOPPED: {p.stopped_reason}")
        for part, pp in sorted(p.partitions.items()):
            print(f"  partition {part}: last_offset={pp.last_offset} max_event_time={iso_utc(pp.max_event_time_ms)}"
                  f"{' caught-up' if pp.caught_up else ''}  dead-letters-next={p.dead_letter_offsets.get(part, '-')}")
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("pyiceberg").setLevel(logging.WARNING)
    if args.action == "run":
        return _run(args)
    if args.action == "compact":
        return _compact(args)
    return _status(args)
