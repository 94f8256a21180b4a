"""Freshness rows from progress hashes, batch records and snapshots (a dict-backed stand-in for Redis;
the integration test uses a real one)."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import replace
from datetime import timedelta

from skewless import Agg, Aggregation, Entity, EventSource, Field, FeatureView, SnapshotView, TableSource, Window
from skewless.core import layout
from skewless.core.repo import Repository
from skewless.core.timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE
from skewless.core.staleness import LOG_END_FIELD, parse_progress, stream_status
from skewless.monitoring.freshness import freshness, render_table, view_freshness

P = "shop"
USER = Entity("user", {"user_id": "string"})
ORDERS = EventSource("orders", "orders", "raw.orders", topic="orders", allowed_lateness=timedelta(hours=1))
STREAM = FeatureView("s", USER, ORDERS, [Aggregation("n", Agg.COUNT, None, Window.hours(1))], freshness_sla=timedelta(minutes=5))
MIXED = FeatureView("m", USER, ORDERS, [Aggregation("n", Agg.COUNT, None, Window.hours(1)),
                                         Aggregation("n30", Agg.COUNT, None, Window.days(30))])
PROFILE = SnapshotView("p", USER, TableSource("prof", "crm.p", "p"), [Field("score", "int64")], ttl=timedelta(days=1),
                       freshness_sla=timedelta(hours=26))
NOW = 1_704_100_000_000 // MS_PER_DAY * MS_PER_DAY + 10 * MS_PER_HOUR  # some day 10:00 UTC


class Store:
    """The few Redis calls freshness makes (str values, like decode_responses)."""

    def __init__(self) -> None:
        self.strings: dict[str, str] = {}
        self.hashes: dict[str, dict[str, str]] = {}

    def get(self, k):
        return self.strings.get(k)

    def mget(self, keys):
        return [self.strings.get(k) for k in keys]

    def hgetall(self, k):
        return dict(self.hashes.get(k, {}))

    def hget(self, k, f):
        return self.hashes.get(k, {}).get(f)

    def scan_iter(self, match, count):
        for k in [*self.strings, *self.hashes]:
            if fnmatch.fnmatchcase(k, match.replace("\\", "")):
                yield k


def progress(store: Store, max_event_ms: list[int], epoch: str = "E1") -> None:
    store.strings[layout.epoch_key(P)] = "E1"
    store.hashes[layout.progress_key(P, "orders")] = {
        f"p:{i}": json.dumps({"offset": 10 * i, "max_event_ms": t, "written_ms": NOW - 1000, "epoch": epoch})
        for i, t in enumerate(max_event_ms)
    }


def meta(store: Store, view, **extra) -> None:
    store.hashes[layout.view_meta_key(P, view)] = {"applied_from_ms": "0", "epoch": "E1", **{k: str(v) for k, v in extra.items()}}


def test_stream_ok_and_stale():
    st = Store()
    progress(st, [NOW - 2 * MS_PER_MINUTE, NOW - 9 * MS_PER_MINUTE])
    meta(st, STREAM)
    (row,) = view_freshness(st, P, STREAM, now=NOW)  # the partition furthest behind bounds the lag
    assert (row.part, row.lag_ms, row.sla_ms, row.status) == ("stream", 9 * MS_PER_MINUTE, 5 * MS_PER_MINUTE, "stale")
    # the job's offset check: partition 1 applied everything its log held (offset 10 of a log ending at 11), 0 is behind
    st.hashes[layout.progress_key(P, "orders")][LOG_END_FIELD] = json.dumps(
        {"checked_ms": NOW - 700, "partitions": {"0": [0, 5], "1": [0, 11]}})
    (row,) = view_freshness(st, P, STREAM, now=NOW)
    assert (row.part, row.lag_ms, row.sla_ms, row.status) == ("stream", 2 * MS_PER_MINUTE, 5 * MS_PER_MINUTE, "ok")
    assert row.progress_age_ms == 1000
    progress(st, [NOW - 6 * MS_PER_MINUTE])
    (row,) = view_freshness(st, P, STREAM, now=NOW)
    assert (row.lag_ms, row.status, row.breach) == (6 * MS_PER_MINUTE, "stale", True)


def test_stream_missing_progress_meta_or_epoch():
    st = Store()
    assert view_freshness(st, P, STREAM, now=NOW)[0].status == "missing"
    progress(st, [NOW])
    assert "not started" in view_freshness(st, P, STREAM, now=NOW)[0].detail
    meta(st, STREAM)
    progress(st, [NOW], epoch="OLD")
    row = view_freshness(st, P, STREAM, now=NOW)[0]
    assert row.status == "missing" and "epoch" in row.detail


def test_batch_part_from_records_and_meta():
    st = Store()
    progress(st, [NOW - MS_PER_MINUTE])
    meta(st, MIXED)
    today = NOW // MS_PER_DAY * MS_PER_DAY
    for i, cutoff in enumerate([today - MS_PER_DAY, today]):
        st.hashes[layout.entity_key(P, MIXED, (f"u{i}",))] = layout.batch_fields({"cutoff": str(cutoff), "run": "r", "epoch": "E1"})
    stream, batch = view_freshness(st, P, MIXED, now=NOW)
    assert stream.status == "ok"
    assert (batch.part, batch.lag_ms, batch.status) == ("batch", 10 * MS_PER_HOUR, "ok")
    assert batch.sla_ms == MS_PER_DAY + MS_PER_HOUR + 6 * MS_PER_HOUR
    meta(st, MIXED, batch_cutoff_ms=today - 2 * MS_PER_DAY)  # meta wins over the records
    assert view_freshness(st, P, MIXED, now=NOW)[1].status == "warn"
    meta(st, MIXED, batch_cutoff_ms=today - 3 * MS_PER_DAY)
    row = view_freshness(st, P, MIXED, now=NOW)[1]
    assert row.status == "stale" and "3 days late" in row.detail


def test_snapshot_age():
    st = Store()
    st.hashes[layout.entity_key(P, PROFILE, ("u1",))] = {
        layout.SNAPSHOT_FIELD: layout.encode_snapshot(PROFILE, NOW - 30 * MS_PER_HOUR, None, {"score": 1}, "E1")}
    st.hashes[layout.entity_key(P, PROFILE, ("u2",))] = {
        layout.SNAPSHOT_FIELD: layout.encode_snapshot(PROFILE, NOW - 20 * MS_PER_HOUR, None, {"score": 2}, "E1")}
    (row,) = view_freshness(st, P, PROFILE, now=NOW)
    assert (row.part, row.lag_ms, row.status) == ("snapshot", 20 * MS_PER_HOUR, "ok")
    del st.hashes[layout.entity_key(P, PROFILE, ("u2",))]
    assert view_freshness(st, P, PROFILE, now=NOW)[0].status == "stale"


def test_a_failing_store_gives_an_error_row_and_others_go_on():
    class Broken(Store):
        def get(self, k):
            raise TimeoutError("redis timeout")

    rows = freshness(Broken(), P, [STREAM, PROFILE], now=NOW)
    assert [r.status for r in rows] == ["error", "error"] and "redis timeout" in rows[0].detail
    assert "error" in render_table(rows)


def test_parse_progress_skips_garbage_and_reader_status():
    fields = {b"p:0": b'{"offset": 5, "max_event_ms": 100, "written_ms": 120, "epoch": "E"}', "p:1": "not json",
              "other": "{}", "p:2": "[1]"}
    (p,) = parse_progress(fields)
    assert (p.partition, p.offset, p.max_event_ms, p.written_ms, p.epoch) == ("0", 5, 100, 120, "E")
    assert stream_status(STREAM, fields, "E", now=100 + 5 * MS_PER_MINUTE) == "present"
    assert stream_status(STREAM, fields, "E", now=101 + 5 * MS_PER_MINUTE) == "stale"
    assert stream_status(STREAM, {}, "E", now=0) == "stale"


def test_stream_counters_per_partition_reach_the_exposition():
    from skewless.monitoring import prometheus

    st = Store()
    progress(st, [NOW - MS_PER_MINUTE, NOW - MS_PER_MINUTE])
    key = layout.progress_key(P, "orders")
    for i, (late, dup) in enumerate([(3, 7), (0, 2)]):
        value = json.loads(st.hashes[key][f"p:{i}"])
        st.hashes[key][f"p:{i}"] = json.dumps({**value, "malformed": 1, "future": 0, "late": late, "duplicate": dup,
                                                "dedup_entries": 40 + i})
    st.hashes[key]["p:2"] = json.dumps({"offset": 5, "max_event_ms": NOW, "written_ms": NOW, "epoch": "OLD", "duplicate": 99})
    meta(st, STREAM)
    (row,) = view_freshness(st, P, STREAM, now=NOW)
    assert ("0", "duplicate", 7) in row.counters and ("1", "dedup_entries", 41) in row.counters
    assert not any(p == "2" for p, _, _ in row.counters)  # another epoch's partition is not this store's
    lines = prometheus.render(freshness=[row]).splitlines()
    labels = 'partition="0",reason="duplicate",source="orders",version="1",view="s"'
    assert f"skewless_stream_records_dropped{{{labels}}} 7" in lines
    assert 'skewless_stream_records_dropped{partition="0",reason="late",source="orders",version="1",view="s"} 3' in lines
    assert 'skewless_stream_dedup_entries{partition="1",source="orders",version="1",view="s"} 41' in lines


def test_an_upgrades_newer_version_is_measured_on_its_own_jobs_progress():
    """During an upgrade the newer version's job writes its own progress lane; its freshness comes from there, not
    from the source's job (whose progress says nothing about the newer version)."""
    v2 = replace(STREAM, version=2, features=[Aggregation("n", Agg.COUNT, None, Window.hours(2))])
    repo = Repository.of([STREAM, v2])
    st = Store()
    progress(st, [NOW - MS_PER_MINUTE])  # the source's job (v1): fresh
    st.hashes[layout.progress_key(P, "orders", repo.progress_lane(v2))] = {  # v2's own job: 9 minutes behind
        "p:0": json.dumps({"offset": 3, "max_event_ms": NOW - 9 * MS_PER_MINUTE, "written_ms": NOW - 1000, "epoch": "E1"})}
    meta(st, STREAM)
    meta(st, v2)
    rows = freshness(st, P, repo.versions("s"), now=NOW, lane=repo.progress_lane)
    assert [(r.version, r.lag_ms, r.status) for r in rows] == [(1, MS_PER_MINUTE, "ok"), (2, 9 * MS_PER_MINUTE, "stale")]
