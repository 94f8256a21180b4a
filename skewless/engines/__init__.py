"""Engine bootstrap shared by jobs and tests: PyFlink environments, Spark sessions and the Iceberg catalog.

Every entry point makes the JVM artifacts (from ``make setup``) and the Python interpreter explicit, so
a job behaves the same in a test MiniCluster, on the ``make up`` session cluster and under spark-submit.
"""

from __future__ import annotations

from pathlib import Path

from skewless.config import paths


class EngineSetupError(RuntimeError):
    """An engine cannot be created; the message names what is missing and the fix."""


def find_jar(subdir: str, prefix: str) -> Path:
    """The single pinned jar ``<jars>/<subdir>/<prefix>*.jar`` fetched by ``make setup``."""
    jar_dir = paths().jars / subdir
    found = sorted(jar_dir.glob(f"{prefix}*.jar"))
    if not found:
        raise EngineSetupError(
            f"missing JVM artifact {prefix}*.jar in {jar_dir}; run `make setup` "
            "(it runs `mvn -q -f infra/pom.xml package`), or point SKEWLESS_JARS_DIR at the jar cache"
        )
    if len(found) > 1:
        raise EngineSetupError(
            f"several versions of {prefix}*.jar in {jar_dir}: {[p.name for p in found]}; "
            "remove infra/.cache/jars and run `make setup` again"
        )
    return found[0]
