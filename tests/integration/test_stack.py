"""`skewless stack up|status|down` end to end, on free non-default ports and a temporary state dir."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from skewless.stack.base import free_port, port_in_use
from skewless.stack.procs import pid_alive

pytestmark = pytest.mark.integration

UP_TIMEOUT_S = 600


@pytest.fixture
def stack_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for a private stack: free ports, state under tmp_path; `down` always runs after."""
    env = {
        **os.environ,
        "SKEWLESS_STATE_DIR": str(tmp_path / "state"),
        "SKEWLESS_KAFKA_PORT": str(free_port()),
        "SKEWLESS_KAFKA_CONTROLLER_PORT": str(free_port()),
        "SKEWLESS_FLINK_REST_PORT": str(free_port()),
        "SKEWLESS_REDIS_PORT": str(free_port()),
    }
    env.pop("SKEWLESS_LOG_DIR", None)
    yield env
    skewless(env, "stack", "down")  # safety net: never leave a stack behind


def skewless(env: dict[str, str], *args: str, timeout: float = UP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "skewless.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def recorded_pids(env: dict[str, str]) -> dict[str, list[int]]:
    record = json.loads((Path(env["SKEWLESS_STATE_DIR"]) / "stack.json").read_text())
    return {s["name"]: [p["pid"] for p in s["pids"]] for s in record["services"]}


def test_up_status_down(stack_env: dict[str, str]) -> None:
    up = skewless(stack_env, "stack", "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"127.0.0.1:{stack_env['SKEWLESS_KAFKA_PORT']}" in up.stdout
    assert f"redis://127.0.0.1:{stack_env['SKEWLESS_REDIS_PORT']}/0" in up.stdout

    pids = recorded_pids(stack_env)
    assert {"kafka", "redis"} <= set(pids)
    assert all(pid_alive(p) for ps in pids.values() for p in ps)
    assert (Path(stack_env["SKEWLESS_STATE_DIR"]) / "logs" / "kafka.log").exists()

    status = skewless(stack_env, "stack", "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    rows = {r["name"]: r for r in json.loads(status.stdout)}
    assert set(rows) == set(pids)
    for name, row in rows.items():
        assert row["healthy"], f"{name} not healthy: {row}"
        assert row["rss"] > 1_000_000, f"{name} RSS {row['rss']}"
    assert "healthy" in skewless(stack_env, "stack", "status").stdout

    down = skewless(stack_env, "stack", "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(pid_alive(p) for ps in pids.values() for p in ps)
    assert not (Path(stack_env["SKEWLESS_STATE_DIR"]) / "stack.json").exists()
    for var in ("SKEWLESS_KAFKA_PORT", "SKEWLESS_REDIS_PORT"):
        assert not port_in_use(int(stack_env[var]))

    again = skewless(stack_env, "stack", "down")  # idempotent
    assert again.returncode == 0 and "nothing to stop" in again.stdout


def test_up_with_a_taken_port_fails_and_starts_nothing(stack_env: dict[str, str]) -> None:
    port = int(stack_env["SKEWLESS_REDIS_PORT"])
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        up = skewless(stack_env, "stack", "up", timeout=120)
    out = up.stdout + up.stderr
    assert up.returncode != 0, out
    assert "redis" in out and str(port) in out and "SKEWLESS_REDIS_PORT" in out, out
    assert not (Path(stack_env["SKEWLESS_STATE_DIR"]) / "stack.json").exists()
    assert not port_in_use(int(stack_env["SKEWLESS_KAFKA_PORT"]))
    assert "started" not in up.stdout  # the port check ran before anything was started
