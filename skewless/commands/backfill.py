"""``skewless backfill``: spark-submit ``batch_jobs/backfill.py`` (daily tiles + serving rows for a date range)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from skewless.commands import CommandError

NAME = "backfill"
HELP = "recompute feature views over a date range with spark-submit (idempotent, resumable, archive-gated)"
SPARK_LOG4J = Path(__file__).resolve().parents[2] / "infra" / "spark" / "log4j2.properties"  # Spark at WARN


def spark_log4j() -> Path:
    """The driver's log4j2 configuration: ``$SKEWLESS_SPARK_LOG4J``, else infra/spark/log4j2.properties (WARN)."""
    return Path(os.environ.get("SKEWLESS_SPARK_LOG4J") or SPARK_LOG4J).resolve()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from batch_jobs.backfill import add_arguments as job_arguments

    job_arguments(parser)
    parser.add_argument("--in-process", action="store_true", help="run in this Python process instead of spark-submit")
    # the master's default comes from the profile (spark.master), else the job's own default (local[*])
    parser.set_defaults(master=None, job_default_master=parser.get_default("master"))


def spark_submit() -> Path:
    """The venv's ``spark-submit`` (from the pyspark wheel)."""
    here = Path(sys.executable).parent / "spark-submit"
    if here.exists():
        return here
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-submit"


def submit_command(args: argparse.Namespace, script: Path) -> list[str]:
    """``spark-submit --master M --driver-memory X --conf <batch jar, fs.file.impl, log4j2 file> --jars <iceberg,sqlite,batch>
    batch_jobs/backfill.py <args>`` (the session's JVM settings of :func:`skewless.engines.spark_session.jvm_conf`)."""
    from skewless.config import shared_catalog
    from skewless.engines.spark_session import jvm_conf, session_jars

    cmd = [str(spark_submit()), "--master", args.master, "--driver-memory", args.driver_memory,
           "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.driver.bindAddress=127.0.0.1",
           "--conf", f"spark.driver.extraJavaOptions=-Dlog4j2.configurationFile={spark_log4j().as_uri()}"]
    for key, value in jvm_conf().items():
        cmd += ["--conf", f"{key}={value}"]
    # the shared catalog's JDBC driver and S3 FileIO must be on the driver's class path from its start
    cmd += ["--jars", ",".join(str(j) for j in session_jars(shared_catalog() is not None)), str(script)]
    for name in ("start", "end", "master", "repo", "namespace", "chunk_days", "driver_memory"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for view in args.view or ():
        cmd += ["--view", view]
    for flag in ("rerun", "force", "no_serving", "full_serving", "explain"):
        if getattr(args, flag):
            cmd.append(f"--{flag.replace('_', '-')}")
    return cmd


def run(args: argparse.Namespace) -> int:
    from batch_jobs import backfill
    from skewless.config import shared_catalog, spark_master
    from skewless.engines.object_store import AWS_CHECKSUM_ENV, check_shared_catalog
    from skewless.offline.tables import BatchError

    args.master = args.master or spark_master(args.job_default_master)
    if args.in_process or args.explain:
        return backfill.run(args)
    try:  # every argument is checked here, before spark-submit starts a JVM
        _, _, jobs, _ = backfill.prepare(args)
    except BatchError as exc:
        raise CommandError(str(exc)) from None
    if not jobs:
        raise CommandError("nothing to compute: no chosen view has a batch-served window (wider than 1 day)",
                           "pass --view NAME of a feature view with such a window")
    shared = shared_catalog()
    if shared is not None:  # a wrong endpoint, bucket, credentials or database: one line, before any JVM starts
        check_shared_catalog(shared)
    script = Path(backfill.__file__).resolve()
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    if shared is not None:  # the driver's S3 FileIO (AWS SDK v2): checksums only when required
        env.update(AWS_CHECKSUM_ENV)
    return subprocess.call(submit_command(args, script), env=env)
