"""The job's Java code (``streaming_jobs/java/``): admission rule 1 as a Flink SQL scalar function, and the sinks.

``skewless_admit(bytes_value, spec)`` parses a record value with Python ``json`` semantics and checks it
against the source's JSON Schema, event time and id/key fields exactly as ``skewless.core.admission`` does
(see docs/streaming.md); the spec is written by the compiler. The Redis and dead-letter sinks are
:mod:`streaming_jobs.sink`'s. The jar is built from the sources with the
JDK's ``javac`` against PyFlink's own jars and the pinned Kafka connector, named by the sources' hash (``infra/.cache/udf/``): ``make setup``
builds it, and :func:`udf_jar` builds it on first use when the sources changed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

JAVA_SRC = Path(__file__).resolve().parent / "java" / "src"
FUNCTION_CLASS = "dev.skewless.flink.AdmitFunction"
ADMISSION_CLASS = "dev.skewless.flink.Admission"
FUNCTION_NAME = "skewless_admit"
JAR_DIR = Path(__file__).resolve().parent.parent / "infra" / ".cache" / "udf"


class UdfBuildError(RuntimeError):
    """The Java function could not be built (no JDK, or a compile error)."""


def _sources() -> list[Path]:
    return sorted(JAVA_SRC.rglob("*.java"))


def flink_lib() -> Path:
    """PyFlink's bundled Flink jars (the compile classpath; the runtime has the same)."""
    import pyflink

    return Path(pyflink.__file__).resolve().parent / "lib"


def jar_path() -> Path:
    digest = hashlib.sha256()
    for src in _sources():
        digest.update(src.relative_to(JAVA_SRC).as_posix().encode() + b"\0" + src.read_bytes())
    return JAR_DIR / f"skewless-flink-udf-{digest.hexdigest()[:12]}.jar"


def udf_jar() -> Path:
    """The jar of the current sources, compiled now if it is missing."""
    jar = jar_path()
    if jar.exists():
        return jar
    javac = shutil.which("javac")
    if javac is None:
        raise UdfBuildError("javac not found: install a JDK 17 (`make setup` installs openjdk-17-jdk-headless)")
    from skewless.engines.flink_env import kafka_connector_jar

    # the sink's dead letters use the Kafka connector's KafkaSink (shipped in pipeline.jars at runtime too)
    classpath = os.pathsep.join([*(str(p) for p in sorted(flink_lib().glob("*.jar"))), str(kafka_connector_jar())])
    JAR_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=JAR_DIR) as tmp:
        classes = Path(tmp) / "classes"
        cmd = [javac, "-nowarn", "--release", "11", "-cp", classpath, "-d", str(classes), *map(str, _sources())]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise UdfBuildError(f"javac failed for {JAVA_SRC}:\n{done.stdout}{done.stderr}")
        part = Path(tmp) / jar.name
        with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nCreated-By: skewless\n")
            for f in sorted(classes.rglob("*.class")):
                z.write(f, f.relative_to(classes).as_posix())
        os.replace(part, jar)  # atomic: concurrent builders write the same content
    return jar


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
    try:
        print(udf_jar())
    except UdfBuildError as exc:
        print(f"udf: {exc}", file=sys.stderr)
        sys.exit(1)
