"""Online key layout: keys, entity encoding, value codecs, CAS write arguments and the read path against
the oracle (a dict-backed fake of Redis that mirrors the Lua scripts; no Redis needed)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skewless.core import laws, layout, oracle
from tests.support import reference_reader
from skewless.core.dsl import Agg, Aggregation, Entity, EventSource, FeatureView, Field, SnapshotView, TableSource, Where, Window
from skewless.core.routing import STREAM_DAILY_TILE_RETENTION_MS
from skewless.core.timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE

USER = Entity("user", {"user_id": "string"})
PAIR = Entity("pair", {"user_id": "string", "merchant_id": "int64"})
SRC = EventSource("orders", "orders", "orders", topic="orders", partition_key="user_id")
VIEW = FeatureView("user_orders", USER, SRC, [
    Aggregation("n_1h", Agg.COUNT, None, Window.hours(1)),
    Aggregation("amt_1h", Agg.SUM, "amount", Window.hours(1)),
    Aggregation("max_1d", Agg.MAX, "amount", Window.days(1)),
    Aggregation("amt_30d", Agg.SUM, "amount", Window.days(30)),
    Aggregation("last_30d", Agg.LAST, "status", Window.days(30)),
    Aggregation("n_ok_life", Agg.COUNT, None, Window.lifetime(), where=Where("status", "==", "ok")),
], version=3)
D0 = 1_704_067_200_000
EPOCH = "ep-1"


def test_key_formats_and_hash_tag() -> None:
    assert layout.entity_key("shop", VIEW, ("alice",)) == "shop:v2:user_orders:v3:{s=alice}"
    assert layout.tile_field(300_000, 600_000) == "t:300000:600000"
    assert layout.batch_fields({"cutoff": "1"}) == {"b:cutoff": "1"}
    assert layout.epoch_key("shop") == "shop:v2:epoch"
    assert layout.progress_key("shop", "orders") == "shop:v2:progress:orders"
    assert layout.view_meta_key("shop", VIEW) == "shop:v2:user_orders:v3:meta"
    snap = SnapshotView("credit", USER, TableSource("t", "t", "t"), [Field("score", "int64")], ttl=timedelta(days=1))
    assert layout.entity_key("shop", snap, ("a:b",)) == "shop:v2:credit:v1:{s=a%3Ab}"
    with pytest.raises(ValueError):
        layout.entity_key("sh:op", VIEW, ("a",))


def hash_tag(key: str) -> str:
    start = key.index("{")
    return key[start + 1:key.index("}", start)]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=12), st.integers(-(2**63), 2**63 - 1))
def test_entity_key_typed_escaped_and_round_trips(user: str, merchant: int) -> None:
    text = layout.encode_entity_key(PAIR, (user, merchant))
    assert layout.decode_entity_key(text) == (user, merchant)
    assert not set(text) & set(":{}")
    key = layout.entity_key("p", FeatureView("v", PAIR, SRC, []), (user, merchant))
    assert hash_tag(key) == text  # whole entity inside the tag, so all its keys share a slot


def test_entity_key_types_are_distinct_and_checked() -> None:
    ent = Entity("e", {"k": "int64"})
    assert layout.encode_entity_key(ent, (7,)) == "i=7"
    assert layout.encode_entity_key(USER, ("7",)) == "s=7"
    for bad_ent, bad in ((ent, ("7",)), (ent, (True,)), (ent, (2**63,)), (USER, (7,)), (USER, ("a", "b"))):
        with pytest.raises((TypeError, ValueError)):
            layout.encode_entity_key(bad_ent, bad)
    assert layout.encode_entity_key(USER, ("a,b}{%",)) == "s=a%2Cb%7D%7B%25"


def test_tile_groups_and_retention() -> None:
    groups = {g.tile_ms: g for g in layout.tile_groups(VIEW)}
    assert sorted(groups) == [5 * MS_PER_MINUTE, MS_PER_HOUR, MS_PER_DAY]
    assert [a.name for a in groups[5 * MS_PER_MINUTE].aggregations] == ["n_1h", "amt_1h"]
    assert [a.name for a in groups[MS_PER_DAY].aggregations] == ["amt_30d", "last_30d", "n_ok_life"]
    assert groups[5 * MS_PER_MINUTE].retention_ms == MS_PER_HOUR + 5 * MS_PER_MINUTE + layout.TILE_RETENTION_SLACK_MS + 5 * MS_PER_MINUTE
    assert groups[MS_PER_DAY].retention_ms == STREAM_DAILY_TILE_RETENTION_MS
    assert layout.batch_windows(VIEW) == {f"w:{30 * MS_PER_DAY}": (VIEW.feature("amt_30d"), VIEW.feature("last_30d")),
                                          "w:life": (VIEW.feature("n_ok_life"),)}


def test_tile_vector_codec() -> None:
    aggs = (Agg.COUNT, Agg.SUM, Agg.LAST)
    text = layout.encode_tile_vector(42, EPOCH, (3, 2**62, (5, 0, 9, "x")), aggs)
    assert text == '42|ep-1|[3,4611686018427387904,[5,0,9,"x"]]'
    assert layout.decode_tile_vector(text.encode(), aggs) == (42, EPOCH, (3, 2**62, (5, 0, 9, "x")))
    with pytest.raises(ValueError):
        layout.encode_tile_vector(-1, EPOCH, (0, 0, None), aggs)
    with pytest.raises(ValueError):
        layout.encode_tile_vector(1, "a|b", (0, 0, None), aggs)


def test_lua_sources_are_constants() -> None:
    assert "HSET" in layout.TILE_CAS_LUA and "PEXPIREAT" in layout.TILE_CAS_LUA
    for script in (layout.TILE_CAS_LUA, layout.BATCH_WRITE_LUA, layout.SNAPSHOT_WRITE_LUA):
        assert "KEYS[2]" not in script  # one key per call of the materializer's scripts: the entity's slot
    assert layout.script_sha("return 1") == "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"


def test_an_evicting_policy_is_refused_and_a_denied_check_warns(caplog: pytest.LogCaptureFixture) -> None:
    class Client:
        def __init__(self, answer: object) -> None:
            self.answer = answer

        def config_get(self, name: str) -> object:
            if isinstance(self.answer, Exception):
                raise self.answer
            return {name: self.answer}

    layout.check_eviction_policy(Client("noeviction"), "t")
    for policy in ("allkeys-lru", "volatile-ttl"):
        with pytest.raises(layout.EvictingPolicyError, match="noeviction"):
            layout.check_eviction_policy(Client(policy), "t")
    layout.check_eviction_policy(Client(PermissionError("NOPERM this user has no permissions to run CONFIG")), "t")
    assert "cannot read Redis maxmemory-policy" in caplog.text


# --- a fake Redis that mirrors the Lua scripts ------------------------------------------------------------------


class FakeRedis:
    """The layout's scripts on dicts (no lost parts: the manifest counts what is written)."""

    def __init__(self) -> None:
        self.data: dict[str, object] = {}
        self.expire_at: dict[str, int] = {}

    def _manifest(self, h: dict) -> dict:
        return json.loads(h.get(layout.MANIFEST_FIELD, "{}"))

    def _save(self, key: str, h: dict, man: dict, at: int) -> None:
        h[layout.MANIFEST_FIELD] = json.dumps(man)
        self.expire_at[key] = max(self.expire_at.get(key, 0), at)

    def tile_cas(self, keys: list[str], argv: list[str]) -> int:
        written, i = 0, 0
        for key in keys:
            n, tile, retention = int(argv[i]), int(argv[i + 1]), int(argv[i + 2])
            i += 3
            h = self.data.setdefault(key, {})
            man = self._manifest(h)
            g = man.setdefault("t", {}).setdefault(str(tile), [0, -1, -1])
            pre = f"t:{tile}:"
            for _ in range(n):
                start, value = argv[i], argv[i + 1]
                i += 2
                old = h.get(pre + start)
                if old is None or int(value.split("|")[0]) >= int(old.split("|")[0]):
                    h[pre + start] = value
                    written += 1
                g[1] = max(g[1], int(start))
            starts = [int(f[len(pre):]) for f in h if f.startswith(pre)]
            for s in [s for s in starts if s < max(starts) - retention]:
                del h[pre + str(s)]
            g[0] = sum(1 for f in h if f.startswith(pre))
            self._save(key, h, man, max(starts) + tile + retention)
        return written

    def batch_write(self, keys: list[str], argv: list[str]) -> int:
        key = keys[0]
        h = self.data.setdefault(key, {})
        man = self._manifest(h)
        if "b" in man and (int(man["b"][0]), int(man["b"][1])) > (int(argv[0]), int(argv[1])):
            return 0
        h.update({argv[i]: argv[i + 1] for i in range(4, len(argv), 2)})
        man["b"] = argv[:3]
        self._save(key, h, man, int(argv[3]))
        return 1

    def fetch(self, plan: reference_reader.ReadPlan) -> dict:
        return {k: self.data.get(k) for k in (plan.epoch_key, plan.meta_key, plan.entity_key)}


def test_tile_cas_keeps_newer_versions_and_drops_old_tiles() -> None:
    r = FakeRedis()
    g = layout.tile_groups(VIEW)[0]
    key = layout.entity_key("p", VIEW, ("u",))
    v = lambda ver, n: layout.encode_tile_vector(ver, EPOCH, (n, 0), g.aggs)  # noqa: E731
    r.tile_cas(*layout.tile_cas_args([(key, g, {0: v(5, 1)})]))
    assert r.tile_cas(*layout.tile_cas_args([(key, g, {0: v(4, 9)})])) == 0  # older version refused
    assert r.tile_cas(*layout.tile_cas_args([(key, g, {0: v(5, 2)})])) == 1  # same version: idempotent replay
    far = (g.retention_ms // g.tile_ms + 1) * g.tile_ms
    r.tile_cas(*layout.tile_cas_args([(key, g, {far: v(6, 1)})]))
    assert [f for f in r.data[key] if f != layout.MANIFEST_FIELD] == [layout.tile_field(g.tile_ms, far)]
    assert layout.read_entity_hash(r.data[key]).tiles_lost(g.tile_ms) == (False, -1)
    assert r.expire_at[key] == far + g.tile_ms + g.retention_ms
    with pytest.raises(ValueError):
        layout.tile_cas_args([(key, g, {1: v(1, 1)})])


# --- end to end: writers with the laws, reader, oracle -------------------------------------------------------------


def write_stream(r: FakeRedis, events: list[dict], from_ms: int) -> None:
    for g in layout.tile_groups(VIEW):
        per_key: dict[str, dict[int, list]] = {}
        for e in events:
            if e["event_time"] < from_ms:
                continue
            key = layout.entity_key("p", VIEW, (e["user_id"],))
            start = e["event_time"] // g.tile_ms * g.tile_ms
            accs = per_key.setdefault(key, {}).setdefault(start, [laws.LAWS[a].init() for a in g.aggs])
            for i, f in enumerate(g.aggregations):
                accs[i] = laws.LAWS[Agg(f.agg)].update(accs[i], laws.contribution(f, e),
                                                       (e["event_time"], e["_kafka_partition"], e["_offset"]))
        for key, tiles in per_key.items():
            encoded = {s: layout.encode_tile_vector(1, EPOCH, a, g.aggs) for s, a in tiles.items()}
            r.tile_cas(*layout.tile_cas_args([(key, g, encoded)]))


def write_batch(r: FakeRedis, events: list[dict], user: str, cutoff: int) -> None:
    windows = {}
    for field, aggs in layout.batch_windows(VIEW).items():
        width = layout.width_ms_of(aggs[0])
        ranges = [(None, cutoff)] if width is None else [
            (cutoff - width + 2 * MS_PER_DAY, cutoff),
            (cutoff - width, cutoff - width + MS_PER_DAY),
            (cutoff - width + MS_PER_DAY, cutoff - width + 2 * MS_PER_DAY),
        ]
        parts = []
        for lo, hi in ranges:
            mine = [e for e in events if e["user_id"] == user and (lo is None or e["event_time"] >= lo) and e["event_time"] < hi]
            parts.append([laws.LAWS[Agg(f.agg)].aggregate(
                (laws.contribution(f, e), (e["event_time"], e["_kafka_partition"], e["_offset"])) for e in mine) for f in aggs])
        windows[field] = parts
    fields = layout.encode_batch_record(VIEW, cutoff, "run-1", EPOCH, windows)
    key = layout.entity_key("p", VIEW, (user,))
    assert r.batch_write(*layout.batch_write_args(key, fields, 1)) == 1
    assert r.expire_at[key] >= layout.batch_expire_at_ms(cutoff)
    assert r.batch_write(*layout.batch_write_args(key, {**fields, "cutoff": str(cutoff - MS_PER_DAY)}, 9)) == 0  # fenced


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 42 * 24), st.one_of(st.none(), st.integers(-9, 9)), st.sampled_from(["ok", "no", None])),
             max_size=30),
    st.integers(0, 3),  # days the batch is late
    st.integers(0, 23),  # hour of the read
    st.booleans(),  # now-read or aligned as-of read
)
def test_read_path_equals_oracle(spec, days_late, hour, now_read) -> None:
    events = [{"event_id": f"e{i}", "event_time": D0 + h * MS_PER_HOUR + i, "user_id": "u", "amount": a, "status": s,
               "_kafka_partition": 0, "_offset": i} for i, (h, a, s) in enumerate(spec)]
    cutoff = D0 + 38 * MS_PER_DAY
    T = cutoff + days_late * MS_PER_DAY + hour * MS_PER_HOUR
    if not now_read:
        T = T // MS_PER_DAY * MS_PER_DAY  # as-of reads of this view must align to its largest tile (1 day)
    # applied by T: events before T; a now-read may also hold events stamped up to the clock-skew tolerance ahead
    horizon = T + (5 * MS_PER_MINUTE + 1 if now_read else 0)
    applied = [e for e in events if e["event_time"] < horizon]
    r = FakeRedis()
    r.data[layout.epoch_key("p")] = EPOCH
    r.data[layout.view_meta_key("p", VIEW)] = {"applied_from_ms": str(D0), "epoch": EPOCH}
    write_stream(r, applied, D0)
    write_batch(r, applied, "u", cutoff)
    plan = reference_reader.read_plan("p", VIEW, ("u",), None if now_read else T)
    got = reference_reader.evaluate_read(plan, r.fetch(plan), now_ms=T)
    for name, (value, status) in got.items():
        f = VIEW.feature(name)
        if f.window.width is not None and f.window.width > timedelta(days=1) and days_late > 2:
            assert (value, status) == (None, "incomplete")
            continue
        assert value == oracle.feature_value(VIEW, name, applied, ("u",), T, now_read=now_read), name
        assert status == ("stale" if f.window.width is None and days_late > 2 else "present")


def test_read_is_incomplete_without_epoch_or_before_stream_start() -> None:
    r = FakeRedis()
    plan = reference_reader.read_plan("p", VIEW, ("u",))
    assert set(reference_reader.evaluate_read(plan, r.fetch(plan), now_ms=D0).values()) == {(None, "incomplete")}
    r.data[layout.epoch_key("p")] = EPOCH
    r.data[layout.view_meta_key("p", VIEW)] = {"applied_from_ms": str(D0), "epoch": EPOCH}
    got = reference_reader.evaluate_read(plan, r.fetch(plan), now_ms=D0 + 30 * MS_PER_MINUTE)
    assert got["n_1h"] == (None, "incomplete")  # window starts before the stream started
    got = reference_reader.evaluate_read(plan, r.fetch(plan), now_ms=D0 + 2 * MS_PER_HOUR)
    assert got["n_1h"] == (0, "present") and got["amt_30d"] == (None, "incomplete")  # no batch yet


def test_entity_missing_from_the_newest_run_reads_as_empty_batch_part() -> None:
    r = FakeRedis()
    r.data[layout.epoch_key("p")] = EPOCH
    cutoff = D0 + 38 * MS_PER_DAY
    r.data[layout.view_meta_key("p", VIEW)] = {"applied_from_ms": str(D0), "epoch": EPOCH}
    plan = reference_reader.read_plan("p", VIEW, ("nobody",), cutoff + MS_PER_DAY)
    assert reference_reader.evaluate_read(plan, r.fetch(plan), now_ms=cutoff + MS_PER_DAY)["amt_30d"] == (None, "incomplete")
    # the run is recorded for the view: an entity it did not list had no events before the cut-off
    r.data[layout.view_meta_key("p", VIEW)] |= {layout.META_BATCH_CUTOFF: str(cutoff), "batch_epoch": EPOCH}
    got = reference_reader.evaluate_read(plan, r.fetch(plan), now_ms=cutoff + MS_PER_DAY)
    assert got["amt_30d"] == (oracle.feature_value(VIEW, "amt_30d", [], ("nobody",), cutoff + MS_PER_DAY), "present")
    # an epoch change (store rebuilt) voids the recorded run
    r.data[layout.view_meta_key("p", VIEW)]["batch_epoch"] = "other"
    assert reference_reader.evaluate_read(plan, r.fetch(plan), now_ms=cutoff + MS_PER_DAY)["amt_30d"] == (None, "incomplete")


def test_as_of_read_must_be_tile_aligned() -> None:
    with pytest.raises(ValueError, match="training-set path"):
        reference_reader.read_plan("p", VIEW, ("u",), D0 + MS_PER_HOUR)
    reference_reader.read_plan("p", VIEW, ("u",), D0 + MS_PER_DAY)


def test_snapshot_codec_and_expiry() -> None:
    snap = SnapshotView("credit", USER, TableSource("t", "t", "t"), [Field("score", "int64"), Field("tier", "string")],
                        ttl=timedelta(days=1))
    text = layout.encode_snapshot(snap, D0, None, {"score": 700, "tier": None}, EPOCH)
    assert layout.decode_snapshot(snap, text) == (D0, None, EPOCH, {"score": 700, "tier": None})
    assert layout.snapshot_expire_at_ms(snap, D0) == D0 + 8 * MS_PER_DAY + 1
