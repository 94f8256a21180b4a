"""Key names of the online store and which aggregation lives in which key (see :mod:`skewless.core.layout`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from skewless.core import laws
from skewless.core.dsl import Agg, Aggregation, Entity, FeatureView, KeyType, SnapshotView
from skewless.core.routing import BATCH_TILE_MS, STREAM_DAILY_TILE_RETENTION_MS, is_stream_served
from skewless.core.timeutil import MS_PER_HOUR, default_tile_ms, td_ms

LAYOUT_VERSION = 2
# Fields of an entity hash (one per entity and view version, see :func:`entity_key`):
TILE_FIELD_PREFIX = "t:"  # t:{H}:{tile start ms} -> "version|epoch|[acc, ...]"
BATCH_FIELD_PREFIX = "b:"  # b:cutoff, b:run, b:epoch, b:w:{width ms|life} -> [body, tail0, tail1]
SNAPSHOT_FIELD = "s"  # the snapshot row {"ts", "created_at", "values", "epoch"}
MANIFEST_FIELD = "m"  # what the writers put in the hash (see skewless.core.layout.writes): a part it lists that is
# missing reads ``incomplete``
EVICTING_POLICIES = ("allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-lfu", "volatile-random",
                     "volatile-ttl")
TILE_RETENTION_SLACK_MS = MS_PER_HOUR  # beyond W + H (+ the source's clock-skew tolerance)
LIFETIME_FIELD = "w:life"
# The view-level record of the newest fully materialized batch run (a field of the view meta hash): written after
# every entity's batch hash of that run, so a reader that finds no hash (or an older one) for an entity knows the
# run had no events of it.
META_BATCH_CUTOFF = "batch_cutoff_ms"
# An upgrade job's start (a field of its view version's meta): the topic's offsets live when it started, JSON partition
# -> next offset; `skewless promote` requires its progress past them (docs/streaming.md, "Changing a definition").
META_START_OFFSETS = "start_offsets"
ESCAPES = {"%": "%25", ":": "%3A", "{": "%7B", "}": "%7D", ",": "%2C"}  # in entity key text; "%" first (the escapes hold it)
ESCAPE_TABLE = str.maketrans(ESCAPES)
needs_escape = re.compile("[%:{},]").search  # no match: the text is its own escaped form
_FORBIDDEN_IN_NAMES = set(":{}%, \t\r\n")


# --- names and entity keys -------------------------------------------------------------------------------


def check_name(name: str, what: str) -> str:
    """A project, view or source name usable in keys: non-empty, without ``: { } % ,`` or whitespace."""
    if not isinstance(name, str) or not name or set(name) & _FORBIDDEN_IN_NAMES:
        raise ValueError(f"{what} name {name!r} must be non-empty without ':', '{{', '}}', '%', ',' or whitespace")
    return name


def encode_entity_key(entity: Entity, key: Sequence[Any]) -> str:
    """Stable typed text of an entity key: ``s=<escaped string>`` or ``i=<int64>`` per join key, joined by
    ',' (so the string "7" and the integer 7 differ; ':', '{', '}', ',' and '%' are %-escaped)."""
    key = tuple(key)
    if len(key) != len(entity.join_keys):
        raise ValueError(f"entity {entity.name} has {len(entity.join_keys)} join keys, got {len(key)} values: {key!r}")
    parts = []
    for (name, ktype), value in zip(entity.join_keys, key):
        if KeyType(ktype) is KeyType.STRING:
            if not isinstance(value, str):
                raise TypeError(f"join key {name} is a string, got {value!r}")
            parts.append("s=" + value.translate(ESCAPE_TABLE))
        else:
            if isinstance(value, bool) or not isinstance(value, int) or not laws.INT64_MIN <= value <= laws.INT64_MAX:
                raise TypeError(f"join key {name} is an int64, got {value!r}")
            parts.append(f"i={value}")
    return ",".join(parts)


def decode_entity_key(text: str) -> tuple[str | int, ...]:
    """Inverse of :func:`encode_entity_key`."""
    out: list[str | int] = []
    for part in text.split(","):
        kind, _, body = part.partition("=")
        if kind == "i":
            out.append(int(body))
        elif kind == "s":
            value, i = [], 0
            while i < len(body):
                if body[i] == "%":
                    value.append(chr(int(body[i + 1:i + 3], 16)))
                    i += 3
                else:
                    value.append(body[i])
                    i += 1
            out.append("".join(value))
        else:
            raise ValueError(f"not an encoded entity key: {text!r}")
    return tuple(out)


# --- keys --------------------------------------------------------------------------------------------------


def store_prefix(project: str) -> str:
    return f"{check_name(project, 'project')}:v{LAYOUT_VERSION}"


def view_prefix(project: str, view: FeatureView | SnapshotView) -> str:
    return f"{store_prefix(project)}:{check_name(view.name, 'view')}:v{int(view.version)}"


def entity_key(project: str, view: FeatureView | SnapshotView, entity_key: Sequence[Any]) -> str:
    """The entity's hash of this view version: all of its online state for the view (tiles, batch record or
    snapshot row, and the manifest), in the slot of its hash tag."""
    return f"{view_prefix(project, view)}:{{{encode_entity_key(view.entity, entity_key)}}}"


def epoch_key(project: str) -> str:
    return f"{store_prefix(project)}:epoch"


def progress_key(project: str, source_name: str, lane: str = "") -> str:
    """The progress hash of the source's job; ``lane`` (:func:`upgrade_lane`) names an upgrade job's own hash (the
    job of the newer version of a view declared in two, which reads the same topic next to the source's job)."""
    return f"{store_prefix(project)}:progress:{check_name(source_name, 'source')}" + (f":{lane}" if lane else "")


def upgrade_lane(view: FeatureView | SnapshotView) -> str:
    """The lane of the job computing ``view`` as the newer version of an upgrade: ``<view>@v<version>`` (its progress
    hash, consumer group and dead-letter topic are its own)."""
    return f"{check_name(view.name, 'view')}@v{int(view.version)}"


def active_version_key(project: str, view_name: str) -> str:
    """The view's active-version record: the version readers serve when the view is declared in two (an upgrade);
    written only by ``skewless promote`` (docs/streaming.md, "Changing a definition while it serves")."""
    return f"{store_prefix(project)}:{check_name(view_name, 'view')}:active"


def view_meta_key(project: str, view: FeatureView | SnapshotView) -> str:
    return f"{view_prefix(project, view)}:meta"


def tile_field(tile_ms: int, start_ms: int) -> str:
    """The field of one tile in an entity hash."""
    return f"{TILE_FIELD_PREFIX}{int(tile_ms)}:{int(start_ms)}"


def batch_fields(record: Mapping[str, str]) -> dict[str, str]:
    """A batch record (``encode_batch_record``: cutoff, run, epoch, w:...) as fields of the entity hash."""
    return {BATCH_FIELD_PREFIX + name: value for name, value in record.items()}


# --- which aggregation lives where ---------------------------------------------------------------------------


def width_ms_of(aggregation: Aggregation) -> int | None:
    return None if aggregation.window.width is None else td_ms(aggregation.window.width)


def tile_ms_of(aggregation: Aggregation) -> int:
    """The aggregation's stream tile: its window's H when stream-served, else the daily tile."""
    width = width_ms_of(aggregation)
    if not is_stream_served(width):
        return BATCH_TILE_MS
    return td_ms(aggregation.window.tile) if aggregation.window.tile is not None else default_tile_ms(width)


@dataclass(frozen=True)
class TileGroup:
    """The aggregations stored in one tile hash (one tile size), in vector order, and its retention."""

    tile_ms: int
    aggregations: tuple[Aggregation, ...]
    retention_ms: int

    @property
    def aggs(self) -> tuple[Agg, ...]:
        return tuple(Agg(a.agg) for a in self.aggregations)


def stream_tile_retention_ms(width_ms: int | None, tile_ms: int, clock_skew_ms: int) -> int:
    """How far behind the newest tile of a hash a tile is kept: W + H + slack + clock-skew tolerance for
    stream-served windows, :data:`STREAM_DAILY_TILE_RETENTION_MS` for daily tiles after a batch cut-off."""
    if is_stream_served(width_ms):
        return width_ms + tile_ms + TILE_RETENTION_SLACK_MS + clock_skew_ms  # type: ignore[operator]
    return STREAM_DAILY_TILE_RETENTION_MS


def tile_groups(view: FeatureView) -> tuple[TileGroup, ...]:
    """The view's tile hashes, by tile size ascending."""
    skew = td_ms(view.source.clock_skew_tolerance)
    groups: dict[int, list[Aggregation]] = {}
    for f in view.features:
        if isinstance(f, Aggregation):
            groups.setdefault(tile_ms_of(f), []).append(f)
    return tuple(
        TileGroup(tile, tuple(aggs), max(stream_tile_retention_ms(width_ms_of(a), tile, skew) for a in aggs))
        for tile, aggs in sorted(groups.items())
    )


def batch_windows(view: FeatureView) -> dict[str, tuple[Aggregation, ...]]:
    """Batch-hash field -> aggregations (vector order) for the view's batch-served windows."""
    out: dict[str, list[Aggregation]] = {}
    for f in view.features:
        if isinstance(f, Aggregation) and not is_stream_served(width_ms_of(f)):
            width = width_ms_of(f)
            out.setdefault(LIFETIME_FIELD if width is None else f"w:{width}", []).append(f)
    return {k: tuple(v) for k, v in out.items()}
