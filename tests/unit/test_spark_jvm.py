"""The batch jar (``batch_jobs/java``): its local file system sets exactly Hadoop's permissions, the jar is built
from the sources (hash-named, javac errors reported), and every Spark entry point puts it on the class path."""

from __future__ import annotations

import argparse
import functools
import shutil
import stat
from pathlib import Path
from typing import Any, Iterator

import pytest

from skewless.engines.spark_jar import LOCAL_FS_CLASS, batch_jar
from skewless.engines.javabuild import JavaBuildError, build_jar, hashed_jar_path

pytestmark = pytest.mark.skipif(shutil.which("javac") is None, reason="needs a JDK")

# owner/group/other bits of every kind, including none, write-only and execute-only; 0o1777: the sticky bit
MODES = [0o000, 0o644, 0o755, 0o700, 0o777, 0o640, 0o711, 0o421, 0o007, 0o070, 0o333, 0o1777]


@pytest.fixture(scope="module")
def jvm() -> Iterator[Any]:
    """A Py4J JVM with pyspark's jars and the batch jar (no SparkContext)."""
    from pyspark import SparkConf
    from pyspark.java_gateway import launch_gateway

    gateway = launch_gateway(SparkConf().set("spark.driver.extraClassPath", str(batch_jar())))
    try:
        yield gateway.jvm
    finally:
        gateway.shutdown()
        gateway.proc.stdin.close()  # pyspark's launcher exits when its stdin closes
        gateway.proc.wait(30)


def _local_fs(jvm: Any, class_name: str) -> Any:
    conf = jvm.org.apache.hadoop.conf.Configuration()
    fs = functools.reduce(getattr, class_name.split("."), jvm)()
    fs.initialize(jvm.java.net.URI("file:///"), conf)
    return fs


def _modes(jvm: Any, fs: Any, root: Path) -> list[tuple[int, int, int, int]]:
    """Per mode: the bits of a directory made with it, a file created with it (umask applied by Hadoop), and of
    both after ``setPermission`` to it."""
    root.mkdir()
    fs_path = jvm.org.apache.hadoop.fs.Path
    out = []
    for mode in MODES:
        perm = jvm.org.apache.hadoop.fs.permission.FsPermission(mode)
        d, f = root / f"d{mode:o}", root / f"f{mode:o}"
        assert fs.mkdirs(fs_path(str(d)), perm)
        fs.create(fs_path(str(f)), perm, True, 4096, 1, 1 << 20, None).close()
        made = (stat.S_IMODE(d.stat().st_mode), stat.S_IMODE(f.stat().st_mode))
        fs.setPermission(fs_path(str(d)), perm)
        fs.setPermission(fs_path(str(f)), perm)
        out.append((*made, stat.S_IMODE(d.stat().st_mode), stat.S_IMODE(f.stat().st_mode)))
        for p in (d, f):  # let the temp dir be removed whatever the mode
            p.chmod(0o700)
    return out


def test_local_fs_sets_the_same_permissions_as_hadoops(jvm: Any, tmp_path: Path) -> None:
    ours = _local_fs(jvm, LOCAL_FS_CLASS)
    hadoop = _local_fs(jvm, "org.apache.hadoop.fs.LocalFileSystem")
    assert ours.getRawFileSystem().getClass().getName() == "dev.skewless.spark.NioRawLocalFileSystem"
    assert hadoop.getRawFileSystem().getClass().getName() == "org.apache.hadoop.fs.RawLocalFileSystem"
    got, want = _modes(jvm, ours, tmp_path / "ours"), _modes(jvm, hadoop, tmp_path / "hadoop")
    assert got == want
    assert [m[2] for m in want] == MODES  # setPermission sets every bit asked for, the sticky bit too


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_build_jar_names_by_sources_and_reports_javac_errors(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"p/A.java": "package p; public class A { public int x() { return 1; } }"})
    first = hashed_jar_path(src, tmp_path / "jars", "t")
    jar = build_jar(src, first, [], release="17")
    assert jar == first and jar.exists()
    import zipfile

    assert "p/A.class" in zipfile.ZipFile(jar).namelist()
    (src / "p" / "A.java").write_text("package p; public class A { int x() { return oops; } }")
    broken = hashed_jar_path(src, tmp_path / "jars", "t")
    assert broken != first
    with pytest.raises(JavaBuildError, match="oops"):
        build_jar(src, broken, [], release="17")
    assert not broken.exists()
    with pytest.raises(JavaBuildError, match="no \\*.java"):
        build_jar(tmp_path / "empty", tmp_path / "jars" / "e.jar", [], release="17")


def test_every_spark_entry_point_gets_the_jar_and_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    from skewless.commands.backfill import submit_command
    from skewless.engines.spark_session import jvm_conf, session_jars

    jar = str(batch_jar())
    monkeypatch.delenv("SKEWLESS_SPARK_NIO_FS", raising=False)
    conf = jvm_conf()
    assert conf == {"spark.driver.extraClassPath": jar, "spark.executor.extraClassPath": jar,
                    "spark.hadoop.fs.file.impl": LOCAL_FS_CLASS}
    assert session_jars()[-1] == batch_jar()
    args = argparse.Namespace(master="local[2]", driver_memory="1g", start="2025-01-01", end="2025-01-02",
                              repo="feature_defs", namespace="features", chunk_days=366, view=None, rerun=False,
                              force=False, no_serving=False, full_serving=True, explain=False)
    cmd = submit_command(args, Path("batch_jobs/backfill.py"))
    assert "--full-serving" in cmd and "--rerun" not in cmd
    for key, value in conf.items():
        assert f"{key}={value}" in cmd
    assert jar in cmd[cmd.index("--jars") + 1].split(",")
    monkeypatch.setenv("SKEWLESS_SPARK_NIO_FS", "0")
    assert "spark.hadoop.fs.file.impl" not in jvm_conf()
    assert "spark.driver.extraClassPath" in jvm_conf()
    assert not any(a.startswith("spark.hadoop.fs.file.impl") for a in submit_command(args, Path("b.py")))
    monkeypatch.setenv("SKEWLESS_SPARK_NIO_FS", "maybe")
    with pytest.raises(ValueError, match="SKEWLESS_SPARK_NIO_FS='maybe'"):
        jvm_conf()


def test_the_jar_is_rebuilt_from_the_sources(tmp_path: Path) -> None:
    """A missing jar is compiled from ``batch_jobs/java/src`` against pyspark's jars (every source)."""
    import zipfile

    import dataclasses

    from skewless.engines import spark_jar as jvm_mod

    project = dataclasses.replace(jvm_mod.PROJECT, jar_dir=tmp_path)
    jar = project.jar()
    assert jar == tmp_path / jvm_mod.jar_path().name  # named by the sources' hash, wherever it is built
    names = set(zipfile.ZipFile(jar).namelist())
    for src in project.sources():
        assert src.relative_to(jvm_mod.JAVA_SRC).with_suffix(".class").as_posix() in names
