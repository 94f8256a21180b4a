"""The Flink compiler: golden SQL per view, generic compilation of new features, unsupported uses, and the
sink's decoding of changelog values into the laws' intermediates.

Regenerate the golden files with ``SKEWLESS_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_flink_compiler.py``.
"""

from __future__ import annotations

import json

import os
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from skewless.core.compiler import UnsupportedFeatureError
from skewless.core.dsl import Agg, Aggregation, Where, Window
from skewless.core.plan import build_plan, plan_view
from skewless.core.repo import Repository, load_repository
from streaming_jobs.flink_compiler import AggColumn, FlinkCompiler, compile_repository, dead_letter_topic

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "flink"


@pytest.fixture(scope="module")
def repo() -> Repository:
    return load_repository()


def test_golden_sql_per_view(repo: Repository) -> None:
    plan = build_plan(repo)
    compiler = FlinkCompiler(repo)
    streamed = [v for v in plan.views if v.stream is not None]
    assert streamed, "the example repository has a streamed view"
    for v in streamed:
        text = compiler.compile(v).text()
        path = GOLDEN / f"{v.name}.sql"
        if os.environ.get("SKEWLESS_UPDATE_GOLDEN"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        assert text == path.read_text(), f"{path.name} changed; regenerate with SKEWLESS_UPDATE_GOLDEN=1 if intended"


def test_render_fills_every_placeholder(repo: Repository) -> None:
    (job,) = compile_repository(repo)
    statements, query = job.render(ns="x1", bootstrap="127.0.0.1:1", group="g", startup_mode="earliest-offset")
    assert all("${" not in s for s in statements + [query])
    assert any("'topic' = 'orders'" in s for s in statements)
    assert dead_letter_topic("orders") == "orders.dead-letters"
    with pytest.raises(ValueError, match="render needs"):
        job.render(ns="x")


def test_a_new_feature_needs_no_compiler_change(repo: Repository) -> None:
    view = repo.view("user_order_stats")
    extra = Aggregation("avg_completed_amount_30m", Agg.AVG, "amount", Window.minutes(30),
                        where=Where("status", "in", ["completed", "refunded"]))
    last = Aggregation("last_currency_2h", Agg.LAST, "currency", Window.hours(2))
    mini = Aggregation("min_amount_10m", Agg.MIN, "amount", Window.minutes(10).with_tile(timedelta(minutes=1)))
    new_view = replace(view, features=tuple(view.features) + (extra, last, mini))
    new_repo = replace(repo, views=(new_view,))
    job = FlinkCompiler(new_repo).compile(plan_view(new_view))
    tiles = {o.tile_ms: [c.name for c in o.columns] for o in job.outputs}
    assert tiles[300_000] == ["user_orders_last_1h", "avg_completed_amount_30m", "last_currency_2h"]
    assert tiles[60_000] == ["min_amount_10m"]
    (contrib,) = [s for s in job.statements if s.startswith("CREATE TEMPORARY VIEW `${ns}_contrib`")]
    assert "(f_5_status IN ('completed', 'refunded'))" in contrib
    assert contrib.count("`${ns}_admitted`") == 1  # one row per event (one Deduplicate) for all, expanded in Java
    outputs = {o["tile_ms"]: o for o in json.loads(job.tile_spec)["outputs"]}
    assert outputs[300_000]["kinds"] == ["COUNT", "AVG_INT", "LAST"] and outputs[60_000]["kinds"] == ["MIN_LONG"]
    columns = contrib.split("\nSELECT ", 1)[1].split("\nFROM ", 1)[0].split(",\n  ")
    assert [c.rsplit(" AS ", 1)[-1] for c in columns[:4]] == ["ts", "low_ms", "low_src", "k0"]  # one key text for all
    for o in outputs.values():  # each output's arguments where the spec says (the 1-minute tiles: a third output)
        assert o["key_cols"] == [3]
        j = [x["tile_ms"] for x in json.loads(job.tile_spec)["outputs"]].index(o["tile_ms"])
        assert [c.rsplit(" AS ", 1)[-1] for c in columns[o["arg_col"]:o["arg_col"] + len(o["kinds"])]] == \
            [f"a{j}_{i}" for i in range(len(o["kinds"]))]


def test_unsupported_aggregations_are_listed(repo: Repository) -> None:
    view = repo.view("user_order_stats")
    bad = (Aggregation("sum_status", Agg.SUM, "status", Window.hours(1)),
           Aggregation("max_currency", Agg.MAX, "currency", Window.hours(1)))
    new_view = replace(view, features=tuple(view.features) + bad)
    with pytest.raises(UnsupportedFeatureError) as err:
        FlinkCompiler(replace(repo, views=(new_view,))).compile(plan_view(new_view))
    assert {i.feature for i in err.value.items} == {"sum_status", "max_currency"}




def test_run_view_stop_offsets_parse_and_refuse_bad_text() -> None:
    """`run_view.py --stop-offsets` (a bounded job whose records may still be produced after its start)."""
    import argparse

    from streaming_jobs.run_view import parse_stop_offsets

    assert parse_stop_offsets("0:120,1:0,2:7") == {0: 120, 1: 0, 2: 7}
    for bad in ("", "0", "0:x", "0:-1", "a:1"):
        with pytest.raises(argparse.ArgumentTypeError, match="PARTITION:OFFSET"):
            parse_stop_offsets(bad)
