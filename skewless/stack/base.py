"""The interface every locally started service implements (Kafka, Flink, Redis, and the cluster topology's nodes)."""

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


@dataclass(frozen=True)
class Node:
    """One process of a multi-node service: its role and client port (None: ephemeral ports only)."""

    role: str
    port: int | None


class NodeService(Service):
    """A service of several processes; ``nodes()`` lists them in the order of ``start()``'s pids."""

    @abc.abstractmethod
    def nodes(self) -> list[Node]:
        """One entry per process ``start`` launches, same order as ``Started.pids``."""

    def live_roles(self) -> dict[int, str]:
        """Client port -> the node's role right now, where it can change (a promoted replica)."""
        return {}

    def port_setting(self, role: str) -> str:
        """The setting that moves the port of ``role`` (for the preflight's "port taken" message)."""
        return "the base port in skewless/config.py"


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on loopback (for tests that pick ports in advance)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
