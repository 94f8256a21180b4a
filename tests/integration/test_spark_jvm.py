"""The fork-free local file system in a real Spark session: an Iceberg write of N day partitions runs Hadoop's
``chmod`` (one process each) about 4N times with Hadoop's file system and (almost) never with ours.

Each run is a fresh ``local[1]`` session in a child Python (the file system class is fixed per JVM) whose
``PATH`` starts with counting ``chmod``/``ls`` wrappers: an exact count, unaffected by other processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

N_PARTITIONS = 24

WRITE = """
import sys
from skewless.engines.spark_session import spark_session
root, n = sys.argv[1], int(sys.argv[2])
spark = spark_session("skewless-test-fs", master="local[1]", warehouse=root + "/warehouse",
                      catalog_db=root + "/catalog.db", shuffle_partitions=1)
spark.sql("CREATE NAMESPACE IF NOT EXISTS skewless.fs")
spark.sql("CREATE TABLE skewless.fs.t (day int, v bigint) USING iceberg PARTITIONED BY (day)")
spark.sql(f"INSERT INTO skewless.fs.t SELECT CAST(id % {n} AS int), id FROM range({3 * n})")
fs = spark._jvm.org.apache.hadoop.fs.FileSystem.getLocal(spark._jsc.hadoopConfiguration())
print(fs.getClass().getName(), tuple(spark.sql("SELECT count(DISTINCT day), count(*) FROM skewless.fs.t").first()))
spark.stop()
"""


def _wrappers(bin_dir: Path, log: Path) -> None:
    bin_dir.mkdir()
    for name in ("chmod", "ls"):
        real = next(p for p in (Path("/bin") / name, Path("/usr/bin") / name) if p.exists())
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexec {real} "$@"\n')
        (bin_dir / name).chmod(0o755)


def _start(tmp: Path, nio: str) -> tuple[subprocess.Popen[str], Path, Path]:
    """Start the write with ``SKEWLESS_SPARK_NIO_FS=nio``: (the child, its root dir, its command log)."""
    root, log = tmp / f"nio{nio}", tmp / f"calls{nio}.log"
    root.mkdir()
    _wrappers(root / "bin", log)
    env = dict(os.environ, SKEWLESS_SPARK_NIO_FS=nio, PATH=f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}")
    child = subprocess.Popen([sys.executable, "-c", WRITE, str(root), str(N_PARTITIONS)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return child, root, log


def _finish(child: subprocess.Popen[str], root: Path, log: Path) -> tuple[str, list[str]]:
    """(the child's output, the permission commands it ran on the table's files)."""
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err[-3000:]
    calls = log.read_text().splitlines() if log.exists() else []
    # the table's own files only: Spark's temp dirs get an `a+x` at start-up either way
    return out, [c for c in calls if str(root / "warehouse") in c]


def test_iceberg_write_forks_no_chmod_per_file(tmp_path: Path) -> None:
    runs = [_start(tmp_path, nio) for nio in ("0", "1")]  # concurrently: two JVM start-ups in the time of one
    try:
        (hadoop_out, hadoop_calls), (ours_out, ours_calls) = (_finish(*run) for run in runs)
    finally:
        for child, _, _ in runs:
            if child.poll() is None:
                child.kill()
                child.wait()
    expected = f"({N_PARTITIONS}, {3 * N_PARTITIONS})"
    assert hadoop_out.strip().endswith(expected) and "NioLocalFileSystem" not in hadoop_out, hadoop_out
    assert ours_out.strip() == f"dev.skewless.spark.NioLocalFileSystem {expected}", ours_out
    # Hadoop's: a chmod per data file, its .crc and each new partition directory
    assert len(hadoop_calls) >= 3 * N_PARTITIONS, hadoop_calls
    assert len(ours_calls) < N_PARTITIONS // 2, ours_calls


def test_spark_submit_with_only_the_iceberg_jars_still_writes(tmp_path: Path) -> None:
    """A hand-made ``spark-submit --jars <iceberg,sqlite>`` (README) of a script using ``spark_session``: its driver
    JVM lacks the batch jar, and spark-submit made (and Hadoop cached) the ``file:`` file system before the session
    set ``fs.file.impl``, so the write runs on Hadoop's file system instead of failing on a missing class."""
    from skewless.commands.backfill import spark_submit
    from skewless.engines.spark_session import spark_jars

    script = tmp_path / "write.py"
    script.write_text(WRITE)
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, SKEWLESS_SPARK_NIO_FS="1")
    done = subprocess.run([str(spark_submit()), "--master", "local[1]", "--conf", "spark.driver.host=127.0.0.1",
                           "--conf", "spark.driver.bindAddress=127.0.0.1", "--jars",
                           ",".join(str(j) for j in spark_jars()), str(script), str(tmp_path), "4"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("(4, 12)") and "NioLocalFileSystem" not in done.stdout, done.stdout
