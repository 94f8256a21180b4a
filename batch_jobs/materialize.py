"""Materialization: the serving rows of a batch run (or a snapshot view's latest rows) into Redis.

Feature views: every row of ``features.<view>_v<n>_serving`` for cut-off ``C = D+1 00:00 UTC`` becomes one
``EVALSHA`` of :data:`skewless.core.layout.BATCH_WRITE_LUA` with the arguments of
:func:`skewless.core.layout.batch_write_args` (the entity's whole batch hash -- cut-off, run, epoch and every
window field -- replaced in one script: atomic per entity, and refused when a newer cut-off is stored).
The script is the layout's script verbatim, wrapped to apply it to a group of entities per ``EVALSHA``
(:data:`BATCH_WRITE_MANY_LUA`; on Redis Cluster a group is one hash slot). Commands are packed to RESP
with the constant parts packed once and sent in large pipelined batches; the per-entity argument template
comes from ``batch_write_args`` and is checked against it on the first row of every run.

Snapshot views: per entity the latest row as of the end of day D (``ts < C`` and ``created_at < C``) as
:func:`skewless.core.layout.encode_snapshot`, ``SET ... PXAT snapshot_expire_at_ms``.

Re-running is idempotent: the same rows give the same hashes.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Callable, Iterable, Sequence

from skewless.core import layout
from skewless.core.dsl import FeatureView, SnapshotView
from skewless.core.timeutil import to_epoch_ms

from batch_jobs.tables import DEFAULT_NAMESPACE, BatchError, ViewTables

DEFAULT_BATCH = 10_000  # entities per pipelined send
DEFAULT_GROUP = 20  # entities per EVALSHA (same Redis Cluster slot)

# The layout's BATCH_WRITE_LUA, verbatim, applied to several entities in one script call (one EVALSHA per
# group amortises the script overhead). ARGV = for each key: argc, then that key's batch_write_args ARGV.
# Every entity is still replaced atomically (the whole script is); on Redis Cluster a group holds keys of
# one hash slot only.
BATCH_WRITE_MANY_LUA = (
    "local function write_one(KEYS, ARGV)\n" + layout.BATCH_WRITE_LUA + "\nend\n"
    "local written, i = 0, 1\n"
    "for k = 1, #KEYS do\n"
    "  local argc = tonumber(ARGV[i])\n"
    "  written = written + write_one({KEYS[k]}, {unpack(ARGV, i + 1, i + argc)})\n"
    "  i = i + 1 + argc\n"
    "end\n"
    "return written\n"
)

QualityGate = Callable[[Any, date, Any], Any]
"""``gate(view, day, arrow_table)``: return False (or raise) to block materialization of a run."""


class QualityGateBlocked(BatchError):
    """The data-quality gate refused the run; nothing was written."""


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


def default_project() -> str:
    """Key prefix of the online store: ``$SKEWLESS_PROJECT`` or ``skewless`` (as monitoring uses)."""
    return os.environ.get("SKEWLESS_PROJECT") or "skewless"


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
        raise BatchError(f"no serving rows of {view.name} v{view.version} for day {day} (cut-off {cut}): run "
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
        raise BatchError(f"serving rows for cut-off {cut} mix runs {sorted(runs)}")
    run_id = runs.pop()
    report.run_id = run_id
    t0 = time.monotonic()
    sha = client.script_load(BATCH_WRITE_MANY_LUA)
    tags = rows.column("entity_tag").to_pylist()
    values = [rows.column(columns[f]).to_pylist() for f in fields]
    packer = _BatchPacker(view, project, cut, run_id, epoch, fields, sha)
    if tags:
        packer.verify(tags[0], [v[0] for v in values])
    groups = _groups(client, packer, tags, group_size)
    conn = client.connection_pool.get_connection()
    try:
        for lo in range(0, len(groups), max(1, batch_size // group_size)):
            chunk = groups[lo:lo + max(1, batch_size // group_size)]
            conn.send_packed_command([b"".join(packer.pack_group([tags[i] for i in g], [[v[i] for i in g] for v in values])
                                               for g in chunk)], check_health=False)
            for g in chunk:
                reply = conn.read_response()
                if isinstance(reply, Exception):
                    raise reply
                report.written += int(reply)
                report.skipped_newer += len(g) - int(reply)
    except BaseException:
        conn.disconnect()  # unread replies must not leak into the next command
        raise
    finally:
        client.connection_pool.release(conn)
    # Last: the view-level cut-off, so entities the run did not list read as empty (not incomplete).
    client.eval(layout.BATCH_META_LUA, 1, layout.view_meta_key(project, view), str(cut), epoch)
    report.rows = len(tags)
    report.seconds = time.monotonic() - t0
    return report


def serving_values(view: FeatureView, rows: Any, cutoff: int) -> Any:
    """The batch-served feature values at the cut-off (body + tails merged, finalized; derived features whose
    inputs are all batch-served too), one row per entity, as a PyArrow table for data-quality checks."""
    import pyarrow as pa

    from skewless.core import laws
    from skewless.core.dsl import Agg, Derived

    from batch_jobs.pit import evaluate_derived

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
                values_per_row[i][a.name] = laws.LAWS[kind].finalize(laws.LAWS[kind].merge_all(p[j] for p in parts))
    names = [a.name for aggs in windows.values() for a in aggs]
    derived = [f for f in view.features if isinstance(f, Derived)]
    for f in derived:
        try:
            for v in values_per_row:
                v[f.name] = evaluate_derived(f.expr, v, cutoff)
            names.append(f.name)
        except KeyError:  # reads a stream-served feature: not known from the batch alone
            for v in values_per_row:
                v.pop(f.name, None)
    for name in names:
        out[name] = [v.get(name) for v in values_per_row]
    return pa.table(out)


def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


class _BatchPacker:
    """RESP of ``EVALSHA <many> n <batch keys> (argc <batch_write_args ARGV>)...``, constant parts packed once."""

    def __init__(self, view: FeatureView, project: str, cutoff: int, run_id: str, epoch: str,
                 fields: Sequence[str], sha: str):
        self.view, self.project, self.fields = view, project, list(fields)
        self.cutoff, self.run_id, self.epoch, self.sha = cutoff, run_id, epoch, sha
        self.key_head = (layout.view_prefix(project, view) + ":{").encode()
        self.key_tail = b"}:b"
        consts = {"cutoff": str(cutoff), "run": run_id, "epoch": epoch}
        names = sorted([*consts, *fields])
        if names[:3] != ["cutoff", "epoch", "run"]:
            raise AssertionError(f"unexpected batch field order {names}")
        self.middle = _bulk(str(layout.batch_expire_at_ms(cutoff)).encode()) + _bulk(str(cutoff).encode())
        for name in ("cutoff", "epoch", "run"):
            self.middle += _bulk(name.encode()) + _bulk(consts[name].encode())
        self.field_heads = [_bulk(f.encode()) for f in self.fields]

    def verify(self, tag: str, values: Sequence[str]) -> None:
        """The packed command of one row equals the layout's own ``batch_write_args`` (guards the template)."""
        key = self.key_head.decode() + tag + self.key_tail.decode()
        rec = {"cutoff": str(self.cutoff), "run": self.run_id, "epoch": self.epoch, **dict(zip(self.fields, values))}
        keys, argv = layout.batch_write_args(key, rec)
        expected = _pack_command(["EVALSHA", self.sha, "1", *keys, str(len(argv)), *argv])
        if self.pack_group([tag], [[v] for v in values]) != expected:
            raise AssertionError("batch command template differs from layout.batch_write_args")

    def pack_group(self, tags: Sequence[str], values: Sequence[Sequence[str]]) -> bytes:
        """One ``EVALSHA`` of :data:`BATCH_WRITE_MANY_LUA` for the entities ``tags``."""
        n = len(tags)
        argc = 2 + 2 * (3 + len(self.fields))
        parts = [b"*%d\r\n" % (3 + n + n * (1 + argc)), _bulk(b"EVALSHA"), _bulk(self.sha.encode()), _bulk(b"%d" % n)]
        for tag in tags:
            key = self.key_head + tag.encode() + self.key_tail
            parts.append(b"$%d\r\n%s\r\n" % (len(key), key))
        argc_bulk = _bulk(b"%d" % argc)
        middle, fheads = self.middle, self.field_heads
        for i in range(n):
            parts.append(argc_bulk)
            parts.append(middle)
            for j, fh in enumerate(fheads):
                v = values[j][i].encode()
                parts.append(fh)
                parts.append(b"$%d\r\n%s\r\n" % (len(v), v))
        return b"".join(parts)


def _groups(client: Any, packer: _BatchPacker, tags: Sequence[str], size: int) -> list[list[int]]:
    """Row indexes in groups of at most ``size``; on Redis Cluster each group is one hash slot."""
    try:
        cluster = bool(client.info("cluster").get("cluster_enabled"))
    except Exception:  # noqa: BLE001 - a server without INFO cluster is not a cluster
        cluster = False
    if not cluster:
        return [list(range(i, min(i + size, len(tags)))) for i in range(0, len(tags), size)]
    from redis.crc import key_slot

    by_slot: dict[int, list[int]] = {}
    for i, tag in enumerate(tags):
        by_slot.setdefault(key_slot(tag.encode()), []).append(i)
    return [ids[i:i + size] for ids in by_slot.values() for i in range(0, len(ids), size)]


def _pack_command(args: Iterable[str]) -> bytes:
    items = [a.encode() for a in args]
    return b"*%d\r\n" % len(items) + b"".join(_bulk(a) for a in items)


# --- snapshot views ------------------------------------------------------------------------------------


def materialize_snapshot_view(catalog: Any, client: Any, view: SnapshotView, day: date, *,
                              project: str | None = None, quality_gate: QualityGate | None = None,
                              batch_size: int = DEFAULT_BATCH, init_epoch: bool = False,
                              now_ms: int | None = None) -> MaterializeReport:
    """Latest row per entity as of the end of ``day`` -> ``…:s`` keys with TTL (see the module docstring)."""
    from pyiceberg.exceptions import NoSuchTableError

    project = project or default_project()
    cut = _cutoff_ms(day)
    report = MaterializeReport(view.name, day, cut)
    src = view.source
    try:
        table = catalog.load_table(src.table)
    except NoSuchTableError:
        raise BatchError(f"snapshot source table {src.table} of {view.name} does not exist") from None
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
    pipe = client.pipeline(transaction=False)
    pending = 0
    for entity, ((ts, _), row) in latest.items():
        expire = layout.snapshot_expire_at_ms(view, ts)
        if expire <= now:
            continue  # forgotten by the contract already
        created = _ms(row[src.created_at]) if src.created_at else None
        value = layout.encode_snapshot(view, ts, created, {f.name: row.get(f.name) for f in view.fields}, epoch)
        pipe.set(layout.snapshot_key(project, view, entity), value, pxat=expire)
        pending += 1
        report.written += 1
        if pending >= batch_size:
            pipe.execute()
            pending = 0
    if pending:
        pipe.execute()
    report.rows = len(latest)
    report.seconds = time.monotonic() - t0
    return report


def _ms(value: Any) -> int:
    if isinstance(value, datetime):
        return to_epoch_ms(value)
    if isinstance(value, str):
        from skewless.core.admission import parse_event_time

        return parse_event_time(value)
    return int(value)
