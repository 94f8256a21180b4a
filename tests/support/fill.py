"""An online store filled the way the pipelines fill it, from generated order events (tests and ``bench/online.py``; not shipped).

Tiles are the laws over the admitted events (what the streaming job writes, every tile size of the view),
the batch record is the laws over the offline set before the cut-off (body + tails, what materialization
writes) and snapshot rows are encoded as materialization encodes them; all through :mod:`skewless.core.layout`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from skewless.core import admission, laws, layout
from skewless.core.dsl import Aggregation, FeatureView, SnapshotView
from skewless.core.repo import load_repository
from skewless.core.routing import BATCH_TAIL_DAYS
from skewless.core.schemas import validator
from skewless.core.timeutil import MS_PER_DAY, MS_PER_HOUR
from skewless.producer import GeneratorConfig, generate


@dataclass
class FilledStore:
    """Keys -> values (``str`` for strings, ``dict`` for hashes) plus the events they were built from."""

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


def tiles(project: str, view: FeatureView, admitted: list[dict[str, Any]], epoch: str) -> dict[str, dict[str, str]]:
    """Every tile hash of ``view`` over ``admitted`` (per entity, per tile size)."""
    out: dict[str, dict[str, str]] = {}
    for g in layout.tile_groups(view):
        by_tile: dict[tuple, list] = {}
        for e in admitted:
            by_tile.setdefault((e["user_id"], e["event_time"] // g.tile_ms * g.tile_ms), []).append(e)
        for (user, start), events in by_tile.items():
            accs = [aggregate(a, events, None, None) for a in g.aggregations]
            version = max(e["_offset"] for e in events)
            out.setdefault(layout.tile_key(project, view, (user,), g.tile_ms), {})[str(start)] = \
                layout.encode_tile_vector(version, epoch, accs, g.aggs)
        for key, fields in out.items():  # what TILE_CAS_LUA keeps: retention behind the newest tile
            if key.endswith(f":t:{g.tile_ms}"):
                newest = max(int(f) for f in fields)
                out[key] = {f: v for f, v in fields.items() if int(f) >= newest - g.retention_ms}
    return out


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
         applied_from_ms: int = 0, progress_written_ms: int | None = None) -> FilledStore:
    """The example repository's store: ``user_order_stats`` tiles + batch record, ``customer_profile`` rows.

    Events span ``[start_ms, start_ms + events / rate s)``; the batch run has ``cutoff_ms``.
    """
    view: FeatureView = repo.view("user_order_stats")
    profile: SnapshotView = repo.view("customer_profile")
    admitted, offline = order_events(events, users, start_ms, rate, seed)
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
    store.data[layout.progress_key(project, "orders")] = progress
    store.data.update(tiles(project, view, admitted, epoch))
    per_user: dict[str, list] = {}
    for e in offline:
        per_user.setdefault(e["user_id"], []).append(e)
    for user in store.users:
        store.data[layout.batch_key(project, view, (user,))] = batch_record(view, offline, user, cutoff_ms, run_id, epoch,
                                                                            mine=per_user[user])
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
            store.data[layout.snapshot_key(project, profile, (user,))] = layout.encode_snapshot(
                profile, latest["event_time"], latest["created_at"], latest, epoch)
    return store


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


__all__ = ["FilledStore", "aggregate", "batch_record", "fill", "order_events", "tiles", "write"]
