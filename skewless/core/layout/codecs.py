"""Value codecs of the online store: tile vectors, batch records and snapshot rows (see :mod:`skewless.core.layout`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from skewless.core import laws
from skewless.core.dsl import Agg, FeatureView, SnapshotView
from skewless.core.layout.keys import (
    BATCH_FIELD_PREFIX, LIFETIME_FIELD, MANIFEST_FIELD, SNAPSHOT_FIELD, TILE_FIELD_PREFIX, batch_windows,
)
from skewless.core.routing import BATCH_TAIL_DAYS, BATCH_TILE_MS


# --------------------------------------------------------------------------------------------------


def encode_vector(accs: Sequence[Any], aggs: Sequence[Agg]) -> list:
    if len(accs) != len(aggs):
        raise ValueError(f"{len(accs)} intermediates for {len(aggs)} aggregations")
    return [laws.LAWS[Agg(a)].encode(acc) for acc, a in zip(accs, aggs)]


def decode_vector(data: Any, aggs: Sequence[Agg]) -> tuple:
    if not isinstance(data, list) or len(data) != len(aggs):
        raise ValueError(f"expected a vector of {len(aggs)} intermediates, got {data!r}")
    return tuple(laws.LAWS[Agg(a)].decode(d) for d, a in zip(data, aggs))


def encode_tile_vector(version: int, epoch: str, accs: Sequence[Any], aggs: Sequence[Agg]) -> str:
    """A tile field value: ``"<version>|<epoch>|<json vector>"``; version is a non-negative int (writers
    use the offset of the last event applied to the tile) compared by :data:`TILE_CAS_LUA`."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"tile version must be a non-negative int, got {version!r}")
    if not epoch or "|" in epoch:
        raise ValueError(f"epoch must be non-empty without '|', got {epoch!r}")
    return f"{version}|{epoch}|{laws.dumps(encode_vector(accs, aggs))}"


def decode_tile_vector(text: str | bytes, aggs: Sequence[Agg]) -> tuple[int, str, tuple]:
    """``(version, epoch, intermediates)`` of a tile field value."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    version, epoch, body = text.split("|", 2)
    return int(version), epoch, decode_vector(json.loads(body), aggs)


def encode_batch_record(view: FeatureView, cutoff_ms: int, run_id: str, epoch: str,
                        windows: Mapping[str, Sequence[Sequence[Any]]]) -> dict[str, str]:
    """Fields of a batch hash. ``windows`` maps each :func:`batch_windows` field to its parts:
    ``[body, tail0, tail1]`` (each a vector of intermediates) or ``[body]`` for lifetime."""
    if cutoff_ms % BATCH_TILE_MS:
        raise ValueError(f"cut-off {cutoff_ms} is not at 00:00 UTC")
    expected = batch_windows(view)
    if set(windows) != set(expected):
        raise ValueError(f"batch record needs windows {sorted(expected)}, got {sorted(windows)}")
    fields = {"cutoff": str(cutoff_ms), "run": run_id, "epoch": epoch}
    for name, parts in windows.items():
        aggs = [Agg(a.agg) for a in expected[name]]
        want = 1 if name == LIFETIME_FIELD else 1 + BATCH_TAIL_DAYS
        if len(parts) != want:
            raise ValueError(f"{name}: expected {want} parts (body + tail tiles), got {len(parts)}")
        fields[name] = laws.dumps([encode_vector(p, aggs) for p in parts])
    return fields


@dataclass(frozen=True)
class BatchRecord:
    cutoff_ms: int
    run_id: str
    epoch: str
    windows: Mapping[str, tuple[tuple, ...]]  # field -> (body, tail0, tail1) intermediates


def decode_batch_record(view: FeatureView, fields: Mapping[str | bytes, str | bytes]) -> BatchRecord | None:
    """The batch hash as read (HGETALL); None when it is absent."""
    if not fields:
        return None
    f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in fields.items()}
    windows = {}
    for name, aggs in batch_windows(view).items():
        parts = json.loads(f[name])
        windows[name] = tuple(decode_vector(p, [Agg(a.agg) for a in aggs]) for p in parts)
    return BatchRecord(int(f["cutoff"]), f["run"], f["epoch"], windows)


def empty_batch_record(view: FeatureView, cutoff_ms: int, epoch: str) -> BatchRecord:
    """The batch part of an entity that the run with this cut-off did not list: it had no event inside any
    batch window before the cut-off, so every part is the laws' identity (COUNT 0, SUM 0, MIN null, ...)."""
    windows = {}
    for name, aggs in batch_windows(view).items():
        parts = 1 if name == LIFETIME_FIELD else 1 + BATCH_TAIL_DAYS
        windows[name] = tuple(tuple(laws.LAWS[Agg(a.agg)].init() for a in aggs) for _ in range(parts))
    return BatchRecord(cutoff_ms, "", epoch, windows)


def encode_snapshot(view: SnapshotView, ts_ms: int, created_at_ms: int | None, values: Mapping[str, Any],
                    epoch: str) -> str:
    return laws.dumps({"ts": ts_ms, "created_at": created_at_ms, "epoch": epoch,
                       "values": [laws.encode_value(values.get(f.name)) for f in view.fields]})


def decode_snapshot(view: SnapshotView, text: str | bytes) -> tuple[int, int | None, str, dict[str, Any]]:
    """``(ts, created_at, epoch, values)`` of a snapshot key."""
    data = json.loads(text)
    values = {f.name: laws.decode_value(v) for f, v in zip(view.fields, data["values"])}
    return data["ts"], data["created_at"], data["epoch"], values


# --- an entity hash as read (HGETALL), and the parts its manifest says are lost ---------------------------------


def _text(v: str | bytes) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else v


@dataclass(frozen=True)
class EntityHash:
    """The parts of one entity hash (see :mod:`skewless.core.layout.writes` for the manifest)."""

    tiles: Mapping[int, Mapping[int, str]]  # tile size -> tile start -> "version|epoch|vector"
    batch: Mapping[str, str] | None  # the batch record's fields (cutoff, run, epoch, w:...), None: no b:* field
    snapshot: str | None  # the snapshot row
    manifest: Mapping[str, Any] | None  # None: no manifest field
    empty: bool  # the hash does not exist (no state at all: cannot be told from an entity never seen)

    def tiles_lost(self, tile_ms: int) -> tuple[bool, int]:
        """``(some of these tiles lost now, lost up to)``: the first when the hash holds another number of tiles of
        this size than its manifest lists; a window of this size starting at or before the second may miss a tile."""
        entry = ((self.manifest or {}).get("t") or {}).get(str(tile_ms))
        count = len(self.tiles.get(tile_ms, ()))
        if entry is None:
            return count > 0, -1
        return count != int(entry[0]), int(entry[2])

    def batch_lost(self, view: FeatureView) -> bool:
        """The manifest lists a batch record that is not (whole) in the hash, or the hash holds batch fields it does
        not list."""
        listed = (self.manifest or {}).get("b")
        if listed is None:
            return self.batch is not None
        want = {"cutoff", "run", "epoch", *batch_windows(view)}
        return self.batch is None or set(self.batch) != want or self.batch["cutoff"] != str(listed[0])

    def snapshot_lost(self) -> bool:
        """The manifest lists a snapshot row the hash lacks, or the hash holds a row it does not list."""
        return (self.snapshot is not None) != ("s" in (self.manifest or {}))


def read_entity_hash(fields: Mapping[str | bytes, str | bytes] | None) -> EntityHash:
    """An entity hash as HGETALL returns it (``{}`` or None: no such key), split into its parts."""
    tiles: dict[int, dict[int, str]] = {}
    batch: dict[str, str] = {}
    snapshot = manifest = None
    for k, v in (fields or {}).items():
        name, value = _text(k), _text(v)
        if name.startswith(TILE_FIELD_PREFIX):
            size, start = name[len(TILE_FIELD_PREFIX):].split(":")
            tiles.setdefault(int(size), {})[int(start)] = value
        elif name.startswith(BATCH_FIELD_PREFIX):
            batch[name[len(BATCH_FIELD_PREFIX):]] = value
        elif name == SNAPSHOT_FIELD:
            snapshot = value
        elif name == MANIFEST_FIELD:
            manifest = json.loads(value)
        else:
            raise ValueError(f"unexpected field {name!r} in an entity hash")
    return EntityHash(tiles, batch or None, snapshot, manifest, not fields)
