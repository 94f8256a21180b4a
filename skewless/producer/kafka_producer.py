"""Produce generated (or replayed) records to Kafka with confluent-kafka: explicit partition and record
timestamp, batching, delivery reports, flush."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from skewless.engines.kafka import make_producer
from skewless.producer.generator import GeneratedRecord


class ProduceError(RuntimeError):
    """Records were not acknowledged by Kafka."""


class ReplayFileError(ValueError):
    """A ``--replay`` file is not a run written by :func:`save_records`; the message names the file and line."""


@dataclass
class DeliveryReport:
    """What Kafka acknowledged: ``positions[seq] = (partition, offset)``."""

    delivered: int = 0
    failed: list[str] = field(default_factory=list)
    positions: dict[int, tuple[int, int]] = field(default_factory=dict)


def produce_records(
    bootstrap: str,
    topic: str,
    records: Iterable[GeneratedRecord],
    *,
    rate: float | None = None,
    wall_clock_timestamps: bool = False,
    on_sent: Callable[[GeneratedRecord, int], None] | None = None,
    producer=None,
    flush_timeout_s: float = 120.0,
) -> DeliveryReport:
    """Send records in order; pace to ``rate`` records/s if given. ``wall_clock_timestamps`` shifts every
    record timestamp (and only it: event times stay) by the offset between now and the first record, for
    live runs. ``on_sent(record, send_wall_ms)`` is called after each send (benchmarks)."""
    report = DeliveryReport()
    producer = producer or make_producer(bootstrap)

    def delivered(seq: int):
        def callback(err, msg) -> None:
            if err is not None:
                report.failed.append(f"seq {seq}: {err}")
            else:
                report.delivered += 1
                report.positions[seq] = (msg.partition(), msg.offset())
        return callback

    t0 = time.monotonic()
    shift = None
    for i, r in enumerate(records):
        if rate:
            ahead = i / rate - (time.monotonic() - t0)
            if ahead > 0.002:
                time.sleep(ahead)
        ts = r.timestamp_ms
        if wall_clock_timestamps:
            shift = int(time.time() * 1000) - r.timestamp_ms if shift is None else shift
            ts += shift
        while True:
            try:
                producer.produce(topic, value=r.value, key=r.key, partition=r.partition, timestamp=ts,
                                 on_delivery=delivered(r.seq))
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        if on_sent is not None:
            on_sent(r, int(time.time() * 1000))
    remaining = producer.flush(flush_timeout_s)
    if remaining or report.failed:
        raise ProduceError(f"{remaining} records unflushed, {len(report.failed)} failed: {report.failed[:5]}")
    return report


def save_records(path: str | Path, records: Iterable[GeneratedRecord]) -> None:
    """Write records as JSON lines (the ``--replay`` format)."""
    with open(path, "w", encoding="utf-8") as out:
        for r in records:
            out.write(json.dumps(r.to_json(), separators=(",", ":")) + "\n")


def load_records(path: str | Path) -> list[GeneratedRecord]:
    """Records from a JSON-lines file written by :func:`save_records` (:class:`ReplayFileError` names the first
    line that is not one)."""
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    records.append(GeneratedRecord.from_json(json.loads(line)))
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise ReplayFileError(f"{path} line {number} is not a saved record ({type(exc).__name__}: {exc}); "
                                          "give a file written by `skewless produce --save`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReplayFileError(f"cannot read {path}: {exc}") from None
    return records
