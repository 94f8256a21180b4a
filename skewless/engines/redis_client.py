"""The online store's Redis client: one Redis (``redis.Redis``) or a Redis Cluster (``redis.cluster.RedisCluster``),
as the profile or URL says (:func:`skewless.config.redis_target`), with the configured password, CA and timeouts.

Every reader and writer opens the store here, and checks it once before the first read or write
(:func:`check_online_store`): a cluster named as one Redis (or the reverse), a master that does not answer and
slots no master serves are each one :class:`OnlineStoreError` line naming the node and the fix, raised within the
configured timeouts (nothing is written before the check).

Per-node helpers for the cluster-aware paths: :func:`masters` (the primaries and their clients),
:func:`node_of_slot`, :func:`node_clients`, :func:`scan_masters` (SCAN on every master) and :func:`replica_count`
(the replicas a master's writes are confirmed on with ``WAIT``).
"""

from __future__ import annotations

from typing import Any, Iterator

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from skewless.config import RedisTarget
from skewless.engines import EngineSetupError

CLUSTER_SLOTS = 16384
CLUSTER_RETRIES = 1  # redis-py retries a cluster command once after a refresh: a dead node fails within ~2 timeouts


class OnlineStoreError(redis.ConnectionError, EngineSetupError):
    """The online store cannot be used as configured (wrong kind of Redis, a node down, slots not served): the
    message names the node and the fix. A ``redis.ConnectionError`` (the HTTP server answers 503) and an
    :class:`~skewless.engines.EngineSetupError` (a command prints it as one line)."""


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a Redis Cluster client."""
    return isinstance(client, RedisCluster)


def hash_slot(key: bytes) -> int:
    """The Redis Cluster hash slot of ``key`` (its ``{hash tag}`` if it has one)."""
    return key_slot(key)


def open_redis(target: RedisTarget, **overrides: Any) -> Any:
    """A client of the online store ``target`` (``overrides``: extra redis-py keyword arguments, e.g. a password).
    A cluster is discovered from its seed nodes here (CLUSTER SLOTS, bounded by the connect/read timeouts):
    :class:`OnlineStoreError` when no seed answers, a seed is not in cluster mode or slots are not served."""
    kwargs = {**target.client_kwargs(), **overrides}
    if not target.cluster:
        return redis.Redis.from_url(target.url, **kwargs)
    if target.tls:
        kwargs["ssl"] = True
    seeds = [ClusterNode(*_host_port(n)) for n in target.nodes]
    try:
        return RedisCluster(startup_nodes=seeds, require_full_coverage=True, cluster_error_retry_attempts=CLUSTER_RETRIES,
                            **kwargs)
    except RedisClusterException as exc:
        raise OnlineStoreError(_cluster_open_problem(target, str(exc))) from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:  # a node of the slot map (not the seed) is down
        raise OnlineStoreError(
            f"a node of the Redis Cluster {target.redacted} does not answer ({type(exc).__name__}: {str(exc)[:200]}); "
            "start it, or wait for its replica to take over (cluster-node-timeout) and retry") from None


def _host_port(node: str) -> tuple[str, int]:
    host, _, port = node.rpartition(":")
    return host, int(port)


def _cluster_open_problem(target: RedisTarget, why: str) -> str:
    seeds = ", ".join(target.nodes)
    if "Cluster mode is not enabled" in why:
        return (f"the online store {target.redacted} is named a Redis Cluster, but {seeds} is a single Redis (cluster mode "
                f"not enabled); name it as one Redis: online_store: {{type: redis, url: redis://{target.nodes[0]}/0}} "
                f"(or --redis-url redis://{target.nodes[0]}/0), or point online_store.nodes at the cluster's nodes")
    if "not covered" in why:
        return (f"the Redis Cluster {target.redacted} serves only part of its {CLUSTER_SLOTS} slots ({why.split('. ')[-1]}): "
                f"a master is down without a replica to promote, or the cluster was never fully created; check it with "
                f"`redis-cli --cluster check {target.nodes[0]}` and fix it (`--cluster fix`, or start the master)")
    return (f"no seed node of the Redis Cluster {target.redacted} answers ({why.split(': ', 1)[-1][:200]}); start the cluster "
            f"or fix online_store.nodes (or the redis+cluster:// URL)")


def masters(client: Any) -> list[tuple[str, Any]]:
    """``(HOST:PORT, client)`` of every master of a cluster client, or ``[("", client)]`` for one Redis."""
    if not is_cluster(client):
        return [("", client)]
    return [(node.name, node.redis_connection) for node in client.get_primaries()]


def node_of_slot(client: Any, slot: int) -> Any:
    """The cluster node (redis-py ``ClusterNode``) that serves ``slot`` now (its master)."""
    return client.nodes_manager.get_node_from_slot(slot)


def slot_owners(client: Any) -> list[str | None]:
    """Per slot (0..16383) the ``HOST:PORT`` of the master serving it in the client's slot map (None: no master)."""
    cache = client.nodes_manager.slots_cache
    return [nodes[0].name if nodes else None for nodes in (cache.get(s) for s in range(CLUSTER_SLOTS))]


def slot_ranges(client: Any) -> dict[str, str]:
    """Per master ``HOST:PORT``, its slots as text (``0-5460``), from the client's slot map."""
    spans: dict[str, list[list[int]]] = {}
    for slot, name in enumerate(slot_owners(client)):
        if name is None:
            continue
        ranges = spans.setdefault(name, [])
        if ranges and ranges[-1][1] == slot - 1:
            ranges[-1][1] = slot
        else:
            ranges.append([slot, slot])
    return {name: ",".join(f"{a}-{b}" if a != b else str(a) for a, b in r) for name, r in spans.items()}


def check_online_store(client: Any, target: RedisTarget | None = None) -> None:
    """Before the first read or write: :class:`OnlineStoreError` (one line naming the node and the fix) when one
    Redis named by the profile is a node of a cluster, or a cluster's master does not answer. Other errors (the
    Redis is unreachable, a wrong password) are raised as redis-py raises them."""
    where = target.redacted if target is not None else "the online store"
    if not is_cluster(client):
        try:
            info = client.info("cluster")
        except redis.ResponseError:  # INFO denied (managed Redis): cannot tell; the reads would see MOVED errors
            return
        if str(info.get("cluster_enabled", 0)) == "1":
            kwargs = client.connection_pool.connection_kwargs
            node = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
            raise OnlineStoreError(
                f"the online store {where} is a node of a Redis Cluster (cluster_enabled:1), named as one Redis; "
                f"name the cluster: online_store: {{type: redis_cluster, nodes: [{node}]}} (or --redis-url "
                f"redis+cluster://{node})")
        return
    ranges = slot_ranges(client)
    for name, node_client in masters(client):
        try:
            node_client.ping()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise OnlineStoreError(
                f"Redis Cluster master {name} (slots {ranges.get(name, '?')}) of {where} does not answer "
                f"({type(exc).__name__}: {str(exc)[:160]}); start it, or wait for its replica to take over "
                "(cluster-node-timeout) and retry") from None
        except redis.ResponseError as exc:  # e.g. CLUSTERDOWN, LOADING
            raise OnlineStoreError(f"Redis Cluster master {name} of {where} refuses commands ({str(exc)[:160]}); "
                                   "check it with `redis-cli --cluster check` and retry once it serves") from None


def scan_masters(client: Any, match: str, count: int = 1000) -> Iterator[bytes]:
    """Every key matching ``match``: SCAN on each master in turn (one Redis: SCAN on it)."""
    for _, node_client in masters(client):
        yield from node_client.scan_iter(match=match, count=count)


def replica_count(node_client: Any) -> int:
    """The replicas connected to one master (``INFO replication``; 0 where INFO is denied)."""
    try:
        return int(node_client.info("replication").get("connected_slaves", 0))
    except redis.ResponseError:
        return 0


def node_clients(client: Any, keys: list[bytes]) -> dict[str, Any]:
    """Per master ``HOST:PORT`` (one Redis: ``""``) its client, for the masters serving ``keys``' slots."""
    if not is_cluster(client):
        return {"": client}
    out = {}
    for key in keys:
        node = node_of_slot(client, hash_slot(key))
        out[node.name] = node.redis_connection
    return out


__all__ = ["CLUSTER_SLOTS", "OnlineStoreError", "check_online_store", "hash_slot", "is_cluster", "masters", "node_of_slot",
           "node_clients", "open_redis", "replica_count", "scan_masters", "slot_owners", "slot_ranges"]
