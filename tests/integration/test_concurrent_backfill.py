"""Two backfills of one view at once (issue 19 faults; the whole race runs in tests/faults/test_archive_faults.py):
both find an output table missing and create it; the loser of that race uses the winner's table instead of failing
with the JVM's AlreadyExistsException (a Py4JJavaError and its Java stack: what the fault test saw)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def test_an_output_table_created_meanwhile_is_used(spark: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import skewless.offline.tables as tables

    name = f"skewless.features.race_{uuid.uuid4().hex[:8]}"
    spark.sql("CREATE NAMESPACE IF NOT EXISTS skewless.features")
    df = spark.createDataFrame([(1, "2024-01-01")], "n BIGINT, day STRING")
    tables.ensure_table(spark, name, df, "day")  # the other backfill, a moment earlier
    real, stale = tables.table_exists, [True]

    def table_exists(session: Any, table: str) -> bool:  # this backfill checked just before the other created it
        if table == name and stale[0]:
            stale[0] = False
            return False
        return real(session, table)

    monkeypatch.setattr(tables, "table_exists", table_exists)
    tables.ensure_table(spark, name, df, "day")
    assert [f.name for f in spark.table(name).schema.fields] == ["n", "day"]
