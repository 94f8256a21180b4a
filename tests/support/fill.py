"""An online store filled the way the pipelines fill it, from generated order events (tests and ``bench/online.py``; not shipped).

Tiles are the laws over the admitted events (what the streaming job writes, every tile size of the view),
the batch record is the laws over the offline set before the cut-off (body + tails, what materialization
writes) and snapshot rows are encoded as materialization encodes them; all through :mod:`skewless.core.layout`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from skewless.core import admission, laws, layout
from skewless.core.dsl import Aggregation, FeatureView, SnapshotView
from skewless.core.repo import load_repository
from skewless.core.routing import BATCH_TAIL_DAYS
from skewless.core.schemas import validator
from skewless.core.staleness import LOG_END_FIELD
from skewless.core.timeutil import MS_PER_DAY, MS_PER_HOUR
from skewless.producer import GeneratorConfig, generate


@dataclass
class FilledStore:
    """Keys -> values (``str`` for strings, ``dict`` for hashes: entity hashes with their manifest) plus the events
    they were built from."""

    data: dict[str, Any] = field(default_factory=dict)
    admitted: list[dict[str, Any]] = field(default_factory=list)
    offline: list[dict[str, Any]] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    snapshot_rows: list[dict[str, Any]] = field(default_factory=list)


def topic_records(records: list) -> list[dict[str, Any]]:
    """Generated records as a topic holds them (offsets in order per partition), as admission.py wants them."""
    offsets: dict[int, int] = {}
    raw = []
    for r in records:
        o = offsets.get(r.partition, 0)
        offsets[r.partition] = o + 1
        raw.append({"partition": r.partition, "offset": o, "timestamp_ms": r.timestamp_ms, "value": r.value})
    return raw


def order_events(count: int, users: int, start_ms: int, rate: float, seed: int) -> tuple[list, list]:
    """``(admitted, offline)`` events of generated ``orders`` records (admission applied)."""
    records, _ = generate(GeneratorConfig(count=count, rate=rate, seed=seed, users=users, start_ms=start_ms))
    raw = topic_records(records)
    source = load_repository().sources_by_name["orders"]
    result = admission.admit(raw, source, validator("orders"), key_fields=("user_id",))
    return list(result.admitted), list(result.offline)


def aggregate(a: Aggregation, events: list[dict[str, Any]], lo: int | None, hi: int | None) -> Any:
    law = laws.law(a.agg)
    chosen = [e for e in events if (lo is None or e["event_time"] >= lo) and (hi is None or e["event_time"] < hi)]
    return law.aggregate((laws.contribution(a, e), (e["event_time"], e["_kafka_partition"], e["_offset"])) for e in chosen)


def tile_writes(project: str, view: FeatureView, admitted: list[dict[str, Any]], epoch: str
                ) -> dict[str, list[tuple[layout.TileGroup, dict[int, str]]]]:
    """Per entity hash of ``view``: per tile size its tiles over ``admitted`` (start -> encoded value), what
    TILE_CAS_LUA keeps (retention behind the newest tile)."""
    out: dict[str, list[tuple[layout.TileGroup, dict[int, str]]]] = {}
    for g in layout.tile_groups(view):
        by_tile: dict[tuple, list] = {}
        for e in admitted:
            by_tile.setdefault((e["user_id"], e["event_time"] // g.tile_ms * g.tile_ms), []).append(e)
        per_user: dict[str, dict[int, str]] = {}
        for (user, start), events in by_tile.items():
            accs = [aggregate(a, events, None, None) for a in g.aggregations]
            version = max(e["_offset"] for e in events)
            per_user.setdefault(user, {})[start] = layout.encode_tile_vector(version, epoch, accs, g.aggs)
        for user, fields in per_user.items():
            newest = max(fields)
            out.setdefault(layout.entity_key(project, view, (user,)), []).append(
                (g, {s: v for s, v in fields.items() if s >= newest - g.retention_ms}))
    return out


def tiles(project: str, view: FeatureView, admitted: list[dict[str, Any]], epoch: str) -> dict[str, dict[str, str]]:
    """Every entity hash of ``view`` with the tiles over ``admitted`` (every tile size) and their manifest."""
    out: dict[str, dict[str, str]] = {}
    for key, writes in tile_writes(project, view, admitted, epoch).items():
        fields = out.setdefault(key, {})
        for g, tiles_of in writes:
            fields.update({layout.tile_field(g.tile_ms, s): v for s, v in tiles_of.items()})
        fields[layout.MANIFEST_FIELD] = manifest(fields)
    return out


def manifest(fields: dict[str, str], fence: int = 1) -> str:
    """The manifest the layout's write scripts keep for an entity hash holding ``fields`` (nothing lost)."""
    h = layout.read_entity_hash({k: v for k, v in fields.items() if k != layout.MANIFEST_FIELD})
    man: dict[str, Any] = {}
    if h.tiles:
        man["t"] = {str(size): [len(t), max(t), -1] for size, t in h.tiles.items()}
    if h.batch:
        man["b"] = [h.batch["cutoff"], str(fence), h.batch["run"]]
    if h.snapshot is not None:
        man["s"] = [str(json.loads(h.snapshot)["ts"]), str(fence)]
    return json.dumps(man)


def batch_record(view: FeatureView, offline: list[dict[str, Any]], user: str, cutoff: int, run_id: str,
                 epoch: str, *, mine: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """The batch hash fields a run with ``cutoff`` writes for ``user`` (``mine``: the user's events, if known)."""
    mine = [e for e in offline if e["user_id"] == user] if mine is None else mine
    parts: dict[str, list] = {}
    for fld, aggs in layout.batch_windows(view).items():
        width = None if fld == layout.LIFETIME_FIELD else int(fld[2:])
        ranges = [(None, cutoff)] if width is None else [
            (cutoff - width + BATCH_TAIL_DAYS * MS_PER_DAY, cutoff),
            (cutoff - width, cutoff - width + MS_PER_DAY),
            (cutoff - width + MS_PER_DAY, cutoff - width + 2 * MS_PER_DAY)]
        parts[fld] = [[aggregate(a, mine, lo, hi) for a in aggs] for lo, hi in ranges]
    return layout.encode_batch_record(view, cutoff, run_id, epoch, parts)


def fill(project: str, repo: Any, *, users: int = 50, events: int = 5000, start_ms: int, rate: float = 0.05,
         cutoff_ms: int, epoch: str = "e1", seed: int = 7, run_id: str = "run-1", snapshot_every_ms: int = 12 * MS_PER_HOUR,
         applied_from_ms: int = 0, progress_written_ms: int | None = None,
         edit: Callable[[dict[str, Any]], None] | None = None) -> FilledStore:
    """The example repository's store: ``user_order_stats`` tiles + batch record, ``customer_profile`` rows.

    Events span ``[start_ms, start_ms + events / rate s)``; the batch run has ``cutoff_ms``; ``edit`` changes
    each event (admitted and offline alike) before anything is written.
    """
    view: FeatureView = repo.view("user_order_stats")
    profile: SnapshotView = repo.view("customer_profile")
    admitted, offline = order_events(events, users, start_ms, rate, seed)
    for e in (admitted + offline) if edit is not None else ():
        edit(e)
    store = FilledStore(admitted=admitted, offline=offline)
    store.users = sorted({e["user_id"] for e in offline})
    store.data[layout.epoch_key(project)] = epoch
    store.data[layout.view_meta_key(project, view)] = {"applied_from_ms": str(applied_from_ms), "epoch": epoch}
    progress: dict[str, str] = {}
    for p in sorted({e["_kafka_partition"] for e in admitted}):
        mine = [e for e in admitted if e["_kafka_partition"] == p]
        written = progress_written_ms if progress_written_ms is not None else max(e["event_time"] for e in mine)
        progress[f"p:{p}"] = json.dumps({"offset": max(e["_offset"] for e in mine), "epoch": epoch,
                                         "max_event_ms": max(e["event_time"] for e in mine), "written_ms": written})
    # the job's offset check (docs/semantics.md §11) when it had applied every record: at the newest event
    ends = {str(p): [0, int(json.loads(v)["offset"]) + 1] for p, v in ((f[2:], v) for f, v in progress.items())}
    progress[LOG_END_FIELD] = json.dumps({"checked_ms": max(e["event_time"] for e in admitted), "partitions": ends})
    store.data[layout.progress_key(project, "orders")] = progress
    store.data.update(tiles(project, view, admitted, epoch))
    per_user: dict[str, list] = {}
    for e in offline:
        per_user.setdefault(e["user_id"], []).append(e)
    for user in store.users:
        fields = store.data.setdefault(layout.entity_key(project, view, (user,)), {})
        fields.update(layout.batch_fields(batch_record(view, offline, user, cutoff_ms, run_id, epoch, mine=per_user[user])))
        fields[layout.MANIFEST_FIELD] = manifest(fields)
    rng = random.Random(seed)
    end = start_ms + int(events / rate * 1000)
    for user in store.users:
        ts = start_ms - rng.randrange(2 * MS_PER_DAY)
        latest = None
        while ts <= end:
            row = {"user_id": user, "event_time": ts, "created_at": ts + rng.randrange(MS_PER_HOUR),
                   "credit_score": rng.choice([None, *range(300, 851, 50)]), "segment": rng.choice(["new", "regular", "vip"])}
            store.snapshot_rows.append(row)
            latest = row
            ts += snapshot_every_ms + rng.randrange(MS_PER_HOUR)
        if latest is not None and rng.random() < 0.9:  # some users have no profile
            store.data[layout.entity_key(project, profile, (user,))] = snapshot_hash(
                profile, latest["event_time"], latest["created_at"], latest, epoch)
    return store


def snapshot_hash(view: SnapshotView, ts: int, created_at: int | None, values: dict[str, Any], epoch: str) -> dict[str, str]:
    """The entity hash a snapshot materialization writes: the row and its manifest."""
    row = {layout.SNAPSHOT_FIELD: layout.encode_snapshot(view, ts, created_at, values, epoch)}
    return {**row, layout.MANIFEST_FIELD: manifest(row)}


def write(client: Any, data: dict[str, Any], batch: int = 500) -> None:
    """Write a :class:`FilledStore`'s ``data`` into Redis (plain SET/HSET, no expiry)."""
    pipe = client.pipeline(transaction=False)
    n = 0
    for key, value in data.items():
        if isinstance(value, dict):
            if value:
                pipe.hset(key, mapping=value)
        else:
            pipe.set(key, value)
        n += 1
        if n % batch == 0:
            pipe.execute()
    pipe.execute()


__all__ = ["FilledStore", "aggregate", "batch_record", "fill", "manifest", "order_events", "snapshot_hash", "tile_writes", "tiles", "write"]
