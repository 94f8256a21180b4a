"""SparkSession factory with the Iceberg runtime and the shared sqlite JDBC catalog.

The catalog is named :data:`skewless.config.ICEBERG_CATALOG_NAME` and is the same sqlite file and
warehouse that :func:`skewless.engines.iceberg_catalog.load_catalog` opens with PyIceberg.

Every session also gets the batch path's jar (:mod:`skewless.engines.spark_jar`) on the driver's and executors' class path,
and ``file:`` paths go through its fork-free local file system (:data:`skewless.engines.spark_jar.LOCAL_FS_CLASS`: no
``chmod`` process per written file); ``SKEWLESS_SPARK_NIO_FS=0`` keeps Hadoop's own (for A/B runs).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping

from skewless.config import ICEBERG_CATALOG_NAME, paths, shared_catalog
from skewless.engines import find_jar
from skewless.engines.object_store import AWS_CHECKSUM_ENV, check_shared_catalog, is_secret_conf, spark_catalog_conf
from skewless.engines.spark_jar import LOCAL_FS_CLASS, batch_jar

ICEBERG_RUNTIME_PREFIX = "iceberg-spark-runtime-4.1_2.13-"
SQLITE_JDBC_PREFIX = "sqlite-jdbc-"
POSTGRES_JDBC_PREFIX = "postgresql-"
ICEBERG_AWS_PREFIX = "iceberg-aws-bundle-"
NIO_FS_ENV = "SKEWLESS_SPARK_NIO_FS"


def spark_jars(shared: bool = False) -> list[Path]:
    """The Iceberg Spark runtime and the sqlite JDBC driver (infra/.cache/jars/spark/); for the ``shared``
    (postgres) catalog also the PostgreSQL JDBC driver and Iceberg's AWS bundle (S3 FileIO)."""
    jars = [find_jar("spark", ICEBERG_RUNTIME_PREFIX), find_jar("spark", SQLITE_JDBC_PREFIX)]
    if shared:
        jars += [find_jar("spark", POSTGRES_JDBC_PREFIX), find_jar("spark", ICEBERG_AWS_PREFIX)]
    return jars


def nio_fs_enabled() -> bool:
    """Whether ``file:`` uses the fork-free file system (``SKEWLESS_SPARK_NIO_FS``, default on; ``0`` turns it off)."""
    value = os.environ.get(NIO_FS_ENV, "1").strip().lower()
    if value not in ("0", "1", "false", "true", "off", "on"):
        raise ValueError(f"{NIO_FS_ENV}={value!r}: use 1 (the fork-free local file system, default) or 0 (Hadoop's)")
    return value in ("1", "true", "on")


def jvm_conf() -> dict[str, str]:
    """The batch jar on the driver's and executors' class path, and ``spark.hadoop.fs.file.impl`` (unless off).

    Both must be there when the driver's JVM starts (a ``spark-submit`` passes them as ``--conf``): spark-submit
    resolves the ``spark.jars`` paths through Hadoop's ``file:`` file system, which Hadoop then caches, before it
    loads any jar, so ``spark.jars`` alone fails to find the class and a later ``fs.file.impl`` is not used.
    Executors find the class through ``spark.executor.extraClassPath`` on this machine and through ``spark.jars``
    elsewhere, so the jar is in ``spark.jars`` too (see :func:`session_jars`).
    """
    jar = str(batch_jar())
    conf = {"spark.driver.extraClassPath": jar, "spark.executor.extraClassPath": jar}
    if nio_fs_enabled():
        conf["spark.hadoop.fs.file.impl"] = LOCAL_FS_CLASS
    return conf


def session_jars(shared: bool = False) -> list[Path]:
    """What every session ships in ``spark.jars``: :func:`spark_jars` and the batch jar."""
    return [*spark_jars(shared), batch_jar()]


def catalog_conf(warehouse: str | Path | None = None, catalog_db: str | Path | None = None) -> dict[str, str]:
    """``spark.sql.catalog.<name>.*`` settings of the shared JDBC (sqlite, schema V1) catalog; without arguments,
    the profile's postgres catalog (S3 FileIO) if it names one."""
    shared = shared_catalog() if warehouse is None and catalog_db is None else None
    if shared is not None:
        return spark_catalog_conf(shared)
    wh = Path(warehouse or paths().warehouse).resolve()
    db = Path(catalog_db or paths().catalog_db).resolve()
    wh.mkdir(parents=True, exist_ok=True)
    db.parent.mkdir(parents=True, exist_ok=True)
    p = f"spark.sql.catalog.{ICEBERG_CATALOG_NAME}"
    return {
        p: "org.apache.iceberg.spark.SparkCatalog",
        f"{p}.type": "jdbc",
        f"{p}.uri": f"jdbc:sqlite:{db}",
        f"{p}.warehouse": wh.as_uri(),
        f"{p}.jdbc.schema-version": "V1",
    }


def spark_session(
    app_name: str,
    master: str = "local[2]",
    warehouse: str | Path | None = None,
    catalog_db: str | Path | None = None,
    driver_memory: str = "2g",
    shuffle_partitions: int = 4,
    extra_conf: Mapping[str, str] | None = None,
):
    """Get or create a SparkSession wired to the shared Iceberg catalog (UTC, small shuffles).

    ``driver_memory`` only takes effect if this call starts the JVM (the first session in a process).
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    catalog = shared_catalog() if warehouse is None and catalog_db is None else None
    shared = catalog is not None
    if catalog is not None:  # a wrong endpoint, bucket, credentials or database: one line before the JVM starts
        check_shared_catalog(catalog)
        # the driver's JVM inherits these (executors: spark.executorEnv.*, spark_catalog_conf)
        for key, value in AWS_CHECKSUM_ENV.items():
            os.environ.setdefault(key, value)
    conf: dict[str, str] = {
        "spark.jars": ",".join(str(j) for j in session_jars(shared)),
        "spark.driver.memory": driver_memory,
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.driver.host": "127.0.0.1",
        "spark.ui.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(shuffle_partitions),
        "spark.default.parallelism": "2",
        "spark.sql.extensions": "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions",
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
    }
    conf.update(jvm_conf())
    conf.update(catalog_conf(warehouse, catalog_db))
    conf.update({k: str(v) for k, v in (extra_conf or {}).items()})
    # credentials only once the JVM runs (as SQL settings, read when the catalog is first used): never in argv
    secret = {k: conf.pop(k) for k in [k for k in conf if is_secret_conf(k)]}
    builder = SparkSession.builder.appName(app_name).master(master)
    for k, v in conf.items():
        builder = builder.config(k, v)
    session = builder.getOrCreate()
    for k, v in secret.items():
        session.conf.set(k, v)
    return session
