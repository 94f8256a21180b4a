"""``skewless promote <view> <version>``: switch which of a view's two declared versions readers serve.

An upgrade (docs/streaming.md, "Changing a definition while it serves") declares v1 and v2 of a view side by side;
each version's streaming job writes its own keys. Readers serve the version the view's active-version record names
(``layout.active_version_key``; no record: the older declared version). This command is the only writer of that
record, and it writes it only once the target version has caught up (:func:`version_state`): its job's progress is
past the offsets that were live on the topic when it started, a stream-served window does not reach before the first
event it applied, and a window served with the batch (wider than a day, or lifetime) has a materialized backfill
reaching the stream's start. Rollback is the same command naming the older version while its job still runs.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import Any, Mapping

from skewless.commands import CommandError
from skewless.core import layout
from skewless.core.dsl import Aggregation, FeatureView, View
from skewless.core.repo import Repository
from skewless.core.routing import is_stream_served
from skewless.core.staleness import as_text, parse_progress
from skewless.core.timeutil import format_duration, iso_ms, td_ms
from streaming_jobs.flink_compiler import views_of_stream_job

NAME = "promote"
HELP = ("serve another declared version of a view (an upgrade, or its rollback) once that version has caught up; "
        "the only writer of the view's active-version record")


@dataclass(frozen=True)
class VersionState:
    """One declared version of an upgrading view, as the online store shows it."""

    view: View
    lane: str  # its job's progress lane ("" = the source's job)
    applied: dict[int, int]  # partition -> last offset its job applied
    start_offsets: dict[int, int] | None  # partition -> next offset live on the topic when its (upgrade) job started
    applied_from_ms: int | None
    batch_cutoff_ms: int | None
    missing: tuple[str, ...]  # why it has not caught up (empty: it has)

    @property
    def label(self) -> str:
        return f"{self.view.name}@v{self.view.version}"

    def progress_text(self) -> str:
        """How far its job is, e.g. ``1 204/1 500 records of its start`` or ``no progress``."""
        if not self.applied:
            return "no progress"
        if not self.start_offsets:
            return f"applied up to offsets {_offsets(self.applied)}"
        need = sum(self.start_offsets.values())
        done = sum(min(self.applied.get(p, -1) + 1, n) for p, n in self.start_offsets.items())
        return f"{done}/{need} records of its start applied"


def _offsets(by_partition: Mapping[int, int]) -> str:
    return ", ".join(f"{p}:{o}" for p, o in sorted(by_partition.items()))


def _int(raw: Any) -> int | None:
    try:
        return None if raw is None else int(as_text(raw))
    except (TypeError, ValueError):
        return None


def version_state(repo: Repository, view: View, meta: Mapping[Any, Any], progress: Mapping[Any, Any], epoch: Any,
                  now_ms: int) -> VersionState:
    """What the store says of ``view``'s version (its meta and its job's progress hash) and what keeps it from serving."""
    lane = repo.progress_lane(view)
    meta = {as_text(k): as_text(v) for k, v in (meta or {}).items()}
    epoch = as_text(epoch)
    applied = {int(p.partition): p.offset for p in parse_progress(progress or {})
               if p.offset is not None and (epoch is None or p.epoch == epoch)}
    try:
        starts = {int(p): int(o) for p, o in json.loads(meta[layout.META_START_OFFSETS]).items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        starts = None
    applied_from, cutoff = _int(meta.get("applied_from_ms")), _int(meta.get(layout.META_BATCH_CUTOFF))
    submit = f"`skewless submit {view.name}@v{view.version}`"
    missing: list[str] = []
    if not isinstance(view, FeatureView):
        pass  # a snapshot view has no job: its rows are materialized (the batch cut-off below)
    elif view.source.is_batch_only:
        pass
    elif applied_from is None or (lane and starts is None):
        missing.append(f"its streaming job never started ({submit})")
    else:
        behind = {p: (applied.get(p, -1), n) for p, n in (starts or {}).items() if applied.get(p, -1) < n - 1}
        if behind:
            missing.append("its job has not applied the records live at its start (partition:applied/needed "
                           + ", ".join(f"{p}:{a}/{n - 1}" for p, (a, n) in sorted(behind.items())) + ")")
    if isinstance(view, FeatureView) and applied_from is not None:
        for f in view.features:
            if not isinstance(f, Aggregation):
                continue
            width = None if f.window.width is None else td_ms(f.window.width)
            label = "lifetime" if width is None else format_duration(width)
            if is_stream_served(width):
                if not view.source.is_batch_only and now_ms - width < applied_from:  # type: ignore[operator]
                    missing.append(f"'{f.name}' ({label}) reaches before the first event its job applied "
                                   f"({iso_ms(applied_from)}): it reads incomplete until {iso_ms(applied_from + width)}")  # type: ignore[operator]
            elif cutoff is None or cutoff < applied_from:
                missing.append(f"'{f.name}' ({label}) needs a backfill materialized up to {iso_ms(applied_from)} "
                               f"(`skewless backfill` and `skewless materialize --view {view.name}@v{view.version}`)")
    return VersionState(view, lane, applied, starts, applied_from, cutoff, tuple(dict.fromkeys(missing)))


def read_upgrade(repo: Repository, client: Any, project: str, name: str, now_ms: int | None = None
                 ) -> tuple[int | None, list[VersionState]]:
    """``(the version the record names or None, each declared version's state)`` of view ``name``, in one round trip."""
    versions = repo.versions(name)
    pipe = client.pipeline(transaction=False)
    pipe.get(layout.active_version_key(project, name))
    pipe.get(layout.epoch_key(project))
    for v in versions:
        pipe.hgetall(layout.view_meta_key(project, v))
        pipe.hgetall(layout.progress_key(project, v.source.name, repo.progress_lane(v)))
    replies = pipe.execute()
    now = int(time.time() * 1000) if now_ms is None else now_ms
    states = [version_state(repo, v, replies[2 + 2 * i], replies[3 + 2 * i], replies[1], now) for i, v in enumerate(versions)]
    return _int(replies[0]), states


def active_of(record: int | None, states: list[VersionState]) -> int:
    """The version readers serve (the read path's rule: the newest declared version not above the record's, else the
    older declared one)."""
    declared = [s.view.version for s in states]
    return max((v for v in declared if record is not None and v <= record), default=declared[0])


def describe_upgrades(repo: Repository, client: Any, project: str, jobs: list[dict[str, Any]]) -> list[str]:
    """Lines for ``skewless jobs``: per view declared in two versions, the active version and each version's job and
    catch-up."""
    lines = []
    for name in sorted({v.name for v in repo.views if repo.is_upgrading(v.name)}):
        record, states = read_upgrade(repo, client, project, name)
        active = active_of(record, states)
        lines.append(f"upgrade of {name}: versions {', '.join(f'v{s.view.version}' for s in states)}; serving "
                     f"v{active}" + ("" if record is not None else " (no record: the older version)"))
        for s in states:
            label = s.lane or s.view.name
            job = next((j for j in jobs if label in views_of_stream_job(j.get("name", ""))), None)
            where = f"job {job['jid']} {job.get('state', '?')}" if job else "no running job"
            caught = "caught up" if not s.missing else "not caught up: " + "; ".join(s.missing)
            lines.append(f"  v{s.view.version}: {where}; {s.progress_text()}; {caught}")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("view", help="feature view name (declared in two versions: an upgrade)")
    parser.add_argument("version", help="the version to serve, e.g. 2 or v2")
    parser.add_argument("--repo", default="feature_defs", help="feature repository folder")
    parser.add_argument("--redis-url", default=None, help="the online store (default: the profile's)")
    parser.add_argument("--project", default=None, help="key prefix (default $SKEWLESS_PROJECT, the profile's, skewless)")


def parse_version(text: str) -> int:
    digits = text[1:] if text[:1] in ("v", "V") else text
    if not digits.isdigit() or int(digits) < 1:
        raise CommandError(f"version {text!r} is not a version number", "give it as 2 or v2")
    return int(digits)


def check_declared(repo: Repository, name: str, version: int) -> None:
    """One line for a view that is unknown, not declared in two versions, or without that version."""
    target = repo.view(name, version)  # UnknownFeatureError for an unknown view or an undeclared version
    if not repo.is_upgrading(name):
        raise CommandError(f"view {name!r} is declared in one version (v{target.version}): readers serve it without a "
                           "record", f"declare the new version next to it in the feature repository first (version="
                           f"{target.version + 1}), then `skewless submit {name}@v{target.version + 1}`")


def promote(repo: Repository, client: Any, project: str, name: str, version: int, now_ms: int | None = None) -> str:
    """Write the record naming ``version`` of view ``name`` once it has caught up; the line to print, or
    :class:`CommandError` (one line: what is missing and the fix)."""
    check_declared(repo, name, version)
    record, states = read_upgrade(repo, client, project, name, now_ms)
    state = next(s for s in states if s.view.version == version)
    if active_of(record, states) == version and record == version:
        return f"skewless promote: {name} already serves v{version}"
    if state.missing:
        raise CommandError(f"{name} v{version} has not caught up: " + "; ".join(state.missing),
                           f"wait and run `skewless promote {name} {version}` again (`skewless jobs` shows its progress); "
                           "readers keep serving the active version meanwhile")
    client.set(layout.active_version_key(project, name), str(version))
    others = [s for s in states if s.view.version != version]
    return (f"skewless promote: {name} serves v{version} from now on (each read names its version); "
            + "; ".join(f"v{s.view.version} keeps running until you cancel its job (its keys then expire by their TTLs), "
                        f"and `skewless promote {name} {s.view.version}` while it runs rolls back" for s in others))


def run(args: argparse.Namespace) -> int:
    from skewless.commands.online import open_checked_client
    from skewless.config import default_project
    from skewless.core.repo import load_repository

    version = parse_version(args.version)
    repo = load_repository(args.repo)
    check_declared(repo, args.view, version)  # before any connection
    client = open_checked_client(args.redis_url)
    try:
        print(promote(repo, client, args.project or default_project(), args.view, version))
    finally:
        client.close()
    return 0
