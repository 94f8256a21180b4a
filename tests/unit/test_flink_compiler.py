"""The Flink compiler: golden SQL per view, generic compilation of new features, unsupported uses, and the
sink's decoding of changelog values into the laws' intermediates.

Regenerate the golden files with ``SKEWLESS_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_flink_compiler.py``.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from skewless.core.compiler import UnsupportedFeatureError
from skewless.core.dsl import Agg, Aggregation, Where, Window
from skewless.core.plan import build_plan, plan_view
from skewless.core.repo import Repository, load_repository
from streaming_jobs.flink_compiler import AggColumn, FlinkCompiler, compile_repository, dead_letter_topic
from streaming_jobs.sink import decode_acc

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
    assert "(f_5_status IN ('completed', 'refunded'))" in job.changelog_query
    assert "ROW(0, ts - MOD(ts, 60000))" in job.changelog_query  # the 1-minute tiles: a third expansion
    assert "GROUP BY out_id, k0, tile_start" in job.changelog_query  # one aggregate (one Deduplicate) for all
    assert job.changelog_query.count("`${ns}_admitted`") == 1


def test_unsupported_aggregations_are_listed(repo: Repository) -> None:
    view = repo.view("user_order_stats")
    bad = (Aggregation("sum_status", Agg.SUM, "status", Window.hours(1)),
           Aggregation("max_currency", Agg.MAX, "currency", Window.hours(1)))
    new_view = replace(view, features=tuple(view.features) + bad)
    with pytest.raises(UnsupportedFeatureError) as err:
        FlinkCompiler(replace(repo, views=(new_view,))).compile(plan_view(new_view))
    assert {i.feature for i in err.value.items} == {"sum_status", "max_currency"}


def test_sink_decodes_changelog_text_to_intermediates() -> None:
    assert decode_acc(AggColumn("n", Agg.COUNT, None), None) == 0
    assert decode_acc(AggColumn("s", Agg.SUM, "int64"), "9007199254740993") == 9007199254740993
    assert decode_acc(AggColumn("a", Agg.AVG, "int64"), "30,2") == (30, 2)
    assert decode_acc(AggColumn("m", Agg.MAX, "timestamp"), "1704067200123") == 1704067200123
    assert decode_acc(AggColumn("m", Agg.MIN, "float64"), "-0.0") == -0.0
    text = "0001704067200000" + "0000000002" + "0000000000000000043" + "shipped"
    assert decode_acc(AggColumn("l", Agg.LAST, "string"), text) == (1704067200000, 2, 43, "shipped")
    with pytest.raises(OverflowError):
        decode_acc(AggColumn("s", Agg.SUM, "int64"), str(2**63))


def test_sink_tile_value_is_layouts_encoding(repo: Repository) -> None:
    """The sink's bound encoder writes exactly ``layout.encode_tile_vector`` (the stored format is layout's)."""
    from skewless.core import layout
    from streaming_jobs.sink import SinkConfig, TileWriter

    (job,) = compile_repository(repo, ["user_order_stats"])
    views = {name: repo.view(name) for name in job.views}
    config = SinkConfig("redis://unused", "p", "feature_defs", "unused:9092", "t.dead-letters", job.source, 0)
    writer = TileWriter(job, config, views, "epoch1")
    samples = {Agg.COUNT: ["0", "7", None], Agg.SUM: ["-12", "9007199254740993", None], Agg.AVG: ["30,2", None],
               Agg.MAX: ["1704067200123", "-5", None], Agg.MIN: ["3", None],
               Agg.LAST: ["0001704067200000" + "0000000002" + "0000000000000000043" + "caf\u00e9 \"x\"", None]}
    checked = 0
    for out in job.outputs:
        aggs = layout.tile_groups(views[out.view])
        group = next(g for g in aggs if g.tile_ms == out.tile_ms)
        for k in range(3):
            values = [samples[c.agg][k % len(samples[c.agg])] if c.value_type in (None, "int64", "timestamp", "string")
                      else None for c in out.columns]
            accs = [decode_acc(c, v) for c, v in zip(out.columns, values)]
            expected = layout.encode_tile_vector(5 + k, "epoch1", accs, group.aggs)
            assert writer.tile_value(out.view, out.tile_ms, 5 + k, values) == expected
            checked += 1
    assert checked == 3 * len(job.outputs) > 0


class _FakeTimers:
    def __init__(self) -> None:
        self.processing: list[int] = []
        self.event: list[int] = []

    def current_processing_time(self) -> int:
        return 1_000_000

    def register_processing_time_timer(self, t: int) -> None:
        self.processing.append(t)

    def register_event_time_timer(self, t: int) -> None:
        self.event.append(t)


class _FakeCtx:
    def __init__(self, bucket: int, timers: _FakeTimers) -> None:
        self.bucket, self.timers = bucket, timers

    def get_current_key(self) -> int:
        return self.bucket

    def timer_service(self) -> _FakeTimers:
        return self.timers


class _FakeMapState(dict):
    def put(self, k: str, v: list) -> None:
        self[k] = v


def test_sink_arms_a_flush_after_restore_and_an_end_of_input_flush(repo: Repository) -> None:
    """A fresh worker whose bucket holds checkpointed pending rows still arms a flush timer on the first new
    row (it once waited for ``flush_rows`` rows instead), arms the end-of-input timer once per bucket, and
    a timer writes every pending row (restored + new) and re-arms on the next row."""
    from pyflink.common import Row
    from pyflink.common.types import RowKind

    from streaming_jobs.sink import END_OF_INPUT_MS, SinkConfig, make_process_function

    (job,) = compile_repository(repo, ["user_order_stats"])
    config = SinkConfig("redis://unused", "p", "feature_defs", "unused:9092", "t.dead-letters", job.source, 0, flush_ms=100)
    sink = make_process_function(job, config)
    written: list[list[list]] = []

    class _Writer:
        def apply(self, client: object, rows: object, producer: object) -> int:
            batch = [list(r) for r in rows]  # type: ignore[attr-defined]
            written.append(batch)
            return len(batch)

    restored = ["T", "user_order_stats", 300000, "u1", "0", 0, 1]
    sink.pending = _FakeMapState({"restored": restored})  # what the checkpoint held for bucket 3
    sink.writer, sink.client, sink.producer, sink.rows_written = _Writer(), None, None, 0
    sink.mirror, sink.armed, sink.drain_armed = {}, set(), set()
    timers = _FakeTimers()
    row = Row("T", "user_order_stats", 300000, "u2", "0", 0, 1)
    row.set_row_kind(RowKind.INSERT)
    sink.process_element(row, _FakeCtx(3, timers))
    assert timers.processing == [1_000_000 + 100] and timers.event == [END_OF_INPUT_MS]
    sink.process_element(row, _FakeCtx(3, timers))  # armed already: no second registration
    assert len(timers.processing) == 1 and len(timers.event) == 1
    sink.on_timer(1_000_100, _FakeCtx(3, timers))
    assert len(written) == 1 and sorted(r[3] for r in written[0]) == ["u1", "u2"]
    sink.process_element(row, _FakeCtx(3, timers))  # after the flush the next row arms again
    assert len(timers.processing) == 2 and len(timers.event) == 1
