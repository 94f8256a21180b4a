"""SQL text for every engine from one table: per-dialect quoting, literals and constructors, the contract's
filters and contributions, and per-law fragments (docs/architecture.md, "One SQL layer").

Compilers (``streaming_jobs/flink_compiler.py``, ``skewless/offline/spark_compiler.py``, the training engines)
build statements from these pieces and keep only what is their own (Flink's changelog and state, Spark's tiles
and serving statements, DuckDB's prefix sums and windowed MIN/MAX). A law's SQL is one :class:`LawSql` per
dialect in :data:`LAWS`; a dialect's spelling of a literal, a struct or a running aggregate is one
:class:`Dialect`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Mapping, Sequence

from skewless.core.dsl import Agg, BinOp, Const, DaysSince, Op, Ref, Where
from skewless.core.laws import value_kind
from skewless.core.timeutil import MS_PER_DAY

# --- dialects ----------------------------------------------------------------------------------------------

INT_SUM_TYPE = "DECIMAL(38, 0)"  # the partial sums (tiles, bodies, running sums) of int64 values, on every engine


def int64_range(total: str) -> str:
    """A condition: the exact int sum ``total`` fits int64 (else the window's value is null, incomplete)."""
    return f"(({total}) BETWEEN -9223372036854775808 AND 9223372036854775807)"

_COMPARISON = {Op.EQ: "=", Op.NE: "<>", Op.LT: "<", Op.LE: "<=", Op.GT: ">", Op.GE: ">="}
# a field type's kind for filters (laws.where_passes: values of another kind never pass); timestamps: field_where_sql
COLUMN_KIND = {"string": "string", "int64": "number", "float64": "number", "decimal": "number", "bool": "bool"}


@dataclass(frozen=True)
class Dialect:
    """How one engine spells identifiers, literals, structs and the functions the compilers need."""

    name: str
    ident_quote: str  # identifiers: quoted with it, the character itself doubled
    backslash_escapes: bool  # string literals: ``\\`` and ``\\'`` (Spark) or a doubled ``'`` (standard SQL)
    true: str
    false: str
    int_literal: str  # {v}: the int's digits
    float_literal: str  # {text}: repr(value) as a string literal, {repr}: repr(value)
    decimal_literal: str  # {v}: the Decimal's text
    epoch_ms: str = ""  # {c}: a timestamp column as epoch ms (floored)
    iso_ms: str = ""  # {c}: a timestamp column as the contract's ISO text (filters compare it so)
    struct_open: str = ""  # a struct of named fields: open, one item per field ({k} name, {qk} quoted, {v})
    struct_item: str = ""
    field_of: str = "{x}.{k}"  # a struct's field
    # int sums accumulate in 38 digits, never overflowing (docs/semantics.md §4): the engine's sum of the field's
    # int64 values is already wider (DuckDB: HUGEINT), or the values are widened first (Spark: its ANSI bigint sum
    # fails on overflow); tiles hold DECIMAL(38, 0) on every engine (exact_tile_sums: cast to it)
    widen_int_sums: bool = False
    exact_tile_sums: bool = False
    int32: str = "{x}"  # a Kafka partition number as the intermediates' int
    floordiv: str = ""  # {a} // {b} rounded towards minus infinity ({b}: a positive int)
    running: Mapping[str, str] = field(default_factory=dict)  # running aggregate kind -> function over {x}

    def quote(self, name: str) -> str:
        q = self.ident_quote
        return q + name.replace(q, q + q) + q

    def string(self, value: str) -> str:
        if self.backslash_escapes:
            return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return "'" + value.replace("'", "''") + "'"

    def literal(self, value: Any) -> str:
        if isinstance(value, bool):
            return self.true if value else self.false
        if isinstance(value, int):
            return self.int_literal.format(v=value)
        if isinstance(value, float):
            return self.float_literal.format(text=self.string(repr(value)), repr=repr(value))
        if isinstance(value, Decimal):
            return self.decimal_literal.format(v=value)
        if isinstance(value, str):
            return self.string(value)
        raise TypeError(f"no SQL literal for {value!r}")

    def struct(self, fields: Sequence[tuple[str, str]]) -> str:
        """A struct value of ``(name, expression)`` pairs."""
        items = ", ".join(self.struct_item.format(k=k, qk=self.quote(k), v=v) for k, v in fields)
        return f"{self.struct_open}({items})"

    def field(self, expr: str, name: str) -> str:
        return self.field_of.format(x=expr, k=name)

    def sum_input(self, c: str, decimal: bool) -> str:
        """The contributions ``c`` of a SUM/AVG as the engine sums them: int64 values widened where it must."""
        return f"CAST({c} AS {INT_SUM_TYPE})" if self.widen_int_sums and not decimal else c

    def exact_sum(self, total: str, decimal: bool) -> str:
        """A window sum's value: decimal(38, s) sums stay exact (more digits fail the query); an int sum is the
        int64, or null when it does not fit (docs/semantics.md §4: status incomplete, see :func:`int64_range`)."""
        return f"({total})" if decimal else f"(CASE WHEN {int64_range(total)} THEN CAST(({total}) AS BIGINT) END)"

    def keys_equal(self, left: str, right: str, keys: Sequence[str]) -> str:
        return " AND ".join(f"{left}.{self.quote(k)} = {right}.{self.quote(k)}" for k in keys)


SPARK = Dialect("spark", "`", True, "true", "false", "{v}L", "CAST({text} AS DOUBLE)", "{v}BD",
                epoch_ms="unix_millis({c})", iso_ms="date_format({c}, \"yyyy-MM-dd'T'HH:mm:ss.SSS'Z'\")",
                struct_open="named_struct", struct_item="'{k}', {v}", floordiv="(({a}) - pmod(({a}), {b}L)) DIV {b}L",
                widen_int_sums=True,
                running={"sum": "sum({x})", "min": "min({x})", "max": "max({x})", "last": "max({x})"})
DUCKDB = Dialect("duckdb", '"', False, "true", "false", "CAST({v} AS BIGINT)", "CAST({text} AS DOUBLE)", "{v}",
                 epoch_ms="__epoch_ms({c})", iso_ms="strftime({c}, '%Y-%m-%dT%H:%M:%S.%gZ')",
                 struct_open="struct_pack", struct_item="{qk} := {v}", field_of="struct_extract({x}, '{k}')",
                 exact_tile_sums=True, int32="CAST({x} AS INTEGER)", floordiv="__floordiv({a}, {b})",
                 # a day's LAST has a greater (ts, ...) than every earlier day's (its ts lies in that day), so the
                 # running greatest is the latest non-null tile: cheaper than a running max of structs
                 running={"sum": "sum({x})", "min": "min({x})", "max": "max({x})",
                          "last": "last_value({x} IGNORE NULLS)"})
FLINK = Dialect("flink", "`", False, "TRUE", "FALSE", "{v}", "{repr}", "{v}", widen_int_sums=True)


# --- the contract's filters and contributions (docs/semantics.md §4) --------------------------------------


def where_sql(d: Dialect, where: Where, column: str, kind: str) -> str:
    """``laws.where_passes`` as SQL over ``column`` of kind ``kind`` (string/number/bool): a null never passes,
    values of another kind never pass, booleans have no order."""
    op = Op(where.op)
    values = list(where.value) if op is Op.IN else [where.value]
    ok = [v for v in values if v is not None and value_kind(v) == kind]
    if not ok:
        return d.false
    if op is Op.IN:
        return f"({column} IN ({', '.join(d.literal(v) for v in ok)}))"
    if kind == "bool" and op not in (Op.EQ, Op.NE):
        return d.false
    return f"({column} {_COMPARISON[op]} {d.literal(ok[0])})"


def field_value_sql(d: Dialect, name: str, field_type: str | None, event_time: str, ts: str = "__ts") -> str:
    """A field's value as the contract sees it: the event time as ``ts`` (epoch ms), timestamps as epoch ms."""
    if name == event_time:
        return ts
    if field_type == "timestamp":
        return d.epoch_ms.format(c=d.quote(name))
    return d.quote(name)


def field_where_sql(d: Dialect, where: Where, field_type: str | None, event_time: str, ts: str = "__ts") -> str:
    """A filter on a source field: the event time compares as epoch ms (a number), other timestamps as their
    ISO text, fields of unknown type as strings."""
    if where.field == event_time:
        return where_sql(d, where, ts, "number")
    if field_type == "timestamp":
        return where_sql(d, where, d.iso_ms.format(c=d.quote(where.field)), "string")
    return where_sql(d, where, d.quote(where.field), COLUMN_KIND.get(field_type or "string", "other"))


def contribution_sql(d: Dialect, agg: Agg, field_name: str | None, wheres: Sequence[Where],
                     field_types: Mapping[str, str], event_time: str) -> str:
    """The value an event feeds to ``laws.update`` (``laws.contribution``): null when a filter fails or the field
    is null; 1 for COUNT (of the events whose field, if it names one, is not null)."""
    conds = [" AND ".join(field_where_sql(d, w, field_types.get(w.field), event_time) for w in wheres)] if wheres else []
    value = "1"  # COUNT(*)
    if field_name is not None:
        value = field_value_sql(d, field_name, field_types.get(field_name), event_time)
        if Agg(agg) is Agg.COUNT:
            conds.append(f"{value} IS NOT NULL")
            value = "1"
    return f"CASE WHEN {' AND '.join(conds)} THEN {value} END" if conds else value


def derived_sql(d: Dialect, expr: Any, values: Mapping[str, str], t: str) -> str:
    """docs/semantics.md §8 in SQL over the features' SQL ``values`` at the instant ``t`` (epoch ms): null in ->
    null; '/' in float64 with x/0 = null; DaysSince floors whole days."""
    if isinstance(expr, Ref):
        return f"({values[expr.feature]})"
    if isinstance(expr, Const):
        return d.literal(expr.value)
    if isinstance(expr, DaysSince):
        return d.floordiv.format(a=f"{t} - {derived_sql(d, expr.ts, values, t)}", b=MS_PER_DAY)
    if isinstance(expr, BinOp):
        left, right = derived_sql(d, expr.left, values, t), derived_sql(d, expr.right, values, t)
        if expr.op == "/":
            return f"(CASE WHEN {right} = 0 THEN NULL ELSE CAST({left} AS DOUBLE) / CAST({right} AS DOUBLE) END)"
        return f"({left} {expr.op} {right})"
    raise TypeError(f"not an expression: {expr!r}")


# --- per-law fragments ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LawSql:
    """One law's SQL in one dialect (a template each; ``""``/``()``: the dialect's compilers do not use it).

    Placeholders: ``{c}`` an event's contribution column, ``{total}`` the exact sum of ``{c}``, ``{ts}``,
    ``{partition}``, ``{offset}`` the event's order key, ``{cond}`` a condition on the event; ``{t}`` a tile
    column, ``{p}`` a condition on the tile; ``{x}``, ``{y}``, ``{out}``, ``{inc}`` intermediates; ``{s}``, ``{n}``
    the merged sum and count parts, ``{exact}`` the sum's exact value. Flink's ``tile`` is the changelog column
    (``{value}`` the field, ``{flt}`` its FILTER clause, ``{when}``/``{end}`` the same condition around a costly
    argument).
    """

    tile: str  # the events of one (entity, tile) -> the intermediate
    fold: tuple[tuple[str, str], ...] = ()  # the intermediate's parts over the events passing {cond}: (prefix, SQL)
    running: tuple[tuple[str, str, str], ...] = ()  # running aggregates of daily tiles: (prefix, kind, source)
    merge: str = ""  # the tiles {t} passing {p} -> one intermediate
    empty: str = ""  # the merge of no tiles
    pair: str = ""  # two intermediates {x}, {y} (either may be null) -> one
    value: str = ""  # the feature value of the merged parts
    slide: str | None = None  # invertible laws: {x} without the tile {out}, with the tile {inc}
    accepts: frozenset[str] | None = None  # field types the dialect compiles it for (None: every type)
    sums: bool = False  # its intermediate holds a sum of the field (float/decimal: not exact in every order)

    @property
    def invertible(self) -> bool:
        """Whether tiles merge by subtraction (window = prefix at the end - prefix at the start)."""
        return self.slide is not None


def _offline_laws(d: Dialect) -> dict[Agg, LawSql]:
    """The batch and training dialects' laws: one entry per law, spelled with the dialect's primitives."""
    zero = d.literal(0)
    last = d.struct([("ts", "{ts}"), ("partition", d.int32.format(x="{partition}")), ("offset", "{offset}"),
                     ("value", "{c}")])
    sum_merge = "coalesce(sum(CASE WHEN {p} THEN {t} END), 0)"
    sum_pair = f"coalesce({{x}}, {zero}) + coalesce({{y}}, {zero})"
    sum_slide = f"coalesce({{x}}, {zero}) - coalesce({{out}}, {zero}) + coalesce({{inc}}, {zero})"

    def parts(expr: str, k: str) -> str:
        return d.field(expr, k)

    def counted(fn: str) -> str:
        return f"{fn}(CASE WHEN {{cond}} THEN {{c}} END)"

    return {
        Agg.COUNT: LawSql("count({c})", (("h__", counted("count")),), (("p__", "sum", "{t}"),), sum_merge, zero,
                          sum_pair, "CAST({s} AS BIGINT)", sum_slide),
        Agg.SUM: LawSql("{total}", (("h__", counted("sum")),), (("p__", "sum", "{t}"),), sum_merge, zero, sum_pair,
                        "{exact}", sum_slide, sums=True),
        Agg.AVG: LawSql(
            d.struct([("sum", "{total}"), ("count", "count({c})")]),
            (("hs__", counted("sum")), ("hn__", counted("count"))),
            (("ps__", "sum", parts("{t}", "sum")), ("pn__", "sum", parts("{t}", "count"))),
            d.struct([("sum", f"coalesce(sum(CASE WHEN {{p}} THEN {parts('{t}', 'sum')} END), 0)"),
                      ("count", f"coalesce(sum(CASE WHEN {{p}} THEN {parts('{t}', 'count')} END), {zero})")]),
            d.struct([("sum", zero), ("count", zero)]),
            d.struct([(k, f"coalesce({parts('{x}', k)}, {zero}) + coalesce({parts('{y}', k)}, {zero})")
                      for k in ("sum", "count")]),
            "CASE WHEN ({n}) = 0 THEN NULL ELSE CAST({exact} AS DOUBLE) / CAST(({n}) AS DOUBLE) END",
            d.struct([(k, f"coalesce({parts('{x}', k)}, {zero}) - coalesce({parts('{out}', k)}, {zero}) + "
                          f"coalesce({parts('{inc}', k)}, {zero})") for k in ("sum", "count")]), sums=True),
        Agg.MIN: LawSql("min({c})", (("h__", counted("min")),), (("p__", "min", "{t}"),),
                        "min(CASE WHEN {p} THEN {t} END)", "NULL", "least({x}, {y})", "{x}"),  # skip nulls
        Agg.MAX: LawSql("max({c})", (("h__", counted("max")),), (("p__", "max", "{t}"),),
                        "max(CASE WHEN {p} THEN {t} END)", "NULL", "greatest({x}, {y})", "{x}"),
        # LAST: the greatest (ts, partition, offset) struct
        Agg.LAST: LawSql(f"max(CASE WHEN {{c}} IS NOT NULL THEN {last} END)",
                         (("h__", f"max(CASE WHEN {{cond}} AND {{c}} IS NOT NULL THEN {last} END)"),),
                         (("p__", "last", "{t}"),), "max(CASE WHEN {p} THEN {t} END)", "NULL", "greatest({x}, {y})",
                         "({x}).value"),
    }


# {summand}: the field as Flink sums it (Dialect.sum_input: int64 widened to DECIMAL(38, 0), decimals as they are)
_FLINK_SUM = "CAST(SUM({when}{summand}{end}){flt} AS STRING)"
_FLINK_NUMBERS = frozenset({"int64", "float64", "timestamp"})
_FLINK_SUMMED = frozenset({"int64", "decimal"})
LAWS: dict[str, dict[Agg, LawSql]] = {
    SPARK.name: _offline_laws(SPARK),
    DUCKDB.name: _offline_laws(DUCKDB),
    # the changelog's STRING columns (streaming_jobs/sink.py decodes them)
    FLINK.name: {
        Agg.COUNT: LawSql("CAST(COUNT(*){flt} AS STRING)"),
        Agg.SUM: LawSql(_FLINK_SUM, accepts=_FLINK_SUMMED),
        Agg.AVG: LawSql(f"CONCAT(COALESCE({_FLINK_SUM}, '0'), ',', CAST(COUNT(*){{flt}} AS STRING))",
                        accepts=_FLINK_SUMMED),
        Agg.MIN: LawSql("CAST(MIN({value}){flt} AS STRING)", accepts=_FLINK_NUMBERS),
        Agg.MAX: LawSql("CAST(MAX({value}){flt} AS STRING)", accepts=_FLINK_NUMBERS),
        # an order-preserving (ts, partition, offset) prefix, then the value's text
        Agg.LAST: LawSql("MAX({when}CONCAT(LPAD(CAST(ts AS STRING), 16, '0'), LPAD(CAST(p AS STRING), 10, '0'), "
                         "LPAD(CAST(o AS STRING), 19, '0'), CAST({value} AS STRING)){end}){flt}",
                         accepts=frozenset({"string", "int64", "float64", "bool", "timestamp"})),
    },
}


def law_sql(d: Dialect, agg: Agg) -> LawSql:
    return LAWS[d.name][Agg(agg)]


def tile_sql(d: Dialect, agg: Agg, c: str, *, decimal: bool = False, ts: str = "__ts",
             partition: str = "__partition", offset: str = "__offset") -> str:
    """The intermediate of the contributions in column ``c`` of one (entity, tile) group (``decimal``: a SUM/AVG
    over a decimal field; else int sums are exact DECIMAL(38, 0))."""
    total = f"coalesce(sum({d.sum_input(c, decimal)}), 0)"
    if d.exact_tile_sums:
        total = f"({total})" if decimal else f"CAST({total} AS {INT_SUM_TYPE})"
    return law_sql(d, agg).tile.format(c=c, total=total, ts=ts, partition=partition, offset=offset)


def fold_sql(d: Dialect, agg: Agg, c: str, cond: str, *, ts: str, partition: str, offset: str,
             decimal: bool = False) -> list[tuple[str, str]]:
    """The intermediate's parts over the events (contributions ``c``) passing ``cond``: (column prefix, SQL)."""
    law = law_sql(d, agg)
    c = d.sum_input(c, decimal) if law.sums else c
    return [(prefix, sql.format(c=c, cond=cond, ts=ts, partition=partition, offset=offset)) for prefix, sql in law.fold]


def invertible_aggs() -> tuple[Agg, ...]:
    """The laws whose tiles merge by subtraction (the same in every offline dialect)."""
    return tuple(a for a in Agg if law_sql(SPARK, a).invertible)
