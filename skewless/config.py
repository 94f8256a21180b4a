"""Where things live and which ports they use: one place, each value overridable by environment.

Every service, script and test reads ports and paths from here (or from the same
``SKEWLESS_*`` environment variables in shell scripts), so that a port clash is fixed once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer port; unset it or give a number") from None


def _env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    return Path(raw).resolve() if raw else default


@dataclass(frozen=True)
class Ports:
    kafka: int
    kafka_controller: int
    flink_rest: int
    redis: int


@dataclass(frozen=True)
class Paths:
    root: Path
    state: Path  # runtime state of `make up`: pids, data, logs
    logs: Path
    jars: Path  # JVM artifacts fetched by `make setup` from infra/pom.xml
    warehouse: Path  # Iceberg warehouse (file://)
    catalog_db: Path  # Iceberg JDBC/SQL catalog (sqlite)


def ports() -> Ports:
    return Ports(
        kafka=_env_int("SKEWLESS_KAFKA_PORT", 9092),
        kafka_controller=_env_int("SKEWLESS_KAFKA_CONTROLLER_PORT", 9093),
        flink_rest=_env_int("SKEWLESS_FLINK_REST_PORT", 8081),
        redis=_env_int("SKEWLESS_REDIS_PORT", 6379),
    )


def paths() -> Paths:
    state = _env_path("SKEWLESS_STATE_DIR", PROJECT_ROOT / ".skewless")
    return Paths(
        root=PROJECT_ROOT,
        state=state,
        logs=_env_path("SKEWLESS_LOG_DIR", state / "logs"),
        jars=_env_path("SKEWLESS_JARS_DIR", PROJECT_ROOT / "infra" / ".cache" / "jars"),
        warehouse=_env_path("SKEWLESS_WAREHOUSE", state / "warehouse"),
        catalog_db=_env_path("SKEWLESS_CATALOG_DB", state / "catalog.db"),
    )


HOST = "127.0.0.1"  # every server we start listens on loopback only
ICEBERG_CATALOG_NAME = "skewless"  # same name for Spark's JdbcCatalog and PyIceberg's SqlCatalog
DEFAULT_PROJECT = "skewless"


def default_project() -> str:
    """Key prefix of the online store (the project): ``$SKEWLESS_PROJECT`` or ``skewless``."""
    return os.environ.get("SKEWLESS_PROJECT") or DEFAULT_PROJECT


def redis_url(port: int | None = None, db: int = 0) -> str:
    """The URL of the project's Redis on loopback (``port`` default: :func:`ports`' redis)."""
    return f"redis://{HOST}:{ports().redis if port is None else port}/{db}"
