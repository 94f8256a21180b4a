"""Online serving benchmark (not a test): SDK and HTTP reads of the example feature service vs raw Redis floors.

Starts its own Redis (a local process on a free 127.0.0.1 port), fills it the way the pipelines do
(:mod:`skewless.serving.fill`: 5-minute and daily tiles within retention, batch records, profile snapshots) for
``SKEWLESS_BENCH_USERS`` users, then measures in one run:

- ``online_p99_ms_1_entity``: ``OnlineStore.get_online_features`` of 1 entity x ``churn_model`` (9 features,
  2 views: 1 h stream window, 7-365 d batch + stream windows, lifetime, derived, snapshot); floor: redis-py
  HMGET of one key (one round trip), called alternately with the read (a load burst hits both);
- ``online_p99_ms_100_entities``: 100 entities x ``churn_model``; floor: a redis-py pipeline of 100 HMGETs (each
  entity is read ~25 times in the run, so most entity reads hit the store's memo);
  ``online_p99_ms_100_entities_uncached``: the same with the store's memo and decode caches emptied before
  every call (every entity evaluated from its bytes);
- ``http_p99_ms_1_entity`` / ``http_rps``: ``skewless serve --workers 2`` driven by a load generator in a second
  process (asyncio, keep-alive connections, bounded time): p99 of sequential requests, then requests/s with
  ``SKEWLESS_BENCH_HTTP_CONNS`` concurrent connections (and that run's p99).

The peer, Feast 0.67 (``bench/peer/feast_online.py`` in ``.venv-peer/``, see :mod:`bench._peer`), runs in the
same run on the SAME Redis: 1 view x 4 features, ``get_online_features`` of 1 and 100 entities, and ``feast serve
-w 2`` under the same load generator; its figures are each metric's ``peer``. If it cannot run, ``peer`` says why.

Cores: the machine has 2; the SDK reads, Redis and the peer's reads run one at a time (never overlapping). For
HTTP the server's 2 workers, Redis and the single-process load generator share both cores unpinned (the same for
the peer's server); ``http_rps.loadgen_cpu_share`` is the load generator's CPU time over the run's wall time.
Environment: ``SKEWLESS_BENCH_USERS`` (2000), ``SKEWLESS_BENCH_READS`` (3000), ``SKEWLESS_BENCH_HTTP_S`` (10),
``SKEWLESS_BENCH_HTTP_CONNS`` (16).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

USERS = int(os.environ.get("SKEWLESS_BENCH_USERS", "2000"))
READS = int(os.environ.get("SKEWLESS_BENCH_READS", "3000"))
HTTP_S = float(os.environ.get("SKEWLESS_BENCH_HTTP_S", "10"))
HTTP_CONNS = int(os.environ.get("SKEWLESS_BENCH_HTTP_CONNS", "16"))
PROJECT = "bench"
SERVICE = "churn_model"

_LOADGEN = r'''
import asyncio, json, sys, time
host, port, body, conns, seconds, sequential = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
req = (f"POST /get-online-features HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
       f"Content-Length: {len(body)}\r\n\r\n").encode() + body
lat, errors, reconnects = [], 0, 0
async def one(deadline, limit):
    global errors, reconnects
    r, w = await asyncio.open_connection(host, port)
    n = 0
    while time.perf_counter() < deadline and n < limit:
        t = time.perf_counter()
        while True:  # a server closing a keep-alive connection (worker recycling): reconnect, resend, timed as one
            try:
                w.write(req)
                head = await r.readuntil(b"\r\n\r\n")
                length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
                data = await r.readexactly(length)
                break
            except (asyncio.IncompleteReadError, ConnectionError):
                reconnects += 1
                w.close()
                r, w = await asyncio.open_connection(host, port)
        lat.append(time.perf_counter() - t)
        if not head.startswith(b"HTTP/1.1 200"):
            errors += 1
        n += 1
    w.close()
async def main():
    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    await asyncio.gather(*(one(deadline, sequential or 10**9) for _ in range(conns)))
    return time.perf_counter() - t0
elapsed = asyncio.run(main())
print(json.dumps({"latencies": lat, "elapsed": elapsed, "errors": errors, "reconnects": reconnects,
                  "cpu": time.process_time()}))
'''


def _p(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000.0


def _timed(fn: Callable[[int], Any], n: int, warmup: int = 200) -> list[float]:
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def _timed_pair(fa: Callable[[int], Any], fb: Callable[[int], Any], n: int, warmup: int = 200
                ) -> tuple[list[float], list[float]]:
    """Latencies of ``fa`` and ``fb`` called alternately (a b, b a, ...): a burst of load from other processes
    hits both the same, so their ratio is comparable within one run."""
    for i in range(warmup):
        fa(i)
        fb(i)
    la, lb = [], []
    clock = time.perf_counter
    for i in range(n):
        for f, out in ((fa, la), (fb, lb)) if i % 2 == 0 else ((fb, lb), (fa, la)):
            t = clock()
            f(i)
            out.append(clock() - t)
    return la, lb


def _stats(lat: list[float]) -> dict[str, float]:
    return {"p50": round(_p(lat, 0.5), 3), "p99": round(_p(lat, 0.99), 3), "n": len(lat)}


def _loadgen(port: int, body: str, conns: int, seconds: float, sequential: int = 0) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", _LOADGEN, "127.0.0.1", str(port), body, str(conns), str(seconds),
                           str(sequential)], capture_output=True, text=True, timeout=seconds + 120)
    if proc.returncode:
        raise RuntimeError(f"load generator failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _peer(redis_port: int, root: Path) -> dict[str, Any]:
    """The peer's figures on the same Redis (or ``{"error": why}``)."""
    from bench._peer import PeerError, run_peer

    loadgen = root / "loadgen.py"
    loadgen.write_text(_LOADGEN)
    try:
        return run_peer("feast_online.py", ["--redis", f"127.0.0.1:{redis_port}", "--users", str(USERS),
                                            "--reads", str(READS), "--loadgen", str(loadgen),
                                            "--http-seconds", str(HTTP_S), "--http-conns", str(HTTP_CONNS)])
    except (PeerError, OSError, subprocess.SubprocessError) as exc:
        return {"error": "peer not measured: " + str(exc)[-800:]}


def _peer_figure(peer: dict[str, Any], part: str, key: str, unit: str, name: str) -> dict[str, Any]:
    if "error" in peer:
        return {"value": None, "unit": unit, "name": name, "error": peer["error"]}
    fig = peer[part]
    return {"value": fig[key], "unit": unit, "name": f"{peer['peer']}: {name}",
            **({"p50": fig["p50"]} if key == "p99" else {})}


def _ratio(a: float, b: float | None) -> float | None:
    return None if not b else round(a / b, 2)


def run() -> dict:
    import redis

    from skewless.core.repo import load_repository
    from skewless.core.timeutil import MS_PER_DAY
    from skewless.serving.fill import fill, write
    from skewless.serving.online import OnlineStore
    from skewless.stack.base import free_port
    from skewless.stack.procs import wait_until
    from skewless.stack.redis import RedisServer, redis_url

    root = Path(tempfile.mkdtemp(prefix="bench-online-"))
    server = RedisServer(port=free_port())
    started = server.start(root / "state", root / "logs")
    serve_proc = None
    try:
        wait_until(server.healthy, 60, "bench redis")
        client = redis.Redis(host="127.0.0.1", port=server.port)
        repo = load_repository()
        now = int(time.time() * 1000)
        events = USERS * 15
        t0 = time.perf_counter()
        filled = fill(PROJECT, repo, users=USERS, events=events, start_ms=now - 4 * MS_PER_DAY,
                      rate=events / (4 * MS_PER_DAY / 1000), cutoff_ms=now // MS_PER_DAY * MS_PER_DAY)
        write(client, filled.data)
        fill_s = time.perf_counter() - t0
        users = filled.users
        store = OnlineStore(repo, client, PROJECT)
        sample = store.get_online_features([{"user_id": users[0]}], SERVICE)
        assert len(sample.columns) >= 8 and len({r.split(":")[0] for r in sample.refs}) >= 2
        statuses = {s for c in sample.columns for s in sample.statuses[c]}
        batch_keys = [f"{PROJECT}:v1:user_order_stats:v1:{{s={u}}}:b" for u in users]

        def pipe100(i: int) -> Any:
            p = client.pipeline(transaction=False)
            base = (i * 100) % max(1, len(users) - 100)
            for k in batch_keys[base:base + 100]:
                p.hmget(k, "cutoff", "run")
            return p.execute()

        raw1, sdk1 = _timed_pair(lambda i: client.hmget(batch_keys[i % len(users)], "cutoff", "run"),
                                 lambda i: store.get_online_features([{"user_id": users[i % len(users)]}], SERVICE), READS)
        raw100, sdk100 = _timed_pair(pipe100, lambda i: store.get_online_features(
            {"user_id": users[(i * 100) % max(1, len(users) - 100):][:100]}, SERVICE), max(300, READS // 6), warmup=30)

        def cold100(i: int) -> Any:  # every entity evaluated from its bytes: the store's memo and decode caches emptied
            store._memo.clear()
            store._decoded.clear()
            return store.get_online_features({"user_id": users[(i * 100) % max(1, len(users) - 100):][:100]}, SERVICE)

        sdk100_cold = _timed(cold100, max(300, READS // 6), warmup=30)
        peer = _peer(server.port, root)

        # HTTP: `skewless serve` with 2 workers, load from a second process
        port = free_port()
        env = {**os.environ, "SKEWLESS_PROJECT": PROJECT}
        serve_proc = subprocess.Popen([sys.executable, "-m", "skewless.cli", "serve", "--port", str(port), "--workers", "2",
                                       "--redis-url", redis_url(server.port), "--project", PROJECT],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        import urllib.request

        def up() -> bool:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
            except OSError:
                return False

        wait_until(up, 120, "feature server")
        body = json.dumps({"feature_service": SERVICE, "entities": {"user_id": [users[7 % len(users)]]}})
        _loadgen(port, body, 2, 2.0)  # warm both workers
        seq = _loadgen(port, body, 1, HTTP_S, sequential=READS)
        load = _loadgen(port, body, HTTP_CONNS, HTTP_S)
        rps = len(load["latencies"]) / load["elapsed"]
        errors = seq["errors"] + load["errors"]
    finally:
        if serve_proc is not None:
            serve_proc.terminate()
            try:
                serve_proc.wait(30)
            except subprocess.TimeoutExpired:
                serve_proc.kill()
        server.stop(started)
        shutil.rmtree(root, ignore_errors=True)

    s_raw1, s_sdk1, s_raw100, s_sdk100 = _stats(raw1), _stats(sdk1), _stats(raw100), _stats(sdk100)
    s_cold100 = _stats(sdk100_cold)
    s_seq, s_load = _stats(seq["latencies"]), _stats(load["latencies"])
    p1 = _peer_figure(peer, "sdk_1_entity", "p99", "ms", "get_online_features 1 entity x 4 features of 1 view")
    p100 = _peer_figure(peer, "sdk_100_entities", "p99", "ms", "get_online_features 100 entities x 4 features")
    phttp = _peer_figure(peer, "http_1_entity", "p99", "ms", "feast serve -w 2, 1 entity, sequential")
    prps = _peer_figure(peer, "http_load", "rps", "req/s", f"feast serve -w 2, {HTTP_CONNS} connections")
    if "error" not in peer:
        prps["p99_ms"] = peer["http_load"]["p99"]
        prps["reconnects"] = peer.get("http_reconnects", 0)  # feast serve recycles workers (--max-requests 1000)
    floor1 = {"value": s_raw1["p99"], "unit": "ms", "name": "redis-py HMGET one key", "p50": s_raw1["p50"]}
    floor100 = {"value": s_raw100["p99"], "unit": "ms", "name": "redis-py 100-key pipeline", "p50": s_raw100["p50"]}
    note = (f"{USERS} users, {events} generated order events, {SERVICE} ({len(sample.columns)} features, 2 views); "
            f"fill {fill_s:.0f} s; statuses seen {sorted(statuses)}"
            + (f"; {peer['error']}" if "error" in peer else ""))
    cpu_share = round(load.get("cpu", 0.0) / load["elapsed"], 2)
    return {
        "online_p99_ms_1_entity": {"value": s_sdk1["p99"], "unit": "ms", "p50": s_sdk1["p50"], "n": s_sdk1["n"],
                                   "floor": floor1, "peer": p1, "ratio_to_floor": _ratio(s_sdk1["p99"], s_raw1["p99"]),
                                   "ratio_to_peer": _ratio(s_sdk1["p99"], p1["value"]),
                                   "goal": "<= 2x floor and < peer (<= 1 ms)", "note": note},
        "online_p99_ms_100_entities": {"value": s_sdk100["p99"], "unit": "ms", "p50": s_sdk100["p50"], "n": s_sdk100["n"],
                                       "floor": floor100, "peer": p100,
                                       "ratio_to_floor": _ratio(s_sdk100["p99"], s_raw100["p99"]),
                                       "ratio_to_peer": _ratio(s_sdk100["p99"], p100["value"]),
                                       "goal": "<= 1.5x floor and <= 0.5x peer (<= 5 ms)",
                                       "note": "each entity is read ~25 times in the run: mostly memo hits"},
        "online_p99_ms_100_entities_uncached": {
            "value": s_cold100["p99"], "unit": "ms", "p50": s_cold100["p50"], "n": s_cold100["n"],
            "floor": floor100, "peer": p100, "ratio_to_floor": _ratio(s_cold100["p99"], s_raw100["p99"]),
            "ratio_to_peer": _ratio(s_cold100["p99"], p100["value"]),
            "note": "memo and decode caches emptied before every call: every entity evaluated from its bytes"},
        "http_p99_ms_1_entity": {"value": s_seq["p99"], "unit": "ms", "p50": s_seq["p50"], "n": s_seq["n"],
                                 "floor": {"value": s_sdk1["p99"], "unit": "ms", "name": "the SDK read (in process)"},
                                 "peer": phttp, "ratio_to_peer": _ratio(s_seq["p99"], phttp["value"]),
                                 "under_load_p99": s_load["p99"], "goal": "<= peer and <= 3 ms",
                                 "note": "sequential requests on one keep-alive connection; 2 workers"},
        "http_rps": {"value": round(rps, 0), "unit": "req/s", "connections": HTTP_CONNS, "seconds": HTTP_S,
                     "p50_ms": s_load["p50"], "p99_ms": s_load["p99"], "errors": errors, "peer": prps,
                     "ratio_to_peer": _ratio(rps, prps["value"]), "goal": ">= 3x peer, p99 <= peer's",
                     "loadgen_cpu_share": cpu_share,
                     "note": "2 workers, Redis and the one-process load generator share the 2 cores (unpinned); "
                             "loadgen_cpu_share: its CPU seconds per wall second"},
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
