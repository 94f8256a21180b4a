"""The Flink compiler: a view plan's stream part as Flink SQL (docs/streaming.md).

One source's job is a chain of generated views over the raw Kafka topic, ending in ONE changelog query
(``UNION ALL`` of tile aggregates, per-partition progress and dead letters) that a Python sink applies to
Redis (:mod:`streaming_jobs.sink`). Per source:

1. ``<ns>_raw``: the topic as ``'format' = 'raw'`` BYTES plus partition/offset/timestamp metadata.
2. ``<ns>_fields``: UTF-8 check, ``IS JSON OBJECT``, and per field the JSON text of the value
   (``JSON_QUERY(... WITH ARRAY WRAPPER)``: its JSON type) and its scalar text (``JSON_VALUE``).
3. ``<ns>_parsed``: admission rules 1-2 of :mod:`skewless.core.admission` as a ``CASE`` (malformed:
   not UTF-8 / not an object / duplicate keys / integer outside int64 / each JSON-Schema keyword of the
   source's schema / event time, event id and key fields; then future vs record timestamp + skew).
4. ``<ns>_ordered``: rule 3 (late): a running ``MAX(ts) OVER (PARTITION BY partition ORDER BY proctime)``
   over the records that passed 1-2, exact because one partition is read in offset order.
5. ``<ns>_admitted``: rule 4 (duplicate): keep the first row per (partition, typed event id, ts). The
   shared copy of ``<ns>_ordered`` passes through a Java keyed operator (``DedupFunction``) that marks
   copies (``dup``) and drops an entry once the partition's max event time - lateness passed its ts.
6. ``<ns>_contrib``: one row per admitted event with its entity key(s) and, per view and tile size (output) and
   value column, its contribution as text (null when a filter fails or the field is null). A Java operator
   chained to it (``TilePreAggregate``) expands it into one tile per output and pre-aggregates per bundle; a
   keyed one (``TileAggregateOperator``, key: output, entity key, tile start) merges the partials into the
   tile rows (version = number of events applied to the tile) and releases a tile's state on event time, once
   its end + retention <= min over partitions of (M(p) - L) (docs/semantics.md §6, "State").
7. The changelog: ``GROUP BY partition`` progress and the dead letters in SQL, plus the Java operator's tile rows.

Nothing here knows a feature: it walks the plan (``TileAggregate``/``TileAgg``) and the source's JSON
Schema. Statement text keeps ``${...}`` placeholders (namespace, topic, bootstrap, group, start mode)
filled by :meth:`FlinkSourceJob.render`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from skewless.core import layout
from skewless.core.compiler import Compiler, Unsupported, UnsupportedFeatureError
from skewless.core.dsl import Agg, EventSource, FeatureView, KeyType
from skewless.core.plan import PlanNode, Scan, TileAgg, TileAggregate, ViewPlan
from skewless.core.repo import Repository, UnknownFeatureError
from skewless.core.schemas import DECIMAL_PRECISION, DEFAULT_DECIMAL_SCALE, schema_path
from skewless.core.sql import FLINK, law_sql, where_sql
from streaming_jobs.udf import FUNCTION_CLASS, FUNCTION_NAME

# A streaming job's Flink name: this prefix + the names of the views it computes, joined by "-" (view names
# never contain "-": skewless.core.validation.NAME_RE). `skewless submit` reads the views back from it.
STREAM_JOB_PREFIX = "skewless-stream-"


def stream_job_name(views: Iterable[str]) -> str:
    """The Flink job name of a streaming job computing ``views``."""
    return STREAM_JOB_PREFIX + "-".join(views)


def views_of_stream_job(name: str) -> frozenset[str]:
    """The feature views a streaming job computes, from its Flink job name (empty if not a skewless stream job)."""
    if not name.startswith(STREAM_JOB_PREFIX):
        return frozenset()
    return frozenset(v for v in name.removeprefix(STREAM_JOB_PREFIX).split("-") if v)

ENGINE = "flink"
# Views the job materialises once (Table -> DataStream -> Table, all in the JVM) so that every consumer
# shares one copy: within one query the planner would otherwise copy them per consumer. The shared copy is
# named <view><SHARED_SUFFIX> and gets a fresh processing-time attribute ``pt``.
SHARED_VIEWS = ("ordered",)
SHARED_SUFFIX = "_shared"
KIND_TILE, KIND_PROGRESS, KIND_DEAD = "T", "P", "D"
DEAD_LETTER_SUFFIX = ".dead-letters"
PROGRESS_COLUMNS = ("max_event_ms", "records", "admitted_or_dup", "malformed", "future", "late", "duplicate", "dedup_entries")
# The shared ordered view passes through the Java Deduplicate (dev.skewless.flink.DedupFunction, keyed by
# partition, state bounded by event time: streaming_jobs.job.share_view), which appends these two columns.
DEDUP_VIEW = "ordered"
DUP_COLUMN, DEDUP_ENTRIES_COLUMN = "dup", "dedup_entries"
# ... and the tile state's event-time clock: min over the subtask's partitions of M(p) - L, and the subtask
CLOCK_COLUMNS = ("low_ms", "low_src")
DEAD_COLUMNS = ("reason", "detail", "payload_b64", "record_ms")
# One row per admitted event (ts, low_ms, low_src, k<m>, a<j>_<i>) the Java tile operators expand and fold
# (dev.skewless.flink.TileAggregateOperator, state released on event time: streaming_jobs.job.add_source_job).
CONTRIB_VIEW = "contrib"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IGNORED_KEYWORDS = {"description", "title", "$comment", "examples", "default", "x-skewless-type", "x-skewless-scale",
                     "$id", "$schema"}
_PROPERTY_KEYWORDS = {"type", "minLength", "maxLength", "pattern", "enum", "minimum", "maximum", "format"}
_TOP_KEYWORDS = {"type", "required", "properties", "additionalProperties"}


def dead_letter_topic(topic: str, lane: str = "") -> str:
    """The dead-letter topic of a source topic: ``<topic>.dead-letters`` (an upgrade job's: ``.<view>-v<N>`` appended,
    so the records the source's job already dead-letters are not counted twice there)."""
    return topic + DEAD_LETTER_SUFFIX + (f".{lane_id(lane)}" if lane else "")


def lane_id(lane: str) -> str:
    """An upgrade lane (``view@vN``) as Kafka topic and consumer-group names allow it: ``view-vN``."""
    return lane.replace("@", "-")


def job_label(job: FlinkSourceJob) -> tuple[str, ...]:
    """What a job's Flink name lists: its views, or its lane (``view@vN``) for an upgrade job."""
    return (job.lane,) if job.lane else job.views


# --- SQL text helpers (core.sql's Flink dialect) -------------------------------------------------------------

q = FLINK.string  # a SQL string literal
ident = FLINK.quote
# a value type's kind for filters (the event time compares as epoch ms); fields of other types never pass
_FILTER_KIND = {"string": "string", "int64": "number", "float64": "number", "decimal": "number", "timestamp": "number",
                "bool": "bool"}
# A payload field's typed column in the generated SQL is ``f_<col>``: ``fields`` maps a field name to its col.


# --- compiled artifacts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AggColumn:
    """One aggregation of a tile group: how its STRING column in the changelog decodes (see sink)."""

    name: str
    agg: Agg
    value_type: str | None  # the field's type: string/int64/float64/decimal/bool/timestamp (None for COUNT(*))


@dataclass(frozen=True)
class TileOutput:
    """One tile hash of one view: the changelog rows ``kind='T', view, tile_ms`` carry its vector."""

    view: str
    view_version: int
    tile_ms: int
    retention_ms: int
    key_names: tuple[str, ...]
    key_types: tuple[str, ...]
    columns: tuple[AggColumn, ...]


@dataclass(frozen=True)
class FlinkSourceJob:
    """The generated SQL of one source's streaming job (for one or more views)."""

    source: str
    topic: str
    views: tuple[str, ...]
    statements: tuple[str, ...]  # CREATE TEMPORARY TABLE/VIEW, in order, with ${...} placeholders
    changelog_query: str  # SELECT producing the unified changelog
    outputs: tuple[TileOutput, ...]
    key_width: int  # number of k<i> columns
    value_width: int  # number of c<i> columns
    admission_spec: str = ""  # the spec given to skewless_admit (JSON; tests run it against admission.py)
    typed_fields: tuple[tuple[str, str], ...] = ()  # (field, value type) the function returns after the id
    allowed_lateness_ms: int = 0  # L of the source (rule 3); the Deduplicate drops entries with ts < M(p) - L
    tile_spec: str = ""  # the tile operator's spec (JSON, dev.skewless.flink.TileState): outputs and column kinds
    versions: tuple[int, ...] = ()  # the version of each view (views[i])
    lane: str = ""  # the upgrade job of the newer of a view's two declared versions: layout.upgrade_lane (else "")

    PARAMS = ("ns", "topic", "bootstrap", "group", "startup_mode", "extra_source_options")

    def render(self, **params: str) -> tuple[list[str], str]:
        """Statements and the changelog query with placeholders filled (``ns``, ``bootstrap``, ``group``,
        ``startup_mode``; ``topic`` defaults to the source's; ``extra_source_options`` e.g.
        ``, 'scan.bounded.mode' = 'latest-offset'``)."""
        values = {"topic": self.topic, "extra_source_options": "", **params}
        missing = [p for p in self.PARAMS if p not in values]
        if missing:
            raise ValueError(f"render needs {missing}")
        def sub(text: str) -> str:
            for name, value in values.items():
                text = text.replace("${" + name + "}", str(value))
            return text

        return [sub(s) for s in self.statements], sub(self.changelog_query)

    def text(self) -> str:
        """The whole job as one SQL script (golden files, ``skewless plan --flink``)."""
        head = f"-- skewless flink job: source {self.source}, topic {self.topic}, views {', '.join(self.views)}\n"
        outs = "".join(
            f"-- tiles {o.view} v{o.view_version} H={o.tile_ms} ms retention={o.retention_ms} ms: "
            f"{', '.join(f'c{i}={c.name}:{c.agg.value}' for i, c in enumerate(o.columns))}\n" for o in self.outputs)
        dedup = (f"-- ${{ns}}_{DEDUP_VIEW}{SHARED_SUFFIX} = ${{ns}}_{DEDUP_VIEW} through the Java Deduplicate (keyed by p; an entry "
                 f"is dropped once M(p) - {self.allowed_lateness_ms} ms > its ts), plus {DUP_COLUMN}, {DEDUP_ENTRIES_COLUMN}\n")
        tiles = (f"-- ${{ns}}_{CONTRIB_VIEW} through the Java tile operator (keyed by out_id, key, tile_start; a tile's state "
                 f"is released once tile end + retention <= min over partitions of M(p) - {self.allowed_lateness_ms} ms): "
                 f"{self.tile_spec}\n")
        return head + outs + dedup + tiles + "\n".join(s + ";\n" for s in self.statements) + "\n-- changelog (upsert) to the Redis sink\n" + self.changelog_query + ";\n"


# --- the compiler -------------------------------------------------------------------------------------------


class FlinkCompiler(Compiler[FlinkSourceJob]):
    """Compiles the stream part of view plans to Flink SQL. ``emit(view_plan)`` gives a one-view job;
    :meth:`compile_source` one job for several views of the same source (``run_view --view all``)."""

    engine = ENGINE

    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    # -- support hooks --
    def select(self, view_plan: ViewPlan) -> Iterable[PlanNode]:
        if view_plan.stream is None:
            return ()
        return [view_plan.scan] + [t.aggregate for t in view_plan.stream.tiles]

    def supports_aggregation(self, node: TileAggregate, index: int) -> bool:
        a = node.aggregations[index]
        view = self.repo.view(node.view)  # the versions of an upgrade share the entity; the older's source is read
        types = self._types(view.source)
        value_type = None if a.field is None else self._value_type(view.source, types, a.field)
        if a.field is not None and value_type is None:
            return False
        accepts = law_sql(FLINK, a.agg).accepts
        if accepts is not None and value_type not in accepts:
            return False
        return all(self._value_type(view.source, types, w.field) is not None for w in a.where)

    def hint(self, node: PlanNode) -> str:
        return ("the Flink compiler handles string/int64/float64/decimal/bool fields and the event time; SUM/AVG need an "
                "int64 or decimal field, MIN/MAX an int64/float64 field or the event time, LAST no decimal: change the "
                "field type or serve it from batch")

    def check(self, view_plan: ViewPlan) -> list[Unsupported]:
        out = super().check(view_plan)
        if view_plan.stream is None:
            out.append(Unsupported(ENGINE, view_plan.name, None, "a view without a stream part",
                                   "only feature views over an event source with a topic are streamed"))
            return out
        source = self.repo.view(view_plan.name, view_plan.version).source
        for problem in self._schema_problems(source):
            out.append(Unsupported(ENGINE, view_plan.name, None, problem,
                                   "use the JSON-Schema keywords the Flink compiler knows (see docs/streaming.md)"))
        return out

    def emit(self, view_plan: ViewPlan) -> FlinkSourceJob:
        return self._emit_source([view_plan])

    def compile_source(self, view_plans: Sequence[ViewPlan]) -> FlinkSourceJob:
        """One job for several views reading the same source (all checked first)."""
        problems = [p for v in view_plans for p in self.check(v)]
        if problems:
            raise UnsupportedFeatureError(problems)
        sources = {v.scan.source for v in view_plans}
        if len(sources) != 1:
            raise ValueError(f"compile_source needs views of one source, got {sorted(sources)}")
        return self._emit_source(list(view_plans))

    # -- schema --
    def _schema_doc(self, source: EventSource) -> dict[str, Any]:
        return json.loads(schema_path(source.schema, self.repo.schemas_dir).read_text(encoding="utf-8"))

    def _types(self, source: EventSource) -> dict[str, str]:
        return {f.name: f.type for f in self.repo.schema(source.schema).fields}

    def _value_type(self, source: EventSource, types: dict[str, str], name: str) -> str | None:
        t = types.get(name)
        if name == source.event_time:
            return "timestamp"
        if t in ("string", "int64", "float64", "decimal", "bool"):
            return t
        return None

    def _schema_problems(self, source: EventSource) -> list[str]:
        doc = self._schema_doc(source)
        out = [f"schema keyword {k!r}" for k in doc if k not in _TOP_KEYWORDS | _IGNORED_KEYWORDS]
        if doc.get("additionalProperties", True) is not True:
            out.append("schema additionalProperties other than true")
        for name, prop in doc.get("properties", {}).items():
            if not _IDENT.match(name):
                out.append(f"schema property name {name!r} (use identifiers)")
            for k in prop:
                if k not in _PROPERTY_KEYWORDS | _IGNORED_KEYWORDS:
                    out.append(f"schema keyword {k!r} on property {name!r}")
            if prop.get("format") not in (None, "date-time", "decimal"):
                out.append(f"schema format {prop['format']!r} on property {name!r}")
            if "enum" in prop and not all(isinstance(e, str) for e in prop["enum"]):
                out.append(f"non-string enum on property {name!r}")
        return out

    # -- SQL generation --
    def _emit_source(self, view_plans: list[ViewPlan]) -> FlinkSourceJob:
        views = [self.repo.view(v.name, v.version) for v in view_plans]
        lanes = {self.repo.progress_lane(v) for v in views}
        if len(views) > 1 and lanes != {""}:
            raise ValueError(f"the newer version of an upgrade runs in a job of its own, not with {len(views) - 1} other views")
        source: EventSource = views[0].source
        scan: Scan = view_plans[0].scan
        doc = self._schema_doc(source)
        types = self._types(source)
        props: dict[str, dict[str, Any]] = doc.get("properties", {})
        key_fields = list(dict.fromkeys([source.event_id, *([source.partition_key] if source.partition_key else []),
                                         *(k for v in views for k in v.entity.key_names)]))
        used = list(dict.fromkeys([*props, source.event_time, *key_fields,
                                   *(a.field for vp in view_plans for t in vp.stream.tiles for a in t.aggregate.aggregations if a.field),
                                   *(w.field for vp in view_plans for t in vp.stream.tiles for a in t.aggregate.aggregations for w in a.where)]))
        fields = {name: f"{i}_{name}" for i, name in enumerate(used)}
        read = {*(k for v in views for k in v.entity.key_names),
                *(a.field for vp in view_plans for t in vp.stream.tiles for a in t.aggregate.aggregations if a.field),
                *(w.field for vp in view_plans for t in vp.stream.tiles for a in t.aggregate.aggregations for w in a.where)}
        spec, typed = self._admission_spec(source, doc, {n: f for n, f in fields.items() if n in read}, key_fields, types)
        scales = {n: int(p.get("x-skewless-scale", DEFAULT_DECIMAL_SCALE)) for n, p in props.items()}
        parsed_sql, parsed_cols = self._parsed_view(scan, fields, spec, typed, scales)
        statements = [self._function_ddl(), self._source_ddl(), parsed_sql,
                      self._ordered_view(scan, parsed_cols), self._admitted_view(parsed_cols)]
        outputs = []
        for vp, view in zip(view_plans, views):
            groups = {g.tile_ms: g for g in layout.tile_groups(view)}
            for st in vp.stream.tiles:
                group = groups[st.tile_ms]
                if tuple(a.name for a in group.aggregations) != tuple(a.name for a in st.aggregate.aggregations):
                    raise AssertionError(f"plan and layout disagree on the tile vector of {view.name} H={st.tile_ms}")
                out = TileOutput(view.name, view.version, st.tile_ms, group.retention_ms, view.entity.key_names,
                                 tuple(KeyType(t).value for _, t in view.entity.join_keys),
                                 tuple(AggColumn(a.name, Agg(a.agg), self._value_type(source, types, a.field) if a.field else None)
                                       for a in st.aggregate.aggregations))
                outputs.append(out)
        key_width = max(1, *(len(o.key_names) for o in outputs))
        value_width = max(len(PROGRESS_COLUMNS), len(DEAD_COLUMNS), *(len(o.columns) for o in outputs))
        nodes = [t.aggregate for vp in view_plans for t in vp.stream.tiles]
        contrib, columns = self._contrib_view(source, outputs, nodes, fields, types)
        statements.append(contrib)
        changelog = "\nUNION ALL\n".join([self._progress_query(key_width, value_width), self._dead_query(key_width, value_width)])
        tile_spec = json.dumps({"key_width": key_width, "value_width": value_width, "outputs": [
            {"view": o.view, "tile_ms": o.tile_ms, "retention_ms": o.retention_ms, "kinds": [_kind(c) for c in o.columns],
             **cols} for o, cols in zip(outputs, columns)]}, separators=(",", ":"))
        return FlinkSourceJob(source.name, source.topic, tuple(v.name for v in views), tuple(statements), changelog,
                              tuple(outputs), key_width, value_width, spec, tuple(typed), scan.allowed_lateness_ms,
                              tile_spec, tuple(v.version for v in views), lanes.pop() if len(lanes) == 1 else "")

    def _function_ddl(self) -> str:
        return f"CREATE TEMPORARY SYSTEM FUNCTION IF NOT EXISTS {FUNCTION_NAME} AS {q(FUNCTION_CLASS)} LANGUAGE JAVA"

    def _source_ddl(self) -> str:
        return (
            "CREATE TEMPORARY TABLE `${ns}_raw` (\n"
            "  `bytes_value` BYTES,\n"
            "  `kafka_partition` INT METADATA FROM 'partition' VIRTUAL,\n"
            "  `kafka_offset` BIGINT METADATA FROM 'offset' VIRTUAL,\n"
            "  `kafka_ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,\n"
            "  `pt` AS PROCTIME()\n"
            ") WITH (\n"
            "  'connector' = 'kafka', 'topic' = '${topic}', 'properties.bootstrap.servers' = '${bootstrap}',\n"
            "  'properties.group.id' = '${group}', 'scan.startup.mode' = '${startup_mode}', 'format' = 'raw'${extra_source_options}\n"
            ")"
        )

    def _admission_spec(self, source: EventSource, doc: dict[str, Any], fields: dict[str, str],
                        key_fields: list[str], types: dict[str, str]) -> tuple[str, list[tuple[str, str]]]:
        """The spec of ``skewless_admit`` (JSON) and the typed fields it returns after the event time and id."""
        props = {name: {k: v for k, v in prop.items() if k in _PROPERTY_KEYWORDS}
                 for name, prop in doc.get("properties", {}).items()}
        out = [(name, vt) for name in fields
               if name != source.event_time and (vt := self._value_type(source, types, name)) is not None]
        spec = {"required": list(doc.get("required", ())), "properties": props, "event_time": source.event_time,
                "ids": [[name, "event id" if name == source.event_id else "key"] for name in key_fields],
                "out": [list(o) for o in out]}
        return json.dumps(spec, separators=(",", ":"), ensure_ascii=False), out

    def _parsed_view(self, scan: Scan, fields: dict[str, str], spec: str, out: list[tuple[str, str]],
                     scales: dict[str, int]) -> tuple[str, list[str]]:
        """Rules 1-2: the Java function classifies the record once (behind an UNNEST barrier, so the planner
        does not copy the call into each use), then the future check against the record timestamp."""
        cols = ["p", "o", "record_ms", "pt", "bytes_value", "CAST(r[2] AS BIGINT) AS ts", "r[3] AS idk"]
        for i, (name, vt) in enumerate(out):
            cols.append(f"{_cast(f'r[{4 + i}]', vt, scales.get(name, DEFAULT_DECIMAL_SCALE))} AS f_{fields[name]}")
        skew = scan.clock_skew_tolerance_ms
        cols.append("CASE WHEN r[1] IS NOT NULL THEN CONCAT('malformed|', r[1])\n"
                    f"    WHEN CAST(r[2] AS BIGINT) > record_ms + {skew} THEN {q(f'future|event time > record timestamp + {skew} ms')} END AS reason1")
        names = [c.rsplit(" AS ", 1)[-1] for c in cols if c != "pt"]
        return ("CREATE TEMPORARY VIEW `${ns}_parsed` AS\nSELECT\n  " + ",\n  ".join(cols) + "\nFROM (\n"
                "  SELECT kafka_partition AS p, kafka_offset AS o,\n"
                "    EXTRACT(EPOCH FROM kafka_ts) * 1000 + EXTRACT(MILLISECOND FROM kafka_ts) AS record_ms, pt, bytes_value, r\n"
                "  FROM `${ns}_raw`\n"
                f"  CROSS JOIN UNNEST(ARRAY[ROW({FUNCTION_NAME}(bytes_value, {q(spec)}))]) AS a(r))"), names

    def _ordered_view(self, scan: Scan, cols: list[str]) -> str:
        return (
            "CREATE TEMPORARY VIEW `${ns}_ordered` AS\n"
            f"SELECT {', '.join(c for c in cols if c not in ('reason1', 'bytes_value'))},\n"
            f"  CASE WHEN reason1 IS NOT NULL OR ts < m - {scan.allowed_lateness_ms} THEN bytes_value END AS bytes_value,\n"
            f"  COALESCE(reason1, CASE WHEN ts < m - {scan.allowed_lateness_ms} THEN "
            f"'late|event time < partition max - {scan.allowed_lateness_ms} ms' END) AS reason\n"
            "FROM (\n"
            "  SELECT *, MAX(CASE WHEN reason1 IS NULL THEN ts END) OVER (\n"
            "    PARTITION BY p ORDER BY pt ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS m\n"
            "  FROM `${ns}_parsed`)"
        )

    def _admitted_view(self, cols: list[str]) -> str:
        keep = [c for c in cols if c not in ("reason1", "bytes_value", "record_ms")] + list(CLOCK_COLUMNS)
        return (
            "CREATE TEMPORARY VIEW `${ns}_admitted` AS\n"
            f"SELECT {', '.join(keep)}\n"
            f"FROM `${{ns}}_ordered{SHARED_SUFFIX}` WHERE reason IS NULL AND NOT {DUP_COLUMN}"
        )

    def _contrib_view(self, source: EventSource, outputs: list[TileOutput], nodes: list[TileAggregate],
                      fields: dict[str, str], types: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
        """ONE row per admitted event (so the keep-first Deduplicate and its exchange run once whatever the number
        of tile sizes and views): ``ts``, the tile clock, the distinct entity-key texts (``k<m>``) and per output and
        value column the event's contribution as text (``a<j>_<i>``); the Java tile pre-aggregation expands it
        into one tile per output (dev.skewless.flink.TilePreAggregate). Also each output's columns in the row
        (``key_cols``, ``arg_col``) for the tile spec."""
        key_exprs: list[str] = []
        layout_: list[dict[str, Any]] = []
        for o in outputs:
            cols = []
            for k in o.key_names:
                expr = f"CAST(f_{fields[k]} AS STRING)"
                if expr not in key_exprs:
                    key_exprs.append(expr)
                cols.append(1 + len(CLOCK_COLUMNS) + key_exprs.index(expr))
            layout_.append({"key_cols": cols})
        args, at = [], 1 + len(CLOCK_COLUMNS) + len(key_exprs)
        for j, (o, node, lay) in enumerate(zip(outputs, nodes, layout_)):
            lay["arg_col"] = at
            for i in range(len(o.columns)):
                args.append(f"{self._contribution(source, node.aggregations[i], fields, types)} AS a{j}_{i}")
                at += 1
        select = ["ts", *CLOCK_COLUMNS, *(f"{e} AS k{m}" for m, e in enumerate(key_exprs)), *args]
        return (f"CREATE TEMPORARY VIEW `${{ns}}_{CONTRIB_VIEW}` AS\nSELECT " + ",\n  ".join(select)
                + f"\nFROM `${{ns}}_admitted`"), layout_

    def _contribution(self, source: EventSource, a: TileAgg, fields: dict[str, str], types: dict[str, str]) -> str:
        """One event's contribution to an aggregation as text, null when it does not count (a filter fails, the
        field is null): COUNT '1', SUM/AVG/MIN/MAX the value, LAST the (ts, partition, offset) prefix + value."""
        conds = [where_sql(FLINK, w, self._column(source, fields, w.field),
                           _FILTER_KIND.get(self._value_type(source, types, w.field) or "", "none")) for w in a.where]
        value = self._column(source, fields, a.field) if a.field else None
        if value is not None:
            conds.append(f"{value} IS NOT NULL")
        agg = Agg(a.agg)
        if agg is Agg.COUNT:
            text = "'1'"
        elif agg is Agg.LAST:
            text = (f"CONCAT(LPAD(CAST(ts AS STRING), 16, '0'), LPAD(CAST(p AS STRING), 10, '0'), "
                    f"LPAD(CAST(o AS STRING), 19, '0'), CAST({value} AS STRING))")
        else:
            text = f"CAST({value} AS STRING)"
        return f"CASE WHEN {' AND '.join(conds)} THEN {text} END" if conds else text

    def _column(self, source: EventSource, fields: dict[str, str], name: str) -> str:
        return "ts" if name == source.event_time else f"f_{fields[name]}"

    def _progress_query(self, key_width: int, value_width: int) -> str:
        keys = ["CAST(p AS STRING) AS k0"] + [f"'' AS k{i}" for i in range(1, key_width)]
        vals = [
            "CAST(MAX(CASE WHEN reason IS NULL THEN ts END) AS STRING) AS c0",
            "CAST(COUNT(*) AS STRING) AS c1",
            "CAST(COUNT(*) FILTER (WHERE reason IS NULL) AS STRING) AS c2",
            "CAST(COUNT(*) FILTER (WHERE reason LIKE 'malformed|%') AS STRING) AS c3",
            "CAST(COUNT(*) FILTER (WHERE reason LIKE 'future|%') AS STRING) AS c4",
            "CAST(COUNT(*) FILTER (WHERE reason LIKE 'late|%') AS STRING) AS c5",
            f"CAST(COUNT(*) FILTER (WHERE {DUP_COLUMN}) AS STRING) AS c6",
            f"CAST(LAST_VALUE({DEDUP_ENTRIES_COLUMN}) AS STRING) AS c7",
        ] + [f"CAST(NULL AS STRING) AS c{i}" for i in range(len(PROGRESS_COLUMNS), value_width)]
        return (f"SELECT '{KIND_PROGRESS}' AS kind, '' AS view_name, CAST(0 AS BIGINT) AS tile_ms,\n  "
                + ", ".join(keys) + ",\n  CAST(0 AS BIGINT) AS tile_start, MAX(o) AS version,\n  " + ",\n  ".join(vals)
                + f"\nFROM `${{ns}}_ordered{SHARED_SUFFIX}`\nGROUP BY p")

    def _dead_query(self, key_width: int, value_width: int) -> str:
        keys = ["CAST(p AS STRING) AS k0"] + [f"'' AS k{i}" for i in range(1, key_width)]
        vals = ["SPLIT_INDEX(reason, '|', 0) AS c0", "SUBSTRING(reason, POSITION('|' IN reason) + 1) AS c1", "TO_BASE64(bytes_value) AS c2", "CAST(record_ms AS STRING) AS c3"]
        vals += [f"CAST(NULL AS STRING) AS c{i}" for i in range(len(DEAD_COLUMNS), value_width)]
        return (f"SELECT '{KIND_DEAD}' AS kind, '' AS view_name, CAST(0 AS BIGINT) AS tile_ms,\n  "
                + ", ".join(keys) + ",\n  o AS tile_start, CAST(0 AS BIGINT) AS version,\n  " + ",\n  ".join(vals)
                + f"\nFROM `${{ns}}_ordered{SHARED_SUFFIX}`\nWHERE reason IS NOT NULL")


# --- expression builders ---------------------------------------------------------------------------------------


def _kind(c: AggColumn) -> str:
    """How the tile operator folds a column (dev.skewless.flink.TileState.Kind)."""
    if c.agg in (Agg.SUM, Agg.AVG):
        return f"{c.agg.name}_{'DEC' if c.value_type == 'decimal' else 'INT'}"
    if c.agg in (Agg.MIN, Agg.MAX):
        return f"{c.agg.name}_{'DOUBLE' if c.value_type == 'float64' else 'LONG'}"
    return c.agg.name


def _cast(text: str, vt: str, scale: int = DEFAULT_DECIMAL_SCALE) -> str:
    """A typed field from the Java function's text (NULL when the value is not of the field's kind); decimals as
    ``DECIMAL(38, s)``, the archive's column type (``x-skewless-scale``), so their sums equal the batch's."""
    return {"string": text, "int64": f"CAST({text} AS BIGINT)", "float64": f"CAST({text} AS DOUBLE)",
            "decimal": f"CAST({text} AS DECIMAL({DECIMAL_PRECISION}, {scale}))",
            "bool": f"CAST({text} AS BOOLEAN)"}[vt]



def compile_repository(repo: Repository, view_names: Sequence[str] | None = None) -> list[FlinkSourceJob]:
    """One job per event source for the named (default: all streamable) feature views. A name is ``view`` or
    ``view@vN``; the newer of a view's two declared versions (an upgrade) gets a job of its own (its lane), and
    ``all`` leaves it out (it is submitted by name: docs/streaming.md, "Changing a definition while it serves")."""
    from skewless.core.plan import build_plan

    plan = build_plan(repo)
    streamable = [v for v in plan.views if v.stream is not None]
    if view_names is None:
        chosen = [v for v in streamable if not repo.progress_lane(repo.view(v.name, v.version))]
    else:
        wanted: dict[tuple[str, int], str] = {}
        for name in view_names:
            try:
                view = repo.view_named(name)
            except UnknownFeatureError as exc:
                raise ValueError(str(exc)) from None
            wanted[(view.name, view.version)] = name
        chosen = [v for v in streamable if (v.name, v.version) in wanted]
        unknown = set(wanted) - {(v.name, v.version) for v in chosen}
        if unknown:
            raise ValueError(f"not streamable views {sorted(wanted[u] for u in unknown)}; streamable: "
                             f"{[v.name for v in streamable]}")
    compiler = FlinkCompiler(repo)
    by_source: dict[tuple[str, str], list[ViewPlan]] = {}
    for v in chosen:
        by_source.setdefault((v.scan.source, repo.progress_lane(repo.view(v.name, v.version))), []).append(v)
    return [compiler.compile_source(vs) for _, vs in sorted(by_source.items())]
