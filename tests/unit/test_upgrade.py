"""Definition upgrades (docs/streaming.md, "Changing a definition while it serves"): a view declared in two versions
resolves per reference, reads serve the version the active-version record names (in the same round trip, and say
which), training sets name the version, and a repository with one version reads exactly as before."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from skewless import Window
from skewless.commands import CommandError
from skewless.commands.promote import describe_upgrades, promote, version_state
from skewless.core import layout
from skewless.core.repo import Repository, UnknownFeatureError, load_repository
from skewless.core.timeutil import MS_PER_DAY, MS_PER_HOUR
from skewless.serving import OnlineStore
from skewless.serving.errors import OnlineRequestError
from skewless.training.plan import TrainingInputError, build_pit_plan
from tests.support.fill import fill
from tests.unit.test_serving_online import MemRedis

P = "p"
START = 1_704_067_200_000 + 10 * MS_PER_DAY + 7 * MS_PER_HOUR
CUTOFF = 1_704_067_200_000 + 11 * MS_PER_DAY
NOW = START + 62 * MS_PER_HOUR + 3  # near the newest event: older 5-minute tiles are pruned
VIEW = "user_order_stats"


def version_2(v1: Any) -> Any:
    """v2 of the shipped view: its 1-hour count over two hours (a changed stream-served window)."""
    feats = [replace(f, window=Window.hours(2)) if f.name == "user_orders_last_1h" else f for f in v1.features]
    return replace(v1, version=2, features=feats)


@pytest.fixture(scope="module")
def repos() -> tuple[Repository, Repository, Repository]:
    """(v1 only = the shipped repository, v2 only, both declared)."""
    base = load_repository()
    v1 = base.view(VIEW)
    v2 = version_2(v1)
    others = [v for v in base.views if v.name != VIEW]
    only2 = Repository.of([*others, v2, *base.services], schemas_dir=base.schemas_dir, path=base.path)
    both = Repository.of([*others, v1, v2, *base.services], schemas_dir=base.schemas_dir, path=base.path)
    return base, only2, both


def test_views_resolve_by_version(repos: Any) -> None:
    base, _, both = repos
    assert [v.version for v in both.versions(VIEW)] == [1, 2] and both.is_upgrading(VIEW)
    assert both.view(VIEW).version == 1 and both.view(VIEW, 2).version == 2
    assert both.progress_lane(both.view(VIEW, 2)) == "user_order_stats@v2" and both.progress_lane(both.view(VIEW)) == ""
    with pytest.raises(UnknownFeatureError, match=r"has no version 3 \(declared: v1, v2\)"):
        both.view(VIEW, 3)
    with pytest.raises(UnknownFeatureError, match="name one: 'user_order_stats@v1' or 'user_order_stats@v2'"):
        both.view_named(VIEW)
    assert both.view_named("user_order_stats@v2").version == 2
    assert base.view_named(VIEW).version == 1 and not base.is_upgrading(VIEW)
    pinned = both.resolve_versions(["user_order_stats@v2:user_orders_last_1h", "user_order_stats:customer_ltv_365d"])
    assert [(v.version, f, p) for v, f, p in pinned] == [(2, "user_orders_last_1h", True), (1, "customer_ltv_365d", False)]
    with pytest.raises(UnknownFeatureError, match="'user_order_stats@x' is not 'view' or 'view@vN'"):
        both.resolve_features(["user_order_stats@x:user_orders_last_1h"])


def test_a_feature_of_one_version_only_must_be_pinned() -> None:
    base = load_repository()
    v1 = base.view(VIEW)
    v2 = replace(v1, version=2, features=[*v1.features[:1], replace(v1.features[1], name="max_order_amount_14d",
                                                                       window=Window.days(14)), *v1.features[2:]],
                 expectations=())
    both = Repository.of([v1, v2], schemas_dir=base.schemas_dir, path=base.path)
    with pytest.raises(UnknownFeatureError, match="only v2 has 'max_order_amount_14d'; pin the version: "
                                                  "'user_order_stats@v2:max_order_amount_14d'"):
        both.resolve_features(["user_order_stats:max_order_amount_14d"])
    with pytest.raises(UnknownFeatureError, match="with different features; pin the version"):
        both.resolve_features(["user_order_stats"])
    assert len(both.resolve_features(["user_order_stats@v2"])) == len(v2.features)


def test_training_sets_name_the_version(repos: Any) -> None:
    _, _, both = repos
    with pytest.raises(TrainingInputError, match=r"declared in versions v1, v2 \(an upgrade\): a training set names "
                                                 "the version, e.g. 'user_order_stats@v2:user_orders_last_1h'"):
        build_pit_plan(both, ["user_order_stats:user_orders_last_1h"])
    with pytest.raises(TrainingInputError, match="two versions of view 'user_order_stats'"):
        build_pit_plan(both, ["user_order_stats@v1:user_orders_last_1h", "user_order_stats@v2:user_orders_last_1h"])
    (pit,) = [p for p in build_pit_plan(both, ["user_order_stats@v2:user_orders_last_1h"]).views]
    assert pit.view.version == 2


@pytest.fixture(scope="module")
def stores(repos: Any) -> dict[str, Any]:
    """The store of each version alone (filled by tests.support.fill), and both in one Redis: v2's progress in its
    upgrade lane's hash."""
    base, only2, both = repos
    one = fill(P, base, users=8, events=900, start_ms=START, rate=0.004, cutoff_ms=CUTOFF)
    two = fill(P, only2, users=8, events=900, start_ms=START, rate=0.004, cutoff_ms=CUTOFF)
    data = dict(one.data)
    for k, v in two.data.items():
        if k == layout.progress_key(P, "orders"):
            k = layout.progress_key(P, "orders", "user_order_stats@v2")
        data.setdefault(k, v)
    return {"one": one, "two": two, "data": data, "users": one.users}


FEATURES = ["user_order_stats:user_orders_last_1h", "user_order_stats:customer_ltv_365d", "customer_profile:segment"]


def read(repo: Repository, data: dict[str, Any], features: list[str], users: list[str], now: int) -> tuple[Any, MemRedis]:
    client = MemRedis(data)
    store = OnlineStore(repo, client, P)
    store._policy_checked = True  # MemRedis has no CONFIG
    return store.get_online_features({"user_id": users}, features, now_ms=now), client


def test_reads_serve_the_version_the_record_names(repos: Any, stores: dict[str, Any]) -> None:
    base, only2, both = repos
    users, now = stores["users"], NOW
    expect1, _ = read(base, stores["one"].data, FEATURES, users, now)
    expect2, _ = read(only2, stores["two"].data, FEATURES, users, now)
    assert expect1.values["user_orders_last_1h"] != expect2.values["user_orders_last_1h"]  # the versions differ
    data = dict(stores["data"])
    got, client = read(both, data, FEATURES, users, now)  # no record: the older declared version
    assert got.versions == {VIEW: 1, "customer_profile": 1} and got.values == expect1.values
    assert got.statuses == expect1.statuses and client.round_trips == 1
    data[layout.active_version_key(P, VIEW)] = "2"  # promoted
    got, client = read(both, data, FEATURES, users, now)
    assert got.versions[VIEW] == 2 and got.values == expect2.values and got.statuses == expect2.statuses
    assert client.round_trips == 1 and got.to_dict()["versions"][VIEW] == 2
    assert got.to_pandas().attrs["versions"][VIEW] == 2
    data[layout.active_version_key(P, VIEW)] = "1"  # rolled back
    got, _ = read(both, data, FEATURES, users, now)
    assert got.versions[VIEW] == 1 and got.values == expect1.values
    pinned, _ = read(both, data, ["user_order_stats@v2:user_orders_last_1h"], users, now)  # a pin ignores the record
    assert pinned.versions == {"user_order_stats@v2": 2}
    assert pinned.values["user_orders_last_1h"] == expect2.values["user_orders_last_1h"]


def test_one_store_follows_the_record_between_reads(repos: Any, stores: dict[str, Any]) -> None:
    """The plan and its shared replies are cached: a changed record must still switch the next read (both sizes of a
    read: one entity, and the streamed many-entity form)."""
    base, only2, both = repos
    users, now = stores["users"], NOW
    expect1, _ = read(base, stores["one"].data, FEATURES, users, now)
    expect2, _ = read(only2, stores["two"].data, FEATURES, users, now)
    data = dict(stores["data"])
    store = OnlineStore(both, MemRedis(data), P)
    store._policy_checked = True
    for record, expect in ((None, expect1), ("2", expect2), ("2", expect2), ("1", expect1), ("7", expect2)):
        if record is None:
            data.pop(layout.active_version_key(P, VIEW), None)
        else:
            data[layout.active_version_key(P, VIEW)] = record
        got = store.get_online_features({"user_id": users}, FEATURES, now_ms=now)
        assert got.values == expect.values, record
        one = store.get_online_features([{"user_id": users[0]}], FEATURES, now_ms=now)
        assert one.row(0) == {k: v[0] for k, v in expect.values.items()}


def test_one_declared_version_reads_nothing_more(repos: Any) -> None:
    base, _, both = repos
    plan = OnlineStore(base, MemRedis({}), P).plan(FEATURES)
    assert not plan.choices and not any(key.endswith(b":active") for _, key in plan.head_names)
    assert len(plan.views) == 2 and plan.versions == {VIEW: 1, "customer_profile": 1}
    upgrading = OnlineStore(both, MemRedis({}), P).plan(FEATURES)
    assert len(upgrading.views) == 3 and upgrading.head_names[-1][1] == layout.active_version_key(P, VIEW).encode()
    assert {key for _, key in upgrading.sources} == {layout.progress_key(P, "orders").encode(),
                                                     layout.progress_key(P, "orders", "user_order_stats@v2").encode()}


def test_bad_references_are_one_line(repos: Any) -> None:
    _, _, both = repos
    store = OnlineStore(both, MemRedis({}), P)
    with pytest.raises(OnlineRequestError, match="has no version 4"):
        store.plan(["user_order_stats@v4:user_orders_last_1h"])


# --- skewless promote: the catch-up rules and the record -------------------------------------------------------------



class RecordingRedis(MemRedis):
    def set(self, key: str, value: str) -> None:
        self.data[key] = value

    def close(self) -> None:
        pass


def stream_only(version: int, hours: int) -> Any:
    """A user view with stream-served windows only (no batch part to wait for)."""
    base = load_repository()
    v1 = base.view(VIEW)
    return replace(v1, version=version, expectations=(),
                   features=[replace(v1.features[0], window=Window.hours(hours))])


def upgrade_store(progress2: dict[int, int], start2: dict[int, int] | None, applied_from: int = 0) -> tuple[Repository, Any]:
    base = load_repository()
    repo = Repository.of([stream_only(1, 1), stream_only(2, 2)], schemas_dir=base.schemas_dir, path=base.path)
    v1, v2 = repo.versions(VIEW)
    data: dict[str, Any] = {layout.epoch_key(P): "e1"}
    data[layout.view_meta_key(P, v1)] = {"applied_from_ms": "0", "epoch": "e1"}
    data[layout.progress_key(P, "orders")] = {"p:0": '{"offset": 500, "epoch": "e1"}'}
    meta2 = {"applied_from_ms": str(applied_from), "epoch": "e1"}
    if start2 is not None:
        meta2[layout.META_START_OFFSETS] = json.dumps({str(p): o for p, o in start2.items()})
    data[layout.view_meta_key(P, v2)] = meta2
    data[layout.progress_key(P, "orders", "user_order_stats@v2")] = {
        f"p:{p}": json.dumps({"offset": o, "epoch": "e1"}) for p, o in progress2.items()}
    return repo, RecordingRedis(data)


def test_promote_is_refused_until_the_new_version_caught_up() -> None:
    repo, client = upgrade_store({0: 120, 1: 299}, {0: 300, 1: 300})
    with pytest.raises(CommandError, match=r"user_order_stats v2 has not caught up: its job has not applied the records "
                                           r"live at its start \(partition:applied/needed 0:120/299\)") as exc:
        promote(repo, client, P, VIEW, 2, now_ms=NOW)
    assert "wait and run `skewless promote user_order_stats 2` again" in str(exc.value)
    assert layout.active_version_key(P, VIEW) not in client.data
    repo, client = upgrade_store({}, None)
    with pytest.raises(CommandError, match=r"its streaming job never started \(`skewless submit user_order_stats@v2`\)"):
        promote(repo, client, P, VIEW, 2, now_ms=NOW)
    repo, client = upgrade_store({0: 299, 1: 299}, {0: 300, 1: 300}, applied_from=NOW - 3600_000)
    with pytest.raises(CommandError, match=r"'user_orders_last_1h' \(2h\) reaches before the first event its job applied"):
        promote(repo, client, P, VIEW, 2, now_ms=NOW)


def test_promote_writes_the_record_and_rolls_back() -> None:
    repo, client = upgrade_store({0: 299, 1: 300}, {0: 300, 1: 300})
    line = promote(repo, client, P, VIEW, 2, now_ms=NOW)
    assert client.data[layout.active_version_key(P, VIEW)] == "2" and "serves v2 from now on" in line
    assert "`skewless promote user_order_stats 1` while it runs rolls back" in line
    assert "already serves v2" in promote(repo, client, P, VIEW, 2, now_ms=NOW)
    promote(repo, client, P, VIEW, 1, now_ms=NOW)  # the older version's job kept running: caught up
    assert client.data[layout.active_version_key(P, VIEW)] == "1"
    lines = describe_upgrades(repo, client, P, [{"jid": "abc", "state": "RUNNING", "name": "skewless-stream-user_order_stats@v2"}])
    assert lines[0] == "upgrade of user_order_stats: versions v1, v2; serving v1"
    assert lines[2].startswith("  v2: job abc RUNNING; 600/600 records of its start applied; caught up")
    assert lines[1].startswith("  v1: no running job")


def test_promote_refuses_bad_input_in_one_line() -> None:
    repo, client = upgrade_store({0: 299}, {0: 300})
    with pytest.raises(UnknownFeatureError, match="has no version 3"):
        promote(repo, client, P, VIEW, 3)
    with pytest.raises(UnknownFeatureError, match="unknown feature view 'nope'"):
        promote(repo, client, P, "nope", 2)
    single = load_repository()
    with pytest.raises(CommandError, match="declared in one version"):
        promote(single, client, P, VIEW, 1)


def test_a_batch_served_window_waits_for_its_backfill() -> None:
    base = load_repository()
    v2 = version_2(base.view(VIEW))
    state = version_state(Repository.of([base.view(VIEW), v2], schemas_dir=base.schemas_dir), v2,
                          {"applied_from_ms": "1000", layout.META_START_OFFSETS: "{}"}, {}, None, NOW)
    assert any("'max_order_amount_7d' (7d) needs a backfill materialized up to" in m for m in state.missing)
    done = version_state(Repository.of([base.view(VIEW), v2], schemas_dir=base.schemas_dir), v2,
                         {"applied_from_ms": "1000", layout.META_START_OFFSETS: "{}", layout.META_BATCH_CUTOFF: "1000"},
                         {}, None, NOW)
    assert done.missing == ()


def test_skewless_jobs_lists_each_upgrade(monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`skewless jobs` with a repository declaring two versions: after the jobs, the upgrade's state from the store."""
    import argparse

    from skewless.commands import jobs as jobs_command
    from skewless.commands import online as online_command
    from skewless.stack import flink
    from tests.integration.test_upgrade import write_repo

    defs = write_repo(tmp_path, {1: 1, 2: 2})
    repo = load_repository(defs)
    v1, v2 = repo.versions("order_counts")
    data = {layout.view_meta_key("skewless", v1): {"applied_from_ms": "0"},
            layout.view_meta_key("skewless", v2): {"applied_from_ms": "0", layout.META_START_OFFSETS: '{"0": 10}'},
            layout.progress_key("skewless", "orders", "order_counts@v2"): {"p:0": '{"offset": 4}'}}
    running = [{"jid": "a1", "state": "RUNNING", "name": "skewless-stream-order_counts@v2", "start-time": 0}]
    monkeypatch.setattr(flink.FlinkSessionCluster, "list_jobs", lambda self: running)
    monkeypatch.setattr(online_command, "open_checked_client", lambda url: RecordingRedis(data))
    monkeypatch.setenv("SKEWLESS_PROJECT", "skewless")
    args = argparse.Namespace(cancel=None, all=False, stop=None, savepoint_dir=None, repo=str(defs))
    assert jobs_command.run(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-3] == "upgrade of order_counts: versions v1, v2; serving v1 (no record: the older version)"
    assert out[-1] == ("  v2: job a1 RUNNING; 5/10 records of its start applied; not caught up: its job has not applied "
                       "the records live at its start (partition:applied/needed 0:4/9)")
