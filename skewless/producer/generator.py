"""A seeded generator of realistic ``orders`` records, including the bad input the pipeline must handle.

Pure: no Kafka, no clock. :func:`generate` returns records in production order, each with its Kafka key,
value bytes, explicit record timestamp and target partition (``partition_for(key)``: an entity's events
share a partition), plus a :class:`Manifest` of what was injected on purpose.

Simulated time starts at ``start_ms`` and advances ``1000 / rate`` ms per record (with quiet periods).
Injected kinds (fractions of all records):

- ``duplicate``: an earlier clean event re-sent byte for byte (same event id and event time);
- ``late``: event time more than ``allowed_lateness`` behind the partition's max admitted event time;
- ``future``: event time beyond ``clock_skew_tolerance`` after the record timestamp;
- ``malformed``: not JSON, a missing required field, or a wrongly typed field.

Clean events are out of order by up to ``max_disorder_ms`` (kept below allowed lateness minus clock
skew, so they are never late) and may be stamped slightly ahead of the record time (within the skew).
Users are Zipf-skewed; orders follow placed -> completed | cancelled, completed -> refunded sometimes.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from skewless.core.timeutil import iso_ms
from skewless.engines.kafka import partition_for

CLEAN = "clean"
DUPLICATE = "duplicate"
LATE = "late"
FUTURE = "future"
MALFORMED = "malformed"
KINDS = (CLEAN, DUPLICATE, LATE, FUTURE, MALFORMED)
CURRENCIES = ("EUR", "EUR", "EUR", "USD", "GBP", "CHF")


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate. Fractions are of all records; the rest are clean events."""

    count: int = 1000
    rate: float = 100.0  # records per simulated second
    start_ms: int = 1_704_067_200_000  # 2024-01-01T00:00:00Z
    seed: int = 0
    partitions: int = 3
    users: int = 200
    zipf_s: float = 1.2
    duplicate_fraction: float = 0.03
    late_fraction: float = 0.02
    future_fraction: float = 0.02
    malformed_fraction: float = 0.02
    max_disorder_ms: int = 120_000
    ahead_ms: int = 60_000  # clean events may be stamped up to this far after the record time (< skew)
    quiet_every: int = 0  # every N records, a quiet period (0 = never)
    quiet_ms: int = 600_000
    allowed_lateness_ms: int = 3_600_000
    clock_skew_ms: int = 300_000

    def __post_init__(self) -> None:
        if self.max_disorder_ms + self.ahead_ms >= self.allowed_lateness_ms:
            raise ValueError("max_disorder_ms + ahead_ms must stay below allowed_lateness_ms (clean events are never late)")
        if self.ahead_ms >= self.clock_skew_ms:
            raise ValueError("ahead_ms must stay below clock_skew_ms (clean events are never future)")
        if self.duplicate_fraction + self.late_fraction + self.future_fraction + self.malformed_fraction >= 1:
            raise ValueError("the injected fractions must sum to less than 1")


@dataclass(frozen=True)
class GeneratedRecord:
    """One Kafka record to produce, and what the generator meant it to be."""

    seq: int
    kind: str
    key: bytes | None
    value: bytes
    timestamp_ms: int
    partition: int
    event_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form (``value`` as text when UTF-8, else ``value_b64``) for replay files."""
        out = {"seq": self.seq, "kind": self.kind, "key": None if self.key is None else self.key.decode(),
               "timestamp_ms": self.timestamp_ms, "partition": self.partition, "event_id": self.event_id}
        try:
            out["value"] = self.value.decode("utf-8")
        except UnicodeDecodeError:
            import base64

            out["value_b64"] = base64.b64encode(self.value).decode()
        return out

    @staticmethod
    def from_json(data: dict[str, Any]) -> GeneratedRecord:
        if "value_b64" in data:
            import base64

            value = base64.b64decode(data["value_b64"])
        else:
            value = data["value"].encode("utf-8")
        key = data.get("key")
        return GeneratedRecord(int(data["seq"]), data.get("kind", CLEAN), None if key is None else key.encode(), value,
                               int(data["timestamp_ms"]), int(data["partition"]), data.get("event_id"))


@dataclass
class Manifest:
    """What was injected: counts per kind and the sequence numbers of every non-clean record."""

    config: dict[str, Any]
    counts: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    injected: dict[str, list[int]] = field(default_factory=lambda: {k: [] for k in KINDS if k != CLEAN})

    def add(self, record: GeneratedRecord) -> None:
        self.counts[record.kind] += 1
        if record.kind != CLEAN:
            self.injected[record.kind].append(record.seq)

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "counts": self.counts, "injected": self.injected}


class _Zipf:
    """Zipf(s) over ``n`` ranks by inverse CDF (deterministic with the caller's Random)."""

    def __init__(self, n: int, s: float) -> None:
        weights = [1.0 / (k ** s) for k in range(1, n + 1)]
        total = sum(weights)
        acc, self.cdf = 0.0, []
        for w in weights:
            acc += w / total
            self.cdf.append(acc)

    def sample(self, rng: random.Random) -> int:
        import bisect

        return min(bisect.bisect_left(self.cdf, rng.random()), len(self.cdf) - 1)


def generate(config: GeneratorConfig) -> tuple[list[GeneratedRecord], Manifest]:
    """``config.count`` records in production order, and the manifest of injected ones."""
    rng = random.Random(config.seed)
    zipf = _Zipf(config.users, config.zipf_s)
    users = [f"u{rng.randrange(16**6):06x}{i}" for i in range(config.users)]
    open_orders: list[dict[str, Any]] = []  # orders awaiting their next step
    max_ts: dict[int, int] = {}  # per partition: max event time of clean (admitted) events
    sent: list[GeneratedRecord] = []  # recent clean records, for duplicates
    manifest = Manifest(config=asdict(config))
    records: list[GeneratedRecord] = []
    clock = float(config.start_ms)
    step = 1000.0 / config.rate
    order_seq = 0
    thresholds = []
    acc = 0.0
    for kind, fraction in ((DUPLICATE, config.duplicate_fraction), (LATE, config.late_fraction),
                           (FUTURE, config.future_fraction), (MALFORMED, config.malformed_fraction)):
        acc += fraction
        thresholds.append((acc, kind))

    def next_event() -> dict[str, Any]:
        nonlocal order_seq
        if open_orders and rng.random() < 0.45:
            order = open_orders.pop(rng.randrange(len(open_orders)))
            if order["status"] == "placed":
                order["status"] = "completed" if rng.random() < 0.8 else "cancelled"
                if order["status"] == "completed" and rng.random() < 0.1:
                    open_orders.append(order)
            else:
                order["status"] = "refunded"
            return order
        order_seq += 1
        order = {"user_id": users[zipf.sample(rng)], "order_id": f"o{config.seed}-{order_seq}",
                 "amount": int(rng.lognormvariate(8.0, 1.0)) + 1, "currency": rng.choice(CURRENCIES), "status": "placed"}
        open_orders.append(order)
        return order

    for seq in range(config.count):
        clock += step
        if config.quiet_every and seq and seq % config.quiet_every == 0:
            clock += config.quiet_ms
        record_ts = int(clock)
        draw = rng.random()
        kind = next((k for t, k in thresholds if draw < t), CLEAN)
        if kind == DUPLICATE and not sent:
            kind = CLEAN
        if kind == DUPLICATE:
            original = sent[-1 - rng.randrange(min(len(sent), 50))]
            record = GeneratedRecord(seq, DUPLICATE, original.key, original.value, record_ts, original.partition,
                                     original.event_id)
        elif kind == MALFORMED:
            record = _malformed(rng, seq, record_ts, config, users)
        else:
            order = next_event()
            key = order["user_id"].encode()
            partition = partition_for(key, config.partitions)
            if kind == LATE and partition not in max_ts:
                kind = CLEAN
            if kind == LATE:
                ts = max_ts[partition] - config.allowed_lateness_ms - rng.randrange(1, 1_800_000)
            elif kind == FUTURE:
                ts = record_ts + config.clock_skew_ms + rng.randrange(1, 3_600_000)
            else:
                ts = record_ts - rng.randrange(config.max_disorder_ms + 1) + rng.randrange(config.ahead_ms + 1) // 4
                ts = max(ts, max_ts.get(partition, ts) - config.allowed_lateness_ms + config.ahead_ms)
            event_id = f"e{config.seed}-{seq}"
            payload = {"event_id": event_id, "user_id": order["user_id"], "order_id": order["order_id"],
                       "amount": order["amount"], "currency": order["currency"], "status": order["status"],
                       "event_time": iso_ms(ts)}
            record = GeneratedRecord(seq, kind, key, json.dumps(payload, separators=(",", ":")).encode(), record_ts,
                                     partition, event_id)
            if kind == CLEAN:
                max_ts[partition] = max(max_ts.get(partition, ts), ts)
                sent.append(record)
                del sent[:-200]
        manifest.add(record)
        records.append(record)
    return records, manifest


def _malformed(rng: random.Random, seq: int, record_ts: int, config: GeneratorConfig, users: list[str]) -> GeneratedRecord:
    user = rng.choice(users)
    key = user.encode()
    base = {"event_id": f"e{config.seed}-{seq}", "user_id": user, "order_id": f"bad-{seq}", "amount": 100,
            "currency": "EUR", "status": "placed", "event_time": iso_ms(record_ts)}
    variant = rng.randrange(6)
    if variant == 0:
        value = b'{"event_id": "' + base["event_id"].encode() + b'", not json'
    elif variant == 1:
        base.pop(rng.choice(["event_time", "user_id", "event_id", "amount"]))
        value = json.dumps(base).encode()
    elif variant == 2:
        base["amount"] = "100"
        value = json.dumps(base).encode()
    elif variant == 3:
        base["event_time"] = "2024-02-30T10:00:00.000Z"
        value = json.dumps(base).encode()
    elif variant == 4:
        base["status"] = "shipped"
        value = json.dumps(base).encode()
    else:
        value = b"\xff\xfe" + json.dumps(base).encode()  # not UTF-8
    return GeneratedRecord(seq, MALFORMED, key, value, record_ts, partition_for(key, config.partitions), base.get("event_id"))
