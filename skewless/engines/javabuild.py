"""Build a project jar from Java sources with the JDK's ``javac`` (shared by the Flink and the Spark jars).

A jar is named by the hash of its sources (``<prefix>-<sha256[:12]>.jar``), so a changed source builds a new
jar and an unchanged one is reused. The build compiles every ``*.java`` under the source root against a
given class path, zips the classes, and moves the jar into place atomically (concurrent builders of the
same sources write the same content).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable


class JavaBuildError(RuntimeError):
    """A jar could not be built (no JDK, or a compile error); the message names the fix."""


def java_sources(src_root: Path) -> list[Path]:
    """Every ``*.java`` under ``src_root``, in a stable order."""
    return sorted(src_root.rglob("*.java"))


def hashed_jar_path(src_root: Path, jar_dir: Path, prefix: str) -> Path:
    """``<jar_dir>/<prefix>-<hash>.jar``: the hash covers each source's relative path and bytes."""
    digest = hashlib.sha256()
    for src in java_sources(src_root):
        digest.update(src.relative_to(src_root).as_posix().encode() + b"\0" + src.read_bytes())
    return jar_dir / f"{prefix}-{digest.hexdigest()[:12]}.jar"


def build_jar(src_root: Path, jar: Path, classpath: Iterable[Path], release: str,
              error: type[Exception] = JavaBuildError) -> Path:
    """Compile ``src_root`` with ``javac --release <release>`` against ``classpath`` into ``jar`` (if missing).

    Raises ``error`` (a :class:`JavaBuildError` by default) when there is no ``javac``, no source, or the
    compile fails (with javac's output).
    """
    if jar.exists():
        return jar
    sources = java_sources(src_root)
    if not sources:
        raise error(f"no *.java under {src_root}: restore the sources (git checkout) before building {jar.name}")
    javac = shutil.which("javac")
    if javac is None:
        raise error("javac not found: install a JDK 17 (`make setup` installs openjdk-17-jdk-headless)")
    jar.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=jar.parent) as tmp:
        classes = Path(tmp) / "classes"
        cmd = [javac, "-nowarn", "--release", release, "-cp", os.pathsep.join(str(p) for p in classpath),
               "-d", str(classes), *map(str, sources)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise error(f"javac failed for {src_root}:\n{done.stdout}{done.stderr}")
        part = Path(tmp) / jar.name
        with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nCreated-By: skewless\n")
            for f in sorted(classes.rglob("*.class")):
                z.write(f, f.relative_to(classes).as_posix())
        os.replace(part, jar)  # atomic: concurrent builders write the same content
    return jar


@dataclass(frozen=True)
class JavaProject:
    """Java sources under ``src_root`` built into ``<jar_dir>/<prefix>-<hash>.jar`` against ``classpath()``."""

    src_root: Path
    jar_dir: Path
    prefix: str
    release: str
    classpath: Callable[[], Iterable[Path]]
    error: type[Exception] = JavaBuildError

    def sources(self) -> list[Path]:
        return java_sources(self.src_root)

    def jar_path(self) -> Path:
        """Where the jar of the current sources is (or will be) built."""
        return hashed_jar_path(self.src_root, self.jar_dir, self.prefix)

    def jar(self) -> Path:
        """The jar of the current sources, compiled now if it is missing (raises :attr:`error`)."""
        return build_jar(self.src_root, self.jar_path(), self.classpath(), self.release, self.error)

    def main(self, label: str) -> int:
        """``python -m <module>`` (``make setup``): build the jar and print its path; 1 with the error otherwise."""
        try:
            print(self.jar())
        except JavaBuildError as exc:
            print(f"{label}: {exc}", file=sys.stderr)
            return 1
        return 0
