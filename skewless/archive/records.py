"""Kafka record -> raw-table row, or a dead letter (malformed only).

The archive dead-letters exactly the records admission (:mod:`skewless.core.admission`) classifies as
``malformed`` for reasons that do not depend on the views: not UTF-8 / not a JSON object / duplicate keys /
NaN / an integer outside int64, a schema violation, a missing or bad event time, event id or partition key.
Future, late and duplicate records are raw facts: they are archived, and batch applies the contract to them
with ``_kafka_partition``, ``_offset`` and ``_kafka_ts``.

Speed: the full jsonschema validator costs ~50 us a record. :class:`FastValidator` decides the common case
("certainly valid") for flat schemas built from the keywords it fully implements; anything else - an
unsupported keyword, or a payload it does not accept - goes to the full validator, which alone decides and
words the reason. It only ever answers "valid" where jsonschema does, so classification is unchanged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Mapping

from skewless.core.admission import (
    INT64_MAX, INT64_MIN, MalformedError, to_decimal, key_value, parse_event_time, parse_payload,
)
from skewless.core.dsl import EventSource
from skewless.core.schemas import EventSchema, check_timestamp, validator
from skewless.core.timeutil import MS_PER_DAY

Validate = Callable[[Mapping[str, Any]], "str | None"]

_DECIMAL_RE = re.compile(r"-?\d+(\.\d+)?")
_TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
_SCHEMA_META = {"$schema", "$id", "title", "description", "$comment", "examples", "$defs"}
_PROP_META = {"description", "title", "$comment", "examples", "x-skewless-type", "x-skewless-scale", "default"}
_PROP_CHECKS = {"type", "minLength", "maxLength", "pattern", "enum", "minimum", "maximum", "exclusiveMinimum",
                "exclusiveMaximum", "format"}


class FastValidator:
    """A conservative, fast "certainly valid" check compiled from a flat JSON schema (see module doc)."""

    def __init__(self, doc: Mapping[str, Any]):
        self.supported = self._supported(doc)
        self.required = tuple(doc.get("required", ())) if self.supported else ()
        self.checks: list[tuple[str, Callable[[Any], bool]]] = []
        if self.supported:
            for name, prop in doc["properties"].items():
                self.checks.append((name, self._compile(prop)))

    @staticmethod
    def _supported(doc: Mapping[str, Any]) -> bool:
        if not isinstance(doc, Mapping) or doc.get("type") != "object" or doc.get("additionalProperties", True) is not True:
            return False
        if set(doc) - _SCHEMA_META - {"type", "additionalProperties", "required", "properties"}:
            return False
        props = doc.get("properties")
        if not isinstance(props, Mapping) or not isinstance(doc.get("required", []), list):
            return False
        for prop in props.values():
            if not isinstance(prop, Mapping) or set(prop) - _PROP_META - _PROP_CHECKS:
                return False
            if prop.get("format") not in (None, "date-time", "decimal"):
                return False
            types = prop.get("type")
            types = [types] if isinstance(types, str) else types
            if not isinstance(types, list) or not types or set(types) - {"string", "integer", "number", "boolean", "null"}:
                return False
        return True

    @staticmethod
    def _compile(prop: Mapping[str, Any]) -> Callable[[Any], bool]:
        """A check of one property: the type test first, then only the keywords the property has."""
        declared = prop["type"]
        declared = {declared} if isinstance(declared, str) else set(declared)
        py_types: set[type] = set()
        for t in declared:
            py_types |= {"string": {str}, "integer": {int}, "number": {int, float}, "boolean": {bool},
                         "null": {type(None)}}[t]
        frozen_types = frozenset(py_types)
        checks: list[Callable[[Any], bool]] = []
        if "enum" in prop:
            enum = prop["enum"]
            if all(isinstance(e, (str, int, float, bool, type(None))) for e in enum):
                members = frozenset((type(e), e) for e in enum)
                checks.append(lambda v: (type(v), v) in members)
            else:
                checks.append(lambda v: False)  # the full validator decides
        min_len, max_len = prop.get("minLength"), prop.get("maxLength")
        if min_len is not None:
            checks.append(lambda v: type(v) is not str or len(v) >= min_len)
        if max_len is not None:
            checks.append(lambda v: type(v) is not str or len(v) <= max_len)
        if "pattern" in prop:
            search = re.compile(prop["pattern"]).search
            checks.append(lambda v: type(v) is not str or search(v) is not None)
        if prop.get("format") == "date-time":
            checks.append(lambda v: type(v) is not str or timestamp_ok(v))
        elif prop.get("format") == "decimal":
            full = _DECIMAL_RE.fullmatch
            checks.append(lambda v: type(v) is not str or full(v) is not None)
        numeric = (int, float)
        for key, test in (("minimum", lambda v, b: v >= b), ("maximum", lambda v, b: v <= b),
                          ("exclusiveMinimum", lambda v, b: v > b), ("exclusiveMaximum", lambda v, b: v < b)):
            if key in prop:
                bound = prop[key]
                checks.append(lambda v, b=bound, t=test: type(v) not in numeric or t(v, b))
        # enum (like type) applies to null too: null passes only if the enum lists it
        none_ok = type(None) in py_types and ("enum" not in prop or any(e is None for e in prop["enum"]))

        def check(v: Any) -> bool:
            if type(v) not in frozen_types:
                return False
            if v is None:
                return none_ok
            for c in checks:
                if not c(v):
                    return False
            return True

        return check

    def certainly_valid(self, payload: Mapping[str, Any]) -> bool:
        if not self.supported:
            return False
        for name in self.required:
            if name not in payload:
                return False
        get = payload.get
        for name, check in self.checks:
            v = get(name, _MISSING)
            if v is not _MISSING and not check(v):
                return False
        return True


_MISSING = object()
_VALID_DAYS: dict[str, bool] = {}


def timestamp_ok(v: str) -> bool:
    """``check_timestamp`` (the schema's date-time format) with the day's validity cached."""
    if len(v) != 24 or _TS_RE.match(v) is None:
        return check_timestamp(v)
    day = v[:10]
    ok = _VALID_DAYS.get(day)
    if ok is None:
        ok = check_timestamp(day + "T00:00:00.000Z")
        if len(_VALID_DAYS) > 10_000:
            _VALID_DAYS.clear()
        _VALID_DAYS[day] = ok
    return ok and int(v[11:13]) <= 23 and int(v[14:16]) <= 59 and int(v[17:19]) <= 59


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ValueError("duplicate key")  # parse_payload words it
    return d


def _reject(name: str) -> Any:
    raise ValueError(name)


def fast_parse(raw: Any) -> dict[str, Any]:
    """:func:`parse_payload` for the common flat, well-formed object; anything else goes to it (same result)."""
    try:
        payload = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_pairs, parse_constant=_reject)
    except Exception:  # noqa: BLE001 - the reference implementation raises the exact MalformedError
        return parse_payload(raw)
    if type(payload) is not dict:
        return parse_payload(raw)
    for v in payload.values():
        t = type(v)
        if t is int:
            if not INT64_MIN <= v <= INT64_MAX:
                return parse_payload(raw)
        elif t is dict or t is list:
            return parse_payload(raw)
    return payload


@dataclass
class Converted:
    """One record's outcome: ``row`` (values in :attr:`RecordConverter.columns` order) for the raw table, or
    ``reason`` for a dead letter. ``event_time_ms`` is set for rows (progress); timestamps in ``row`` are
    epoch microseconds."""

    row: tuple[Any, ...] | None
    reason: str | None
    event_time_ms: int | None = None


class RecordConverter:
    """Turns record values of one source into raw-table rows (schema-typed) or malformed reasons."""

    def __init__(self, source: EventSource, event_schema: EventSchema, scales: Mapping[str, int] | None = None,
                 schemas_dir: Any = None):
        self.source = source
        self.event_schema = event_schema
        self.validate: Validate = validator(event_schema.name, schemas_dir or event_schema.path.parent)
        doc = json.loads(event_schema.path.read_text(encoding="utf-8"))
        self.doc: Mapping[str, Any] = doc
        self.fast = FastValidator(doc)
        self.scales = dict(scales or {})
        self.fields = [(f.name, f.type) for f in event_schema.fields]
        self.columns: tuple[str, ...] = tuple(name for name, _ in self.fields)
        # After the fast validator, declared values already have their JSON type: only these need converting.
        props = doc.get("properties", {})
        natural = {"string": "string", "int64": "integer", "bool": "boolean"}
        self._convert_idx = [i for i, (name, ftype) in enumerate(self.fields)
                             if name != source.event_time and not self._natural(props.get(name, {}), natural.get(ftype))]
        self._event_idx = self.columns.index(source.event_time) if source.event_time in self.columns else None
        self._day_cache: dict[str, int] = {}

    @staticmethod
    def _natural(prop: Mapping[str, Any], json_type: str | None) -> bool:
        """True if a certainly-valid value of this property is already its column's Python type."""
        if json_type is None or "x-skewless-type" in prop:
            return False
        declared = prop.get("type")
        declared = [declared] if isinstance(declared, str) else list(declared or [])
        return [t for t in declared if t != "null"] == [json_type]

    # -- pieces -------------------------------------------------------------------------------------

    def event_time_ms(self, value: Any) -> int:
        """:func:`parse_event_time` with a fast path for ``YYYY-MM-DDTHH:MM:SS.fffZ`` (same result)."""
        if isinstance(value, str) and len(value) == 24 and value[23] == "Z" and value[19] == "." and _TS_RE.match(value):
            day = value[:10]
            base = self._day_cache.get(day)
            if base is None:
                base = parse_event_time(day + "T00:00:00.000Z")
                if len(self._day_cache) > 10_000:
                    self._day_cache.clear()
                self._day_cache[day] = base
            h, m, s = int(value[11:13]), int(value[14:16]), int(value[17:19])
            if h <= 23 and m <= 59 and s <= 59:
                ms = base + ((h * 60 + m) * 60 + s) * 1000 + int(value[20:23])
                if ms < base + MS_PER_DAY:
                    return ms
        return parse_event_time(value)

    def _column(self, name: str, ftype: str, value: Any) -> Any:
        if value is None:
            return None
        if ftype == "string":
            if isinstance(value, str):
                return value
        elif ftype == "int64":
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():  # JSON Schema counts 1.0 as an integer
                return int(value)
        elif ftype == "float64":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif ftype == "bool":
            if isinstance(value, bool):
                return value
        elif ftype == "timestamp":
            return self.event_time_ms(value) * 1000
        elif ftype == "decimal":
            return self._decimal(name, value)
        raise MalformedError(f"field {name!r}: {value!r} is not a {ftype} (the raw table column type)")

    def _decimal(self, name: str, value: Any) -> Decimal:
        """The contract's decimal reading (``admission._to_decimal``), then the column's scale and precision."""
        result = to_decimal(value, name)
        assert result is not None  # _column handles null
        scale = self.scales.get(name, 9)
        exponent = result.as_tuple().exponent
        if isinstance(exponent, int) and -exponent > scale:
            raise MalformedError(f"decimal field {name!r}: {value!r} has more than {scale} fraction digits (column decimal(38, {scale}))")
        quantized = result.quantize(Decimal(1).scaleb(-scale))
        if len(quantized.as_tuple().digits) > 38:
            raise MalformedError(f"decimal field {name!r}: {value!r} does not fit decimal(38, {scale})")
        return quantized

    # -- the record ---------------------------------------------------------------------------------

    def convert(self, value: bytes | None) -> Converted:
        """The row for a record value, or the malformed reason (never raises :class:`MalformedError`)."""
        source = self.source
        try:
            payload = fast_parse(value) if type(value) is bytes else parse_payload(value)  # type: ignore[arg-type]
            certain = self.fast.certainly_valid(payload)
            if not certain:
                problem = self.validate(payload)
                if problem:
                    raise MalformedError(f"schema: {problem}")
            event_ms = self.event_time_ms(payload.get(source.event_time))
            key_value(payload, source.event_id, "event id")
            if source.partition_key:
                key_value(payload, source.partition_key, "key")
            get = payload.get
            if certain:
                values = [get(name) for name in self.columns]
                for i in self._convert_idx:
                    name, ftype = self.fields[i]
                    values[i] = self._column(name, ftype, values[i])
            else:
                values = [self._column(name, ftype, get(name)) for name, ftype in self.fields]
            if self._event_idx is not None:
                values[self._event_idx] = event_ms * 1000
            return Converted(tuple(values), None, event_ms)
        except MalformedError as exc:
            return Converted(None, str(exc))
