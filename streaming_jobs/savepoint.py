"""Restoring a streaming job from a savepoint or a retained checkpoint: refuse one this job graph cannot restore.

The job's state lives in its Java operators (``deduplicate-<source>``, ``tiles-<source>``; uids fixed in
``DedupFunction``/``TileAggregateOperator``). A checkpoint taken by an earlier job graph (before the tile operator
replaced the SQL ``GROUP BY``) holds no state for them and cannot be restored into this one: rather than a Flink
stack trace at restore, :func:`check_restorable` names what is missing and the fix (start fresh from Kafka, and
backfill what the topic no longer holds). Metadata on an object store (``s3://``) is not read here: Flink refuses
an unmappable one at restore.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from streaming_jobs.udf import UdfBuildError, run_main

CHECK_CLASS = "dev.skewless.flink.SavepointCheck"
STATEFUL_UIDS = ("deduplicate-{source}", "tiles-{source}")


class IncompatibleSavepointError(ValueError):
    """A savepoint/checkpoint that this job graph cannot restore; the message names the fix."""


def restart_fix(view: str = "<view>") -> str:
    """What to do instead of restoring."""
    return (f"start the job fresh: `skewless submit {view} --starting-offsets earliest` rebuilds the windows from "
            "Kafka; windows longer than the topic's retention read `incomplete` until `skewless backfill` and "
            "`skewless materialize` cover them")


def local_path(pointer: str) -> Path | None:
    """The local path of a checkpoint pointer (a path or a file: URI); None for a remote one (s3://, ...)."""
    url = urlparse(pointer)
    if url.scheme == "file":
        return Path(url.path)
    if not url.scheme:
        return Path(pointer)
    return None


def check_restorable(pointer: str, sources: Iterable[str], view: str = "<view>") -> None:
    """Raise :class:`IncompatibleSavepointError` unless the checkpoint at ``pointer`` holds state for every stateful
    operator of the jobs of ``sources`` (one line: what, why, the fix)."""
    path = local_path(pointer)
    if path is None:
        return
    if not (path / "_metadata").is_file() and not (path.is_file() and path.name == "_metadata"):
        raise IncompatibleSavepointError(f"no savepoint at {pointer} (no _metadata file there): give the directory that "
                                         f"`skewless jobs --stop ID` printed, or {restart_fix(view)}")
    uids = [u.format(source=s) for s in sorted(set(sources)) for u in STATEFUL_UIDS]
    try:
        found = run_main(CHECK_CLASS, [str(path), *uids], "", with_flink=True)
    except UdfBuildError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise IncompatibleSavepointError(f"savepoint {pointer} cannot be read ({reason}); {restart_fix(view)}") from None
    missing = [u for u, state in zip(uids, found) if state != "present"]
    if missing:
        raise IncompatibleSavepointError(
            f"savepoint {pointer} cannot be restored into this job: it holds no state for {', '.join(missing)} (taken "
            "by an earlier job graph; since issue 23 the de-duplication and tile state live in these Java operators); "
            + restart_fix(view))


def stop_with_savepoint(job_client: Any, directory: str, timeout_s: float = 300.0) -> str:
    """Stop a job (a PyFlink ``JobClient``) with a savepoint in ``directory`` (no drain: its window and de-duplication
    state is kept) and return the savepoint's path. PyFlink 2.2's ``JobClient.stop_with_savepoint`` calls a Java
    signature that no longer exists (without the savepoint format), so this calls Flink's own."""
    from pyflink.java_gateway import get_gateway

    canonical = get_gateway().jvm.org.apache.flink.core.execution.SavepointFormatType.CANONICAL
    future = job_client._j_job_client.stopWithSavepoint(False, directory, canonical)
    return str(future.get(int(timeout_s), get_gateway().jvm.java.util.concurrent.TimeUnit.SECONDS))
