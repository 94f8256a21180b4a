"""The feature server over real HTTP (one uvicorn worker in a thread, an in-memory store): endpoints, bad input
answered with a 4xx JSON that says what is wrong, bearer token, and a hypothesis fuzz of bodies and headers
proving every answer is a well-formed JSON 2xx/4xx and the server stays up."""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skewless.core import layout
from skewless.core.repo import load_repository
from skewless.core.timeutil import MS_PER_DAY, MS_PER_HOUR
from skewless.serving.online import OnlineStore
from skewless.serving.push import Pusher
from skewless.serving.server import FeatureServer, ServerSettings, ThreadedServer
from tests.support.fill import fill

P = "p"
START = 1_704_067_200_000 + 10 * MS_PER_DAY + 7 * MS_PER_HOUR
CUTOFF = 1_704_067_200_000 + 11 * MS_PER_DAY
TOKEN = "s3cret"


class MemRedis:
    """GET/HGETALL directly and in a pipeline (bytes, like redis-py without decode_responses)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = {k: ({a.encode(): b.encode() for a, b in v.items()} if isinstance(v, dict) else v.encode())
                     for k, v in data.items()}

    def get(self, key: Any) -> Any:
        return self.data.get(key.decode() if isinstance(key, bytes) else key)

    def hgetall(self, key: Any) -> dict:
        return dict(self.data.get(key.decode() if isinstance(key, bytes) else key) or {})

    def scan_iter(self, match: str = "*", count: int = 0) -> list:
        return []

    def pipeline(self, transaction: bool = False) -> "MemRedis._Pipe":
        return MemRedis._Pipe(self)

    class _Pipe:
        def __init__(self, r: "MemRedis") -> None:
            self.r, self.ops = r, []

        def get(self, key: str) -> None:
            self.ops.append(lambda: self.r.get(key))

        def hgetall(self, key: str) -> None:
            self.ops.append(lambda: self.r.hgetall(key))

        def hmget(self, key: str, *fields: Any) -> None:
            self.ops.append(lambda: [self.r.hgetall(key).get(f if isinstance(f, bytes) else f.encode()) for f in fields])

        def execute(self, raise_on_error: bool = True) -> list:
            return [op() for op in self.ops]


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list = []

    def list_topics(self, topic: str, timeout: float = 0) -> Any:
        class T:
            error = None
            partitions = {0: None, 1: None, 2: None}

        class M:
            topics = {topic: T()}

        return M()

    def produce(self, topic: str, value: bytes, key: bytes, partition: int, timestamp: int, on_delivery: Any) -> None:
        self.sent.append((topic, key, value, partition))
        self.pending = getattr(self, "pending", []) + [(on_delivery, partition, len(self.sent) - 1)]

    def poll(self, t: float = 0) -> None:
        pass

    def flush(self, t: float = 0) -> int:
        class Msg:
            def __init__(self, p: int, o: int) -> None:
                self.p, self.o = p, o

            def partition(self) -> int:
                return self.p

            def offset(self) -> int:
                return self.o

        for cb, p, o in getattr(self, "pending", []):
            cb(None, Msg(p, o))
        self.pending = []
        return 0


@pytest.fixture(scope="module")
def server() -> Any:
    repo = load_repository()
    filled = fill(P, repo, users=6, events=300, start_ms=START, rate=0.004, cutoff_ms=CUTOFF)
    store = OnlineStore(repo, MemRedis(filled.data), P, max_entities=50)
    producer = FakeProducer()
    app = FeatureServer(ServerSettings(project=P, max_entities=50, max_body_bytes=64 * 1024, api_token=TOKEN), store=store,
                        pusher=Pusher(repo, "unused:1", producer=producer))
    with ThreadedServer(app) as s:
        s.users, s.producer = filled.users, producer  # type: ignore[attr-defined]
        yield s


def call(server: Any, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None,
         token: bool = True) -> tuple[int, dict[str, str], bytes]:
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    h = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        h["Authorization"] = f"Bearer {TOKEN}"
    h.update(headers or {})
    try:
        conn.request(method, path, body=body.encode() if isinstance(body, str) else body, headers=h)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_get_online_features_by_service_and_refs(server: Any) -> None:
    users = server.users[:3]
    status, headers, body = call(server, "POST", "/get-online-features",
                                 json.dumps({"feature_service": "churn_model", "entities": {"user_id": users}}))
    assert status == 200, body
    data = json.loads(body)
    assert data["features"][0] == "user_orders_last_1h" and data["entities"] == {"user_id": users}
    assert all(len(v) == 3 for v in data["values"].values()) and set(data["statuses"]) == set(data["features"])
    status, _, body = call(server, "POST", "/get-online-features", json.dumps(
        {"features": ["customer_profile:segment"], "entities": {"user_id": users[:1]}, "as_of": CUTOFF}))
    assert status == 200 and json.loads(body)["as_of_ms"] == CUTOFF


@pytest.mark.parametrize("payload,status,says", [
    ({"features": ["user_order_stats:user_orders_last_1hh"], "entities": {"user_id": ["a"]}}, 400, "did you mean"),
    ({"feature_service": "churn_model", "entities": {"user_id": [1]}}, 400, "is a string"),
    ({"feature_service": "churn_model", "entities": {"uid": ["a"]}}, 400, "lack join key"),
    ({"feature_service": "churn_model", "entities": {"user_id": ["a"] * 51}}, 400, "limit is 50"),
    ({"feature_service": "churn_model"}, 400, "'entities'"),
    ({"feature_service": "churn_model", "features": ["x"], "entities": {"user_id": ["a"]}}, 400, "exactly one"),
    ({"feature_service": "churn_model", "entities": {"user_id": ["a"]}, "as_of": CUTOFF + 1}, 400, "training-set path"),
    ({"feature_service": "churn_model", "entities": {"user_id": ["a"]}, "extra": 1}, 400, "unknown field"),
    ([1, 2], 400, "JSON object"),
])
def test_bad_requests_say_what_is_wrong(server: Any, payload: Any, status: int, says: str) -> None:
    got, headers, body = call(server, "POST", "/get-online-features", json.dumps(payload))
    assert got == status and headers["content-type"] == "application/json"
    assert says in json.loads(body)["error"]["message"]


def test_transport_errors(server: Any) -> None:
    assert call(server, "POST", "/get-online-features", "{not json")[0] == 400
    assert call(server, "POST", "/get-online-features", "x" * (64 * 1024 + 1))[0] == 413
    assert call(server, "POST", "/get-online-features", "{}", headers={"Content-Type": "text/plain"})[0] == 415
    assert call(server, "GET", "/get-online-features")[0] == 405
    assert call(server, "GET", "/nope")[0] == 404
    assert call(server, "POST", "/get-online-features", "{}", token=False)[0] == 401
    assert call(server, "POST", "/get-online-features", "{}", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert call(server, "GET", "/health", token=False)[0] == 200
    spec = json.loads(call(server, "GET", "/openapi.json", token=False)[2])
    assert "/get-online-features" in spec["paths"]


def test_metrics_count_requests(server: Any) -> None:
    call(server, "GET", "/health")
    status, headers, body = call(server, "GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'skewless_http_requests_total{endpoint="/health",status="200"' in text
    assert "skewless_http_request_seconds_bucket" in text


def test_push_refuses_invalid_batches_whole_and_sends_valid_ones(server: Any) -> None:
    good = {"event_id": "e1", "user_id": "u1", "order_id": "o1", "amount": 100, "currency": "EUR", "status": "placed",
            "event_time": "2024-01-01T00:00:00.000Z"}
    before = len(server.producer.sent)
    status, _, body = call(server, "POST", "/push", json.dumps(
        {"source": "orders", "events": [good, {**good, "amount": -1}, {**good, "event_time": "2024-01-01"}]}))
    err = json.loads(body)["error"]
    assert status == 400 and [p["index"] for p in err["problems"]] == [1, 2] and len(server.producer.sent) == before
    status, _, body = call(server, "POST", "/push", json.dumps({"source": "orders", "events": [good, {**good, "event_id": "e2"}]}))
    assert status == 200 and json.loads(body)["delivered"] == 2 and len(server.producer.sent) == before + 2
    assert server.producer.sent[-1][1] == b"u1"
    status, _, body = call(server, "POST", "/push", json.dumps({"source": "customer_profiles", "events": [good]}))
    assert status == 400 and "table source" in json.loads(body)["error"]["message"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20)
request_like = st.fixed_dictionaries({}, optional={
    "features": st.one_of(json_values, st.lists(st.sampled_from(
        ["user_order_stats", "user_order_stats:user_orders_last_1h", "customer_profile:segment", "churn_model", "x:y"]),
        max_size=4)),
    "feature_service": st.one_of(json_values, st.sampled_from(["churn_model", "upsell_model", "nope"])),
    "entities": st.one_of(json_values, st.dictionaries(st.sampled_from(["user_id", "x"]), st.lists(
        st.one_of(st.text(max_size=8), st.integers(), st.none(), st.floats()), max_size=4), max_size=2)),
    "as_of": st.one_of(json_values, st.integers(min_value=-1, max_value=2**64)),
    "source": st.one_of(st.sampled_from(["orders", "customer_profiles", "nope"]), json_values),
    "events": json_values,
})
bodies = st.one_of(request_like.map(lambda d: json.dumps(d).encode()), json_values.map(lambda v: json.dumps(v).encode()),
                   st.binary(max_size=200))
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/get-online-features", "/push", "/health", "/metrics", "/openapi.json", "/x"]),
       method=st.sampled_from(["POST", "GET", "PUT", "DELETE"]), body=bodies,
       ctype=st.one_of(st.just("application/json"), st.just("application/json; charset=utf-8"), header_text),
       auth=st.one_of(st.just(f"Bearer {TOKEN}"), header_text))
def test_fuzz_every_answer_is_json_2xx_or_4xx_and_the_server_stays_up(server: Any, path: str, method: str, body: bytes,
                                                                     ctype: str, auth: str) -> None:
    status, headers, raw = call(server, method, path, body, headers={"Content-Type": ctype, "Authorization": auth},
                                token=False)
    assert 200 <= status < 500, (status, raw[:300])
    if path != "/metrics" or status != 200:
        json.loads(raw)
    assert call(server, "GET", "/health")[0] == 200


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(server: Any, scheme: str) -> None:
    status, _, body = call(server, "GET", "/metrics", headers={"Authorization": f"{scheme} {TOKEN}"}, token=False)
    assert status == 200, body
    assert call(server, "GET", "/metrics", headers={"Authorization": f"{scheme} wrong"}, token=False)[0] == 401
    assert call(server, "GET", "/metrics", headers={"Authorization": f"Basic {TOKEN}"}, token=False)[0] == 401
    assert call(server, "GET", "/metrics", headers={"Authorization": TOKEN}, token=False)[0] == 401


def raw_request(server: Any, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes that are not a valid HTTP request; the answer is parsed by hand."""
    import socket

    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(data)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("data", [
    b"THIS IS NOT HTTP\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n",
    b"POST /push HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nzz\r\n",
])
def test_requests_uvicorn_cannot_parse_get_a_json_400(server: Any, data: bytes) -> None:
    status, headers, body = raw_request(server, data)
    assert status == 400 and headers["content-type"] == "application/json", (headers, body)
    assert json.loads(body)["error"]["code"] == "bad_request"
    assert call(server, "GET", "/health")[0] == 200


def test_api_token_from_the_environment_or_a_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from skewless.config import ConfigError

    monkeypatch.setenv("SKEWLESS_API_TOKEN", "from-env")
    assert FeatureServer(ServerSettings(), store=object())._token == b"from-env"
    monkeypatch.delenv("SKEWLESS_API_TOKEN")
    secret_file = tmp_path / "token"
    secret_file.write_text("from-file\n")
    monkeypatch.setenv("SKEWLESS_API_TOKEN_FILE", str(secret_file))
    assert FeatureServer(ServerSettings(), store=object())._token == b"from-file"
    monkeypatch.setenv("SKEWLESS_API_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="SKEWLESS_API_TOKEN_FILE=.*cannot read the secret file"):
        FeatureServer(ServerSettings(), store=object())
    assert "from-file" not in ServerSettings(api_token="from-file").to_env()
