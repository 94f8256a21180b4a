"""PyFlink environments with the pinned Kafka connector and an explicit Python interpreter.

The same factories serve the local MiniCluster (tests, ``python job.py``) and jobs submitted to the
session cluster with ``flink run -py`` (where the cluster config supplies the same settings).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Mapping

from skewless.engines import find_jar

KAFKA_CONNECTOR_PREFIX = "flink-sql-connector-kafka-"


def kafka_connector_jar() -> Path:
    """The shaded Kafka SQL/DataStream connector (infra/.cache/jars/flink/)."""
    return find_jar("flink", KAFKA_CONNECTOR_PREFIX)


def flink_settings(
    parallelism: int = 1,
    checkpoint_dir: str | Path | None = None,
    checkpoint_interval: str = "10 s",
    mini_batch: bool = False,
    mini_batch_latency: str = "1 s",
    mini_batch_size: int = 1000,
    python_executable: str | None = None,
    extra_conf: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The configuration skewless gives every PyFlink job, as plain key/value strings."""
    py = python_executable or sys.executable
    conf: dict[str, str] = {
        "pipeline.jars": kafka_connector_jar().resolve().as_uri(),
        "python.executable": py,
        "python.client.executable": py,
        "parallelism.default": str(parallelism),
        "table.local-time-zone": "UTC",
        "table.exec.source.idle-timeout": "5 s",
    }
    if checkpoint_dir is not None:
        uri = checkpoint_dir if isinstance(checkpoint_dir, str) and "://" in checkpoint_dir else Path(checkpoint_dir).resolve().as_uri()
        conf["execution.checkpointing.interval"] = checkpoint_interval
        conf["execution.checkpointing.dir"] = uri
    if mini_batch:
        conf["table.exec.mini-batch.enabled"] = "true"
        conf["table.exec.mini-batch.allow-latency"] = mini_batch_latency
        conf["table.exec.mini-batch.size"] = str(mini_batch_size)
    conf.update({k: str(v) for k, v in (extra_conf or {}).items()})
    return conf


def _configuration(conf: Mapping[str, str]):
    from pyflink.common import Configuration

    c = Configuration()
    for k, v in conf.items():
        c.set_string(k, v)
    return c


def create_table_env(
    streaming: bool = True,
    parallelism: int = 1,
    checkpoint_dir: str | Path | None = None,
    extra_conf: Mapping[str, str] | None = None,
    **settings,
):
    """A ``TableEnvironment`` (streaming or batch) configured by :func:`flink_settings`.

    ``settings`` are passed on to :func:`flink_settings` (mini_batch=True, mini_batch_latency, ...).
    """
    from pyflink.table import EnvironmentSettings, TableEnvironment

    conf = flink_settings(parallelism=parallelism, checkpoint_dir=checkpoint_dir, extra_conf=extra_conf, **settings)
    builder = EnvironmentSettings.new_instance()
    builder = builder.in_streaming_mode() if streaming else builder.in_batch_mode()
    t_env = TableEnvironment.create(builder.with_configuration(_configuration(conf)).build())
    return t_env


def create_stream_env(
    parallelism: int = 1,
    checkpoint_dir: str | Path | None = None,
    extra_conf: Mapping[str, str] | None = None,
    **settings,
):
    """``(StreamExecutionEnvironment, StreamTableEnvironment)`` sharing one configuration.

    Use it when SQL results go on to Python DataStream functions (``to_changelog_stream``).
    """
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import EnvironmentSettings, StreamTableEnvironment

    conf = flink_settings(parallelism=parallelism, checkpoint_dir=checkpoint_dir, extra_conf=extra_conf, **settings)
    env = StreamExecutionEnvironment.get_execution_environment(_configuration(conf))
    env.set_parallelism(parallelism)
    t_env = StreamTableEnvironment.create(
        env, EnvironmentSettings.new_instance().in_streaming_mode().with_configuration(_configuration(conf)).build()
    )
    return env, t_env
