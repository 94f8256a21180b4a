"""Exact point-in-time values from the batch tables (reference reader for training sets and tests).

A feature's window as of any instant T (docs/semantics.md §2) is ``[floor(T - W, H), T)``. For a
batch-served window (H = 1 day) that is the whole days ``[floor(T - W, 1d), floor(T, 1d))`` -- merged
from ``<view>_v<n>_daily_tiles`` -- plus the head ``[floor(T, 1d), T)``, folded from the offline events
of T's day. For stream-served windows (W <= 1 day) the window is at most W + H long and is folded from
the offline events directly. Offline events are recomputed with the compiled ``offline`` statement
from the raw table **at the raw snapshot the tiles were computed from** (the runs log records it), so
tiles and head agree on one event set. Exact to the millisecond, including T on tile and day edges.

This reader collects to the driver: it serves tests and small requests, and documents the algorithm
the training-set builder implements as an as-of join at scale (docs/batch.md).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from typing import Any, Sequence

from skewless.core import laws
from skewless.core.dsl import Agg, Derived, FeatureView
from skewless.core.expr import evaluate
from skewless.core.routing import is_stream_served
from skewless.core.timeutil import MS_PER_DAY, day_start_ms, floor_ms
from skewless.offline import tables as T
from skewless.offline.raw import raw_dataframe
from skewless.offline.spark_compiler import (DAY, OFFSET, PARTITION, TS, SparkBatchJob, contribution_column,
                                             run_fingerprint, sql_literal)

from batch_jobs.codec import to_intermediate


def _day_ms(d: date) -> int:
    return day_start_ms(d)


def raw_snapshot_of_tiles(spark: Any, job: SparkBatchJob, tables: T.ViewTables) -> int:
    """The raw snapshot the current tiles were computed from (the newest in the runs log)."""
    fp = run_fingerprint(job.fingerprint)
    row = spark.sql(f"SELECT max_by(raw_snapshot_id, finished_at) FROM {tables.runs} WHERE fingerprint = '{fp}'").collect()[0]
    if row[0] is None:
        raise T.BatchError(f"no batch run of {job.view} v{job.version} with this definition: run a backfill first")
    return int(row[0])


def point_in_time(spark: Any, view: FeatureView, job: SparkBatchJob, requests: Sequence[tuple[tuple, int]],
                  namespace: str = T.DEFAULT_NAMESPACE) -> list[dict[str, Any]]:
    """Feature values (aggregations and derived, declaration order) per ``(entity key, T ms)`` request."""
    tables = T.ViewTables(namespace, view.name, view.version)
    sid = raw_snapshot_of_tiles(spark, job, tables)
    keys = job.key_names
    entities = sorted({tuple(k) for k, _ in requests}, key=repr)
    max_stream = max((w + _tile(job, f) for f, w in job.widths.items() if is_stream_served(w)), default=0)
    head_days = set()
    for _, t in requests:
        first = floor_ms(t - max_stream, MS_PER_DAY) if max_stream else floor_ms(t, MS_PER_DAY)
        head_days.update(range(first, floor_ms(t, MS_PER_DAY) + 1, MS_PER_DAY))

    def entity_filter() -> str:
        ors = [" AND ".join(f"`{k}` = {_lit(v)}" for k, v in zip(keys, e)) for e in entities]
        return "(" + " OR ".join(f"({o})" for o in ors) + ")" if ors else "false"

    tiles: dict[tuple, dict[int, dict[str, Any]]] = defaultdict(dict)
    if job.tile_aggregations and spark.catalog.tableExists(tables.tiles):
        for r in spark.sql(f"SELECT * FROM {tables.tiles} WHERE {entity_filter()}").collect():
            d = r.asDict(recursive=True)
            tiles[tuple(d[k] for k in keys)][_day_ms(d[DAY])] = d

    events: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    if head_days:
        raw_view = f"__pit_raw_{tables.base}"
        first = date.fromordinal(date(1970, 1, 1).toordinal() + min(head_days) // MS_PER_DAY)
        last = date.fromordinal(date(1970, 1, 1).toordinal() + max(head_days) // MS_PER_DAY)
        raw_dataframe(spark, T.spark_name(view.source.table), sid, first, last).createOrReplaceTempView(raw_view)
        offline = spark.sql(job.offline_sql(raw_view, min(head_days), max(head_days) + MS_PER_DAY))
        for r in offline.where(entity_filter()).collect():
            d = r.asDict(recursive=True)
            if floor_ms(d[TS], MS_PER_DAY) in head_days:
                events[tuple(d[k] for k in keys)].append(d)

    out = []
    for key, t in requests:
        key = tuple(key)
        values: dict[str, Any] = {}
        for a in job.aggregations:
            law = laws.LAWS[Agg(a.agg)]
            width = job.widths[a.name]
            head_from = floor_ms(t, MS_PER_DAY)
            acc = law.init()
            if is_stream_served(width):
                head_from = floor_ms(t - width, _tile(job, a.name))  # type: ignore[operator]
            else:
                start = None if width is None else floor_ms(t - width, MS_PER_DAY)
                for day_ms, row in tiles.get(key, {}).items():
                    if (start is None or day_ms >= start) and day_ms < head_from:
                        acc = law.merge(acc, to_intermediate(a.agg, row[a.name], a.name in job.int_sums))
            for e in events.get(key, ()):
                if head_from <= e[TS] < t:
                    acc = law.update(acc, e[contribution_column(a.name)], (e[TS], e[PARTITION], e[OFFSET]))
            values[a.name] = law.finalize(acc) if law.in_range(acc) else None  # a sum outside int64: no value (§4)
        for f in view.features:
            if isinstance(f, Derived):
                values[f.name] = evaluate(f.expr, values, t)
        out.append({name: values[name] for name in view.feature_names})
    return out


def _tile(job: SparkBatchJob, feature: str) -> int:
    return job.tile_ms[feature]


def _lit(v: Any) -> str:
    return sql_literal(v)
