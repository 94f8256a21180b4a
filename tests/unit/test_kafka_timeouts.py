"""Issue 19 item 2 (Kafka half): every Kafka client -- the producer (`skewless produce`, /push), the archive's
consumer, the streaming job's probe consumer, its Kafka source and its dead-letter sink -- gets request and
connect timeouts from ``SKEWLESS_KAFKA_TIMEOUT_S`` (before: librdkafka's and the Java client's defaults of
30-60 s, or none configured)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.kafka_configs import captured_kafka_configs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def kafka_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKEWLESS_KAFKA_TIMEOUT_S", "2.5")


def test_the_confluent_kafka_clients_get_the_configured_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    from skewless.archive.runner import ArchiveConfig, SourceArchiver
    from skewless.core.repo import load_repository
    from skewless.producer.kafka_producer import make_producer
    from streaming_jobs.job import applied_from

    source = load_repository(ROOT / "feature_defs").view("user_order_stats").source
    archiver = SourceArchiver.__new__(SourceArchiver)
    archiver.source, archiver.config = source, ArchiveConfig(bootstrap="b:1")
    seen = captured_kafka_configs(monkeypatch, lambda: make_producer("b:1"), lambda: applied_from("b:1", "t", "earliest"),
                                  archiver._make_consumer)
    producer, probe, archive = seen
    for conf in seen:
        assert conf["socket.timeout.ms"] == "2500" and conf["socket.connection.setup.timeout.ms"] == "2500", conf
    assert producer["request.timeout.ms"] == "2500", producer


def test_the_streaming_jobs_kafka_source_and_dead_letter_sink_get_them() -> None:
    from skewless.config import kafka_client_properties, kafka_timeout_properties
    from skewless.core.repo import load_repository
    from streaming_jobs.flink_compiler import compile_repository
    from streaming_jobs.job import kafka_source_options
    from streaming_jobs.sink import SinkConfig, sink_spec

    java = kafka_timeout_properties("flink")
    assert java["request.timeout.ms"] == "2500" and java["socket.connection.setup.timeout.ms"] == "2500"
    options = kafka_source_options({**kafka_client_properties("flink"), **java})
    assert "'properties.request.timeout.ms' = '2500'" in options
    repo = load_repository(ROOT / "feature_defs")
    job = compile_repository(repo)[0]
    spec = sink_spec(job, {v: repo.view(v) for v in job.views},
                     SinkConfig("redis://127.0.0.1:6379/0", "p", job.source, "t.dead-letters", "b:1", 0))
    assert json.loads(spec)["kafka_properties"]["request.timeout.ms"] == "2500"


def test_the_job_passes_them_to_its_kafka_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """What add_source_job gives the Kafka table source (before: only the security properties)."""
    import streaming_jobs.job as job_module

    seen: list[dict] = []

    def options(props: dict) -> str:
        seen.append(dict(props))
        raise RuntimeError("stop here")

    monkeypatch.setattr(job_module, "kafka_source_options", options)
    with pytest.raises(RuntimeError, match="stop here"):
        job_module.add_source_job(None, None, type("Job", (), {"source": "orders", "topic": "t"})(),
                                  job_module.JobOptions(bootstrap="b:1", redis_url="redis://x:1/0", project="p", repo_path="."))
    assert seen and seen[0]["request.timeout.ms"] == "2500", seen
