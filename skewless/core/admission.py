"""Admission of raw Kafka records of one event source (docs/semantics.md, "Admission").

Deterministic, so the oracle, the streaming job and the batch job agree on every record. Records are
taken in (partition, offset) order; each one is, in this order of checks:

1. ``malformed``: not UTF-8, not a JSON object, duplicate JSON keys, NaN/Infinity, an integer outside
   int64, a schema violation (``validate``), a missing/null/wrongly typed event time, event id or key
   field -> dead letter (both paths).
2. ``future``: event time > Kafka record timestamp + ``clock_skew_tolerance`` -> dead letter (both paths).
3. ``late``: event time < (max event time of the earlier *admitted* records of the same partition)
   - ``allowed_lateness`` -> dead letter online; part of the offline set (unless a copy came first).
4. ``duplicate``: same (event id, event time) as an earlier admitted record of the same partition ->
   dropped (both paths) and counted.
5. otherwise ``admitted``: applied online; part of the offline set.

The offline set (batch, training) is every record passing 1 and 2, de-duplicated on (event id, event
time) within its partition, the first copy in offset order winning. A copy of an event that is itself
beyond the lateness horizon is ``late`` (not ``duplicate``): online it is dead-lettered, offline the
de-duplication drops it, so both paths hold the event once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Collection, Iterable, Mapping

from skewless.core.dsl import EventSource
from skewless.core.timeutil import td_ms, to_epoch_ms

MALFORMED = "malformed"
FUTURE = "future"
LATE = "late"
DEAD_LETTER_REASONS = (MALFORMED, FUTURE, LATE)

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Event times the contract accepts: 1970-01-01T00:00:00.000Z .. 9999-12-31T23:59:59.999Z.
MIN_EVENT_MS = 0
MAX_EVENT_MS = 253_402_300_799_999

PARTITION_FIELD = "_kafka_partition"
OFFSET_FIELD = "_offset"

_ISO_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})"
)

Validator = Callable[[Mapping[str, Any]], "str | None"]


class MalformedError(ValueError):
    """A record the contract classifies as ``malformed`` (the message says why)."""


def parse_event_time(value: Any) -> int:
    """An event time from a payload as epoch ms.

    Accepted: a JSON integer (epoch milliseconds), or an ISO-8601 string
    ``YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`` with 1-9 fraction digits (floored to the ms).
    A string without a zone, a float, a bool, or a time outside 1970..9999 is :class:`MalformedError`.
    """
    if isinstance(value, bool) or value is None:
        raise MalformedError(f"event time must be epoch ms (integer) or an ISO-8601 string with a zone, got {value!r}")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, str):
        match = _ISO_RE.fullmatch(value)
        if match is None:
            raise MalformedError(
                f"event time {value!r} is not ISO-8601 'YYYY-MM-DDTHH:MM:SS[.fff](Z|+HH:MM)' (a zone is required)"
            )
        year, month, day, hour, minute, second, fraction, zone = match.groups()
        if zone == "Z":
            offset = timedelta(0)
        else:
            zh, zm = int(zone[1:3]), int(zone[4:6])
            if zh > 23 or zm > 59:
                raise MalformedError(f"event time {value!r} has an invalid zone offset")
            offset = timedelta(hours=zh, minutes=zm) * (1 if zone[0] == "+" else -1)
        try:
            naive = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
        except ValueError as exc:
            raise MalformedError(f"event time {value!r} is not a valid date-time: {exc}") from None
        millis = int((fraction or "0")[:3].ljust(3, "0"))
        ms = to_epoch_ms(naive.replace(tzinfo=timezone.utc)) - td_ms(offset) + millis
    else:
        raise MalformedError(f"event time must be epoch ms (integer) or an ISO-8601 string, got {type(value).__name__}")
    if not MIN_EVENT_MS <= ms <= MAX_EVENT_MS:
        raise MalformedError(f"event time {value!r} is outside 1970-01-01..9999-12-31")
    return ms


def _reject_constant(name: str) -> Any:
    raise MalformedError(f"JSON constant {name} is not allowed")


def _object_without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise MalformedError(f"duplicate JSON key {key!r}")
        result[key] = value
    return result


def _check_ints(value: Any, path: str) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise MalformedError(f"{path}: integer {value} is outside int64")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_ints(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_ints(v, f"{path}[{i}]")


def parse_payload(raw: bytes | str) -> dict[str, Any]:
    """A record value as a JSON object, or :class:`MalformedError`."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedError("value is not UTF-8") from None
    if not isinstance(raw, str):
        raise MalformedError(f"value must be bytes or str, got {type(raw).__name__}")
    try:
        payload = json.loads(raw, object_pairs_hook=_object_without_duplicate_keys, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise MalformedError(f"not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise MalformedError(f"value must be a JSON object, got {type(payload).__name__}")
    _check_ints(payload, "$")
    return payload


def key_value(payload: Mapping[str, Any], field: str, what: str) -> str | int:
    """An event id or key field: a non-empty string or an integer (§6 rule 1), else MalformedError."""
    value = payload.get(field)
    if value is None:
        raise MalformedError(f"{what} field {field!r} is missing or null")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise MalformedError(f"{what} field {field!r} must be a string or an integer, got {value!r}")
    if isinstance(value, str) and value == "":
        raise MalformedError(f"{what} field {field!r} is empty")
    return value


def to_decimal(value: Any, field: str) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise MalformedError(f"decimal field {field!r} must be a JSON string like \"12.50\" (or an integer), got {value!r}")
    try:
        result = Decimal(value)
    except InvalidOperation:
        raise MalformedError(f"decimal field {field!r}: {value!r} is not a decimal number") from None
    if not result.is_finite():
        raise MalformedError(f"decimal field {field!r}: {value!r} is not finite")
    return result


@dataclass(frozen=True)
class DeadLetter:
    """A record refused with its reason (``malformed``, ``future`` or ``late``)."""

    partition: int
    offset: int
    reason: str
    detail: str
    event: Mapping[str, Any] | None = None  # the normalised event, when it parsed


@dataclass(frozen=True)
class AdmissionResult:
    """Classification of one source's records. ``admitted`` feeds the online path, ``offline`` the batch
    and training paths; both in (partition, offset) order."""

    admitted: tuple[dict[str, Any], ...]
    dead_letters: tuple[DeadLetter, ...]
    duplicates: tuple[dict[str, Any], ...]
    offline: tuple[dict[str, Any], ...]

    def counts(self) -> dict[str, int]:
        result = {"admitted": len(self.admitted), "duplicate": len(self.duplicates)}
        for reason in DEAD_LETTER_REASONS:
            result[reason] = sum(1 for d in self.dead_letters if d.reason == reason)
        return result


def normalise_event(
    payload: Mapping[str, Any],
    source: EventSource,
    partition: int,
    offset: int,
    *,
    key_fields: Collection[str] = (),
    decimal_fields: Collection[str] = (),
) -> dict[str, Any]:
    """A parsed payload as a contract event (event time as epoch ms, decimals as Decimal, plus
    ``_kafka_partition`` and ``_offset``), or :class:`MalformedError`."""
    event = dict(payload)
    event[source.event_time] = parse_event_time(payload.get(source.event_time))
    key_value(payload, source.event_id, "event id")
    for field in ([source.partition_key] if source.partition_key else []) + list(key_fields):
        key_value(payload, field, "key")
    for field in decimal_fields:
        if field in event:
            event[field] = to_decimal(event[field], field)
    event[PARTITION_FIELD] = partition
    event[OFFSET_FIELD] = offset
    return event


def _record_position(record: Mapping[str, Any]) -> tuple[int, int, int]:
    try:
        partition, offset, kafka_ts = record["partition"], record["offset"], record["timestamp_ms"]
    except KeyError as exc:
        raise ValueError(f"record lacks {exc.args[0]!r}: records are {{partition, offset, timestamp_ms, value}}") from None
    for name, v in (("partition", partition), ("offset", offset), ("timestamp_ms", kafka_ts)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"record {name} must be an int, got {v!r}")
    return partition, offset, kafka_ts


def admit(
    records: Iterable[Mapping[str, Any]],
    source: EventSource,
    validate: Validator | None = None,
    *,
    key_fields: Collection[str] = (),
    decimal_fields: Collection[str] = (),
) -> AdmissionResult:
    """Classify the records of one source's topic per the contract.

    ``validate(payload)`` returns None for a valid payload or a message (schema check, supplied by the
    caller). ``key_fields`` are the entity join keys of the views reading the source (each must be a
    non-null string or integer); ``decimal_fields`` are converted from JSON strings to Decimal.
    """
    if source.is_batch_only:
        raise ValueError(f"source {source.name!r} has no topic: batch-only sources are not admitted from Kafka")
    skew_ms = td_ms(source.clock_skew_tolerance)
    lateness_ms = td_ms(source.allowed_lateness)
    positioned = sorted(((*_record_position(r), r) for r in records), key=lambda x: (x[0], x[1]))
    for (p1, o1, *_), (p2, o2, *_) in zip(positioned, positioned[1:]):
        if (p1, o1) == (p2, o2):
            raise ValueError(f"two records at partition {p1} offset {o1}")

    admitted: list[dict[str, Any]] = []
    dead: list[DeadLetter] = []
    duplicates: list[dict[str, Any]] = []
    offline: list[dict[str, Any]] = []
    max_admitted_ts: dict[int, int] = {}
    admitted_ids: dict[int, set] = {}
    offline_ids: dict[int, set] = {}

    for partition, offset, kafka_ts, record in positioned:
        try:
            payload = parse_payload(record.get("value"))
            problem = validate(payload) if validate is not None else None
            if problem:
                raise MalformedError(f"schema: {problem}")
            event = normalise_event(
                payload, source, partition, offset, key_fields=key_fields, decimal_fields=decimal_fields
            )
        except MalformedError as exc:
            dead.append(DeadLetter(partition, offset, MALFORMED, str(exc)))
            continue
        ts = event[source.event_time]
        if ts > kafka_ts + skew_ms:
            dead.append(DeadLetter(partition, offset, FUTURE,
                                   f"event time {ts} > record timestamp {kafka_ts} + tolerance {skew_ms} ms", event))
            continue
        identity = (type(event[source.event_id]).__name__, event[source.event_id], ts)
        seen_offline = offline_ids.setdefault(partition, set())
        if identity not in seen_offline:
            seen_offline.add(identity)
            offline.append(event)
        high = max_admitted_ts.get(partition)
        if high is not None and ts < high - lateness_ms:
            dead.append(DeadLetter(partition, offset, LATE,
                                   f"event time {ts} < partition max {high} - allowed lateness {lateness_ms} ms", event))
            continue
        seen = admitted_ids.setdefault(partition, set())
        if identity in seen:
            duplicates.append(event)
            continue
        seen.add(identity)
        admitted.append(event)
        max_admitted_ts[partition] = ts if high is None else max(high, ts)

    return AdmissionResult(tuple(admitted), tuple(dead), tuple(duplicates), tuple(offline))


def dedupe_batch_only(rows: Iterable[Mapping[str, Any]], source: EventSource) -> tuple[dict[str, Any], ...]:
    """Events of a batch-only source: one per (event id, event time) (identical copies collapse; copies
    that differ are kept as the one with the smallest canonical JSON), ordered by (event time, event id)."""
    chosen: dict[tuple, tuple[str, dict[str, Any]]] = {}
    for row in rows:
        event = dict(row)
        event[source.event_time] = to_epoch_ms(event[source.event_time]) if not isinstance(
            event[source.event_time], str) else parse_event_time(event[source.event_time])
        event_id = key_value(event, source.event_id, "event id")
        identity = (type(event_id).__name__, event_id, event[source.event_time])
        canonical = json.dumps(event, sort_keys=True, default=str)
        if identity not in chosen or canonical < chosen[identity][0]:
            chosen[identity] = (canonical, event)
    return tuple(e for _, e in sorted(chosen.values(), key=lambda c: (c[1][source.event_time], _id_key(c[1][source.event_id]))))


def _id_key(event_id: str | int) -> tuple:
    return (0, event_id, "") if isinstance(event_id, int) else (1, 0, event_id)
