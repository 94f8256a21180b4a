"""Stack logic without JVMs: config/port mapping, preflight, pid handling, rollback on failure."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skewless import config
from skewless.stack import manager
from skewless.stack.base import Service, StackError, Started, free_port
from skewless.stack.kafka import KafkaBroker
from skewless.stack.procs import log_tail, pid_alive, rss_bytes, spawn, start_time, stop_pids, wait_until
from skewless.stack.redis import REDIS_CONF, RedisServer, redis_args

PORT_VARS = ("SKEWLESS_KAFKA_PORT", "SKEWLESS_KAFKA_CONTROLLER_PORT", "SKEWLESS_FLINK_REST_PORT", "SKEWLESS_REDIS_PORT")


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SKEWLESS_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("SKEWLESS_LOG_DIR", raising=False)
    return tmp_path


class Sleeper(Service):
    """A fake service: a `sleep` process; healthy when told so."""

    start_timeout_s = 3.0

    def __init__(self, name: str, port: int, healthy: bool = True) -> None:
        self.name, self.port, self._healthy = name, port, healthy
        self.pids: list[int] = []

    def ports(self) -> dict[str, int]:
        return {"main": self.port}

    def start(self, state_dir: Path, log_dir: Path) -> Started:
        pid = spawn(["sleep", "300"], log_dir / f"{self.name}.log")
        self.pids.append(pid)
        return Started(self.name, (pid,), {"url": f"fake://{self.port}"}, log_dir / f"{self.name}.log")

    def healthy(self) -> bool:
        return self._healthy


def test_every_port_has_its_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    for i, var in enumerate(PORT_VARS):
        monkeypatch.setenv(var, str(40000 + i))
    mapping = manager.port_env_vars()
    assert mapping == {40000 + i: var for i, var in enumerate(PORT_VARS)}


def test_services_read_ports_from_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKEWLESS_KAFKA_PORT", "41001")
    monkeypatch.setenv("SKEWLESS_KAFKA_CONTROLLER_PORT", "41002")
    monkeypatch.setenv("SKEWLESS_REDIS_PORT", "41003")
    assert KafkaBroker().ports() == {"broker": 41001, "controller": 41002}
    assert KafkaBroker().bootstrap == "127.0.0.1:41001"
    assert RedisServer().url == "redis://127.0.0.1:41003/0"
    assert KafkaBroker(port=5, controller_port=6).ports() == {"broker": 5, "controller": 6}


def test_bad_port_env_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKEWLESS_REDIS_PORT", "six")
    with pytest.raises(ValueError, match="SKEWLESS_REDIS_PORT"):
        config.ports()


def test_taken_port_names_service_port_and_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        monkeypatch.setenv("SKEWLESS_REDIS_PORT", str(port))
        problems = manager.port_problems([RedisServer()])
    assert len(problems) == 1
    assert "redis" in problems[0] and str(port) in problems[0] and "SKEWLESS_REDIS_PORT" in problems[0]


def test_port_configured_twice_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("SKEWLESS_KAFKA_PORT", str(port))
    monkeypatch.setenv("SKEWLESS_REDIS_PORT", str(port))
    problems = manager.port_problems([KafkaBroker(), RedisServer()])
    assert any("redis" in p and "also configured for kafka" in p for p in problems), problems


def test_redis_argv_uses_repo_config() -> None:
    assert REDIS_CONF.exists()
    assert redis_args(1234, "/d") == ["--port", "1234", "--dir", "/d"]
    text = REDIS_CONF.read_text()
    assert "bind 127.0.0.1" in text and "appendonly yes" in text and "appendfsync everysec" in text


def test_kafka_template_is_loopback_only() -> None:
    text = (config.PROJECT_ROOT / "infra" / "kafka" / "server.properties").read_text()
    listeners = [line for line in text.splitlines() if line.startswith(("listeners=", "advertised.listeners="))]
    assert listeners and all("0.0.0.0" not in line and "127.0.0.1" in line for line in listeners)
    assert "auto.create.topics.enable=false" in text


def test_spawn_stop_and_pid_identity(tmp_path: Path) -> None:
    pid = spawn([sys.executable, "-c", "print('hello', flush=True); import time; time.sleep(300)"], tmp_path / "x.log")
    wait_until(lambda: log_tail(tmp_path / "x.log").endswith("hello"), 20, "child output")
    assert pid_alive(pid) and start_time(pid) is not None and rss_bytes([pid]) > 0
    stop_pids([pid], timeout_s=5)
    assert not pid_alive(pid)
    stop_pids([pid], timeout_s=1)  # already gone: a no-op


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(300)"
    pid = spawn([sys.executable, "-c", code], tmp_path / "stubborn.log")
    wait_until(lambda: log_tail(tmp_path / "stubborn.log").endswith("ready"), 20, "child ready")
    t0 = time.monotonic()
    stop_pids([pid], timeout_s=1)
    assert not pid_alive(pid) and time.monotonic() - t0 < 6


def test_stop_takes_the_process_group(tmp_path: Path) -> None:
    pid = spawn(["bash", "-c", "sleep 300 & echo child=$!; wait"], tmp_path / "g.log")
    wait_until(lambda: log_tail(tmp_path / "g.log").rstrip()[-1].isdigit(), 20, "grandchild")
    child = int(log_tail(tmp_path / "g.log").split("child=")[-1].split()[0])
    stop_pids([pid], timeout_s=5)
    wait_until(lambda: not pid_alive(child), 5, "grandchild gone")


def test_wait_until_messages() -> None:
    with pytest.raises(StackError, match="widget not ready after 0 s"):
        wait_until(lambda: False, 0.2, "widget", interval_s=0.05)
    with pytest.raises(StackError, match="widget: it crashed"):
        wait_until(lambda: False, 10, "widget", interval_s=0.05, abort_if=lambda: "it crashed")


def test_up_then_down_with_fake_services(state: Path) -> None:
    a, b = Sleeper("alpha", free_port()), Sleeper("beta", free_port())
    out = io.StringIO()
    assert manager.up([a, b], out=out) == 0, out.getvalue()
    record = json.loads((state / "stack.json").read_text())
    assert [s["name"] for s in record["services"]] == ["alpha", "beta"]
    assert all(pid_alive(p) for p in a.pids + b.pids)
    assert manager.live_pids(record["services"][0]) == a.pids
    # `down` rebuilds services by name; unknown names are still stopped by pid
    assert manager.down(out=out) == 0, out.getvalue()
    assert not any(pid_alive(p) for p in a.pids + b.pids)
    assert not (state / "stack.json").exists()
    assert manager.down(out=out) == 0


def test_failed_service_rolls_back_everything(state: Path) -> None:
    good, bad = Sleeper("good", free_port()), Sleeper("bad", free_port(), healthy=False)
    out = io.StringIO()
    assert manager.up([good, bad], out=out) == 1
    text = out.getvalue()
    assert "bad: not healthy after 3 s" in text and "last lines of" in text and "fix:" in text
    assert not any(pid_alive(p) for p in good.pids + bad.pids)
    assert not (state / "stack.json").exists()


def test_recycled_pid_is_not_ours(state: Path) -> None:
    proc = subprocess.Popen(["sleep", "300"])
    try:
        entry = {"pids": [{"pid": proc.pid, "start_time": (start_time(proc.pid) or 0) - 100}]}
        assert manager.live_pids(entry) == []  # same pid, other start time: never signalled
        entry["pids"][0]["start_time"] = start_time(proc.pid)
        assert manager.live_pids(entry) == [proc.pid]
    finally:
        proc.kill()
        proc.wait()


def test_status_without_a_stack(state: Path) -> None:
    out = io.StringIO()
    assert manager.status(out=out) == 0
    assert "not running" in out.getvalue()
