"""The Java sink's encoder (``TileEncoder``, run in a plain JVM) against :mod:`skewless.core.layout` and the laws:
keys and values must be byte-identical to what layout encodes, for every aggregation and value type."""

from __future__ import annotations

import base64
import json
import math
import random
import struct
from typing import Any

import pytest

from skewless.core import laws, layout
from skewless.core.dsl import Agg, Entity
from skewless.core.repo import Repository, load_repository
from streaming_jobs.flink_compiler import compile_repository
from streaming_jobs.sink import SinkConfig, encode_rows, redis_endpoint, sink_spec, trace_writes

pytestmark = pytest.mark.skipif(__import__("shutil").which("javac") is None, reason="needs a JDK")

EPOCH = "ep0ch"


@pytest.fixture(scope="module")
def repo() -> Repository:
    return load_repository()


def _typed(value_type: str | None, text: str) -> Any:
    """Reference decoding of a typed changelog text (the compiler's CAST(... AS STRING) forms)."""
    if value_type in ("int64", "timestamp"):
        return int(text)
    if value_type == "float64":
        return float(text)
    if value_type == "bool":
        return text.lower() == "true"
    return text


def _acc(agg: Agg, value_type: str | None, text: str | None) -> Any:
    """Reference: the laws intermediate a changelog column's text stands for (see FlinkCompiler._agg_sql)."""
    if agg in (Agg.COUNT, Agg.SUM):
        return 0 if text is None else int(text)
    if agg is Agg.AVG:
        total, count = (text or "0,0").split(",")
        return (int(total), int(count))
    if agg in (Agg.MIN, Agg.MAX):
        return None if text is None else _typed(value_type, text)
    if text is None:
        return None
    return (int(text[:16]), int(text[16:26]), int(text[26:45]), _typed(value_type, text[45:]))


_STRINGS = ["placed", "caf\u00e9 \"x\" \\ y", "tab\there\nnl\r\x01\x1f\x7f", "\u2028\U0001f600", "", "a:b{c},%d"]


def _sample(agg: Agg, value_type: str | None, rnd: random.Random) -> str | None:
    if rnd.random() < 0.15:
        return None
    if agg is Agg.COUNT:
        return str(rnd.randrange(0, 10**6))
    # sums beyond int64 too: partial sums are exact in 38 digits (docs/semantics.md §4, issue 19 item 7)
    sums = [0, -12, 2**63 - 1, -(2**63), 2 * (2**63 - 1), -(10**37), 10**38 - 1, rnd.randrange(-10**12, 10**12)]
    if agg is Agg.SUM:
        return str(rnd.choice(sums))
    if agg is Agg.AVG:
        return f"{rnd.choice([rnd.randrange(-10**9, 10**9), *sums])},{rnd.randrange(1, 999)}"
    value = {"int64": lambda: str(rnd.choice([-5, 0, 2**63 - 1, rnd.randrange(-10**15, 10**15)])),
             "timestamp": lambda: str(rnd.randrange(0, 253402300799999)),
             "float64": lambda: repr(rnd.choice([0.1, -0.0, 1e16, 1e-5, 123456.789, 5e-324, 1.7976931348623157e308])),
             "bool": lambda: rnd.choice(["TRUE", "FALSE", "true"]),
             "string": lambda: rnd.choice(_STRINGS)}[value_type or "string"]()
    if agg is Agg.LAST:
        return "%016d%010d%019d%s" % (rnd.randrange(0, 10**13), rnd.randrange(0, 64), rnd.randrange(0, 2**62), value)
    return value


def test_tile_keys_and_values_equal_layouts(repo: Repository) -> None:
    (job,) = compile_repository(repo, ["user_order_stats"])
    views = {n: repo.view(n) for n in job.views}
    config = SinkConfig("redis://127.0.0.1:6379/0", "proj", job.source, "t.dead-letters", "unused:9092", 0)
    spec = sink_spec(job, views, config)
    rnd = random.Random(7)
    rows, expected = [], []
    for i in range(300):
        out = job.outputs[i % len(job.outputs)]
        view = views[out.view]
        group = next(g for g in layout.tile_groups(view) if g.tile_ms == out.tile_ms)
        values = [_sample(c.agg, c.value_type, rnd) for c in out.columns]
        user = rnd.choice(["u1", "a:b{c},%d", "caf\u00e9", "x" * 40])
        start = rnd.randrange(0, 10**6) * out.tile_ms
        version = rnd.randrange(1, 10**6)
        rows.append(["T", out.view, out.tile_ms, user, *[""] * (job.key_width - 1), start, version, *values,
                     *[None] * (job.value_width - len(values))])
        accs = [_acc(c.agg, c.value_type, v) for c, v in zip(out.columns, values)]
        expected.append(["T", layout.entity_key("proj", view, (user,)), start,
                         layout.encode_tile_vector(version, EPOCH, accs, group.aggs)])
    assert encode_rows(spec, EPOCH, rows) == expected


def _synthetic_spec(columns: list[tuple[str, str | None]], key_types: list[str]) -> str:
    return json.dumps({"source": "s", "key_width": len(key_types), "value_width": len(columns), "outputs": [{
        "view": "v", "tile_ms": 60000, "retention_ms": 0, "key_prefix": "P:{", "key_suffix": "}:t:60000",
        "key_types": key_types, "columns": [list(c) for c in columns]}]})


@pytest.mark.parametrize("value_type", ["int64", "timestamp", "float64", "bool", "string"])
def test_every_aggregation_and_value_type(value_type: str) -> None:
    """MIN/MAX/LAST of each value type (float64 and bool too, which the example repository lacks), AVG and
    SUM, and typed int64 + string entity keys, against layout's encoding of the reference intermediates."""
    aggs = [Agg.COUNT, Agg.SUM, Agg.AVG, Agg.LAST] + ([Agg.MIN, Agg.MAX] if value_type != "bool" else [])
    columns = [(a.value, None if a is Agg.COUNT else value_type) for a in aggs]
    entity = Entity("e", {"id": "int64", "name": "string"})
    spec = _synthetic_spec(columns, ["int64", "string"])
    rnd = random.Random(value_type)
    rows, expected = [], []
    for _ in range(200):
        values = [_sample(a, t, rnd) for a, (_, t) in zip(aggs, columns)]
        key = (rnd.choice([0, -7, 2**63 - 1]), rnd.choice(_STRINGS))
        rows.append(["T", "v", 60000, str(key[0]), key[1], 120000, 3, *values])
        accs = [_acc(a, t, v) for a, (_, t), v in zip(aggs, columns, values)]
        expected.append(["T", "P:{" + layout.encode_entity_key(entity, key) + "}:t:60000", 120000,
                         layout.encode_tile_vector(3, EPOCH, accs, aggs)])
    assert encode_rows(spec, EPOCH, rows) == expected


def test_decimal_sums_are_the_laws_decimal_strings() -> None:
    """SUM/AVG of a decimal field (Flink's DECIMAL(38, s) sum as text) encode as laws._encode_sum of the Decimal:
    Python's str (BigDecimal.toString follows the same rule: 1E-9, 0E-9, 12.500000000); no row: the law's 0."""
    from decimal import Decimal

    spec = _synthetic_spec([("count", None), ("sum", "decimal"), ("avg", "decimal")], ["string"])
    texts = ["0.300000000", "-12.500000000", "0.000000001", "0E-9", "0.000000000", "123456789012345678901234567.123456789",
             "-0.000010000", "7", "0"]
    rows = [["T", "v", 60000, "u", 0, 2, "2", t, f"{t},3"] for t in texts] + [["T", "v", 60000, "u", 0, 2, "0", None, None]]
    expected = [layout.encode_tile_vector(2, EPOCH, (2, Decimal(t), (Decimal(t), 3)), [Agg.COUNT, Agg.SUM, Agg.AVG])
                for t in texts] + [layout.encode_tile_vector(2, EPOCH, (0, 0, (0, 0)), [Agg.COUNT, Agg.SUM, Agg.AVG])]
    assert [g[3] for g in encode_rows(spec, EPOCH, rows)] == expected


def test_float_text_is_pythons_repr() -> None:
    rnd = random.Random(3)
    xs = [0.1, 0.3, 1e16, 1e15, 1e-4, 1e-5, 9.999999999999999e15, 2.0**-1074, 2.0**-1022, 2.0**1023, 1e23,
          2.82879384806159e17, 123456789012345678.0, -1.5, 100.0, 1.7976931348623157e308]
    xs += [2.0 ** e for e in range(-1074, 1024, 7)]
    xs += [struct.unpack("<d", struct.pack("<Q", rnd.getrandbits(63)))[0] for _ in range(3000)]
    xs = [x for x in xs if math.isfinite(x)]
    got = encode_rows("{\"source\":\"s\",\"key_width\":1,\"value_width\":0,\"outputs\":[]}", EPOCH,
                      [["F", repr(x)] for x in xs])
    assert [g[1] for g in got] == [repr(x) for x in xs]


def test_progress_and_dead_letters_equal_the_python_records(repo: Repository) -> None:
    (job,) = compile_repository(repo, ["user_order_stats"])
    spec = sink_spec(job, {n: repo.view(n) for n in job.views},
                     SinkConfig("redis://127.0.0.1:6379/0", "proj", job.source, "t.dead-letters", "unused:9092", 0))
    pad = [""] * (job.key_width - 1)
    progress = ["P", "", 0, "3", *pad, 0, 991, "1704067200123", "1000", "990", "4", "3", "3", "7", "25"]
    progress += [None] * (job.value_width - 8)
    payloads = [b'{"a": "caf\xc3\xa9 \\"q\\""}', b"\xff\xfe not utf-8", b"\xed\xa0\x80 surrogate", b"", b"\x00\x1f\n"]
    dead = [["D", "", 0, "2", *pad, 40 + i, 0, "malformed", f"detail \u00e9 {i}\n",
             base64.b64encode(p).decode(), "1704067200000", *[None] * (job.value_width - 4)] for i, p in enumerate(payloads)]
    got = encode_rows(spec, EPOCH, [progress, *dead])
    assert got[0] == ["P", "p:3", laws.dumps({
        "offset": 991, "max_event_ms": 1704067200123, "written_ms": 0, "epoch": EPOCH, "records": 1000,
        "admitted_or_duplicate": 990, "malformed": 4, "future": 3, "late": 3, "duplicate": 7, "dedup_entries": 25})]
    for row, p, g in zip(dead, payloads, got[1:]):
        try:
            text = p.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        assert g == ["D", f"2:{row[3 + job.key_width]}", laws.dumps({
            "source": "orders", "partition": 2, "offset": row[3 + job.key_width], "reason": "malformed",
            "detail": row[5 + job.key_width + 1], "payload": text, "payload_b64": row[5 + job.key_width + 2],
            "record_timestamp_ms": 1704067200000})]


def test_writes_a_tile_sum_outside_int64_and_refuses_an_unknown_output(repo: Repository) -> None:
    """A tile sum beyond int64 is written exactly (it failed the job before: issue 19 item 7); the reader
    answers null, incomplete for a window whose sum stays outside int64."""
    spec = _synthetic_spec([("sum", "int64")], ["string"])
    got = encode_rows(spec, EPOCH, [["T", "v", 60000, "u", 0, 1, str(2**64 - 2)], ["T", "w", 60000, "u", 0, 1, "1"]])
    assert got[0] == ["T", "P:{s=u}:t:60000", 0, f'1|{EPOCH}|[{{"$int":"{2**64 - 2}"}}]']
    assert layout.decode_tile_vector(got[0][3], [Agg.SUM]) == (1, EPOCH, (2**64 - 2,))
    assert got[1][0] == "E" and "unknown tile output w" in got[1][1]


def test_redis_endpoint_parses_urls(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv("SKEWLESS_REDIS_PASSWORD", raising=False)
    monkeypatch.delenv("SKEWLESS_REDIS_PASSWORD_FILE", raising=False)
    monkeypatch.delenv("SKEWLESS_REDIS_TLS_CA_FILE", raising=False)
    monkeypatch.delenv("SKEWLESS_REDIS_CONNECT_TIMEOUT_S", raising=False)
    monkeypatch.delenv("SKEWLESS_REDIS_TIMEOUT_S", raising=False)
    assert redis_endpoint("redis://127.0.0.1:6390/2") == {"host": "127.0.0.1", "port": 6390, "db": 2, "username": None,
                                                          "password": None, "tls": False, "tls_ca_file": None,
                                                          "connect_timeout_ms": 3000, "timeout_ms": 5000}
    assert redis_endpoint("redis://u:p%40ss@localhost")["password"] == "p@ss"
    assert redis_endpoint("rediss://x:1")["tls"] is True
    with pytest.raises(ValueError, match="redis\\[s\\]://host:port") as info:
        redis_endpoint("http://u:hunter2@x:1")
    assert "hunter2" not in str(info.value) and "u:***@x:1" in str(info.value)
    with pytest.raises(ValueError, match="database 'x' is not a number") as info:
        redis_endpoint("redis://:hunter2@h:1/x")
    assert "hunter2" not in str(info.value)
    monkeypatch.setenv("SKEWLESS_REDIS_PASSWORD", "from-env")
    assert redis_endpoint("redis://u@h:1/0")["password"] == "from-env"
    assert redis_endpoint("redis://u:in-url@h:1/0")["password"] == "in-url"
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    monkeypatch.delenv("SKEWLESS_REDIS_PASSWORD")
    monkeypatch.setenv("SKEWLESS_REDIS_PASSWORD_FILE", str(secret))
    assert redis_endpoint("redis://h:1/0")["password"] == "from-file"
    # a Redis Cluster: its seed nodes, database 0 only, the same credentials and timeouts
    cluster = redis_endpoint("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    assert cluster == {"cluster": True, "nodes": ["127.0.0.1:7000", "127.0.0.1:7001"], "username": None,
                       "password": "from-file", "tls": False, "tls_ca_file": None, "connect_timeout_ms": 3000,
                       "timeout_ms": 5000}
    assert redis_endpoint("rediss+cluster://u:pw@h:1")["tls"] is True
    with pytest.raises(ValueError, match="redis\\[s\\]\\+cluster://host:port"):
        redis_endpoint("cluster://h:1")


def test_the_sinks_redis_timeouts_come_from_the_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19 item 2: the sink had a fixed 60 s socket timeout; now SKEWLESS_REDIS_[CONNECT_]TIMEOUT_S."""
    monkeypatch.setenv("SKEWLESS_REDIS_CONNECT_TIMEOUT_S", "0.5")
    monkeypatch.setenv("SKEWLESS_REDIS_TIMEOUT_S", "2")
    spec = redis_endpoint("redis://h:1/0")
    assert (spec["connect_timeout_ms"], spec["timeout_ms"]) == (500, 2000)


def _flush_rows(job: Any, users: int) -> tuple[list[list[Any]], list[Any]]:
    """One tile row per user and output, and one progress row."""
    rows = []
    for out in job.outputs:
        for i in range(users):
            rows.append(["T", out.view, out.tile_ms, f"u{i}", *[""] * (job.key_width - 1), out.tile_ms * 7, i + 1,
                         *[None] * job.value_width])
    pad = [""] * (job.key_width - 1)
    progress = ["P", "", 0, "3", *pad, 0, 991, "1704067200123", "1000", "990", "4", "3", "3", "7", "25"]
    return rows, progress + [None] * (job.value_width - 8)


@pytest.mark.parametrize("cluster", [True, False])
def test_the_sink_groups_writes_by_hash_slot_and_writes_progress_after_its_tiles(repo: Repository, cluster: bool) -> None:
    """Issue 21: one EVALSHA carried keys of many entities (CROSSSLOT on a cluster). On a cluster every script call
    now carries keys of one hash slot (CRC16 as Redis computes it); on one Redis many entities share a call (at most
    CAS_KEYS). Every flush writes the tiles, waits for them on a replica, then the progress; a checkpoint ends with
    the progress confirmed too."""
    from redis.crc import key_slot

    (job,) = compile_repository(repo, ["user_order_stats"])
    spec = sink_spec(job, {n: repo.view(n) for n in job.views},
                     SinkConfig("redis://127.0.0.1:6379/0", "proj", job.source, "t.dead-letters", "unused:9092", 0))
    rows, progress = _flush_rows(job, 300)
    calls = trace_writes(spec, EPOCH, [*rows, progress, "TIMER", rows[0], progress, "CHECKPOINT"], cluster=cluster)
    assert [c[0] for c in calls] == ["pipeline", "confirm", "pipeline", "pipeline", "confirm", "pipeline", "confirm"]
    tiles, progress_write = calls[0][1], calls[2][1]
    keys = [k for call in tiles for k in call[2:]]
    assert all(call[1] == "EVALSHA" for call in tiles)
    assert len(keys) == len(rows)  # one (entity, tile size) entry per row
    assert set(keys) == {layout.entity_key("proj", repo.view(o.view), (f"u{i}",))
                                 for o in job.outputs for i in range(300)}
    assert all(len(call) - 2 <= 256 for call in tiles)
    if cluster:
        assert all(key_slot(k.encode()) == call[0] for call in tiles for k in call[2:])
        slots = [call[0] for call in tiles]
        assert len(set(slots)) > 100 and len(slots) == len(set(slots))  # one call per slot (< 256 keys each)
    else:
        assert len(tiles) == -(-len(rows) // 256)  # many entities per call
    assert progress_write == [[key_slot(b"proj:v2:progress:orders") if cluster else 0, "HSET", "proj:v2:progress:orders"]]


def test_a_failed_tile_write_fails_the_flush_and_writes_no_progress(repo: Repository) -> None:
    """A refused script call (or a node lost with unconfirmed writes) is an error of the flush: the progress that
    would cover the tiles is not written, and the task fails (Flink replays from the last checkpoint)."""
    (job,) = compile_repository(repo, ["user_order_stats"])
    spec = sink_spec(job, {n: repo.view(n) for n in job.views},
                     SinkConfig("redis://127.0.0.1:6379/0", "proj", job.source, "t.dead-letters", "unused:9092", 0))
    rows, progress = _flush_rows(job, 20)
    calls = trace_writes(spec, EPOCH, [*rows, progress, "CHECKPOINT"], cluster=True, failing_write=3)
    assert [c[0] for c in calls] == ["pipeline", "error"]
    assert "injected failure" in calls[1][1]
    assert all(call[1] == "EVALSHA" for call in calls[0][1])
