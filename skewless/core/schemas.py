"""Event schemas: JSON Schema (draft 2020-12) files in ``schemas/``, read as typed field lists.

``schemas/<name>.schema.json`` describes one source's payloads. :func:`load_schema` reads only what the
definition layer needs (field names, types, required/nullable, enums) without importing jsonschema, so
``skewless plan`` stays fast; :func:`validator` builds a full jsonschema validator for payloads.

Type mapping (the only types a feature definition sees):

==========================================  ==========
JSON Schema                                  type
==========================================  ==========
``string`` with ``format: date-time``        timestamp  (ISO-8601 UTC, ms precision, ``Z``)
``string`` with ``format: decimal``          decimal
``string``                                   string
``integer``                                  int64
``number``                                   float64
``boolean``                                  bool
==========================================  ==========

``"x-skewless-type"`` on a property overrides the mapping (one of :data:`TYPES`).
``"type": [T, "null"]`` marks a nullable field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from skewless.config import PROJECT_ROOT

TYPES = ("string", "int64", "float64", "decimal", "timestamp", "bool")
# decimal fields are decimal(DECIMAL_PRECISION, s) in every engine; s: "x-skewless-scale" on the property
DEFAULT_DECIMAL_SCALE = 9
DECIMAL_PRECISION = 38
NUMERIC_TYPES = frozenset({"int64", "float64", "decimal"})
# The pandas dtype of a value of each type, for training sets and online responses alike (nullable dtypes: a
# null stays null, an int stays an int). Timestamp features are epoch ms (docs/semantics.md §1); decimals stay
# Python ``Decimal`` values (``object``).
PANDAS_DTYPES = {"int64": "Int64", "timestamp": "Int64", "float64": "Float64", "string": "string", "bool": "boolean",
                 "decimal": "object"}


def pandas_dtype(value_type: str | None) -> str | None:
    """The pandas dtype name of a value type (:data:`PANDAS_DTYPES`); None for an unknown type (pandas infers)."""
    return PANDAS_DTYPES.get(value_type) if value_type is not None else None
DEFAULT_SCHEMAS_DIR = PROJECT_ROOT / "schemas"
_TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


class SchemaError(Exception):
    """A schema file is missing, unreadable or uses a type skewless cannot map."""


@dataclass(frozen=True)
class SchemaField:
    """One top-level property of an event schema."""

    name: str
    type: str
    required: bool = True
    nullable: bool = False
    enum: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class EventSchema:
    """The typed fields of one schema file (``name`` is the file stem without ``.schema.json``)."""

    name: str
    path: Path
    fields: tuple[SchemaField, ...]

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> SchemaField | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None

    def type_of(self, name: str) -> str | None:
        f = self.field(name)
        return f.type if f else None

    def describe_fields(self) -> str:
        return ", ".join(self.field_names)


def schema_path(name: str, schemas_dir: Path | str | None = None) -> Path:
    """Where schema ``name`` lives: ``<schemas_dir>/<name>.schema.json``."""
    return Path(schemas_dir or DEFAULT_SCHEMAS_DIR) / f"{name}.schema.json"


def _field_type(name: str, prop: dict[str, Any], schema_name: str) -> tuple[str, bool]:
    declared = prop.get("type")
    types = [declared] if isinstance(declared, str) else list(declared or [])
    nullable = "null" in types
    types = [t for t in types if t != "null"]
    override = prop.get("x-skewless-type")
    if override is not None:
        if override not in TYPES:
            raise SchemaError(
                f"schema '{schema_name}' field '{name}': x-skewless-type {override!r} is not one of {', '.join(TYPES)}"
            )
        return override, nullable
    if len(types) != 1:
        raise SchemaError(
            f"schema '{schema_name}' field '{name}': needs exactly one non-null JSON type, got {declared!r}; "
            "declare e.g. \"type\": \"string\" or [\"string\", \"null\"]"
        )
    jtype, fmt = types[0], prop.get("format")
    if jtype == "string":
        return {"date-time": "timestamp", "decimal": "decimal"}.get(fmt, "string"), nullable
    mapped = {"integer": "int64", "number": "float64", "boolean": "bool"}.get(jtype)
    if mapped is None:
        raise SchemaError(
            f"schema '{schema_name}' field '{name}': JSON type {jtype!r} has no feature type; "
            "use string, integer, number or boolean (nested objects and arrays are not features)"
        )
    return mapped, nullable


@lru_cache(maxsize=64)
def _load(path: Path, mtime_ns: int) -> tuple[dict[str, Any], EventSchema]:
    name = path.name.removesuffix(".schema.json")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SchemaError(f"schema '{name}' ({path}) is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("type") != "object" or not isinstance(doc.get("properties"), dict):
        raise SchemaError(f"schema '{name}' ({path}) must be an object schema with \"properties\"")
    required = set(doc.get("required", ()))
    fields = []
    for fname, prop in doc["properties"].items():
        ftype, nullable = _field_type(fname, prop if isinstance(prop, dict) else {}, name)
        enum = prop.get("enum") if isinstance(prop, dict) else None
        fields.append(SchemaField(fname, ftype, fname in required, nullable, tuple(enum) if enum else None))
    return doc, EventSchema(name, path, tuple(fields))


def _read(name: str, schemas_dir: Path | str | None) -> tuple[dict[str, Any], EventSchema]:
    path = schema_path(name, schemas_dir).resolve()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        raise SchemaError(f"schema '{name}' not found: no file {path}") from None
    return _load(path, mtime)


def load_schema(name: str, schemas_dir: Path | str | None = None) -> EventSchema:
    """The typed fields of ``schemas/<name>.schema.json``; raises :class:`SchemaError`."""
    return _read(name, schemas_dir)[1]


def check_timestamp(value: object) -> bool:
    if not isinstance(value, str):
        return True  # type errors are reported by "type"
    if not _TIMESTAMP_RE.match(value):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def validator(name: str, schemas_dir: Path | str | None = None) -> Callable[[dict[str, Any]], str | None]:
    """A function ``validate(payload) -> None`` if the payload is valid, else the reason text.

    Formats are checked: ``date-time`` must be ISO-8601 UTC with millisecond precision and ``Z``.
    """
    import jsonschema  # imported here: `skewless plan` never needs it

    doc, _ = _read(name, schemas_dir)
    checker = jsonschema.FormatChecker(formats=())
    checker.checks("date-time")(check_timestamp)
    checker.checks("decimal")(lambda v: not isinstance(v, str) or re.fullmatch(r"-?\d+(\.\d+)?", v) is not None)
    cls = jsonschema.validators.validator_for(doc, default=jsonschema.Draft202012Validator)
    cls.check_schema(doc)
    compiled = cls(doc, format_checker=checker)

    def validate(payload: dict[str, Any]) -> str | None:
        error = jsonschema.exceptions.best_match(compiled.iter_errors(payload))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "(payload)"
        return f"{name}: {where}: {error.message}"

    return validate
