"""Shared helpers of the fault tests: a private `skewless stack up` (free ports, temp state dir), a parity run
with a fault hook, waiting, and restarting one of the stack's services in place (same port, same data dir)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from skewless.stack.base import free_port

CFG = dict(events=900, entities=25, days=2.5, sample=12, instants=8)
# records/s produced while the streaming job runs, after its first write (ParityConfig.produce_rate): a fault
# injected once the job wrote lands before its last write (3,000 records: ~70 s of writes after the first)
STREAM_RATE = 40.0


class Stack:
    """A `skewless stack up` on free ports in a temp state dir; its env and recorded pids."""

    def __init__(self, root: Path) -> None:
        self.env = {**os.environ, "SKEWLESS_STATE_DIR": str(root / "state"), "SKEWLESS_KAFKA_PORT": str(free_port()),
                    "SKEWLESS_KAFKA_CONTROLLER_PORT": str(free_port()), "SKEWLESS_FLINK_REST_PORT": str(free_port()),
                    "SKEWLESS_REDIS_PORT": str(free_port())}
        self.env.pop("SKEWLESS_LOG_DIR", None)
        self.state = root / "state"

    def cli(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "skewless.cli", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def record(self) -> dict[str, Any]:
        return json.loads((self.state / "stack.json").read_text())

    def entry(self, name: str) -> dict[str, Any]:
        return next(e for e in self.record()["services"] if e["name"] == name)

    def replace_pid(self, name: str, old: int, new: int) -> None:
        """Record a restarted process so `stack down` stops it."""
        from skewless.stack.procs import start_time

        record = self.record()
        for e in record["services"]:
            if e["name"] == name:
                e["pids"] = [p if p["pid"] != old else {"pid": new, "start_time": start_time(new)} for p in e["pids"]]
        (self.state / "stack.json").write_text(json.dumps(record, indent=2))

    @property
    def kafka(self) -> str:
        return f"127.0.0.1:{self.env['SKEWLESS_KAFKA_PORT']}"

    @property
    def redis_port(self) -> int:
        return int(self.env["SKEWLESS_REDIS_PORT"])

    def service(self, name: str) -> Any:
        """The stack's `name` service object (`redis`, `kafka`) on this stack's ports."""
        from skewless.stack.kafka import KafkaBroker
        from skewless.stack.redis import RedisServer

        if name == "redis":
            return RedisServer(port=self.redis_port)
        if name == "kafka":
            return KafkaBroker(port=int(self.env["SKEWLESS_KAFKA_PORT"]),
                               controller_port=int(self.env["SKEWLESS_KAFKA_CONTROLLER_PORT"]))
        raise ValueError(name)

    def restart(self, name: str, down_s: float = 0.0, healthy_timeout_s: float = 180.0, hard: bool = False,
                while_down: Any = None) -> dict[str, float]:
        """Stop service `name` cleanly (SIGTERM, `stop_pids`; ``hard``: SIGKILL), keep it down `down_s` (calling
        ``while_down()`` first, if given), start it again the way `stack up` does (same port, same data dir under
        the state dir), record the new pid and wait until it is healthy. Returns the timings (stop, down,
        start-to-healthy) in seconds."""
        import signal

        from skewless.stack.procs import pid_alive, stop_pids

        svc = self.service(name)
        (old,) = [p["pid"] for p in self.entry(name)["pids"]]
        t0 = time.monotonic()
        if hard:  # the whole process group (a launch script and its JVM), no shutdown of any kind
            os.killpg(old, signal.SIGKILL) if os.getpgid(old) == old else os.kill(old, signal.SIGKILL)
            wait(lambda: not pid_alive(old), 30, f"{name} {old} to die")
        else:
            stop_pids([old], timeout_s=60.0)
        assert not pid_alive(old), f"{name} {old} still alive"
        stopped = time.monotonic()
        if while_down is not None:
            while_down()
        time.sleep(max(0.0, down_s - (time.monotonic() - stopped)))
        restarted = time.monotonic()
        started = svc.start(self.state, self.state / "logs")
        (new,) = started.pids
        self.replace_pid(name, old, new)
        wait(svc.healthy, healthy_timeout_s, f"{name} to be healthy again", interval_s=0.05)
        return {"stop_s": stopped - t0, "down_s": restarted - t0, "healthy_s": time.monotonic() - restarted,
                "old_pid": old, "new_pid": new}

    def targets(self, workdir: Path) -> Any:
        from skewless.e2e.parity import Targets

        return Targets(bootstrap=self.kafka, redis_url=f"redis://127.0.0.1:{self.redis_port}/0",
                       catalog_db=workdir / "catalog.db", warehouse=workdir / "warehouse", flink="session",
                       flink_rest_port=int(self.env["SKEWLESS_FLINK_REST_PORT"]), workdir=workdir)


def parity(stack: Stack, workdir: Path, seed: int, faults: Any, **overrides: Any) -> Any:
    """One parity run against `stack` with `faults` injected; asserts zero mismatches and every check ok."""
    from skewless.core.repo import load_repository
    from skewless.e2e.parity import FEATURE_VIEW, SNAPSHOT_VIEW, ParityConfig, format_report, run_parity

    targets = stack.targets(workdir)
    try:
        report = run_parity(ParityConfig(seed=seed, **{**CFG, **overrides}), targets, faults=faults)
    finally:
        if targets.spark is not None:
            targets.spark.stop()
    repo = load_repository()
    text = format_report(report, repo.view(FEATURE_VIEW), repo.view(SNAPSHOT_VIEW))
    print("\n" + text)
    assert report.ok, text
    return report


def wait(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def applied(ctx: Any) -> int:
    """Records the run's streaming job has applied so far (its progress hash in Redis)."""
    from skewless.e2e.pipeline import stream_progress

    return sum(p.get("records", 0) for p in stream_progress(ctx.targets.redis(), ctx.project, "orders").values())


def paced_head(ctx: Any) -> int:
    """Records the parity producer sends at once before the job's first write (``_produce_during_stream``: the
    first 5%); every later one is paced at ``produce_rate``."""
    return max(1, ctx.records // 20)


def await_paced_writes(ctx: Any, timeout_s: float = 900) -> int:
    """Wait for the run's streaming job's first write and for the throttled producer to have sent a record after
    it (so records keep arriving while a fault injected now lasts); returns the records applied so far."""
    wait(lambda: applied(ctx) >= 1, timeout_s, "the job's first write", interval_s=0.1)
    wait(lambda: ctx.produced > paced_head(ctx), 120, "the producer's paced records after the first write",
         interval_s=0.05)
    return applied(ctx)


def drain_job(stack: Stack, ctx: Any) -> dict[str, Any]:
    """Wait until the run's streaming job has applied every record (after a fault) and ended. Returns how long the
    records took (``recovered_s``), the failures Flink recorded (``job_failures``) and its end state (``job_state``)."""
    t = time.monotonic()
    wait(lambda: applied(ctx) >= ctx.records, 600, "the job applying every record after the fault")
    recovered_s = round(time.monotonic() - t, 1)
    job = run_job(stack, ctx)
    assert job is not None, "the run's streaming job is not on the cluster"
    wait(lambda: (run_job(stack, ctx) or {}).get("state") in ("FINISHED", "FAILED", "CANCELED"), 600, "the job to end")
    return {"recovered_s": recovered_s, "job_failures": job_exceptions(stack, job["jid"]),
            "job_state": run_job(stack, ctx)["state"]}


def start_taskmanager(stack: Stack, old_pid: int) -> int:
    """Start a new TaskManager for the stack's Flink session cluster the way `stack up` does (its log appended to
    ``taskmanager.restart.log``), recorded in place of ``old_pid``; returns its pid."""
    from skewless.stack.flink import FlinkSessionCluster, flink_home

    cluster = FlinkSessionCluster(rest_port=int(stack.env["SKEWLESS_FLINK_REST_PORT"]), state_dir=stack.state,
                                  log_dir=stack.state / "logs")
    with open(stack.state / "logs" / "flink" / "taskmanager.restart.log", "ab") as out:
        proc = subprocess.Popen(["bash", str(flink_home() / "bin" / "taskmanager.sh"), "start-foreground"],
                                env=cluster._env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    stack.replace_pid("flink", old_pid, proc.pid)
    return proc.pid


def raw_rows(ctx: Any) -> int:
    """Rows of the run's raw archive table now (0 before its first commit)."""
    from pyiceberg.exceptions import NoSuchTableError

    table = ctx.repo.view("user_order_stats").source.table
    try:
        return ctx.targets.catalog().load_table(table).scan(selected_fields=("_kafka_partition",)).to_arrow().num_rows
    except NoSuchTableError:
        return 0


def well_formed(report: Any) -> int:
    """Records of a parity run the raw table holds once archived (all but the malformed)."""
    return report.counts["records"] - report.counts.get("malformed", 0)


def flink(stack: Stack) -> Any:
    from skewless.stack.flink import FlinkSessionCluster

    return FlinkSessionCluster(rest_port=int(stack.env["SKEWLESS_FLINK_REST_PORT"]))


def run_job(stack: Stack, ctx: Any) -> dict[str, Any] | None:
    """The run's streaming job on the session cluster (`/jobs/overview` entry), None before it is submitted."""
    return next((j for j in flink(stack).list_jobs() if j.get("name") == f"skewless-e2e-{ctx.project}"), None)


def job_exceptions(stack: Stack, job_id: str) -> list[str]:
    """The failures Flink recorded for a job (each one a restart under its restart strategy), newest first: the
    first line of each one's stack trace (exception and message), else its exception's name."""
    history = flink(stack)._rest("GET", f"/jobs/{job_id}/exceptions").get("exceptionHistory", {}).get("entries", [])
    return [str((e.get("stacktrace") or "").strip().split("\n", 1)[0] or e.get("exceptionName"))[:300] for e in history]


def ping(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001
        return False


def archive_worker(stack: Stack, ctx: Any, records: int = 150, pause_s: float = 5.0) -> subprocess.Popen[str]:
    """The raw archive of the run's topic in a subprocess, `records`-record commits, printing `commit <n>` after
    each raw-table commit and pausing `pause_s` there (a window to kill it or to fault around it); drains and exits."""
    worker = subprocess.Popen([sys.executable, "-c", ARCHIVE_WORKER, ctx.targets.bootstrap, ctx.topic,
                               str(ctx.targets.catalog_db), str(ctx.targets.warehouse), str(records), str(pause_s)],
                              env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert worker.stdout is not None
    return worker
ARCHIVE_WORKER = r"""
import dataclasses, sys, threading
from skewless.archive.runner import ArchiveConfig, SourceArchiver
from skewless.core.repo import load_repository
from skewless.engines.iceberg_catalog import load_catalog
bootstrap, topic, db, wh, records, pause = sys.argv[1:7]
source = dataclasses.replace(load_repository().view("user_order_stats").source, topic=topic)
def hook(point, n):
    if point == "after-raw-commit":
        print("commit", n, flush=True)
        threading.Event().wait(float(pause))
SourceArchiver(source, load_catalog(db, wh), ArchiveConfig(bootstrap=bootstrap, max_records=int(records), max_interval_s=1.0,
               fault=hook)).run(threading.Event(), drain=True)
"""
