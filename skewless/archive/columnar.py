"""Whole-chunk conversion of record values: the archive's fast path (docs/archive.md, "Numbers").

:class:`RecordConverter` decides one record at a time (~20 us of Python each). :class:`ColumnarConverter`
takes the values of one Kafka fetch (thousands of records) at once: ``orjson`` parses each value, then every
check and conversion runs per column with pyarrow/numpy. It only ever *accepts*: a record it cannot certify
(not a flat JSON object of declared fields, an escape sequence, a value of another type, a constraint it
cannot show to hold, a timestamp not of the form ``YYYY-MM-DDTHH:MM:SS.fffZ`` ...) is returned in ``rest``
and goes through :meth:`RecordConverter.convert`, which alone classifies and words malformed reasons. So
the outcome of every record is exactly the per-record converter's.

Why the shortcuts are exact:

* orjson rejects what ``parse_payload`` rejects (invalid UTF-8, NaN/Infinity, lone surrogates, control
  characters, a BOM) but keeps the last of duplicate keys, and reads integer literals beyond 64 bits as
  floats. Duplicates: in a value without backslashes every ``"`` delimits a string, so the value holds
  ``2 * (keys + string values)`` quotes; with scalar values only, that equals ``2 * (len(d) + string values
  of d)`` exactly when no key repeats. Big integers: ints are range-checked; a float of magnitude
  >= 2**63 goes to the per-record path.
* Patterns run in RE2 only when built from constructs whose RE2 matches are a subset of Python's ``re``
  matches (no ``(?``, no escapes but ``\\d \\w \\s`` and escaped punctuation, no ``\\d``-style classes with
  ``[^``); others run with Python's ``re`` per value.
* Timestamps: the day (``YYYY-MM-DD``) is checked and converted with the reference functions once per
  distinct day, hours/minutes/seconds/millis with arithmetic; ranges as ``parse_event_time``.
"""

from __future__ import annotations

import operator
import re
from itertools import repeat
from operator import itemgetter
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from skewless.archive.records import INT64_MAX, INT64_MIN, RecordConverter
from skewless.core.admission import MalformedError
from skewless.core.schemas import check_timestamp

_TS_FORM = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"
_SAFE_PATTERN = re.compile(r"(?:[^\\(]|\((?!\?)|\\[dws.\-+*?()\[\]{}|^$/:])*")
_BIG_FLOAT = float(2**63)
_ARROW = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
_PY = {"string": str, "integer": int, "number": float, "boolean": bool}
_MISSING = object()


def _parse(value: Any, loads: Callable[[Any], Any] = orjson.loads,
           refused: tuple[type[Exception], ...] = (orjson.JSONDecodeError, TypeError)) -> Any:
    """orjson's reading of a record value, or None where it refuses it (the per-record path then decides)."""
    try:
        return loads(value)
    except refused:
        return None


_BOUNDS = {"minimum": (pc.greater_equal, operator.ge), "maximum": (pc.less_equal, operator.le),
           "exclusiveMinimum": (pc.greater, operator.gt), "exclusiveMaximum": (pc.less, operator.lt)}


def _exact_bound(bound: Any, py: type) -> bool:
    """True if the bound converts exactly to the column's Arrow type (int64 / float64)."""
    if type(bound) is int:
        return INT64_MIN <= bound <= INT64_MAX if py is int else abs(bound) <= 2**53
    return type(bound) is float and py is float


def safe_pattern(pattern: str) -> bool:
    """True if RE2 matches a subset of what Python's ``re.search`` matches for this pattern."""
    if _SAFE_PATTERN.fullmatch(pattern) is None:
        return False
    return "[^" not in pattern or not re.search(r"\\[dws]", pattern)


@dataclass
class _Column:
    """How one declared field is checked and converted."""

    name: str
    ftype: str  # the raw column's type (schemas.TYPES)
    py: type | None  # the one Python type of a certainly-valid value on the vectorised path; None: per value
    required: bool
    null_ok: bool
    prop: Mapping[str, Any]
    check: Callable[[Any], bool]  # FastValidator's per-value check (the per-value path)


@dataclass
class Chunk:
    """The converted part of a chunk: ``rows`` (indices into the chunk's values), one Arrow array per
    declared field (length ``len(rows)``, in :attr:`RecordConverter.columns` order) and each row's event
    time in ms. ``rest`` are the indices that need :meth:`RecordConverter.convert`."""

    rows: np.ndarray
    arrays: dict[str, pa.Array]
    event_ms: np.ndarray
    rest: list[int]


class ColumnarConverter:
    """Converts the values of a chunk of records at once, for the records it can certify (module doc)."""

    def __init__(self, converter: RecordConverter):
        self.converter = converter
        doc = converter.doc
        fast = converter.fast
        self.enabled = fast.supported
        source = converter.source
        self.event_time, self.keys = source.event_time, [source.event_id] + ([source.partition_key] if source.partition_key else [])
        checks = dict(fast.checks)
        required = set(fast.required)
        self.columns: list[_Column] = []
        if not self.enabled:
            return
        for name, ftype in converter.fields:
            prop = doc["properties"][name]
            declared = prop["type"]
            declared = [declared] if isinstance(declared, str) else list(declared)
            json_types = [t for t in declared if t != "null"]
            natural = {("string", "string"), ("string", "timestamp"), ("integer", "int64"), ("number", "float64"),
                       ("boolean", "bool")}
            vector = len(json_types) == 1 and (json_types[0], ftype) in natural and "x-skewless-type" not in prop
            self.columns.append(_Column(name, ftype, _PY[json_types[0]] if vector else None, name in required,
                                        "null" in declared, prop, checks[name]))
        self._patterns = {c.name: safe_pattern(c.prop["pattern"]) for c in self.columns if "pattern" in c.prop}

    # -- the chunk ---------------------------------------------------------------------------------

    def convert(self, values: list[Any]) -> Chunk:
        """Convert what can be certified among ``values`` (record values, bytes or None)."""
        n = len(values)
        if not self.enabled:
            return Chunk(np.empty(0, np.int64), {}, np.empty(0, np.int64), list(range(n)))
        parsed = list(map(_parse, values))
        cand = [i for i, d in enumerate(parsed) if type(d) is dict]
        rest = [i for i, d in enumerate(parsed) if type(d) is not dict] if len(cand) < n else []
        m = len(cand)
        if not m:
            return Chunk(np.empty(0, np.int64), {}, np.empty(0, np.int64), rest)
        dicts = [parsed[i] for i in cand] if m < n else parsed
        raw = [values[i] for i in cand] if m < n else values
        ok = np.fromiter(map(bytes.find, raw, repeat(b"\\")), np.int64, m) < 0
        quotes = np.fromiter(map(bytes.count, raw, repeat(b'"')), np.int64, m)
        keys = np.fromiter(map(len, dicts), np.int64, m)
        strings = keys.copy()
        declared = np.zeros(m, np.int64)  # declared fields present: fewer than keys -> undeclared fields
        arrays: dict[str, pa.Array] = {}
        event_ms = np.zeros(m, np.int64)
        for col in self.columns:
            try:
                vals = list(map(itemgetter(col.name), dicts))
            except KeyError:
                vals = [d.get(col.name, _MISSING) for d in dicts]
            missing = np.zeros(m, bool)
            if _MISSING in vals:
                missing = np.fromiter((v is _MISSING for v in vals), bool, m)
            if col.py is None:
                arr, good, is_str = self._per_value(col, vals)
            else:
                arr, good, is_str = self._vector(col, vals)
            ok &= good
            strings += is_str
            declared += ~missing
            if col.ftype == "timestamp":
                ms, good = self._timestamps(arr)
                ok &= good
                arr = pa.array(ms * 1000, pa.int64(), mask=~arr.is_valid().to_numpy(zero_copy_only=False))
                if col.name == self.event_time:
                    event_ms = ms
            if col.name == self.event_time:
                ok &= arr.is_valid().to_numpy(zero_copy_only=False)  # the per-record path words why
            if col.name in self.keys:
                ok &= self._key_ok(col, arr, dicts)
            arrays[col.name] = arr
        ok &= (quotes == 2 * strings) & (declared == keys)  # no duplicate keys (module doc), no undeclared field
        idx = np.flatnonzero(ok)
        if len(idx) < m:
            rest.extend(cand[i] for i in np.flatnonzero(~ok))
            rest.sort()
            keep = pa.array(ok)
            arrays = {k: a.filter(keep) for k, a in arrays.items()}
            event_ms = event_ms[idx]
        return Chunk(np.asarray(cand, np.int64)[idx], arrays, event_ms, rest)

    def _key_ok(self, col: _Column, arr: pa.Array, dicts: list[dict[str, Any]]) -> np.ndarray:
        """Rows whose event id / partition key is a non-empty string or an integer (``RecordConverter._key``)."""
        if col.py is str:
            return pc.fill_null(pc.greater(pc.binary_length(arr), 0), False).to_numpy(zero_copy_only=False)
        if col.py is int:
            return arr.is_valid().to_numpy(zero_copy_only=False)
        name = col.name
        return np.fromiter(((type(v) is str and v != "") or type(v) is int for v in (d.get(name) for d in dicts)),
                           bool, len(dicts))

    # -- columns -----------------------------------------------------------------------------------

    @staticmethod
    def _presence(col: _Column, vals: list[Any]) -> tuple[list[Any], np.ndarray, np.ndarray]:
        """Missing/null values as None, whether each row's missing/null is allowed, and which rows miss it."""
        good = np.ones(len(vals), bool)
        missing = np.zeros(len(vals), bool)
        if None in vals or _MISSING in vals:
            for i, v in enumerate(vals):
                if v is _MISSING:
                    vals[i] = None
                    good[i] = not col.required
                    missing[i] = True
                elif v is None:
                    good[i] = col.null_ok
        return vals, good, missing

    def _per_value(self, col: _Column, vals: list[Any]) -> tuple[pa.Array, np.ndarray, np.ndarray]:
        """Any column the vectorised path does not cover: FastValidator's check and the converter's conversion."""
        n = len(vals)
        good, is_str = np.ones(n, bool), np.zeros(n, np.int64)
        out: list[Any] = [None] * n
        for i, v in enumerate(vals):
            if v is _MISSING:
                good[i] = not col.required
                continue
            is_str[i] = type(v) is str
            if not col.check(v) or (type(v) is float and abs(v) >= _BIG_FLOAT) or (type(v) is int and not INT64_MIN <= v <= INT64_MAX):
                good[i] = False
                continue
            try:
                out[i] = self.converter._column(col.name, col.ftype, v)
            except MalformedError:
                good[i] = False
        arrow_type = _ARROW.get(col.ftype, pa.int64() if col.ftype == "timestamp" else None)
        if col.ftype == "timestamp":  # the strings: _timestamps converts those of the one form it certifies
            good &= np.fromiter((v is _MISSING or v is None or type(v) is str for v in vals), bool, n)
            return pa.array([v if g and type(v) is str else None for v, g in zip(vals, good)], pa.string()), good, is_str
        if col.ftype == "decimal":
            scale = self.converter.scales.get(col.name, 9)
            arrow_type = pa.decimal128(38, scale)
        return pa.array([o if g else None for o, g in zip(out, good)], arrow_type), good, is_str

    def _vector(self, col: _Column, vals: list[Any]) -> tuple[pa.Array, np.ndarray, np.ndarray]:
        vals, good, missing = self._presence(col, vals)
        py = col.py
        if py is str:
            try:  # refuses every non-str value orjson can produce (it makes no bytes)
                arr = pa.array(vals, pa.string())
            except (pa.ArrowTypeError, pa.ArrowInvalid):
                pass
            else:
                good &= self._constraints(col, vals, arr) | missing  # a missing optional field has no constraints
                return arr, good, arr.is_valid().to_numpy(zero_copy_only=False).astype(np.int64)
        types = set(map(type, vals))
        types.discard(type(None))
        allowed = {int, float} if py is float else {py}
        if not types <= allowed:
            for i, v in enumerate(vals):
                if v is not None and type(v) not in allowed:
                    vals[i] = None
                    good[i] = False
        if int in types:  # parse_payload rejects integers outside int64
            present = [v for v in vals if type(v) is int]
            if present and (min(present) < INT64_MIN or max(present) > INT64_MAX):
                for i, v in enumerate(vals):
                    if type(v) is int and not INT64_MIN <= v <= INT64_MAX:
                        vals[i] = None
                        good[i] = False
        if py is float:
            if float in types:
                for i, v in enumerate(vals):
                    if type(v) is float and abs(v) >= _BIG_FLOAT:  # maybe an integer literal beyond 64 bits
                        vals[i] = None
                        good[i] = False
            if int in types:
                vals = [float(v) if type(v) is int else v for v in vals]
        arr = pa.array(vals, pa.string() if col.ftype == "timestamp" else _ARROW[col.ftype])
        good &= self._constraints(col, vals, arr) | missing  # a missing optional field has no constraints
        is_str = arr.is_valid().to_numpy(zero_copy_only=False).astype(np.int64) if py is str else np.zeros(len(vals), np.int64)
        return arr, good, is_str

    def _constraints(self, col: _Column, vals: list[Any], arr: pa.Array) -> np.ndarray:
        """The schema keywords of one single-typed column. Nulls pass all but ``enum`` (which lists null or not);
        missing values are the caller's."""
        prop = col.prop
        masks: list[Any] = []
        if col.py is str:
            if "minLength" in prop or "maxLength" in prop:
                length = pc.utf8_length(arr)
                if "minLength" in prop:
                    masks.append(pc.greater_equal(length, prop["minLength"]))
                if "maxLength" in prop:
                    masks.append(pc.less_equal(length, prop["maxLength"]))
            if "pattern" in prop:
                if self._patterns[col.name]:
                    masks.append(pc.match_substring_regex(arr, prop["pattern"]))
                else:
                    search = re.compile(prop["pattern"]).search
                    masks.append(pa.array([v is None or search(v) is not None for v in vals]))
        if "enum" in prop:
            enum = prop["enum"]
            if col.py is str and all(e is None or type(e) is str for e in enum):
                masks.append(pc.is_in(arr, value_set=pa.array(enum, pa.string())))  # null only if listed
            else:
                members = frozenset((type(e), e) for e in enum if e is None or isinstance(e, (str, int, float, bool)))
                masks.append(pa.array([(type(v), v) in members for v in vals]))
        for key, (arrow_op, py_op) in _BOUNDS.items():
            if key in prop and col.py in (int, float):
                bound = prop[key]
                if _exact_bound(bound, col.py):  # Arrow compares as Python does
                    masks.append(arrow_op(arr, pa.scalar(bound, arr.type)))
                else:
                    masks.append(pa.array([v is None or py_op(v, bound) for v in vals]))
        good = np.ones(len(vals), bool)
        for mask in masks:
            good &= pc.fill_null(mask, True).to_numpy(zero_copy_only=False)
        return good

    def _timestamps(self, arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Epoch ms of ``YYYY-MM-DDTHH:MM:SS.fffZ`` strings, and which are such valid timestamps (nulls: ok, 0)."""
        n = len(arr)
        ms = np.zeros(n, np.int64)
        form = pc.fill_null(pc.match_substring_regex(arr, _TS_FORM), False).to_numpy(zero_copy_only=False)
        good = ~arr.is_valid().to_numpy(zero_copy_only=False) | form
        idx = np.flatnonzero(form)
        if not len(idx):
            return ms, good
        text = arr.take(pa.array(idx))
        days = pc.utf8_slice_codeunits(text, 0, 10).dictionary_encode()
        bases = np.array([self._day_ms(d) for d in days.dictionary.to_pylist()], np.int64)
        base = bases[days.indices.to_numpy(zero_copy_only=False)]

        def part(start: int, stop: int) -> np.ndarray:
            return pc.cast(pc.utf8_slice_codeunits(text, start, stop), pa.int64()).to_numpy(zero_copy_only=False)

        h, mi, s, frac = part(11, 13), part(14, 16), part(17, 19), part(20, 23)
        valid = (base >= 0) & (h <= 23) & (mi <= 59) & (s <= 59)
        ms[idx] = base + ((h * 60 + mi) * 60 + s) * 1000 + frac
        good[idx[~valid]] = False
        return ms, good

    def _day_ms(self, day: str) -> int:
        """Epoch ms of a day's midnight, or -1 if the day is not valid for the schema or the event time."""
        text = day + "T00:00:00.000Z"
        if not check_timestamp(text):
            return -1
        try:
            ms = self.converter.event_time_ms(text)
        except MalformedError:
            return -1
        return ms if ms >= 0 else -1


__all__ = ["Chunk", "ColumnarConverter"]
