"""The job's Java code (``streaming_jobs/java/``): admission rule 1 as a Flink SQL scalar function, and the sinks.

``skewless_admit(bytes_value, spec)`` parses a record value with Python ``json`` semantics and checks it
against the source's JSON Schema, event time and id/key fields exactly as ``skewless.core.admission`` does
(see docs/streaming.md); the spec is written by the compiler. The Redis and dead-letter sinks are
:mod:`streaming_jobs.sink`'s. The jar is built from the sources with the
JDK's ``javac`` against PyFlink's own jars, the pinned Kafka connector and Redis client (Jedis), named by the sources' hash (``infra/.cache/udf/``): ``make setup``
builds it, and :func:`udf_jar` builds it on first use when the sources changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from skewless.engines.javabuild import JavaBuildError, JavaProject

JAVA_SRC = Path(__file__).resolve().parent / "java" / "src"
FUNCTION_CLASS = "dev.skewless.flink.AdmitFunction"
ADMISSION_CLASS = "dev.skewless.flink.Admission"
DEDUP_CLASS = "dev.skewless.flink.Dedup"
DEDUP_FUNCTION_CLASS = "dev.skewless.flink.DedupFunction"
FUNCTION_NAME = "skewless_admit"
JAR_DIR = Path(__file__).resolve().parent.parent / "infra" / ".cache" / "udf"
REDIS_CLIENT_DIR = "jedis"


class UdfBuildError(JavaBuildError):
    """The Java function could not be built (no JDK, or a compile error)."""


def flink_lib() -> Path:
    """PyFlink's bundled Flink jars (the compile classpath; the runtime has the same)."""
    import pyflink

    return Path(pyflink.__file__).resolve().parent / "lib"


def redis_client_jars() -> list[Path]:
    """Jedis and its dependencies (``infra/.cache/jars/jedis/``, pinned in infra/pom.xml): the Redis sink's client,
    shipped with the job next to the jar of these sources."""
    from skewless.config import paths

    jar_dir = paths().jars / REDIS_CLIENT_DIR
    jars = sorted(jar_dir.glob("*.jar"))
    if not any(j.name.startswith("jedis-") for j in jars):
        raise UdfBuildError(f"missing the Redis client jars (jedis-*.jar) in {jar_dir}; run `make setup` "
                            "(it runs `mvn -q -f infra/pom.xml package`)")
    return jars


def _classpath() -> Iterator[Path]:
    """PyFlink's jars, the Kafka connector (the dead letters use its KafkaSink) and the Redis client (both shipped
    in pipeline.jars too)."""
    from skewless.engines.flink_env import kafka_connector_jar

    yield from sorted(flink_lib().glob("*.jar"))
    yield kafka_connector_jar()
    yield from redis_client_jars()


PROJECT = JavaProject(JAVA_SRC, JAR_DIR, "skewless-flink-udf", release="11", classpath=_classpath, error=UdfBuildError)
_sources = PROJECT.sources
jar_path = PROJECT.jar_path
udf_jar = PROJECT.jar  # the jar of the current sources, compiled now if it is missing


def run_main(main_class: str, args: list[str], lines: str, with_flink: bool = False) -> list[str]:
    """A class's ``main`` from the jar in a plain JVM (tests; ``with_flink``: PyFlink's jars on the class path
    too): ``lines`` on stdin, stdout's lines back."""
    java = shutil.which("java")
    if java is None:
        raise UdfBuildError("java not found: install a JDK 17")
    classpath = [udf_jar(), *redis_client_jars(), *(sorted(flink_lib().glob("*.jar")) if with_flink else ())]
    done = subprocess.run([java, "-cp", os.pathsep.join(map(str, classpath)), main_class, *args], input=lines.encode(),
                          capture_output=True, check=False)
    if done.returncode != 0:
        raise UdfBuildError(f"{main_class} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode().splitlines()


def classify(spec: str, values: list[bytes | None]) -> list[list[str | None]]:
    """:class:`Admission` over payloads in a plain JVM (tests): one result list per value."""
    import base64
    import json

    lines = "".join(("-" if v is None else base64.b64encode(v).decode()) + "\n" for v in values)
    return [json.loads(line) for line in run_main(ADMISSION_CLASS, [spec], lines)]


def deduplicate(lateness_ms: int, rows: list[tuple[int, str | None, int]]) -> list[tuple[str, int]]:
    """:class:`Dedup` (rules 3-4 with its bounded state) over ``(partition, event id, ts)`` rows that passed rules
    1-2, in offset order per partition (tests): per row ``(late | duplicate | admitted, live entries of its partition)``."""
    import json

    lines = "".join(json.dumps(list(r)) + "\n" for r in rows)
    out = [line.split(" ") for line in run_main(DEDUP_CLASS, [str(lateness_ms)], lines)]
    return [(outcome, int(live)) for outcome, live in out]


def dedup_subtasks(max_parallelism: int, parallelism: int, partitions: int) -> list[tuple[int, int]]:
    """Per Kafka partition, the Deduplicate's key and the subtask Flink gives it (tests)."""
    out = run_main(DEDUP_FUNCTION_CLASS, [str(max_parallelism), str(parallelism), str(partitions)], "", with_flink=True)
    return [(int(k), int(s)) for k, s in (line.split(" ") for line in out)]


if __name__ == "__main__":  # `make setup`: build the jar, print its path
    sys.exit(PROJECT.main("udf"))
