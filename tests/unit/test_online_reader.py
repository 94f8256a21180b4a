"""The reference reader (tests/support/reference_reader.read_windowed) on an in-memory Redis: one round trip, values equal the oracle over the
events written as tiles, derived features, statuses, progress, and refusal of non-aligned instants."""

from __future__ import annotations

import json
from typing import Any

import pytest

from skewless.core import laws, layout, oracle
from skewless.core.repo import load_repository
from skewless.core.timeutil import MS_PER_DAY, MS_PER_MINUTE
from tests.support.fill import manifest, order_events
from tests.support.reference_reader import AsOfNotAlignedError, read_windowed

PROJECT = "p"
EPOCH = "e1"
VIEW = "user_order_stats"


class MemRedis:
    """Just what the reader uses: GET/HGETALL in a pipeline (counted round trips)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.round_trips = 0

    def pipeline(self, transaction: bool = False) -> "MemRedis._Pipe":
        return MemRedis._Pipe(self)

    class _Pipe:
        def __init__(self, r: "MemRedis") -> None:
            self.r, self.ops = r, []

        def get(self, key: str) -> None:
            self.ops.append(lambda: self.r.data.get(key))

        def hgetall(self, key: str) -> None:
            self.ops.append(lambda: dict(self.r.data.get(key) or {}))

        def execute(self, raise_on_error: bool = True) -> list:
            self.r.round_trips += 1
            return [op() for op in self.ops]


@pytest.fixture(scope="module")
def setup() -> tuple[Any, Any, MemRedis, list, int]:
    repo = load_repository()
    view = repo.view(VIEW)
    start = 1_704_067_200_000 + 10 * MS_PER_DAY
    admitted, _ = order_events(count=600, users=15, start_ms=start, rate=0.2, seed=5)
    redis = MemRedis()
    redis.data[layout.epoch_key(PROJECT)] = EPOCH
    redis.data[layout.view_meta_key(PROJECT, view)] = {"applied_from_ms": "0", "epoch": EPOCH}
    redis.data[layout.progress_key(PROJECT, "orders")] = {
        "p:0": json.dumps({"offset": 10, "max_event_ms": start + 40 * MS_PER_MINUTE, "written_ms": 2**62, "epoch": EPOCH})}
    for g in layout.tile_groups(view):
        tiles: dict[tuple, list] = {}
        for e in admitted:
            tiles.setdefault((e["user_id"], e["event_time"] // g.tile_ms * g.tile_ms), []).append(e)
        for (user, tile_start), events in tiles.items():
            accs = [laws.law(a.agg).aggregate((laws.contribution(a, e), (e["event_time"], e["_kafka_partition"], e["_offset"]))
                                              for e in events) for a in g.aggregations]
            key = layout.entity_key(PROJECT, view, (user,))
            redis.data.setdefault(key, {})[layout.tile_field(g.tile_ms, tile_start)] = layout.encode_tile_vector(
                len(events), EPOCH, accs, g.aggs)
    for fields in list(redis.data.values()):
        if isinstance(fields, dict) and any(f.startswith(layout.TILE_FIELD_PREFIX) for f in fields):
            fields[layout.MANIFEST_FIELD] = manifest(fields)
    return repo, view, redis, admitted, start


def test_now_read_equals_oracle_in_one_round_trip(setup) -> None:
    repo, view, redis, admitted, start = setup
    users = sorted({e["user_id"] for e in admitted})[:6]
    now = start + 37 * MS_PER_MINUTE + 17
    before = redis.round_trips
    got = read_windowed(redis, PROJECT, [VIEW], users, repo=repo, now_ms=now)
    assert redis.round_trips == before + 1
    for i, user in enumerate(users):
        ev = got.entities[VIEW][i]
        want = oracle.feature_row(view, admitted, (user,), now, now_read=True)
        assert ev.value("user_orders_last_1h") == want["user_orders_last_1h"]
        assert ev.status("user_orders_last_1h") == "present"
        assert ev.status("max_order_amount_7d") == "incomplete"  # no batch record yet
        assert ev.status("avg_order_value_365d") == "incomplete"  # derived from incomplete inputs
    assert got.progress["orders"][0]["offset"] == 10


def test_feature_selection_and_unknown_entities(setup) -> None:
    repo, view, redis, admitted, start = setup
    got = read_windowed(redis, PROJECT, [f"{VIEW}:user_orders_last_1h"], ["nobody"], repo=repo, now_ms=start)
    assert got.entities[VIEW][0].features == {"user_orders_last_1h": (0, "present")}


def test_as_of_must_be_tile_aligned(setup) -> None:
    repo, view, redis, admitted, start = setup
    with pytest.raises(AsOfNotAlignedError, match="training-set path"):
        read_windowed(redis, PROJECT, [VIEW], ["u"], as_of=start + 5 * MS_PER_MINUTE, repo=repo)
    got = read_windowed(redis, PROJECT, [VIEW], ["u"], as_of=start + MS_PER_DAY, repo=repo, now_ms=start + MS_PER_DAY)
    assert got.as_of_ms == start + MS_PER_DAY


def test_missing_epoch_is_incomplete(setup) -> None:
    repo, view, redis, admitted, start = setup
    other = MemRedis()
    other.data = {k: v for k, v in redis.data.items() if k != layout.epoch_key(PROJECT)}
    got = read_windowed(other, PROJECT, [VIEW], [admitted[0]["user_id"]], repo=repo, now_ms=start)
    assert all(s == "incomplete" for _, s in got.entities[VIEW][0].features.values())
