"""The Spark engine: the same point-in-time plan as Spark SQL, for training sets that outgrow one machine.

Same algorithm as :mod:`skewless.training.duckdb_engine` (docs/training.md): the offline events are the
batch path's compiled ``offline`` statement (:class:`skewless.offline.spark_compiler.SparkBatchJob`) over the
raw rows, pinned at the table's current snapshot, of the copy groups that have a row with a requested (keys, day)
(the tiles of days that received rows after the newest run's snapshot are computed again from the raw table with
the batch job's ``tiles`` statement); whole days come from prefix aggregates of the daily tiles: the tiles and each
request's probes (one per window start) in one union, one window of running aggregates over it (Spark has no ASOF
join), windowed MIN/MAX/LAST of whole days (<= 31) as a range frame of that window (a join of each request's window
days otherwise); head and stream-served windows by an equi-join of each request's 1-3 days with the offline events. Snapshot views: the candidate rows
(``visible_from = max(ts, created_at)``, dominated rows dropped), then the same union + window lookup.

Run as a job (``spark-submit``)::

    python -m skewless.training.spark_engine --features churn_model --entities entities.parquet \\
        --out /data/train.parquet            # or --out-table skewless.training.churn_2024

The output is written atomically: Parquet to a temporary sibling directory renamed into place, an
Iceberg table by ``createOrReplace`` of a staging table swapped in with one catalog rename.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from typing import Any, Sequence

import pyarrow as pa

from skewless.core.plan import ViewPlan
from skewless.core.routing import SNAPSHOT_EXPIRED_MEMORY_MS
from skewless.core.sql import SPARK, law_sql
from skewless.core.timeutil import MS_PER_DAY
from skewless.training.compiler import EXPIRED, PRESENT, UNNEST_MAX_DAYS, TrainingCompiler
from skewless.training.plan import INVERTIBLE, PitPlan, ViewPit, batch_run_fingerprint
from skewless.training.requests import RID, T

# up to this many requests per view, the requests' (keys, day) pairs and the copy groups they need are broadcast
# (a hash table per task: ~100 MB at 1M requests) instead of shuffling every raw row of their range to meet them
BROADCAST_MAX_REQUESTS = 2_000_000

bq = SPARK.quote
keys_equal = SPARK.keys_equal


def floordiv(a: str, b: int) -> str:
    return SPARK.floordiv.format(a=a, b=b)


class SparkTrainingCompiler(TrainingCompiler[dict]):
    """Compiles a view's plan (what the training set needs of it) to Spark SQL statements."""

    engine = "spark-training"

    # --- feature views ---------------------------------------------------------------------------------

    def _feature_view(self, plan: ViewPlan) -> dict:
        from skewless.offline.spark_compiler import SparkCompiler

        pit = self.pit
        job = SparkCompiler(pit.field_types).compile(plan)  # the batch path's offline statement and contributions
        keys = pit.key_names
        kcols = ", ".join(bq(k) for k in keys)
        batch, stream = pit.batch_aggregations, pit.stream_aggregations
        D = MS_PER_DAY
        starts = [f"{floordiv(f'{T} - {a.width_ms}L', a.tile_ms)} * {a.tile_ms}L AS {bq('s__' + a.name)}" for a in stream]
        starts += [f"{floordiv(f'{T} - {a.width_ms}L', D)} AS {bq('a__' + a.name)}" for a in batch if a.width_ms is not None]
        requests = (f"SELECT *{''.join(', ' + s for s in starts)} FROM (SELECT {RID}, {kcols}, {T}, "
                    f"{floordiv(T, D)} AS __tday FROM {{req}}) AS r0")
        lo_parts = ([f"__tday * {D}L"] if batch else []) + [bq("s__" + a.name) for a in stream]
        lo = lo_parts[0] if len(lo_parts) == 1 else f"least({', '.join(lo_parts)})"
        head_aggs = self._fold_columns(SPARK, f"r.__tday * {D}L")
        head = (f"SELECT r.{RID}, {', '.join(head_aggs)} FROM (SELECT *, explode(sequence({floordiv(lo, D)}, __tday)) AS __d "
                f"FROM {{r}}) AS r JOIN {{offline}} AS e ON {keys_equal('e', 'r', keys)} AND e.__dnum = r.__d "
                f"AND e.__ts < r.{T} GROUP BY r.{RID}")
        # the raw rows the head can use: whole copy groups (an event's copies share its id and time; the batch
        # statement ranks each group) of which a row has the keys and day of a request's head or stream window, so the
        # statement de-duplicates only those, not every raw row of the requests' range (10M events, E 1M: ~3%)
        scan = pit.plan.scan
        et, eid = bq(scan.event_time), bq(scan.event_id)  # type: ignore[arg-type]
        # (no DISTINCT on either: a repeated row on the looked-up side of a semi-join changes nothing, a shuffle would)
        pairs = f"SELECT {kcols}, explode(sequence({floordiv(lo, D)}, __tday)) AS __d FROM {{r}}"
        groups = (f"SELECT {{hint}}w.{eid}, w.{et} FROM {{raw}} AS w LEFT SEMI JOIN {{pairs}} AS p ON "
                  f"{keys_equal('w', 'p', keys)} AND {floordiv(f'unix_millis(w.{et})', D)} = p.__d")
        needed_raw = (f"SELECT {{hint}}* FROM {{raw}} AS w LEFT SEMI JOIN {{groups}} AS g ON w.{eid} <=> g.{eid} "
                      f"AND w.{et} <=> g.{et}")
        # the tiles and every prefix probe of the requests in one relation ({both}), ordered by __ord = 2 * day + kind
        # (tiles 0 before probes 1 of the same day), so one sort gives each probe the running aggregates of the tiles
        # up to its day, and the probe before the head day (day tday - 1) the windowed MIN/MAX/LAST of a window of Wd
        # whole days (tiles of days tday - Wd .. tday - 1) as a range frame of 2 * Wd - 1 preceding __ord values
        order = f"PARTITION BY {kcols} ORDER BY __ord"
        prefix_cols = []
        framed = [a for a in batch if a.width_ms is not None and a.agg not in INVERTIBLE and a.width_ms % D == 0
                  and a.width_ms // D <= UNNEST_MAX_DAYS]
        for a in batch:
            law = law_sql(SPARK, a.agg)
            if a in framed:
                merged = law.merge.format(p="true", t=bq(a.name))
                frame = f"RANGE BETWEEN {2 * (a.width_ms // D) - 1} PRECEDING AND CURRENT ROW"  # type: ignore[operator]
                prefix_cols.append(f"'w__{a.name}', {merged} OVER ({order} {frame})")
                continue
            if a.width_ms is not None and not law.invertible:
                continue  # windowed MIN/MAX/LAST over a partial day or beyond 31 days: a join over the window's days
            for prefix_name, kind, source in law.running:
                running = SPARK.running[kind].format(x=source.format(t=bq(a.name)))
                prefix_cols.append(f"'{prefix_name}{a.name}', {running} OVER ({order} "
                                   "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)")
        prefix = (f"SELECT {RID}, __k, __kind, named_struct({', '.join(prefix_cols)}) AS __p FROM {{both}}"
                  if prefix_cols else None)
        prefix_starts = sorted({a.width_ms for a in batch if a.width_ms is not None and a.agg in INVERTIBLE})
        ranged = [a for a in batch if a.width_ms is not None and a.agg not in INVERTIBLE and a not in framed]
        ranged_sql = None
        if ranged:
            aggs = [law_sql(SPARK, a.agg).merge.format(p=f"t.__day >= r.{bq('a__' + a.name)}", t=f"t.{bq(a.name)}")
                    + f" AS {bq('w__' + a.name)}" for a in ranged]
            lo_day = f"least({', '.join('r.' + bq('a__' + a.name) for a in ranged)})" if len(ranged) > 1 \
                else f"r.{bq('a__' + ranged[0].name)}"
            if max(a.width_days or 0 for a in ranged) <= UNNEST_MAX_DAYS:  # each request's days, equi-joined
                ranged_sql = (f"SELECT r.{RID}, {', '.join(aggs)} FROM (SELECT *, explode(sequence({lo_day}, r.__tday - 1)) "
                              f"AS __d FROM {{r}} AS r WHERE {lo_day} < r.__tday) AS r JOIN {{tiles}} AS t ON "
                              f"{keys_equal('t', 'r', keys)} AND t.__day = r.__d GROUP BY r.{RID}")
            else:  # a range join on the keys: every tile of the entity is compared
                ranged_sql = (f"SELECT r.{RID}, {', '.join(aggs)} FROM {{r}} AS r JOIN {{tiles}} AS t ON "
                              f"{keys_equal('t', 'r', keys)} AND t.__day >= {lo_day} AND t.__day < r.__tday GROUP BY r.{RID}")
        cols = self._output_columns(SPARK, lambda alias, column: f"lk.{alias}.{bq(column)}",
                                    frozenset(a.name for a in framed))
        joins = [f"LEFT JOIN {{hd}} AS hd ON hd.{RID} = r.{RID}"]
        if prefix:  # every prefix lookup of a request (pe, ps_<W>) in one row of {lk}
            joins.append(f"LEFT JOIN {{lk}} AS lk ON lk.{RID} = r.{RID}")
        if ranged_sql:
            joins.append(f"LEFT JOIN {{rj}} AS rj ON rj.{RID} = r.{RID}")
        final = f"SELECT r.{RID}, {', '.join(cols)} FROM {{r}} AS r {' '.join(joins)}"
        span = max((a.width_ms + a.tile_ms for a in stream), default=0)  # type: ignore[operator]
        start_of = {w: "a__" + next(a.name for a in batch if a.width_ms == w) for w in prefix_starts}
        return {"kind": "feature", "job": job, "requests": requests, "head": head, "pairs": pairs, "groups": groups,
                "needed_raw": needed_raw, "prefix": prefix,
                "prefix_starts": start_of, "ranged": ranged_sql, "final": final, "span": span}

    # --- snapshot views --------------------------------------------------------------------------------

    def _snapshot(self, plan: ViewPlan) -> dict:
        pit, scan, lookup = self.pit, plan.scan, plan.snapshot
        assert lookup is not None
        keys = pit.key_names
        kcols = ", ".join(bq(k) for k in keys)
        fields = list(dict.fromkeys(o.feature for o in pit.outputs))
        fcols = ", ".join(bq(f) for f in fields)
        ts = f"unix_millis({bq(scan.event_time)})"
        if scan.created_at:
            created = f"unix_millis({bq(scan.created_at)})"
            order = f"PARTITION BY {kcols} ORDER BY __v, __ts, __c"
            rows = (f"SELECT {kcols}, __v, __ts, {fcols} FROM (SELECT *, max(named_struct('t', __ts, 'c', __c)) OVER "
                    f"({order} ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS __prev, lead(__v) OVER ({order}) AS __next_v "
                    f"FROM (SELECT {kcols}, {ts} AS __ts, {created} AS __c, greatest({ts}, {created}) AS __v, {fcols} "
                    f"FROM {{rows}}) AS s) AS w WHERE (__prev IS NULL OR named_struct('t', __ts, 'c', __c) > __prev) "
                    "AND (__next_v IS NULL OR __next_v <> __v)")
        else:
            rows = f"SELECT {kcols}, {ts} AS __v, {ts} AS __ts, {fcols} FROM {{rows}}"
        ttl, memory = lookup.ttl_ms, SNAPSHOT_EXPIRED_MEMORY_MS
        fresh = f"l.__s.__ts >= r.{T} - {ttl}L"
        cols = [f"CASE WHEN {fresh} THEN l.__s.{bq(o.feature)} END AS {bq(o.column)}" for o in pit.outputs]
        cols.append(f"CASE WHEN l.__s.__ts IS NOT NULL AND NOT ({fresh}) AND l.__s.__ts >= r.{T} - {ttl + memory}L "
                    f"THEN '{EXPIRED}' ELSE '{PRESENT}' END AS {bq(pit.status_column)}")
        final = f"SELECT r.{RID}, {', '.join(cols)} FROM {{req}} AS r LEFT JOIN {{looked}} AS l ON l.{RID} = r.{RID}"
        return {"kind": "snapshot", "rows": rows, "fields": ["__ts"] + fields, "final": final, "table": scan.table}


# --- running --------------------------------------------------------------------------------------------


def _asof(spark: Any, requests: Any, rows: Any, keys: Sequence[str], req_pos: str, value_col: str) -> Any:
    """Per request, ``value_col`` of the last row with ``__pos <= req_pos`` of the same keys (an ASOF join):
    one union sorted by (keys, pos, rows-before-requests) and ``last(value, ignoreNulls)``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    left = requests.select(*keys, F.col(RID), F.expr(req_pos).alias("__pos"), F.lit(1).alias("__kind"))
    right = rows.select(*keys, F.col("__pos"), F.lit(0).alias("__kind"), F.col(value_col))
    both = left.unionByName(right, allowMissingColumns=True)
    w = Window.partitionBy(*keys).orderBy("__pos", "__kind").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    return (both.withColumn("__v", F.last(value_col, ignorenulls=True).over(w))
            .where(F.col("__kind") == 1).select(RID, F.col("__v").alias(value_col)))


def _prefix_lookups(spark: Any, requests: Any, tiles: Any, keys: Sequence[str], probes: dict[str, str], prefix_sql: str,
                    name: str) -> Any:
    """Per request, for each ``name: day expression`` of ``probes``, the running aggregates of the entity's tiles up to
    that day (the compiled ``prefix`` statement), as struct column ``name``: the tiles and one row per probe in one
    union, sorted once by (keys, ``__ord`` = 2 * day + 0 for tiles, 1 for probes), then one row per request again
    (an ASOF join that needs no separate running-aggregate pass)."""
    from pyspark.sql import functions as F

    rows = tiles.withColumn("__kind", F.lit(0)).withColumn("__ord", F.col("__day").cast("bigint") * 2)
    asked = requests.select(*keys, F.col(RID), F.posexplode(F.array(*[F.expr(p) for p in probes.values()]))
                            .alias("__k", "__pos"), F.lit(1).alias("__kind")) \
        .withColumn("__ord", F.col("__pos") * 2 + 1).drop("__pos")
    # an explicit partition count (the shuffle's, at least one per core), which adaptive execution does not coalesce:
    # it made 3 uneven partitions of 4 for 2 cores, one of them then sorted and windowed alone (~1 s of 3.5 at E 100k)
    parts = max(int(spark.conf.get("spark.sql.shuffle.partitions")), spark.sparkContext.defaultParallelism)
    rows.unionByName(asked, allowMissingColumns=True).repartition(parts, *keys).createOrReplaceTempView(f"{name}_both")
    found = spark.sql(prefix_sql.format(both=f"{name}_both")).where(F.col("__kind") == 1)
    return found.groupBy(RID).agg(*[F.max(F.when(F.col("__k") == k, F.col("__p"))).alias(n) for k, n in enumerate(probes)])


def _coverage(spark: Any, runs_table: str, fingerprint: str) -> tuple[int | None, int | None, int | None]:
    from skewless.offline.tables import table_exists

    if not table_exists(spark, runs_table):
        return None, None, None
    rows = spark.sql(f"SELECT DISTINCT datediff(day, DATE'1970-01-01') AS d, raw_snapshot_id, finished_at "
                     f"FROM {runs_table} WHERE fingerprint = '{fingerprint}'").collect()
    if not rows:
        return None, None, None
    days = {r[0] for r in rows}
    last = max(days)
    first = last
    while first - 1 in days:
        first -= 1
    # the newest run's snapshot (the latest finished: snapshot ids are random)
    runs = [(r[2], r[1]) for r in rows if r[1] is not None and r[2] is not None]
    return (max(runs)[1] if runs else None), first, last


def _late_days(spark: Any, raw_table: str, event_time: str, run_sid: int | None, sid: int | None, first: int,
               last: int) -> list[int]:
    """Days ``first..last`` (the tiles') whose raw rows changed between the newest run's snapshot and ``sid``
    (all of them when that cannot be told, e.g. the run's snapshot expired)."""
    from skewless.offline.tables import iceberg_table
    from skewless.training.sources import days_added_since

    if sid is None:  # no raw table: reading the events says so
        return []
    added = days_added_since(iceberg_table(spark, raw_table), run_sid, sid, event_time)
    return list(range(first, last + 1)) if added is None else sorted(d for d in added if first <= d <= last)


def _tiles_of_days(spark: Any, job: Any, raw_table: str, sid: int, days: Sequence[int], columns: Sequence[Any],
                   name: str) -> Any:
    """The daily tiles of ``days`` computed again from the raw table at ``sid`` with the batch job's own
    statements (every entity), projected to ``columns`` (keys, ``__day``, the tile columns)."""
    from functools import reduce

    from skewless.offline.raw import raw_dataframe
    from skewless.training.sources import day_of, day_segments

    parts = []
    for i, (d0, d1) in enumerate(day_segments(days)):
        raw_dataframe(spark, raw_table, sid, day_of(d0), day_of(d1)).createOrReplaceTempView(f"{name}_late_raw{i}")
        spark.sql(job.offline_sql(f"{name}_late_raw{i}", d0 * MS_PER_DAY, (d1 + 1) * MS_PER_DAY)) \
            .createOrReplaceTempView(f"{name}_late_offline{i}")
        parts.append(spark.sql(job.tiles_sql(f"{name}_late_offline{i}")).select(*columns))
    return reduce(lambda a, b: a.unionByName(b), parts)



def _run_view(spark: Any, pit: ViewPit, program: dict, req: Any, n: int, cached: list[Any]) -> Any:
    """The view's output columns per request (``__rid`` + columns); DataFrames it persists are appended to ``cached``
    (the caller unpersists them once the result is collected)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from skewless.offline import tables as BT
    from skewless.offline.raw import raw_dataframe

    name = f"__tr{n}_{uuid.uuid4().hex[:6]}"
    req.createOrReplaceTempView(f"{name}_req")
    keys = list(pit.key_names)
    if program["kind"] == "snapshot":
        rows = spark.sql(program["rows"].format(rows=BT.spark_name(program["table"])))
        rows = rows.withColumn("__s", F.struct(*[F.col(c) for c in program["fields"]])).withColumn("__pos", F.col("__v"))
        _asof(spark, req, rows, keys, T, "__s").createOrReplaceTempView(f"{name}_looked")
        return spark.sql(program["final"].format(req=f"{name}_req", looked=f"{name}_looked"))
    tables = BT.ViewTables(BT.DEFAULT_NAMESPACE, pit.name, pit.view.version)
    raw_table = BT.spark_name(pit.view.source.table)
    run_sid, first, last = None, None, None
    if pit.batch_aggregations:
        run_sid, first, last = _coverage(spark, tables.runs, batch_run_fingerprint(pit))
        if first is None:
            from skewless.training.sources import TrainingDataError

            raise TrainingDataError(f"view {pit.name!r} v{pit.view.version} has batch-served windows but no batch run "
                                    "with its current definition: run a backfill first")
    # every event archived so far counts (docs/semantics.md §10), also those appended after the newest run's raw
    # snapshot: the days its tiles cover that received rows since are tiled again below
    sid = BT.current_snapshot_id(spark, raw_table)
    # the requests with their window starts, computed once and kept: every step below reads them, and a local
    # relation (an in-memory entity_df) would otherwise be planned again, and its projections evaluated on the
    # driver, in each of them
    r = spark.sql(program["requests"].format(req=f"{name}_req")).persist(StorageLevel.MEMORY_AND_DISK)
    cached.append(r)
    r.createOrReplaceTempView(f"{name}_r")
    bounds = r.agg(F.min(T), F.max(T), F.count(F.lit(1))).collect()[0]
    t_min, t_max, n_requests = int(bounds[0]), int(bounds[1]), int(bounds[2])
    start = ((t_min - program["span"]) // MS_PER_DAY) * MS_PER_DAY
    from skewless.training.sources import day_of

    raw_dataframe(spark, raw_table, sid, day_of(start // MS_PER_DAY), day_of(t_max // MS_PER_DAY)) \
        .createOrReplaceTempView(f"{name}_raw")
    # the (keys, day) pairs of the requests' heads, then the raw rows of the copy groups that have such a row; both
    # sides broadcast while the requests are few enough to hold in each task's memory
    broadcast = n_requests <= BROADCAST_MAX_REQUESTS
    spark.sql(program["pairs"].format(r=f"{name}_r")).createOrReplaceTempView(f"{name}_pairs")
    spark.sql(program["groups"].format(raw=f"{name}_raw", pairs=f"{name}_pairs", hint="/*+ BROADCAST(p) */ " * broadcast)) \
        .createOrReplaceTempView(f"{name}_groups")
    spark.sql(program["needed_raw"].format(raw=f"{name}_raw", groups=f"{name}_groups", hint="/*+ BROADCAST(g) */ " * broadcast)) \
        .createOrReplaceTempView(f"{name}_needed_raw")
    offline = spark.sql(program["job"].offline_sql(f"{name}_needed_raw", start, t_max + 1))
    offline.withColumn("__dnum", F.expr(floordiv("__ts", MS_PER_DAY))).createOrReplaceTempView(f"{name}_offline")
    views = {"r": f"{name}_r", "hd": f"{name}_hd", "offline": f"{name}_offline", "tiles": f"{name}_tiles"}
    spark.sql(program["head"].format(**views)).createOrReplaceTempView(f"{name}_hd")
    fmt = dict(views, first_day=first if first is not None else 0, last_day=last if last is not None else -(10**9))
    if pit.batch_aggregations:
        cols = [F.col(k) for k in keys] + [F.datediff(F.col("day"), F.lit("1970-01-01")).alias("__day")]
        cols += [F.col(a.name) for a in pit.batch_aggregations]
        tiles = BT.read_table(spark, tables.tiles).where(
            (F.col("day") >= F.lit(day_of(first))) & (F.col("day") <= F.lit(day_of(last)))).select(*cols)
        late = _late_days(spark, raw_table, pit.plan.scan.event_time, run_sid, sid, first, last)  # type: ignore[arg-type]
        if late:
            tiles = tiles.where(~F.col("__day").isin(late)).unionByName(
                _tiles_of_days(spark, program["job"], raw_table, sid, late, cols, name))
        tiles.createOrReplaceTempView(f"{name}_tiles")
        if program["prefix"]:  # prefix before the head day (pe) and before each window's first day (ps_<W>)
            probes = {"pe": "__tday - 1"} | {f"ps_{w}": f"`{col}` - 1" for w, col in program["prefix_starts"].items()}
            _prefix_lookups(spark, r, tiles, keys, probes, program["prefix"], name).createOrReplaceTempView(f"{name}_lk")
            fmt["lk"] = f"{name}_lk"
        if program["ranged"]:
            spark.sql(program["ranged"].format(**fmt)).createOrReplaceTempView(f"{name}_rj")
            fmt["rj"] = f"{name}_rj"
    return spark.sql(program["final"].format(**fmt))


def compile_plan(plan: PitPlan) -> list[dict]:
    return [SparkTrainingCompiler(v).compile(v.plan) for v in plan.views]


def training_dataframe(spark: Any, plan: PitPlan, requests: Any, progress: bool = True,
                       cached: list[Any] | None = None) -> Any:
    """``__rid`` + the output columns for a request DataFrame (``__rid``, keys, ``__t``), one row per request in
    no particular order. DataFrames persisted on the way are appended to ``cached`` (unpersist them after use)."""
    spark.conf.set("spark.sql.ansi.enabled", "true")  # int64 overflow is an error, never a wrap
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    programs = compile_plan(plan)
    out = None
    for n, (pit, program) in enumerate(zip(plan.views, programs)):
        if progress:
            print(f"training set (spark): view {pit.name} ({n + 1}/{len(plan.views)})", file=sys.stderr, flush=True)
        # each view's result has one row per request (its requests left-joined with what it found)
        view = _run_view(spark, pit, program, requests, n, cached if cached is not None else [])
        out = view if out is None else out.join(view, RID, "left")
    return out


def run_to_arrow(plan: PitPlan, requests: pa.Table, spark: Any = None, progress: bool = True) -> pa.Table:
    """The Spark engine on an in-memory request table (the facade's ``engine="spark"``), ordered by ``__rid``."""
    import pyarrow.compute as pc

    if spark is None:
        from skewless.engines.spark_session import spark_session

        spark = spark_session("skewless-training")
    t0 = time.monotonic()
    df = spark.createDataFrame(requests)
    cached: list[Any] = []
    try:
        result = training_dataframe(spark, plan, df, progress, cached).toArrow()
    finally:
        for c in cached:
            c.unpersist()
    result = result.take(pc.sort_indices(result.column(RID)))  # on the driver: no range shuffle and its sampling job
    if progress:
        print(f"training set (spark): {requests.num_rows:,} rows in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return result


# --- spark-submit entry -----------------------------------------------------------------------------------


def write_atomically(df: Any, *, out_path: str | None = None, out_table: str | None = None) -> str:
    """Parquet: written to ``<out>.tmp-<id>`` then renamed to ``<out>`` (refused if it exists); Iceberg: a staging
    table created in full, then renamed to ``out_table`` (refused if it exists). Nothing half-written is visible."""
    spark = df.sparkSession
    if out_path:
        jvm = spark._jvm
        conf = spark._jsc.hadoopConfiguration()
        target = jvm.org.apache.hadoop.fs.Path(out_path)
        fs = target.getFileSystem(conf)
        if fs.exists(target):
            raise FileExistsError(f"{out_path} exists: choose a new output path (training sets are never overwritten)")
        tmp = f"{out_path.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            df.write.mode("errorifexists").parquet(tmp)
            if not fs.rename(jvm.org.apache.hadoop.fs.Path(tmp), target):
                raise OSError(f"cannot rename {tmp} to {out_path}")
        finally:
            tmp_path = jvm.org.apache.hadoop.fs.Path(tmp)
            if fs.exists(tmp_path):
                fs.delete(tmp_path, True)
        return out_path
    assert out_table
    if spark.catalog.tableExists(out_table):
        raise FileExistsError(f"table {out_table} exists: choose a new table name")
    staging = f"{out_table}__staging_{uuid.uuid4().hex[:8]}"
    try:
        df.writeTo(staging).using("iceberg").create()
        spark.sql(f"ALTER TABLE {staging} RENAME TO {out_table}")
    except Exception:
        spark.sql(f"DROP TABLE IF EXISTS {staging}")
        raise
    return out_table


def requests_dataframe(spark: Any, path: str, plan: PitPlan, timestamp_column: str) -> Any:
    """An entity Parquet file as the request DataFrame (checked like the embedded engine's input)."""
    from pyspark.sql import functions as F

    from skewless.training.plan import TrainingInputError

    df = spark.read.parquet(path)
    fields = {f.name: f.dataType.simpleString() for f in df.schema.fields}
    if timestamp_column not in fields:
        raise TrainingInputError(f"entity file has no timestamp column {timestamp_column!r} (columns: {', '.join(fields)})")
    if not fields[timestamp_column].startswith("timestamp"):
        raise TrainingInputError(f"timestamp column {timestamp_column!r} is {fields[timestamp_column]}, not a timestamp")
    for key, ktype in plan.key_columns.items():
        if key not in fields:
            raise TrainingInputError(f"entity file has no entity key column {key!r} (columns: {', '.join(fields)})")
        ok = fields[key] == "string" if ktype == "string" else fields[key] in ("bigint", "int", "smallint", "tinyint")
        if not ok:
            raise TrainingInputError(f"entity key column {key!r} is {fields[key]}; the entity declares it as {ktype}")
    clash = sorted(set(plan.output_columns) & set(fields))
    if clash:
        raise TrainingInputError(f"entity columns {clash} have the names of output columns; rename them")
    df = df.withColumn(RID, F.monotonically_increasing_id())
    return df, df.select(RID, *[F.col(k).cast("bigint" if t == "int64" else "string").alias(k)
                                for k, t in plan.key_columns.items()],
                         F.expr(floordiv(f"unix_micros(CAST({bq(timestamp_column)} AS TIMESTAMP))", 1000))  # ntz read as UTC
                         .alias(T))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skewless.training.spark_engine", description=__doc__.splitlines()[0])
    parser.add_argument("--features", nargs="+", required=True, help="view:feature, view or feature service names")
    parser.add_argument("--entities", required=True, help="Parquet file/folder with the entity keys and timestamps")
    parser.add_argument("--timestamp-column", default="event_timestamp")
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", help="output Parquet folder (must not exist)")
    out.add_argument("--out-table", help="output Iceberg table, e.g. skewless.training.my_set (must not exist)")
    parser.add_argument("--repo", default="feature_defs")
    args = parser.parse_args(argv)
    from pyspark.sql import functions as F

    from skewless.core.repo import load_repository
    from skewless.engines.spark_session import spark_session
    from skewless.training.plan import build_pit_plan

    plan = build_pit_plan(load_repository(args.repo), args.features)
    spark = spark_session("skewless-training-set")
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    full, requests = requests_dataframe(spark, args.entities, plan, args.timestamp_column)
    full = full.cache()
    n_null = full.where(F.col(args.timestamp_column).isNull()).count()
    if n_null:
        raise SystemExit(f"timestamp column {args.timestamp_column!r} has {n_null} null value(s)")
    features = training_dataframe(spark, plan, requests)
    result = full.join(features, RID, "left").orderBy(RID).drop(RID)
    where = write_atomically(result, out_path=args.out, out_table=args.out_table)
    print(f"training set written to {where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
