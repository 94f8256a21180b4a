"""The Spark compiler: a feature view's :class:`~skewless.core.plan.ViewPlan` as Spark SQL.

Four statements, each over a temporary view the runner registers:

``offline``  (over ``{raw}``: the raw Iceberg table pinned at one snapshot)
    The offline event set of docs/semantics.md §6 for event times in ``[start, end)``: future records
    (``ts > _kafka_ts + clock_skew_tolerance``) out, copies with the same ``(event id, event time)`` in one
    Kafka partition collapsed to the first in offset order, late events kept (malformed records never
    reach the raw table). One column per aggregation holds the event's *contribution* (``c__<feature>``:
    the value ``laws.update`` receives, null when a filter fails or the field is null; 1 for COUNT).
``tiles``    (over ``{offline}``)
    Daily tiles per entity and day in the laws' intermediate form, for every batch-served aggregation.
``serving``  (over ``{tiles}``, for one cut-off C)
    Per entity and batch-served window: the body ``[C-W+2d, C)`` and the tail tiles ``[C-W, C-W+1d)``,
    ``[C-W+1d, C-W+2d)`` (lifetime: one body ``[-inf, C)``), merged with the laws' merge in SQL.
``serving incremental``  (over ``{state}`` and ``{tiles}``, for one cut-off C)
    The same rows from the serving state of ``C - 1 day`` plus the tiles of the days entering or leaving each
    window (MIN/MAX/LAST bodies: their own days); None for views with a float or decimal SUM/AVG.

Intermediates (columns of the tiles table, and the structured serving columns):

=======  ====================================================================
COUNT    ``bigint``
SUM      ``decimal(38, 0)`` (int64 field: exact, never overflowing, docs/semantics.md §4) or ``decimal(38, s)``
AVG      ``struct<sum: decimal(38, 0)|decimal(38, s), count: bigint>``
MIN/MAX  the field's type (timestamps as epoch-ms ``bigint``); null when empty
LAST     ``struct<ts: bigint, partition: int, offset: bigint, value: T>``; null when empty
=======  ====================================================================
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Mapping, Sequence

from skewless.core.compiler import Compiler, offline_nodes
from skewless.core.layout import LIFETIME_FIELD
from skewless.core.plan import PlanNode, Scan, TileAgg, TileAggregate, ViewPlan, WindowMerge
from skewless.core.routing import BATCH_TAIL_DAYS, is_stream_served
from skewless.core.sql import SPARK, LawSql, contribution_sql, law_sql, tile_sql
from skewless.core.timeutil import MS_PER_DAY, from_epoch_ms

COMPILER_VERSION = "spark-3"  # spark-3: int sums in decimal(38, 0) tiles and serving columns  # part of every run fingerprint: a compiler change recomputes on resume
TS = "__ts"  # event time, epoch ms
DAY = "day"  # UTC day of the event / tile (DATE)
PARTITION = "__partition"
OFFSET = "__offset"
LAST_DAY = "__last_day"  # serving state: the entity's newest tile day before the cut-off
RAW_DAY = "__day"  # the event's UTC day inside the offline statement (the raw table may have a `day` column)


def run_fingerprint(plan_fingerprint: str) -> str:
    """What the runs log records for a view's tiles: the plan's semantic fingerprint and :data:`COMPILER_VERSION`
    (resumed backfills recompute days logged with another; training reads only tiles logged with it)."""
    return f"{plan_fingerprint}:{COMPILER_VERSION}"


def contribution_column(feature: str) -> str:
    return f"c__{feature}"


def window_column(field: str) -> str:
    """Serving-table column of a layout batch field: ``w:31536000000`` -> ``w_31536000000``, ``w:life`` -> ``w_life``."""
    return field.replace(":", "_")


@dataclass(frozen=True)
class BatchWindowSpec:
    """One layout batch field (``w:{W}`` or ``w:life``) and the aggregations stored in it, in vector order."""

    field: str
    width_ms: int | None
    aggregations: tuple[TileAgg, ...]
    int_sums: frozenset[str] = frozenset()  # SUM/AVG over an int64 field: exact ints held as decimal(38, 0)

    @property
    def column(self) -> str:
        return window_column(self.field)

    @property
    def parts(self) -> tuple[str, ...]:
        return ("body",) if self.width_ms is None else ("body",) + tuple(f"tail{i}" for i in range(BATCH_TAIL_DAYS))


@dataclass(frozen=True)
class SparkBatchJob:
    """The compiled batch job of one feature view (SQL templates plus what the runner needs to know)."""

    view: str
    version: int
    fingerprint: str
    keys: tuple[tuple[str, str], ...]  # (join key, "string" | "int64")
    scan: Scan
    batch_only: bool
    aggregations: tuple[TileAgg, ...]  # every aggregation (contribution columns), declaration order
    widths: Mapping[str, int | None]  # feature -> window width (None = lifetime)
    tile_ms: Mapping[str, int]  # feature -> tile H of its window
    tile_aggregations: tuple[TileAgg, ...]  # batch-served: the daily tiles' columns
    windows: tuple[BatchWindowSpec, ...]
    offline_sql_template: str
    tiles_sql_template: str
    serving_sql_template: str
    raw_columns: Mapping[str, str]  # raw column -> feature type it must have (schema check)
    # the serving rows of C from the serving state of C - 1 day plus a few days of tiles; None when a SUM/AVG
    # is not over an int64 field (floating-point and decimal(38, s) additions are not exact in every order)
    serving_incremental_sql_template: str | None = None
    int_sums: frozenset[str] = frozenset()  # SUM/AVG over an int64 field: exact ints held as decimal(38, 0)

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.keys)

    def offline_sql(self, raw: str, start_ms: int, end_ms: int) -> str:
        """Offline events with ``start_ms <= ts < end_ms`` (whole days) from the view ``raw``."""
        return self.offline_sql_template.format(raw=raw, start_ms=start_ms, end_ms=end_ms)

    def tiles_sql(self, offline: str) -> str:
        return self.tiles_sql_template.format(offline=offline)

    def serving_sql(self, tiles: str, cutoff_ms: int) -> str:
        if cutoff_ms % MS_PER_DAY:
            raise ValueError(f"cut-off {cutoff_ms} is not at 00:00 UTC")
        return self.serving_sql_template.format(tiles=tiles, **_serving_params(self.windows, cutoff_ms))

    def serving_incremental_sql(self, state: str, tiles: str, cutoff_ms: int) -> str:
        """Serving rows of ``cutoff_ms`` from the serving state of ``cutoff_ms - 1 day`` (view ``state``) and the
        tiles of the days that entered or left a window, or feed a non-invertible window's body (view ``tiles``)."""
        if self.serving_incremental_sql_template is None:
            raise ValueError(f"view {self.view!r} has a SUM/AVG over a field that is not int64: no incremental serving")
        if cutoff_ms % MS_PER_DAY:
            raise ValueError(f"cut-off {cutoff_ms} is not at 00:00 UTC")
        return self.serving_incremental_sql_template.format(
            state=state, tiles=tiles, prev_cutoff_ms=cutoff_ms - MS_PER_DAY,
            run_day=_day_literal(cutoff_ms - MS_PER_DAY), **_serving_params(self.windows, cutoff_ms))

    def serving_min_day_ms(self, cutoff_ms: int) -> int | None:
        """First tile day the serving statement reads (None: all history, for lifetime windows)."""
        widths = [w.width_ms for w in self.windows]
        if any(w is None for w in widths):
            return None
        return cutoff_ms - max(widths)  # type: ignore[type-var]

    def explain(self, day_start_ms: int = 1704067200000) -> str:
        """The statements for a run day (golden files, ``--explain``)."""
        cutoff = day_start_ms + MS_PER_DAY
        return "\n\n".join([
            f"-- {self.view} v{self.version} ({COMPILER_VERSION}, fingerprint {self.fingerprint[:16]})",
            "-- offline event set of the run day\nCREATE OR REPLACE TEMP VIEW offline AS\n"
            + self.offline_sql("raw", day_start_ms, cutoff),
            "-- daily tiles\n" + self.tiles_sql("offline"),
            f"-- serving rows for cut-off {cutoff}\n" + self.serving_sql("tiles", cutoff),
        ] + ([] if self.serving_incremental_sql_template is None else [
            f"-- serving rows for cut-off {cutoff} from the serving state of the cut-off before\n"
            + self.serving_incremental_sql("state", "tiles", cutoff)])) + "\n"


def _serving_params(windows: Sequence[BatchWindowSpec], cutoff_ms: int) -> dict[str, str]:
    params = {"cutoff_day": _day_literal(cutoff_ms)}
    for i, w in enumerate(windows):
        if w.width_ms is None:
            continue
        start = cutoff_ms - w.width_ms
        params[f"w{i}_tail0"] = _day_literal(start)
        params[f"w{i}_tail1"] = _day_literal(start + MS_PER_DAY)
        params[f"w{i}_body"] = _day_literal(start + BATCH_TAIL_DAYS * MS_PER_DAY)
    min_day = None if any(w.width_ms is None for w in windows) else min(cutoff_ms - w.width_ms for w in windows)  # type: ignore[operator]
    params["min_day_filter"] = "" if min_day is None else f"{DAY} >= {_day_literal(min_day)} AND "
    if min_day is not None:
        params["min_day"] = _day_literal(min_day)
    return params


def _day_literal(ms: int) -> str:
    return f"DATE'{from_epoch_ms(ms).date().isoformat()}'"


# --- SQL pieces (core.sql's Spark dialect) ----------------------------------------------------------------

quote = SPARK.quote
sql_literal = SPARK.literal  # also the batch path's reference reader's (batch_jobs/pit.py)


class SparkCompiler(Compiler[SparkBatchJob]):
    """Compiles the batch part of a feature view plan (plus every aggregation's per-event contribution,
    which point-in-time retrieval needs) to Spark SQL.

    ``field_types`` maps source fields to feature types (``skewless.core.schemas``: string, int64,
    float64, decimal, timestamp, bool); the compiler needs them for timestamps and filter kinds.
    """

    engine = "spark"

    def __init__(self, field_types: Mapping[str, str]):
        self.field_types = dict(field_types)

    def select(self, view_plan: ViewPlan) -> list[PlanNode]:
        return offline_nodes(view_plan)

    def supports(self, node: PlanNode) -> bool:
        if isinstance(node, Scan):
            return node.event_id is not None and node.created_at is None
        return True

    def supports_aggregation(self, node: TileAggregate, index: int) -> bool:
        a = node.aggregations[index]
        if a.field is not None and a.field != self._event_time and a.field not in self.field_types:
            return False
        return all(w.field == self._event_time or w.field in self.field_types for w in a.where)

    def hint(self, node: PlanNode) -> str:
        if isinstance(node, Scan):
            return "the batch path compiles feature views over event sources; snapshot views are materialized from their table"
        return "declare every field the feature reads (and filters on) in the source's JSON Schema"

    def compile(self, view_plan: ViewPlan) -> SparkBatchJob:  # noqa: D102 - see Compiler.compile
        self._event_time = view_plan.scan.event_time
        return super().compile(view_plan)

    # --- emit ------------------------------------------------------------------------------------------

    def emit(self, view_plan: ViewPlan) -> SparkBatchJob:
        scan = view_plan.scan
        aggregations = _all_aggregations(view_plan)
        widths = {m.feature: m.width_ms for m in view_plan.merges}
        batch = view_plan.batch
        tile_aggs = batch.aggregate.aggregations if batch else ()
        int_sums = frozenset(a.name for a in aggregations if _law_sql(a).sums and self._field_type(a) == "int64")
        windows = _windows(tile_aggs, view_plan.merges, int_sums)
        keys = tuple((k, t) for k, t in view_plan.keys)
        batch_only = scan.topic is None
        job = SparkBatchJob(
            view=view_plan.name,
            version=view_plan.version,
            fingerprint=view_plan.semantic_fingerprint,
            keys=keys,
            scan=scan,
            batch_only=batch_only,
            aggregations=aggregations,
            widths=widths,
            tile_ms={m.feature: m.tile_ms for m in view_plan.merges},
            tile_aggregations=tile_aggs,
            windows=windows,
            offline_sql_template=self._offline_sql(scan, keys, aggregations, batch_only),
            tiles_sql_template=self._tiles_sql(keys, tile_aggs),
            serving_sql_template=self._serving_sql(keys, windows),
            serving_incremental_sql_template=self._serving_incremental_sql(keys, windows),
            raw_columns=self._raw_columns(scan, keys, aggregations, batch_only),
            int_sums=int_sums,
        )
        return job

    def _raw_columns(self, scan: Scan, keys: Sequence[tuple[str, str]], aggs: Sequence[TileAgg],
                     batch_only: bool) -> dict[str, str]:
        cols: dict[str, str] = {scan.event_time: "timestamp"}
        cols[scan.event_id] = self.field_types.get(scan.event_id, "string")  # type: ignore[index]
        for k, t in keys:
            cols[k] = t
        for a in aggs:
            for f in ([a.field] if a.field else []) + [w.field for w in a.where]:
                cols[f] = "timestamp" if f == scan.event_time else self.field_types[f]
        if not batch_only:
            cols.update({"_kafka_partition": "int32", "_offset": "int64", "_kafka_ts": "timestamp"})
        return cols

    def _contribution(self, a: TileAgg) -> str:
        return contribution_sql(SPARK, a.agg, a.field, a.where, self.field_types, self._event_time)

    def _offline_sql(self, scan: Scan, keys: Sequence[tuple[str, str]], aggs: Sequence[TileAgg],
                     batch_only: bool) -> str:
        et, eid = quote(scan.event_time), quote(scan.event_id)  # type: ignore[arg-type]
        key_cols = ", ".join(quote(k) for k, _ in keys)
        time_filter = f"{et} >= timestamp_millis({{start_ms}}L) AND {et} < timestamp_millis({{end_ms}}L)"
        # The copies of an event share its time, hence its day: the one shuffle (by day) serves the de-duplication,
        # the daily tiles' GROUP BY (keys, day) and the day-partitioned write alike. The window's partition columns
        # start with the event time: Spark sorts them in that order and compares rows by a prefix of the first
        # column, so a (nearly unique) epoch-ms first decides almost every comparison, where the day or the Kafka
        # partition first (few values) sent each one to the full row comparison (10M events: ~5 s less).
        if batch_only:
            # batch-only sources: one row per (event id, event time); differing copies: smallest JSON wins
            position = f"0 AS {PARTITION}, {eid} AS {OFFSET}"
            ranked = f"row_number() OVER (PARTITION BY {TS}, {RAW_DAY}, {eid} ORDER BY __json) AS __rank"
            extra = ", to_json(struct(*)) AS __json"  # the raw columns only: `*` of the raw table
            where = time_filter
        else:
            position, extra = f"_kafka_partition AS {PARTITION}, _offset AS {OFFSET}", ""
            ranked = f"row_number() OVER (PARTITION BY {TS}, {RAW_DAY}, _kafka_partition, {eid} ORDER BY _offset) AS __rank"
            where = (f"{time_filter}\n    AND unix_millis({et}) <= unix_millis(_kafka_ts) + "
                     f"{scan.clock_skew_tolerance_ms}L")
        contributions = ",\n  ".join(f"{self._contribution(a)} AS {quote(contribution_column(a.name))}" for a in aggs)
        return (
            f"SELECT {key_cols}, {TS}, {RAW_DAY} AS {DAY}, {PARTITION}, {OFFSET},\n  {_escape_braces(contributions)}\n"
            f"FROM (\n  SELECT *, {_escape_braces(position)},\n    {_escape_braces(ranked)}\n  FROM (\n"
            f"    SELECT *, unix_millis({et}) AS {TS}, "
            f"date_from_unix_date(CAST(floor(unix_millis({et}) / {MS_PER_DAY}) AS INT)) AS {RAW_DAY}{extra}\n"
            f"    FROM {{raw}}\n    WHERE {where}\n    DISTRIBUTE BY {RAW_DAY}\n  ) AS by_day\n) AS deduped\nWHERE __rank = 1"
        )

    def _tiles_sql(self, keys: Sequence[tuple[str, str]], aggs: Sequence[TileAgg]) -> str:
        key_cols = ", ".join(quote(k) for k, _ in keys)
        cols = [f"{self._tile_expr(a)} AS {quote(a.name)}" for a in aggs]
        # Only events some aggregation counts make a tile: an (entity, day) whose every contribution is null would
        # give every law's identity, which readers already take for a missing row (a day without events), so it is
        # not written. The filter comes after the de-duplication (the offline statement): the first copy of an
        # event decides, whatever it holds. Spark folds it away when a contribution is never null (COUNT(*)).
        counted = " OR ".join(f"{quote(contribution_column(a.name))} IS NOT NULL" for a in aggs)
        # day first: a sort-based aggregate (LAST's struct buffer) then emits rows sorted by day, so each write
        # task writes its days one file at a time (no fan-out writer holding a file per day open)
        return (f"SELECT {key_cols}, {DAY},\n  " + _escape_braces(",\n  ".join(cols))
                + f"\nFROM {{offline}}\nWHERE {_escape_braces(counted)}\nGROUP BY {DAY}, {key_cols}")

    def _serving_sql(self, keys: Sequence[tuple[str, str]], windows: Sequence[BatchWindowSpec]) -> str:
        key_cols = ", ".join(quote(k) for k, _ in keys)
        cols: list[str] = []
        for i, w in enumerate(windows):
            for a in w.aggregations:
                if w.width_ms is None:
                    ranges = {"body": "true"}
                else:
                    ranges = {
                        "body": f"{DAY} >= {{w{i}_body}}",
                        "tail0": f"{DAY} = {{w{i}_tail0}}",
                        "tail1": f"{DAY} = {{w{i}_tail1}}",
                    }
                for part, pred in ranges.items():
                    cols.append(f"{_merge_expr(a, pred)} AS {quote(serving_part_column(w, a, part))}")
        # the tile rows go to the entity's task once (DISTRIBUTE BY): an entity has few tiles per read split, so a
        # partial aggregate before the shuffle would sort the rows without reducing them
        cols.append(f"max({DAY}) AS {LAST_DAY}")  # the entity's newest tile day: the serving state keeps it
        return (f"SELECT {key_cols},\n  " + ",\n  ".join(cols)
                + f"\nFROM (\n  SELECT * FROM {{tiles}}\n  WHERE {{min_day_filter}}{DAY} < {{cutoff_day}}\n"
                f"  DISTRIBUTE BY {key_cols}\n) AS by_entity\nGROUP BY {key_cols}")


    def _tile_expr(self, a: TileAgg) -> str:
        return tile_sql(SPARK, a.agg, quote(contribution_column(a.name)), decimal=self._field_type(a) == "decimal",
                        ts=TS, partition=PARTITION, offset=OFFSET)

    def _field_type(self, a: TileAgg) -> str | None:
        if a.field is None:
            return None
        return "timestamp" if a.field == self._event_time else self.field_types.get(a.field)

    def _serving_incremental_sql(self, keys: Sequence[tuple[str, str]],
                                 windows: Sequence[BatchWindowSpec]) -> str | None:
        """Serving rows of C from the state of C' = C - 1 day (the structured serving rows of C') and the tiles of
        the run day D = C' (docs/batch.md §4). Per window and aggregation:

        - lifetime body: ``merge(state body, tile D)``;
        - bounded body, invertible law: ``state body - tile(body start of C') + tile D`` (the body of C' is
          ``[C'-W+2d, C')``, the body of C ``[C-W+2d, C)``: one day leaves, one enters);
        - bounded body, MIN/MAX/LAST: merged from its own days of tiles (the body is ``W - 2`` days);
        - tails: the two tail days' tiles, read directly.

        Entities are the state's plus those with a tile on D; without a lifetime window an entity stays only while
        it has a tile in the widest window, as in the full statement."""
        sums = [a for w in windows for a in w.aggregations if _law_sql(a).sums]
        if any(self._field_type(a) != "int64" for a in sums):
            return None
        key_cols = ", ".join(quote(k) for k, _ in keys)
        days = [f"{DAY} = {{run_day}}"]
        inner: list[str] = []
        outer: list[str] = [f"coalesce(s.{quote(k)}, t.{quote(k)}) AS {quote(k)}" for k, _ in keys]
        for i, w in enumerate(windows):
            for a in w.aggregations:
                part = functools.partial(serving_part_column, w, a)
                if w.width_ms is None:
                    inner.append(f"{_merge_expr(a, f'{DAY} = {{run_day}}')} AS {quote('d__' + part('body'))}")
                    body = _law_sql(a).pair.format(x=f"s.{quote(part('body'))}", y=f"t.{quote('d__' + part('body'))}")
                    outer.append(f"{body} AS {quote(part('body'))}")
                    continue
                for tail in ("tail0", "tail1"):
                    inner.append(f"{_merge_expr(a, f'{DAY} = {{w{i}_{tail}}}')} AS {quote('t__' + part(tail))}")
                slide = _law_sql(a).slide  # COUNT, SUM, AVG (all int64 here): the body drops its oldest day
                if slide is not None:
                    inner.append(f"{_merge_expr(a, f'{DAY} = {{run_day}}')} AS {quote('d__' + part('body'))}")
                    # the day leaving the body is the body start of C', which is C's second tail day
                    body = slide.format(x=f"s.{quote(part('body'))}", out=f"t.{quote('t__' + part('tail1'))}",
                                        inc=f"t.{quote('d__' + part('body'))}")
                else:
                    inner.append(f"{_merge_expr(a, f'{DAY} >= {{w{i}_body}}')} AS {quote('b__' + part('body'))}")
                    body = _or_empty(a, f"t.{quote('b__' + part('body'))}")
                    days.append(f"{DAY} >= {{w{i}_body}}")
                outer.append(f"{body} AS {quote(part('body'))}")
                for tail in ("tail0", "tail1"):
                    outer.append(f"{_or_empty(a, 't.' + quote('t__' + part(tail)))} AS {quote(part(tail))}")
                    days.append(f"{DAY} = {{w{i}_{tail}}}")
        inner.append(f"max(CASE WHEN {DAY} = {{run_day}} THEN {DAY} END) AS {LAST_DAY}")
        outer.append(f"greatest(s.{LAST_DAY}, t.{LAST_DAY}) AS {LAST_DAY}")
        lifetime = any(w.width_ms is None for w in windows)
        keep = "" if lifetime else f"\nWHERE greatest(s.{LAST_DAY}, t.{LAST_DAY}) >= {{min_day}}"
        on = " AND ".join(f"s.{quote(k)} = t.{quote(k)}" for k, _ in keys)
        day_set = " OR ".join(dict.fromkeys(days))  # each day condition once
        return (f"SELECT " + ",\n  ".join(outer)
                + f"\nFROM (SELECT * FROM {{state}} WHERE cutoff_ms = {{prev_cutoff_ms}}L) AS s\nFULL OUTER JOIN (\n"
                + f"  SELECT {key_cols},\n    " + ",\n    ".join(inner)
                + f"\n  FROM (\n    SELECT * FROM {{tiles}}\n    WHERE ({day_set}) AND {DAY} < {{cutoff_day}}\n"
                f"    DISTRIBUTE BY {key_cols}\n  ) AS by_entity\n  GROUP BY {key_cols}\n) AS t ON {on}{keep}")


def serving_part_column(window: BatchWindowSpec, a: TileAgg, part: str) -> str:
    return f"{window.column}__{part}__{a.name}"


def _escape_braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _law_sql(a: TileAgg) -> LawSql:
    return law_sql(SPARK, a.agg)


def _merge_expr(a: TileAgg, pred: str) -> str:
    return _law_sql(a).merge.format(p=pred, t=quote(a.name))


def _or_empty(a: TileAgg, x: str) -> str:
    """``x``, or the merge of no tiles (as the full serving statement gives it) when ``x`` is null."""
    empty = _law_sql(a).empty
    return x if empty == "NULL" else f"coalesce({x}, {empty})"


def _all_aggregations(view_plan: ViewPlan) -> tuple[TileAgg, ...]:
    found = view_plan.tile_aggregations()
    return tuple(found[m.feature] for m in view_plan.merges if m.feature in found)


def _windows(tile_aggs: Sequence[TileAgg], merges: Sequence[WindowMerge],
             int_sums: frozenset[str] = frozenset()) -> tuple[BatchWindowSpec, ...]:
    """The layout's batch fields in declaration order (same grouping as ``layout.batch_windows``)."""
    width_of = {m.feature: m.width_ms for m in merges}
    groups: dict[str, list[TileAgg]] = {}
    widths: dict[str, int | None] = {}
    for a in tile_aggs:
        width = width_of[a.name]
        if is_stream_served(width):
            continue
        field = LIFETIME_FIELD if width is None else f"w:{width}"
        groups.setdefault(field, []).append(a)
        widths[field] = width
    return tuple(BatchWindowSpec(f, widths[f], tuple(aggs), frozenset(a.name for a in aggs) & int_sums)
                 for f, aggs in groups.items())
