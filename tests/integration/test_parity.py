"""The consistency proof with a small seed inside `make test`: the real Kafka, Flink (MiniCluster), Redis,
archive, Spark backfill, materialization and both training engines against the oracle (docs/parity.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def test_parity_small_seed(kafka_bootstrap: str, redis_url: str, spark: Any, iceberg_location: Any, tmp_path: Path) -> None:
    from skewless.core.repo import load_repository
    from skewless.e2e.parity import FEATURE_VIEW, SNAPSHOT_VIEW, ParityConfig, Targets, format_report, run_parity

    catalog = Targets(kafka_bootstrap, redis_url, iceberg_location.catalog_db, iceberg_location.warehouse).catalog()
    repo = load_repository()
    if catalog.table_exists(repo.view(FEATURE_VIEW).source.table):
        pytest.skip("the session catalog already holds the example repository's raw table (parity needs it fresh)")
    targets = Targets(bootstrap=kafka_bootstrap, redis_url=redis_url, catalog_db=iceberg_location.catalog_db,
                      warehouse=iceberg_location.warehouse, flink="minicluster", spark=spark, workdir=tmp_path)
    report = run_parity(ParityConfig(seed=7, events=900, entities=25, days=2.5, sample=12, instants=8), targets)
    text = format_report(report, repo.view(FEATURE_VIEW), repo.view(SNAPSHOT_VIEW))
    print("\n" + text)
    assert report.ok, text
    compared = {path: sum(n for (_, p), (n, _) in report.tally.items() if p == path) for path in
                ("online-now", "online-asof", "training-duckdb", "training-spark")}
    assert all(n > 50 for n in compared.values()), compared
