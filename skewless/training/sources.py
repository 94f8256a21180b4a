"""Reading the Iceberg tables a training set needs with PyIceberg scans (to Arrow), pruned by time.

- the batch path's runs log (which days the daily tiles cover, and the raw snapshot they were computed
  from), its daily tiles, the days whose raw rows changed since that snapshot, and the raw events
  (skewless/offline/tables.py);
- a snapshot view's table source.

:func:`parquet_files` lists a scan's data files when an engine may read them directly (no delete files,
Parquet, one schema in the table's history) with the same rows as the PyIceberg scan: local paths, or
object-store paths with the table's own PyArrow file system.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Sequence
from urllib.parse import unquote, urlparse

import pyarrow as pa

from skewless.core.timeutil import MS_PER_DAY

EPOCH_DATE = date(1970, 1, 1)


class TrainingDataError(RuntimeError):
    """The tables a training set reads are missing or inconsistent; the message says what to run."""


def day_of(day_number: int) -> date:
    return EPOCH_DATE + timedelta(days=day_number)


def iso_utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat()


@dataclass(frozen=True)
class BatchCoverage:
    """Daily tiles of days ``first_day..last_day`` (day numbers since the epoch, contiguous) computed from
    the raw table at ``raw_snapshot_id``."""

    raw_snapshot_id: int | None
    first_day: int | None
    last_day: int | None

    @property
    def empty(self) -> bool:
        return self.first_day is None


def _load(catalog: Any, ident: str) -> Any | None:
    from pyiceberg.exceptions import NoSuchTableError

    try:
        return catalog.load_table(ident)
    except NoSuchTableError:
        return None


def batch_coverage(catalog: Any, runs_ident: str, fingerprint: str) -> BatchCoverage:
    """Days logged with ``fingerprint``: the contiguous run of days ending at the newest one, and the raw
    snapshot of the newest run (the latest finished: snapshot ids are random), the one every current tile
    was computed from or is consistent with (a run recomputes the days that received rows since the run
    before, batch_jobs/runner.py)."""
    from pyiceberg.expressions import EqualTo

    table = _load(catalog, runs_ident)
    if table is None:
        return BatchCoverage(None, None, None)
    rows = table.scan(row_filter=EqualTo("fingerprint", fingerprint),
                      selected_fields=("day", "raw_snapshot_id", "finished_at")).to_arrow()
    if rows.num_rows == 0:
        return BatchCoverage(None, None, None)
    days = sorted({(d - EPOCH_DATE).days for d in rows.column("day").to_pylist() if d is not None})
    runs = [(f, s) for f, s in zip(rows.column("finished_at").to_pylist(), rows.column("raw_snapshot_id").to_pylist())
            if s is not None and f is not None]
    last = days[-1]
    first = last
    present = set(days)
    while first - 1 in present:
        first -= 1
    return BatchCoverage(max(runs)[1] if runs else None, first, last)


def days_added_since(table: Any, since_snapshot: int | None, snapshot_id: int | None, event_time: str) -> set[int] | None:
    """Day numbers (of ``event_time``) of the raw rows live at ``snapshot_id`` but not at ``since_snapshot``:
    the days of the data files appended (or rewritten by compaction) in between, from the manifests of the
    PyIceberg ``table`` (the archive partitions by ``day(event_time)``). None when that cannot be told: the
    older snapshot is gone (expired), or a file's partition is not the event day (another layout, or a day
    before 1970, which older Iceberg versions truncated instead of flooring)."""
    from pyiceberg.transforms import DayTransform

    if since_snapshot == snapshot_id:
        return set()
    if since_snapshot is None or snapshot_id is None or table.snapshot_by_id(since_snapshot) is None:
        return None
    before = {task.file.file_path for task in table.scan(snapshot_id=since_snapshot).plan_files()}
    schema, specs = table.schema(), table.specs()
    source_id = schema.find_field(event_time).field_id
    days: set[int] = set()
    for task in table.scan(snapshot_id=snapshot_id).plan_files():
        if task.file.file_path in before:
            continue
        spec = specs[task.file.spec_id]
        fields = spec.fields
        if len(fields) != 1 or fields[0].source_id != source_id or not isinstance(fields[0].transform, DayTransform):
            return None
        day = task.file.partition[0]
        if isinstance(day, date):
            day = (day - EPOCH_DATE).days
        if not isinstance(day, int) or day < 0:
            return None
        days.add(day)
    return days


def day_segments(days: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted day numbers as ``(first, last)`` of each run of consecutive days."""
    out: list[tuple[int, int]] = []
    for d in days:
        if out and d == out[-1][1] + 1:
            out[-1] = (out[-1][0], d)
        else:
            out.append((d, d))
    return out


def read_daily_tiles(catalog: Any, tiles_ident: str, key_names: Sequence[str], columns: Sequence[str],
                     first_day: int, last_day: int) -> pa.Table:
    """Daily tiles of ``first_day..last_day``: keys, ``day`` (date) and the intermediate columns."""
    from pyiceberg.expressions import And, GreaterThanOrEqual, LessThanOrEqual

    table = _load(catalog, tiles_ident)
    if table is None:
        raise TrainingDataError(f"daily tiles table {tiles_ident} does not exist: run a backfill first "
                                "(`skewless backfill --start ... --end ...`)")
    flt = And(GreaterThanOrEqual("day", day_of(first_day).isoformat()), LessThanOrEqual("day", day_of(last_day).isoformat()))
    return table.scan(row_filter=flt, selected_fields=tuple(key_names) + ("day",) + tuple(columns)).to_arrow()


def read_raw_events(catalog: Any, table_ident: str, snapshot_id: int | None, columns: Sequence[str], event_time: str,
                    start_ms: int, end_ms: int) -> pa.Table:
    """Raw rows with ``start_ms <= event_time < end_ms`` at ``snapshot_id`` (None: the current snapshot)."""
    from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

    table = _load(catalog, table_ident)
    if table is None:
        raise TrainingDataError(f"raw table {table_ident} does not exist: the archive has not written this source yet")
    flt = And(GreaterThanOrEqual(event_time, iso_utc(start_ms)), LessThan(event_time, iso_utc(end_ms)))
    scan = table.scan(row_filter=flt, selected_fields=tuple(dict.fromkeys(columns)),
                      **({"snapshot_id": snapshot_id} if snapshot_id is not None else {}))
    return scan.to_arrow()


def current_snapshot_id(catalog: Any, table_ident: str) -> int | None:
    table = _load(catalog, table_ident)
    if table is None:
        return None
    snap = table.current_snapshot()
    return None if snap is None else snap.snapshot_id


def read_table(catalog: Any, table_ident: str, columns: Sequence[str], what: str) -> pa.Table:
    """Selected columns of a whole table (snapshot sources)."""
    table = _load(catalog, table_ident)
    if table is None:
        raise TrainingDataError(f"{what} table {table_ident} does not exist")
    return table.scan(selected_fields=tuple(dict.fromkeys(columns))).to_arrow()


def day_range_ms(first_day: int, last_day: int) -> tuple[int, int]:
    return first_day * MS_PER_DAY, (last_day + 1) * MS_PER_DAY


@dataclass(frozen=True)
class DataFiles:
    """The Parquet data files a scan reads: local paths (``filesystem`` None), or ``bucket/key`` paths read
    through ``filesystem``, the table's own PyArrow file system (its FileIO's endpoint and credentials)."""

    paths: list[str]
    filesystem: Any = None


def parquet_files(catalog: Any, table_ident: str, *, snapshot_id: int | None = None,
                  row_filter: Any = None) -> DataFiles | None:
    """The Parquet data files a scan reads (pruned by ``row_filter``'s manifest and partition statistics),
    or None when reading them directly could differ from the PyIceberg scan: a missing table, delete files,
    non-Parquet files, a schema that ever changed (column names in older files), files on more than one
    file system (or one the table's FileIO cannot name), or no file at all. The caller still applies
    ``row_filter`` to the rows."""
    from pyiceberg.manifest import FileFormat

    table = _load(catalog, table_ident)
    if table is None or len(table.schemas()) != 1:
        return None
    kwargs: dict[str, Any] = {"snapshot_id": snapshot_id} if snapshot_id is not None else {}
    if row_filter is not None:
        kwargs["row_filter"] = row_filter
    paths: list[str] = []
    stores: set[tuple[str, str]] = set()  # (scheme, netloc) of object-store files; ("", "") for local ones
    for task in table.scan(**kwargs).plan_files():
        path = task.file.file_path
        if task.delete_files or task.file.file_format != FileFormat.PARQUET:
            return None
        if path.startswith("file:"):
            stores.add(("", ""))
            paths.append(unquote(urlparse(path).path))
        elif "://" in path:
            scheme, netloc, key = table.io.parse_location(path)
            stores.add((scheme, netloc))
            paths.append(key)
        else:
            stores.add(("", ""))
            paths.append(path)
    if not paths or len(stores) != 1:
        return None
    scheme, netloc = stores.pop()
    if not scheme:
        return DataFiles(paths)
    fs_by_scheme = getattr(table.io, "fs_by_scheme", None)  # PyIceberg's PyArrowFileIO (per-instance cache)
    return None if fs_by_scheme is None else DataFiles(paths, fs_by_scheme(scheme, netloc))
