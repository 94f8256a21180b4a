"""The archive gate of a batch run: the raw table must hold every event before the cut-off (docs/batch.md)."""

from __future__ import annotations

from typing import Any

from skewless.offline.archive_progress import archive_progress
from skewless.core.dsl import EventSource
from skewless.core.timeutil import iso_utc
from skewless.offline.tables import ArchiveNotCompleteError, pyiceberg_catalog


def check_archive(spark: Any, source: EventSource, cutoff: int, catalog: Any | None = None) -> str:
    """Raise :class:`ArchiveNotCompleteError` unless the archive of ``source`` is complete past the cut-off
    plus the allowed lateness (``skewless.offline.archive_progress``: ``complete_until_ms`` already subtracts the
    lateness, so the rule is ``complete_until_ms >= C``). Returns a short note for the log."""
    progress = archive_progress(catalog if catalog is not None else pyiceberg_catalog(spark), source)
    when = iso_utc(cutoff)
    if progress.state == "batch-only":
        return f"{source.name} is batch-only: no archive gate"
    if progress.state == "stopped":
        raise ArchiveNotCompleteError(f"the archive of {source.name} is stopped ({progress.stopped_reason}); "
                                      "fix it before running the batch")
    if progress.state == "not-started" or progress.complete_until_ms is None:
        raise ArchiveNotCompleteError(f"the archive of {source.name} has no progress yet ({progress.state}): "
                                      f"cannot tell whether events before {when} are all in {source.table}")
    if not progress.is_complete_until(cutoff):
        until = iso_utc(progress.complete_until_ms)
        raise ArchiveNotCompleteError(
            f"the archive of {source.name} is complete until {until} (newest event time minus the allowed lateness "
            f"{source.allowed_lateness}); the run needs {when}. Wait for the archive, or pass --force for closed "
            "history / static data")
    return f"archive complete until {iso_utc(progress.complete_until_ms)} >= cut-off {when}"
