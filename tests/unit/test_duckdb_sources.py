"""The embedded engine's direct reads: Parquet files on a file system (object storage in production) are
read through a PyArrow dataset with the same rows as ``read_parquet`` of local paths."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.fs as pa_fs
import pyarrow.parquet as pq
import pytest

from skewless.training import duckdb_sources, sources


def _write_files(root: Path) -> list[str]:
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    paths = []
    for part in range(3):
        rows = pa.table({"user_id": [f"u{part}{i}" for i in range(50)],
                         "amount": pa.array([part * 100 + i for i in range(50)], pa.int64()),
                         "event_time": pa.array([t0.timestamp() * 1e6 + (part * 50 + i) * 60e6 for i in range(50)],
                                                pa.int64()).cast(pa.timestamp("us", tz="UTC"))})
        path = root / f"part-{part}.parquet"
        pq.write_table(rows, path, row_group_size=10)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("on_file_system", [False, True])
def test_direct_read_selects_the_same_rows_either_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       on_file_system: bool) -> None:
    paths = _write_files(tmp_path)
    start_us = int(datetime(2026, 1, 1, 1, tzinfo=timezone.utc).timestamp() * 1e6)
    end_us = start_us + 40 * 60_000_000
    files = (sources.DataFiles([p.lstrip("/") for p in paths], pa_fs.SubTreeFileSystem("/", pa_fs.LocalFileSystem()))
             if on_file_system else sources.DataFiles(paths))
    monkeypatch.setattr(sources, "parquet_files", lambda *a, **k: files)
    con = duckdb.connect()
    where = f"event_time >= make_timestamp({start_us}) AND event_time < make_timestamp({end_us})"
    how = duckdb_sources.relation(con, "raw", None, "db.t", ["user_id", "amount", "event_time", "amount"],
                                  where=where, read_arrow=lambda: pytest.fail("the fallback is not taken"))
    assert how == ("dataset" if on_file_system else "parquet")
    got = con.execute("SELECT user_id, amount FROM raw ORDER BY amount").fetchall()
    expected = [(f"u{(m // 50)}{m % 50}", (m // 50) * 100 + m % 50) for m in range(60, 100)]
    assert got == expected
    duckdb_sources.drop(con, "raw")
    with pytest.raises(duckdb.CatalogException):
        con.execute("SELECT 1 FROM raw")
