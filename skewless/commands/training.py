"""``skewless training-set``: a point-in-time correct training set to a Parquet file.

    skewless training-set --features churn_model --entities entities.parquet --out train.parquet
    skewless training-set --features user_order_stats --spine --start 2024-01-01 --end 2024-02-01 --every 1h \\
        --out train.parquet
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid

from skewless.commands import CommandError, existing_file

NAME = "training-set"
HELP = "point-in-time correct features for entity rows (or a spine of entities x timestamps) to Parquet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features", nargs="+", required=True, help="view:feature, view or feature service names")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--entities", type=entity_file,
                     help="Parquet file with the entity keys and a timestamp column (a path, or s3://BUCKET/KEY on the "
                          "profile's object store)")
    src.add_argument("--spine", action="store_true", help="entities x timestamps from --start to --end every --every")
    parser.add_argument("--start", help="spine: first instant (ISO, UTC)")
    parser.add_argument("--end", help="spine: end instant, exclusive (ISO, UTC)")
    parser.add_argument("--every", default="1h", help="spine: cadence, e.g. 15m, 1h, 1d (default 1h)")
    parser.add_argument("--entity-ids", nargs="*", help="spine: these entity ids (default: every entity in the source)")
    parser.add_argument("--timestamp-column", default="event_timestamp",
                        help="the instant column of the entity rows (--entities; with --spine, the name it gets)")
    parser.add_argument("--engine", choices=("duckdb", "spark"), default="duckdb",
                        help="engine of the point-in-time join (same values either way)")
    parser.add_argument("--out", required=True, help="output Parquet file (written to a temporary file, then renamed)")
    parser.add_argument("--repo", default="feature_defs", help="feature repository folder (default: feature_defs)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def entity_file(text: str) -> str:
    """A readable local file, or an ``s3://`` location (read through the profile's object store)."""
    return text if text.startswith("s3://") else existing_file(text)


def run(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from skewless.engines.object_store import read_parquet
    from skewless.store import FeatureStore
    from skewless.training import TrainingDataError, TrainingInputError
    from skewless.training.plan import build_pit_plan
    from skewless.training.spine import build_spine

    try:
        store = FeatureStore(args.repo)
        if args.spine:
            if not args.start or not args.end:
                raise TrainingInputError("--spine needs --start and --end")
            plan = build_pit_plan(store.repo, args.features)
            entity_df = build_spine(plan, args.start, args.end, args.every, entities=args.entity_ids or None,
                                    catalog=store.catalog, timestamp_column=args.timestamp_column)
        else:
            try:
                entity_df = read_parquet(args.entities)
            except (pa.ArrowException, OSError) as exc:
                raise TrainingInputError(f"{args.entities} is not a Parquet file ({exc}); give the entity rows as "
                                         "Parquet (e.g. pandas DataFrame.to_parquet)") from None
        result = store.get_historical_features(entity_df, args.features, timestamp_column=args.timestamp_column,
                                               engine=args.engine, progress=not args.quiet)
    except (TrainingInputError, TrainingDataError) as exc:
        raise CommandError(str(exc)) from None
    tmp = f"{args.out}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        pq.write_table(result, tmp)
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"skewless {NAME}: {result.num_rows:,} rows, {result.num_columns} columns -> {args.out}", file=sys.stderr)
    return 0
