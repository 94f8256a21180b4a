"""The online key layout: what every Redis writer and reader uses (docs/semantics.md §13, "Online store layout"):
key and field names (:mod:`.keys`), value codecs (:mod:`.codecs`) and the write protocol (:mod:`.writes`).

Keys (``L`` = :data:`LAYOUT_VERSION`; readers and writers of one layout never see another's keys)::

    {project}:vL:epoch                                   string  random id of this store's life
    {project}:vL:progress:{source}                       hash    p:{partition} -> {offset, max_event_ms, written_ms, epoch}
    {project}:vL:{view}:v{n}:meta                        hash    applied_from_ms, epoch (stream start of this view version),
                                                                 batch_cutoff_ms, batch_epoch (newest materialized run),
                                                                 batch_writer, batch_writer_until, batch_fence (lease)
    {project}:vL:{view}:v{n}:{<entity>}                  hash    the entity's whole state for the view version:
        t:{H}:{tile start ms} -> "version|epoch|[acc, ...]"     stream tiles of tile size H
        b:cutoff, b:run, b:epoch, b:w:{width ms|life} -> [body, tail0, tail1]   the batch record
        s -> {"ts", "created_at", "values", "epoch"}            the snapshot row (snapshot views)
        m -> the manifest (JSON; :mod:`.writes`): what the writers put in the hash

One hash per (entity, view version): every write of it is one script on one key (one Redis Cluster slot: the
entity is the hash tag), a read of a view costs one command per entity, and views expire and are versioned
separately. A tile field holds the vector of partial aggregates of the view's aggregations stored with tile size
H (stream-served windows with tile H; with H = 1 day also the stream part of batch-served windows), in view
declaration order, prefixed by a tile version (compare-and-set) and the epoch.
"""

from __future__ import annotations

from skewless.core.layout.keys import (  # noqa: F401 - the layout's public names, as callers use them
    BATCH_FIELD_PREFIX, ESCAPES, ESCAPE_TABLE, EVICTING_POLICIES, LAYOUT_VERSION, LIFETIME_FIELD, MANIFEST_FIELD,
    META_BATCH_CUTOFF, META_START_OFFSETS, SNAPSHOT_FIELD, TILE_FIELD_PREFIX, TILE_RETENTION_SLACK_MS, TileGroup, batch_fields,
    batch_windows, check_name, decode_entity_key, encode_entity_key, entity_key, epoch_key, needs_escape,
    progress_key, store_prefix, stream_tile_retention_ms, tile_field, tile_groups, tile_ms_of, view_meta_key,
    view_prefix, width_ms_of, upgrade_lane, active_version_key,
)
from skewless.core.layout.codecs import (  # noqa: F401 - the layout's public names, as callers use them
    BatchRecord, EntityHash, decode_batch_record, decode_snapshot, decode_tile_vector, decode_vector,
    empty_batch_record, encode_batch_record, encode_snapshot, encode_tile_vector, encode_vector, read_entity_hash,
)
from skewless.core.layout.writes import (  # noqa: F401 - the layout's public names, as callers use them
    BATCH_ABORT_LUA, BATCH_BEGIN_LUA, BATCH_END_LUA, BATCH_FENCE, BATCH_META_LUA, BATCH_WRITER, BATCH_WRITER_CLIENT,
    BATCH_WRITER_UNTIL, BATCH_WRITE_LUA, SNAPSHOT_WRITE_LUA, TILE_CAS_LUA, EvictingPolicyError, batch_expire_at_ms, batch_write_args,
    check_eviction_policy, eviction_problem, script_sha, snapshot_expire_at_ms, snapshot_write_args, tile_cas_args,
)
