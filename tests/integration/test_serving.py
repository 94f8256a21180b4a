"""Online serving against real Redis and Kafka: tiles written with the layout's CAS Lua, batch parts with the
real materializer, values at "now" and at aligned as_of equal to the oracle; statuses where the contract puts
them; reads during a re-materialization are always one run's values; push is all-or-none and lands in Kafka."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from datetime import date, datetime, timezone
from typing import Any, NamedTuple

import pytest

from batch_jobs.materialize import materialize_feature_view, store_epoch
from skewless.core import layout, oracle
from skewless.core.repo import load_repository
from skewless.core.staleness import LOG_END_FIELD
from skewless.core.timeutil import MS_PER_DAY, MS_PER_MINUTE
from skewless.serving.online import OnlineStore
from skewless.serving.push import PushError, Pusher
from skewless.store import FeatureStore
from tests.support.fill import batch_record, order_events, snapshot_hash, tile_writes

pytestmark = pytest.mark.integration

NOW = int(time.time() * 1000)
TODAY = NOW // MS_PER_DAY * MS_PER_DAY
C1, C2 = TODAY - MS_PER_DAY, TODAY  # cut-offs of two batch runs


@pytest.fixture(scope="module")
def repo() -> Any:
    return load_repository()


@pytest.fixture(scope="module")
def events() -> tuple[list, list]:
    start = NOW - 4 * MS_PER_DAY
    return order_events(1500, 25, start, 1500 / (4 * MS_PER_DAY / 1000 - 900), seed=11)


def arrow_rows(view: Any, offline: list, users: list[str], cutoff: int, run_id: str, epoch: str) -> Any:
    import pyarrow as pa

    fields = sorted(layout.batch_windows(view))
    cols: dict[str, list] = {"entity_tag": [], "run_id": [], **{f.replace(":", "_"): [] for f in fields}}
    for user in users:
        rec = batch_record(view, offline, user, cutoff, run_id, epoch)
        cols["entity_tag"].append(layout.encode_entity_key(view.entity, (user,)))
        cols["run_id"].append(run_id)
        for f in fields:
            cols[f.replace(":", "_")].append(rec[f])
    return pa.table(cols)


def day_of(cutoff: int) -> date:
    return datetime.fromtimestamp((cutoff - MS_PER_DAY) / 1000, tz=timezone.utc).date()


def setup_store(client: Any, repo: Any, admitted: list, offline: list, project: str) -> str:
    """Tiles through TILE_CAS_LUA, meta and progress as the stream job writes them, run C1 materialized."""
    view = repo.view("user_order_stats")
    epoch = store_epoch(client, project, init=True)
    client.hset(layout.view_meta_key(project, view), mapping={"applied_from_ms": "0", "epoch": epoch})
    progress = {f"p:{p}": json.dumps({"offset": max(e["_offset"] for e in admitted if e["_kafka_partition"] == p), "epoch": epoch,
                                      "max_event_ms": max(e["event_time"] for e in admitted if e["_kafka_partition"] == p),
                                      "written_ms": NOW})
                for p in {e["_kafka_partition"] for e in admitted}}
    # the job's offset check when it had applied every record (docs/semantics.md §11): at the newest event
    progress[LOG_END_FIELD] = json.dumps({"checked_ms": max(e["event_time"] for e in admitted), "partitions": {
        f[2:]: [0, json.loads(v)["offset"] + 1] for f, v in progress.items()}})
    client.hset(layout.progress_key(project, "orders"), mapping=progress)
    for key, writes in tile_writes(project, view, admitted, epoch).items():
        keys, argv = layout.tile_cas_args([(key, g, fields) for g, fields in writes])
        client.eval(layout.TILE_CAS_LUA, len(keys), *keys, *argv)
    users = sorted({e["user_id"] for e in offline})
    materialize_feature_view(None, client, view, day_of(C1), project=project,
                             rows=arrow_rows(view, offline, users, C1, "run-c1", epoch))
    return epoch


class FilledStore(NamedTuple):
    """A new project (a random Redis prefix) filled by :func:`setup_store`, and an online store reading it."""

    project: str
    epoch: str
    store: OnlineStore


def filled_store(client: Any, repo: Any, events: tuple[list, list]) -> FilledStore:
    admitted, offline = events
    project = f"s{uuid.uuid4().hex[:8]}"
    epoch = setup_store(client, repo, admitted, offline, project)
    return FilledStore(project, epoch, OnlineStore(repo, client, project))


def write_snapshot(client: Any, project: str, view: Any, user: str, ts: int, created: int | None, values: dict,
                   epoch: str) -> None:
    """The entity hash a snapshot materialization writes (row and manifest), expiring as it does."""
    key = layout.entity_key(project, view, (user,))
    client.delete(key)
    client.hset(key, mapping=snapshot_hash(view, ts, created, values, epoch))
    client.pexpireat(key, layout.snapshot_expire_at_ms(view, ts))


def hdel_prefix(client: Any, key: str, prefix: str) -> None:
    """Delete the fields of ``key`` starting with ``prefix`` (a part of an entity hash lost)."""
    fields = [f for f in client.hkeys(key) if f.decode().startswith(prefix)]
    if fields:
        client.hdel(key, *fields)


def expected(view: Any, admitted: list, offline: list, user: str, T: int, now_read: bool, cutoff: int) -> dict:
    combined = [e for e in offline if e["event_time"] < cutoff] + [e for e in admitted if e["event_time"] >= cutoff]
    stream = oracle.feature_row(view, admitted, (user,), T, now_read=now_read)
    batch = oracle.feature_row(view, combined, (user,), T, now_read=now_read)
    out = {}
    for f in view.features:
        width = layout.width_ms_of(f) if hasattr(f, "window") else None
        out[f.name] = stream[f.name] if width is not None and width <= MS_PER_DAY else batch[f.name]
    return out


def test_online_values_equal_the_oracle_now_and_as_of(redis_client: Any, repo: Any, events: tuple) -> None:
    admitted, offline = events
    project = f"s{uuid.uuid4().hex[:8]}"
    setup_store(redis_client, repo, admitted, offline, project)
    view = repo.view("user_order_stats")
    store = FeatureStore(repo, redis=redis_client, project=project)
    users = sorted({e["user_id"] for e in admitted}) + ["nobody"]
    newest = max(e["event_time"] for e in admitted)
    checked = 0
    assert store.get_online_features([{"user_id": users[0]}], "churn_model").columns  # the facade's online store
    online = store._online
    # stream-served feature -> (W, H, its tile hash's retention): a tile more than the retention behind the entity's
    # newest tile is pruned by the write script, so an as-of window starting before newest - retention may be gone
    stream_served = {a.name: (layout.width_ms_of(a), g.tile_ms, g.retention_ms) for g in layout.tile_groups(view)
                     for a in g.aggregations if a.window.width is not None and layout.width_ms_of(a) <= MS_PER_DAY}
    for as_of, now_ms in [(None, newest + 1), (None, newest + 4 * MS_PER_MINUTE), (C2, newest + 1)]:
        got = online.get_online_features({"user_id": users}, ["user_order_stats"], as_of=as_of, now_ms=now_ms)
        T = now_ms if as_of is None else as_of
        for i, user in enumerate(users):
            want = expected(view, admitted, offline, user, T, as_of is None, C1)
            for name, value in want.items():
                width, tile, retention = stream_served.get(name, (0, 1, None))
                if as_of is not None and retention is not None and (T - width) // tile * tile < newest - retention:
                    assert got.statuses[name][i] in ("present", "incomplete")  # window may be past tile retention
                    if got.statuses[name][i] == "incomplete":
                        continue
                assert got.statuses[name][i] == "present", (user, name, T)
                assert got.values[name][i] == value, (user, name, T)
                checked += 1
        assert got.batch_runs == {"user_order_stats": {"run-c1": C1}}
    assert checked > 500


def test_statuses_where_the_contract_says(redis_client: Any, repo: Any, events: tuple) -> None:
    admitted, offline = events
    project, epoch, store = filled_store(redis_client, repo, events)
    users = sorted({e["user_id"] for e in admitted})[:5]
    newest = max(e["event_time"] for e in admitted)
    sla = 5 * MS_PER_MINUTE
    one = ["user_order_stats:user_orders_last_1h", "user_order_stats:customer_ltv_365d"]
    fresh = store.get_online_features({"user_id": users}, one, now_ms=newest + sla)
    stale = store.get_online_features({"user_id": users}, one, now_ms=newest + sla + 1)
    assert set(fresh.statuses["user_orders_last_1h"]) == {"present"}
    assert set(stale.statuses["user_orders_last_1h"]) == set(stale.statuses["customer_ltv_365d"]) == {"stale"}
    late = store.get_online_features({"user_id": users}, ["user_order_stats"], as_of=C1 + 3 * MS_PER_DAY,
                                     now_ms=C1 + 3 * MS_PER_DAY)  # batch 3 days late
    assert set(late.statuses["customer_ltv_365d"]) == {"incomplete"} and set(late.statuses["last_order_status"]) == {"stale"}

    profile = repo.view("customer_profile")
    ts = NOW - MS_PER_DAY - 10 * MS_PER_MINUTE
    write_snapshot(redis_client, project, profile, users[0], ts, ts, {"credit_score": 700, "segment": "vip"}, epoch)
    ttl_end = ts + MS_PER_DAY
    edge = [store.get_online_features({"user_id": users[:2]}, "customer_profile", now_ms=t) for t in (ttl_end, ttl_end + 1)]
    assert (edge[0].values["credit_score"], edge[0].statuses["credit_score"]) == ([700, None], ["present", "present"])
    assert (edge[1].values["credit_score"], edge[1].statuses["credit_score"]) == ([None, None], ["expired", "present"])
    assert edge[0].ages_ms["credit_score"][0] == MS_PER_DAY

    redis_client.delete(layout.epoch_key(project))  # Redis lost its data
    lost = store.get_online_features({"user_id": users}, "churn_model", now_ms=newest + 1)
    assert {s for c in lost.columns for s in lost.statuses[c]} == {"incomplete"}


def test_reads_during_rematerialization_are_one_run(redis_client: Any, repo: Any, events: tuple) -> None:
    admitted, offline = events
    project, epoch, store = filled_store(redis_client, repo, events)
    view = repo.view("user_order_stats")
    users = sorted({e["user_id"] for e in offline})
    T = max(NOW, C2 + 1)
    feats = ["user_order_stats"]
    before = store.get_online_features({"user_id": users}, feats, now_ms=T)
    doubled = [{**e, "amount": e["amount"] * 2} for e in offline]  # run 2 differs from run 1 in every amount
    rows2 = arrow_rows(view, doubled, users, C2, "run-c2", epoch)
    reads: list = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            reads.append(store.get_online_features({"user_id": users}, feats, now_ms=T))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        for _ in range(3):
            materialize_feature_view(None, redis_client, view, day_of(C2), project=project, rows=rows2, group_size=2)
    finally:
        stop.set()
        thread.join(60)
    after = store.get_online_features({"user_id": users}, feats, now_ms=T)
    assert after.batch_runs["user_order_stats"] == {"run-c2": C2}
    differ = sum(before.row(i) != after.row(i) for i in range(len(users)))
    assert differ > len(users) // 2
    for r in reads:
        for i in range(len(users)):
            assert r.row(i) in (before.row(i), after.row(i)), users[i]
    assert reads


def test_push_is_all_or_none_and_lands_in_kafka(repo: Any, kafka_bootstrap: str, kafka_topic: Any) -> None:
    from tests.integration.test_streaming import read_topic

    topic = kafka_topic(partitions=3, prefix="push")
    sources = tuple(dataclasses.replace(s, topic=topic) if s.name == "orders" else s for s in repo.sources)
    pusher = Pusher(dataclasses.replace(repo, sources=sources), kafka_bootstrap)
    now = datetime.now(timezone.utc)
    iso = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    good = [{"event_id": f"e{i}", "user_id": f"u{i % 4}", "order_id": f"o{i}", "amount": 100 + i, "currency": "EUR",
             "status": "placed", "event_time": iso} for i in range(12)]
    bad = good[:3] + [{**good[3], "currency": "euro"}, {**good[4], "user_id": None}, {**good[5], "event_time": "2999-01-01T00:00:00.000Z"}]
    with pytest.raises(PushError) as err:
        pusher.push("orders", bad)
    assert [i for i, _ in err.value.problems] == [3, 4, 5]
    result = pusher.push("orders", good)
    assert result.delivered == 12 and all(p is not None for p in result.positions)
    records = read_topic(kafka_bootstrap, topic, 12)
    time.sleep(2)
    records = read_topic(kafka_bootstrap, topic, 12)
    assert len(records) == 12  # nothing of the refused batch
    assert sorted(json.loads(r["value"])["event_id"] for r in records) == sorted(e["event_id"] for e in good)
    by_user: dict[bytes, set] = {}
    for r in records:
        by_user.setdefault(r["key"], set()).add(r["partition"])
    assert all(len(p) == 1 for p in by_user.values())  # one entity, one partition


def _conn_id(conn: Any) -> int:
    conn.send_command("CLIENT", "ID")
    return int(conn.read_response())


def test_a_kept_connection_closed_by_the_server_is_reconnected(redis_url: str, repo: Any, events: tuple) -> None:
    """The store keeps its pooled connections between reads; when Redis closes one (restart, idle timeout,
    CLIENT KILL here) the next read still answers, with the same values."""
    import redis

    admitted, offline = events
    project = f"s{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    setup_store(client, repo, admitted, offline, project)
    store = OnlineStore(repo, client, project)
    users = sorted({e["user_id"] for e in admitted})[:5]
    now_ms = max(e["event_time"] for e in admitted) + 1
    before = store.get_online_features({"user_id": users}, "churn_model", now_ms=now_ms).to_dict()
    assert len(store._conns) == 1
    store_id = _conn_id(store._conns[0])
    killer = redis.Redis.from_url(redis_url)
    assert killer.client_kill_filter(_id=store_id) == 1
    after = store.get_online_features({"user_id": users}, "churn_model", now_ms=now_ms).to_dict()
    assert after == before
    assert _conn_id(store._conns[0]) != store_id  # a new connection answered
    client.close()
    killer.close()


def test_streamed_reads_equal_parsed_reads_while_the_store_changes(redis_client: Any, repo: Any, events: tuple) -> None:
    """The plain-client read (replies consumed from the socket, an entity passed over when its raw replies are the
    ones its memo kept) equals the generic pipeline read of the same store, read after read, while tiles,
    batch records and snapshot rows change in place (same length, longer, shorter, deleted)."""
    admitted, offline = events
    project = f"s{uuid.uuid4().hex[:8]}"
    setup_store(redis_client, repo, admitted, offline, project)
    view, profile = repo.view("user_order_stats"), repo.view("customer_profile")
    streamed, generic = OnlineStore(repo, redis_client, project), OnlineStore(repo, redis_client, project)
    generic._fast = False  # the client's own pipeline (the Redis Cluster path): every reply parsed
    import redis
    from redis._parsers import _RESP2Parser

    kwargs = redis_client.connection_pool.connection_kwargs
    others = [OnlineStore(repo, redis.Redis(connection_pool=redis.ConnectionPool(**{**kwargs, **extra})), project)
              for extra in ({"parser_class": _RESP2Parser}, {"protocol": 3})]  # packed, replies read without a stream
    paused = OnlineStore(repo, redis_client, project)
    paused.caches.memo_stats[2] = 1 << 40  # the memo skipped (as after many misses): every reply parsed, none measured
    others.append(paused)
    users = sorted({e["user_id"] for e in admitted})
    now = max(e["event_time"] for e in admitted) + 1
    T = now // MS_PER_DAY * MS_PER_DAY
    day = layout.entity_key(project, view, (users[0],))
    daily = f"{layout.TILE_FIELD_PREFIX}{MS_PER_DAY}:".encode()

    def same() -> None:
        for kwargs in ({"now_ms": now}, {"now_ms": now, "as_of": T}):
            for _ in range(2):  # the second read hits the memo
                got = streamed.get_online_features({"user_id": users}, "churn_model", **kwargs).to_dict()
                assert got == generic.get_online_features({"user_id": users}, "churn_model", **kwargs).to_dict()
                for other in others:
                    assert other.get_online_features({"user_id": users}, "churn_model", **kwargs).to_dict() == got
        assert streamed._conns and streamed._conns[0]._sock is not None  # every reply consumed: connection kept

    for u in users:  # memo entries made by one-entity reads (parsed at once, no raw bytes kept) ...
        streamed.get_online_features({"user_id": [u]}, "churn_model", now_ms=now)
    streamed.get_online_features({"user_id": users}, "churn_model", now_ms=now)
    assert all(e[7] is not None for view in streamed.caches.memo.values() for e in view.values())  # ... keep their raw bytes
    same()
    start, value = next((f, v) for f, v in redis_client.hgetall(day).items() if f.startswith(daily))
    version, rest = value.split(b"|", 1)
    redis_client.hset(day, start, b"%d|%s" % (int(version) ^ 1, rest))
    same()  # one byte differs, same length
    other = redis_client.hgetall(layout.entity_key(project, view, (users[-1],)))
    redis_client.hset(day, start, next(v for f, v in other.items() if f.startswith(daily)))
    same()  # another tile vector
    redis_client.hset(day, layout.tile_field(MS_PER_DAY, T - 2 * MS_PER_DAY), value)
    same()  # one more tile (not in the manifest: lost-part rules)
    redis_client.hdel(day, start)
    same()
    batch = layout.entity_key(project, view, (users[1],))
    redis_client.hset(batch, layout.BATCH_FIELD_PREFIX + "run", "run-x")
    hdel_prefix(redis_client, layout.entity_key(project, view, (users[2],)), layout.BATCH_FIELD_PREFIX)
    same()
    row = {"user_id": users[3], "event_time": T - MS_PER_DAY, "created_at": T - MS_PER_DAY, "credit_score": 700,
           "segment": "vip"}
    write_snapshot(redis_client, project, profile, users[3], row["event_time"], row["created_at"], row, "e-other")
    redis_client.delete(layout.entity_key(project, profile, (users[4],)))
    same()
    for u in users[5:8]:
        hdel_prefix(redis_client, layout.entity_key(project, view, (u,)), daily.decode())
    same()


def test_unknown_entities_are_reported_not_found_on_every_read_path(redis_client: Any, repo: Any, events: tuple) -> None:
    """A never-seen or mistyped id reads the contract's values (COUNT 0, all present) and every read path says the
    store holds nothing of it (``found[view][i]`` false): the streamed plain-client read and its memo hits, a
    one-entity read, the client's own pipeline (the Redis Cluster path) and the HTTP server's body; an entity
    whose keys are deleted is not found on the next read."""
    import http.client

    from skewless.serving.server import FeatureServer, ServerSettings, ThreadedServer

    admitted, offline = events
    project = f"s{uuid.uuid4().hex[:8]}"
    epoch = setup_store(redis_client, repo, admitted, offline, project)
    view, profile = repo.view("user_order_stats"), repo.view("customer_profile")
    users = sorted({e["user_id"] for e in admitted})
    for u in users[:3]:
        write_snapshot(redis_client, project, profile, u, NOW - MS_PER_DAY // 2, None,
                       {"credit_score": 700, "segment": "vip"}, epoch)
    unknown = ["nobody", users[0].upper(), users[0] + " "]
    asked = users[:6] + unknown + users[6:10]  # more than STREAM_MIN entities: replies consumed as a stream
    streamed, generic = OnlineStore(repo, redis_client, project), OnlineStore(repo, redis_client, project)
    generic._fast = False
    now = max(e["event_time"] for e in admitted) + 1

    def check(gone: tuple[str, ...] = ()) -> None:
        want = {"user_order_stats": [u in users and u not in gone for u in asked],
                "customer_profile": [u in users[:3] and u not in gone for u in asked]}
        for store in (streamed, streamed, generic):  # the second streamed read hits the memo
            got = store.get_online_features({"user_id": asked}, "churn_model", now_ms=now)
            assert got.found == want
            for u in unknown + list(gone):
                i = asked.index(u)
                assert got.values["user_orders_last_1h"][i] == 0 and got.values["user_total_orders_365d"][i] == 0
                assert {got.statuses[c][i] for c in got.columns} == {"present"}, u
        one = streamed.get_online_features([{"user_id": unknown[1]}], "churn_model", now_ms=now)
        assert one.found == {"user_order_stats": [False], "customer_profile": [False]}

    check()
    gone = users[1]
    redis_client.delete(layout.entity_key(project, view, (gone,)), layout.entity_key(project, profile, (gone,)))
    check((gone,))
    app = FeatureServer(ServerSettings(project=project, max_entities=50), store=streamed)
    with ThreadedServer(app) as server:
        host, port = server.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request("POST", "/get-online-features", body=json.dumps(
            {"feature_service": "churn_model", "entities": {"user_id": asked}}), headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        body = json.loads(reply.read())
        conn.close()
    assert reply.status == 200, body
    assert body["found"]["user_order_stats"] == [u in users and u != gone for u in asked]
