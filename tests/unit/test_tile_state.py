"""The stream's tile fold (``dev.skewless.flink.TileState``, run by ``TileAggregateOperator`` in the job) against the
laws (``skewless.core.laws``): per tile, each column's text is the law's intermediate over the same contributions
(exact int sums beyond int64, decimal sums at their scale, MIN/MAX, LAST by (ts, partition, offset)), the version
counts every row, and a tile's state is released only once its end + retention <= the low watermark."""

from __future__ import annotations

import json
import random
from decimal import Decimal

from skewless.core import laws
from skewless.core.dsl import Agg
from streaming_jobs.udf import run_main

TILE_STATE_CLASS = "dev.skewless.flink.TileState"
KINDS = ["COUNT", "SUM_INT", "SUM_DEC", "AVG_INT", "MIN_LONG", "MAX_DOUBLE", "LAST"]
AGGS = [Agg.COUNT, Agg.SUM, Agg.SUM, Agg.AVG, Agg.MIN, Agg.MAX, Agg.LAST]
SPEC = {"key_width": 1, "value_width": 8, "outputs": [
    {"view": "v", "tile_ms": 300_000, "retention_ms": 600_000, "kinds": KINDS},
    {"view": "v", "tile_ms": 86_400_000, "retention_ms": 0, "kinds": ["COUNT"]}]}


def _fold(lines: list[list]) -> tuple[list[list], int]:
    out = run_main(TILE_STATE_CLASS, [json.dumps(SPEC)], "".join(json.dumps(line) + "\n" for line in lines))
    return [json.loads(line) for line in out[:-1]], int(out[-1])


def _contributions(rng: random.Random, ts: int, p: int, o: int) -> tuple[list, list]:
    """(the SQL's argument texts, the laws' contributions) of one event; about a third of each is null."""
    big = rng.choice([rng.randint(-1000, 1000), rng.randint(2**62, 2**63 - 1)])  # sums beyond int64
    values: list = [1, big, Decimal(rng.randint(-999, 999)) / 100, rng.randint(0, 50), rng.randint(-5, 5),
                    rng.uniform(-1e6, 1e6), rng.choice(["placed", "done", "x"])]
    values = [v if rng.random() > 0.3 else None for v in values]
    texts = [None if v is None else "1" if i == 0 else f"{v:.2f}" if isinstance(v, Decimal) else repr(v) if isinstance(v, float)
             else f"{ts:016d}{p:010d}{o:019d}{v}" if i == 6 else str(v) for i, v in enumerate(values)]
    return [*texts, None], values


def test_each_column_is_the_laws_intermediate() -> None:
    rng = random.Random(3)
    lines, events = [], {}
    for o in range(400):
        p, user, ts = rng.randint(0, 2), rng.choice(["a", "b", "c"]), 1_000_000 + rng.randint(0, 900_000)
        texts, values = _contributions(rng, ts, p, o)
        start = ts - ts % 300_000
        lines.append([0, user, start, *texts])
        events.setdefault((user, start), []).append((values, (ts, p, o)))
    rows, live = _fold(lines)
    assert live == len(events) == len(rows)
    for out, user, start, version, *cols in rows:
        mine = events[(user, start)]
        assert out == 0 and version == len(mine)
        for i, agg in enumerate(AGGS):
            acc = laws.law(agg).aggregate((values[i], key) for values, key in mine)
            if agg is Agg.AVG:
                total, count = acc
                assert cols[i] == f"{total},{count}"
            elif agg is Agg.LAST:
                assert (cols[i] is None) == (acc is None) and (acc is None or cols[i][45:] == acc[3])
            elif agg is Agg.MAX:
                assert (cols[i] is None) == (acc is None) and (acc is None or float(cols[i]) == acc)
            else:
                assert cols[i] == (None if acc is None else str(acc)), (agg, cols[i], acc)
        assert cols[len(AGGS)] is None


def test_decimal_sums_keep_the_scale_and_no_row_gives_null() -> None:
    rows, _ = _fold([[0, "a", 0, None, None, "0.10", None, None, None, None, None],
                     [0, "a", 0, None, None, "0.20", None, None, None, None, None]])
    assert rows == [[0, "a", 0, 2, "0", None, "0.30", "0,0", None, None, None, None]]


def test_state_released_only_past_end_plus_retention() -> None:
    # 5-minute tile at 0 (end 300 000, retention 600 000: released at 900 000), daily tile at 0 (at 86 400 000)
    rows, live = _fold([[0, "a", 0, "1", *[None] * 7], [1, "a", 0, "1", *[None] * 7], ["release", 899_999]])
    assert live == 2
    rows, live = _fold([[0, "a", 0, "1", *[None] * 7], [1, "a", 0, "1", *[None] * 7], ["release", 900_000]])
    assert live == 1
    rows, live = _fold([[0, "a", 0, "1", *[None] * 7], ["release", 900_000], [0, "a", 0, "1", *[None] * 7]])
    assert rows == [[0, "a", 0, 1, "1", None, None, "0,0", None, None, None, None]]  # a new accumulator: version 1


def test_bundles_merged_equal_the_row_by_row_fold() -> None:
    # the pre-aggregation (TilePreAggregate) folds a bundle's rows per tile, the keyed operator merges the partials
    rng = random.Random(5)
    lines = []
    for o in range(600):
        p, user, ts = rng.randint(0, 2), rng.choice(["a", "b", "c", "d"]), 1_000_000 + rng.randint(0, 900_000)
        texts, _ = _contributions(rng, ts, p, o)
        lines.append([0, user, ts - ts % 300_000, *texts])
    bundled = [x for line in lines for x in ([line, ["flush"]] if rng.random() < 0.1 else [line])]
    assert _fold(bundled) == _fold(lines)
    one_bundle_each = [x for line in lines for x in (line, ["flush"])]
    assert _fold(one_bundle_each) == _fold(lines)
