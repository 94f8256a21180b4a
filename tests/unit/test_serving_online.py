"""OnlineStore on an in-memory Redis: equal to the reference reader (tests/support/reference_reader.py)
feature by feature, equal to the oracle, one round trip, snapshot TTL edges, statuses, and input errors."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from skewless.core import layout, oracle
from skewless.core.repo import load_repository
from skewless.core.routing import SNAPSHOT_EXPIRED_MEMORY_MS
from skewless.core.timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE
from skewless.serving import OnlineRequestError, OnlineStore
from skewless.serving.online import AsOfNotAligned
from tests.support.fill import batch_record, fill, manifest, snapshot_hash
from tests.support.reference_reader import read_windowed

P = "p"
EPOCH = "e1"
START = 1_704_067_200_000 + 10 * MS_PER_DAY + 7 * MS_PER_HOUR
CUTOFF = 1_704_067_200_000 + 11 * MS_PER_DAY


class MemRedis:
    """GET/HGETALL in a pipeline, counting round trips (str values, as decode_responses would give)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.round_trips = 0

    def pipeline(self, transaction: bool = False) -> "MemRedis":
        self.ops: list = []
        return self

    def get(self, key: str) -> None:
        self.ops.append(lambda: self.data.get(key))

    def hgetall(self, key: str) -> None:
        self.ops.append(lambda: dict(self.data.get(key) or {}))

    def hmget(self, key: str, *fields: Any) -> None:
        self.ops.append(lambda: [(self.data.get(key) or {}).get(f.decode() if isinstance(f, bytes) else f) for f in fields])

    def execute(self, raise_on_error: bool = True) -> list:
        self.round_trips += 1
        return [op() for op in self.ops]


@pytest.fixture(scope="module")
def repo() -> Any:
    return load_repository()


@pytest.fixture(scope="module")
def filled(repo: Any) -> Any:
    return fill(P, repo, users=12, events=900, start_ms=START, rate=0.004, cutoff_ms=CUTOFF, epoch=EPOCH)


def reference(data: dict[str, Any], view: Any, user: str, now: int, as_of: int | None) -> dict[str, tuple]:
    """Every feature's ``(value, status)`` by the reference reader."""
    return read_windowed(MemRedis(data), P, [view], [user], as_of, now_ms=now).entities[view.name][0].features


def instants() -> list[tuple[int, int | None]]:
    out: list[tuple[int, int | None]] = []
    for minutes in (5, 97, 13 * 60 + 1, 24 * 60 + 33, 40 * 60, 50 * 60 + 7, 75 * 60, 5 * 24 * 60):
        out.append((START + minutes * MS_PER_MINUTE + 3, None))
    for days in (11, 12, 13, 14):
        out.append((1_704_067_200_000 + days * MS_PER_DAY + 5 * MS_PER_HOUR, 1_704_067_200_000 + days * MS_PER_DAY))
    return out


def with_newer_run(filled: Any, repo: Any) -> dict[str, Any]:
    """The view meta records a newer run that listed only half of the entities (layout.META_BATCH_CUTOFF)."""
    view = repo.view("user_order_stats")
    data = dict(filled.data)
    data[layout.view_meta_key(P, view)] = {**data[layout.view_meta_key(P, view)],
                                           layout.META_BATCH_CUTOFF: str(CUTOFF + MS_PER_DAY), "batch_epoch": EPOCH}
    for user in filled.users[::2]:
        key = layout.entity_key(P, view, (user,))
        fields = {**data[key], **layout.batch_fields(batch_record(view, filled.offline, user, CUTOFF + MS_PER_DAY, "run-2", EPOCH))}
        data[key] = {**fields, layout.MANIFEST_FIELD: manifest(fields)}
    return data


@pytest.mark.parametrize("newer_run", [False, True])
@pytest.mark.parametrize("now,as_of", instants())
def test_equals_the_reference_reader(repo: Any, filled: Any, now: int, as_of: int | None,
                                                   newer_run: bool) -> None:
    view = repo.view("user_order_stats")
    data = with_newer_run(filled, repo) if newer_run else filled.data
    redis = MemRedis(data)
    store = OnlineStore(repo, redis, P)
    users = filled.users + ["nobody"]
    got = store.get_online_features([{"user_id": u} for u in users], ["user_order_stats"], as_of=as_of, now_ms=now)
    assert redis.round_trips == 1
    for i, user in enumerate(users):
        want = reference(data, view, user, now, as_of)
        for name in view.feature_names:
            assert (got.values[name][i], got.statuses[name][i]) == want[name], (user, name)


def test_values_equal_the_oracle_where_present(repo: Any, filled: Any) -> None:
    view = repo.view("user_order_stats")
    store = OnlineStore(repo, MemRedis(filled.data), P)
    combined = [e for e in filled.offline if e["event_time"] < CUTOFF] + [e for e in filled.admitted if e["event_time"] >= CUTOFF]
    checked = 0
    for now, as_of in instants():
        T = now if as_of is None else as_of
        got = store.get_online_features({"user_id": filled.users}, "churn_model", as_of=as_of, now_ms=now)
        for i, user in enumerate(filled.users):
            stream = oracle.feature_row(view, filled.admitted, (user,), T, now_read=as_of is None)
            batch = oracle.feature_row(view, combined, (user,), T, now_read=as_of is None)
            for ref, col in zip(got.refs, got.columns):
                vname, fname = ref.split(":")
                if vname != view.name or got.statuses[col][i] == "incomplete":
                    continue
                feat = next(f for f in view.features if f.name == fname)
                width = layout.width_ms_of(feat) if hasattr(feat, "window") else None
                want = stream[fname] if width is not None and width <= MS_PER_DAY else batch[fname]
                assert got.values[col][i] == want, (user, fname, T)
                checked += 1
    assert checked > 200


def test_progress_age_runs_and_response_forms(repo: Any, filled: Any) -> None:
    store = OnlineStore(repo, MemRedis(filled.data), P)
    newest = max(e["event_time"] for e in filled.admitted)
    now = newest + MS_PER_MINUTE
    got = store.get_online_features([{"user_id": filled.users[0]}], "churn_model", now_ms=now)
    assert got.columns[0] == "user_orders_last_1h" and got.refs[-1] == "customer_profile:segment"
    assert set(got.progress["orders"]) and got.batch_runs["user_order_stats"] == {"run-1": CUTOFF}
    assert got.ages_ms["user_orders_last_1h"][0] == now - newest
    d = got.to_dict()
    assert json.dumps(d, default=str) and d["entities"] == {"user_id": [filled.users[0]]}
    df = got.to_pandas(statuses="feature")
    assert list(df.columns[:3]) == ["user_id", "user_orders_last_1h", "user_orders_last_1h__status"]
    import pandas as pd

    again = store.get_online_features(pd.DataFrame({"user_id": filled.users[:2]}), "churn_model", now_ms=now)
    assert again.row(0) == got.row(0)


def test_stale_uses_the_monitors_event_time_rule(repo: Any, filled: Any) -> None:
    store = OnlineStore(repo, MemRedis(filled.data), P)
    newest = max(e["event_time"] for e in filled.admitted)
    sla = 5 * MS_PER_MINUTE
    fresh = store.get_online_features({"user_id": filled.users[:1]}, ["user_order_stats:user_orders_last_1h"], now_ms=newest + sla)
    stale = store.get_online_features({"user_id": filled.users[:1]}, ["user_order_stats:user_orders_last_1h"], now_ms=newest + sla + 1)
    assert fresh.statuses["user_orders_last_1h"] == ["present"] and stale.statuses["user_orders_last_1h"] == ["stale"]


def _snapshot_store(repo: Any, rows: list[tuple[int, int, int]]) -> dict[str, Any]:
    profile = repo.view("customer_profile")
    data: dict[str, Any] = {layout.epoch_key(P): EPOCH}
    for i, (ts, created, score) in enumerate(rows):
        data[layout.entity_key(P, profile, (f"u{i}",))] = snapshot_hash(
            profile, ts, created, {"credit_score": score, "segment": "vip"}, EPOCH)
    return data


def test_snapshot_ttl_edges_equal_the_oracle(repo: Any) -> None:
    profile = repo.view("customer_profile")
    d1 = 1_704_067_200_000 + MS_PER_DAY
    store = OnlineStore(repo, MemRedis(_snapshot_store(repo, [(d1 + 12 * MS_PER_HOUR, d1 + 12 * MS_PER_HOUR, 710)])), P)
    rows = [{"user_id": "u0", "event_time": d1, "created_at": d1, "credit_score": 700, "segment": "vip"},
            {"user_id": "u0", "event_time": d1 + 12 * MS_PER_HOUR, "created_at": d1 + 12 * MS_PER_HOUR, "credit_score": 710,
             "segment": "vip"}]
    ttl_end = d1 + 12 * MS_PER_HOUR + MS_PER_DAY
    for T in (d1 + 12 * MS_PER_HOUR, ttl_end, ttl_end + 1, ttl_end + SNAPSHOT_EXPIRED_MEMORY_MS,
              ttl_end + SNAPSHOT_EXPIRED_MEMORY_MS + 1):
        got = store.get_online_features({"user_id": ["u0"]}, ["customer_profile:credit_score"], now_ms=T + 5, as_of=T)
        want = oracle.snapshot_value(profile, "credit_score", rows, ("u0",), T)
        assert (got.values["credit_score"][0], got.statuses["credit_score"][0]) == want, T
    statuses = [store.get_online_features({"user_id": ["u0"]}, "customer_profile", now_ms=T).statuses["credit_score"][0]
                for T in (ttl_end, ttl_end + 1)]
    assert statuses == ["present", "expired"]
    # a stored row not visible yet at the instant read: the older row is unknown online
    early = store.get_online_features({"user_id": ["u0"]}, "customer_profile", as_of=d1 + MS_PER_HOUR, now_ms=ttl_end)
    assert early.statuses["segment"] == ["incomplete"] and early.values["segment"] == [None]


def test_missing_epoch_makes_everything_incomplete(repo: Any, filled: Any) -> None:
    data = {k: v for k, v in filled.data.items() if k != layout.epoch_key(P)}
    store = OnlineStore(repo, MemRedis(data), P)
    got = store.get_online_features({"user_id": filled.users[:3] + ["nobody"]}, "churn_model", now_ms=START + MS_PER_DAY)
    assert {s for col in got.columns for s in got.statuses[col]} == {"incomplete"}
    assert {v for col in got.columns for v in got.values[col]} == {None}


def test_bad_input_says_what_is_wrong(repo: Any, filled: Any) -> None:
    store = OnlineStore(repo, MemRedis(filled.data), P, max_entities=3)
    cases = [
        (([{"user_id": "a"}], ["user_order_stats:user_orders_last_1hh"]), "did you mean"),
        (([{"user_id": "a"}], ["nope_view"]), "unknown"),
        (([{"user_id": 7}], "churn_model"), "is a string"),
        (([{"uid": "a"}], "churn_model"), "lacks join key 'user_id'"),
        (({"user_id": ["a", "b", "c", "d"]}, "churn_model"), "limit is 3"),
        (({"user_id": "a"}, "churn_model"), "must be a list"),
        (([{"user_id": "a"}], []), "no features"),
        (([{"user_id": "a"}], [3]), "strings"),
    ]
    for (rows, feats), msg in cases:
        with pytest.raises(OnlineRequestError, match=msg):
            store.get_online_features(rows, feats)
    with pytest.raises(AsOfNotAligned, match="training-set path"):
        store.get_online_features([{"user_id": "a"}], "churn_model", as_of=CUTOFF + 5 * MS_PER_MINUTE)
    with pytest.raises(OnlineRequestError, match="as_of"):
        store.get_online_features([{"user_id": "a"}], "churn_model", as_of="yesterday")
    assert store.get_online_features({"user_id": []}, "churn_model").values["segment"] == []


def test_one_store_across_instants_equals_the_reference_reader(repo: Any, filled: Any) -> None:
    """The per-entity memo and the decode caches are keyed so that one store, read at many instants (both
    sides of tile and day boundaries, now and as_of, repeated, with and without a newer run), answers exactly
    what a fresh evaluation does."""
    view = repo.view("user_order_stats")
    users = filled.users + ["nobody"]
    cases = list(instants())
    for minutes in range(0, 3 * 24 * 60, 47):  # crosses 5-minute tiles, days, the cut-off and the tail days
        for extra in (0, 61_000):  # the second read often shares the first one's tiles and day (memo hits)
            cases.append((CUTOFF - MS_PER_DAY + minutes * MS_PER_MINUTE + 1 + extra, None))
    for data in (filled.data, with_newer_run(filled, repo)):
        store = OnlineStore(repo, MemRedis(data), P)
        for now, as_of in cases + cases[::-1]:
            got = store.get_online_features({"user_id": users}, ["user_order_stats"], as_of=as_of, now_ms=now)
            for i, user in enumerate(users):
                want = reference(data, view, user, now, as_of)
                for name in view.feature_names:
                    assert (got.values[name][i], got.statuses[name][i]) == want[name], (now, as_of, user, name)


def test_days_since_across_its_day_boundary_on_memo_hits(repo: Any, filled: Any) -> None:
    """An entity read again (memo hit) just before, at and after a whole number of days since its last order
    gets the reference's ``days_since_last_order`` each time (the memo keeps that value only within its day)."""
    view = repo.view("user_order_stats")
    base = CUTOFF + 2 * MS_PER_DAY
    store = OnlineStore(repo, MemRedis(filled.data), P)
    first = store.get_online_features({"user_id": filled.users}, ["user_order_stats"], now_ms=base)
    checked = 0
    for i, user in enumerate(filled.users):
        ts = first.values["last_order_ts"][i]
        if ts is None:
            continue
        boundary = ts + ((base - ts) // MS_PER_DAY + 1) * MS_PER_DAY
        for now in (boundary - 1, boundary, boundary + 1, boundary - 1):
            got = store.get_online_features([{"user_id": user}], ["user_order_stats"], now_ms=now)
            want = reference(filled.data, view, user, now, None)
            for name in view.feature_names:
                assert (got.values[name][0], got.statuses[name][0]) == want[name], (user, now, name)
        checked += 1
    assert checked


def test_window_sums_outside_int64_are_incomplete_and_the_read_goes_on(repo: Any) -> None:
    """Issue 19 item 7: users whose completed orders are int64-max amounts. Tiles and batch bodies hold the exact
    sums; a window whose sum leaves int64 reads null, incomplete (and the derived feature using it), the rest of
    the entity's features and every other entity read as usual: equal to the reference reader and the oracle."""
    big_users: set[str] = set()

    def edit(e: dict[str, Any]) -> None:
        if e["status"] == "completed" and e["user_id"] < "u4":
            e["amount"] = 2**63 - 1
            big_users.add(e["user_id"])

    filled = fill(P, repo, users=8, events=400, start_ms=START, rate=0.004, cutoff_ms=CUTOFF, epoch=EPOCH, edit=edit)
    view = repo.view("user_order_stats")
    store = OnlineStore(repo, MemRedis(filled.data), P)
    combined = [e for e in filled.offline if e["event_time"] < CUTOFF] + [e for e in filled.admitted if e["event_time"] >= CUTOFF]
    seen = set()
    for now, as_of in instants():
        T = now if as_of is None else as_of
        got = store.get_online_features([{"user_id": u} for u in filled.users], ["user_order_stats"], as_of=as_of, now_ms=now)
        for i, user in enumerate(filled.users):
            want_ref = reference(filled.data, view, user, now, as_of)
            want = oracle.feature_values(view, combined, (user,), T, now_read=as_of is None)
            for name in ("customer_ltv_365d", "avg_order_value_365d", "completed_orders_365d"):
                value, status = got.values[name][i], got.statuses[name][i]
                assert (value, status) == want_ref[name], (user, name, T)
                if status != "incomplete" or want[name][1] == "incomplete":
                    assert (value, status if status != "stale" else "present") == want[name], (user, name, T)
                seen.add((name, status, want[name][1]))
    assert big_users and ("customer_ltv_365d", "incomplete", "incomplete") in seen
    assert ("avg_order_value_365d", "incomplete", "incomplete") in seen and ("customer_ltv_365d", "present", "present") in seen


def test_a_read_after_the_shared_keys_changed_equals_a_fresh_stores(repo: Any, filled: Any) -> None:
    """A store keeps what its last read took from the shared replies (epoch, progress, view metas) while they are
    equal: every change of one of them is read as a new store reads it."""
    data = dict(filled.data)
    store = OnlineStore(repo, MemRedis(data), P)
    now = max(e["event_time"] for e in filled.admitted) + MS_PER_MINUTE
    entities = {"user_id": filled.users[:3] + ["nobody"]}

    def read() -> Any:
        got = store.get_online_features(entities, "churn_model", now_ms=now)
        want = OnlineStore(repo, MemRedis(dict(data)), P).get_online_features(entities, "churn_model", now_ms=now)
        assert (got.values, got.statuses, got.ages_ms, got.progress, got.batch_runs) == \
            (want.values, want.statuses, want.ages_ms, want.progress, want.batch_runs)
        return got

    first, again = read(), read()
    assert again.statuses == first.statuses and "present" in again.statuses["user_orders_last_1h"]
    progress_key, meta_key = layout.progress_key(P, "orders"), layout.view_meta_key(P, repo.view("user_order_stats"))
    older = {f: json.dumps({**json.loads(v), "max_event_ms": json.loads(v)["max_event_ms"] - MS_PER_HOUR})
             for f, v in data[progress_key].items() if f.startswith("p:")}
    data[progress_key] = older  # the source's newest event an hour older (and no offset check): stale, older ages
    assert set(read().statuses["user_orders_last_1h"]) == {"stale"}
    data[progress_key] = filled.data[progress_key]
    assert read().statuses == first.statuses
    data[meta_key] = {**data[meta_key], "epoch": "e0"}  # the view's meta of another epoch
    assert set(read().statuses["user_orders_last_1h"]) == {"incomplete"}
    data[meta_key] = filled.data[meta_key]
    del data[layout.epoch_key(P)]  # no epoch: everything incomplete
    assert {s for sts in read().statuses.values() for s in sts} == {"incomplete"}
    data[layout.epoch_key(P)] = filled.data[layout.epoch_key(P)]
    assert read().statuses == first.statuses


def test_a_responses_progress_is_its_own(repo: Any, filled: Any) -> None:
    """The progress a response reports is copied from what the store keeps between reads (on first use): a caller
    changing it changes neither the next response nor what the store serves."""
    store = OnlineStore(repo, MemRedis(dict(filled.data)), P)
    now = max(e["event_time"] for e in filled.admitted) + MS_PER_MINUTE
    first = store.get_online_features({"user_id": filled.users[:2]}, "churn_model", now_ms=now)
    want = json.loads(json.dumps(first.to_dict()))
    for parts in first.progress.values():
        for p in parts.values():
            p["max_event_ms"] = 0
        parts.clear()
    again = store.get_online_features({"user_id": filled.users[:2]}, "churn_model", now_ms=now)
    assert json.loads(json.dumps(again.to_dict())) == want and again.progress["orders"]
    assert again.statuses == first.statuses and "stale" not in again.statuses["user_orders_last_1h"]


def test_a_forked_child_does_not_use_the_parents_kept_connections(repo: Any, filled: Any) -> None:
    """The connections a store keeps are its process's sockets: in a forked child the store keeps none (its next read
    takes a new one from the client's pool), the parent keeps its own."""
    import os

    store = OnlineStore(repo, MemRedis(filled.data), P)
    kept = object()
    store._conns.append(kept)
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only when the parent's connection is gone
        os._exit(0 if store._conns == [] else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store._conns == [kept]
