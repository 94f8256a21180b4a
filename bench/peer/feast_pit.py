"""The peer's point-in-time join: Feast ``get_historical_features`` on a snapshot-style feature view.

Runs in the peer venv (bench/_peer.py). Reads the same Parquet files the benchmark wrote (the Iceberg
table's data files) and an entity_df Parquet file; prints one JSON object as its last stdout line:

    {"store": "file", "seconds": [..], "best_s": .., "rows_in": .., "rows_returned": ..,
     "rows_with_value": .., "max_rss_mib": ..}

    python feast_pit.py --data DIR_OR_FILE --entities entities.parquet --store file|duckdb \
        [--ttl-days 30] [--created-at created_at [--filter-created]] [--repeat 2]

``--filter-created`` passes ``filter_by_created_timestamp=True``: a row is not visible before its created
timestamp (skewless's created_at rule, docs/semantics.md §7).

One store per process, so ``max_rss_mib`` (this process's peak resident set, VmHWM) is that store's.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path


def _store(root: Path, kind: str):  # noqa: ANN202 - feast types only exist in the peer venv
    from feast import FeatureStore, RepoConfig

    offline = {"type": "file"} if kind == "file" else {"type": "duckdb"}
    config = RepoConfig(project="skewless_bench", provider="local", registry=str(root / "registry.db"),
                        online_store={"type": "sqlite", "path": str(root / "online.db")},
                        offline_store=offline, entity_key_serialization_version=3, repo_path=root)
    return FeatureStore(config=config)


def _peak_rss_mib() -> int:
    """This process's peak resident set (VmHWM; ru_maxrss would include the parent's, kept across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="Parquet file or folder of Parquet files (the feature rows)")
    p.add_argument("--entities", required=True, help="entity_df as Parquet: user_id, event_timestamp")
    p.add_argument("--store", choices=("file", "duckdb"), default="file")
    p.add_argument("--ttl-days", type=float, default=30)
    p.add_argument("--created-at", default="")
    p.add_argument("--filter-created", action="store_true", help="filter_by_created_timestamp=True")
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args(argv)

    import pandas as pd
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Int64, String

    entity_df = pd.read_parquet(args.entities)
    entity_df["event_timestamp"] = pd.to_datetime(entity_df["event_timestamp"], utc=True)
    with tempfile.TemporaryDirectory(prefix="feast-pit-") as tmp:
        root = Path(tmp)
        store = _store(root, args.store)
        user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
        source = FileSource(name="profile_src", path=args.data, timestamp_field="event_time",
                            created_timestamp_column=args.created_at)
        view = FeatureView(name="profile", entities=[user], ttl=timedelta(days=args.ttl_days), source=source,
                           schema=[Field(name="credit_score", dtype=Int64), Field(name="segment", dtype=String)])
        store.apply([user, view])
        seconds, out = [], None
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            out = store.get_historical_features(entity_df=entity_df,
                                                features=["profile:credit_score", "profile:segment"],
                                                **({"filter_by_created_timestamp": True} if args.filter_created else {})
                                                ).to_df()
            seconds.append(round(time.perf_counter() - t0, 3))
    assert out is not None
    return {"store": args.store, "seconds": seconds, "best_s": min(seconds), "rows_in": len(entity_df),
            "rows_returned": len(out), "rows_with_value": int(out["credit_score"].notna().sum()),
            "max_rss_mib": _peak_rss_mib(),
            "feast": __import__("feast").__version__}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
