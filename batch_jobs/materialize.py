"""Materialization: the serving rows of a batch run (or a snapshot view's latest rows) into Redis.

Feature views: the run is checked once up front by :data:`skewless.core.layout.BATCH_BEGIN_LUA` (refused when
the view meta records a newer materialized run, or when another materialization of the view holds the writer
lease; else the lease is taken with a new fence), then every row of ``features.<view>_v<n>_serving`` for cut-off
``C = D+1 00:00 UTC`` becomes one ``EVALSHA`` of :data:`skewless.core.layout.BATCH_WRITE_LUA` on the entity's hash
(:func:`skewless.core.layout.batch_write_args`: the whole batch record, written only if the hash holds no newer run
-- fenced, atomic per entity). Commands are packed to RESP with the constant parts packed once and sent in large
pipelined batches, the lease renewed before each batch; the template is checked against ``batch_write_args`` on the
first row of every run. Last, :data:`skewless.core.layout.BATCH_END_LUA` moves the view's ``batch_cutoff_ms``
forward and releases the lease.

Snapshot views: per entity the latest row as of the end of day D (``ts < C`` and ``created_at < C``) as
:func:`skewless.core.layout.encode_snapshot`, written by :data:`skewless.core.layout.SNAPSHOT_WRITE_LUA` (fenced by
the cut-off and Redis time at the start of the run), pipelined per master, each master's writes confirmed by ``WAIT``
on its replicas before the materialization returns (:func:`write_snapshots`).

Both refuse a Redis whose ``maxmemory-policy`` may evict keys (:func:`skewless.core.layout.check_eviction_policy`).

Re-running is idempotent: the same rows give the same hashes.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Callable, Iterable, Sequence

from binascii import crc_hqx

from redis import exceptions as redis_errors

from skewless.config import default_project
from skewless.core import laws, layout
from skewless.core.admission import parse_event_time
from skewless.core.dsl import Agg, Derived, FeatureView, SnapshotView
from skewless.core.expr import evaluate
from skewless.core.timeutil import iso_utc, to_epoch_ms
from skewless.engines.redis_client import (CLUSTER_SLOTS, check_online_store, is_cluster, masters, node_clients,
                                           replica_count, slot_owners)
from skewless.offline.tables import DEFAULT_NAMESPACE, BatchError, ViewTables

DEFAULT_BATCH = 10_000  # entities per pipelined send
FIRST_BATCH = 1_000  # entities of the first send (at most): Redis starts on it while the next batch is packed
DEFAULT_GROUP = 20  # kept for callers; the HSET protocol needs no grouping
LEASE_MS = 120_000  # the writer lease, renewed before every pipelined batch (a holder seen dead is taken over at once)
WAIT_MS = 10_000  # how long the replicas of a master written may take to acknowledge the run (WAIT)

QualityGate = Callable[[Any, date, Any], Any]
"""``gate(view, day, arrow_table)``: return False (or raise) to block materialization of a run."""


class QualityGateBlocked(BatchError):
    """The data-quality gate refused the run; nothing was written."""


class NewerRunMaterializedError(BatchError):
    """Redis already serves a newer run of the view: an older run is refused as a whole; nothing was written."""


class ConcurrentMaterializationError(BatchError):
    """Another materialization of the same view holds the writer lease (or took it over): retry after it."""


class EvictingRedisError(BatchError):
    """Redis may evict keys (``maxmemory-policy``): materialization refuses to write (see layout.check_eviction_policy)."""


def check_redis_policy(client: Any) -> None:
    """:class:`EvictingRedisError` when Redis may evict keys; a warning where the policy cannot be read."""
    try:
        layout.check_eviction_policy(client, "materialize")
    except layout.EvictingPolicyError as exc:
        raise EvictingRedisError(str(exc)) from None


class StoreNotInitialisedError(BatchError):
    """Redis has no epoch marker: the online store was never initialised or lost its data."""


@dataclass
class MaterializeReport:
    view: str
    day: date
    cutoff_ms: int
    rows: int = 0
    written: int = 0
    skipped_newer: int = 0
    seconds: float = 0.0
    run_id: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def store_epoch(client: Any, project: str, init: bool = False) -> str:
    """The store's epoch id; with ``init`` a missing one is created (``SET NX``), else an error."""
    key = layout.epoch_key(project)
    value = client.get(key)
    if value is None and init:
        client.set(key, secrets.token_hex(8), nx=True)
        value = client.get(key)
    if value is None:
        raise StoreNotInitialisedError(
            f"Redis has no {key}: the online store is not initialised (or lost its data). "
            "`skewless online rebuild` initialises it, materializes again and tells you how to replay the stream"
        )
    return value.decode() if isinstance(value, bytes) else str(value)


def _cutoff_ms(day: date) -> int:
    from batch_jobs.runner import cutoff_ms

    return cutoff_ms(day)


def _check_gate(view: Any, day: date, rows: Any, gate: QualityGate | None, report: MaterializeReport) -> None:
    if gate is None:
        return
    try:
        verdict = gate(view, day, rows)
        reason = "" if verdict is not False else "the gate returned False"
    except Exception as exc:  # noqa: BLE001 - a failing check is the gate's answer
        verdict, reason = False, f"{type(exc).__name__}: {exc}"
    if verdict is False:
        msg = f"data-quality gate failed for {view.name} v{view.version} day {day}: {reason}"
        if getattr(view, "block_materialization_on_failed_checks", True):
            raise QualityGateBlocked(msg + " (materialization blocked; nothing written)")
        report.warnings.append("WARNING: " + msg + " (view allows materialization anyway)")


def read_serving(catalog: Any, view: FeatureView, day: date, namespace: str = DEFAULT_NAMESPACE) -> Any:
    """The serving rows of the run for ``day`` as a PyArrow table (error if there are none)."""
    from pyiceberg.exceptions import NoSuchTableError
    from pyiceberg.expressions import EqualTo

    tables = ViewTables(namespace, view.name, view.version)
    cut = _cutoff_ms(day)
    try:
        table = catalog.load_table(tables.ident("serving"))
    except NoSuchTableError:
        raise BatchError(f"no serving table {tables.ident('serving')}: run `skewless backfill --view {view.name} "
                         f"--start {day} --end {day}` first") from None
    rows = table.scan(row_filter=EqualTo("cutoff_ms", cut)).to_arrow()
    if rows.num_rows == 0:
        raise BatchError(f"no serving rows of {view.name} v{view.version} for day {day} (cut-off {iso_utc(cut)}): run "
                         f"`skewless backfill --view {view.name} --start {day} --end {day}` first")
    return rows


def materialize_feature_view(catalog: Any, client: Any, view: FeatureView, day: date, *,
                             project: str | None = None, namespace: str = DEFAULT_NAMESPACE,
                             quality_gate: QualityGate | None = None, batch_size: int = DEFAULT_BATCH,
                             init_epoch: bool = False, rows: Any = None,
                             group_size: int = DEFAULT_GROUP) -> MaterializeReport:
    """Write the serving rows of the run for ``day`` into Redis (see the module docstring)."""
    project = project or default_project()
    cut = _cutoff_ms(day)
    report = MaterializeReport(view.name, day, cut)
    expires = layout.batch_expire_at_ms(cut)
    if expires <= to_epoch_ms(datetime.now(timezone.utc)):
        raise BatchError(f"day {day} is too old to serve: its batch record would expire at once (cut-off + "
                         f"{(expires - cut) // 86_400_000} days, when the stream's daily tiles after it are gone); "
                         "materialize the newest computed day")
    check_online_store(client)  # a cluster: every master answers before anything is written
    check_redis_policy(client)
    rows = rows if rows is not None else read_serving(catalog, view, day, namespace)
    if quality_gate is not None:
        _check_gate(view, day, serving_values(view, rows, cut), quality_gate, report)
    epoch = store_epoch(client, project, init=init_epoch)
    fields = sorted(layout.batch_windows(view))
    columns = {f: f.replace(":", "_") for f in fields}
    missing = [c for c in columns.values() if c not in rows.column_names]
    if missing:
        raise BatchError(f"serving table lacks {missing}: it was written by another definition of {view.name}")
    runs = set(rows.column("run_id").unique().to_pylist())
    if len(runs) != 1:
        raise BatchError(f"serving rows for cut-off {iso_utc(cut)} mix runs {sorted(runs)}")
    run_id = runs.pop()
    report.run_id = run_id
    t0 = time.monotonic()
    meta = layout.view_meta_key(project, view)
    token = f"{run_id}#{secrets.token_hex(6)}"
    holder = LeaseConnection(node_clients(client, [meta.encode()]).popitem()[1], meta)
    fence: list[int] = []  # taken with the lease

    def lease() -> None:
        code, detail, *rest = holder.begin(str(cut), token, LEASE_MS, renew=bool(fence))
        if int(code) < 0 and not fence and rest and holder.gone(rest[0]):  # the holder died: take over at once
            code, detail, *rest = holder.begin(str(cut), token, LEASE_MS, renew=False, dead=detail)
        if int(code) == 0:
            raise NewerRunMaterializedError(
                f"Redis already serves a newer run of {view.name} v{view.version} (cut-off {iso_utc(int(detail)) if str(detail).isdigit() else detail} > {iso_utc(cut)}): "
                f"the run of {day} is refused as a whole; nothing of it was written" if not fence else
                f"a newer run of {view.name} v{view.version} was materialized during the run of {day} (cut-off "
                f"{iso_utc(int(detail)) if str(detail).isdigit() else detail}); the rest of this run is refused, and "
                "nothing it wrote replaced the newer run's records (fenced writes)")
        if int(code) < 0:
            raise ConcurrentMaterializationError(
                f"another materialization of {view.name} v{view.version} holds the writer lease ({detail}); "
                "retry when it has finished (its lease expires after "
                f"{LEASE_MS // 1000} s if it died)" if not fence else
                f"the writer lease of {view.name} v{view.version} was taken over during the run of {day} (paused for "
                f"more than {LEASE_MS // 1000} s?); nothing this run wrote replaced a newer run's records: materialize "
                "the newest day of the view again")
        if not fence:
            fence.append(int(detail))

    try:
        lease()
        for _, node in masters(client):
            node.script_load(layout.BATCH_WRITE_LUA)
        _write_rows(client, packer_args=(view, project, cut, run_id, epoch, fields, fence[0]), rows=rows,
                    columns=columns, batch_size=batch_size, lease=lease, report=report)
        # Last: the view-level cut-off, so entities the run did not list read as empty (not incomplete).
        if int(holder.call("EVAL", layout.BATCH_END_LUA, 1, meta, str(cut), epoch, token)) < 0:
            raise ConcurrentMaterializationError(
                f"the writer lease of {view.name} v{view.version} was taken over during the run of {day} (paused for "
                f"more than {LEASE_MS // 1000} s?): materialize the newest day of the view again")
    except BaseException:
        if fence:
            holder.abort(token)
        holder.close(broken=True)
        raise
    holder.close()
    report.rows = rows.num_rows
    report.seconds = time.monotonic() - t0
    return report


class LeaseConnection:
    """The view's writer lease, taken and renewed on one connection held for the whole run to the master of the view
    meta key: its ``CLIENT ID`` is recorded with the lease, so a later writer that finds the lease held can tell a
    holder that died (its connection gone, e.g. killed, or dropped after a paused Redis) from one still running, and
    take the lease over at once instead of waiting for it to lapse (the takeover's larger fence keeps it safe)."""

    def __init__(self, node_client: Any, meta: str):
        self.pool, self.meta = node_client.connection_pool, meta
        self.conn = self.pool.get_connection()

    def call(self, *args: Any) -> Any:
        """One command on the held connection (reconnects if it was dropped); an error reply is raised."""
        self.conn.send_command(*args)
        reply = self.conn.read_response()
        if isinstance(reply, Exception):
            raise reply
        return reply

    def client_id(self) -> str:
        try:
            return str(self.call("CLIENT", "ID"))
        except redis_errors.ResponseError:  # CLIENT denied (managed Redis): liveness unknown, the lease must lapse
            return ""

    def begin(self, cutoff: str, token: str, lease_ms: int, *, renew: bool, dead: str = "") -> list[Any]:
        """:data:`skewless.core.layout.BATCH_BEGIN_LUA`'s reply, texts decoded."""
        me = self.client_id()
        reply = self.call("EVAL", layout.BATCH_BEGIN_LUA, 1, self.meta, cutoff, token, str(lease_ms), "1" if renew else "0",
                          me, dead)
        return [r.decode() if isinstance(r, bytes) else r for r in reply]

    def gone(self, client_id: str) -> bool:
        """Whether the connection ``client_id`` of this server is closed (False when unknown or CLIENT is denied)."""
        if not client_id.isdigit():
            return False
        try:
            return not self.call("CLIENT", "LIST", "ID", client_id).strip()
        except redis_errors.ResponseError:
            return False

    def abort(self, token: str) -> None:
        """Release the lease after a failure (best effort: where Redis does not answer, a retry sees this connection
        gone and takes over)."""
        try:
            self.call("EVAL", layout.BATCH_ABORT_LUA, 1, self.meta, token)
        except Exception:  # noqa: BLE001 - best effort
            pass

    def close(self, broken: bool = False) -> None:
        if broken:
            self.conn.disconnect()
        self.pool.release(self.conn)


def _write_rows(client: Any, *, packer_args: tuple, rows: Any, columns: dict[str, str], batch_size: int,
                lease: Callable[[], None], report: MaterializeReport) -> None:
    """The rows' batch writes, grouped by the master of each entity's slot (one Redis: one group), each master's in
    pipelined batches of ``batch_size`` on one connection, the lease renewed before every round of batches; then
    ``WAIT`` on every master written that has replicas."""
    fields = packer_args[5]
    import pyarrow as pa

    tags = rows.column("entity_tag").combine_chunks()
    values = [rows.column(columns[f]).combine_chunks() for f in fields]
    packer = BatchPacker(*packer_args)
    n = len(tags)
    if n:
        packer.verify(tags[0].as_py(), [v[0].as_py() for v in values])
    step = max(1, batch_size)
    groups = row_groups(client, tags)
    nodes = {name: node for name, node, _ in groups}
    parts = []
    for name, _, idx in groups:
        g_tags = tags if idx is None else tags.take(idx)
        parts.append((name, g_tags, values if idx is None else [v.take(idx) for v in values]))

    def rounds() -> Iterable[list[tuple[str, memoryview, int]]]:
        for lo, hi in batch_bounds(max((len(t) for _, t, _ in parts), default=0), step):
            batch = []
            for name, g_tags, g_values in parts:
                if lo < len(g_tags):
                    n = min(hi, len(g_tags)) - lo
                    batch.append((name, packer.pack_arrow(g_tags.slice(lo, n), [v.slice(lo, n) for v in g_values], pa),
                                  n))  # while Redis runs the previous batch
            if lo:  # then renew (and stop if another writer took the view over) and send
                lease()
            yield batch

    send_rounds(nodes, rounds(), report, replicas={name: replica_count(node) for name, node in nodes.items()})


def batch_bounds(rows: int, step: int, first: int = FIRST_BATCH) -> list[tuple[int, int]]:
    """``(lo, hi)`` row ranges of the pipelined sends of ``rows`` rows: the first of at most ``first`` rows (Redis starts
    on it while the next is packed), then ``step`` rows each."""
    lows = [0, *range(min(step, first), rows, step)] if rows else []
    return list(zip(lows, [*lows[1:], rows]))


def row_groups(client: Any, tags: Any) -> list[tuple[str, Any, Any]]:
    """``(master, its client, row indices or None for all)`` of entity tags (Arrow strings): one Redis takes every
    row; on a cluster each row goes to the master of its hash tag's slot."""
    if not is_cluster(client):
        return [("", client, None)]
    import numpy as np

    owners = slot_owners(client)
    by_node: dict[str, list[int]] = {}
    for i, tag in enumerate(tags.to_pylist()):
        owner = owners[crc_hqx(tag.encode(), 0) & (CLUSTER_SLOTS - 1)]
        if owner is None:
            raise BatchError(f"no Redis Cluster master serves the slot of entity {tag!r}; check the cluster with "
                             "`redis-cli --cluster check HOST:PORT` and materialize again")
        by_node.setdefault(owner, []).append(i)
    clients = {node.name: node.redis_connection for node in client.get_primaries()}
    return [(name, clients[name], np.asarray(idx, dtype=np.int64)) for name, idx in sorted(by_node.items())]


def send_pipelined(client: Any, batches: Iterable[tuple[bytes | memoryview, int]], report: MaterializeReport | None = None) -> int:
    """:func:`send_rounds` of ``(packed EVALSHA commands, entities)`` batches to one Redis; returns the entities whose
    write was answered."""
    return send_rounds({"": client}, ([("", data, count)] for data, count in batches), report)


def send_rounds(nodes: dict[str, Any], rounds: Iterable[list[tuple[str, bytes | memoryview, int]]],
                report: MaterializeReport | None = None, replicas: dict[str, int] | None = None,
                wait_ms: int = WAIT_MS) -> int:
    """Send rounds of ``(master, packed EVALSHA commands, entities)`` batches, one connection per master of ``nodes``
    (name -> client); returns the entities whose write was answered. A master's batch replies stay unread while its
    next batch is produced and sent, so packing and sending overlap Redis executing the previous batch, and the masters
    run in parallel. ``report.written`` counts the entities written, ``report.skipped_newer`` those whose hash held a
    newer run (the script answered 0). Last, ``WAIT`` on each master with ``replicas[name]`` > 0: every replica must
    acknowledge the writes within ``wait_ms`` (else :class:`BatchError`: the run is not marked complete)."""
    conns: dict[str, Any] = {}
    readers: dict[str, IntegerReplies] = {}
    in_flight: dict[str, int] = {}
    written = 0
    name = ""
    try:
        for batch in rounds:
            for name, data, count in batch:
                conn = conns.get(name)
                if conn is None:
                    conn = conns[name] = nodes[name].connection_pool.get_connection()
                    readers[name] = IntegerReplies(conn)
                conn.send_packed_command([data], check_health=False)
                if in_flight.get(name):
                    readers[name].read(in_flight[name])
                    written += in_flight[name]
                in_flight[name] = count
        for name, count in in_flight.items():
            if count:
                readers[name].read(count)
                if readers[name].credit:
                    raise BatchError(f"unexpected Redis replies to the batch writes ({readers[name].credit} more than "
                                     "commands)")
                written += count
        for name, conn in conns.items():
            wanted = (replicas or {}).get(name, 0)
            if wanted:
                wait_ms = min(wait_ms, int((conn.socket_timeout or 10.0) * 800))  # answered before the read times out
                conn.send_command("WAIT", wanted, wait_ms)
                check_replicas(name, int(conn.read_response()), wanted, wait_ms)
        if report is not None:
            zeros = sum(r.zeros for r in readers.values())
            report.written += written - zeros
            report.skipped_newer += zeros
        return written
    except (OSError, redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
        for conn in conns.values():
            conn.disconnect()  # unread replies must not leak into the next command
        raise BatchError(f"Redis master {name or 'of the online store'} failed during the batch writes "
                         f"({type(exc).__name__}: {str(exc)[:160]}): the run is not marked complete; materialize again "
                         "once it serves (fenced writes: a retry replaces nothing newer)") from None
    except BaseException:
        for conn in conns.values():
            conn.disconnect()
        raise
    finally:
        for name, conn in conns.items():
            nodes[name].connection_pool.release(conn)


def serving_values(view: FeatureView, rows: Any, cutoff: int) -> Any:
    """The batch-served feature values at the cut-off (body + tails merged, finalized; derived features whose
    inputs are all batch-served too), one row per entity, as a PyArrow table for data-quality checks."""
    import pyarrow as pa

    windows = layout.batch_windows(view)
    keys = view.entity.key_names
    cols = {k: rows.column(k).to_pylist() for k in keys}
    encoded = {f: rows.column(f.replace(":", "_")).to_pylist() for f in windows}
    out: dict[str, list[Any]] = {k: v for k, v in cols.items()}
    values_per_row: list[dict[str, Any]] = [{} for _ in range(rows.num_rows)]
    for field_name, aggs in windows.items():
        kinds = [Agg(a.agg) for a in aggs]
        for i, text in enumerate(encoded[field_name]):
            parts = [layout.decode_vector(p, kinds) for p in laws.loads(text)]
            for j, (a, kind) in enumerate(zip(aggs, kinds)):
                law = laws.LAWS[kind]
                acc = law.merge_all(p[j] for p in parts)
                values_per_row[i][a.name] = law.finalize(acc) if law.in_range(acc) else None  # §4: no value
    names = [a.name for aggs in windows.values() for a in aggs]
    derived = [f for f in view.features if isinstance(f, Derived)]
    for f in derived:
        try:
            for v in values_per_row:
                v[f.name] = evaluate(f.expr, v, cutoff)
            names.append(f.name)
        except KeyError:  # reads a stream-served feature: not known from the batch alone
            for v in values_per_row:
                v.pop(f.name, None)
    for name in names:
        out[name] = [v.get(name) for v in values_per_row]
    return pa.table(out)


def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


class BatchPacker:
    """RESP of ``EVALSHA <BATCH_WRITE_LUA> 1 <entity hash> <args>`` per entity
    (:func:`skewless.core.layout.batch_write_args`), constant parts packed once."""

    def __init__(self, view: FeatureView, project: str, cutoff: int, run_id: str, epoch: str,
                 fields: Sequence[str], fence: int):
        self.view, self.project, self.fields = view, project, list(fields)
        self.cutoff, self.run_id, self.epoch, self.fence = cutoff, run_id, epoch, fence
        self.key_head = (layout.view_prefix(project, view) + ":{").encode()
        self.key_tail = b"}"
        consts = {"cutoff": str(cutoff), "run": run_id, "epoch": epoch}
        names = sorted([*consts, *fields])
        if names[:3] != ["cutoff", "epoch", "run"]:
            raise AssertionError(f"unexpected batch field order {names}")
        argv_head = [str(cutoff), str(int(fence)), run_id, str(layout.batch_expire_at_ms(cutoff))]
        nargs = 3 + 1 + len(argv_head) + 2 * len(names)
        self.hset_head = b"*%d\r\n" % nargs + b"".join(_bulk(x) for x in (
            b"EVALSHA", layout.script_sha(layout.BATCH_WRITE_LUA).encode(), b"1"))
        self.middle = b"".join(_bulk(a.encode()) for a in argv_head) + b"".join(
            _bulk((layout.BATCH_FIELD_PREFIX + n).encode()) + _bulk(consts[n].encode()) for n in ("cutoff", "epoch", "run"))
        self.field_heads = [_bulk((layout.BATCH_FIELD_PREFIX + f).encode()) for f in self.fields]

    def verify(self, tag: str, values: Sequence[str]) -> None:
        """The packed command of one row equals the layout's own ``batch_write_args`` (guards the template)."""
        key = self.key_head.decode() + tag + self.key_tail.decode()
        rec = {"cutoff": str(self.cutoff), "run": self.run_id, "epoch": self.epoch, **dict(zip(self.fields, values))}
        keys, argv = layout.batch_write_args(key, rec, self.fence)
        expected = pack_command(["EVALSHA", layout.script_sha(layout.BATCH_WRITE_LUA), "1", *keys, *argv])
        import pyarrow as pa

        if self.pack([tag], [[v] for v in values]) != expected or self.pack_arrow(
                pa.array([tag], pa.string()), [pa.array([v], pa.string()) for v in values], pa) != expected:
            raise AssertionError("batch command template differs from layout.batch_write_args")

    def pack(self, tags: Sequence[str], values: Sequence[Sequence[str]]) -> bytes:
        """The commands of the entities ``tags`` (``values[j][i]``: field j of entity i)."""
        hset_head, middle = self.hset_head, self.middle
        fheads = self.field_heads
        key_head, key_tail = self.key_head, self.key_tail
        parts: list[bytes] = []
        append = parts.append
        columns = list(zip(*values)) if values else [() for _ in tags]
        for tag, row in zip(tags, columns):
            key = key_head + tag.encode() + key_tail
            append(hset_head)
            append(b"$%d\r\n%s\r\n" % (len(key), key))
            append(middle)
            for fh, v in zip(fheads, row):
                v = v.encode()
                append(fh)
                append(b"$%d\r\n%s\r\n" % (len(v), v))
        return b"".join(parts)

    def pack_arrow(self, tags: Any, values: Sequence[Any], pa: Any) -> memoryview:
        """:meth:`pack` on Arrow string arrays, vectorised with Arrow compute (no Python per row): one element-wise
        join of the constant parts, the lengths and the values, returned as a view of the joined bytes (not copied)."""
        import numpy as np
        import pyarrow.compute as pc

        tags = pc.cast(tags, pa.string())
        values = [pc.cast(v, pa.string()) for v in values]
        if tags.null_count or any(v.null_count for v in values):
            raise BatchError("serving rows hold nulls: the serving table is damaged")
        key_extra = len(self.key_head) + len(self.key_tail)
        parts: list[Any] = [self.hset_head.decode() + "$", pc.cast(pc.add(pc.binary_length(tags), key_extra), pa.string()),
                            "\r\n" + self.key_head.decode(), tags, self.key_tail.decode() + "\r\n" + self.middle.decode()]
        for fh, v in zip(self.field_heads, values):
            parts[-1] += fh.decode() + "$"  # the constant text before this value's length joins the previous one
            parts += [pc.cast(pc.binary_length(v), pa.string()), "\r\n", v, "\r\n"]
        joined = pc.binary_join_element_wise(*parts, "")
        if isinstance(joined, pa.ChunkedArray):
            joined = joined.combine_chunks()
        offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32, count=len(joined) + 1, offset=joined.offset * 4)
        return memoryview(joined.buffers()[2])[offsets[0]:offsets[-1]]


class IntegerReplies:
    """Counts the replies of pipelined ``EVALSHA`` batch writes on one connection without parsing them one by one:
    they answer integers (``:1`` written, ``:0`` a newer run kept) and errors are ``-<message>``, one line each, so the
    raw reply stream is counted by lines (``zeros``: the ``:0`` ones). Replies of commands sent later may arrive in
    the same read: they are kept as credit."""

    def __init__(self, conn: Any):
        self.conn, self.sock = conn, getattr(conn, "_sock", None)
        self.credit = 0  # replies already read that belong to the next ``read``
        self.last = b""  # last byte read (a CRLF split across reads)
        self.tail = b""  # the last bytes read (a ``:0`` reply split across reads)
        self.zeros = 0

    def read(self, n: int) -> None:
        """Consume ``n`` replies, raising the first error."""
        if self.sock is None:
            for _ in range(n):
                reply = self.conn.read_response()
                if isinstance(reply, Exception):
                    raise reply
                self.zeros += reply == 0
            return
        lines = self.credit
        while lines < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("Redis closed the connection during materialization")
            lines += chunk.count(b"\r\n") + (self.last == b"\r" and chunk[:1] == b"\n")
            self.last = chunk[-1:]
            data = self.tail + chunk
            self.zeros += data.count(b":0\r\n") - self.tail.count(b":0\r\n")
            self.tail = data[-4:]
            if chunk[:1] == b"-" or b"\n-" in chunk:
                for line in chunk.split(b"\r\n"):
                    if line.startswith(b"-"):
                        raise BatchError(f"Redis refused a batch write: {line[1:].decode(errors='replace')}")
                raise BatchError("Redis refused a batch write (error reply split across reads)")
        self.credit = lines - n


def pack_command(args: Iterable[str]) -> bytes:
    items = [a.encode() for a in args]
    return b"*%d\r\n" % len(items) + b"".join(_bulk(a) for a in items)


# --- snapshot views ------------------------------------------------------------------------------------


def materialize_snapshot_view(catalog: Any, client: Any, view: SnapshotView, day: date, *,
                              project: str | None = None, quality_gate: QualityGate | None = None,
                              batch_size: int = DEFAULT_BATCH, init_epoch: bool = False,
                              now_ms: int | None = None) -> MaterializeReport:
    """Latest row per entity as of the end of ``day`` -> the ``s`` field of each entity hash, expiring at the row's
    TTL + memory, fenced by (cut-off, Redis time at the start) (see the module docstring)."""
    from pyiceberg.exceptions import NoSuchTableError

    project = project or default_project()
    cut = _cutoff_ms(day)
    report = MaterializeReport(view.name, day, cut)
    src = view.source
    try:
        table = catalog.load_table(src.table)
    except NoSuchTableError:
        raise BatchError(f"snapshot source table {src.table} of {view.name} does not exist") from None
    check_online_store(client)
    check_redis_policy(client)
    arrow = table.scan().to_arrow()
    _check_gate(view, day, arrow, quality_gate, report)
    epoch = store_epoch(client, project, init=init_epoch)
    now = now_ms if now_ms is not None else to_epoch_ms(datetime.now(timezone.utc))
    keys = view.entity.key_names
    latest: dict[tuple, tuple[tuple[int, int], dict[str, Any]]] = {}
    for row in arrow.to_pylist():
        ts = _ms(row[src.timestamp])
        created = _ms(row[src.created_at]) if src.created_at else None
        if ts >= cut or (created is not None and created >= cut):
            continue
        entity = tuple(row[k] for k in keys)
        order = (ts, created if created is not None else 0)
        if entity not in latest or order > latest[entity][0]:
            latest[entity] = (order, row)
    t0 = time.monotonic()
    seconds, micros = client.time()
    fence = int(seconds) * 1000 + int(micros) // 1000  # later runs of the same cut-off win
    for _, node in masters(client):  # each master runs the script by its sha
        node.script_load(layout.SNAPSHOT_WRITE_LUA)
    writes: list[tuple[list[Any], list[Any]]] = []
    for entity, ((ts, _), row) in latest.items():
        if layout.snapshot_expire_at_ms(view, ts) <= now:
            continue  # forgotten by the contract already
        created = _ms(row[src.created_at]) if src.created_at else None
        value = layout.encode_snapshot(view, ts, created, {f.name: row.get(f.name) for f in view.fields}, epoch)
        writes.append(layout.snapshot_write_args(layout.entity_key(project, view, entity), view, cut, fence, ts, value))
    write_snapshots(client, writes, batch_size, report)
    report.rows = len(latest)
    report.seconds = time.monotonic() - t0
    return report


def write_snapshots(client: Any, writes: Sequence[tuple[list[Any], list[Any]]], batch_size: int,
                    report: MaterializeReport) -> None:
    """``EVALSHA`` of :data:`skewless.core.layout.SNAPSHOT_WRITE_LUA` per ``(keys, args)``, grouped by the master of
    each entity's slot (one Redis: one group), pipelined in batches of ``batch_size`` on that master's client; the
    last batch of a master with replicas ends with ``WAIT`` on the same connection: every replica must acknowledge
    the master's writes (else :class:`BatchError`, as for a feature view's run). Counts ``report.written`` (the
    script answered 1) and ``report.skipped_newer`` (0: a newer record kept)."""
    sha = layout.script_sha(layout.SNAPSHOT_WRITE_LUA)
    groups: dict[str, list[tuple[list[Any], list[Any]]]] = {}
    nodes: dict[str, Any] = {}
    for keys, args in writes:
        (name, node), = node_clients(client, [str(keys[0]).encode()]).items()
        nodes[name] = node
        groups.setdefault(name, []).append((keys, args))
    step = max(1, batch_size)
    for name, items in sorted(groups.items()):
        node = nodes[name]
        wanted, wait_ms = replica_count(node), replica_wait_ms(node)
        try:
            for lo in range(0, len(items), step):
                pipe = node.pipeline(transaction=False)
                for keys, args in items[lo:lo + step]:
                    pipe.evalsha(sha, len(keys), *keys, *args)
                last = lo + step >= len(items)
                if last and wanted:
                    pipe.execute_command("WAIT", wanted, wait_ms)
                done = pipe.execute()
                if last and wanted:
                    check_replicas(name, int(done.pop()), wanted, wait_ms)
                report.written += sum(1 for r in done if int(r) == 1)
                report.skipped_newer += sum(1 for r in done if int(r) == 0)
        except (OSError, redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
            raise BatchError(f"Redis master {name or 'of the online store'} failed during the snapshot writes "
                             f"({type(exc).__name__}: {str(exc)[:160]}); materialize again once it serves (fenced "
                             "writes: a retry replaces nothing newer)") from None


def replica_wait_ms(node: Any, wait_ms: int = WAIT_MS) -> int:
    """``wait_ms`` bounded so that ``WAIT`` answers before a read on ``node``'s connections times out."""
    timeout = node.connection_pool.connection_kwargs.get("socket_timeout") if hasattr(node, "connection_pool") else None
    return min(wait_ms, int((timeout or 10.0) * 800))


def check_replicas(name: str, acked: int, wanted: int, wait_ms: int) -> None:
    """:class:`BatchError` when fewer than ``wanted`` replicas of master ``name`` acknowledged its writes (``WAIT``)."""
    if acked < wanted:
        raise BatchError(f"{acked} of {wanted} replicas of Redis master {name or 'the online store'} acknowledged the "
                         f"run's writes within {wait_ms} ms: the run is not marked complete; check the replicas (INFO "
                         "replication) and materialize again")


def _ms(value: Any) -> int:
    if isinstance(value, datetime):
        return to_epoch_ms(value)
    if isinstance(value, str):
        return parse_event_time(value)
    return int(value)
