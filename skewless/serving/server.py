"""The HTTP feature server (``skewless serve``): a plain ASGI app on uvicorn (httptools + uvloop), N worker
processes sharing one listening socket, never recycled (no periodic stalls).

Endpoints (docs/serving.md; the spec is :mod:`skewless.serving.openapi`):

- ``POST /get-online-features`` ``{"features": [...] | "feature_service": "...", "entities": {key: [values]},
  "as_of": ms | "ISO-8601"}`` -> :meth:`OnlineResponse.to_dict`;
- ``POST /push`` ``{"source": "...", "events": [...]}`` -> delivery positions (validated first, all or none);
- ``GET /health``, ``GET /metrics`` (Prometheus: requests and latency per endpoint, freshness of every view),
  ``GET /openapi.json``.

Every bad input is a 4xx JSON ``{"error": {"code", "message", ...}}`` (also the 400 uvicorn answers itself to a
request it cannot parse, see :class:`JsonErrorHttpProtocol`); an unavailable Redis/Kafka is 503. Settings travel
to the workers in ``SKEWLESS_SERVE_*`` environment variables (uvicorn starts workers from an import string), see
:class:`ServerSettings`; the secrets (API token, Redis password) come from :mod:`skewless.config`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any, Awaitable, Callable

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from skewless import config
from skewless.config import HOST
from skewless.core import layout

DEFAULT_MAX_BODY = 1 << 20
DEFAULT_MAX_ENTITIES = 1000
DEFAULT_BODY_TIMEOUT_S = 10.0  # a request body not complete this long after its headers: 408
log = logging.getLogger("skewless.serve")
_ENV = "SKEWLESS_SERVE_SETTINGS"
_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_FRESHNESS_CACHE_S = 10.0
HEALTH_PROBE_S = 2.0  # /health waits at most this long (or the Redis timeouts, if shorter) for Redis, then answers 503

Send = Callable[[dict], Awaitable[None]]
Receive = Callable[[], Awaitable[dict]]


@dataclass
class ServerSettings:
    """What a worker needs. Secrets are not settings: the API token and the Redis password come from
    :func:`skewless.config.api_token` / :func:`skewless.config.redis_target` (``api_token`` here serves an
    in-process server, e.g. tests; :meth:`to_env` leaves it out)."""

    repo: str = "feature_defs"
    redis_url: str | None = None
    redis_tls: bool = False
    project: str | None = None
    kafka_bootstrap: str | None = None
    api_token: str | None = field(default=None, repr=False)
    max_body_bytes: int = DEFAULT_MAX_BODY
    max_entities: int = DEFAULT_MAX_ENTITIES
    sample_rate: float = 0.0
    body_timeout_s: float = field(default_factory=lambda: config.env_seconds("SKEWLESS_SERVE_BODY_TIMEOUT_S",
                                                                             DEFAULT_BODY_TIMEOUT_S))
    cache_bytes: int | None = None  # the store's value caches (None: SKEWLESS_SERVE_CACHE_BYTES or the default)
    max_key_length: int | None = None  # characters of a join key value (None: SKEWLESS_SERVE_MAX_KEY_LENGTH or default)

    def to_env(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if k != "api_token"})

    @staticmethod
    def from_env() -> "ServerSettings":
        raw = os.environ.get(_ENV)
        return ServerSettings(**json.loads(raw)) if raw else ServerSettings()


class HttpError(Exception):
    """An answer other than 200: status, machine code, message, extra fields."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def dumps(data: Any) -> bytes:
    return orjson.dumps(data, default=_default, option=orjson.OPT_NON_STR_KEYS)


class _Metrics:
    """Request counts and latency histograms per (endpoint, status) of this worker process."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}
        self.hist: dict[str, list[float]] = {}  # endpoint -> bucket counts + [sum, count]
        self.started = time.time()

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        h = self.hist.get(endpoint)
        if h is None:
            h = self.hist[endpoint] = [0.0] * (len(_BUCKETS) + 2)
        for i, b in enumerate(_BUCKETS):
            if seconds <= b:
                h[i] += 1
                break
        h[-2] += seconds
        h[-1] += 1

    def render(self) -> str:
        lines = ["# HELP skewless_http_requests_total Requests answered by this worker, per endpoint and status.",
                 "# TYPE skewless_http_requests_total counter"]
        pid = os.getpid()
        for (ep, status), n in sorted(self.counts.items()):
            lines.append(f'skewless_http_requests_total{{endpoint="{ep}",status="{status}",worker="{pid}"}} {n}')
        lines += ["# HELP skewless_http_request_seconds Request latency in this worker, per endpoint.",
                  "# TYPE skewless_http_request_seconds histogram"]
        for ep, h in sorted(self.hist.items()):
            cum = 0.0
            for b, c in zip(_BUCKETS, h):
                cum += c
                lines.append(f'skewless_http_request_seconds_bucket{{endpoint="{ep}",worker="{pid}",le="{b}"}} {int(cum)}')
            lines.append(f'skewless_http_request_seconds_bucket{{endpoint="{ep}",worker="{pid}",le="+Inf"}} {int(h[-1])}')
            lines.append(f'skewless_http_request_seconds_sum{{endpoint="{ep}",worker="{pid}"}} {h[-2]!r}')
            lines.append(f'skewless_http_request_seconds_count{{endpoint="{ep}",worker="{pid}"}} {int(h[-1])}')
        lines += ["# HELP skewless_http_worker_uptime_seconds Seconds since this worker started.",
                  "# TYPE skewless_http_worker_uptime_seconds gauge",
                  f'skewless_http_worker_uptime_seconds{{worker="{pid}"}} {time.time() - self.started:.3f}']
        return "\n".join(lines) + "\n"


_ROUTES = {"/get-online-features": "POST", "/push": "POST", "/health": "GET", "/metrics": "GET", "/openapi.json": "GET"}
_OPEN = {"/health", "/openapi.json"}  # answered without the API token


class FeatureServer:
    """The ASGI application (one per worker process)."""

    def __init__(self, settings: ServerSettings, store: Any = None, pusher: Any = None) -> None:
        self.settings = settings
        self._store = store
        self._pusher = pusher
        self._init_lock = threading.Lock()
        self.metrics = _Metrics()
        self._freshness: tuple[float, str] | None = None
        self._hung: tuple[float, str] | None = None  # (until when reads answer 503 at once, why): a read timed out
        self._probe: asyncio.Future | None = None  # /health's Redis read in flight (one at a time)
        token = settings.api_token or config.api_token()
        self._token = None if not token else token.encode()

    # -- lazy dependencies ------------------------------------------------------------------------------

    @property
    def store(self) -> Any:
        if self._store is None:
            with self._init_lock:
                if self._store is None:
                    from skewless.monitoring.sampling import ValueSampler
                    from skewless.serving.online import open_store

                    s = self.settings
                    self._store = open_store(s.repo, s.redis_url, project=s.project, tls=s.redis_tls,
                                             max_entities=s.max_entities, cache_bytes=s.cache_bytes,
                                             max_key_length=s.max_key_length,
                                             sampler=ValueSampler(s.sample_rate) if s.sample_rate else None)
        return self._store

    @property
    def pusher(self) -> Any:
        if self._pusher is None:
            with self._init_lock:
                if self._pusher is None:
                    from skewless.serving.push import Pusher

                    self._pusher = Pusher(self.store.repo, self.settings.kafka_bootstrap)
        return self._pusher

    # -- ASGI -----------------------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        t0 = time.perf_counter()
        path = scope.get("path", "")
        endpoint = path if path in _ROUTES else "other"
        try:
            status, body, ctype = await self._handle(scope, receive, path)
        except HttpError as exc:
            status, body, ctype = exc.status, dumps({"error": {"code": exc.code, "message": exc.message, **exc.extra}}), \
                b"application/json"
            if status >= 500:
                log.error("%s %s -> %d %s: %s", scope.get("method"), path, status, exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001 - the server answers, it never dies on a request
            status, ctype = 500, b"application/json"
            body = dumps({"error": {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}})
            log.exception("%s %s -> 500: %s: %s", scope.get("method"), path, type(exc).__name__, exc)
        headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        elif status == 408:  # the rest of the body may still arrive: never read it as the next request
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.metrics.observe(endpoint, status, time.perf_counter() - t0)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    _ = self.store  # load the repository once, before the first request
                    import gc

                    gc.freeze()  # what is loaded now is never garbage: full collections stay short (no stalls)
                    await send({"type": "lifespan.startup.complete"})
                except Exception as exc:  # noqa: BLE001 - reported to uvicorn, which stops
                    await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _body(self, scope: dict, receive: Receive) -> bytes:
        limit = self.settings.max_body_bytes
        headers = dict(scope.get("headers") or [])
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype != b"application/json":
            raise HttpError(415, "unsupported_media_type",
                            f"Content-Type must be application/json, got {ctype.decode('latin-1') or 'none'}")
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    raise HttpError(413, "body_too_large", f"body of {int(declared)} bytes exceeds the limit of {limit} bytes")
            except ValueError:
                raise HttpError(400, "bad_request", "Content-Length is not a number") from None
        chunks, size = [], 0
        timeout = self.settings.body_timeout_s
        try:
            async with asyncio.timeout(timeout):  # the whole body, however it is split (no slow drip either)
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise HttpError(400, "bad_request", "client disconnected")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise HttpError(413, "body_too_large", f"body exceeds the limit of {limit} bytes")
                    chunks.append(chunk)
                    if not message.get("more_body"):
                        break
        except TimeoutError:
            raise HttpError(408, "request_timeout",
                            f"the request body did not arrive within {timeout:g} s of its headers "
                            "(SKEWLESS_SERVE_BODY_TIMEOUT_S); send the whole body at once") from None
        raw = b"".join(chunks)
        if not raw:
            raise HttpError(400, "bad_request", "empty body: send a JSON object")
        return raw

    @staticmethod
    def _json_object(raw: bytes, allowed: set[str]) -> dict:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise HttpError(400, "malformed_json", f"body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise HttpError(400, "bad_request", f"body must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise HttpError(400, "bad_request", f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")
        return data

    async def _handle(self, scope: dict, receive: Receive, path: str) -> tuple[int, bytes, bytes]:
        method = scope.get("method", "GET")
        want = _ROUTES.get(path)
        if want is None:
            raise HttpError(404, "not_found", f"no endpoint {path!r}; endpoints: {sorted(_ROUTES)}")
        if method != want and not (want == "GET" and method == "HEAD"):
            raise HttpError(405, "method_not_allowed", f"{path} takes {want}, got {method}")
        if self._token is not None and path not in _OPEN and not self._authorized(scope):
            raise HttpError(401, "unauthorized", "missing or wrong 'Authorization: Bearer <token>'")
        if path == "/get-online-features":  # on the reads thread: a read waiting on Redis never holds the loop
            raw = await self._body(scope, receive)
            return 200, await asyncio.get_running_loop().run_in_executor(_pool("reads", 1), self._features, raw), \
                b"application/json"
        if path == "/push":
            raw = await self._body(scope, receive)
            return 200, await self._push(raw), b"application/json"
        if path == "/health":
            return await self._health()
        if path == "/metrics":
            from skewless.monitoring.prometheus import CONTENT_TYPE

            return 200, (self.metrics.render() + self._freshness_text()).encode(), CONTENT_TYPE.encode()
        from skewless.serving.openapi import spec

        return 200, dumps(spec(self.settings.max_entities, self.settings.max_body_bytes)), b"application/json"

    def _authorized(self, scope: dict) -> bool:
        """``Authorization: <scheme> <token>`` with the scheme ``Bearer`` in any case (RFC 7235) and our token."""
        assert self._token is not None
        parts = dict(scope.get("headers") or []).get(b"authorization", b"").split(None, 1)
        return (len(parts) == 2 and parts[0].lower() == b"bearer"
                and hmac.compare_digest(parts[1].strip(), self._token))

    def _features(self, raw: bytes) -> bytes:
        import redis

        from skewless.serving.online import OnlineRequestError

        data = self._json_object(raw, {"features", "feature_service", "entities", "as_of"})
        if ("features" in data) == ("feature_service" in data):
            raise HttpError(400, "bad_request", "give exactly one of 'features' (list of 'view:feature' or view names) "
                                                "and 'feature_service' (a service name)")
        features = data.get("features", data.get("feature_service"))
        if "features" in data and not (isinstance(features, list) and features and all(isinstance(f, str) for f in features)):
            raise HttpError(400, "bad_request", "'features' must be a non-empty list of strings")
        if "feature_service" in data and not isinstance(features, str):
            raise HttpError(400, "bad_request", "'feature_service' must be a string")
        entities = data.get("entities")
        if not isinstance(entities, dict) or not entities:
            raise HttpError(400, "bad_request", "'entities' must be an object of join key -> list of values, "
                                                "e.g. {\"user_id\": [\"u1\", \"u2\"]}")
        as_of = data.get("as_of")
        if as_of is not None and (isinstance(as_of, bool) or not isinstance(as_of, (int, str))):
            raise HttpError(400, "bad_request", "'as_of' must be epoch ms (integer) or an ISO-8601 string with a zone")
        hung = self._hung
        if hung is not None and time.monotonic() < hung[0]:  # don't queue reads behind the hung store
            raise HttpError(503, "store_unavailable", f"online store unavailable: {hung[1]} (not retried for "
                                                      f"{config.redis_timeouts()[1]:g} s)")
        try:
            response = self.store.get_online_features(entities, features, as_of=as_of)
        except OnlineRequestError as exc:
            raise HttpError(400, "bad_request", str(exc)) from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            why = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, redis.TimeoutError):  # reads wait on the one reads thread: the next ones fail fast for a while
                self._hung = (time.monotonic() + config.redis_timeouts()[1], why)
            raise HttpError(503, "store_unavailable", f"online store unavailable: {why}") from None
        except redis.RedisError as exc:  # an error reply (e.g. WRONGTYPE on a shared key): the store is up, its data wrong
            raise HttpError(500, "store_error", f"the online store answered an error: {type(exc).__name__}: {exc}") from None
        return dumps(response.to_dict())

    async def _push(self, raw: bytes) -> bytes:
        from skewless.serving.push import PushDeliveryError, PushError

        data = self._json_object(raw, {"source", "events"})
        source, events = data.get("source"), data.get("events")
        if not isinstance(source, str) or not source:
            raise HttpError(400, "bad_request", "'source' must be the name of an event source")
        if not isinstance(events, list):
            raise HttpError(400, "bad_request", "'events' must be a list of event objects")
        pusher = self.pusher
        try:  # validation here (CPU only: a 400 never waits behind Kafka); delivery on the push threads
            rules, messages = pusher.check(source, events)
        except PushError as exc:
            raise HttpError(400, "invalid_events", str(exc), problems=[{"index": i, "reason": r} for i, r in exc.problems]) \
                from None
        try:
            result = await asyncio.get_running_loop().run_in_executor(_pool("push", 4), pusher.deliver, rules, messages)
        except PushDeliveryError as exc:
            raise HttpError(503, "kafka_unavailable", str(exc)) from None
        return dumps(result.to_dict())

    async def _health(self) -> tuple[int, bytes, bytes]:
        """The store's epoch marker read on a thread of its own (reads run on theirs: never behind a blocked read),
        awaited at most ``HEALTH_PROBE_S`` (or the Redis timeouts): 200, or 503 naming why Redis did not answer.
        One probe at a time: while one waits on a hung Redis, the next /health awaits it instead of queueing more."""
        bound = min(sum(config.redis_timeouts()), HEALTH_PROBE_S)
        try:
            store = self.store  # a Redis Cluster is discovered when the store opens: it may fail here (503)
            probe = self._probe
            if probe is None or probe.done():
                probe = self._probe = asyncio.get_running_loop().run_in_executor(
                    _pool("health", 1), store.client.get, layout.epoch_key(store.project))
            epoch = await asyncio.wait_for(asyncio.shield(probe), bound)
            body = {"status": "ok", "redis": "ok", "store_initialised": epoch is not None, "pid": os.getpid()}
            return 200, dumps(body), b"application/json"
        except Exception as exc:  # noqa: BLE001 - health reports, never raises
            why = f"no answer within {bound:g} s" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            log.warning("/health: Redis unavailable: %s", why)
            return 503, dumps({"status": "unavailable", "redis": why}), b"application/json"

    def _freshness_text(self) -> str:
        cached = self._freshness
        if cached is not None and time.monotonic() - cached[0] < _FRESHNESS_CACHE_S:
            return cached[1]
        from skewless.monitoring.freshness import freshness
        from skewless.monitoring.prometheus import render

        store = self.store
        try:
            text = render(freshness=freshness(store.client, store.project, store.repo.views, lane=store.repo.progress_lane))
        except Exception as exc:  # noqa: BLE001 - metrics report the failure instead of failing
            text = render(extra={"skewless_freshness_unavailable": 1.0}) + f"# freshness failed: {type(exc).__name__}\n"
        self._freshness = (time.monotonic(), text)
        return text


_POOLS: dict[str, Any] = {}


def _pool(name: str, threads: int) -> Any:
    """The worker's thread pool ``name`` (the reads, /health's Redis read and the pushes each have their own: none
    waits behind another; one reads thread keeps the store's reads serial, as on the event loop before)."""
    pool = _POOLS.get(name)
    if pool is None:
        from concurrent.futures import ThreadPoolExecutor

        pool = _POOLS.setdefault(name, ThreadPoolExecutor(threads, thread_name_prefix=f"skewless-{name}"))
    return pool


class JsonErrorHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, except that the 400 it answers itself (a request it cannot parse: bad request
    line, bad header, bad chunking) is JSON like every other error of the server, not text/plain."""

    def send_400_response(self, msg: str) -> None:
        body = dumps({"error": {"code": "bad_request", "message": msg}})
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [b"content-type: application/json\r\n", b"content-length: " + str(len(body)).encode() + b"\r\n",
                 b"connection: close\r\n\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def create_app() -> FeatureServer:
    """uvicorn factory: the app of one worker, from :data:`SKEWLESS_SERVE_SETTINGS`."""
    return FeatureServer(ServerSettings.from_env())


def serve(settings: ServerSettings, host: str = HOST, port: int = 6566, workers: int | None = None) -> None:
    """Run the server in the foreground (``workers`` processes; default: the CPU count)."""
    import uvicorn

    os.environ[_ENV] = settings.to_env()
    if settings.api_token:  # secrets reach the workers through the environment, never argv
        os.environ["SKEWLESS_API_TOKEN"] = settings.api_token
    workers = workers or os.cpu_count() or 1
    uvicorn.run("skewless.serving.server:create_app", factory=True, host=host, port=port, workers=workers,
                loop="uvloop", http=JsonErrorHttpProtocol, lifespan="on", access_log=False, log_level="warning",
                timeout_keep_alive=30, backlog=2048)


class ThreadedServer:
    """One worker in a background thread (tests, bench): ``with ThreadedServer(app) as s: s.url``."""

    def __init__(self, app: FeatureServer, host: str = HOST, port: int = 0) -> None:
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, loop="asyncio", http=JsonErrorHttpProtocol,
                                                    lifespan="on", access_log=False, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="skewless-serve", daemon=True)

    def __enter__(self) -> "ThreadedServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("feature server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


__all__ = ["FeatureServer", "HttpError", "JsonErrorHttpProtocol", "ServerSettings", "ThreadedServer", "create_app", "serve"]
