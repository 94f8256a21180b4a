"""Bad input to the CLI (issue 19, item 8): every case is one line ``skewless <command>: error: ...`` with exit
status 2, never a traceback or a hang. The CLI runs as a real process in a folder without ``feature_defs``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from skewless.cli import main

ROOT = Path(__file__).resolve().parents[2]
REPO = str(ROOT / "feature_defs")


def cli(cwd: Path, *argv: str, env: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str, str]:
    """``python -m skewless.cli ARGV`` in ``cwd``; the test fails (no hang) after ``timeout`` seconds."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    done = subprocess.run([sys.executable, "-m", "skewless.cli", *argv], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def assert_one_line_error(rc: int, err: str, command: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, (rc, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"skewless {command}: error: "), err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("argv", [["submit"], ["produce"], ["serve"]])
def test_no_feature_defs_in_the_current_folder(tmp_path: Path, argv: list[str]) -> None:
    rc, _, err = cli(tmp_path, *argv)
    assert_one_line_error(rc, err, argv[0], "feature repository folder 'feature_defs' not found", "--repo")


@pytest.mark.parametrize("command", ["submit", "produce", "serve"])
def test_repo_flag_names_a_missing_folder(tmp_path: Path, command: str) -> None:
    rc, _, err = cli(tmp_path, command, "--repo", str(tmp_path / "nope"))
    assert_one_line_error(rc, err, command, "not found")


def test_serve_with_a_broken_repository(tmp_path: Path) -> None:
    broken = tmp_path / "feature_defs"
    shutil.copytree(ROOT / "feature_defs", broken)
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    (broken / "user_order_stats.py").write_text("this is not python(\n")
    rc, _, err = cli(tmp_path, "serve", "--repo", str(broken))
    assert_one_line_error(rc, err, "serve", "user_order_stats.py")


@pytest.mark.parametrize("argv, needle", [
    (["serve", "--port", "99999"], "port 99999 is out of range"),
    (["serve", "--port", "http"], "is not a port number"),
    (["serve", "--workers", "0"], "must be at least 1"),
    (["serve", "--sample-rate", "1.5"], "is not a fraction"),
    (["serve", "--redis-url", "http://x"], "is not a Redis URL"),
    (["produce", "--malformed", "2.5"], "2.5 is not a fraction"),
    (["produce", "--rate", "-5"], "-5 must not be negative"),
    (["produce", "--duration", "nan"], "is not a finite number"),
    (["produce", "--partitions", "0"], "must be at least 1"),
    (["produce", "--replay", "/no/such/file.jsonl"], "/no/such/file.jsonl does not exist"),
    (["materialize", "--day", "2024-01-01", "--redis-url", "http://x"], "'http://x' is not a Redis URL"),
])
def test_bad_argument_values(tmp_path: Path, argv: list[str], needle: str) -> None:
    rc, _, err = cli(tmp_path, *argv)
    assert_one_line_error(rc, err, argv[0], needle)


def test_produce_with_kafka_down_is_one_line_not_a_hang(tmp_path: Path) -> None:
    rc, _, err = cli(tmp_path, "produce", "--repo", REPO, "--bootstrap", f"127.0.0.1:{free_port()}", "--duration", "1")
    assert_one_line_error(rc, err, "produce", "cannot reach Kafka at 127.0.0.1:", "fix:")


def test_produce_replay_file_that_is_not_a_saved_run(tmp_path: Path) -> None:
    bad = tmp_path / "run.jsonl"
    bad.write_text('{"seq": 1}\nnot json\n')
    rc, _, err = cli(tmp_path, "produce", "--repo", REPO, "--replay", str(bad))
    assert_one_line_error(rc, err, "produce", str(bad), "line 1")


def test_training_set_given_a_file_that_is_not_parquet(tmp_path: Path) -> None:
    entities = tmp_path / "entities.csv"
    entities.write_text("user_id,event_timestamp\nu1,2024-01-01\n")
    rc, _, err = cli(tmp_path, "training-set", "--repo", REPO, "--features", "user_order_stats", "--entities",
                     str(entities), "--out", str(tmp_path / "out.parquet"))
    assert_one_line_error(rc, err, "training-set", f"{entities} is not a Parquet file")
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("state", [
    {"format": 1, "views": []},
    {"format": 1, "views": {"user_order_stats": 5}},
    {"format": 1, "views": {"user_order_stats": {"version": "one"}}},
    {"format": 1, "views": {}, "history": {"user_order_stats": ["x"]}},
    {"format": 1, "views": {}, "services": {"s": "user_order_stats"}},
])
@pytest.mark.parametrize("command", ["plan", "apply"])
def test_state_file_of_the_right_format_but_the_wrong_shape(tmp_path: Path, state: dict, command: str) -> None:
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(state))
    rc, out, err = cli(tmp_path, command, "--repo", REPO, "--state", str(path))
    assert rc in (1, 2) and "Traceback" not in err, err
    assert f"registry state {path}" in err and "fix or remove the file" in err, err
    assert json.loads(path.read_text()) == state  # apply wrote nothing


def test_backfill_validates_every_argument_before_spark_submit(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import skewless.commands.backfill as backfill_cmd

    def no_spark_submit(*args: object, **kwargs: object) -> int:
        raise AssertionError("spark-submit started before the arguments were validated")

    monkeypatch.setattr(backfill_cmd.subprocess, "call", no_spark_submit)
    for argv, needle in [
        (["--start", "2024-13-01", "--end", "2024-01-02"], "--start"),
        (["--start", "2024-01-03", "--end", "2024-01-02"], "is after --end"),
        (["--start", "2024-01-01", "--end", "2024-01-02", "--view", "nope"], "unknown view 'nope'"),
        (["--start", "2024-01-01", "--end", "2024-01-02", "--view", "customer_profile"], "snapshot view"),
        (["--start", "2024-01-01", "--end", "2024-01-02", "--repo", "/no/such/repo"], "not found"),
        (["--start", "2024-01-01", "--end", "2024-01-02", "--chunk-days", "0"], "must be at least 1"),
        (["--start", "2024-01-01", "--end", "2024-01-02", "--master", "local[two]"], "is not a Spark master URL"),
        (["--start", "2024-01-01", "--end", "2024-01-02", "--driver-memory", "lots"], "is not a JVM memory size"),
        (["--start", "2024-01-01", "--end", "2024-01-02", "--namespace", "a; DROP"], "is not an Iceberg namespace"),
    ]:
        rc = main(["backfill", "--repo", REPO, *argv]) if "--repo" not in argv else main(["backfill", *argv])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and "Traceback" not in err, (argv, err)


def test_serve_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        number = taken.getsockname()[1]
        rc, _, err = cli(tmp_path, "serve", "--repo", REPO, "--port", str(number))
    assert_one_line_error(rc, err, "serve", f"port {number} on 127.0.0.1 is already in use", "fix:")
