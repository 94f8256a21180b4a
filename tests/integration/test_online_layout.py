"""The online layout's guarantees against a real Redis (docs/semantics.md §13): losing any part of an entity's state
for a view reads ``incomplete`` for the features it feeds (never a plausible number marked ``present``), and a
materializer that resumes after a newer run never replaces the newer run's values (fenced writes)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

import batch_jobs.materialize as materialize
from batch_jobs.materialize import materialize_feature_view
from skewless.core import layout
from skewless.core.timeutil import MS_PER_DAY, MS_PER_HOUR
from tests.integration.test_serving import C1, C2, NOW, arrow_rows, day_of, events, filled_store, repo  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration


def _drop_tiles(client: Any, project: str, view: Any, user: str, tile_ms: int) -> None:
    """Lose the entity's stream tiles of one tile size (as an operator's HDEL or a broken replica would)."""
    key = layout.entity_key(project, view, (user,))
    fields = [f for f in client.hkeys(key) if f.decode().startswith(f"{layout.TILE_FIELD_PREFIX}{tile_ms}:")]
    assert fields
    client.hdel(key, *fields)


def _drop_batch(client: Any, project: str, view: Any, user: str) -> None:
    key = layout.entity_key(project, view, (user,))
    fields = [f for f in client.hkeys(key) if f.decode().startswith(layout.BATCH_FIELD_PREFIX)]
    assert fields
    client.hdel(key, *fields)


def _write_snapshot(client: Any, project: str, view: Any, user: str, ts: int, values: dict, epoch: str) -> None:
    keys, args = layout.snapshot_write_args(layout.entity_key(project, view, (user,)), view, C1, 1, ts,
                                            layout.encode_snapshot(view, ts, ts, values, epoch))
    assert client.eval(layout.SNAPSHOT_WRITE_LUA, 1, *keys, *args) == 1


def _drop_snapshot(client: Any, project: str, view: Any, user: str) -> None:
    assert client.hdel(layout.entity_key(project, view, (user,)), layout.SNAPSHOT_FIELD) == 1


def test_a_lost_tile_or_batch_record_reads_incomplete(redis_client: Any, repo: Any, events: tuple) -> None:
    admitted, _ = events
    project, _, store = filled_store(redis_client, repo, events)
    view = repo.view("user_order_stats")
    newest = max(e["event_time"] for e in admitted)
    recent = [e["user_id"] for e in admitted if e["event_time"] > newest - 30 * 60_000]
    user, other = recent[-1], next(u for u in reversed(recent) if u != recent[-1])
    now = newest + 1
    feats = ["user_order_stats:user_orders_last_1h", "user_order_stats:customer_ltv_365d"]
    before = store.get_online_features({"user_id": [user, other]}, feats, now_ms=now)
    assert before.statuses["user_orders_last_1h"] == ["present", "present"] and before.values["user_orders_last_1h"][0] >= 1

    stream_tile = next(g.tile_ms for g in layout.tile_groups(view) if g.tile_ms < MS_PER_HOUR)
    _drop_tiles(redis_client, project, view, user, stream_tile)
    lost = store.get_online_features({"user_id": [user, other]}, feats, now_ms=now)
    assert lost.statuses["user_orders_last_1h"] == ["incomplete", "present"]
    assert lost.values["user_orders_last_1h"] == [None, before.values["user_orders_last_1h"][1]]

    _drop_batch(redis_client, project, view, other)
    lost = store.get_online_features({"user_id": [user, other]}, feats, now_ms=now)
    assert lost.statuses["customer_ltv_365d"] == ["present", "incomplete"]
    assert lost.values["customer_ltv_365d"] == [before.values["customer_ltv_365d"][0], None]
    assert lost.statuses["user_orders_last_1h"][1] == "present"  # the batch record feeds no stream-served window


def test_a_lost_snapshot_row_reads_incomplete(redis_client: Any, repo: Any, events: tuple) -> None:
    project, epoch, store = filled_store(redis_client, repo, events)
    profile = repo.view("customer_profile")
    ts = NOW - MS_PER_HOUR
    _write_snapshot(redis_client, project, profile, "u-a", ts, {"credit_score": 700, "segment": "vip"}, epoch)
    got = store.get_online_features({"user_id": ["u-a", "nobody"]}, "customer_profile", now_ms=NOW)
    assert (got.values["segment"], got.statuses["segment"]) == (["vip", None], ["present", "present"])
    _drop_snapshot(redis_client, project, profile, "u-a")
    got = store.get_online_features({"user_id": ["u-a", "nobody"]}, "customer_profile", now_ms=NOW)
    assert (got.values["segment"], got.statuses["segment"]) == ([None, None], ["incomplete", "present"])


def test_a_paused_materializer_never_replaces_a_newer_run(redis_client: Any, repo: Any, events: tuple,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Run A (older cut-off) pauses past its lease between a lease renewal and its next batch; run B (newer cut-off)
    takes the lease and completes; A resumes and sends its batch: B's values must survive."""
    admitted, offline = events
    project, epoch, store = filled_store(redis_client, repo, events)
    view = repo.view("user_order_stats")
    users = sorted({e["user_id"] for e in offline})
    older, newer = C2, C2 + MS_PER_DAY  # setup_store materialized C1
    rows_a = arrow_rows(view, offline, users, older, "run-a", epoch)
    rows_b = arrow_rows(view, [{**e, "amount": e["amount"] * 2} for e in offline], users, newer, "run-b", epoch)
    batch = 5
    paused_key = layout.entity_key(project, view, (users[batch],)).encode()
    paused, resume = threading.Event(), threading.Event()
    writer_a = {}
    send = redis.connection.Connection.send_packed_command

    def send_pausing(self: Any, command: Any, check_health: bool = True) -> None:
        """Run A's batch holding users[batch] waits here: after its lease renewal, before it reaches Redis."""
        if threading.current_thread() is writer_a.get("thread") and any(paused_key in bytes(c) for c in command):
            paused.set()
            resume.wait(60)
        return send(self, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", send_pausing)
    monkeypatch.setattr(materialize, "LEASE_MS", 300)

    def run_a() -> None:
        try:
            materialize_feature_view(None, redis_client, view, day_of(older), project=project, rows=rows_a, batch_size=batch)
        except Exception as exc:  # noqa: BLE001 - the paused run is expected to fail once it resumes
            writer_a["error"] = exc

    writer_a["thread"] = threading.Thread(target=run_a)
    writer_a["thread"].start()
    try:
        assert paused.wait(60), "run A never reached its second batch"
        deadline = time.monotonic() + 30
        while True:  # run B waits for A's lease to expire, then completes
            try:
                materialize_feature_view(None, redis_client, view, day_of(newer), project=project, rows=rows_b,
                                         batch_size=batch)
                break
            except materialize.ConcurrentMaterializationError:
                assert time.monotonic() < deadline, "run A's lease never expired"
                time.sleep(0.1)
        T = max(NOW, newer + 1)
        after_b = store.get_online_features({"user_id": users}, ["user_order_stats"], now_ms=T)
    finally:
        resume.set()
        writer_a["thread"].join(60)
    assert isinstance(writer_a.get("error"), (materialize.NewerRunMaterializedError,
                                              materialize.ConcurrentMaterializationError))
    store.caches.forget_entities()
    final = store.get_online_features({"user_id": users}, ["user_order_stats"], now_ms=T)
    assert final.batch_runs == after_b.batch_runs == {"user_order_stats": {"run-b": newer}}
    for i, user in enumerate(users):
        assert final.row(i) == after_b.row(i), user


def test_a_recorded_tile_loss_covers_only_the_windows_reaching_back_to_it(redis_client: Any, repo: Any,
                                                                          events: tuple) -> None:
    """The sink's next write of the size records the loss (lost up to the highest start written, the count made
    exact): windows starting at or before it stay incomplete, later ones are served again; both readers agree."""
    from tests.support.reference_reader import read_windowed

    admitted, _ = events
    project, epoch, store = filled_store(redis_client, repo, events)
    view = repo.view("user_order_stats")
    group = next(g for g in layout.tile_groups(view) if g.tile_ms < MS_PER_HOUR)
    newest = max(e["event_time"] for e in admitted)
    user = [e["user_id"] for e in admitted if e["event_time"] > newest - 30 * 60_000][-1]
    key = layout.entity_key(project, view, (user,))
    highest = layout.read_entity_hash(redis_client.hgetall(key)).manifest["t"][str(group.tile_ms)][1]
    _drop_tiles(redis_client, project, view, user, group.tile_ms)
    later = highest + group.tile_ms  # a tile after the loss, written by the sink
    vector = layout.encode_tile_vector(10**9, epoch, [1] * len(group.aggs), group.aggs)
    keys, argv = layout.tile_cas_args([(key, group, {later: vector})])
    assert redis_client.eval(layout.TILE_CAS_LUA, len(keys), *keys, *argv) == 1
    assert layout.read_entity_hash(redis_client.hgetall(key)).tiles_lost(group.tile_ms) == (False, highest)
    feature = "user_order_stats:user_orders_last_1h"
    for now, want in ((highest + MS_PER_HOUR, None), (highest + MS_PER_HOUR + group.tile_ms, 1)):
        got = store.get_online_features({"user_id": [user]}, [feature], now_ms=now)
        ref = read_windowed(redis_client, project, [feature], [user], repo=repo, now_ms=now).entities["user_order_stats"][0]
        assert got.values["user_orders_last_1h"] == [want] == [ref.value("user_orders_last_1h")]
        assert (got.statuses["user_orders_last_1h"][0] == "incomplete") == (want is None)
        assert got.statuses["user_orders_last_1h"][0] == ref.status("user_orders_last_1h")
