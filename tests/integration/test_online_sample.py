"""`skewless online sample` and `monitor drift --from-stack` against a real Redis: SCAN with MATCH finds the
entities that hold state, ids decoded through the key layout; an empty store is one clear line."""

from __future__ import annotations

import pytest

from skewless.cli import main
from skewless.config import PROJECT_ROOT
from skewless.core import layout
from skewless.core.repo import load_repository

pytestmark = pytest.mark.integration

REPO = str(PROJECT_ROOT / "feature_defs")


def test_online_sample_lists_ids_from_redis(redis_client, redis_url, capsys):
    view = load_repository(REPO).view("user_order_stats")
    args = ["online", "sample", "--repo", REPO, "--redis-url", redis_url, "--project", "tour", "--view", view.name]
    assert main(args) == 1
    assert "no entity holds online state yet" in capsys.readouterr().err
    for user in ("u1", "u:2", "u3"):
        redis_client.hset(layout.entity_key("tour", view, (user,)), "b:cutoff", "0")
    redis_client.hset(layout.entity_key("tour", view, ("u1",)), layout.tile_field(300_000, 0), "x")
    redis_client.hset(layout.entity_key("other", view, ("u9",)), "b:cutoff", "0")
    assert main([*args, "-n", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(lines) == ["user_order_stats  user_id=u1", "user_order_stats  user_id=u3", "user_order_stats  user_id=u:2"]
    assert main([*args, "-n", "1", "--ids"]) == 0
    assert capsys.readouterr().out.strip() in {"u1", "u:2", "u3"}


def test_drift_from_an_empty_stack_is_one_line(redis_client, redis_url, capsys):
    assert main(["monitor", "drift", "--from-stack", "--view", "user_order_stats", "--repo", REPO,
                 "--redis-url", redis_url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["skewless monitor drift: no entity holds online state of user_order_stats yet: run its streaming "
                   "job and produce events (`skewless submit`, `skewless produce`), or materialize a batch run"]
