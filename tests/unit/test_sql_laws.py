"""Each law's SQL across engines (skewless/core/sql.py), one parametrised case per law: the fragment every
dialect compiles it to, and the DuckDB fragments executed for real against the law itself (core/laws.py).

Spark and Flink run their fragments in the integration tests (test_batch, test_training, test_streaming,
test_parity); here their text is pinned per law, so a change of a law's SQL is a reviewed change of this table.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from skewless.core import laws
from skewless.core.dsl import Agg, Const, DaysSince, Ref, BinOp, Where
from skewless.core.sql import (DUCKDB, FLINK, LAWS, SPARK, Dialect, contribution_sql, derived_sql, fold_sql, law_sql,
                               tile_sql, where_sql)

duckdb = pytest.importorskip("duckdb")

# (key, ts, partition, offset, contribution): two entities, ties on ts broken by (partition, offset), nulls
EVENTS = [
    ("a", 1_000, 0, 5, 7), ("a", 1_000, 1, 2, -3), ("a", 2_000, 0, 9, None), ("a", 3_000, 0, 11, 12),
    ("a", 3_000, 0, 10, 40), ("b", 1_500, 2, 1, None), ("b", 2_500, 1, 4, 5),
]
TILE = {"a": [(0, 2), (2, 5)], "b": [(0, 2)]}  # event index ranges per (entity) tile: two tiles of a, one of b
# the same with int64 extremes (issue 19 item 7): a's first tile sums to 2**64 - 2, a's window to 2**63 + 38 (no
# value: docs/semantics.md §4), a's second tile and b's window fit int64
BIG = 2**63 - 1
EVENTS_BEYOND_INT64 = [
    ("a", 1_000, 0, 5, BIG), ("a", 1_000, 1, 2, BIG), ("a", 2_000, 0, 9, None), ("a", 3_000, 0, 11, -BIG - 1),
    ("a", 3_000, 0, 10, 40), ("b", 1_500, 2, 1, None), ("b", 2_500, 1, 4, BIG),
]

# the tile fragment each dialect compiles a law to, for the contribution column `c` (Flink: field `v`, no filter)
TILE_SQL = {
    Agg.COUNT: ("count(`c`)", 'count("c")', "CAST(COUNT(*) AS STRING)"),
    Agg.SUM: ("coalesce(sum(CAST(`c` AS DECIMAL(38, 0))), 0)", 'CAST(coalesce(sum("c"), 0) AS DECIMAL(38, 0))',
              "CAST(SUM(CAST(v AS DECIMAL(38, 0))) AS STRING)"),
    Agg.AVG: ("named_struct('sum', coalesce(sum(CAST(`c` AS DECIMAL(38, 0))), 0), 'count', count(`c`))",
              'struct_pack("sum" := CAST(coalesce(sum("c"), 0) AS DECIMAL(38, 0)), "count" := count("c"))',
              "CONCAT(COALESCE(CAST(SUM(CAST(v AS DECIMAL(38, 0))) AS STRING), '0'), ',', CAST(COUNT(*) AS STRING))"),
    Agg.MIN: ("min(`c`)", 'min("c")', "CAST(MIN(v) AS STRING)"),
    Agg.MAX: ("max(`c`)", 'max("c")', "CAST(MAX(v) AS STRING)"),
    Agg.LAST: ("max(CASE WHEN `c` IS NOT NULL THEN named_struct('ts', __ts, 'partition', __partition, 'offset', "
               "__offset, 'value', `c`) END)",
               'max(CASE WHEN "c" IS NOT NULL THEN struct_pack("ts" := __ts, "partition" := CAST(__partition AS '
               'INTEGER), "offset" := __offset, "value" := "c") END)',
               "MAX(CONCAT(LPAD(CAST(ts AS STRING), 16, '0'), LPAD(CAST(p AS STRING), 10, '0'), "
               "LPAD(CAST(o AS STRING), 19, '0'), CAST(v AS STRING)))"),
}


def test_every_law_has_an_entry_in_every_dialect() -> None:
    assert set(TILE_SQL) == set(Agg)
    for dialect in LAWS.values():
        assert set(dialect) == set(Agg)


@pytest.mark.parametrize("agg", list(Agg), ids=lambda a: a.name)
def test_tile_fragment_per_dialect(agg: Agg) -> None:
    spark, duck, flink = TILE_SQL[agg]
    assert tile_sql(SPARK, agg, SPARK.quote("c")) == spark
    assert tile_sql(DUCKDB, agg, DUCKDB.quote("c")) == duck
    assert law_sql(FLINK, agg).tile.format(value="v", flt="", when="", end="", summand=FLINK.sum_input("v", False)) == flink


def _intermediate(value: Any) -> Any:
    """DuckDB's struct of an intermediate as the law's tuple."""
    if isinstance(value, dict):
        return tuple(value.values())
    return value


def _con(events: list[tuple] = EVENTS) -> Any:
    con = duckdb.connect()
    con.execute("CREATE TABLE ev (k VARCHAR, __ts BIGINT, __partition BIGINT, __offset BIGINT, c BIGINT, tile INT)")
    rows = []
    for key, ranges in TILE.items():
        mine = [e for e in events if e[0] == key]
        for n, (lo, hi) in enumerate(ranges):
            rows += [(*e, n) for e in mine[lo:hi]]
    con.executemany("INSERT INTO ev VALUES (?, ?, ?, ?, ?, ?)", rows)
    return con, rows


def _law_tiles(agg: Agg, rows: list[tuple]) -> dict[tuple[str, int], Any]:
    law = laws.law(agg)
    out: dict[tuple[str, int], Any] = {}
    for k, ts, p, o, c, tile in rows:
        acc = out.get((k, tile), law.init())
        out[(k, tile)] = law.update(acc, c, (ts, p, o))
    return out


def _value(d: Dialect, agg: Agg, x: str) -> str:
    """The feature value of one merged intermediate ``x``."""
    law = law_sql(d, agg)
    if not law.invertible:
        return law.value.format(x=x)
    s, n = (d.field(x, "sum"), d.field(x, "count")) if agg is Agg.AVG else (x, x)
    return law.value.format(s=s, n=n, exact=d.exact_sum(s, False))


@pytest.mark.parametrize("events", [EVENTS, EVENTS_BEYOND_INT64], ids=["small", "beyond-int64"])
@pytest.mark.parametrize("agg", list(Agg), ids=lambda a: a.name)
def test_duckdb_fragments_follow_the_law(agg: Agg, events: list[tuple]) -> None:
    """tile, merge, pair, slide, fold and value in DuckDB give what core/laws.py gives for the same events (sums
    beyond int64 exactly; a value outside int64 is null)."""
    law, sql = laws.law(agg), law_sql(DUCKDB, agg)
    con, rows = _con(events)
    con.execute(f"CREATE TABLE tiles AS SELECT k, tile, {tile_sql(DUCKDB, agg, 'c')} AS t FROM ev GROUP BY k, tile")
    expected_tiles = _law_tiles(agg, rows)
    got = {(k, n): _intermediate(t) for k, n, t in con.execute("SELECT k, tile, t FROM tiles").fetchall()}
    assert got == expected_tiles
    # merge of the tiles passing a condition (here: all, then none), and the feature value of the merge
    merged = con.execute(f"SELECT k, {sql.merge.format(p='true', t='t')} AS m FROM tiles GROUP BY k ORDER BY k").fetchall()
    for k, m in merged:
        assert _intermediate(m) == law.merge_all(v for (kk, _), v in expected_tiles.items() if kk == k)
    empty = con.execute(f"SELECT {sql.merge.format(p='false', t='t')}, {sql.empty} FROM tiles").fetchone()
    assert _intermediate(empty[0]) == _intermediate(empty[1]) == law.init()
    value = con.execute(f"SELECT k, {_value(DUCKDB, agg, 'm')} FROM (SELECT k, {sql.merge.format(p='true', t='t')} "
                        "AS m FROM tiles GROUP BY k) ORDER BY k").fetchall()
    for k, v in value:
        acc = law.merge_all(t for (kk, _), t in expected_tiles.items() if kk == k)
        assert v == (law.finalize(acc) if law.in_range(acc) else None)
    # pair: two intermediates, either may be null
    a0, a1 = "(SELECT t FROM tiles WHERE k = 'a' AND tile = 0)", "(SELECT t FROM tiles WHERE k = 'a' AND tile = 1)"
    for x, y, want in ((a0, a1, law.merge(expected_tiles[("a", 0)], expected_tiles[("a", 1)])),
                       (a0, "NULL", expected_tiles[("a", 0)])):
        assert _intermediate(con.execute(f"SELECT {sql.pair.format(x=x, y=y)}").fetchone()[0]) == want
    if sql.invertible:  # the window slides: (a0 + a1) - a0 + b0
        b0 = "(SELECT t FROM tiles WHERE k = 'b')"
        got = con.execute(f"SELECT {sql.slide.format(x=sql.pair.format(x=a0, y=a1), out=a0, inc=b0)}").fetchone()[0]
        assert _intermediate(got) == law.merge(expected_tiles[("a", 1)], expected_tiles[("b", 0)])
    # fold: the intermediate's parts over the events passing a condition (ts >= 2000), as training reads a head
    parts = fold_sql(DUCKDB, agg, "c", "__ts >= 2000", ts="__ts", partition="__partition", offset="__offset")
    got = con.execute(f"SELECT k, {', '.join(p for _, p in parts)} FROM ev GROUP BY k ORDER BY k").fetchall()
    for k, *values in got:
        want = law.aggregate((c, (ts, p, o)) for kk, ts, p, o, c, _ in rows if kk == k and ts >= 2000)
        assert _intermediate(values[0] if len(values) == 1 else tuple(values)) == want


WHERES = [Where("v", "==", 5), Where("v", ">=", 5), Where("v", "<", 2.5), Where("v", "in", [1, 5, "x"]),
          Where("v", "!=", "5"), Where("v", "==", True), Where("v", ">", Decimal("4.5"))]


@pytest.mark.parametrize("where", WHERES, ids=lambda w: f"{w.op}-{w.value!r}")
def test_filters_follow_where_passes_in_duckdb(where: Where) -> None:
    """A filter keeps exactly the events laws.where_passes keeps (a null, or a value of another kind, never passes)."""
    con = duckdb.connect()
    for values, sql_type, kind in (([None, 1, 5, 7], "BIGINT", "number"), ([None, "5", "x"], "VARCHAR", "string"),
                                   ([None, True, False], "BOOLEAN", "bool")):
        con.execute(f"CREATE OR REPLACE TABLE t (v {sql_type})")
        con.executemany("INSERT INTO t VALUES (?)", [(v,) for v in values])
        got = [r[0] for r in con.execute(f"SELECT v FROM t WHERE {where_sql(DUCKDB, where, 'v', kind)}").fetchall()]
        assert sorted(got, key=repr) == sorted((v for v in values if laws.where_passes(where, {"v": v})), key=repr)


def test_literals_and_filters_per_dialect() -> None:
    where = Where("amount", ">=", 10)
    assert where_sql(SPARK, where, "`amount`", "number") == "(`amount` >= 10L)"
    assert where_sql(DUCKDB, where, '"amount"', "number") == '("amount" >= CAST(10 AS BIGINT))'
    assert where_sql(FLINK, where, "f_amount", "number") == "(f_amount >= 10)"
    assert where_sql(FLINK, Where("s", "==", "it's"), "s", "string") == "(s = 'it''s')"
    assert SPARK.literal("it's \\") == "'it\\'s \\\\'"
    assert [d.literal(1.5) for d in (SPARK, DUCKDB, FLINK)] == ["CAST('1.5' AS DOUBLE)"] * 2 + ["1.5"]
    assert where_sql(SPARK, Where("flag", "<", True), "flag", "bool") == "false"  # booleans have no order
    assert where_sql(FLINK, Where("n", "in", ["a"]), "n", "number") == "FALSE"


def test_contributions_and_derived_values_in_duckdb() -> None:
    """A COUNT over a field counts the events whose field is set and that pass the filters; a derived value
    follows core/expr.evaluate (x/0 is null, DaysSince floors)."""
    con = duckdb.connect()
    con.execute("CREATE TABLE t (amount BIGINT, status VARCHAR, __ts BIGINT)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?)", [(5, "placed", 1), (None, "placed", 2), (7, "done", 3)])
    sql = contribution_sql(DUCKDB, Agg.COUNT, "amount", (Where("status", "==", "placed"),),
                           {"amount": "int64", "status": "string"}, "event_time")
    assert [r[0] for r in con.execute(f"SELECT {sql} FROM t ORDER BY __ts").fetchall()] == [1, None, None]
    expr = BinOp("/", Ref("a"), BinOp("-", Ref("b"), Const(2)))
    assert con.execute(f"SELECT {derived_sql(DUCKDB, expr, {'a': '3', 'b': '2'}, '0')}").fetchone()[0] is None
    assert con.execute(f"SELECT {derived_sql(DUCKDB, expr, {'a': '3', 'b': '5'}, '0')}").fetchone()[0] == 1.0
    con.execute("CREATE MACRO __floordiv(a, b) AS (a - (((a % b) + b) % b)) // b")
    days = derived_sql(DUCKDB, DaysSince(Ref("ts")), {"ts": "1"}, "0")  # 1 ms in the future: -1 day (floored)
    assert con.execute(f"SELECT {days}").fetchone()[0] == -1
