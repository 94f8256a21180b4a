"""The job's Java code (``streaming_jobs/java/``): admission rule 1 as a Flink SQL scalar function, and the sinks.

``skewless_admit(bytes_value, spec)`` parses a record value with Python ``json`` semantics and checks it
against the source's JSON Schema, event time and id/key fields exactly as ``skewless.core.admission`` does
(see docs/streaming.md); the spec is written by the compiler. The Redis and dead-letter sinks are
:mod:`streaming_jobs.sink`'s. The jar is built from the sources with the
JDK's ``javac`` against PyFlink's own jars and the pinned Kafka connector, named by the sources' hash (``infra/.cache/udf/``): ``make setup``
builds it, and :func:`udf_jar` builds it on first use when the sources changed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from skewless.engines.javabuild import JavaBuildError, JavaProject

JAVA_SRC = Path(__file__).resolve().parent / "java" / "src"
FUNCTION_CLASS = "dev.skewless.flink.AdmitFunction"
ADMISSION_CLASS = "dev.skewless.flink.Admission"
FUNCTION_NAME = "skewless_admit"
JAR_DIR = Path(__file__).resolve().parent.parent / "infra" / ".cache" / "udf"


class UdfBuildError(JavaBuildError):
    """The Java function could not be built (no JDK, or a compile error)."""


def flink_lib() -> Path:
    """PyFlink's bundled Flink jars (the compile classpath; the runtime has the same)."""
    import pyflink

    return Path(pyflink.__file__).resolve().parent / "lib"


def _classpath() -> Iterator[Path]:
    """PyFlink's jars and the Kafka connector (the dead letters use its KafkaSink; shipped in pipeline.jars too)."""
    from skewless.engines.flink_env import kafka_connector_jar

    yield from sorted(flink_lib().glob("*.jar"))
    yield kafka_connector_jar()


PROJECT = JavaProject(JAVA_SRC, JAR_DIR, "skewless-flink-udf", release="11", classpath=_classpath, error=UdfBuildError)
_sources = PROJECT.sources
jar_path = PROJECT.jar_path
udf_jar = PROJECT.jar  # the jar of the current sources, compiled now if it is missing


def classify(spec: str, values: list[bytes | None]) -> list[list[str | None]]:
    """:class:`Admission` over payloads in a plain JVM (tests): one result list per value."""
    import base64
    import json

    java = shutil.which("java")
    if java is None:
        raise UdfBuildError("java not found: install a JDK 17")
    lines = "".join(("-" if v is None else base64.b64encode(v).decode()) + "\n" for v in values)
    done = subprocess.run([java, "-cp", str(udf_jar()), ADMISSION_CLASS, spec], input=lines.encode(),
                          capture_output=True, check=False)
    if done.returncode != 0:
        raise UdfBuildError(f"{ADMISSION_CLASS} failed: {done.stderr.decode(errors='replace')}")
    return [json.loads(line) for line in done.stdout.decode().splitlines()]


if __name__ == "__main__":  # `make setup`: build the jar, print its path
    sys.exit(PROJECT.main("udf"))
