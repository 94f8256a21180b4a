"""Running the compiled batch job for days: daily tiles, the runs log and the serving rows of a cut-off.

A run over ``[start, end]`` (one day is the daily run of D; a range is a backfill):

1. checks the raw table's schema and the archive gate (complete past ``C_end + allowed_lateness``);
2. pins the raw table at its current snapshot (the run id names it), so a run reads one consistent set;
3. recomputes, in chunks of contiguous days, the daily tiles of every day not already logged with the
   same fingerprint (``rerun`` recomputes all), plus earlier days that received raw rows since the last
   run (late events, found with an incremental Iceberg scan), each chunk one atomic ``overwrite`` of its
   days' partitions; then appends the chunk's days to the runs log;
4. writes the serving rows for ``C = end + 1 day`` (one ``overwrite`` of that cut-off's partition).

Killed midway, a rerun skips the chunks already logged and recomputes the rest; partitions are replaced,
never appended to, so nothing doubles.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Sequence

from skewless.core.dsl import FeatureView, SnapshotView
from skewless.core.plan import plan_view
from skewless.core.repo import Repository, UnknownFeatureError
from skewless.core.timeutil import MS_PER_DAY, day_start_ms, to_epoch_ms
from skewless.offline import tables as T
from skewless.offline.raw import added_files, event_day, raw_dataframe
from skewless.offline.spark_compiler import SparkBatchJob, SparkCompiler, run_fingerprint

from batch_jobs.archive_gate import check_archive

DEFAULT_CHUNK_DAYS = 366  # days per Spark job and Iceberg commit (resume granularity): a year in one pass


def parse_day(text: str, what: str = "date") -> date:
    """``YYYY-MM-DD`` as a date, or a :class:`~skewless.offline.tables.BatchError` naming the bad value."""
    try:
        return date.fromisoformat(text)
    except (TypeError, ValueError):
        raise T.BatchError(f"{what} {text!r} is not a date YYYY-MM-DD") from None


def cutoff_ms(day: date) -> int:
    """The cut-off of the run for day D: ``D+1 00:00 UTC``."""
    return day_start_ms(day) + MS_PER_DAY


def find_view(repo: Repository, name: str) -> FeatureView | SnapshotView:
    """The view ``name`` names (``view@vN`` for a version of a view declared in two: an upgrade)."""
    views = {v.name: v for v in repo.views}
    if name.partition("@")[0] not in views:
        raise T.BatchError(f"unknown view {name!r}; the repository has: {', '.join(sorted(views)) or 'no views'}")
    try:
        return repo.view_named(name)
    except UnknownFeatureError as exc:
        raise T.BatchError(str(exc)) from None


def compile_view(repo: Repository, view: FeatureView) -> SparkBatchJob:
    """The view's plan compiled by :class:`SparkCompiler` with the source schema's field types."""
    schema = repo.schema(view.source.schema)
    return compile_feature_view(view, {f.name: f.type for f in schema.fields})


def compile_feature_view(view: FeatureView, field_types: dict[str, str]) -> SparkBatchJob:
    """A feature view compiled with explicit source field types (name -> feature type)."""
    if not isinstance(view, FeatureView):
        raise T.BatchError(f"{view.name!r} is a snapshot view: it has no batch job; `skewless materialize` loads its table")
    return SparkCompiler(field_types).compile(plan_view(view))


@dataclass
class RunOptions:
    namespace: str = T.DEFAULT_NAMESPACE
    force: bool = False  # skip the archive gate (static test data, backfills of closed history)
    rerun: bool = False  # recompute days already logged with the same fingerprint
    chunk_days: int = DEFAULT_CHUNK_DAYS
    write_serving: bool = True
    incremental_serving: bool = True  # serving rows from the previous cut-off's state when valid (docs/batch.md §4)
    serving_state_days: int = 7  # cut-offs of serving state kept (the next daily run reads only the newest)
    catalog: Any = None  # PyIceberg catalog, for skewless.archive's progress when installed
    after_chunk: Callable[[list[date]], None] | None = None  # called after each committed chunk (tests)
    log: Callable[[str], None] = print


@dataclass
class RunReport:
    view: str
    start: date
    end: date
    raw_snapshot_id: int
    computed_days: list[date] = field(default_factory=list)
    skipped_days: list[date] = field(default_factory=list)
    late_days: list[date] = field(default_factory=list)
    tile_rows: int = 0
    serving_rows: int | None = None
    run_id: str | None = None
    cutoff_ms: int | None = None
    seconds: float = 0.0
    serving_seconds: float = 0.0
    serving_mode: str | None = None  # "incremental" (from the state of C - 1 day) or "full" (every tile day)
    warnings: list[str] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step (profile: checks, tiles, serving, ...)

    def step(self, name: str, since: float) -> float:
        """Add the time since ``since`` (``time.monotonic()``) to step ``name``; returns now."""
        now = time.monotonic()
        self.steps[name] = self.steps.get(name, 0.0) + now - since
        return now


def _days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def _segments(days: Sequence[date]) -> list[list[date]]:
    out: list[list[date]] = []
    for d in sorted(days):
        if out and (d - out[-1][-1]).days == 1:
            out[-1].append(d)
        else:
            out.append([d])
    return out


def run_range(spark: Any, view: FeatureView, job: SparkBatchJob, start: date, end: date,
              opts: RunOptions | None = None) -> RunReport:
    """Compute ``[start, end]`` (see the module docstring); returns what was done."""
    from pyspark.sql import functions as F

    opts = opts or RunOptions()
    t_start = time.monotonic()
    if start > end:
        raise T.BatchError(f"start {start} is after end {end}")
    if not job.tile_aggregations:
        raise T.BatchError(f"view {view.name!r} has no batch-served window (all windows <= 1 day): nothing to compute; "
                           "training sets read its raw events")
    spark.conf.set("spark.sql.ansi.enabled", "true")  # int64 / decimal overflow is an error, never a wrap
    raw = T.spark_name(view.source.table)
    T.check_raw_schema(spark, raw, job.raw_columns)
    sid = T.current_snapshot_id(spark, raw)
    if sid is None:
        raise T.NoRawDataError(f"raw table {raw} has no data yet (no snapshot)")
    cut_end = cutoff_ms(end)
    now_ms = to_epoch_ms(datetime.now(timezone.utc))
    if cut_end > now_ms and not opts.force:
        raise T.ArchiveNotCompleteError(f"day {end} has not ended yet (cut-off {datetime.fromtimestamp(cut_end / 1000, timezone.utc)})")
    if not opts.force:
        opts.log(check_archive(spark, view.source, cut_end, opts.catalog))

    tables = T.ViewTables(opts.namespace, view.name, view.version)
    T.ensure_namespace(spark, opts.namespace)
    T.ensure_runs_table(spark, tables.runs)
    fingerprint = run_fingerprint(job.fingerprint)
    report = RunReport(view.name, start, end, sid)
    tiles_before = T.snapshot_id(spark, tables.tiles)  # what the serving state of C - 1 day may have been built on
    t = report.step("checks", t_start)
    done = {} if opts.rerun else T.done_days(spark, tables.runs, fingerprint)
    t = report.step("runs_log_read", t)
    wanted = _days(start, end)
    todo = [d for d in wanted if d not in done]
    report.skipped_days = [d for d in wanted if d in done]
    if report.skipped_days:
        opts.log(f"{view.name} v{view.version}: {len(report.skipped_days)} day(s) already done with fingerprint "
                 f"{job.fingerprint[:12]} (skipped; --rerun recomputes them)")
    late = _late_days(spark, raw, view.source.event_time, done, sid, set(wanted), opts, report) if done else []
    report.late_days = late
    t = report.step("late_days", t)

    raw_view = f"__raw_{tables.base}"
    chunks: list[list[date]] = []
    for seg in _segments(sorted(set(todo) | set(late))):
        chunks += [seg[i:i + max(1, opts.chunk_days)] for i in range(0, len(seg), max(1, opts.chunk_days))]
    serving_due = opts.write_serving and (
        bool(chunks) or done.get(end, {}).get("serving_rows") is None or done[end].get("raw_snapshot_id") != sid)
    deferred: list[dict[str, Any]] = []  # runs-log rows of the last chunk wait for the serving write
    for chunk in chunks:
        t0 = time.monotonic()
        d0, d1 = chunk[0], chunk[-1]
        offline_view = f"__offline_{tables.base}"
        raw_dataframe(spark, raw, sid, d0, d1).createOrReplaceTempView(raw_view)
        spark.sql(job.offline_sql(raw_view, day_start_ms(d0), cutoff_ms(d1))).createOrReplaceTempView(offline_view)
        tiles = spark.sql(job.tiles_sql(offline_view)).withColumn("raw_snapshot_id", F.lit(sid).cast("bigint"))
        T.ensure_table(spark, tables.tiles, tiles, "day")
        # already clustered by day (the offline statement's one shuffle) and sorted by day (the tiles' GROUP BY):
        # no second shuffle or sort, and one open file per write task
        (tiles.writeTo(tables.tiles).option("distribution-mode", "none")
         .overwrite((F.col("day") >= F.lit(d0)) & (F.col("day") <= F.lit(d1))))
        t = report.step("tiles", t0)
        counts = T.partition_counts(spark, tables.tiles, d0, d1)
        t = report.step("tile_counts", t)
        seconds = time.monotonic() - t0
        rows = []
        for d in chunk:
            n = int(counts.get(d, 0))
            report.tile_rows += n
            rows.append({"day": d, "cutoff_ms": cutoff_ms(d), "fingerprint": fingerprint,
                         "run_id": _run_id(view, d, sid), "raw_table": raw, "raw_snapshot_id": sid,
                         "tile_rows": n, "seconds": seconds / len(chunk)})
            tag = " (late events)" if d in late else ""
            opts.log(f"{view.name} v{view.version} {d}: {n} tile rows, {seconds / len(chunk):.2f} s{tag}")
        if chunk is chunks[-1] and serving_due:
            deferred = rows
        else:
            T.append_runs(spark, tables.runs, rows)
            t = report.step("runs_log_append", t)
        report.computed_days += chunk
        if opts.after_chunk is not None:
            opts.after_chunk(chunk)

    if chunks and report.tile_rows == 0:
        msg = (f"WARNING: raw table {raw} has no events in the computed days ({start}..{end}) that an aggregation of "
               f"{view.name} counts: their tiles are empty")
        report.warnings.append(msg)
        opts.log(msg)
    if serving_due:
        t0 = time.monotonic()
        report.cutoff_ms = cutoff_ms(end)
        report.run_id = _run_id(view, end, sid)
        incremental = opts.incremental_serving and all(d >= end for d in report.computed_days)
        report.serving_rows, report.serving_mode = write_serving(
            spark, view, job, tables, end, report.run_id, fingerprint,
            incremental_from=tiles_before if incremental else None, state_days=opts.serving_state_days)
        seconds = report.serving_seconds = time.monotonic() - t0
        report.step("serving", t0)
        opts.log(f"{view.name} v{view.version} serving for cut-off {end + timedelta(days=1)}T00:00Z: "
                 f"{report.serving_rows} entities, {seconds:.2f} s ({report.serving_mode})")
        mark = {"day": end, "cutoff_ms": cutoff_ms(end), "fingerprint": fingerprint, "run_id": report.run_id,
                "raw_table": raw, "raw_snapshot_id": sid, "tile_rows": done.get(end, {}).get("tile_rows", 0),
                "seconds": seconds}
        ends = [r for r in deferred if r["day"] == end]
        if ends:
            ends[0]["serving_rows"] = report.serving_rows
        else:
            deferred.append({**mark, "serving_rows": report.serving_rows})
        t = time.monotonic()
        T.append_runs(spark, tables.runs, deferred)
        report.step("runs_log_append", t)
    report.seconds = time.monotonic() - t_start
    return report


def write_serving(spark: Any, view: FeatureView, job: SparkBatchJob, tables: T.ViewTables, day: date,
                  run_id: str, fingerprint: str, incremental_from: int | None = None,
                  state_days: int = 7) -> tuple[int, str]:
    """Serving rows and serving state for the cut-off of ``day`` (one overwrite each); returns (rows, mode).

    ``incremental_from``: the tiles snapshot before this run, whose only tile changes are on ``day`` or later.
    When the serving state of the cut-off before was built on that snapshot with the same fingerprint, the rows
    come from that state plus the tiles of the days entering and leaving each window (mode ``incremental``);
    otherwise from every tile day (``full``). Both give the same rows (tested). The state keeps the newest
    ``state_days`` cut-offs up to this one (older partitions are deleted, whole files)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType, StringType, StructField, StructType

    from batch_jobs.codec import encode_serving_batches, encode_serving_sql

    cut = cutoff_ms(day)
    tiles_sid = T.snapshot_id(spark, tables.tiles)
    tiles_view = f"__tiles_{tables.base}"
    T.read_table(spark, tables.tiles, tiles_sid).createOrReplaceTempView(tiles_view)
    full = spark.sql(job.serving_sql(tiles_view, cut))
    mode, structured = "full", full
    if incremental_from is not None and job.serving_incremental_sql_template is not None:
        prev = T.serving_state_info(spark, tables.state, cut - MS_PER_DAY)
        if prev is not None and prev["fingerprint"] == fingerprint and prev["tiles_snapshot_id"] == incremental_from:
            state_view = f"__state_{tables.base}"
            T.read_table(spark, tables.state).createOrReplaceTempView(state_view)
            inc = spark.sql(job.serving_incremental_sql(state_view, tiles_view, cut))
            mode, structured = "incremental", inc.select([F.col(f.name).cast(f.dataType) for f in full.schema])
    structured = structured.persist()  # computed once for the state and the encoded rows
    state = structured.select("*", F.lit(cut).alias("cutoff_ms"), F.lit(fingerprint).alias("fingerprint"),
                              F.lit(tiles_sid).cast("bigint").alias("tiles_snapshot_id"))
    T.ensure_table(spark, tables.state, state, "cutoff_ms")
    state.writeTo(tables.state).option("distribution-mode", "none").overwrite(F.col("cutoff_ms") == F.lit(cut))
    T.delete_partitions_before(spark, tables.state, "cutoff_ms", cut - (max(1, state_days) - 1) * MS_PER_DAY)
    key_fields = [structured.schema[k] for k in job.key_names]
    schema = StructType([StructField(f.name, f.dataType) for f in key_fields] + [
        StructField("entity_tag", StringType()), StructField("cutoff_ms", LongType()), StructField("run_id", StringType()),
    ] + [StructField(w.column, StringType()) for w in job.windows])
    encoded = encode_serving_sql(structured, view.entity, job.key_names, job.windows, cut, run_id)
    if encoded is None:  # a float or decimal window: Python's text, via Arrow batches
        fn = functools.partial(encode_serving_batches, entity=view.entity, key_names=job.key_names,
                               windows=job.windows, cutoff_ms=cut, run_id=run_id)
        encoded = structured.mapInArrow(fn, schema)
    T.ensure_table(spark, tables.serving, encoded, "cutoff_ms")
    # one partition (the cut-off): hash distribution would funnel every row through one writer task
    encoded.writeTo(tables.serving).option("distribution-mode", "none").overwrite(F.col("cutoff_ms") == F.lit(cut))
    structured.unpersist()
    return int(T.partition_counts(spark, tables.serving, cut).get(cut, 0)), mode


def _run_id(view: FeatureView, day: date, sid: int) -> str:
    """Deterministic run id: view version, run day and the raw snapshot it read."""
    return f"{view.name}:v{view.version}:{day.isoformat()}@{sid}"


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _late_days(spark: Any, raw: str, event_time: str, done: dict[date, dict[str, Any]], sid: int, wanted: set[date],
               opts: RunOptions, report: RunReport) -> list[date]:
    """Days already computed that got raw rows appended since (late events): recomputed in this run."""
    newest = max((v for v in done.values() if v.get("raw_snapshot_id") is not None), key=lambda v: v["finished_at"],
                 default=None)  # snapshot ids are random: the newest run is the latest finished
    last = None if newest is None else int(newest["raw_snapshot_id"])
    if last is None or last == sid:
        return []
    try:
        files = [(path, event_day(part, event_time)) for path, part in added_files(spark, raw, last, sid)]
        days = {d for _, d in files if d is not None}  # partitioned by day(event time): the day from the manifests
        unknown = [p for p, d in files if d is None]  # other layouts: the days of their rows
        if unknown:
            df = raw_dataframe(spark, raw, sid, files=unknown)
            days |= {r[0] for r in df.selectExpr(
                f"date_from_unix_date(CAST(floor(unix_millis({_q(event_time)}) / {MS_PER_DAY}) AS INT))").distinct().collect()}
    except Exception as exc:  # noqa: BLE001 - e.g. an expired snapshot: say so, do not guess
        msg = (f"WARNING: cannot list raw rows added since snapshot {last} ({type(exc).__name__}: {exc}); days before "
               "this run are not re-checked for late events: run a backfill with --rerun over them")
        report.warnings.append(msg)
        opts.log(msg)
        return []
    late = sorted(d for d in days if d in done and d not in wanted)
    if late:
        opts.log(f"{len(late)} earlier day(s) received late events since the last run: {', '.join(map(str, late))}")
    return late
