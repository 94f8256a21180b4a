"""The interface every locally started service implements (Kafka, Flink, Redis)."""

from __future__ import annotations

import abc
import socket
from dataclasses import dataclass
from pathlib import Path

from skewless.stack.procs import StackError, stop_pids  # noqa: F401 - StackError: every service's error, named here


@dataclass(frozen=True)
class Started:
    """What a start returned: the service, the pids it owns (stopped by pid, never by name), endpoints."""

    name: str
    pids: tuple[int, ...]
    endpoints: dict[str, str]
    log_file: Path


class Service(abc.ABC):
    name: str

    @abc.abstractmethod
    def ports(self) -> dict[str, int]:
        """Ports this service listens on (all on 127.0.0.1), by role."""

    @abc.abstractmethod
    def start(self, state_dir: Path, log_dir: Path) -> Started:
        """Start detached; return at once (health is awaited separately)."""

    @abc.abstractmethod
    def healthy(self) -> bool:
        """True when the service answers its protocol (not just an open port)."""

    def stop(self, started: Started, timeout_s: float = 20.0) -> None:
        stop_pids(started.pids, timeout_s)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on loopback (for tests that pick ports in advance)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
