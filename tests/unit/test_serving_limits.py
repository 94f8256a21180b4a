"""Issue 19 (items 3-6, 11) on the server and the store with in-memory fakes: a stalled body times out (408), long
join keys and extra join keys are refused, the value caches stay within their byte bound, a corrupt stored value
makes only its entity incomplete (logged once), a push with Kafka down is a 503 and never delays a 400."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
from typing import Any

import pytest

from skewless.core import layout
from skewless.core.repo import load_repository
from skewless.core.staleness import INCOMPLETE
from skewless.serving import evaluate
from skewless.serving.online import OnlineRequestError, OnlineStore
from skewless.serving.push import PushDeliveryError, Pusher
from skewless.serving.server import FeatureServer, ServerSettings, ThreadedServer
from tests.support.fill import fill
from tests.unit.test_serving_server import CUTOFF, START, MemRedis

P = "lim"
FEATURES = ["user_order_stats", "customer_profile"]
EVENT = {"event_id": "e1", "user_id": "u1", "order_id": "o1", "amount": 100, "currency": "EUR", "status": "placed",
         "event_time": "2024-01-01T00:00:00.000Z"}


@pytest.fixture(scope="module")
def repo() -> Any:
    return load_repository()


@pytest.fixture(scope="module")
def filled(repo: Any) -> Any:
    return fill(P, repo, users=6, events=300, start_ms=START, rate=0.004, cutoff_ms=CUTOFF)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    import http.client

    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body is not None else {})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        conn.close()


@pytest.mark.timeout(30)
def test_a_stalled_body_times_out_with_a_json_408(repo: Any, filled: Any) -> None:
    store = OnlineStore(repo, MemRedis(filled.data), P)
    with ThreadedServer(FeatureServer(ServerSettings(project=P, body_timeout_s=1.0), store=store)) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=25) as s:
            s.sendall(b"POST /get-online-features HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"features\":")  # 13 of 100 bytes, then nothing
            reply = b""
            while chunk := s.recv(65536):  # the server answers and closes (before: no answer, ever)
                reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_a_long_join_key_is_refused_naming_the_limit(repo: Any, filled: Any) -> None:
    store = OnlineStore(repo, MemRedis(filled.data), P, max_key_length=100)
    store.get_online_features({"user_id": ["u" * 100]}, FEATURES)
    for entities in ({"user_id": ["u" * 101]}, {"user_id": [filled.users[0], "u" * 101]}):
        with pytest.raises(OnlineRequestError, match="101 characters; the limit is 100 .SKEWLESS_SERVE_MAX_KEY_LENGTH"):
            store.get_online_features(entities, FEATURES)
    with ThreadedServer(FeatureServer(ServerSettings(project=P), store=store)) as server:
        status, body = http(server.url, "POST", "/get-online-features",
                            json.dumps({"features": FEATURES, "entities": {"user_id": ["u" * 5000]}}).encode())
    assert status == 400 and "the limit is 100" in body["error"]["message"]


def test_the_value_caches_stay_within_their_byte_bound(repo: Any, filled: Any) -> None:
    """Before: 65,536 entries of any size (200 unique 500 KB keys took a server from 67 to 544 MiB)."""
    bound = 2 << 20
    store = OnlineStore(repo, MemRedis(filled.data), P, max_key_length=1 << 20, cache_bytes=bound)
    big = [f"{i:06d}" + "x" * 50_000 for i in range(200)]
    for i in range(0, 200, 2):
        store.get_online_features({"user_id": big[i:i + 2] + filled.users[:3]}, FEATURES)
        c = store.caches
        held = sum(len(t) + len(v) for d in c.packed.values() for t, v in d.items())
        held += sum(len(t) for d in c.memo.values() for t in d) + sum(len(t) for d in c.snap_raw.values() for t in d)
        assert c.used_bytes <= bound and held <= bound
    assert store.get_online_features({"user_id": filled.users}, FEATURES).values  # still serves


def test_extra_join_keys_are_refused_naming_them(repo: Any, filled: Any) -> None:
    store = OnlineStore(repo, MemRedis(filled.data), P)
    u = filled.users[0]
    for rows in ([{"user_id": u, "usr_id": "x"}], {"user_id": [u], "usr_id": ["x"]},
                 [{"user_id": u}, {"user_id": u, "usr_id": "x"}]):
        with pytest.raises(OnlineRequestError, match=r"key\(s\) \['usr_id'\] that no requested view takes"):
            store.get_online_features(rows, FEATURES)


@pytest.mark.parametrize("entities,features", [({"user_id": ["\ud800"]}, FEATURES), ([{"user_id": "a\udfffb"}], FEATURES),
                                               ({"user_id": ["u"]}, None), ({"user_id": ["u"]}, 3)])
def test_a_lone_surrogate_or_no_features_is_a_request_error(repo: Any, filled: Any, entities: Any, features: Any) -> None:
    store = OnlineStore(repo, MemRedis(filled.data), P)
    with pytest.raises(OnlineRequestError):
        store.get_online_features(entities, features)


def test_a_corrupt_value_makes_only_that_entity_incomplete_and_is_logged_once(
        repo: Any, filled: Any, caplog: pytest.LogCaptureFixture) -> None:
    view = repo.view("user_order_stats")
    a, b, c = filled.users[:3]
    data = dict(filled.data)
    tile_key = layout.entity_key(P, view, (a,))
    tile = next(f for f in data[tile_key] if f.startswith(layout.TILE_FIELD_PREFIX))
    data[tile_key] = {**data[tile_key], tile: "\xff\x00garbage"}
    batch_key = layout.entity_key(P, view, (b,))
    data[batch_key] = {**data[batch_key], layout.BATCH_FIELD_PREFIX + "cutoff": "not-a-number"}
    clean = OnlineStore(repo, MemRedis(filled.data), P).get_online_features({"user_id": [a, b, c]}, FEATURES, now_ms=CUTOFF)
    store = OnlineStore(repo, MemRedis(data), P)
    evaluate._corrupt_logged.clear()
    with caplog.at_level(logging.WARNING, logger="skewless.serving"):
        for _ in range(3):
            got = store.get_online_features({"user_id": [a, b, c]}, FEATURES, now_ms=CUTOFF)
    for col in (f.name for f in view.features):
        assert got.statuses[col][0] == INCOMPLETE and got.values[col][0] is None
        assert got.statuses[col][1] == INCOMPLETE
        assert (got.values[col][2], got.statuses[col][2]) == (clean.values[col][2], clean.statuses[col][2])
    assert got.values["segment"] == clean.values["segment"]  # the other view of the same entities is served
    logged = [r.getMessage() for r in caplog.records if "corrupt stored value" in r.getMessage()]
    assert len(logged) == 2  # once per key, not per read
    assert any(tile_key in m for m in logged) and any(batch_key in m for m in logged)


@pytest.mark.timeout(60)
def test_push_with_kafka_down_is_a_delivery_error(repo: Any) -> None:
    """Before: KafkaException from list_topics (after 10 s), not a PushDeliveryError."""
    pusher = Pusher(repo, f"127.0.0.1:{closed_port()}", timeout_s=1.0)
    event = EVENT
    with pytest.raises(PushDeliveryError, match="unavailable"):
        pusher.push("orders", [event])


@pytest.mark.timeout(60)
def test_an_invalid_push_is_answered_while_a_push_waits_on_kafka(repo: Any, filled: Any,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Before: a 400 waited behind pushes blocked on Kafka (14.5 s); a push with Kafka down was a 500."""
    pusher = Pusher(repo, f"127.0.0.1:{closed_port()}", timeout_s=5.0)
    app = FeatureServer(ServerSettings(project=P), store=OnlineStore(repo, MemRedis(filled.data), P), pusher=pusher)
    event = EVENT
    answers: list[tuple[str, int]] = []
    with caplog.at_level(logging.WARNING), ThreadedServer(app) as server:
        def valid() -> None:
            answers.append(("valid", http(server.url, "POST", "/push", json.dumps({"source": "orders", "events": [event]}).encode())[0]))

        threads = [threading.Thread(target=valid) for _ in range(3)]
        for t in threads:
            t.start()
        while not any(t.is_alive() for t in threads) or not pusher._lock.locked():  # a push is waiting on Kafka
            threading.Event().wait(0.01)
        status, body = http(server.url, "POST", "/push", json.dumps({"source": "orders", "events": [{"x": 1}]}).encode())
        answers.append(("invalid", status))
        for t in threads:
            t.join()
    assert answers[0] == ("invalid", 400)
    assert sorted(answers[1:]) == [("valid", 503)] * 3
    assert any("kafka_unavailable" in r.getMessage() and "503" in r.getMessage() for r in caplog.records)  # 5xx logged


@pytest.mark.timeout(60)
def test_kafka_down_is_logged_once_not_forever(tmp_path: Any) -> None:
    """Before: after one failed push librdkafka logged ~4 lines/s forever."""
    script = f"""
import logging, time
from skewless.core.repo import load_repository
from skewless.serving.push import Pusher, PushDeliveryError
logging.basicConfig(level=logging.INFO)
p = Pusher(load_repository(), "127.0.0.1:{closed_port()}", timeout_s=1.0)
for _ in range(2):
    try:
        p.push("orders", [{EVENT!r}])
    except PushDeliveryError:
        pass
time.sleep(4)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50)
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert out.returncode == 0, out.stderr
    assert len(lines) <= 2, lines  # "Kafka ... is unavailable" once


def test_forgetting_the_entities_gives_back_their_share_of_the_byte_budget(repo: Any, filled: Any) -> None:
    store = OnlineStore(repo, MemRedis(filled.data), P)
    store.get_online_features({"user_id": filled.users}, FEATURES)
    store.caches.charge(1000)  # e.g. the packed commands of an entity (kept)
    rest = store.caches.used_bytes - store.caches.entity_bytes
    assert store.caches.entity_bytes > 0 and rest >= 1000
    store.caches.forget_entities()
    assert store.caches.used_bytes == rest and not store.caches.memo and not store.caches.decoded


@pytest.mark.parametrize("var,value", [("SKEWLESS_SERVE_CACHE_BYTES", "lots"), ("SKEWLESS_SERVE_MAX_KEY_LENGTH", "-1"),
                                       ("SKEWLESS_SERVE_BODY_TIMEOUT_S", "0"), ("SKEWLESS_REDIS_TIMEOUT_S", "soon"),
                                       ("SKEWLESS_KAFKA_TIMEOUT_S", "x")])
def test_serve_refuses_a_bad_limit_or_timeout_in_one_line(tmp_path: Any, var: str, value: str) -> None:
    from tests.unit.test_cli_errors import REPO, assert_one_line_error, cli

    rc, _, err = cli(tmp_path, "serve", "--repo", REPO, "--port", str(closed_port()), env={var: value})
    assert_one_line_error(rc, err, "serve", var)
