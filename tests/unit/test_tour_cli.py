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
    keys = [layout.tile_key("p", view, ("u1",), 0), layout.batch_key("p", view, ("u1",)),
            layout.batch_key("p", view, ("a:b}c",)), layout.snapshot_key("p", other, ("u9",)),
            layout.view_meta_key("p", view), layout.batch_key("q", view, ("u7",))]
    assert sample_entities(_ScanOnly(keys), "p", view, n=10) == [("u1",), ("a:b}c",)]
    assert sample_entities(_ScanOnly(keys), "p", view, n=1) == [("u1",)]
    assert sample_entities(_ScanOnly([]), "p", view, n=3) == []
