"""Issue 19 items 2, 3 and 6 on real processes: a Redis of our own (a redis-server started here, paused with SIGSTOP
and always resumed), a real ``skewless serve``: a hung Redis gives 503 within the timeout and /health still answers,
the SDK and materialize fail instead of blocking, the server's memory stays within its cache bound under unique huge
keys, a corrupt stored value makes only its entity incomplete."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import date
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from batch_jobs.materialize import materialize_feature_view
from skewless.config import redis_target
from skewless.core import layout
from skewless.core.repo import load_repository
from skewless.core.staleness import INCOMPLETE
from skewless.serving.online import open_store
from tests.support.fill import fill, write

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
START = 1_704_067_200_000 + 10 * 86_400_000 + 7 * 3_600_000
CUTOFF = 1_704_067_200_000 + 11 * 86_400_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    """A redis-server of this test only (never a shared one: it gets SIGSTOPped)."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield port, proc
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait(10)


def serve(redis_port: int, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "skewless.cli", "serve", "--workers", "1", "--port", str(port),
                             "--repo", str(ROOT / "feature_defs"), "--project", "f19",
                             "--redis-url", f"redis://127.0.0.1:{redis_port}/0"],
                            env={**os.environ, "PYTHONPATH": str(ROOT), **env}, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if call(url, "GET", "/health")[0] == 200:
                return proc, url
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited: {proc.stdout.read().decode() if proc.stdout else ''}")
        time.sleep(0.05)
    raise RuntimeError("serve did not start")


def call(url: str, method: str, path: str, body: Any = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.timeout(30)
def test_a_hung_redis_gives_503_and_health_still_answers(own_redis: tuple[int, subprocess.Popen]) -> None:
    """Before: `kill -STOP` of Redis blocked reads and /health forever."""
    port, rproc = own_redis
    env = {"SKEWLESS_REDIS_TIMEOUT_S": "1", "SKEWLESS_REDIS_CONNECT_TIMEOUT_S": "1"}
    server, url = serve(port, env)
    try:
        body = {"features": ["user_order_stats"], "entities": {"user_id": ["u1"]}}
        assert call(url, "POST", "/get-online-features", body)[0] == 200  # a kept connection from here on
        os.kill(rproc.pid, signal.SIGSTOP)
        try:
            status, answer = call(url, "POST", "/get-online-features", body)
            assert status == 503 and answer["error"]["code"] == "store_unavailable"
            status, answer = call(url, "GET", "/health")
            assert status == 503 and answer["status"] == "unavailable"
        finally:
            os.kill(rproc.pid, signal.SIGCONT)
        statuses = []
        while 200 not in statuses:  # and back once Redis is (the 30 s guard bounds this)
            statuses.append(call(url, "POST", "/get-online-features", body)[0])
            time.sleep(0.2)
        assert set(statuses) <= {200, 503}
    finally:
        stop(server)


@pytest.mark.timeout(30)
def test_the_sdk_and_materialize_fail_on_a_hung_redis(own_redis: tuple[int, subprocess.Popen],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: open_store and materialize opened Redis without timeouts (blocked forever)."""
    port, rproc = own_redis
    monkeypatch.setenv("SKEWLESS_REDIS_TIMEOUT_S", "1")
    monkeypatch.setenv("SKEWLESS_REDIS_CONNECT_TIMEOUT_S", "1")
    repo = load_repository(ROOT / "feature_defs")
    store = open_store(repo, f"redis://127.0.0.1:{port}/0", project="f19")
    target = redis_target(f"redis://127.0.0.1:{port}/0")
    client = redis.Redis.from_url(target.url, **target.client_kwargs())  # what `skewless materialize` opens
    store.get_online_features({"user_id": ["u1"]}, ["user_order_stats"])
    os.kill(rproc.pid, signal.SIGSTOP)
    try:
        with pytest.raises(redis.TimeoutError):
            store.get_online_features({"user_id": ["u1"]}, ["user_order_stats"])
        with pytest.raises(redis.TimeoutError):
            materialize_feature_view(None, client, repo.view("user_order_stats"), date.today(), project="f19",
                                     rows=object())
    finally:
        os.kill(rproc.pid, signal.SIGCONT)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(300)
def test_unique_huge_keys_keep_the_server_within_its_cache_bound(own_redis: tuple[int, subprocess.Popen]) -> None:
    """Before: 200 requests with one unique 500 KB user_id each took the server from 67 to 544 MiB."""
    port, _ = own_redis
    bound = 32 << 20
    server, url = serve(port, {"SKEWLESS_SERVE_CACHE_BYTES": str(bound), "SKEWLESS_SERVE_MAX_KEY_LENGTH": str(1 << 20)})
    try:
        pid = call(url, "GET", "/health")[1]["pid"]
        features = ["user_order_stats", "customer_profile"]
        for i in range(5):  # warm: plans, first allocations
            assert call(url, "POST", "/get-online-features", {"features": features, "entities": {"user_id": [f"w{i}"]}})[0] == 200
        before = rss_bytes(pid)
        for i in range(200):
            key = f"{i:06d}" + "k" * 500_000
            status, _ = call(url, "POST", "/get-online-features", {"features": features, "entities": {"user_id": [key]}})
            assert status == 200
        growth = rss_bytes(pid) - before
        assert growth <= bound + (50 << 20), f"RSS grew {growth / 2**20:.0f} MiB"
    finally:
        stop(server)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("entities", [3, 12])  # parsed whole / streamed replies
def test_a_corrupt_value_makes_only_its_entity_incomplete(own_redis: tuple[int, subprocess.Popen], entities: int) -> None:
    """Before: one corrupt stored value failed every request that included the entity with 500; a key of the wrong
    type gave a misleading "store unavailable"."""
    port, _ = own_redis
    repo = load_repository(ROOT / "feature_defs")
    project = "f19c"
    filled = fill(project, repo, users=12, events=600, start_ms=START, rate=0.008, cutoff_ms=CUTOFF)
    client = redis.Redis(port=port)
    write(client, filled.data)
    view = repo.view("user_order_stats")
    users = filled.users[:entities]
    store = open_store(repo, f"redis://127.0.0.1:{port}/0", project=project)
    clean = store.get_online_features({"user_id": users}, ["user_order_stats", "customer_profile"], now_ms=CUTOFF)
    a, b, c = users[:3]
    tile_key = layout.entity_key(project, view, (a,))
    client.hset(tile_key, next(f for f in filled.data[tile_key] if f.startswith(layout.TILE_FIELD_PREFIX)),
                b"\xff\x00garbage")
    client.hset(layout.entity_key(project, view, (b,)), layout.BATCH_FIELD_PREFIX + "cutoff", "not-a-number")
    c_tile = layout.entity_key(project, view, (c,))
    client.delete(c_tile)
    client.set(c_tile, "a string where a hash belongs")  # WRONGTYPE for HGETALL
    fresh = open_store(repo, f"redis://127.0.0.1:{port}/0", project=project)
    for reader in (store, fresh):  # with warm caches and without
        got = reader.get_online_features({"user_id": users}, ["user_order_stats", "customer_profile"], now_ms=CUTOFF)
        for f in view.features:
            assert [got.statuses[f.name][i] for i in range(3)] == [INCOMPLETE] * 3
            assert got.values[f.name][3:] == clean.values[f.name][3:]
            assert got.statuses[f.name][3:] == clean.statuses[f.name][3:]
        assert got.values["segment"] == clean.values["segment"]


@pytest.mark.timeout(60)
def test_health_answers_while_a_read_waits_on_a_hung_redis(own_redis: tuple[int, subprocess.Popen]) -> None:
    """Before: in a one-worker `skewless serve` a read blocked on a hung Redis held the worker's event loop, so /health
    answered only after the read's timeout (here 15 s), and then waited on Redis itself."""
    import threading

    port, rproc = own_redis
    server, url = serve(port, {"SKEWLESS_REDIS_TIMEOUT_S": "15", "SKEWLESS_REDIS_CONNECT_TIMEOUT_S": "15"})
    try:
        body = {"features": ["user_order_stats"], "entities": {"user_id": ["u1"]}}
        assert call(url, "POST", "/get-online-features", body)[0] == 200
        os.kill(rproc.pid, signal.SIGSTOP)
        read: dict[str, Any] = {}
        try:
            reader = threading.Thread(target=lambda: read.setdefault("answer", call(url, "POST", "/get-online-features", body)))
            reader.start()
            time.sleep(1)  # the read is sent and waits on the paused Redis
            status, answer = call(url, "GET", "/health")
            read_done = "answer" in read
        finally:
            os.kill(rproc.pid, signal.SIGCONT)
        reader.join(30)
        assert status == 503 and answer["status"] == "unavailable", (status, answer)
        assert not read_done, read  # /health answered while the read still waited
        assert read["answer"][0] in (200, 503), read
    finally:
        stop(server)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("entities", [3, 12])  # parsed whole / streamed replies
@pytest.mark.parametrize("shared", ["epoch", "progress", "meta"])
def test_a_shared_key_of_the_wrong_type_reads_incomplete(own_redis: tuple[int, subprocess.Popen], entities: int,
                                                         shared: str, caplog: pytest.LogCaptureFixture) -> None:
    """Before: the epoch key, a source's progress hash or a view's meta hash holding another Redis type (WRONGTYPE
    on GET / HGETALL) failed the whole read, 500 from the server. Now the views that depend on it read
    `incomplete` (the epoch: every view) with a warning naming the key; the others are served; the server answers 200."""
    port, _ = own_redis
    repo = load_repository(ROOT / "feature_defs")
    project = f"f19w{shared}{entities}"
    filled = fill(project, repo, users=12, events=600, start_ms=START, rate=0.008, cutoff_ms=CUTOFF)
    client = redis.Redis(port=port)
    write(client, filled.data)
    view = repo.view("user_order_stats")
    users = filled.users[:entities]
    features = ["user_order_stats", "customer_profile"]
    store = open_store(repo, f"redis://127.0.0.1:{port}/0", project=project)
    clean = store.get_online_features({"user_id": users}, features, now_ms=CUTOFF)
    assert any(set(clean.statuses[f.name]) != {INCOMPLETE} for f in view.features)
    key = {"epoch": layout.epoch_key(project), "progress": layout.progress_key(project, view.source.name),
           "meta": layout.view_meta_key(project, view)}[shared]
    client.delete(key)
    if shared == "epoch":
        client.hset(key, "a", "hash where a string belongs")
    else:
        client.set(key, "a string where a hash belongs")
    fresh = open_store(repo, f"redis://127.0.0.1:{port}/0", project=project)
    caplog.clear()
    for reader in (store, fresh):  # with warm caches and without
        got = reader.get_online_features({"user_id": users}, features, now_ms=CUTOFF)
        for f in view.features:
            assert set(got.statuses[f.name]) == {INCOMPLETE}, (f.name, got.statuses[f.name])
        if shared == "epoch":
            assert set(got.statuses["segment"]) == {INCOMPLETE}
        else:
            assert got.values["segment"] == clean.values["segment"]
            assert got.statuses["segment"] == clean.statuses["segment"]
    assert any(key in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    from skewless.serving.server import FeatureServer, ServerSettings, ThreadedServer

    app = FeatureServer(ServerSettings(redis_url=f"redis://127.0.0.1:{port}/0", project=project), store=fresh)
    with ThreadedServer(app) as s:
        status, answer = call(s.url, "POST", "/get-online-features", {"features": features, "entities": {"user_id": users}})
    assert status == 200, answer
