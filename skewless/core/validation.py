"""Every rule a feature repository must satisfy, checked all at once.

:func:`validate_repository` returns one :class:`Problem` per violation (definition kind + name, the
attribute, the bad value and the fix); :class:`DefinitionError` carries them all. The rule list is
in docs/definitions.md; each :class:`Problem` has a stable ``code`` naming its rule.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from skewless.core.dsl import (
    Agg,
    BinOp,
    Check,
    Const,
    DaysSince,
    Derived,
    Aggregation,
    Entity,
    EventSource,
    Expectation,
    FeatureService,
    FeatureView,
    Field,
    KeyType,
    Op,
    Ref,
    SnapshotView,
    TableSource,
    Where,
    Window,
)
from skewless.core.routing import BATCH_TILE_MS, is_stream_served
from skewless.core.schemas import NUMERIC_TYPES, TYPES, EventSchema, SchemaError
from skewless.core.timeutil import MS_PER_DAY, default_tile_ms, format_duration, td_ms

if TYPE_CHECKING:
    from skewless.core.repo import Repository

class UnknownFeatureError(LookupError):
    """A feature reference names no view, feature or service of the repository."""


NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
TABLE_RE = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")
SUMMABLE = frozenset({"int64", "decimal"})
ORDERED = frozenset({"int64", "float64", "decimal", "timestamp"})
# LAST takes the value of the latest event, so any scalar type works.
LAST_TYPES = frozenset(TYPES)
_KEY_TO_SCHEMA = {KeyType.STRING: "string", KeyType.INT64: "int64"}
# The longest duration a definition may give (windows, tiles, lateness, skew, SLA, TTL): 100 years. Event
# times run from 1970 to 9999, so every instant minus such a duration stays a valid date in Python, Spark,
# DuckDB and Flink, and every sum of instants and durations stays far inside int64 milliseconds.
MAX_DURATION_DAYS = 36_500
MAX_DURATION_MS = MAX_DURATION_DAYS * MS_PER_DAY


@dataclass(frozen=True)
class Problem:
    """One violated rule: ``<kind> '<name>'[ <where>]: <message>; <fix>``."""

    code: str  # stable rule id, e.g. "window.multiple"
    kind: str  # "feature view", "snapshot view", "entity", "event source", "table source", "feature service"
    name: str
    where: str  # e.g. "feature 'amount_sum_365d'"; "" for the definition itself
    message: str  # names the attribute and the bad value
    fix: str

    def __str__(self) -> str:
        where = f" {self.where}" if self.where else ""
        return f"{self.kind} '{self.name}'{where}: {self.message}; {self.fix}"


class DefinitionError(Exception):
    """The repository has problems; ``problems`` lists them all and the message shows every one."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems: tuple[Problem, ...] = tuple(problems)
        n = len(self.problems)
        lines = [f"{n} problem{'s' if n != 1 else ''} in the feature definitions:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


def _td(value: Any) -> str:
    return format_duration(td_ms(value)) if isinstance(value, timedelta) else repr(value)


def effective_tile_ms(window: Window) -> int:
    """The window's tile H in ms: the declared tile or the contract's default for the width."""
    width = td_ms(window.width) if isinstance(window.width, timedelta) else None
    return td_ms(window.tile) if isinstance(window.tile, timedelta) else default_tile_ms(width)


class _Checker:
    def __init__(self, repo: Repository):
        self.repo = repo
        self.problems: list[Problem] = []
        self._schemas: dict[str, EventSchema | None] = {}
        self._schema_reported: set[str] = set()

    def add(self, code: str, kind: str, name: str, where: str, message: str, fix: str) -> None:
        self.problems.append(Problem(code, kind, str(name), where, message, fix))

    def schema(self, name: Any, kind: str, owner: str) -> EventSchema | None:
        if not isinstance(name, str) or not name:
            self.add("source.schema", kind, owner, "", f"schema {name!r} is not a schema name",
                     "name a file of schemas/ without '.schema.json', e.g. schema=\"orders\"")
            return None
        if name not in self._schemas:
            try:
                self._schemas[name] = self.repo.schema(name)
            except SchemaError as exc:
                self._schemas[name] = None
                self.add("source.schema", kind, owner, "", f"schema {name!r} cannot be used: {exc}",
                         f"create or fix {self.repo.schemas_dir}/{name}.schema.json")
        return self._schemas[name]


# --- names ---------------------------------------------------------------------------------------


def _check_name(c: _Checker, kind: str, name: Any, where: str = "", owner: str | None = None) -> None:
    if isinstance(name, str) and NAME_RE.match(name) and not keyword.iskeyword(name):
        return
    suggestion = re.sub(r"[^a-z0-9_]+", "_", re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", str(name))).lower().strip("_")
    c.add("name.identifier", kind, owner if owner is not None else str(name), where,
          f"name {name!r} is not a lower snake case identifier (a-z, 0-9, _, starting with a letter, at most 63 chars, no Python keyword)",
          f"rename it, e.g. {suggestion or 'my_name'!r}")


def _check_unique(c: _Checker, kind: str, objs: Iterable[Any], code: str = "name.unique") -> None:
    seen: dict[str, Any] = {}
    for obj in objs:
        name = getattr(obj, "name", None)
        if not isinstance(name, str):
            continue
        if name in seen:
            c.add(code, kind, name, "", f"two different definitions are named {name!r}",
                  "give each a distinct name (or reuse the same object)")
        else:
            seen[name] = obj


def _check_view_versions(c: _Checker, views: Iterable[Any]) -> None:
    """Views share a name only as the two versions of a definition upgrade (docs/streaming.md, "Changing a
    definition while it serves"): two versions at most, distinct, of one kind and one entity's join keys."""
    by_name: dict[str, list[Any]] = {}
    for v in views:
        if isinstance(getattr(v, "name", None), str):
            by_name.setdefault(v.name, []).append(v)
    for name, group in by_name.items():
        if len(group) == 1:
            continue
        versions = [v.version for v in group]
        if len(group) > 2 or len(set(versions)) != len(versions):
            what = "two different" if len(group) == 2 else str(len(group))
            c.add("name.unique", "view", name, "", f"{what} definitions are named {name!r} (versions "
                  f"{', '.join(map(repr, versions))})", "declare at most two versions of one view (v1 and v2 during an "
                  "upgrade, each with its own version=) and give other views distinct names")
        elif type(group[0]) is not type(group[1]) or group[0].entity.join_keys != group[1].entity.join_keys:
            c.add("view.upgrade", "view", name, "", "its two versions differ in kind or entity join keys",
                  "an upgrade keeps the kind and the entity's join keys; declare a view with a new name instead")


# --- entities and sources ------------------------------------------------------------------------


def _check_entity(c: _Checker, e: Entity) -> None:
    _check_name(c, "entity", e.name)
    if not e.join_keys:
        c.add("entity.keys", "entity", e.name, "", "join_keys is empty",
              "declare at least one key, e.g. Entity(\"user\", {\"user_id\": \"string\"})")
    names = [k for k, _ in e.join_keys]
    for key, ktype in e.join_keys:
        _check_name(c, "entity", key, f"join key {key!r}", owner=e.name)
        if not isinstance(ktype, KeyType):
            c.add("entity.key_type", "entity", e.name, f"join key {key!r}", f"key type {ktype!r} is not valid",
                  f"use one of {', '.join(t.value for t in KeyType)}")
    dupes = sorted({k for k in names if names.count(k) > 1})
    for key in dupes:
        c.add("entity.key_unique", "entity", e.name, f"join key {key!r}", "the key is declared twice", "declare each key once")


def _check_field_of(c: _Checker, kind: str, owner: str, attr: str, value: Any, schema: EventSchema | None,
                    want: Iterable[str] | None, required: bool = True) -> None:
    if value is None and not required:
        return
    if schema is None:
        return
    ftype = schema.type_of(value) if isinstance(value, str) else None
    if ftype is None:
        c.add("source.field", kind, owner, "",
              f"{attr} {value!r} is not in schema '{schema.name}' (fields: {schema.describe_fields()})",
              f"name one of its fields or add it to {schema.path.name}")
    elif want is not None and ftype not in want:
        c.add("source.field_type", kind, owner, "",
              f"{attr} {value!r} has type {ftype} in schema '{schema.name}', needs {' or '.join(sorted(want))}",
              f"point {attr} at a {' or '.join(sorted(want))} field or fix {schema.path.name}")


def _check_duration(c: _Checker, code: str, kind: str, owner: str, where: str, attr: str, value: Any,
                    positive: bool, fix: str) -> None:
    ok = isinstance(value, timedelta) and (td_ms(value) > 0 if positive else value >= timedelta(0))
    if ok and td_ms(value) * 1000 != value // timedelta(microseconds=1):
        c.add("duration.ms", kind, owner, where, f"{attr} {value!r} is not a whole number of milliseconds",
              "round it to milliseconds")
    elif ok and td_ms(value) > MAX_DURATION_MS:
        c.add("duration.max", kind, owner, where,
              f"{attr} {_td(value)} is longer than the longest duration skewless accepts, {MAX_DURATION_DAYS}d "
              "(100 years: beyond it the engines' date arithmetic overflows)",
              f"use at most {MAX_DURATION_DAYS}d" + (", or Window.lifetime() for all history" if attr == "window width" else ""))
    elif not ok:
        c.add(code, kind, owner, where,
              f"{attr} must be a timedelta {'> 0' if positive else '>= 0'}, got {_td(value)}", fix)


def _check_event_source(c: _Checker, s: EventSource) -> None:
    kind = "event source"
    _check_name(c, kind, s.name)
    schema = c.schema(s.schema, kind, s.name)
    _check_table(c, kind, s.name, s.table)
    if s.topic is not None and (not isinstance(s.topic, str) or not TOPIC_RE.match(s.topic) or s.topic in (".", "..")):
        c.add("source.topic", kind, s.name, "",
              f"topic {s.topic!r} is not a valid Kafka topic name (1-249 chars of a-z A-Z 0-9 . _ -, not '.' or '..')",
              "rename the topic, e.g. \"orders\" (or topic=None for a batch-only source)")
    _check_field_of(c, kind, s.name, "event_time", s.event_time, schema, {"timestamp"})
    _check_field_of(c, kind, s.name, "event_id", s.event_id, schema, {"string", "int64"})
    _check_field_of(c, kind, s.name, "partition_key", s.partition_key, schema, {"string", "int64"}, required=False)
    _check_duration(c, "source.lateness", kind, s.name, "", "allowed_lateness", s.allowed_lateness, False,
                    "use timedelta(0) or more, e.g. timedelta(hours=1)")
    _check_duration(c, "source.clock_skew", kind, s.name, "", "clock_skew_tolerance", s.clock_skew_tolerance, False,
                    "use timedelta(0) or more, e.g. timedelta(minutes=5)")


def _check_table(c: _Checker, kind: str, owner: str, table: Any) -> None:
    if not isinstance(table, str) or not TABLE_RE.match(table):
        c.add("source.table", kind, owner, "", f"table {table!r} is not 'namespace.table' (lower snake case parts)",
              "name the Iceberg table like \"raw.orders\"")


def _check_table_source(c: _Checker, s: TableSource) -> None:
    kind = "table source"
    _check_name(c, kind, s.name)
    schema = c.schema(s.schema, kind, s.name)
    _check_table(c, kind, s.name, s.table)
    _check_field_of(c, kind, s.name, "timestamp", s.timestamp, schema, {"timestamp"})
    _check_field_of(c, kind, s.name, "created_at", s.created_at, schema, {"timestamp"}, required=False)


def _check_view_entity(c: _Checker, kind: str, view: Any, schema: EventSchema | None) -> None:
    e = view.entity
    if not isinstance(e, Entity):
        c.add("view.entity", kind, view.name, "", f"entity {e!r} is not an Entity", "pass an Entity object")
        return
    if schema is None:
        return
    for key, ktype in e.join_keys:
        ftype = schema.type_of(key) if isinstance(key, str) else None
        want = _KEY_TO_SCHEMA.get(ktype) if isinstance(ktype, KeyType) else None
        if ftype is None:
            c.add("view.join_key", kind, view.name, f"entity '{e.name}'",
                  f"join key {key!r} is not in schema '{schema.name}' (fields: {schema.describe_fields()})",
                  f"add {key!r} to {schema.path.name} or use an entity whose keys the source carries")
        elif want is not None and ftype != want:
            c.add("view.join_key_type", kind, view.name, f"entity '{e.name}'",
                  f"join key {key!r} is {ktype.value} in the entity but {ftype} in schema '{schema.name}'",
                  "make the entity key type and the schema field type agree")


def _check_common_view(c: _Checker, kind: str, v: Any) -> None:
    _check_name(c, kind, v.name)
    if isinstance(v.version, bool) or not isinstance(v.version, int) or v.version < 1:
        c.add("view.version", kind, v.name, "", f"version {v.version!r} is not an integer >= 1",
              "start at version=1 and bump it by one for each semantic change")
    _check_duration(c, "view.freshness_sla", kind, v.name, "", "freshness_sla", v.freshness_sla, True,
                    "give a positive timedelta, e.g. timedelta(minutes=5)")


# --- feature views -------------------------------------------------------------------------------


def _check_window(c: _Checker, view: FeatureView, f: Aggregation) -> None:
    kind, where, w = "feature view", f"feature '{f.name}'", f.window
    if not isinstance(w, Window):
        c.add("window.type", kind, view.name, where, f"window {w!r} is not a Window", "use e.g. Window.days(7)")
        return
    if w.width is not None:
        _check_duration(c, "window.width", kind, view.name, where, "window width", w.width, True,
                        "use a positive width, e.g. Window.hours(1), or Window.lifetime()")
    if w.tile is not None:
        _check_duration(c, "window.tile", kind, view.name, where, "window tile", w.tile, True,
                        "use a positive tile that divides a day, e.g. timedelta(minutes=5)")
    width_ok = w.width is None or (isinstance(w.width, timedelta) and td_ms(w.width) > 0)
    tile_ok = w.tile is None or (isinstance(w.tile, timedelta) and td_ms(w.tile) > 0)
    if not (width_ok and tile_ok):
        return
    width = td_ms(w.width) if w.width is not None else None
    tile = effective_tile_ms(w)
    label = format_duration(width)
    if MS_PER_DAY % tile != 0 and tile % MS_PER_DAY != 0:
        c.add("window.tile_alignment", kind, view.name, where,
              f"tile {format_duration(tile)} neither divides a day nor is a whole number of days, so epoch-aligned tiles would not line up with days",
              "use a tile such as 1m, 5m, 15m, 1h or 1d")
        return
    if width is None:
        if tile != BATCH_TILE_MS:
            c.add("window.lifetime_tile", kind, view.name, where,
                  f"a lifetime window has no width and is served from daily tiles, but tile is {format_duration(tile)}",
                  "drop the tile: Window.lifetime()")
        return
    if width % tile != 0:
        c.add("window.multiple", kind, view.name, where,
              f"window width {label} is not a multiple of its tile {format_duration(tile)}",
              f"use a width that is a whole number of {format_duration(tile)} tiles, or another tile")
        return
    if not is_stream_served(width) and tile != BATCH_TILE_MS:
        c.add("window.batch_tile", kind, view.name, where,
              f"window {label} is wider than 1 day, so batch and daily stream tiles serve it, but its tile is {format_duration(tile)}",
              "drop the tile (wider windows default to 1d tiles) or use a window of at most 1 day")
    if is_stream_served(width) and isinstance(view.source, EventSource) and view.source.is_batch_only:
        c.add("window.needs_stream", kind, view.name, where,
              f"window {label} is served from the stream only, but source '{view.source.name}' has no topic",
              "give the source a topic or use a window wider than 1 day")


def _value_matches(ftype: str, value: Any) -> bool:
    if ftype == "string":
        return isinstance(value, str)
    if ftype == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if ftype == "int64":
        return isinstance(value, int)
    if ftype == "float64":
        return isinstance(value, (int, float))
    if ftype == "decimal":
        return isinstance(value, (int, Decimal))
    if ftype == "timestamp":
        return isinstance(value, datetime)
    return False


_PYTHON_TYPE = {"string": "str", "bool": "bool", "int64": "int", "float64": "int or float",
                "decimal": "int or Decimal", "timestamp": "datetime (UTC)"}


def _check_where(c: _Checker, view: FeatureView, f: Aggregation, cond: Any, schema: EventSchema | None) -> None:
    kind, where = "feature view", f"feature '{f.name}'"
    if not isinstance(cond, Where):
        c.add("where.type", kind, view.name, where, f"where {cond!r} is not a Where", "use Where(field, op, value)")
        return
    if not isinstance(cond.op, Op):
        c.add("where.op", kind, view.name, where, f"where operator {cond.op!r} on {cond.field!r} is not valid",
              f"use one of {', '.join(o.value for o in Op)}")
    if schema is None:
        return
    sf = schema.field(cond.field) if isinstance(cond.field, str) else None
    if sf is None:
        c.add("where.field", kind, view.name, where,
              f"where field {cond.field!r} is not in schema '{schema.name}' (fields: {schema.describe_fields()})",
              f"fix the field name or add it to {schema.path.name}")
        return
    if not isinstance(cond.op, Op):
        return
    if cond.op is Op.IN:
        if not isinstance(cond.value, tuple) or not cond.value:
            c.add("where.in", kind, view.name, where, f"'in' on {cond.field!r} needs a non-empty tuple, got {cond.value!r}",
                  f"list the values, e.g. Where({cond.field!r}, \"in\", (...))")
            return
        values = cond.value
    else:
        if isinstance(cond.value, tuple) or cond.value is None:
            c.add("where.value_type", kind, view.name, where,
                  f"{cond.op.value!r} on {cond.field!r} needs one {_PYTHON_TYPE[sf.type]} value, got {cond.value!r}",
                  "compare with a single value (nulls never pass a filter), or use 'in' for a set")
            return
        values = (cond.value,)
        if cond.op not in (Op.EQ, Op.NE) and sf.type not in ORDERED:
            c.add("where.ordering", kind, view.name, where,
                  f"{cond.op.value!r} on {sf.type} field {cond.field!r} is not allowed (ordering of {sf.type} differs between engines)",
                  "use ==, != or in")
    for value in values:
        if not _value_matches(sf.type, value):
            c.add("where.value_type", kind, view.name, where,
                  f"where value {value!r} does not match the {sf.type} field {cond.field!r}",
                  f"give a {_PYTHON_TYPE[sf.type]} value")
        elif sf.enum is not None and value not in sf.enum:
            c.add("where.enum", kind, view.name, where,
                  f"where value {value!r} is not an allowed value of {cond.field!r} ({', '.join(map(str, sf.enum))})",
                  f"use one of the values in {schema.path.name}")


def _check_aggregation(c: _Checker, view: FeatureView, f: Aggregation, schema: EventSchema | None) -> None:
    kind, where = "feature view", f"feature '{f.name}'"
    _check_window(c, view, f)
    for cond in f.where:
        _check_where(c, view, f, cond, schema)
    if not isinstance(f.agg, Agg):
        c.add("agg.valid", kind, view.name, where, f"aggregation {f.agg!r} is not valid",
              f"use one of {', '.join('Agg.' + a.name for a in Agg)}")
        return
    if f.field is None:
        if f.agg is not Agg.COUNT:
            c.add("agg.needs_field", kind, view.name, where, f"Agg.{f.agg.name} needs a field, got None",
                  "name the event field to aggregate, e.g. \"amount\"")
        return
    if schema is None:
        return
    ftype = schema.type_of(f.field) if isinstance(f.field, str) else None
    if ftype is None:
        c.add("agg.field", kind, view.name, where,
              f"field {f.field!r} is not in schema '{schema.name}' (fields: {schema.describe_fields()})",
              f"fix the field name or add it to {schema.path.name}")
    elif f.agg in (Agg.SUM, Agg.AVG) and ftype not in SUMMABLE:
        c.add("agg.summable", kind, view.name, where,
              f"Agg.{f.agg.name} over {ftype} field {f.field!r} is refused (float sums differ between engines)"
              if ftype == "float64" else f"Agg.{f.agg.name} over {ftype} field {f.field!r} is not a number",
              "use integer minor units or decimal for the field (or Agg.COUNT)")
    elif f.agg in (Agg.MIN, Agg.MAX) and ftype not in ORDERED:
        c.add("agg.comparable", kind, view.name, where,
              f"Agg.{f.agg.name} over {ftype} field {f.field!r} is refused ({ftype} values are not ordered the same on every engine)",
              "aggregate a number or timestamp field, or use Agg.LAST")
    elif f.agg is Agg.LAST and ftype not in LAST_TYPES:
        c.add("agg.comparable", kind, view.name, where, f"Agg.LAST over {ftype} field {f.field!r} is not supported",
              "use a scalar field")


def names_of(items: Iterable[Any]) -> tuple[str, ...]:
    """Names of a view's features/fields, skipping malformed entries (validation reports those)."""
    return tuple(n for n in (getattr(i, "name", None) for i in items) if isinstance(n, str))


def _find(view: FeatureView, name: str) -> Any:
    return next((f for f in view.features if getattr(f, "name", None) == name), None)


def feature_type(view: FeatureView, name: str, schema: EventSchema | None, _seen: frozenset[str] = frozenset()) -> str | None:
    """The value type of a feature (``int64``, ``float64``, ``decimal``, ``timestamp``, ...), or None if unknown."""
    f = _find(view, name)
    if isinstance(f, Aggregation):
        if f.agg is Agg.COUNT:
            return "int64"
        if not isinstance(f.agg, Agg):
            return None
        ftype = schema.type_of(f.field) if schema is not None and isinstance(f.field, str) else None
        if f.agg is Agg.AVG:
            return "float64"  # float64(exact sum) / count, also of decimals (docs/semantics.md §4)
        return ftype
    if isinstance(f, Derived) and name not in _seen:
        return _expr_type(view, f.expr, schema, _seen | {name})
    return None


def _expr_type(view: FeatureView, expr: Any, schema: EventSchema | None, seen: frozenset[str]) -> str | None:
    if isinstance(expr, Ref):
        return feature_type(view, expr.feature, schema, seen)
    if isinstance(expr, Const):
        return "float64" if isinstance(expr.value, float) else "int64"
    if isinstance(expr, DaysSince):
        return "int64"
    if isinstance(expr, BinOp):
        if expr.op == "/":
            return "float64"
        types = {_expr_type(view, expr.left, schema, seen), _expr_type(view, expr.right, schema, seen)}
        return "float64" if "float64" in types else "decimal" if "decimal" in types else "int64"
    return None


def _walk_expr(c: _Checker, view: FeatureView, f: Derived, expr: Any, schema: EventSchema | None, refs: set[str]) -> None:
    kind, where = "feature view", f"feature '{f.name}'"
    if isinstance(expr, Ref):
        refs.add(expr.feature)
        if expr.feature not in names_of(view.features):
            c.add("derived.ref", kind, view.name, where,
                  f"Ref({expr.feature!r}) names no feature of this view (features: {', '.join(names_of(view.features))})",
                  "reference a feature of the same view by name")
        else:
            t = feature_type(view, expr.feature, schema)
            if t is not None and t not in NUMERIC_TYPES:
                c.add("derived.numeric", kind, view.name, where,
                      f"Ref({expr.feature!r}) is a {t} feature and cannot take part in arithmetic",
                      "use DaysSince(Ref(...)) for timestamps; arithmetic needs number features")
    elif isinstance(expr, Const):
        if isinstance(expr.value, bool) or not isinstance(expr.value, (int, float)):
            c.add("derived.const", kind, view.name, where, f"Const({expr.value!r}) is not a number", "use an int or float constant")
    elif isinstance(expr, BinOp):
        if expr.op not in ("+", "-", "*", "/"):
            c.add("derived.op", kind, view.name, where, f"operator {expr.op!r} is not valid", "use one of + - * /")
        _walk_expr(c, view, f, expr.left, schema, refs)
        _walk_expr(c, view, f, expr.right, schema, refs)
    elif isinstance(expr, DaysSince):
        if not isinstance(expr.ts, Ref):
            c.add("derived.days_since", kind, view.name, where, f"DaysSince({expr.ts!r}) needs a Ref",
                  "write DaysSince(Ref(\"last_order_ts\"))")
            return
        refs.add(expr.ts.feature)
        target = _find(view, expr.ts.feature)
        if target is None:
            c.add("derived.ref", kind, view.name, where,
                  f"DaysSince(Ref({expr.ts.feature!r})) names no feature of this view (features: {', '.join(names_of(view.features))})",
                  "reference a feature of the same view by name")
        elif not (isinstance(target, Aggregation) and target.agg in (Agg.LAST, Agg.MAX, Agg.MIN)
                  and schema is not None and schema.type_of(target.field) == "timestamp"):
            c.add("derived.days_since", kind, view.name, where,
                  f"DaysSince(Ref({expr.ts.feature!r})) needs a timestamp-valued feature, but {expr.ts.feature!r} is not",
                  "refer to a LAST or MAX aggregation of a timestamp field, e.g. Aggregation(\"last_order_ts\", Agg.MAX, \"event_time\", Window.lifetime())")
    else:
        c.add("derived.expr", kind, view.name, where, f"expression {expr!r} is not a Ref, Const, BinOp or DaysSince",
              "build expressions from Ref, Const, + - * / and DaysSince")


def _check_derived_cycles(c: _Checker, view: FeatureView, graph: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}
    reported: set[frozenset[str]] = set()

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                if frozenset(cycle) not in reported:
                    reported.add(frozenset(cycle))
                    c.add("derived.cycle", "feature view", view.name, f"feature '{dep}'",
                          f"derived features form a cycle: {' -> '.join(cycle)}", "break the cycle: a feature cannot depend on itself")
            elif dep in graph and state.get(dep) is None:
                visit(dep, path + [dep])
        state[node] = 2

    for name in graph:
        if state.get(name) is None:
            visit(name, [name])


def _check_feature_view(c: _Checker, v: FeatureView) -> None:
    kind = "feature view"
    _check_common_view(c, kind, v)
    schema = None
    if not isinstance(v.source, EventSource):
        c.add("view.source", kind, v.name, "", f"source {getattr(v.source, 'name', v.source)!r} is not an EventSource",
              "feature views read an EventSource; use a SnapshotView for a TableSource")
    else:
        schema = c.schema(v.source.schema, "event source", v.source.name)
    _check_view_entity(c, kind, v, schema)
    if not v.features:
        c.add("view.features", kind, v.name, "", "features is empty", "declare at least one Aggregation")
    names = [getattr(f, "name", None) for f in v.features]
    for dup in sorted({n for n in names if isinstance(n, str) and names.count(n) > 1}):
        c.add("feature.unique", kind, v.name, f"feature '{dup}'", "the name is used by more than one feature of this view",
              "give each feature of a view its own name")
    graph: dict[str, set[str]] = {}
    for f in v.features:
        if isinstance(f, Aggregation):
            _check_name(c, kind, f.name, f"feature {f.name!r}", owner=v.name)
            _check_aggregation(c, v, f, schema)
        elif isinstance(f, Derived):
            _check_name(c, kind, f.name, f"feature {f.name!r}", owner=v.name)
            refs: set[str] = set()
            _walk_expr(c, v, f, f.expr, schema, refs)
            graph[f.name] = refs
        else:
            c.add("feature.type", kind, v.name, "", f"feature {f!r} is not an Aggregation or Derived",
                  "declare features with Aggregation(...) or Derived(...)")
    _check_derived_cycles(c, v, graph)
    _check_expectations(c, kind, v, lambda name: feature_type(v, name, schema))


# --- snapshot views ------------------------------------------------------------------------------


def _check_snapshot_view(c: _Checker, v: SnapshotView) -> None:
    kind = "snapshot view"
    _check_common_view(c, kind, v)
    schema = None
    if not isinstance(v.source, TableSource):
        c.add("view.source", kind, v.name, "", f"source {getattr(v.source, 'name', v.source)!r} is not a TableSource",
              "snapshot views read a TableSource; use a FeatureView for an EventSource")
    else:
        schema = c.schema(v.source.schema, "table source", v.source.name)
    _check_view_entity(c, kind, v, schema)
    _check_duration(c, "snapshot.ttl", kind, v.name, "", "ttl", v.ttl, True, "give a positive timedelta, e.g. timedelta(days=1)")
    if not v.fields:
        c.add("view.features", kind, v.name, "", "fields is empty", "declare at least one Field")
    names = [getattr(f, "name", None) for f in v.fields]
    for dup in sorted({n for n in names if isinstance(n, str) and names.count(n) > 1}):
        c.add("feature.unique", kind, v.name, f"field '{dup}'", "the field is declared twice", "declare each field once")
    for f in v.fields:
        if not isinstance(f, Field):
            c.add("feature.type", kind, v.name, "", f"field {f!r} is not a Field", "declare fields with Field(name, dtype)")
            continue
        _check_name(c, kind, f.name, f"field {f.name!r}", owner=v.name)
        if f.dtype not in TYPES:
            c.add("snapshot.dtype", kind, v.name, f"field '{f.name}'", f"dtype {f.dtype!r} is not valid", f"use one of {', '.join(TYPES)}")
        if schema is None:
            continue
        stype = schema.type_of(f.name)
        if stype is None:
            c.add("snapshot.field", kind, v.name, f"field '{f.name}'",
                  f"field {f.name!r} is not in schema '{schema.name}' (fields: {schema.describe_fields()})",
                  f"fix the field name or add it to {schema.path.name}")
        elif f.dtype in TYPES and stype != f.dtype:
            c.add("snapshot.field_type", kind, v.name, f"field '{f.name}'",
                  f"dtype {f.dtype} does not match type {stype} in schema '{schema.name}'", f"declare Field({f.name!r}, {stype!r})")
    types = {f.name: f.dtype for f in v.fields if isinstance(f, Field)}
    _check_expectations(c, kind, v, lambda name: types.get(name))


# --- expectations, services ----------------------------------------------------------------------


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, Decimal)) and not isinstance(x, bool)


def _check_expectations(c: _Checker, kind: str, v: Any, type_of: Any) -> None:
    names = names_of(v.features if isinstance(v, FeatureView) else v.fields)
    for e in v.expectations:
        if not isinstance(e, Expectation):
            c.add("expectation.type", kind, v.name, "", f"expectation {e!r} is not an Expectation",
                  "use Expectation.not_null/range/allowed_values/max_null_rate")
            continue
        where = f"expectation {getattr(e.check, 'value', e.check)}({e.feature!r})"
        if e.feature not in names:
            c.add("expectation.feature", kind, v.name, where, f"feature {e.feature!r} is not in this view "
                  f"(features: {', '.join(names)})", "name a feature of the same view")
            continue
        ftype = type_of(e.feature)
        if e.check is Check.RANGE:
            lo, hi = e.arg("min"), e.arg("max")
            if lo is None and hi is None:
                c.add("expectation.range", kind, v.name, where, "range has neither min nor max", "give min, max or both")
            elif any(x is not None and not (_is_number(x) or isinstance(x, datetime)) for x in (lo, hi)):
                c.add("expectation.range", kind, v.name, where, f"range bounds min={lo!r}, max={hi!r} are not numbers", "use numbers")
            elif lo is not None and hi is not None and lo > hi:
                c.add("expectation.range", kind, v.name, where, f"range min={lo!r} is greater than max={hi!r}", "swap or fix the bounds")
            elif ftype is not None and ftype not in NUMERIC_TYPES and ftype != "timestamp":
                c.add("expectation.range", kind, v.name, where, f"range on {ftype} feature {e.feature!r}", "use allowed_values for non-numbers")
        elif e.check is Check.ALLOWED_VALUES:
            values = e.arg("values")
            if not isinstance(values, tuple) or not values:
                c.add("expectation.allowed_values", kind, v.name, where, f"allowed values {values!r} is empty", "list at least one value")
        elif e.check is Check.MAX_NULL_RATE:
            rate = e.arg("rate")
            if not _is_number(rate) or not 0 <= rate <= 1:
                c.add("expectation.rate", kind, v.name, where, f"null rate {rate!r} is not between 0 and 1", "use a fraction, e.g. 0.05")
        elif e.check is not Check.NOT_NULL:
            c.add("expectation.check", kind, v.name, where, f"check {e.check!r} is not valid", f"use one of {', '.join(x.value for x in Check)}")


def _check_service(c: _Checker, s: FeatureService) -> None:
    kind = "feature service"
    _check_name(c, kind, s.name)
    if s.name in c.repo.views_by_name:
        c.add("service.name_clash", kind, s.name, "", f"name {s.name!r} is also a view name, so the reference is ambiguous",
              "rename the service, e.g. '<model>_model'")
    if not s.features:
        c.add("service.features", kind, s.name, "", "features is empty", "list 'view:feature' or 'view' references")
    for ref in s.features:
        if isinstance(ref, str) and ref in c.repo.services_by_name:
            c.add("service.ref", kind, s.name, "", f"reference {ref!r} names a service; services cannot nest",
                  "list that service's features instead")
            continue
        try:
            c.repo.resolve_features([ref])
        except UnknownFeatureError as exc:
            c.add("service.ref", kind, s.name, "", str(exc), "reference an existing 'view:feature' or 'view'")
    dupes = sorted({r for r in s.features if isinstance(r, str) and s.features.count(r) > 1})
    for ref in dupes:
        c.add("service.duplicate", kind, s.name, "", f"reference {ref!r} is listed twice", "list each reference once")


def validate_repository(repo: Repository) -> list[Problem]:
    """Every problem of the repository (empty if it is valid). Never raises for bad definitions."""
    c = _Checker(repo)
    _check_unique(c, "entity", repo.entities)
    _check_unique(c, "source", repo.sources)
    _check_view_versions(c, repo.views)
    _check_unique(c, "feature service", repo.services)
    for e in repo.entities:
        _check_entity(c, e)
    for s in repo.sources:
        if isinstance(s, EventSource):
            _check_event_source(c, s)
        else:
            _check_table_source(c, s)
    for v in repo.views:
        if isinstance(v, FeatureView):
            _check_feature_view(c, v)
        else:
            _check_snapshot_view(c, v)
    for s in repo.services:
        _check_service(c, s)
    return _dedupe(c.problems)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[Problem] = set()
    return [p for p in problems if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]


def check_repository(repo: Repository) -> None:
    """Raise :class:`DefinitionError` with every problem, if any."""
    problems = validate_repository(repo)
    if problems:
        raise DefinitionError(problems)


def iter_notes(repo: Repository) -> Iterator[str]:
    """Non-fatal remarks about valid definitions (printed by ``skewless plan``)."""
    for v in repo.views:
        if isinstance(v, SnapshotView) and isinstance(v.source, TableSource) and v.source.created_at is None:
            keys = ", ".join(v.entity.key_names)
            yield (f"snapshot view '{v.name}': source '{v.source.name}' has no created_at, so two rows with the same "
                   f"({keys}, {v.source.timestamp}) are a data error (reported by batch checks, never silently picked)")
