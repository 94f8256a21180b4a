"""Per-entity running prefixes of daily tiles and their lookups, vectorised (the embedded engine's fast path).

The SQL path computes ``sum(...) OVER (PARTITION BY key ORDER BY day)`` and finds each request's
"prefix before day X" with an ASOF join; both sort by the (string) key. Here an entity is its position
in the key's dictionary, so (entity, day) is one int64: the tiles are sorted by it once and every
lookup is a binary search (``np.searchsorted``). Running sums are a cumulative sum minus the entity's
base, the lifetime LAST the latest non-null tile of the entity.

Exactness: only for int sums (int64 or ``decimal(38, 0)`` tiles) of int64 values whose absolute values add up to less than 2**62 (no partial sum can
overflow, the result is the integer the SQL path gives) and one key column; otherwise
:func:`supported` is false and the engine uses the SQL path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SAFE_ABS_TOTAL = float(2**62)
_DAY_BIAS = 2**31


@dataclass(frozen=True)
class PrefixColumn:
    """An output prefix column: ``kind`` "sum" (running sum of ``source``) or "last" (latest non-null)."""

    name: str
    kind: str  # "sum", "last"; "min"/"max": a windowed MIN/MAX over a day range (no running prefix)
    source: str  # SQL expression over the tiles


class TilePrefix:
    """Tiles ordered by (entity, day) with their running prefixes, ready for lookups. An entity is its
    position in the key's dictionary; (entity, day) is one sorted int64, ``sorted_key``."""

    def __init__(self, entities: pa.Array, sorted_key: np.ndarray, columns: dict[str, Any]):
        self.entities, self.sorted_key, self.columns = entities, sorted_key, columns

    @classmethod
    def build(cls, table: pa.Table, key: str, specs: Sequence[PrefixColumn]) -> "TilePrefix | None":
        """From ``table`` (key, ``__day``, one column per spec named as the spec, any order, one row per
        (key, day)); None when a sum is not an integer or could overflow int64. Tiles of a null key are
        left out (no request matches them)."""
        encoded = pc.dictionary_encode(table.column(key).combine_chunks())
        codes = encoded.indices
        rows = np.flatnonzero(codes.is_valid().to_numpy(zero_copy_only=False))
        code = codes.to_numpy(zero_copy_only=False)[rows].astype(np.int64)
        days = table.column("__day").to_numpy()[rows].astype(np.int64)
        combined = (code << 32) | (days + _DAY_BIAS)
        order = np.argsort(combined)
        sorted_key, rows = combined[order], rows[order]
        n = len(rows)
        start = np.zeros(n, dtype=np.int64)  # first row of each row's entity
        if n:
            change = np.ones(n, dtype=bool)
            change[1:] = (sorted_key[1:] >> 32) != (sorted_key[:-1] >> 32)
            start = np.flatnonzero(change)[np.cumsum(change) - 1]
        out: dict[str, Any] = {}
        for spec in specs:
            col = table.column(spec.name).combine_chunks()
            if spec.kind in ("min", "max"):  # values in sorted order (nulls as the neutral value), non-null counts
                if not pa.types.is_integer(col.type):
                    return None
                info = np.iinfo(np.int64)
                neutral = info.min if spec.kind == "max" else info.max
                values = np.append(pc.fill_null(col, neutral).to_numpy().astype(np.int64, copy=False)[rows], neutral)
                counts = np.concatenate(([0], np.cumsum(col.is_valid().to_numpy(zero_copy_only=False)[rows])))
                out[spec.name] = (spec.kind, values, counts)
            elif spec.kind == "sum":
                if pa.types.is_decimal(col.type) and col.type.scale == 0:  # exact int sums (decimal(38, 0) tiles)
                    try:
                        col = col.cast(pa.int64())  # safe: fails when a value leaves int64 (then the SQL path)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                        return None
                if not pa.types.is_integer(col.type):
                    return None
                values = pc.fill_null(col, 0).to_numpy().astype(np.int64, copy=False)[rows]
                if np.abs(values, dtype=np.float64).sum() >= SAFE_ABS_TOTAL:
                    return None
                run = np.cumsum(values)
                out[spec.name] = run - (run[start] - values[start])
            else:  # latest non-null row of the entity so far (positions in sorted order, read from the input)
                idx = np.where(col.is_valid().to_numpy(zero_copy_only=False)[rows], np.arange(n), -1)
                latest = np.maximum.accumulate(idx) if n else idx
                ok = latest >= start
                out[spec.name] = col.take(pa.array(rows[np.where(ok, latest, 0)], mask=~ok))
        return cls(encoded.dictionary, sorted_key, out)

    def lookup(self, keys: pa.Array, before: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For probes (key, day X): (probe positions that found a tile, index of the latest tile with
        day < X of that entity)."""
        code = pc.index_in(keys.cast(self.entities.type), value_set=self.entities, skip_nulls=True)
        pos = np.flatnonzero(code.is_valid().to_numpy(zero_copy_only=False))
        seg = code.to_numpy(zero_copy_only=False)[pos].astype(np.int64)
        wanted = (seg << 32) | (before[pos].astype(np.int64) + _DAY_BIAS)
        order = np.argsort(wanted)  # sorted queries: a cache-friendly binary search
        pos, seg, wanted = pos[order], seg[order], wanted[order]
        idx = np.searchsorted(self.sorted_key, wanted, side="left") - 1
        hit = idx >= 0
        hit[hit] = (self.sorted_key[idx[hit]] >> 32) == seg[hit]
        return pos[hit], idx[hit]

    def prefix_rows(self, probes: pa.Table, key: str) -> pa.Table:
        """``probes`` (``__rid``, key, ``__k``, ``__before``) -> ``__rid``, ``__k`` and the prefix columns of
        every probe that found a tile (the rows an ASOF LEFT JOIN would fill), in no particular order."""
        pos, idx = self.lookup(probes.column(key).combine_chunks(), probes.column("__before").to_numpy())
        take = pa.array(pos)
        cols = {"__rid": probes.column("__rid").take(take), "__k": probes.column("__k").take(take)}
        at = pa.array(idx)
        for name, values in self.columns.items():
            if isinstance(values, np.ndarray):
                cols[name] = pa.array(values[idx])
            elif not isinstance(values, tuple):
                cols[name] = values.take(at)
        return pa.table(cols)

    def range_rows(self, requests: pa.Table, key: str, starts: dict[str, str]) -> pa.Table:
        """``requests`` (``__rid``, key, ``__tday`` and per windowed MIN/MAX ``name`` its first day column
        ``starts[name]``) -> ``__rid`` and ``w__<name>``: the MIN/MAX of the tiles of days
        ``[start, __tday)`` (null when none has a value)."""
        keys = requests.column(key).combine_chunks()
        code = pc.index_in(keys.cast(self.entities.type), value_set=self.entities, skip_nulls=True)
        known = code.is_valid().to_numpy(zero_copy_only=False)
        seg = np.where(known, code.to_numpy(zero_copy_only=False), -1).astype(np.int64)
        hi_day = requests.column("__tday").to_numpy().astype(np.int64)
        hi = np.searchsorted(self.sorted_key, (seg << 32) | (hi_day + _DAY_BIAS), side="left")
        cols: dict[str, Any] = {"__rid": requests.column("__rid")}
        for name, start in starts.items():
            kind, values, counts = self.columns[name]
            lo_day = requests.column(start).to_numpy().astype(np.int64)
            lo = np.searchsorted(self.sorted_key, (seg << 32) | (lo_day + _DAY_BIAS), side="left")
            some = known & (hi > lo) & (counts[hi] - counts[np.minimum(lo, hi)] > 0)
            which = np.flatnonzero(some)
            which = which[np.argsort(lo[which], kind="stable")]  # by start: reduceat's in-between spans stay short
            pairs = np.empty(2 * len(which), dtype=np.int64)
            pairs[0::2], pairs[1::2] = lo[which], hi[which]
            reduce = np.maximum if kind == "max" else np.minimum
            result = np.zeros(len(some), dtype=np.int64)
            if len(pairs):
                result[which] = reduce.reduceat(values, pairs)[0::2]
            cols["w__" + name] = pa.array(result, mask=~some)
        return pa.table(cols)
