"""Fault tests (`make test-faults`, marked slow): a private stack (free ports, temp state dir) started by
`skewless stack up`; a parity run with a fault injected mid-way; after recovery, zero mismatches.

Most valuable first: TaskManager killed mid-stream; Redis restarted without persistence (reads answer
`incomplete`, then `online rebuild` + stream replay restore them); the archive SIGKILLed midway and rerun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from skewless.stack.base import free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CFG = dict(events=900, entities=25, days=2.5, sample=12, instants=8)


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

    def targets(self, workdir: Path) -> Any:
        from skewless.e2e.parity import Targets

        return Targets(bootstrap=self.kafka, redis_url=f"redis://127.0.0.1:{self.redis_port}/0",
                       catalog_db=workdir / "catalog.db", warehouse=workdir / "warehouse", flink="session",
                       flink_rest_port=int(self.env["SKEWLESS_FLINK_REST_PORT"]), workdir=workdir)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("faults"))
    up = s.cli("stack", "up")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield s
    finally:
        s.cli("stack", "down")


def _parity(stack: Stack, workdir: Path, seed: int, faults: Any, **overrides: Any) -> Any:
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


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _applied(ctx: Any) -> int:
    from skewless.e2e.pipeline import stream_progress

    return sum(p.get("records", 0) for p in stream_progress(ctx.targets.redis(), ctx.project, "orders").values())


def test_taskmanager_killed_mid_stream(stack: Stack, tmp_path: Path) -> None:
    """SIGKILL the TaskManager once a third of the records is applied, start a new one: the job restarts from
    its last checkpoint, replays, and every value is still exact (nothing lost, nothing counted twice)."""
    from skewless.e2e.parity import Faults
    from skewless.stack.flink import FlinkSessionCluster, flink_home
    from skewless.stack.procs import pid_alive

    events: list[str] = []
    killed_at: list[int] = []

    class KillTaskManager(Faults):
        def during_stream(self, ctx: Any) -> None:
            _wait(lambda: _applied(ctx) >= 1, 900, "the job applying records")
            checkpoints = ctx.targets.workdir / "checkpoints" / ctx.project
            try:  # kill after a checkpoint if one comes soon; a kill before any checkpoint replays from offset 0
                _wait(lambda: any(checkpoints.glob("*/chk-*/_metadata")), 8, "a completed checkpoint")
            except AssertionError:
                pass
            jm, tm = stack.entry("flink")["pids"][0]["pid"], stack.entry("flink")["pids"][1]["pid"]
            applied = _applied(ctx)
            os.kill(tm, signal.SIGKILL)
            _wait(lambda: not pid_alive(tm), 30, "the TaskManager to die")
            killed_at.append(applied)
            events.append(f"killed TaskManager {tm} at {applied} of {ctx.records} records")
            cluster = FlinkSessionCluster(rest_port=int(stack.env["SKEWLESS_FLINK_REST_PORT"]),
                                          state_dir=stack.state, log_dir=stack.state / "logs")
            with open(stack.state / "logs" / "flink" / "taskmanager.restart.log", "ab") as out:
                proc = subprocess.Popen(["bash", str(flink_home() / "bin" / "taskmanager.sh"), "start-foreground"],
                                        env=cluster._env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            stack.replace_pid("flink", tm, proc.pid)
            events.append(f"started TaskManager {proc.pid}; JobManager {jm} kept")

    _parity(stack, tmp_path, seed=101, faults=KillTaskManager(), events=3000)
    print(events)
    assert len(events) == 2 and killed_at[0] < 3000, events  # killed mid-stream


def test_redis_restarted_without_persistence(stack: Stack, tmp_path: Path) -> None:
    """Redis loses everything: reads answer `incomplete` (never a wrong number); `online rebuild` (new epoch,
    materialize) + replaying the stream restore exact values."""
    from skewless.e2e.parity import Faults
    from skewless.e2e.pipeline import materialize, run_stream_bounded
    from skewless.online import read_windowed
    from skewless.stack.procs import pid_alive, spawn

    seen: dict[str, Any] = {}

    class LoseRedis(Faults):
        def before_compare(self, ctx: Any) -> None:
            old = stack.entry("redis")["pids"][0]["pid"]
            os.kill(old, signal.SIGKILL)
            _wait(lambda: not pid_alive(old), 30, "Redis to die")
            empty = tmp_path / "redis-empty"
            empty.mkdir()
            new = spawn(["redis-server", "--port", str(stack.redis_port), "--bind", "127.0.0.1", "--appendonly", "no",
                         "--save", "", "--dir", str(empty)], stack.state / "logs" / "redis.restart.log")
            stack.replace_pid("redis", old, new)
            client = ctx.targets.redis()
            _wait(lambda: _ping(client), 30, "Redis to answer")
            users = ["u-any"]
            got = read_windowed(client, ctx.project, ["user_order_stats"], users, repo=ctx.repo)
            seen["statuses"] = {s for _, s in got.entities["user_order_stats"][0].features.values()}
            # `skewless online rebuild`: new epoch + the day's batch runs, then replay the stream
            materialize(ctx.targets, ctx.repo, ctx.day, ctx.project)
            run_stream_bounded(ctx.targets, "user_order_stats", ctx.topic, ctx.project, ctx.log)

    _parity(stack, tmp_path, seed=202, faults=LoseRedis())
    assert seen["statuses"] == {"incomplete"}, seen


def _ping(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001
        return False


def test_archive_killed_midway_and_rerun(stack: Stack, tmp_path: Path) -> None:
    """SIGKILL the archive after its first commits, rerun it: every record lands exactly once (the parity
    run's raw-table and dead-letter checks), and the batch values stay exact."""
    from skewless.e2e.parity import Faults
    from skewless.e2e.pipeline import archive_drain

    killed: list[int] = []

    class KillArchive(Faults):
        def archive(self, ctx: Any) -> bool:
            from skewless.core.repo import load_repository

            source = load_repository().view("user_order_stats").source
            worker = subprocess.Popen([sys.executable, "-c", ARCHIVE_WORKER, ctx.targets.bootstrap, ctx.topic,
                                       str(ctx.targets.catalog_db), str(ctx.targets.warehouse)],
                                      env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert worker.stdout is not None
            for line in worker.stdout:  # the worker prints one line per commit
                if line.startswith("commit"):
                    worker.kill()
                    killed.append(worker.pid)
                    break
            worker.wait(60)
            archive_drain(ctx.targets, source, ctx.topic)  # the rerun resumes from the table's offsets
            return True

    _parity(stack, tmp_path, seed=303, faults=KillArchive())
    assert killed


ARCHIVE_WORKER = r"""
import dataclasses, sys, threading
from skewless.archive.runner import ArchiveConfig, SourceArchiver
from skewless.core.repo import load_repository
from skewless.engines.iceberg_catalog import load_catalog
bootstrap, topic, db, wh = sys.argv[1:5]
source = dataclasses.replace(load_repository().view("user_order_stats").source, topic=topic)
def hook(point, n):
    if point == "after-raw-commit":
        print("commit", n, flush=True)
        threading.Event().wait(5)
SourceArchiver(source, load_catalog(db, wh), ArchiveConfig(bootstrap=bootstrap, max_records=150, max_interval_s=1.0,
               fault=hook)).run(threading.Event(), drain=True)
"""
