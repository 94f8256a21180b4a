"""The Spark jar: the batch path's Java code (``batch_jobs/java/src``), built into one jar for the Spark driver and executors.

It holds :data:`LOCAL_FS_CLASS`, a ``file:`` file system that sets permissions without forking ``chmod``
(see ``NioRawLocalFileSystem.java``). The jar is compiled with the JDK's ``javac --release 17`` against
pyspark's own jars (``pyspark/jars``), named by the sources' hash (``infra/.cache/spark-java/``): ``make setup``
builds it, and :func:`batch_jar` builds it on first use when the sources changed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

from skewless.config import PROJECT_ROOT
from skewless.engines.javabuild import JavaProject

JAVA_SRC = PROJECT_ROOT / "batch_jobs" / "java" / "src"
JAR_DIR = PROJECT_ROOT / "infra" / ".cache" / "spark-java"
LOCAL_FS_CLASS = "dev.skewless.spark.NioLocalFileSystem"


def spark_jars_dir() -> Path:
    """pyspark's bundled Spark and Hadoop jars (the compile class path; the runtime has the same)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent / "jars"


def _classpath() -> Iterator[Path]:
    yield from sorted(spark_jars_dir().glob("*.jar"))


PROJECT = JavaProject(JAVA_SRC, JAR_DIR, "skewless-spark", release="17", classpath=_classpath)
jar_path = PROJECT.jar_path
batch_jar = PROJECT.jar  # the jar of the current sources, compiled now if missing (raises JavaBuildError)


if __name__ == "__main__":  # `make setup`: build the jar, print its path
    sys.exit(PROJECT.main("batch jvm"))
