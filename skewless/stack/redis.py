"""Redis as a local process: Debian's ``redis-server`` with ``infra/redis/redis.conf`` on 127.0.0.1.

Health is a PING answered with PONG.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from skewless import config
from skewless.stack.base import Service, StackError, Started, port_in_use
from skewless.stack.procs import spawn

REDIS_CONF = config.PROJECT_ROOT / "infra" / "redis" / "redis.conf"


def redis_args(port: int, data_dir: str | Path) -> list[str]:
    """Arguments after the config file; the test image receives the same ones (its CMD)."""
    return ["--port", str(port), "--dir", str(data_dir)]


def ping(port: int, timeout_s: float = 2.0) -> bool:
    """True if Redis on 127.0.0.1:``port`` answers PING."""
    import redis

    client = redis.Redis(host=config.HOST, port=port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class RedisServer(Service):
    """Local ``redis-server``. Port defaults to skewless.config; pass it explicitly for tests."""

    name = "redis"
    start_timeout_s = 30.0

    def __init__(self, port: int | None = None, binary: str = "redis-server") -> None:
        self.port = port or config.ports().redis
        self.binary = binary

    @property
    def url(self) -> str:
        return config.redis_url(self.port)

    def ports(self) -> dict[str, int]:
        return {"redis": self.port}

    def start(self, state_dir: Path, log_dir: Path) -> Started:
        """Start detached with data (AOF) in ``state_dir/redis`` and log ``log_dir/redis.log``."""
        binary = shutil.which(self.binary)
        if binary is None:
            raise StackError(f"redis: `{self.binary}` not found; fix: make setup (apt-get install redis-server)")
        data_dir = state_dir / self.name
        data_dir.mkdir(parents=True, exist_ok=True)
        log_file = log_dir / "redis.log"
        pid = spawn([binary, str(REDIS_CONF), *redis_args(self.port, data_dir)], log_file)
        return Started(self.name, (pid,), {"url": self.url}, log_file)

    def healthy(self) -> bool:
        return port_in_use(self.port) and ping(self.port)
