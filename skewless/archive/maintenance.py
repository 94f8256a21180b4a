"""Small-file hygiene for the archive's tables: ``skewless archive compact`` (docs/archive.md, "Compaction").

* **Rewrite**: per table partition (a day) holding ``min_files`` or more data files, read exactly those files
  and replace them by one sorted file (per partition) in ONE overwrite snapshot: delete(those files) + add(the
  new ones). Files appended meanwhile are not touched, and the commit asserts the snapshot it read, so a
  concurrent archive commit makes the compaction retry instead of losing rows. Table properties (the
  archive's offsets and progress) are not changed; the offsets are also copied into the snapshot summary.
* **Expire**: drop snapshots that are neither among the last ``keep_snapshots`` nor younger than
  ``min_age_s``, then delete the files only they referenced (manifest lists, manifests, data files), and
  metadata JSON files no longer in the metadata log. PyIceberg 0.8.1 cannot apply ``remove-snapshots``
  itself; :func:`_register_remove_snapshots` adds that metadata update (as later PyIceberg versions do).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from skewless.archive.tables import OFFSET_COL, PARTITION_COL
from skewless.offline import archive_progress as P

log = logging.getLogger("skewless.archive")


@dataclass
class CompactResult:
    table: str
    partitions_rewritten: int = 0
    files_before: int = 0
    files_after: int = 0
    rows: int = 0
    snapshots_expired: int = 0
    files_deleted: int = 0
    notes: list[str] = field(default_factory=list)


def _register_remove_snapshots() -> None:
    from pyiceberg.table.update import RemoveSnapshotsUpdate, _apply_table_update

    if RemoveSnapshotsUpdate in _apply_table_update.registry:
        return

    @_apply_table_update.register(RemoveSnapshotsUpdate)
    def _(update: RemoveSnapshotsUpdate, base_metadata: Any, context: Any) -> Any:
        remove = set(update.snapshot_ids)
        if base_metadata.current_snapshot_id in remove:
            raise ValueError(f"cannot remove the current snapshot {base_metadata.current_snapshot_id}")
        referenced = {ref.snapshot_id for ref in base_metadata.refs.values()}
        if remove & referenced:
            raise ValueError(f"cannot remove snapshots {sorted(remove & referenced)}: a branch or tag points at them")
        context.add_update(update)
        return base_metadata.model_copy(update={
            "snapshots": [s for s in base_metadata.snapshots if s.snapshot_id not in remove],
            "snapshot_log": [e for e in base_metadata.snapshot_log if e.snapshot_id not in remove],
        })


def rewrite_small_files(table: Any, name: str, min_files: int = 2, attempts: int = 5) -> CompactResult:
    """Replace the data files of every partition holding ``min_files`` or more by one file each (one snapshot)."""
    import pyarrow.compute as pc
    from pyiceberg.exceptions import CommitFailedException
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files

    result = CompactResult(name)
    for attempt in range(1, attempts + 1):
        table.refresh()
        if table.current_snapshot() is None:
            return result
        groups: dict[tuple, list[Any]] = defaultdict(list)
        for task in table.scan().plan_files():
            if task.delete_files:
                result.notes.append(f"{task.file.file_path}: has delete files; its partition is left as it is")
                continue
            groups[(task.file.spec_id, tuple(task.file.partition))].append(task)
        chosen = {k: v for k, v in groups.items() if len(v) >= min_files}
        if not chosen:
            result.notes.append(f"no partition of {name} has {min_files}+ data files")
            return result
        offsets = table.properties.get(P.OFFSETS_PROP)
        summary = {"skewless.compaction": "rewrite", **({P.OFFSETS_PROP: offsets} if offsets else {})}
        sort_keys = [(c, "ascending") for c in (PARTITION_COL, OFFSET_COL) if c in table.schema().column_names]
        rows = files_after = 0
        try:
            with table.transaction() as tx:
                with tx.update_snapshot(snapshot_properties=summary).overwrite() as rewrite:
                    for tasks in chosen.values():
                        before = sum(t.file.record_count for t in tasks)
                        data = ArrowScan(tx.table_metadata, table.io, tx.table_metadata.schema(), AlwaysTrue()).to_table(tasks)
                        if data.num_rows != before:
                            raise RuntimeError(f"{name}: read {data.num_rows} rows from files holding {before}; not compacting")
                        if sort_keys:
                            data = data.take(pc.sort_indices(data, sort_keys=sort_keys))
                        for new_file in _dataframe_to_data_files(tx.table_metadata, data, table.io, write_uuid=rewrite.commit_uuid):
                            rewrite.append_data_file(new_file)
                            files_after += 1
                        for t in tasks:
                            rewrite.delete_data_file(t.file)
                        rows += before
        except CommitFailedException as exc:
            log.warning("compact %s: a concurrent commit (attempt %d): %s; re-planning", name, attempt, exc)
            time.sleep(0.5 * attempt)
            continue
        result.partitions_rewritten = len(chosen)
        result.files_before = sum(len(v) for v in chosen.values())
        result.files_after = files_after
        result.rows = rows
        return result
    raise RuntimeError(f"compact {name}: {attempts} attempts lost to concurrent commits; retry when the archive is less busy")


def referenced_files(table: Any, snapshots: list[Any]) -> set[str]:
    """Every manifest list, manifest and data/delete file the given snapshots reference."""
    files: set[str] = set()
    for snap in snapshots:
        files.add(snap.manifest_list)
        for manifest in snap.manifests(table.io):
            files.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                files.add(entry.data_file.file_path)
    return files


def expire_snapshots(table: Any, name: str, keep_snapshots: int = 5, min_age_s: float = 600.0,
                     result: CompactResult | None = None) -> CompactResult:
    """Expire old snapshots (keeping the last ``keep_snapshots`` and any younger than ``min_age_s``) and delete
    the files only they referenced, plus metadata files no longer in the metadata log."""
    from pyiceberg.table.update import RemoveSnapshotsUpdate

    if keep_snapshots < 1:
        raise ValueError("keep_snapshots must be >= 1 (the current snapshot is always kept)")
    _register_remove_snapshots()
    result = result or CompactResult(name)
    table.refresh()
    meta = table.metadata
    now_ms = time.time() * 1000
    ordered = sorted(meta.snapshots, key=lambda s: (s.timestamp_ms, s.sequence_number or 0))
    keep_ids = {s.snapshot_id for s in ordered[-keep_snapshots:]} | {ref.snapshot_id for ref in meta.refs.values()}
    expire = [s for s in ordered if s.snapshot_id not in keep_ids and now_ms - s.timestamp_ms >= min_age_s * 1000]
    if expire:
        candidates = referenced_files(table, expire)
        with table.transaction() as tx:
            tx._apply((RemoveSnapshotsUpdate(snapshot_ids=[s.snapshot_id for s in expire]),))
        table.refresh()
        # Only after the commit: what the (new) retained snapshots reference is kept.
        live = referenced_files(table, table.metadata.snapshots)
        dead = sorted(candidates - live)
        for path in dead:
            try:
                table.io.delete(path)
                result.files_deleted += 1
            except FileNotFoundError:
                pass
        result.snapshots_expired = len(expire)
    # Metadata JSON files: keep the current one and those in the metadata log; delete older ones past min age.
    # Only versions below the current one as seen here: a newer file is a commit made since (the archive runs
    # concurrently) and may be the table's current metadata, whatever its mtime says. Listed and deleted through
    # the table's FileIO, so this works on object storage (s3://) as on a local warehouse.
    logged = {_base_name(e.metadata_file) for e in table.metadata.metadata_log}
    logged.add(_base_name(table.metadata_location))
    current = _metadata_version(_base_name(table.metadata_location))
    if current is not None:
        for name, location, mtime_ms in metadata_files(table, result):
            version = _metadata_version(name)
            if version is not None and version < current and name not in logged and mtime_ms is not None:
                if now_ms - mtime_ms >= min_age_s * 1000:
                    try:
                        table.io.delete(location)
                        result.files_deleted += 1
                    except FileNotFoundError:
                        pass
    return result


def _base_name(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1]


def metadata_files(table: Any, result: CompactResult | None = None) -> list[tuple[str, str, float | None]]:
    """``(name, location, mtime_ms)`` of every file in the table's metadata folder, listed through the table's
    FileIO's file system (local or ``s3://``); empty, with a note in ``result``, if its FileIO cannot list."""
    from pyarrow import fs

    fs_by_scheme = getattr(table.io, "fs_by_scheme", None)
    folder = table.metadata_location.rsplit("/", 1)[0]
    if fs_by_scheme is None:
        if result is not None:
            result.notes.append(f"{type(table.io).__name__} cannot list {folder}: old metadata files are left")
        return []
    parsed = urlparse(folder)
    scheme = parsed.scheme or "file"
    path = parsed.path if scheme == "file" else f"{parsed.netloc}{parsed.path}"
    listing = fs_by_scheme(scheme, parsed.netloc).get_file_info(fs.FileSelector(path, allow_not_found=True))
    return [(info.base_name, f"{folder}/{info.base_name}",
             info.mtime_ns / 1e6 if info.mtime_ns is not None else None)
            for info in listing if info.type == fs.FileType.File]


def _metadata_version(name: str) -> int | None:
    """The version of a table metadata file named ``<version>-<uuid>.metadata.json`` (None: another file)."""
    head = name.split("-", 1)[0]
    return int(head) if name.endswith(".metadata.json") and head.isdigit() else None


def compact(catalog: Any, source: Any, *, min_files: int = 2, keep_snapshots: int = 5, min_age_s: float = 600.0) -> list[CompactResult]:
    """Rewrite small files and expire old snapshots of a source's raw and dead-letter tables."""
    from pyiceberg.exceptions import NoSuchTableError

    from skewless.archive.tables import dead_letter_table_name

    results = []
    for name in (source.table, dead_letter_table_name(source)):
        try:
            table = catalog.load_table(name)
        except NoSuchTableError:
            r = CompactResult(name)
            r.notes.append(f"table {name} does not exist yet (the archive has not run)")
            results.append(r)
            continue
        before_offsets = table.properties.get(P.OFFSETS_PROP)
        r = rewrite_small_files(table, name, min_files=min_files)
        expire_snapshots(table, name, keep_snapshots=keep_snapshots, min_age_s=min_age_s, result=r)
        table.refresh()
        after_offsets = table.properties.get(P.OFFSETS_PROP)
        if before_offsets and after_offsets is None:
            raise RuntimeError(f"compact {name}: the archive offsets property vanished; this is a bug, stop and report it")
        results.append(r)
    return results
