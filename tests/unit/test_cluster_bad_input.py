"""Bad input on a Redis Cluster (issue 21), on a real cluster of ``redis-server`` processes (the stack's
``RedisCluster``: 3 masters + 3 replicas on free ports, a few seconds): a master killed (connection refused, before any
failover) and the only seed stopped are each one ``OnlineStoreError`` line naming the node and the fix, raised
within the configured timeouts (1 s here), and the materializer writes nothing. The forms the integration tests
cover (a cluster named as one Redis and the reverse, a master stopped, slots not served) are in
tests/integration/test_online_cluster.py."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import uuid
from datetime import date, timedelta
from collections.abc import Iterator
from typing import Any

import pytest

from batch_jobs.materialize import materialize_snapshot_view
from skewless.config import redis_target
from skewless.core.repo import load_repository
from skewless.engines.redis_client import OnlineStoreError, check_online_store, masters, open_redis
from skewless.stack.cluster import RedisCluster, free_cluster_ports_env
from skewless.stack.procs import pid_alive, stop_pids, wait_until

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
                                reason="redis-server / redis-cli not installed (make setup)")


class Nodes:
    def __init__(self, service: RedisCluster, pids: tuple[int, ...]) -> None:
        self.service, self.pid_of = service, dict(zip(service.node_ports, pids))

    def url(self, *ports: int) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)

    def master_ports(self) -> list[int]:
        return sorted(n.port for n in self.service.cluster_nodes() if n.is_master and n.slots)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    """One cluster for the module: the first test kills the masters, the second stops a replica."""
    root = tmp_path_factory.mktemp("redis-cluster")
    service = RedisCluster(port=int(free_cluster_ports_env()["SKEWLESS_REDIS_PORT"]))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SKEWLESS_REDIS_TIMEOUT_S", "1")
        mp.setenv("SKEWLESS_REDIS_CONNECT_TIMEOUT_S", "1")
        started = service.start(root / "state", root / "logs")
        try:
            wait_until(lambda: not service.problems(), 60, "the Redis Cluster ready", interval_s=0.1)
            yield Nodes(service, started.pids)
        finally:
            for pid in started.pids:
                if pid_alive(pid):
                    os.kill(pid, signal.SIGCONT)
            stop_pids(list(started.pids))


def bounded(fn: Any, limit_s: float = 30.0) -> BaseException | None:
    """Run ``fn`` and return what it raised (None if nothing); fails the test if it has not returned after
    ``limit_s`` (a hang, not a slow answer)."""
    out: list[BaseException | None] = []

    def call() -> None:
        try:
            fn()
            out.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out.append(exc)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(limit_s)
    assert out, f"no answer within {limit_s:.0f} s: a hang"
    return out[0]


def kill(nodes: Nodes, port: int) -> None:
    os.kill(nodes.pid_of[port], signal.SIGKILL)  # no failover yet (cluster-node-timeout 5 s): its slots point at it
    wait_until(lambda: not pid_alive(nodes.pid_of[port]), 10, "the node to die", interval_s=0.02)


def test_masters_killed_before_start_are_one_line_naming_the_node_and_nothing_is_written(nodes: Nodes) -> None:
    """A master killed before any failover: the store check of a client opened just before is one line naming it, and
    the materializer stops at that check with nothing written. Then a second master killed: opening is one line naming a
    master that does not answer (failed before: redis-py's ``ConnectionError`` traceback out of ``open_redis`` whenever
    its COMMAND probe, sent to the first dead master, was retried on the other one)."""
    seed = next(p for p in nodes.service.node_ports if p not in nodes.master_ports())  # a replica: stays alive
    target = redis_target(nodes.url(seed))
    client = open_redis(target)
    first = client.get_default_node().port  # the master redis-py's opening sends its COMMAND probe to
    second = next(p for p in nodes.master_ports() if p != first)
    kill(nodes, first)
    failure = bounded(lambda: check_online_store(client, target))
    assert isinstance(failure, OnlineStoreError), repr(failure)
    line = str(failure)
    assert line.startswith(f"Redis Cluster master 127.0.0.1:{first} (slots ") and "does not answer (ConnectionError" in line
    assert "start it, or wait for its replica to take over" in line and "\n" not in line, line

    class NoCatalog:  # the check comes before the source table is read: a write would need it
        def load_table(self, name: str) -> Any:
            return FakeTable()

    class FakeTable:
        def scan(self) -> Any:
            raise AssertionError("read the source table before checking the store")

    project = f"k{uuid.uuid4().hex[:8]}"
    view = load_repository().view("customer_profile")
    failure = bounded(lambda: materialize_snapshot_view(NoCatalog(), client, view, date.today() - timedelta(days=1),
                                                        project=project, init_epoch=True))
    assert isinstance(failure, OnlineStoreError) and f"127.0.0.1:{first}" in str(failure), repr(failure)
    assert not any(node.scan(0, match=f"{project}:*", count=1000)[1] for name, node in masters(client)
                   if not name.endswith(f":{first}"))  # nothing written (not even the epoch)

    kill(nodes, second)  # the probe fails on the first, and its retry on a master picked at random may fail too
    opened = [bounded(lambda: open_redis(target)) for _ in range(12)]
    failures = [o for o in opened if o is not None]
    assert failures and all(isinstance(o, OnlineStoreError) for o in failures), [repr(o) for o in failures][:2]
    for failure in failures:
        line = str(failure)
        assert line.startswith(f"a node of the Redis Cluster redis+cluster://127.0.0.1:{seed} does not answer (Connection")
        assert any(f"127.0.0.1:{p}" in line for p in (first, second)), line
        assert "start it, or wait for its replica to take over" in line and "\n" not in line, line


def test_the_only_seed_stopped_is_one_line_naming_it_within_the_timeouts(nodes: Nodes) -> None:
    seed = next(p for p in nodes.service.node_ports if pid_alive(nodes.pid_of[p]))  # a replica left alive
    os.kill(nodes.pid_of[seed], signal.SIGSTOP)  # accepts connections (the kernel's backlog), answers nothing
    failure = bounded(lambda: open_redis(redis_target(nodes.url(seed))))
    assert isinstance(failure, OnlineStoreError), failure
    line = str(failure)
    assert line.startswith(f"no seed node of the Redis Cluster redis+cluster://127.0.0.1:{seed} answers (") and "\n" not in line
    assert "start the cluster or fix online_store.nodes" in line, line
