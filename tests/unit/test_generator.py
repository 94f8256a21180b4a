"""The order generator: deterministic, keyed by user, and every injected kind is what admission.py says."""

from __future__ import annotations

import json

from skewless.core import admission
from skewless.core.repo import load_repository
from skewless.core.schemas import validator
from skewless.producer import GeneratedRecord, GeneratorConfig, generate, partition_for


def _classify(records: list[GeneratedRecord]) -> dict[int, str]:
    source = load_repository().sources_by_name["orders"]
    offsets: dict[int, int] = {}
    raw, seq_at = [], {}
    for r in records:
        o = offsets.get(r.partition, 0)
        offsets[r.partition] = o + 1
        raw.append({"partition": r.partition, "offset": o, "timestamp_ms": r.timestamp_ms, "value": r.value})
        seq_at[(r.partition, o)] = r.seq
    res = admission.admit(raw, source, validator("orders"), key_fields=("user_id",))
    kinds = {s: "clean" for s in seq_at.values()}
    for d in res.dead_letters:
        kinds[seq_at[(d.partition, d.offset)]] = d.reason
    for e in res.duplicates:
        kinds[seq_at[(e["_kafka_partition"], e["_offset"])]] = "duplicate"
    return kinds


def test_injected_kinds_match_admission() -> None:
    records, manifest = generate(GeneratorConfig(count=4000, seed=3, quiet_every=500))
    kinds = _classify(records)
    assert {r.seq: r.kind for r in records} == kinds
    assert all(manifest.counts[k] > 40 for k in ("duplicate", "late", "future", "malformed"))
    assert sum(manifest.counts.values()) == 4000


def test_deterministic_keyed_and_skewed() -> None:
    a, _ = generate(GeneratorConfig(count=500, seed=9))
    b, _ = generate(GeneratorConfig(count=500, seed=9))
    assert a == b
    for r in a:
        if r.key is not None:
            assert r.partition == partition_for(r.key, 3)
    users = [json.loads(r.value)["user_id"] for r in a if r.kind == "clean"]
    top = max(users.count(u) for u in set(users))
    assert top > 5 * len(users) / len(set(users))  # Zipf: the busiest user far above the mean


def test_replay_round_trip(tmp_path) -> None:
    from skewless.producer.kafka_producer import load_records, save_records

    records, _ = generate(GeneratorConfig(count=300, seed=2))
    save_records(tmp_path / "r.jsonl", records)
    assert load_records(tmp_path / "r.jsonl") == records
