"""Kafka as a local process: one single-node KRaft broker+controller on 127.0.0.1.

Launched by ``infra/kafka/run-kafka.sh`` (the same script the test image runs) from the pinned jars
in ``infra/.cache/jars/kafka``. Health is a real metadata request, not an open port.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from skewless import config
from skewless.engines import kafka as kafka_clients
from skewless.engines.kafka import metadata_ok
from skewless.stack.base import Service, StackError, Started, port_in_use
from skewless.stack.procs import spawn

LAUNCH_SCRIPT = config.PROJECT_ROOT / "infra" / "kafka" / "run-kafka.sh"
DEFAULT_HEAP = "-Xms128m -Xmx512m"

def create_topics(bootstrap: str, topics: Mapping[str, int], timeout_s: float = 30.0) -> None:
    """:func:`skewless.engines.kafka.create_topics`, failing as the dev stack does (a StackError)."""
    try:
        kafka_clients.create_topics(bootstrap, topics, timeout_s)
    except kafka_clients.KafkaAdminError as exc:
        raise StackError(str(exc)) from exc


def kafka_jars(jars_dir: Path | None = None) -> Path:
    """The Kafka jar directory; raises StackError with the fix if it is empty."""
    jars = jars_dir or config.paths().jars / "kafka"
    if not any(jars.glob("kafka_2.13-*.jar")):
        raise StackError(f"kafka: no broker jars in {jars}; fix: make setup (runs mvn -q -f infra/pom.xml package)")
    return jars


class KafkaBroker(Service):
    """Single-node KRaft Kafka. Ports default to skewless.config; pass them explicitly for tests."""

    name = "kafka"
    start_timeout_s = 150.0

    def __init__(
        self,
        port: int | None = None,
        controller_port: int | None = None,
        jars_dir: Path | None = None,
        heap_opts: str = DEFAULT_HEAP,
    ) -> None:
        defaults = config.ports()
        self.port = port or defaults.kafka
        self.controller_port = controller_port or defaults.kafka_controller
        self.jars_dir = jars_dir
        self.heap_opts = heap_opts

    @property
    def bootstrap(self) -> str:
        return f"{config.HOST}:{self.port}"

    def ports(self) -> dict[str, int]:
        return {"broker": self.port, "controller": self.controller_port}

    def launch_env(self, state_dir: Path) -> dict[str, str]:
        """Environment of ``run-kafka.sh``; the data lives in ``state_dir``."""
        return {
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "KAFKA_STATE_DIR": str(state_dir),
            "KAFKA_JARS_DIR": str(kafka_jars(self.jars_dir)),
            "KAFKA_HEAP_OPTS": self.heap_opts,
        }

    def start(self, state_dir: Path, log_dir: Path) -> Started:
        """Start detached with data in ``state_dir/kafka`` and log ``log_dir/kafka.log``."""
        if shutil.which("java") is None:
            raise StackError("kafka: no `java` on PATH; fix: make setup (installs openjdk-17-jdk-headless)")
        log_file = log_dir / "kafka.log"
        pid = spawn(["bash", str(LAUNCH_SCRIPT)], log_file, env=self.launch_env(state_dir / self.name))
        return Started(self.name, (pid,), {"bootstrap": self.bootstrap}, log_file)

    def healthy(self) -> bool:
        return port_in_use(self.port) and metadata_ok(self.bootstrap, timeout_s=3.0)
