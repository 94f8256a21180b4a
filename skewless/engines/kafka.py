"""Kafka clients for jobs and the push path on any cluster (not only the dev stack's): a quiet, fast-failing
AdminClient, explicit topic creation (brokers run with ``auto.create.topics.enable=false``) and the producer."""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Mapping
from typing import Any

from skewless.config import kafka_client_properties, kafka_timeout_properties

# librdkafka logs every refused connection while the broker starts; keep health probes quiet.
_quiet = logging.getLogger("skewless.kafka.client")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


class KafkaAdminError(RuntimeError):
    """A topic could not be created; the message names the topic, the broker and Kafka's reason."""


def admin_client(bootstrap: str, timeout_s: float = 5.0) -> Any:  # -> confluent_kafka.admin.AdminClient
    """An AdminClient that fails fast and logs nothing while the broker is down (with the configured security
    settings, :func:`skewless.config.kafka_client_properties`)."""
    from confluent_kafka.admin import AdminClient

    ms = int(timeout_s * 1000)
    return AdminClient(
        {"bootstrap.servers": bootstrap, "socket.timeout.ms": ms, "socket.connection.setup.timeout.ms": ms, "logger": _quiet,
         **kafka_client_properties()}
    )


def metadata_ok(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """True if a metadata request to ``bootstrap`` returns at least one broker."""
    from confluent_kafka import KafkaException

    try:
        return bool(admin_client(bootstrap, timeout_s).list_topics(timeout=timeout_s).brokers)
    except KafkaException:
        return False


def create_topics(bootstrap: str, topics: Mapping[str, int], timeout_s: float = 30.0) -> None:
    """Create ``{name: partitions}`` with the brokers' default replication factor and ``min.insync.replicas``
    (1 on the single-node stack, 3 / 2 on the cluster topology); existing topics are left as they are."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    admin = admin_client(bootstrap, timeout_s)
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=n, replication_factor=-1) for name, n in topics.items()],
        operation_timeout=timeout_s,
        request_timeout=timeout_s,
    )
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout_s)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise KafkaAdminError(f"kafka: cannot create topic {name!r} on {bootstrap}: {exc}") from exc
    wait_for_partitions(admin, topics, timeout_s)


def wait_for_partitions(admin: Any, topics: Mapping[str, int], timeout_s: float) -> None:
    """Wait until the metadata lists every partition of ``topics`` with a leader: on several brokers a new
    topic's metadata reaches the broker that answers a few hundred ms after CreateTopics returns."""
    deadline = time.monotonic() + timeout_s
    while True:
        listed = admin.list_topics(timeout=max(1.0, deadline - time.monotonic())).topics
        missing = [name for name, n in topics.items()
                   if name not in listed or len(listed[name].partitions) < n
                   or any(p.leader < 0 for p in listed[name].partitions.values())]
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise KafkaAdminError(f"kafka: topics {missing} have no leader for every partition after {timeout_s:.0f} s "
                                  f"(fix: check the brokers' logs)")
        time.sleep(0.2)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of a message key: CRC32 of the key modulo the partition count (stable, explicit)."""
    return zlib.crc32(key) % partitions


def make_producer(bootstrap: str, **overrides: object) -> Any:  # -> confluent_kafka.Producer
    """A confluent-kafka Producer tuned for throughput (batching, lz4, idempotence), with the configured
    security settings and request timeouts (:func:`skewless.config.kafka_client_properties`,
    :func:`skewless.config.kafka_timeout_properties`; delivery itself retries until ``message.timeout.ms``)."""
    from confluent_kafka import Producer

    timeouts = kafka_timeout_properties()
    conf = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 20,
            "batch.num.messages": 10000, "compression.type": "lz4", "queue.buffering.max.messages": 500000,
            **timeouts, "request.timeout.ms": timeouts["socket.timeout.ms"], **kafka_client_properties()}
    conf.update(overrides)
    return Producer(conf)
