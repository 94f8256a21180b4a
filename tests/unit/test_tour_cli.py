"""Newcomer-facing CLI behaviour without services (issue 26): one clear line on bad input, never a traceback;
`skewless online sample` decodes entity ids through the key layout."""

from __future__ import annotations

import socket
from typing import Any

from skewless.cli import main
from skewless.config import PROJECT_ROOT
from skewless.core import layout
from skewless.core.repo import load_repository
from skewless.monitoring.sampling import sample_entities

REPO = str(PROJECT_ROOT / "feature_defs")


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_monitor_serve_on_a_used_port_is_one_line(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["monitor", "serve", "--repo", REPO, "--port", str(port), "--seconds", "0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"skewless monitor serve: cannot listen on 127.0.0.1:{port} (Address already in use); "
                   "pass a free --port, or stop what listens there"]


def test_online_rebuild_bad_day_fails_before_touching_redis(capsys):
    url = f"redis://127.0.0.1:{_closed_port()}/0"  # nothing listens: a Redis access would fail differently
    assert main(["online", "rebuild", "--day", "bad", "--redis-url", url]) == 2
    out = capsys.readouterr()
    assert "epoch" not in out.out
    assert out.err.strip() == "skewless online rebuild: --day 'bad' is not a date YYYY-MM-DD"
    assert main(["online", "rebuild", "--day", "2026-01-01", "--view", "nope", "--redis-url", url]) == 2
    assert "unknown view 'nope'" in capsys.readouterr().err


def test_online_commands_without_redis_are_one_line(capsys):
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    assert main(["online", "sample", "--redis-url", url]) == 1
    assert main(["online", "rebuild", "--day", "2026-01-01", "--redis-url", url]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("Redis unreachable" in line and "make up" in line for line in err)


class _ScanOnly:
    """The SCAN of a Redis holding ``keys`` (MATCH as a prefix glob), ``page`` keys per call."""

    def __init__(self, keys: list[str], page: int = 2) -> None:
        self.keys, self.page = keys, page

    def scan(self, cursor: int = 0, match: str = "*", count: int = 10) -> tuple[int, list[bytes]]:
        prefix = match.rstrip("*").replace("\\", "")
        chunk = self.keys[cursor:cursor + self.page]
        nxt = cursor + self.page
        return (0 if nxt >= len(self.keys) else nxt), [k.encode() for k in chunk if k.startswith(prefix)]


def test_sample_entities_decodes_ids_through_the_layout():
    repo = load_repository(REPO)
    view, other = repo.view("user_order_stats"), repo.view("customer_profile")
    keys = [layout.entity_key("p", view, ("u1",)), layout.entity_key("p", view, ("a:b}c",)),
            layout.entity_key("p", other, ("u9",)), layout.view_meta_key("p", view), layout.entity_key("q", view, ("u7",))]
    assert sample_entities(_ScanOnly(keys), "p", view, n=10) == [("u1",), ("a:b}c",)]
    assert sample_entities(_ScanOnly(keys), "p", view, n=1) == [("u1",)]
    assert sample_entities(_ScanOnly([]), "p", view, n=3) == []


def test_iso_utc_for_people():
    from skewless.core.timeutil import iso_utc

    assert iso_utc(1796515200000) == "2026-12-06T00:00:00Z"
    assert iso_utc(1796559442671) == "2026-12-06T12:17:22.671Z"
    assert iso_utc(-1) == "1969-12-31T23:59:59.999Z"
    assert iso_utc(None) == "-"


def test_archive_gate_names_instants_in_iso_utc(monkeypatch):
    """The archive gate's note and refusal read as ISO-8601 UTC, not epoch milliseconds."""
    import pytest

    from batch_jobs import archive_gate
    from skewless.offline import archive_progress as progress
    from skewless.offline import tables

    source = load_repository(REPO).view("user_order_stats").source
    state = {"until": 1796559442671}
    monkeypatch.setattr(archive_gate, "archive_progress", lambda catalog, src: progress.ArchiveProgress(
        src.name, src.table, "running", src.topic, complete_until_ms=state["until"]))
    note = archive_gate.check_archive(None, source, 1796515200000, catalog=object())
    assert note == "archive complete until 2026-12-06T12:17:22.671Z >= cut-off 2026-12-06T00:00:00Z"
    state["until"] = 1796515199999
    with pytest.raises(tables.ArchiveNotCompleteError, match="complete until 2026-12-05T23:59:59.999Z .*needs "
                                                             "2026-12-06T00:00:00Z"):
        archive_gate.check_archive(None, source, 1796515200000, catalog=object())


def test_backfill_runs_spark_at_warn():
    """spark-submit gets infra/spark/log4j2.properties (root logger at WARN) for its driver."""
    import argparse

    from skewless.commands.backfill import SPARK_LOG4J, submit_command

    args = argparse.Namespace(master="local[1]", driver_memory="1g", start="2026-01-01", end="2026-01-01",
                              repo="feature_defs", namespace="features", chunk_days=1, view=None, rerun=False,
                              force=False, no_serving=False, full_serving=False, explain=False)
    cmd = submit_command(args, PROJECT_ROOT / "batch_jobs" / "backfill.py")
    assert f"spark.driver.extraJavaOptions=-Dlog4j2.configurationFile={SPARK_LOG4J.as_uri()}" in cmd
    settings = dict(line.split(" = ", 1) for line in SPARK_LOG4J.read_text().splitlines()
                    if line.strip() and not line.startswith("#"))
    assert settings["rootLogger.level"] == "warn"


def test_archive_status_explains_complete_until(tmp_path, capsys):
    assert main(["archive", "status", "--repo", REPO, "--catalog-db", str(tmp_path / "c.db"),
                 "--warehouse", str(tmp_path / "wh")]) == 0
    out = capsys.readouterr().out
    assert "orders: not-started" in out
    assert ("complete_until = the newest archived event time minus the allowed lateness (1:00:00), so it trails the "
            "stream by that much") in out


def test_stack_help_names_the_archive(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["stack", "--help"])
    assert "raw archive" in " ".join(capsys.readouterr().out.split())


def test_stack_status_lists_flink_jobs():
    """`make status` lists the session cluster's running jobs from Flink's REST API, or says none / unreachable."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from skewless.stack.manager import flink_job_lines

    jobs: list[dict[str, Any]] = []

    class Overview(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps({"jobs": jobs}).encode() if self.path == "/jobs/overview" else b"{}"
            self.send_response(200 if self.path == "/jobs/overview" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Overview)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert flink_job_lines(port) == ["flink jobs: none running (`skewless submit <view>` starts one)"]
        jobs += [{"jid": "a" * 32, "name": "skewless-user_order_stats", "state": "RUNNING", "start-time": 1796515200000},
                 {"jid": "b" * 32, "name": "old", "state": "CANCELED", "start-time": 1}]
        assert flink_job_lines(port) == [
            "flink jobs:", f"  RUNNING      skewless-user_order_stats  id={'a' * 32}  since 2026-12-06T00:00:00Z"]
    finally:
        server.shutdown()
        server.server_close()
    (line,) = flink_job_lines(_closed_port())
    assert line.startswith("flink jobs: Flink unreachable (")
