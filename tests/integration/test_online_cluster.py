"""The online store on a real Redis Cluster (3 masters + 3 replicas, started by the stack's own code on free ports):

- state written by the stream's tile script and the per-node materializer reads the same through the SDK and the HTTP
  server as on one Redis and as the oracle, the entities' hashes on every master, the run WAITed for on each master;
- bad input is one line naming the node and the fix: a cluster named as one Redis and the reverse, a master down at
  start (nothing written), slots no master serves;
- a materialization whose writer died holding the lease is retried at once (it used to wait for the 120 s lease).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from batch_jobs import materialize
from batch_jobs.materialize import materialize_feature_view
from skewless.config import redis_target
from skewless.core import layout
from skewless.engines.redis_client import OnlineStoreError, is_cluster, masters, open_redis
from skewless.serving.online import OnlineStore, open_store
from skewless.serving.server import FeatureServer, ServerSettings, ThreadedServer
from skewless.stack.cluster import RedisCluster, free_cluster_ports_env
from skewless.stack.procs import spawn, stop_pids, wait_until
from skewless.stack.redis import ping
from tests.integration.test_serving import C1, arrow_rows, day_of, events, expected, repo, setup_store  # noqa: F401

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class Cluster:
    """A running Redis Cluster of the stack (its service object, the pid per node port)."""

    def __init__(self, service: RedisCluster, pids: tuple[int, ...]) -> None:
        self.service, self.pid_of = service, dict(zip(service.node_ports, pids))
        self.url = f"redis+cluster://127.0.0.1:{service.node_ports[0]}"

    def master_ports(self) -> list[int]:
        return sorted(n.port for n in self.service.cluster_nodes() if n.is_master)


def replicating(service: RedisCluster) -> bool:
    """Every replica has finished its first sync (``master_link_status:up``): until then (Redis 7 delays a diskless
    sync by 5 s) a master's ``WAIT`` gets no acknowledgement and the materializer rightly refuses to complete a run."""
    for port in service.node_ports:
        info = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2).info("replication")
        if info.get("role") == "slave" and info.get("master_link_status") != "up":
            return False
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    service = RedisCluster(port=int(free_cluster_ports_env()["SKEWLESS_REDIS_PORT"]))
    root = tmp_path_factory.mktemp("redis-cluster")
    started = service.start(root / "state", root)
    try:
        wait_until(lambda: not service.problems() and replicating(service), 60.0, "the Redis Cluster ready and replicating",
                   interval_s=0.3)
        yield Cluster(service, started.pids)
    finally:
        stop_pids(started.pids)


def _client(url: str) -> Any:
    return open_redis(redis_target(url))


def _http_read(server: Any, users: list[str], as_of: int) -> tuple[int, dict]:
    import http.client

    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/get-online-features", body=json.dumps({"features": ["user_order_stats"],
                                                                        "entities": {"user_id": users}, "as_of": as_of}),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_reads_on_a_cluster_equal_one_redis_and_the_oracle(cluster: Cluster, redis_client: Any, repo: Any,
                                                           events: tuple) -> None:
    admitted, offline = events
    project = f"c{uuid.uuid4().hex[:8]}"
    client = _client(cluster.url)
    waits_before = {name: node.info("commandstats").get("cmdstat_wait", {}).get("calls", 0) for name, node in masters(client)}
    setup_store(client, repo, admitted, offline, project)  # tiles by TILE_CAS_LUA, run C1 by the per-node materializer
    setup_store(redis_client, repo, admitted, offline, project)
    view = repo.view("user_order_stats")
    users = sorted({e["user_id"] for e in admitted}) + ["nobody"]
    # the compared entities' hashes sit on every master, and the run waited for the replicas of each master written
    holders = {name for name, node in masters(client) for _ in node.scan_iter(match=f"{project}:*:{{*", count=1000)}
    assert len(holders) >= 2, holders
    waits_after = {name: node.info("commandstats").get("cmdstat_wait", {}).get("calls", 0) for name, node in masters(client)}
    assert all(waits_after[name] > waits_before[name] for name in holders), (waits_before, waits_after)

    now = max(e["event_time"] for e in admitted) + 1
    single = OnlineStore(repo, redis_client, project).get_online_features({"user_id": users}, ["user_order_stats"],
                                                                        now_ms=now)
    store = open_store(repo, cluster.url, project=project)  # the SDK's path: the URL names a cluster
    assert is_cluster(store.client)
    on_cluster = store.get_online_features({"user_id": users}, ["user_order_stats"], now_ms=now)
    one = store.get_online_features([{"user_id": users[0]}], ["user_order_stats"], now_ms=now)
    ignore = {"progress"}  # the epoch ids differ (each store has its own); everything else is equal
    assert {k: v for k, v in on_cluster.to_dict().items() if k not in ignore} == \
           {k: v for k, v in single.to_dict().items() if k not in ignore}
    assert one.row(0) == on_cluster.row(0)
    checked = 0
    for i, user in enumerate(users):
        for name, value in expected(view, admitted, offline, user, now, True, C1).items():
            assert (on_cluster.values[name][i], on_cluster.statuses[name][i]) == (value, "present"), (user, name)
            checked += 1
    assert checked > 200 and on_cluster.found["user_order_stats"] == [True] * (len(users) - 1) + [False]

    settings = ServerSettings(repo=str(repo.path), redis_url=cluster.url, project=project)
    with ThreadedServer(FeatureServer(settings)) as server:  # the HTTP server opens the cluster from the URL
        status, body = _http_read(server, users, C1)
    at_c1 = OnlineStore(repo, redis_client, project).get_online_features({"user_id": users}, ["user_order_stats"], as_of=C1)
    assert status == 200, body
    assert (body["values"], body["statuses"]) == (at_c1.values, at_c1.statuses)


def test_a_master_down_is_one_line_naming_it_and_nothing_is_written(cluster: Cluster, repo: Any, events: tuple,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _, offline = events
    project = f"d{uuid.uuid4().hex[:8]}"
    client = _client(cluster.url)
    monkeypatch.setenv("SKEWLESS_REDIS_TIMEOUT_S", "1")
    monkeypatch.setenv("SKEWLESS_REDIS_CONNECT_TIMEOUT_S", "1")
    store = open_store(repo, cluster.url, project=project)
    store.get_online_features({"user_id": ["u1"]}, ["user_order_stats"])  # checked and open before the master stops
    view = repo.view("user_order_stats")
    users = sorted({e["user_id"] for e in offline})
    rows = arrow_rows(view, offline, users, C1, "run-down", "e")
    client.set(layout.epoch_key(project), "e")
    down = cluster.master_ports()[1]
    quick = _client(cluster.url)
    os.kill(cluster.pid_of[down], signal.SIGSTOP)  # well under cluster-node-timeout (5 s): no failover
    try:
        with pytest.raises(OnlineStoreError, match=rf"^Redis Cluster master 127.0.0.1:{down} \(slots [0-9-]+\) of the "
                                                   r"online store does not answer \(TimeoutError.*start it"):
            materialize_feature_view(None, quick, view, day_of(C1), project=project, rows=rows)
        with pytest.raises(redis.TimeoutError, match=rf"Redis Cluster master 127.0.0.1:{down} did not answer the read"):
            store.get_online_features({"user_id": users}, ["user_order_stats"])
    finally:
        os.kill(cluster.pid_of[down], signal.SIGCONT)
    assert not any(node.scan(0, match=f"{project}:*:{{*", count=1000)[1] for _, node in masters(client))  # nothing written
    assert client.hget(layout.view_meta_key(project, view), layout.BATCH_WRITER) is None
    assert store.get_online_features({"user_id": users[:2]}, ["user_order_stats"]).found  # it serves again


def test_a_snapshot_view_materializes_on_a_cluster_confirmed_by_wait(cluster: Cluster, repo: Any, tmp_path: Path) -> None:
    """A snapshot view's latest rows are written per master and each master's writes are confirmed on its replica
    (``WAIT``) before the materialization returns. Failed before: redis-py's cluster pipeline refused the script
    (``RedisClusterException: Calling pipelined function evalsha is blocked when running redis in cluster mode``),
    and the snapshot path sent no ``WAIT``."""
    from batch_jobs.materialize import materialize_snapshot_view
    from skewless.e2e.pipeline import write_snapshot_rows
    from skewless.engines.iceberg_catalog import load_catalog

    project = f"p{uuid.uuid4().hex[:8]}"
    client = _client(cluster.url)
    view = repo.view("customer_profile")
    catalog = load_catalog(catalog_db=tmp_path / "catalog.db", warehouse=tmp_path / "warehouse")
    users = [f"u{i}" for i in range(30)]
    ts = C1 - 3 * 3_600_000  # before the cut-off of day_of(C1), within the view's one-day ttl of now
    write_snapshot_rows(catalog, view.source.table, [{"user_id": u, "credit_score": 600 + i, "segment": "vip",
                                                      "event_time": ts + i, "created_at": ts + i} for i, u in enumerate(users)])
    client.set(layout.epoch_key(project), "E1")
    waits = {name: node.info("commandstats").get("cmdstat_wait", {}).get("calls", 0) for name, node in masters(client)}
    report = materialize_snapshot_view(catalog, client, view, day_of(C1), project=project)
    assert (report.rows, report.written) == (30, 30)
    keys = [layout.entity_key(project, view, (u,)) for u in users]
    holders = {client.get_node_from_key(k).name for k in keys}
    assert len(holders) >= 2, holders
    after = {name: node.info("commandstats").get("cmdstat_wait", {}).get("calls", 0) for name, node in masters(client)}
    assert all(after[name] > waits[name] for name in holders), (waits, after)
    for i, key in enumerate(keys):
        assert layout.decode_snapshot(view, client.hget(key, layout.SNAPSHOT_FIELD)) == (
            ts + i, ts + i, "E1", {"credit_score": 600 + i, "segment": "vip"})


def _cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SKEWLESS_")}
    return subprocess.run([sys.executable, "-m", "skewless.cli", *argv, "--repo", str(ROOT / "feature_defs")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**clean, "PYTHONPATH": str(ROOT), **(env or {})})


def test_the_wrong_kind_of_redis_is_one_line_naming_the_node_and_the_fix(cluster: Cluster, redis_url: str,
                                                                        tmp_path: Path) -> None:
    single = redis_url.removeprefix("redis://").split("/")[0]
    node = f"127.0.0.1:{cluster.service.node_ports[0]}"
    # a cluster node needs its bus port (port + 10000) free and <= 65535: an ephemeral free_port() may be above 55535
    lone_port = int(free_cluster_ports_env()["SKEWLESS_REDIS_PORT"])
    lone = spawn(cluster.service.node_argv("redis-server", lone_port, tmp_path), tmp_path / "lone.log")  # no slots
    try:
        wait_until(lambda: ping(lone_port), 20.0, "a lone cluster node", interval_s=0.2)
        cases = {
            f"redis+cluster://{single}": f"is named a Redis Cluster, but {single} is a single Redis (cluster mode not "
                                         f"enabled); name it as one Redis: online_store: {{type: redis, url: redis://{single}/0}}",
            f"redis://{node}/0": f"is a node of a Redis Cluster (cluster_enabled:1), named as one Redis; name the "
                                 f"cluster: online_store: {{type: redis_cluster, nodes: [{node}]}}",
            f"redis+cluster://127.0.0.1:{lone_port}": "serves only part of its 16384 slots (0 of 16384 covered...): a "
                                                     "master is down without a replica to promote",
        }
        for url, says in cases.items():
            done = _cli("online", "sample", "--redis-url", url)
            assert done.returncode == 2 and says in done.stderr and len(done.stderr.splitlines()) == 1, (url, done.stderr)
    finally:
        stop_pids([lone])


TAKE_LEASE_AND_DIE = textwrap.dedent("""
    import os, signal, sys
    import redis
    from batch_jobs import materialize
    from skewless.core.repo import load_repository
    from tests.integration.test_serving import C1, arrow_rows, day_of, order_events, NOW
    from skewless.core.timeutil import MS_PER_DAY

    def die(*args, **kwargs):  # the lease is taken: the writer is killed before its first batch (no abort runs)
        os.kill(os.getpid(), signal.SIGKILL)

    materialize._write_rows = die
    repo = load_repository()
    view = repo.view("user_order_stats")
    materialize.materialize_feature_view(None, redis.Redis.from_url(sys.argv[1]), view, day_of(C1), project=sys.argv[2],
                                         rows=arrow_rows(view, [], ["u1"], C1, "run-dead", sys.argv[3]))
""")


def test_a_retry_after_the_lease_holder_died_proceeds_at_once(redis_client: Any, redis_url: str, repo: Any,
                                                              events: tuple) -> None:
    """Failed before: the retry was refused (ConcurrentMaterializationError) until the dead writer's 120 s lease lapsed."""
    _, offline = events
    project = f"l{uuid.uuid4().hex[:8]}"
    epoch = materialize.store_epoch(redis_client, project, init=True)
    view = repo.view("user_order_stats")
    done = subprocess.run([sys.executable, "-c", TAKE_LEASE_AND_DIE, redis_url, project, epoch], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == -signal.SIGKILL, done.stderr
    meta = layout.view_meta_key(project, view)
    assert redis_client.hget(meta, layout.BATCH_WRITER) is not None  # the dead writer's lease is still recorded
    assert int(redis_client.pttl(meta)) != -2 and materialize.LEASE_MS >= 60_000
    users = sorted({e["user_id"] for e in offline})
    report = materialize_feature_view(None, redis_client, view, day_of(C1), project=project,
                                      rows=arrow_rows(view, offline, users, C1, "run-retry", epoch))
    assert report.written == len(users)
    assert redis_client.hget(meta, layout.META_BATCH_CUTOFF) == str(C1).encode()
    assert redis_client.hget(meta, layout.BATCH_WRITER) is None  # released by the retry


def test_a_live_lease_holder_is_still_waited_for(redis_client: Any, repo: Any) -> None:
    """The takeover is only for a holder whose connection is gone: a live one keeps the view."""
    project = f"w{uuid.uuid4().hex[:8]}"
    epoch = materialize.store_epoch(redis_client, project, init=True)
    view = repo.view("user_order_stats")
    meta = layout.view_meta_key(project, view)
    holder = materialize.LeaseConnection(redis_client, meta)
    try:
        code, *_ = holder.begin(str(C1), "alive#1", 60_000, renew=False)
        assert int(code) == 1
        with pytest.raises(materialize.ConcurrentMaterializationError, match="holds the writer lease"):
            materialize_feature_view(None, redis_client, view, day_of(C1), project=project,
                                     rows=arrow_rows(view, [], ["u1"], C1, "run-b", epoch))
    finally:
        holder.close(broken=True)


def test_online_rebuild_on_a_cluster_scans_every_master_and_initialises_the_epoch(cluster: Cluster, tmp_path: Path) -> None:
    project = f"r{uuid.uuid4().hex[:8]}"
    client = _client(cluster.url)
    old = [f"{project}:v1:k{i}" for i in range(30)]  # keys of the older layout, spread over the masters
    for key in old:
        client.set(key, "x")
    assert len({name for name, node in masters(client) if node.scan(0, match=f"{project}:v1:*", count=1000)[1]}) >= 2
    done = _cli("online", "rebuild", "--day", str(day_of(C1)), "--view", "user_order_stats", "--project", project,
                "--redis-url", cluster.url, env={"SKEWLESS_STATE_DIR": str(tmp_path / "state")})
    assert f"keys of an older layout ({project}:v1:*) are no longer read" in done.stdout, done.stdout + done.stderr
    assert client.get(layout.epoch_key(project)) is not None  # the new epoch, on the epoch key's master
    assert "no serving table" in done.stderr and done.returncode == 2  # nothing to materialize in an empty catalog


class _RowsCatalog:
    """A catalog answering every ``load_table(...).scan().to_arrow()`` with ``rows`` (the test's snapshot export)."""

    def __init__(self, rows: Any) -> None:
        self.rows = rows

    def load_table(self, name: str) -> Any:
        return self

    def scan(self) -> Any:
        return self

    def to_arrow(self) -> Any:
        return self.rows


def test_a_snapshot_view_materializes_per_master_and_reads_back(cluster: Cluster, repo: Any) -> None:
    """A snapshot view's run on a cluster: every entity's row on its slot's master (before the fix redis-py's cluster
    pipeline refused the EVALSHA: "Calling pipelined function evalsha is blocked"), the replicas WAITed for, the rows
    read back through the SDK."""
    from datetime import datetime, timedelta, timezone

    import pyarrow as pa

    from skewless.e2e.parity_cluster import key_masters, masters_check

    view = repo.view("customer_profile")
    base = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)  # rows Redis keeps (TTL)
    day = base.date()
    users = [f"snap{i}" for i in range(24)]
    ts = pa.timestamp("us", tz="UTC")
    rows = pa.table({"user_id": users, "credit_score": [300 + i for i in range(24)], "segment": ["vip"] * 24,
                     "event_time": pa.array([base + timedelta(hours=1 + i % 20) for i in range(24)], ts),
                     "created_at": pa.array([base + timedelta(hours=2 + i % 20) for i in range(24)], ts)})
    project = f"c{uuid.uuid4().hex[:8]}"
    client = _client(cluster.url)
    cut = int((base + timedelta(days=1)).timestamp() * 1000)
    waits_before = sum(node.info("commandstats").get("cmdstat_wait", {}).get("calls", 0) for _, node in masters(client))
    report = materialize.materialize_snapshot_view(_RowsCatalog(rows), client, view, day, project=project,
                                                   init_epoch=True, now_ms=cut)
    assert (report.rows, report.written) == (24, 24)
    keys = [layout.entity_key(project, view, (u,)).encode() for u in users]
    spread = masters_check(key_masters(client, keys))
    assert spread.ok and "over 3 masters" in spread.detail, spread
    assert sum(node.info("commandstats").get("cmdstat_wait", {}).get("calls", 0) for _, node in masters(client)) > waits_before
    got = open_store(repo, cluster.url, project=project).get_online_features(
        {"user_id": users}, ["customer_profile"], now_ms=cut)
    assert got.values["credit_score"] == [300 + i for i in range(24)]
    assert got.statuses["credit_score"] == ["present"] * 24
