"""The configuration each confluent-kafka client gets, without a broker: the unit tests of our Kafka settings
replace the client classes by a stand-in that records its configuration and stops the build there."""

from __future__ import annotations

from typing import Any, Callable

import pytest


class ClientBuilt(RuntimeError):
    """Raised by the stand-in client once it recorded its configuration."""


def captured_kafka_configs(monkeypatch: pytest.MonkeyPatch, *builds: Callable[[], Any]) -> list[dict]:
    """Call each of ``builds`` with confluent-kafka's ``Producer``, ``Consumer`` and ``AdminClient`` replaced by a
    stand-in that records its configuration and raises :class:`ClientBuilt`; returns the configurations in order,
    one per build."""
    import confluent_kafka
    import confluent_kafka.admin

    seen: list[dict] = []

    class Client:
        def __init__(self, conf: dict) -> None:
            seen.append(conf)
            raise ClientBuilt("stop here")

    monkeypatch.setattr(confluent_kafka, "Producer", Client)
    monkeypatch.setattr(confluent_kafka, "Consumer", Client)
    monkeypatch.setattr(confluent_kafka.admin, "AdminClient", Client)
    for build in builds:
        with pytest.raises(ClientBuilt):
            build()
    assert len(seen) == len(builds), seen
    return seen
