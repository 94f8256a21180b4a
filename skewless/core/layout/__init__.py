"""The online key layout: what every Redis writer and reader uses (docs/semantics.md, "Online store layout"):
key names (:mod:`.keys`), value codecs (:mod:`.codecs`) and the write protocol (:mod:`.writes`).

Keys (``L`` = :data:`LAYOUT_VERSION`; the entity sits in a Redis Cluster hash tag, so all keys of one
entity share a slot; each view has its own keys, so views expire separately)::

    {project}:vL:epoch                                   string  random id of this store's life
    {project}:vL:progress:{source}                       hash    p:{partition} -> {offset, max_event_ms, written_ms, epoch}
    {project}:vL:{view}:v{n}:meta                        hash    applied_from_ms, epoch (stream start of this view version),
                                                                 batch_cutoff_ms, batch_epoch (newest materialized run),
                                                                 batch_writer, batch_writer_until (materialization lease)
    {project}:vL:{view}:v{n}:{<entity>}:t:{H}            hash    {tile start ms} -> "version|epoch|[acc, ...]"
    {project}:vL:{view}:v{n}:{<entity>}:b                hash    cutoff, run, epoch, w:{width ms|life} -> [body, tail0, tail1]
    {project}:vL:{view}:v{n}:{<entity>}:s                string  {"ts", "created_at", "values", "epoch"}

A tile hash holds, per tile start, the vector of partial aggregates of the view's aggregations stored
with tile size H (stream-served windows with tile H; with H = 1 day also the stream part of batch-served
windows), in view declaration order, prefixed by a tile version (compare-and-set) and the epoch.
"""

from __future__ import annotations

from skewless.core.layout.keys import (  # noqa: F401 - the layout's public names, as callers use them
    ESCAPES, ESCAPE_TABLE, LAYOUT_VERSION, LIFETIME_FIELD, META_BATCH_CUTOFF, TILE_RETENTION_SLACK_MS, TileGroup, batch_key,
    batch_windows, check_name, decode_entity_key, encode_entity_key, entity_prefix, epoch_key, needs_escape,
    progress_key, snapshot_key, store_prefix, stream_tile_retention_ms, tile_groups, tile_key, tile_ms_of,
    view_meta_key, view_prefix, width_ms_of,
)
from skewless.core.layout.codecs import (  # noqa: F401 - the layout's public names, as callers use them
    BatchRecord, decode_batch_record, decode_snapshot, decode_tile_vector, decode_vector, empty_batch_record,
    encode_batch_record, encode_snapshot, encode_tile_vector, encode_vector,
)
from skewless.core.layout.writes import (  # noqa: F401 - the layout's public names, as callers use them
    BATCH_ABORT_LUA, BATCH_BEGIN_LUA, BATCH_END_LUA, BATCH_META_LUA, BATCH_WRITER, BATCH_WRITER_UNTIL,
    BATCH_WRITE_LUA, TILE_CAS_LUA, batch_expire_at_ms, batch_write_args, batch_write_commands,
    snapshot_expire_at_ms, tile_cas_args,
)
