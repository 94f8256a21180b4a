"""The raw archive as a stack service: one ``skewless archive run --source S`` process per Kafka-fed source.

`skewless stack up` starts these after Kafka is healthy and the sources' topics exist (docs/infra.md,
"The archive in the stack"); they are recorded in ``stack.json`` like every other service and stopped by
`skewless stack down` (SIGTERM: the archive commits the batch in hand, then exits). The archive keeps its
exactly-once state in the Iceberg tables, so a stop or crash at any moment is safe (docs/archive.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from skewless import config
from skewless.engines.kafka import metadata_ok
from skewless.profile import CONFIG_FILE_ENV, PROFILE_ENV, Profile, read_profile_file
from skewless.stack.base import Service, StackError, Started
from skewless.stack.kafka import create_topics
from skewless.stack.procs import spawn

PREFIX = "archive-"
DEFAULT_PARTITIONS = 3  # what `skewless submit` / `skewless produce` create a missing topic with


def kafka_fed_sources(repo_path: str | Path = "feature_defs") -> list[Any]:
    """The repository's event sources that have a topic (what the archive archives)."""
    from skewless.core.dsl import EventSource
    from skewless.core.repo import load_repository

    repo = load_repository(config.PROJECT_ROOT / repo_path if not Path(repo_path).is_absolute() else repo_path)
    return [s for s in repo.sources if isinstance(s, EventSource) and not s.is_batch_only]


def is_archive_service(name: str) -> bool:
    return name.startswith(PREFIX)


class ArchiveProcess(Service):
    """``skewless archive run --source <source>`` detached, logging to ``<logs>/archive-<source>.log``.

    ``profile``: ``(file, name)`` of the profile whose catalog the archive writes (the cluster topology's
    PostgreSQL catalog and ``s3://`` warehouse); None: the stack's own sqlite catalog."""

    start_timeout_s = 60.0

    def __init__(self, source: str, topic: str | None = None, kafka_port: int | None = None,
                 profile: tuple[Path, str] | None = None) -> None:
        self.source = source
        self.topic = topic
        self.name = f"{PREFIX}{source}"
        self.kafka_port = kafka_port or config.ports().kafka
        self.profile = profile

    def catalog_profile(self) -> Profile | None:
        """The profile the archive's catalog comes from (None: the stack's sqlite catalog)."""
        if self.profile is None:
            return None
        path, name = self.profile
        return read_profile_file(path).profiles[name]

    @property
    def bootstrap(self) -> str:
        return f"{config.HOST}:{self.kafka_port}"

    def ports(self) -> dict[str, int]:
        return {}  # a client only: listens on nothing

    def start(self, state_dir: Path, log_dir: Path) -> Started:
        log_file = log_dir / f"{self.name}.log"
        argv = [sys.executable, "-m", "skewless.cli", "archive", "run", "--source", self.source,
                "--bootstrap", self.bootstrap]
        env = None
        if self.profile is None:
            where = "catalog " + str(config.paths().catalog_db)
        else:
            env = {CONFIG_FILE_ENV: str(self.profile[0]), PROFILE_ENV: self.profile[1]}
            catalog = self.catalog_profile().catalog
            where = f"{catalog.type} catalog {catalog.uri or catalog.path}, warehouse {catalog.warehouse}"
        pid = spawn(argv, log_file, env=env, cwd=config.PROJECT_ROOT)
        endpoints = {"source": self.source, "table": where}
        if self.topic:
            endpoints["topic"] = self.topic
        return Started(self.name, (pid,), endpoints, log_file)

    def healthy(self) -> bool:
        """Kafka answers and the archive has not recorded a stop (e.g. incompatible schema drift)."""
        if not metadata_ok(self.bootstrap, timeout_s=3.0):
            return False
        try:
            from skewless.offline.archive_progress import archive_progress
            from skewless.engines.iceberg_catalog import load_catalog

            source = next((s for s in kafka_fed_sources() if s.name == self.source), None)
            if source is None:
                return False
            return archive_progress(load_catalog(profile=self.catalog_profile()), source).state != "stopped"
        except StackError:
            return False
        except Exception:  # noqa: BLE001 - tables not created yet: the process is still starting up
            return True


def archive_services(kafka_port: int | None = None, profile: tuple[Path, str] | None = None) -> list[ArchiveProcess]:
    """One archive process per Kafka-fed source of ``feature_defs/`` (into ``profile``'s catalog, if given)."""
    return [ArchiveProcess(s.name, s.topic, kafka_port, profile) for s in kafka_fed_sources()]


def ensure_source_topics(bootstrap: str, partitions: int = DEFAULT_PARTITIONS) -> list[str]:
    """Create every Kafka-fed source's topic that does not exist yet; return the topic names."""
    topics = sorted({s.topic for s in kafka_fed_sources()})
    if topics:
        create_topics(bootstrap, {t: partitions for t in topics})
    return topics
