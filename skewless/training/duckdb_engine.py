"""The embedded engine: the point-in-time plan as DuckDB SQL over Arrow read from Iceberg with PyIceberg.

Per feature view (docs/training.md, "Algorithm"):

- ``offline``: the offline event set (docs/semantics.md §6) of the raw rows of the (keys, days) the
  chunk's requests read, at the raw table's current snapshot, with one contribution column per
  aggregation (copy groups ranked whole); daily tiles of days that received raw rows after the newest
  run's snapshot are computed again from that snapshot's rows (``retile``);
- ``prefix``: per entity and covered day, running sums of the COUNT/SUM/AVG tiles and running
  MIN/MAX/LAST of lifetime tiles: vectorised (:mod:`skewless.training.prefix`) when exact, else window
  functions;
- per request chunk: whole days by prefix lookups (binary searches, or one ASOF join on the prefix
  table; value = prefix before the head day minus prefix before the window's first day), windowed
  MIN/MAX over at most W days of tiles (``reduceat`` over the sorted tiles, or a join), and the head
  ``[floor(T, 1d), T)`` plus every stream-served window by one equi-join of the requests' 1-3 days with
  the offline events, then merged with the laws (add, least, greatest).

Per snapshot view: one ASOF join on the row timestamp (no created_at), else (docs/training.md) either a join
of each key's visible rows within ``ttl + 7 d`` of T (sparse rows) or an ASOF join on ``(ts, created_at) <=
(T, T)`` with the exact visibility rule for the requests whose row found is not visible yet; then the TTL rules.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from skewless.core.plan import ViewPlan
from skewless.core.routing import SNAPSHOT_EXPIRED_MEMORY_MS
from skewless.core.sql import DUCKDB, contribution_sql, law_sql, tile_sql
from skewless.core.timeutil import MS_PER_DAY
from skewless.training import duckdb_sources, sources
from skewless.training.compiler import EXPIRED, PRESENT, UNNEST_MAX_DAYS, TrainingCompiler
from skewless.training.plan import INVERTIBLE, AggregationPit, PitPlan, ViewPit
from skewless.training.prefix import PrefixColumn, TilePrefix
from skewless.training.requests import RID, T

DEFAULT_CHUNK_ROWS = 2_000_000
SNAPSHOT_JOIN: bool | None = None  # created_at snapshots: join path (True), ASOF path (False), by estimate (None)
VECTORISED_PREFIX = True  # prefix sums and lookups with numpy when exact (skewless.training.prefix), else SQL
PREFIX_KINDS = ("sum", "last")  # running aggregates skewless.training.prefix computes (else SQL window functions)
RANGE_KINDS = ("min", "max")  # windowed aggregates it computes over a day range


# --- SQL pieces (core.sql's DuckDB dialect) --------------------------------------------------------------

q = DUCKDB.quote
sql_string = DUCKDB.string
keys_equal = DUCKDB.keys_equal

FLOORDIV = "CREATE OR REPLACE MACRO __floordiv(a, b) AS (a - (((a % b) + b) % b)) // b"
# DuckDB's epoch_ms rounds to the nearest ms; the contract floors (docs/semantics.md §1)
EPOCH_MS = "CREATE OR REPLACE MACRO __epoch_ms(t) AS __floordiv(epoch_us(t), 1000)"
PAIR_BASE = "CAST(18446744073709551616 AS HUGEINT)"  # 2^64: (a, b) of int64s as a * 2^64 + b, ordered as the pair


# --- the compiler ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DuckDBFeatureViewSql:
    """The compiled SQL of one feature view (templates over the relation names the runner registers)."""

    pit: ViewPit
    raw_columns: tuple[str, ...]
    offline_sql: str  # over {raw} and {need}
    need_sql: str  # over {req}: the (keys, __day) pairs whose events the requests read
    prefix_sql: str  # over {tiles}
    result_sql: str  # over {req}, {offline}, {pl} (prefix lookups), {rj} (windowed MIN/MAX/LAST); {first_day}, {last_day}
    tile_columns: tuple[str, ...]
    max_stream_span_ms: int
    probe_sql: str = ""  # over {req}: (__rid, keys, __k, __before) of each prefix lookup
    prefix_specs: tuple[PrefixColumn, ...] = ()  # non-empty: the vectorised path applies
    prefix_input_sql: str = ""  # over {tiles}: its input
    asof_sql: str = ""  # over {prefix}: {pl} as an ASOF join on the SQL prefix table
    range_specs: tuple[PrefixColumn, ...] = ()  # windowed MIN/MAX the vectorised path may compute
    range_input_sql: str = ""  # over {req}: __rid, key, __tday and each one's first day
    rj_sql: str = ""  # over {tiles}: {rj}, the windowed MIN/MAX/LAST in SQL
    raw_days_sql: str = ""  # over {raw}: every (keys, __day) of the raw rows (a {need} of whole days)
    retile_sql: str = ""  # over {offline}: daily tiles of the batch-served aggregations, as the batch job makes them


@dataclass(frozen=True)
class DuckDBSnapshotSql:
    pit: ViewPit
    row_columns: tuple[str, ...]
    rows_sql: str  # over {rows}: the rows as the result reads them
    stats_sql: str | None  # created_at: over the source rows, (null created_at count, rows, min ts, max ts)
    result_sql: str  # over {req}, {rows}
    join_sql: str = ""  # created_at, sparse rows: over {req}, {rows}, the result by a join within ttl + 7 d of T
    reach_ms: int = 0  # created_at: ttl + 7 d, the time a row can decide an answer


class DuckDBCompiler(TrainingCompiler[Any]):
    """Compiles a view's plan (restricted to what the training set needs) to DuckDB SQL."""

    engine = "duckdb"

    # --- feature views -----------------------------------------------------------------------------

    def _contribution(self, a: AggregationPit) -> str:
        return contribution_sql(DUCKDB, a.agg, a.spec.field, a.spec.where, self.pit.field_types,
                                self.pit.plan.scan.event_time)

    def _feature_view(self, plan: ViewPlan) -> DuckDBFeatureViewSql:
        pit, scan = self.pit, plan.scan
        keys = pit.key_names
        kcols = ", ".join(q(k) for k in keys)
        et, eid = q(scan.event_time), q(scan.event_id)  # type: ignore[arg-type]
        batch_only = scan.topic is None
        raw_cols = list(keys) + [scan.event_time, scan.event_id]
        for a in pit.aggregations:
            raw_cols += ([a.spec.field] if a.spec.field and a.spec.field != scan.event_time else [])
            raw_cols += [w.field for w in a.spec.where if w.field != scan.event_time]
        if batch_only:
            position = f"0 AS __partition, {eid} AS __offset"
            order = "to_json(raw_row)"
            guard = ""
            src = "(SELECT *, {raw} AS raw_row FROM {raw})"
        else:
            raw_cols += ["_kafka_partition", "_offset", "_kafka_ts"]
            position = "_kafka_partition AS __partition, _offset AS __offset"
            order = "_offset"
            guard = f"WHERE __epoch_ms({et}) <= __epoch_ms(_kafka_ts) + {scan.clock_skew_tolerance_ms}"
            src = "{raw}"
        contributions = ",\n  ".join(f"{self._contribution(a)} AS {q('c__' + a.name)}" for a in pit.aggregations)
        # Only the (keys, day) pairs the requests read ({need}) are kept, but a copy group (partition,
        # event id, ts) is ranked whole: a copy of a needed event may carry another key (first in order wins).
        same = " AND ".join(f"x.{c} IS NOT DISTINCT FROM k.{c}" for c in ("__partition", eid, "__ts"))
        needed = f"{keys_equal('n', 'x', keys)} AND n.__day = x.__day"
        offline = (
            f"WITH g AS (SELECT *, __epoch_ms({et}) AS __ts, __floordiv(__epoch_ms({et}), {MS_PER_DAY}) AS __day, "
            f"{position} FROM {src} {guard}),\n"
            f"k AS (SELECT DISTINCT __partition, {eid}, __ts FROM g AS x SEMI JOIN {{need}} AS n ON {needed}),\n"
            f"d AS (SELECT *, row_number() OVER (PARTITION BY __partition, {eid}, __ts ORDER BY {order}) AS __rank "
            f"FROM g AS x SEMI JOIN k ON {same})\n"
            f"SELECT {kcols}, __ts, __day, __partition, __offset,\n  {contributions}\n"
            f"FROM d AS x SEMI JOIN {{need}} AS n ON {needed} WHERE x.__rank = 1"
        )
        batch = pit.batch_aggregations
        tile_cols = tuple(a.name for a in batch)
        window = f"(PARTITION BY {kcols} ORDER BY __day ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
        prefix_cols: list[str] = []
        specs: list[PrefixColumn] | None = []
        for a in batch:
            law = law_sql(DUCKDB, a.agg)
            if a.width_ms is not None and not law.invertible:
                continue  # windowed MIN/MAX/LAST: over the window's days ({rj})
            for prefix_name, kind, source in law.running:
                source = source.format(t=q(a.name))
                prefix_cols.append(f"{DUCKDB.running[kind].format(x=source)} OVER {window} AS {q(prefix_name + a.name)}")
                if kind not in PREFIX_KINDS:  # lifetime MIN/MAX: only as window functions
                    specs = None
                if specs is not None:
                    specs.append(PrefixColumn(prefix_name + a.name, kind, source))
        prefix = (f"SELECT {kcols}, __day{''.join(', ' + c for c in prefix_cols)} FROM {{tiles}}"
                  if prefix_cols else "")
        ranged = [a for a in batch if a.width_ms is not None and a.agg not in INVERTIBLE]
        ranges = [PrefixColumn(a.name, law_sql(DUCKDB, a.agg).running[0][1], q(a.name)) for a in ranged]
        if len(keys) != 1 or any(r.kind not in RANGE_KINDS for r in ranges):
            ranges = []
        specs = (specs or []) if len(keys) == 1 else []
        vector = specs + ranges
        prefix_input = (f"SELECT {kcols}, __day{''.join(f', {x.source} AS {q(x.name)}' for x in vector)} FROM {{tiles}}"
                        if vector else "")
        span = max((a.width_ms + a.tile_ms for a in pit.stream_aggregations), default=0)  # type: ignore[operator]
        result, probes, asof, rj = self._result_sql(bool(prefix_cols))
        range_input = ""
        if ranges:
            cols = "".join(f", {q('a__' + a.name)}" for a in ranged)
            range_input = f"WITH {', '.join(self._request_ctes()[0])} SELECT {RID}, {kcols}, __tday{cols} FROM r"
        raw_days = f"SELECT DISTINCT {kcols}, __floordiv(__epoch_ms({et}), {MS_PER_DAY}) AS __day FROM {{raw}}"
        return DuckDBFeatureViewSql(pit, tuple(dict.fromkeys(raw_cols)), offline, self._need_sql(), prefix,
                                    result, tile_cols, span, probes, tuple(specs), prefix_input, asof,
                                    tuple(ranges), range_input, rj, raw_days, self._retile_sql())

    def _retile_sql(self) -> str:
        """Daily tiles of the batch-served aggregations over offline events ({offline}), in the tiles table's
        intermediate form (skewless/offline/spark_compiler.py): only (entity, day)s with an event some aggregation counts."""
        pit = self.pit
        if not pit.batch_aggregations:
            return ""
        kcols = ", ".join(q(k) for k in pit.key_names)
        cols, counted = [], []
        for a in pit.batch_aggregations:
            c = q("c__" + a.name)
            counted.append(f"{c} IS NOT NULL")
            cols.append(f"{tile_sql(DUCKDB, a.agg, c, decimal=self._decimal(a))} AS {q(a.name)}")
        return (f"SELECT {kcols}, __day, {', '.join(cols)} FROM {{offline}} WHERE {' OR '.join(counted)} "
                f"GROUP BY {kcols}, __day")

    def _request_ctes(self) -> tuple[list[str], str]:
        """CTEs ``r0``, ``r`` (requests with head day and window starts: ms for stream-served, day numbers
        for batch-served) and the first instant any part of a request reads from the events."""
        pit, D = self.pit, MS_PER_DAY
        kcols = ", ".join(q(k) for k in pit.key_names)
        starts = []
        for a in pit.stream_aggregations:
            starts.append(f"__floordiv(__t - {a.width_ms}, {a.tile_ms}) * {a.tile_ms} AS {q('s__' + a.name)}")
        for a in pit.batch_aggregations:
            if a.width_ms is not None:
                starts.append(f"__floordiv(__t - {a.width_ms}, {D}) AS {q('a__' + a.name)}")
        lo_parts = [f"__tday * {D}"] if pit.batch_aggregations else []
        lo_parts += [q("s__" + a.name) for a in pit.stream_aggregations]
        ctes = [f"r0 AS (SELECT {RID}, {kcols}, {T}, __floordiv({T}, {D}) AS __tday FROM {{req}})",
                f"r AS (SELECT *{''.join(', ' + s for s in starts)} FROM r0)"]
        return ctes, (lo_parts[0] if len(lo_parts) == 1 else f"least({', '.join(lo_parts)})")

    def _need_sql(self) -> str:
        """The distinct (keys, day) pairs whose events the requests read (over {req})."""
        ctes, lo = self._request_ctes()
        kcols = ", ".join(q(k) for k in self.pit.key_names)
        return (f"WITH {', '.join(ctes)} SELECT DISTINCT {kcols}, __day FROM (SELECT {kcols}, "
                f"unnest(range(__floordiv({lo}, {MS_PER_DAY}), __tday + 1)) AS __day FROM r) AS d")

    def _result_sql(self, has_prefix: bool) -> tuple[str, str, str, str]:
        """The view's query (one row per request); with a prefix, the lookups' probes (over {req}) and the
        lookups ``{pl}`` as an ASOF join on the SQL prefix table; with windowed MIN/MAX/LAST their SQL
        ``{rj}`` over the tiles."""
        pit = self.pit
        keys = pit.key_names
        kcols = ", ".join(q(k) for k in keys)
        batch = pit.batch_aggregations
        D = MS_PER_DAY
        ctes, lo = self._request_ctes()
        joins = []
        # head + stream-served windows: the requests' days equi-joined with the offline events
        head_aggs = self._fold_columns(DUCKDB, f"r.__tday * {D}")
        ctes.append(f"rd AS (SELECT {RID}, {kcols}, {T}, __tday{''.join(', ' + q(s) for s in self._start_cols())}, "
                    f"unnest(range(__floordiv({lo}, {D}), __tday + 1)) AS __d FROM r)")
        ctes.append(
            f"hd AS (SELECT r.{RID}, {', '.join(head_aggs)} FROM rd AS r JOIN {{offline}} AS e ON "
            f"{keys_equal('e', 'r', keys)} AND e.__day = r.__d AND e.__ts < r.{T} GROUP BY r.{RID})")
        joins.append(f"LEFT JOIN hd ON hd.{RID} = r.{RID}")
        # whole days from the daily tiles
        probe_sql = asof_sql = rj_sql = ""
        if has_prefix:  # prefix before the head day, and before each window's first day: one lookup ({pl})
            widths = sorted({a.width_ms for a in batch if a.width_ms is not None and a.agg in INVERTIBLE})
            before = ["__tday"] + [q("a__" + next(a for a in batch if a.width_ms == w).name) for w in widths]
            names = ["pe"] + [f"ps_{w}" for w in widths]
            # no tile lies before first_day: such a probe finds nothing (its window is incomplete anyway)
            probes = " UNION ALL ".join(f"SELECT {RID}, {kcols}, {k} AS __k, {b} AS __before FROM r "
                                        f"WHERE {b} > {{first_day}}" for k, b in enumerate(before))
            probe_sql = f"WITH {', '.join(self._request_ctes()[0])} {probes}"
            ctes.append("pl AS MATERIALIZED ({pl})")
            ctes += [f"{name} AS (SELECT * EXCLUDE (__k) FROM pl WHERE __k = {k})" for k, name in enumerate(names)]
            joins += [f"LEFT JOIN {name} ON {name}.{RID} = r.{RID}" for name in names]
            asof_sql = (f"SELECT r.{RID}, r.__k, p.* EXCLUDE ({kcols}, __day) FROM ({probes}) AS r "
                          f"ASOF LEFT JOIN {{prefix}} AS p ON {keys_equal('p', 'r', keys)} AND r.__before > p.__day")
        ranged = [a for a in batch if a.width_ms is not None and a.agg not in INVERTIBLE]
        if ranged:
            aggs = []
            for a in ranged:
                merged = law_sql(DUCKDB, a.agg).merge.format(p=f"t.__day >= r.{q('a__' + a.name)}", t=f"t.{q(a.name)}")
                aggs.append(f"{merged} AS {q('w__' + a.name)}")
            starts = [q("a__" + a.name) for a in ranged]
            lo = f"least({', '.join(starts)})" if len(starts) > 1 else starts[0]
            lo_day = f"least({', '.join('r.' + c for c in starts)})" if len(starts) > 1 else "r." + starts[0]
            if max(a.width_days or 0 for a in ranged) <= UNNEST_MAX_DAYS:  # each request's days, equi-joined
                rj_sql = (f"SELECT r.{RID}, {', '.join(aggs)} FROM (SELECT {RID}, {kcols}, {', '.join(starts)}, "
                          f"unnest(range({lo}, __tday)) AS __d FROM r) AS r JOIN {{tiles}} AS t ON "
                          f"{keys_equal('t', 'r', keys)} AND t.__day = r.__d GROUP BY r.{RID}")
            else:  # a range join on the keys: every tile of the entity is compared
                rj_sql = (f"SELECT r.{RID}, {', '.join(aggs)} FROM r JOIN {{tiles}} AS t ON "
                          f"{keys_equal('t', 'r', keys)} AND t.__day >= {lo_day} AND t.__day < r.__tday GROUP BY r.{RID}")
            ctes.append("rj AS ({rj})")
            joins.append(f"LEFT JOIN rj ON rj.{RID} = r.{RID}")
        cols = self._output_columns(DUCKDB, lambda alias, column: f"{alias}.{q(column)}")
        return ("WITH " + ",\n".join(ctes) + f"\nSELECT r.{RID}, " + ", ".join(cols) + "\nFROM r " + " ".join(joins),
                probe_sql, asof_sql, rj_sql)

    def _start_cols(self) -> list[str]:
        return ["s__" + a.name for a in self.pit.stream_aggregations]

    # --- snapshot views ----------------------------------------------------------------------------

    def _snapshot(self, plan: ViewPlan) -> DuckDBSnapshotSql:
        pit, scan, lookup = self.pit, plan.scan, plan.snapshot
        assert lookup is not None
        keys = pit.key_names
        kcols = ", ".join(q(k) for k in keys)
        fields = [name for name, _ in lookup.fields]
        wanted = [o.feature for o in pit.outputs]
        ts = f"__epoch_ms({q(scan.event_time)})"
        row_cols = list(keys) + [scan.event_time] + ([scan.created_at] if scan.created_at else []) + fields
        fcols = ", ".join(q(f) for f in dict.fromkeys(wanted))
        if not scan.created_at:
            return self._plain_snapshot(plan, row_cols, fcols)
        ttl, memory = lookup.ttl_ms, SNAPSHOT_EXPIRED_MEMORY_MS
        reach = ttl + memory  # a row older than this at T is forgotten: its key's bucket width below
        # (ts, created_at) as one HUGEINT ts * 2^64 + created_at: ordered as the pair, one comparison
        rows_sql = (f"SELECT {kcols}, __ts, __c, CAST(__ts AS HUGEINT) * {PAIR_BASE} + __c AS __k, "
                    f"__floordiv(__ts, {reach}) AS __b, {fcols} FROM "
                    f"(SELECT {kcols}, {ts} AS __ts, __epoch_ms({q(scan.created_at)}) AS __c, {fcols} FROM {{rows}}) AS s")
        # counts DuckDB answers from the Parquet metadata, the min/max of the stored column (not of every row's
        # epoch ms): a pass over two columns instead of a per-row conversion (80 ms -> ~20 ms at 1M rows)
        et = q(scan.event_time)
        stats = (f"SELECT count(*) - count({q(scan.created_at)}), count(*), __epoch_ms(min({et})), __epoch_ms(max({et})) "
                 f"FROM {{rows}}")
        on = keys_equal("s", "r", keys)
        lkeys = ", ".join(f"r.{q(k)}" for k in keys)
        field_cols = ", ".join(f"s.{q(f)}" for f in dict.fromkeys(wanted))
        # Sparse rows (few per key within ttl + 7 d of T): every visible row of the key in [T - ttl - 7 d, T]
        # (an equi-join on the key and a bucket of that width: T's bucket and the one before), the greatest
        # (ts, created_at) wins; it decides values and status, and older rows cannot (forgotten).
        join = (f"WITH r AS (SELECT {RID}, {kcols}, {T}, unnest([__floordiv({T}, {reach}) - 1, __floordiv({T}, {reach})]) "
                f"AS __b FROM {{req}}), "
                # arg_max skips a null argument: the row as one struct (never null)
                f"m AS (SELECT r.{RID}, arg_max(struct_pack(__ts := s.__ts"
                + "".join(f", {q(f)} := s.{q(f)}" for f in dict.fromkeys(wanted))
                + f"), s.__k) AS __row FROM r JOIN {{rows}} AS s ON {on} AND s.__b = r.__b AND s.__ts <= r.{T} AND s.__c <= r.{T} "
                f"AND s.__ts >= r.{T} - {reach} GROUP BY r.{RID}), "
                f"found AS (SELECT r.{RID}, r.{T}, m.__row.__ts, {', '.join(f'm.__row.{q(f)}' for f in dict.fromkeys(wanted))} "
                f"FROM {{req}} AS r LEFT JOIN m ON m.{RID} = r.{RID}) ")
        # Dense rows: 1. one ASOF join on the pair: the greatest (ts, created_at) <= (T, T). Every visible row
        # (ts <= T and created_at <= T) is <= (T, T), so when the row found is visible it is the answer.
        # 2. the requests whose row found is not visible yet (created_at > T): the exact rule on their keys' rows
        #    only (rows dominated in (ts, created_at) by a row visible no later dropped, then ASOF on v <= T).
        v = "greatest(__ts, __c)"
        order = f"PARTITION BY {kcols} ORDER BY {v}, __k"
        ctes = [
            f"r AS (SELECT {RID}, {kcols}, {T}, CAST({T} AS HUGEINT) * {PAIR_BASE} + {T} AS __kt FROM {{req}})",
            f"a AS MATERIALIZED (SELECT r.{RID}, {lkeys}, r.{T}, s.__ts, s.__c, {field_cols} FROM r "
            f"ASOF LEFT JOIN {{rows}} AS s ON {on} AND r.__kt >= s.__k)",
            f"late AS (SELECT {RID}, {kcols}, {T} FROM a WHERE __c > {T})",
            f"cand AS (SELECT {kcols}, __ts, __v, {fcols} FROM (SELECT *, {v} AS __v, max(__k) OVER ({order} ROWS "
            f"BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS __prev, lead({v}) OVER ({order}) AS __next_v "
            f"FROM {{rows}} AS s SEMI JOIN late AS r ON {on}) AS w "
            "WHERE (__prev IS NULL OR __k > __prev) AND (__next_v IS NULL OR __next_v <> __v))",
            f"found AS (SELECT {RID}, {T}, __ts, {fcols} FROM a WHERE __c IS NULL OR __c <= {T} "
            f"UNION ALL SELECT r.{RID}, r.{T}, s.__ts, {field_cols} FROM late AS r "
            f"ASOF LEFT JOIN cand AS s ON {on} AND r.{T} >= s.__v)",
        ]
        fresh = f"s.__ts >= s.{T} - {ttl}"
        cols = [f"CASE WHEN {fresh} THEN s.{q(o.feature)} END AS {q(o.column)}" for o in pit.outputs]
        cols.append(f"CASE WHEN s.__ts IS NOT NULL AND NOT ({fresh}) AND s.__ts >= s.{T} - {reach} "
                    f"THEN '{EXPIRED}' ELSE '{PRESENT}' END AS {q(pit.status_column)}")
        final = f"SELECT s.{RID}, {', '.join(cols)} FROM found AS s"
        result = f"WITH {', '.join(ctes)} {final}"
        return DuckDBSnapshotSql(pit, tuple(dict.fromkeys(row_cols)), rows_sql, stats, result, join + final, reach)

    def _plain_snapshot(self, plan: ViewPlan, row_cols: list[str], fcols: str) -> DuckDBSnapshotSql:
        """Without created_at every row is visible from its own timestamp: a projection of the rows and one
        ASOF join, in the column's own timestamp type (``{ts_type}``, filled in by the runner) so the rows
        are read as stored; the request instants move instead. For ms-floored timestamps (docs/semantics.md
        §1): ``floor_ms(ts) <= T`` is ``ts < T + 1 ms`` and ``floor_ms(ts) >= T - ttl`` is ``ts >= T - ttl``."""
        pit, scan, lookup = self.pit, plan.scan, plan.snapshot
        assert lookup is not None
        keys = pit.key_names
        kcols = ", ".join(q(k) for k in keys)
        ttl, memory = lookup.ttl_ms, SNAPSHOT_EXPIRED_MEMORY_MS

        def at(ms: str) -> str:
            return f"CAST(make_timestamp(({ms}) * 1000) AS {{ts_type}})"

        rows_sql = f"SELECT {kcols}, CAST({q(scan.event_time)} AS {{ts_type}}) AS __v, {fcols} FROM {{rows}}"
        req = (f"(SELECT {RID}, {kcols}, {at(f'{T} + 1')} AS __visible, {at(f'{T} - {ttl}')} AS __fresh, "
               f"{at(f'{T} - {ttl + memory}')} AS __remembered FROM {{req}})")
        cols = [f"CASE WHEN s.__v >= r.__fresh THEN s.{q(o.feature)} END AS {q(o.column)}" for o in pit.outputs]
        cols.append(f"CASE WHEN s.__v < r.__fresh AND s.__v >= r.__remembered THEN '{EXPIRED}' ELSE '{PRESENT}' "
                    f"END AS {q(pit.status_column)}")
        result = (f"SELECT r.{RID}, {', '.join(cols)} FROM {req} AS r ASOF LEFT JOIN {{rows}} AS s "
                  f"ON {keys_equal('s', 'r', keys)} AND r.__visible > s.__v")
        return DuckDBSnapshotSql(pit, tuple(dict.fromkeys(row_cols)), rows_sql, None, result)


# --- running ----------------------------------------------------------------------------------------------


@dataclass
class DuckDBOptions:
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    memory_limit: str | None = None  # e.g. "4GB"; DuckDB spills joins and sorts beyond it
    threads: int | None = None
    temp_directory: str | None = None
    progress: bool = True
    log: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))


def connect(options: DuckDBOptions) -> Any:
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if options.memory_limit:
        con.execute(f"SET memory_limit = '{options.memory_limit}'")
    if options.threads:
        con.execute(f"SET threads = {int(options.threads)}")
    if options.temp_directory:
        con.execute(f"SET temp_directory = {sql_string(options.temp_directory)}")
    con.execute("SET preserve_insertion_order = false")
    con.execute(FLOORDIV)
    con.execute(EPOCH_MS)
    return con


def _ident(table: str) -> str:
    return table.removeprefix("skewless.")


class _PreparedFeatureView:
    """A feature view's tiles and prefix loaded once; offline events loaded per request chunk."""

    def __init__(self, con: Any, catalog: Any, compiled: DuckDBFeatureViewSql, n: int):
        from skewless.training.plan import batch_run_fingerprint

        self.con, self.catalog, self.c, self.n = con, catalog, compiled, n
        pit = compiled.pit
        self.tables = _view_tables(pit)
        self.coverage = sources.BatchCoverage(None, None, None)
        self.raw_snapshot: int | None = None
        self.late_days: list[int] = []
        self.vector: TilePrefix | None = None
        self.vector_prefix = self.vector_ranges = False
        if pit.batch_aggregations:
            self.coverage = sources.batch_coverage(catalog, self.tables.ident("runs"), batch_run_fingerprint(pit))
            if self.coverage.empty:
                raise sources.TrainingDataError(
                    f"view {pit.name!r} v{pit.view.version} has batch-served windows "
                    f"({', '.join(a.name for a in pit.batch_aggregations)}) but no batch run with its current "
                    "definition: run a backfill first (`skewless backfill --start ... --end ...`)")
            # every event archived so far counts (docs/semantics.md §10: the full offline set), also those
            # appended after the newest run's raw snapshot: the days the run covered that received rows since
            # are tiled again from the raw table (batch_jobs/runner.py does the same on its next run)
            raw_ident = _ident(pit.view.source.table)
            self.raw_snapshot = sources.current_snapshot_id(catalog, raw_ident)
            duckdb_sources.daily_tiles(con, f"__run_tiles_{n}", catalog, self.tables.ident("daily_tiles"),
                                       pit.key_names, compiled.tile_columns, self.coverage.first_day,
                                       self.coverage.last_day)
            self.late_days = self._late_days(raw_ident)
            if self.late_days:
                self._retile(raw_ident)
            else:
                con.execute(f"CREATE OR REPLACE TEMP VIEW __tiles_{n} AS SELECT * FROM __run_tiles_{n}")
            if compiled.prefix_input_sql and VECTORISED_PREFIX:  # running sums, computed once
                tiles = con.sql(compiled.prefix_input_sql.format(tiles=f"__tiles_{n}")).to_arrow_table()
                self.vector = TilePrefix.build(tiles, pit.key_names[0], compiled.prefix_specs + compiled.range_specs)
                self.vector_ranges = self.vector is not None and bool(compiled.range_specs)
                if self.vector is None and compiled.range_specs and compiled.prefix_specs:  # the sums alone
                    self.vector = TilePrefix.build(tiles, pit.key_names[0], compiled.prefix_specs)
            self.vector_prefix = self.vector is not None and bool(compiled.prefix_specs)
            if compiled.prefix_sql and not self.vector_prefix:
                con.execute(f"CREATE OR REPLACE TEMP TABLE __prefix_{n} AS "
                            + compiled.prefix_sql.format(tiles=f"__tiles_{n}"))
        else:
            self.raw_snapshot = sources.current_snapshot_id(catalog, _ident(pit.view.source.table))
            con.execute(f"CREATE OR REPLACE TEMP TABLE __tiles_{n} AS SELECT 1 AS __day WHERE false")

    def _late_days(self, raw_ident: str) -> list[int]:
        """Days the tiles cover whose raw rows changed since the newest run's snapshot (all of them when that
        cannot be told, e.g. the run's snapshot expired)."""
        cov = self.coverage
        assert cov.first_day is not None and cov.last_day is not None
        if self.raw_snapshot is None:  # no raw table: reading the events says so
            return []
        table = self.catalog.load_table(raw_ident)
        added = sources.days_added_since(table, cov.raw_snapshot_id, self.raw_snapshot, self.c.pit.plan.scan.event_time)
        covered = range(cov.first_day, cov.last_day + 1)
        return list(covered) if added is None else sorted(d for d in added if d in covered)

    def _retile(self, raw_ident: str) -> None:
        """``__tiles_{n}``: the run's tiles, with those of the late days computed again from the raw table at the
        current snapshot (the offline set of those whole days, every entity)."""
        c, con, n = self.c, self.con, self.n
        scan = c.pit.plan.scan
        con.register(f"__late_days_{n}", pa.table({"__day": pa.array(self.late_days, pa.int64())}))
        fresh = f"__fresh_tiles_{n}"
        for i, (d0, d1) in enumerate(sources.day_segments(self.late_days)):
            raw, need = f"__late_raw_{n}", f"__late_need_{n}"
            duckdb_sources.raw_events(con, raw, self.catalog, raw_ident, self.raw_snapshot, c.raw_columns,
                                      scan.event_time, d0 * MS_PER_DAY, (d1 + 1) * MS_PER_DAY)
            con.execute(f"CREATE OR REPLACE TEMP TABLE {need} AS " + c.raw_days_sql.format(raw=raw))
            tiles = c.retile_sql.format(offline=f"({c.offline_sql.format(raw=raw, need=need)})")
            con.execute((f"CREATE OR REPLACE TEMP TABLE {fresh} AS " if i == 0 else f"INSERT INTO {fresh} ") + tiles)
            con.execute(f"DROP TABLE {need}")
            duckdb_sources.drop(con, raw)
        con.execute(f"CREATE OR REPLACE TEMP TABLE __tiles_{n} AS SELECT * FROM __run_tiles_{n} WHERE __day NOT IN "
                    f"(SELECT __day FROM __late_days_{n}) UNION ALL BY NAME SELECT * FROM {fresh}")
        con.execute(f"DROP TABLE {fresh}")
        con.unregister(f"__late_days_{n}")

    def load_events(self, req: str, t_min: int, t_max: int) -> None:
        """Offline events of the (keys, days) the requests in ``req`` (``t_min <= T <= t_max``) read."""
        c = self.c
        span = c.max_stream_span_ms
        start = ((t_min - span) // MS_PER_DAY) * MS_PER_DAY
        raw, need, con = f"__raw_{self.n}", f"__need_{self.n}", self.con
        duckdb_sources.drop(con, raw)
        duckdb_sources.raw_events(con, raw, self.catalog, _ident(c.pit.view.source.table), self.raw_snapshot,
                                  c.raw_columns, c.pit.plan.scan.event_time, start, t_max)
        con.execute(f"CREATE OR REPLACE TEMP TABLE {need} AS " + c.need_sql.format(req=req))
        con.execute(f"CREATE OR REPLACE TEMP TABLE __offline_{self.n} AS " + c.offline_sql.format(raw=raw, need=need))
        con.execute(f"DROP TABLE {need}")
        duckdb_sources.drop(con, raw)
        key = c.pit.key_names[0]
        if self.vector_prefix:  # this chunk's prefix lookups
            probes = con.sql(c.probe_sql.format(req=req, first_day=self._days()[0])).to_arrow_table()
            con.register(f"__pl_{self.n}", self.vector.prefix_rows(probes, key))  # type: ignore[union-attr]
        if self.vector_ranges:  # and windowed MIN/MAX
            rows = con.sql(c.range_input_sql.format(req=req)).to_arrow_table()
            starts = {x.name: "a__" + x.name for x in c.range_specs}
            con.register(f"__rj_{self.n}", self.vector.range_rows(rows, key, starts))  # type: ignore[union-attr]

    def _days(self) -> tuple[int, int]:
        cov = self.coverage
        return (cov.first_day if cov.first_day is not None else 0,
                cov.last_day if cov.last_day is not None else -(10**9))

    def result_sql(self, req: str) -> str:
        first, last = self._days()
        tiles = f"__tiles_{self.n}"
        pl = (f"SELECT * FROM __pl_{self.n}" if self.vector_prefix
              else self.c.asof_sql.format(prefix=f"__prefix_{self.n}", first_day=first))
        rj = f"SELECT * FROM __rj_{self.n}" if self.vector_ranges else self.c.rj_sql.format(tiles=tiles)
        return self.c.result_sql.format(req=req, offline=f"__offline_{self.n}", pl=pl, rj=rj, tiles=tiles,
                                        first_day=first, last_day=last)


class _PreparedSnapshotView:
    """A snapshot source's rows: a view over the source rows (one chunk, or no created_at rule), else a table
    computed once for every chunk. With created_at, each chunk picks the join or the ASOF path (:meth:`sparse`)."""

    def __init__(self, con: Any, catalog: Any, compiled: DuckDBSnapshotSql, n: int, materialize: bool):
        self.con, self.c, self.n = con, compiled, n
        self.rows, self.span_ms, self.use_join = 0, 0, False
        pit = compiled.pit
        src = f"__rows_src_{n}"
        duckdb_sources.snapshot_rows(con, src, catalog, _ident(pit.view.source.table), compiled.row_columns)
        if compiled.stats_sql:
            nulls, self.rows, lo, hi = con.execute(compiled.stats_sql.format(rows=src)).fetchall()[0]
            if nulls:
                raise sources.TrainingDataError(f"snapshot source {pit.view.source.table} of {pit.name!r} has {nulls} "
                                                f"row(s) with a null {pit.plan.scan.created_at}")
            self.span_ms = 0 if lo is None else hi - lo + 1
        ts_type = con.execute(f"DESCRIBE SELECT {q(pit.plan.scan.event_time)} FROM {src}").fetchone()[1]
        self.ts_type = ts_type if ts_type == "TIMESTAMP WITH TIME ZONE" else "TIMESTAMP"
        kind = "TABLE" if materialize and compiled.stats_sql else "VIEW"
        con.execute(f"CREATE OR REPLACE TEMP {kind} __rows_{n} AS " + compiled.rows_sql.format(rows=src,
                                                                                                   ts_type=self.ts_type))

    def sparse(self, requests: int, keys: int) -> bool:
        """Whether the join path is cheaper: the rows it pairs with the requests (each request meets its key's
        rows of two ``reach`` buckets; rows per key estimated from the requests' distinct keys, spread evenly in
        time) are fewer than the rows the ASOF path sorts."""
        if not self.c.join_sql or not requests or not self.rows or SNAPSHOT_JOIN is not None:
            return bool(self.c.join_sql) and bool(SNAPSHOT_JOIN)
        per_key = self.rows / max(1, keys) * min(1.0, 2 * self.c.reach_ms / max(1, self.span_ms))
        return requests * per_key <= self.rows + requests

    def load_events(self, req: str, t_min: int, t_max: int) -> None:
        if self.c.join_sql:
            kcols = ", ".join(q(k) for k in self.c.pit.key_names)
            n, keys = self.con.execute(f"SELECT count(*), count(DISTINCT ({kcols})) FROM {req}").fetchall()[0]
            self.use_join = self.sparse(n, keys)

    def result_sql(self, req: str) -> str:
        sql = self.c.join_sql if self.use_join else self.c.result_sql
        return sql.format(req=req, rows=f"__rows_{self.n}", ts_type=self.ts_type)


def _view_tables(pit: ViewPit) -> Any:
    from skewless.offline.tables import DEFAULT_NAMESPACE, ViewTables

    return ViewTables(DEFAULT_NAMESPACE, pit.name, pit.view.version)


def compile_plan(plan: PitPlan) -> list[Any]:
    return [DuckDBCompiler(v).compile(v.plan) for v in plan.views]


def run(plan: PitPlan, requests: pa.Table, catalog: Any, options: DuckDBOptions | None = None) -> pa.Table:
    """Feature and status columns for every request row, ordered by ``__rid`` (one row per request)."""
    options = options or DuckDBOptions()
    compiled = compile_plan(plan)
    con = connect(options)
    t0 = time.monotonic()
    try:
        total = requests.num_rows
        size = max(1, options.chunk_rows)
        n_chunks = (total + size - 1) // size
        prepared = []
        for n, c in enumerate(compiled):
            prepared.append(_PreparedSnapshotView(con, catalog, c, n, n_chunks > 1) if isinstance(c, DuckDBSnapshotSql)
                            else _PreparedFeatureView(con, catalog, c, n))
        # chunks of requests close in time, so each chunk loads only the raw days it needs
        order = np.argsort(requests.column(T).to_numpy(), kind="stable") if n_chunks > 1 else None
        parts = []
        for i in range(n_chunks):
            chunk = requests if order is None else requests.take(pa.array(order[i * size:(i + 1) * size]))
            ts = chunk.column(T).to_numpy()
            con.register("__req", chunk)
            for p in prepared:
                p.load_events("__req", int(ts.min()), int(ts.max()))
            sql = _chunk_sql(plan, prepared)
            parts.append(con.sql(sql).to_arrow_table())
            con.unregister("__req")
            if options.progress and (n_chunks > 1 or time.monotonic() - t0 > 5):
                done = min(total, (i + 1) * size)
                options.log(f"training set (duckdb): chunk {i + 1}/{n_chunks}, {done:,}/{total:,} rows, "
                            f"{time.monotonic() - t0:.1f} s")
        result = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        return result.take(_input_order(result.column(RID), total))
    finally:
        con.close()


def _input_order(rid: pa.ChunkedArray, total: int) -> pa.Array:
    """Positions that put rows with ``__rid`` 0..total-1 (each exactly once) in ``__rid`` order: the
    inverse permutation, O(n) (no sort)."""
    rids = rid.to_numpy()
    inverse = np.full(total, -1, dtype=np.int64)
    if len(rids) == total:
        inverse[rids] = np.arange(total, dtype=np.int64)
    if len(rids) != total or (inverse < 0).any():
        raise AssertionError(f"engine returned {len(rids)} rows, not one per request ({total})")
    return pa.array(inverse)


def _chunk_sql(plan: PitPlan, prepared: Sequence[Any]) -> str:
    if len(prepared) == 1:  # the view's own query has one row per request, with the output columns
        return prepared[0].result_sql("__req")
    ctes = [f"v{n} AS ({p.result_sql('__req')})" for n, p in enumerate(prepared)]
    cols = []
    for n, v in enumerate(plan.views):
        cols += [f"v{n}.{q(o.column)}" for o in v.outputs] + [f"v{n}.{q(v.status_column)}"]
    joins = " ".join(f"LEFT JOIN v{n} ON v{n}.{RID} = r.{RID}" for n in range(len(prepared)))
    return f"WITH {', '.join(ctes)} SELECT r.{RID}, {', '.join(cols)} FROM __req AS r {joins}"
