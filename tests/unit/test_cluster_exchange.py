"""The cluster read transport (:class:`skewless.serving.transport.ClusterExchange`) on fake nodes of our own: the
commands of a read are grouped by the master of each key's slot and the replies come back in the single-node
order; a MOVED reply (a slot moved) reads the slot map again and retries once; a master that refuses the
connection, and a slot no master serves, are one error naming the master or the slot."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError

from skewless.core import layout
from skewless.core.repo import load_repository
from skewless.engines.redis_client import CLUSTER_SLOTS, OnlineStoreError, hash_slot
from skewless.serving.evaluate import ReadCaches
from skewless.serving.read_plan import build_plan
from skewless.serving.transport import ClusterExchange

P = "t"


def parse_commands(data: bytes) -> list[list[bytes]]:
    out, i = [], 0
    while i < len(data):
        assert data[i:i + 1] == b"*"
        j = data.index(b"\r\n", i)
        n, i = int(data[i + 1:j]), j + 2
        args = []
        for _ in range(n):
            j = data.index(b"\r\n", i)
            size = int(data[i + 1:j])
            args.append(data[j + 2:j + 2 + size])
            i = j + 2 + size + 2
        out.append(args)
    return out


class FakeConn:
    def __init__(self, node: "FakeNode") -> None:
        self.node, self.replies = node, []

    def send_packed_command(self, command: list[bytes], check_health: bool = True) -> None:
        if self.node.down:
            raise RedisConnectionError(f"Error 111 connecting to {self.node.name}. Connection refused.")
        for cmd, key, *fields in parse_commands(b"".join(command)):
            owner = self.node.cluster.truth[hash_slot(key)]
            if owner is not self.node:
                self.replies.append(MovedError(f"{hash_slot(key)} {owner.name}"))
                continue
            value = self.node.cluster.data.get(key)
            if cmd == b"GET":
                self.replies.append(value)
            elif cmd == b"HGETALL":
                self.replies.append([x for kv in (value or {}).items() for x in kv])
            else:
                self.replies.append([(value or {}).get(f) for f in fields])
            self.node.commands += 1

    def read_response(self, disable_decoding: bool = False) -> Any:
        return self.replies.pop(0)

    def disconnect(self) -> None:
        self.replies = []


class FakeNode:
    def __init__(self, cluster: "FakeCluster", name: str) -> None:
        self.cluster, self.name, self.down, self.commands = cluster, name, False, 0
        pool = type("Pool", (), {"get_connection": lambda _self: FakeConn(self)})()
        self.redis_connection = type("NodeClient", (), {"connection_pool": pool})()


class FakeCluster:
    """Three masters; ``truth`` is who serves each slot now, ``slots_cache`` what the client believes."""

    def __init__(self, data: dict[bytes, Any]) -> None:
        self.data = data
        self.masters = [FakeNode(self, f"127.0.0.1:{7000 + i}") for i in range(3)]
        third = CLUSTER_SLOTS // 3 + 1
        self.truth = [self.masters[min(s // third, 2)] for s in range(CLUSTER_SLOTS)]
        self.refreshes = 0
        self.nodes_manager = self
        self.initialize()

    def initialize(self) -> None:
        self.slots_cache = {s: [n] for s, n in enumerate(self.truth) if n is not None}
        self.refreshes += 1


@pytest.fixture(scope="module")
def setup() -> tuple[Any, Any, list[list[bytes]], dict[bytes, Any]]:
    repo = load_repository()
    plan = build_plan(repo, P, "churn_model")
    users = [f"u{i}" for i in range(40)]
    tags = [[f"s={u}".encode() for u in users] for _ in plan.entities]
    view = repo.view("user_order_stats")
    data: dict[bytes, Any] = {layout.epoch_key(P).encode(): b"e1"}
    for i, u in enumerate(users[::2]):
        data[layout.entity_key(P, view, (u,)).encode()] = {b"b:cutoff": str(i).encode(), b"m": b"{}"}
    return plan, repo, tags, data


def single_node_replies(plan: Any, tags: list[list[bytes]], data: dict[bytes, Any]) -> list[Any]:
    """What one Redis answers, in the read's order."""
    out = []
    for cmd, key in plan.head_names:
        out.append(data.get(key) if cmd == b"GET" else dict(data.get(key) or {}))
    for vp in plan.views:
        for t in tags[vp.entity_index]:
            for cmd, suffix in vp.key_suffixes:
                value = data.get(vp.prefix + t + suffix) or {}
                out.append(dict(value) if cmd == b"HGETALL" else [value.get(f) for f in (b"s", b"m")])
    return out


def test_replies_come_back_in_the_single_node_order_from_every_master(setup: Any) -> None:
    plan, _, tags, data = setup
    cluster = FakeCluster(data)
    replies = ClusterExchange(cluster).read(plan, tags, len(tags[0]), ReadCaches(max_bytes=1 << 20))
    assert replies == single_node_replies(plan, tags, data)
    assert all(m.commands > 0 for m in cluster.masters)  # every master answered its share, one exchange each


def test_a_moved_slot_reads_the_map_again_and_retries_once(setup: Any) -> None:
    plan, _, tags, data = setup
    cluster = FakeCluster(data)
    exchange = ClusterExchange(cluster)
    cluster.truth = [cluster.masters[(cluster.masters.index(n) + 1) % 3] for n in cluster.truth]  # every slot moved
    replies = exchange.read(plan, tags, len(tags[0]), ReadCaches(max_bytes=1 << 20))
    assert cluster.refreshes == 2
    assert replies == single_node_replies(plan, tags, data)


def test_a_master_down_and_an_unserved_slot_are_named(setup: Any) -> None:
    plan, _, tags, data = setup
    cluster = FakeCluster(data)
    cluster.masters[1].down = True
    with pytest.raises(OnlineStoreError, match=r"^Redis Cluster master 127.0.0.1:7001 did not answer the read "
                                               r"\(ConnectionError: .*start it, or wait for its replica"):
        ClusterExchange(cluster).read(plan, tags, len(tags[0]), ReadCaches(max_bytes=1 << 20))
    assert cluster.refreshes == 2  # the map was read again once before giving up
    cluster.masters[1].down = False
    cluster.truth = [None if n is cluster.masters[2] else n for n in cluster.truth]
    cluster.initialize()
    with pytest.raises(OnlineStoreError, match=r"no Redis Cluster master serves slot \d+"):
        ClusterExchange(cluster).read(plan, tags, len(tags[0]), ReadCaches(max_bytes=1 << 20))
