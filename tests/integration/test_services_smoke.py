"""The service fixtures give real, working Kafka and Redis on 127.0.0.1."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.integration


def test_kafka_keyed_produce_consume(kafka_bootstrap: str, kafka_topic) -> None:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    topic = kafka_topic(partitions=3, prefix="smoke")
    meta = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(topic, timeout=30)
    assert len(meta.topics[topic].partitions) == 3

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all", "enable.idempotence": True})
    sent = {f"user-{i}".encode(): f"clicks={i}".encode() for i in range(12)}
    for key, value in sent.items():
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"{topic}-reader",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got: dict[bytes, bytes] = {}
    partitions_of: dict[bytes, set[int]] = {}
    deadline = time.monotonic() + 60
    try:
        while len(got) < len(sent) and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got[msg.key()] = msg.value()
            partitions_of.setdefault(msg.key(), set()).add(msg.partition())
    finally:
        consumer.close()

    assert got == sent
    assert all(len(p) == 1 for p in partitions_of.values())  # one key, one partition
    assert len(set().union(*partitions_of.values())) > 1  # 12 keys spread over the 3 partitions


def test_redis_set_get(redis_client) -> None:
    assert redis_client.dbsize() == 0  # flushed by the fixture
    redis_client.set("feature:user-1:clicks_1h", b"42")
    redis_client.hset("fv:user-1", mapping={"clicks_1h": "42", "spend_1d": "3.5"})
    assert redis_client.get("feature:user-1:clicks_1h") == b"42"
    assert redis_client.hgetall("fv:user-1") == {b"clicks_1h": b"42", b"spend_1d": b"3.5"}
    assert redis_client.config_get("appendonly") == {"appendonly": "yes"}  # our redis.conf, not a default
