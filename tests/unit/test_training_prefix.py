"""The vectorised prefix path (skewless.training.prefix) against a brute-force reference on random tiles."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa

from skewless.training.prefix import PrefixColumn, TilePrefix

SPECS = (PrefixColumn("p__n", "sum", "n"), PrefixColumn("p__last", "last", "last"), PrefixColumn("mx", "max", "mx"),
         PrefixColumn("mn", "min", "mn"))


def _tiles(seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows, seen = [], set()
    for _ in range(400):
        key, day = rng.choice(["a", "b", "c", "d", None]), rng.randrange(19700, 19760)
        if (key, day) in seen:
            continue
        seen.add((key, day))
        last = None if rng.random() < 0.3 else {"ts": day * 86_400_000 + rng.randrange(1000), "value": rng.choice("xyz")}
        rows.append({"k": key, "__day": day, "p__n": None if rng.random() < 0.2 else rng.randrange(-50, 100), "p__last": last,
                     "mx": None if rng.random() < 0.3 else rng.randrange(-5, 5), "mn": rng.choice([None, 2**63 - 1, -3, 7])})
    rng.shuffle(rows)  # the engine reads tiles in any order
    return rows


def _reference(rows: list[dict], key: str | None, before: int) -> tuple[int, dict | None] | None:
    seen = sorted((r for r in rows if key is not None and r["k"] == key and r["__day"] < before), key=lambda r: r["__day"])
    if not seen:
        return None
    lasts = [r["p__last"] for r in seen if r["p__last"] is not None]
    return sum(r["p__n"] or 0 for r in seen), (lasts[-1] if lasts else None)


def test_lookups_equal_a_brute_force_prefix() -> None:
    for seed in range(5):
        rows = _tiles(seed)
        last_type = pa.struct([("ts", pa.int64()), ("value", pa.string())])
        table = pa.table({"k": [r["k"] for r in rows], "__day": pa.array([r["__day"] for r in rows], pa.int32()),
                          "p__n": pa.array([r["p__n"] for r in rows], pa.int64()),
                          "p__last": pa.array([r["p__last"] for r in rows], last_type),
                          "mx": pa.array([r["mx"] for r in rows], pa.int64()), "mn": pa.array([r["mn"] for r in rows], pa.int64())})
        prefix = TilePrefix.build(table, "k", SPECS)
        assert prefix is not None
        rng = random.Random(seed + 100)
        probes = [(rid, rng.choice(["a", "b", "c", "d", "nobody", None]), rng.randrange(19695, 19765), k)
                  for rid in range(300) for k in (0, 1)]
        got = prefix.prefix_rows(pa.table({"__rid": [p[0] for p in probes], "k": [p[1] for p in probes],
                                           "__k": [p[3] for p in probes],
                                           "__before": pa.array([p[2] for p in probes], pa.int64())}), "k").to_pylist()
        found = {(g["__rid"], g["__k"]): (g["p__n"], g["p__last"]) for g in got}
        assert len(found) == len(got)
        for rid, key, before, k in probes:
            assert found.get((rid, k)) == _reference(rows, key, before), (seed, key, before)
        # windowed MIN/MAX over days [start, tday): each request its own range
        reqs = [(rid, rng.choice(["a", "b", "nobody", None]), rng.randrange(19695, 19765)) for rid in range(300)]
        reqs = [(rid, key, lo, lo + rng.choice([0, 1, 3, 7, 40])) for rid, key, lo in reqs]
        got = prefix.range_rows(pa.table({"__rid": [r[0] for r in reqs], "k": [r[1] for r in reqs],
                                          "a__mx": [r[2] for r in reqs], "a__mn": [r[2] + 1 for r in reqs],
                                          "__tday": [r[3] for r in reqs]}), "k", {"mx": "a__mx", "mn": "a__mn"})
        for g, (rid, key, lo, hi) in zip(got.to_pylist(), reqs):
            mx = [r["mx"] for r in rows if key is not None and r["k"] == key and lo <= r["__day"] < hi and r["mx"] is not None]
            mn = [r["mn"] for r in rows if key is not None and r["k"] == key and lo + 1 <= r["__day"] < hi and r["mn"] is not None]
            assert g == {"__rid": rid, "w__mx": max(mx, default=None), "w__mn": min(mn, default=None)}, (seed, key, lo, hi)


def test_sums_that_could_overflow_int64_use_the_sql_path() -> None:
    table = pa.table({"k": ["a", "a"], "__day": pa.array([1, 2], pa.int32()),
                      "p__n": pa.array([2**62, 2**62], pa.int64()), "p__last": pa.array([None, None], pa.string()),
                      "mx": pa.array([1, 2], pa.int64()), "mn": pa.array([1, 2], pa.int64())})
    assert TilePrefix.build(table, "k", SPECS) is None
    decimals = table.set_column(2, "p__n", pa.array([1, 2], pa.decimal128(10, 2)))
    assert TilePrefix.build(decimals, "k", SPECS) is None
    # int sums held as decimal(38, 0) (the batch tiles): the fast path when they fit, else the SQL path
    exact = table.set_column(2, "p__n", pa.array([1, 2], pa.decimal128(38, 0)))
    assert TilePrefix.build(exact, "k", SPECS[:2]) is not None
    beyond = table.set_column(2, "p__n", pa.array([2**64, 2], pa.decimal128(38, 0)))
    assert TilePrefix.build(beyond, "k", SPECS[:2]) is None
    floats = table.set_column(2, "p__n", pa.array([1, 2], pa.int64())).set_column(4, "mx", pa.array([0.0, -0.0]))
    assert TilePrefix.build(floats, "k", SPECS) is None  # float MIN/MAX: the SQL path
    assert TilePrefix.build(floats, "k", SPECS[:2]) is not None
    assert TilePrefix.build(table.slice(0, 0), "k", SPECS) is not None  # no tiles: every probe finds nothing
    empty = TilePrefix.build(table.slice(0, 0), "k", SPECS)
    assert empty.lookup(pa.array(["a"]), np.array([5]))[0].size == 0
