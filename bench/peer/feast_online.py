"""The peer's online reads (Feast 0.67, run in `.venv-peer/`, see :mod:`bench._peer`), for bench/online.py.

    python bench/peer/feast_online.py --redis 127.0.0.1:6390 [--users 2000] [--reads 3000] [--session]

A Feast repository in a temporary folder with a Redis online store on the given Redis (the one the skewless
bench started; Feast's keys are its own, they do not touch skewless's), one entity ``user_id`` and ONE feature
view of 4 features (int64, float64, int64, string), filled with ``write_to_online_store`` for ``--users`` users.
Timed: ``FeatureStore.get_online_features`` for 1 entity and for 100 entities (``to_dict()``, what a caller
uses). Without ``--session`` it prints one JSON object (p50/p99 in ms per read shape). With ``--session`` it
answers commands on stdin (:func:`session`), so the bench interleaves the peer's reads with its own in blocks
and drives ``feast serve`` (2 workers, access log off, its other defaults) with its own load generator.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout: bench.online's timing (stdlib only)
from bench.online import latency_stats, timed_calls  # noqa: E402

FEATURES = ["orders_7d", "amount_7d", "cancelled_30d", "last_status"]
VIEW = "user_stats"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _repo(root: Path, redis: str, users: list[str]) -> Any:
    """A Feast repo (registry file, file offline source, Redis online store) with the view applied and filled."""
    import pandas as pd
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource
    from feast.types import Float64, Int64, String
    from feast.value_type import ValueType

    (root / "data").mkdir(parents=True)
    (root / "feature_store.yaml").write_text(
        "project: peer_bench\nregistry: data/registry.db\nprovider: local\n"
        f"online_store:\n  type: redis\n  connection_string: \"{redis}\"\n"
        "entity_key_serialization_version: 3\n")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    df = pd.DataFrame({
        "user_id": users,
        "orders_7d": [i % 17 for i in range(len(users))],
        "amount_7d": [float(i % 1000) / 7 for i in range(len(users))],
        "cancelled_30d": [i % 3 for i in range(len(users))],
        "last_status": [("paid", "cancelled", "refunded")[i % 3] for i in range(len(users))],
        "event_timestamp": [now - timedelta(seconds=i % 3600) for i in range(len(users))],
    })
    df.to_parquet(root / "data" / "stats.parquet")
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    source = FileSource(path=str(root / "data" / "stats.parquet"), timestamp_field="event_timestamp")
    view = FeatureView(name=VIEW, entities=[user], ttl=timedelta(days=365), online=True, source=source,
                       schema=[Field(name="user_id", dtype=String), Field(name="orders_7d", dtype=Int64),
                               Field(name="amount_7d", dtype=Float64), Field(name="cancelled_30d", dtype=Int64),
                               Field(name="last_status", dtype=String)])
    fs = FeatureStore(repo_path=str(root))
    fs.apply([user, view])
    fs.write_to_online_store(VIEW, df)
    return fs


def http_body(users: list[str]) -> str:
    """The HTTP request of 1 entity x the view's 4 features."""
    return json.dumps({"features": [f"{VIEW}:{f}" for f in FEATURES], "entities": {"user_id": [users[7]]}})


def _serve(root: Path, users: list[str]) -> tuple[subprocess.Popen, int]:
    """``feast serve`` (2 workers, access log off, its other defaults) on a free port, answering."""
    port = _free_port()
    feast = Path(sys.executable).parent / "feast"
    proc = subprocess.Popen([str(feast), "-c", str(root), "serve", "-h", "127.0.0.1", "-p", str(port), "-w", "2",
                             "--no-access-log"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError(f"feast serve did not start: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        time.sleep(0.2)
    check = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{port}/get-online-features", data=http_body(users).encode(),
        headers={"Content-Type": "application/json"}), timeout=10).read())
    if "results" not in check:
        _stop(proc)
        raise RuntimeError(f"unexpected feast serve answer: {str(check)[:300]}")
    return proc, port


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 15)  # gunicorn master and its workers
        proc.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass


def _reader(fs: Any, users: list[str]) -> Callable[[int, int], Callable[[int], Any]]:
    """``make(entities, offset)`` -> a timed read of 1 or ``entities`` users (``to_dict()``)."""
    refs = [f"{VIEW}:{f}" for f in FEATURES]
    n = len(users)

    def make(entities: int, offset: int) -> Callable[[int], Any]:
        if entities == 1:
            return lambda i: fs.get_online_features(features=refs,
                                                    entity_rows=[{"user_id": users[(offset + i) % n]}]).to_dict()
        return lambda i: fs.get_online_features(features=refs, entity_rows=[
            {"user_id": u} for u in users[((offset + i) * entities) % max(1, n - entities):][:entities]]).to_dict()
    return make


def session(fs: Any, root: Path, users: list[str]) -> None:
    """Line protocol on stdin/stdout, one JSON object per line: first ``{"ready": true, "peer", "body"}``; then
    ``{"op": "sdk", "entities": 1|100, "n": N, "offset": K, "warmup": W}`` -> ``{"lat": [seconds, ...]}``;
    ``{"op": "serve"}`` -> ``{"port": P}`` (feast serve running until quit); ``{"op": "quit"}``."""
    import feast

    make = _reader(fs, users)
    server = None
    print(json.dumps({"ready": True, "peer": f"feast {feast.__version__}", "features": len(FEATURES), "views": 1,
                      "body": http_body(users)}), flush=True)
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["op"] == "sdk":
                lat = timed_calls(make(cmd["entities"], cmd.get("offset", 0)), cmd["n"], cmd.get("warmup", 0))
                print(json.dumps({"lat": lat}), flush=True)
            elif cmd["op"] == "serve":
                if server is None:
                    server = _serve(root, users)
                print(json.dumps({"port": server[1]}), flush=True)
            else:
                break
    finally:
        if server is not None:
            _stop(server[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis", required=True, help="host:port of the Redis to use as Feast's online store")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--reads", type=int, default=3000)
    ap.add_argument("--session", action="store_true", help="answer commands on stdin (see session())")
    args = ap.parse_args()
    import feast

    root = Path(tempfile.mkdtemp(prefix="peer-feast-"))
    try:
        users = [f"u{i:06d}" for i in range(args.users)]
        fs = _repo(root, args.redis, users)
        refs = [f"{VIEW}:{f}" for f in FEATURES]
        sample = fs.get_online_features(features=refs, entity_rows=[{"user_id": users[1]}]).to_dict()
        assert sample["orders_7d"] == [1] and sample["last_status"] == ["cancelled"], sample
        if args.session:
            session(fs, root, users)
            return
        make = _reader(fs, users)
        one = timed_calls(make(1, 0), args.reads, warmup=200)
        hundred = timed_calls(make(100, 0), max(300, args.reads // 6), warmup=30)
        print(json.dumps({"peer": f"feast {feast.__version__}", "features": len(FEATURES), "views": 1,
                          "sdk_1_entity": latency_stats(one), "sdk_100_entities": latency_stats(hundred)}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
