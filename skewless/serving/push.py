"""``push(source, events)``: validate a batch of events, then produce them to the source's topic.

Every event is checked BEFORE anything is sent, with the rules admission applies to Kafka records
(docs/semantics.md §6): a JSON object (no NaN/Infinity, integers within int64), the source's schema, an
event time that parses (§1) and is not beyond ``now + clock_skew_tolerance`` (it would be ``future``), an
event id and key fields (partition key and the join keys of the views reading the source: non-empty
strings or integers), decimal fields as strings of a finite decimal. One bad event refuses the whole batch
(:class:`PushError` lists each bad event's index and reason) and nothing is sent. Valid batches are produced
keyed by the partition key, to the partition :func:`skewless.engines.kafka.partition_for` gives (the
same as every other producer of the project, so one entity's events share a partition), then flushed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from skewless.core import admission
from skewless.core.dsl import EventSource, FeatureView
from skewless.core.timeutil import td_ms

MAX_PUSH_EVENTS = 10_000
log = logging.getLogger("skewless.push")


class PushError(ValueError):
    """Events were refused (nothing was sent). ``problems``: ``[(index, reason), ...]``."""

    def __init__(self, message: str, problems: list[tuple[int, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class PushDeliveryError(RuntimeError):
    """Kafka did not acknowledge every event in time, or is unreachable (some events may have been written)."""


@dataclass
class PushResult:
    """What Kafka acknowledged: per event (request order) its ``(partition, offset)``."""

    source: str
    topic: str
    delivered: int = 0
    positions: list[tuple[int, int] | None] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "topic": self.topic, "delivered": self.delivered,
                "positions": [None if p is None else {"partition": p[0], "offset": p[1]} for p in self.positions]}


@dataclass(frozen=True)
class _SourceRules:
    source: EventSource
    validate: Callable[[dict[str, Any]], str | None]
    key_fields: tuple[str, ...]
    decimal_fields: tuple[str, ...]


class Pusher:
    """Validated produce for the event sources of one repository (one Kafka producer, created on first use).

    A push takes at most ``timeout_s`` (default ``SKEWLESS_KAFKA_TIMEOUT_S``) once validated: metadata, waiting for
    an earlier push and delivery share that deadline, then :class:`PushDeliveryError`. Events not acknowledged by
    then are dropped by the producer (``message.timeout.ms``), never delivered late behind the caller's back.
    librdkafka's own log is off; Kafka going down and coming back are logged once each (``skewless.push``)."""

    def __init__(self, repo: Any, bootstrap: str | None = None, *, producer: Any = None,
                 max_events: int = MAX_PUSH_EVENTS, timeout_s: float | None = None) -> None:
        from skewless import config

        self.repo = repo
        if bootstrap is None:
            bootstrap = f"{config.HOST}:{config.ports().kafka}"
        self.bootstrap = bootstrap
        self.max_events = max_events
        self.timeout_s = config.kafka_timeout_s() if timeout_s is None else timeout_s
        self._producer = producer
        self._rules: dict[str, _SourceRules] = {}
        self._partitions: dict[str, int] = {}
        self._lock = threading.Lock()
        self._down: str | None = None  # why Kafka was last seen unavailable (None: fine or not known)

    def rules(self, source: str | EventSource) -> _SourceRules:
        name = source.name if isinstance(source, EventSource) else source
        cached = self._rules.get(name)
        if cached is not None:
            return cached
        from skewless.core.repo import unknown_message
        from skewless.core.schemas import validator

        sources = self.repo.sources_by_name
        src = sources.get(name) if isinstance(name, str) else None
        if not isinstance(src, EventSource):
            known = [n for n, s in sources.items() if isinstance(s, EventSource) and not s.is_batch_only]
            raise PushError(unknown_message("event source", str(name), known) if src is None else
                            f"source {name!r} is a table source: only event sources with a topic take pushes")
        if src.is_batch_only:
            raise PushError(f"source {name!r} has no topic (batch-only): push produces to a source's Kafka topic")
        keys: list[str] = []
        for v in self.repo.views:
            if isinstance(v, FeatureView) and v.source.name == src.name:
                keys += [k for k in v.entity.key_names if k not in keys]
        schema = self.repo.try_schema(src.schema)
        decimals = tuple(f.name for f in schema.fields if f.type == "decimal") if schema else ()
        rules = _SourceRules(src, validator(src.schema, self.repo.schemas_dir), tuple(keys), decimals)
        self._rules[name] = rules
        return rules

    def check(self, source: str | EventSource, events: Any) -> tuple[_SourceRules, list[tuple[bytes, bytes]]]:
        """``(rules, [(key, value), ...])`` of a valid batch, or :class:`PushError` naming every bad event."""
        rules = self.rules(source)
        if not isinstance(events, (list, tuple)):
            raise PushError(f"events must be a list of JSON objects, got {type(events).__name__}")
        if not events:
            raise PushError("no events to push")
        if len(events) > self.max_events:
            raise PushError(f"{len(events)} events in one push; the limit is {self.max_events}")
        src = rules.source
        horizon = int(time.time() * 1000) + td_ms(src.clock_skew_tolerance)
        problems: list[tuple[int, str]] = []
        out: list[tuple[bytes, bytes]] = []
        for i, event in enumerate(events):
            try:
                if not isinstance(event, Mapping):
                    raise admission.MalformedError(f"an event must be a JSON object, got {type(event).__name__}")
                try:
                    value = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
                except (TypeError, ValueError) as exc:
                    raise admission.MalformedError(f"not JSON-serialisable: {exc}") from None
                payload = admission.parse_payload(value)
                problem = rules.validate(payload)
                if problem:
                    raise admission.MalformedError(f"schema: {problem}")
                normal = admission.normalise_event(payload, src, 0, 0, key_fields=rules.key_fields,
                                                   decimal_fields=rules.decimal_fields)
                ts = normal[src.event_time]
                if ts > horizon:
                    raise admission.MalformedError(
                        f"event time {ts} is more than the clock-skew tolerance ({td_ms(src.clock_skew_tolerance)} ms) "
                        "ahead of now: the stream would dead-letter it as future")
                key = payload[src.partition_key] if src.partition_key else payload[src.event_id]
                out.append((str(key).encode("utf-8"), value.encode("utf-8")))
            except admission.MalformedError as exc:
                problems.append((i, str(exc)))
        if problems:
            shown = "; ".join(f"event {i}: {why}" for i, why in problems[:20])
            more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
            raise PushError(f"{len(problems)} of {len(events)} events refused, none sent: {shown}{more}", problems)
        return rules, out

    def _state(self, down: str | None) -> None:
        """Log Kafka's availability when it changes (one line per change, however often it is seen)."""
        if (down is None) != (self._down is None):
            if down is None:
                log.warning("Kafka at %s is reachable again", self.bootstrap)
            else:
                log.warning("Kafka at %s is unavailable: %s", self.bootstrap, down)
        self._down = down

    def _on_error(self, err: Any) -> None:
        """librdkafka's error callback (from poll/flush): transport errors mark Kafka unavailable."""
        self._state(str(err))

    def _producer_for(self) -> Any:  # called with self._lock held
        if self._producer is None:
            from skewless.engines.kafka import make_producer

            ms = max(1, int(self.timeout_s * 1000))
            self._producer = make_producer(self.bootstrap, **{
                "linger.ms": 1, "message.timeout.ms": ms, "socket.connection.setup.timeout.ms": max(1000, ms),
                "log_level": 0, "error_cb": self._on_error})
        return self._producer

    def _partition_count(self, topic: str, deadline: float) -> int:
        n = self._partitions.get(topic)
        if n is None:
            try:
                meta = self._producer_for().list_topics(topic, timeout=max(0.001, deadline - time.monotonic()))
            except Exception as exc:  # noqa: BLE001 - KafkaException (timeout, transport): Kafka is unavailable
                self._state(str(exc))
                raise PushDeliveryError(f"Kafka at {self.bootstrap} is unavailable (no metadata within "
                                        f"{self.timeout_s:g} s: {exc}); nothing was sent, retry later") from None
            t = meta.topics.get(topic)
            if t is None or t.error is not None or not t.partitions:
                raise PushDeliveryError(f"topic {topic!r} is not available on {self.bootstrap}: "
                                        f"{getattr(t, 'error', None) or 'no partitions'}")
            n = self._partitions[topic] = len(t.partitions)
        return n

    def push(self, source: str | EventSource, events: Iterable[Mapping[str, Any]]) -> PushResult:
        """Validate every event, then produce all of them and flush; see the module docstring."""
        events = list(events) if not isinstance(events, (list, tuple)) and isinstance(events, Iterable) else events
        rules, messages = self.check(source, events)
        return self.deliver(rules, messages)

    def deliver(self, rules: _SourceRules, messages: list[tuple[bytes, bytes]]) -> PushResult:
        """Produce a batch :meth:`check` accepted and wait for Kafka's acknowledgements, within ``timeout_s``."""
        deadline = time.monotonic() + self.timeout_s
        topic = rules.source.topic
        assert topic is not None
        if not self._lock.acquire(timeout=self.timeout_s):
            raise PushDeliveryError(f"Kafka at {self.bootstrap} did not take earlier pushes within {self.timeout_s:g} s "
                                    "(unavailable or overloaded); nothing was sent, retry later")
        try:
            return self._deliver(rules, messages, topic, deadline)
        finally:
            self._lock.release()

    def _deliver(self, rules: _SourceRules, messages: list[tuple[bytes, bytes]], topic: str, deadline: float) -> PushResult:
        from skewless.engines.kafka import partition_for

        producer = self._producer_for()
        partitions = self._partition_count(topic, deadline)
        result = PushResult(rules.source.name, topic, positions=[None] * len(messages))
        failed: list[str] = []

        def callback(i: int) -> Callable[[Any, Any], None]:
            def done(err: Any, msg: Any) -> None:
                if err is not None:
                    failed.append(f"event {i}: {err}")
                else:
                    result.positions[i] = (msg.partition(), msg.offset())
                    result.delivered += 1
            return done

        now = int(time.time() * 1000)
        for i, (key, value) in enumerate(messages):  # one push's events are produced together, in order (locked)
            while True:
                try:
                    producer.produce(topic, value=value, key=key, partition=partition_for(key, partitions),
                                     timestamp=now, on_delivery=callback(i))
                    break
                except BufferError:
                    if time.monotonic() > deadline:
                        raise PushDeliveryError(f"Kafka at {self.bootstrap} did not take the events within "
                                                f"{self.timeout_s:g} s; {i} of {len(messages)} queued, retry later") from None
                    producer.poll(0.05)
        # the producer drops what it could not deliver after message.timeout.ms: wait a little past it for those reports
        remaining = producer.flush(max(0.0, deadline - time.monotonic()) + 1.0)
        if remaining or failed:
            self._state(failed[0] if failed else f"{remaining} events unacknowledged")
            raise PushDeliveryError(f"Kafka at {self.bootstrap} did not acknowledge the push within {self.timeout_s:g} s: "
                                    f"{remaining} events unflushed, {len(failed)} failed: {failed[:5]}; retry later")
        self._state(None)
        return result

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.timeout_s)


def push_events(repo: Any, source: str | EventSource, events: Iterable[Mapping[str, Any]], *,
                bootstrap: str | None = None) -> PushResult:
    """One-shot :meth:`Pusher.push`."""
    return Pusher(repo, bootstrap).push(source, events)


__all__ = ["MAX_PUSH_EVENTS", "PushDeliveryError", "PushError", "PushResult", "Pusher", "push_events"]
