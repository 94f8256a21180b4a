"""Archive pieces without services: table layout, record conversion (agrees with admission), progress,
schema drift, and compaction/expiry on a local Iceberg catalog."""

from __future__ import annotations

import json
import random
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import urlparse

import pytest

from skewless.archive.records import FastValidator, RecordConverter
from skewless.archive.tables import (
    IncompatibleSchemaError,
    dead_letter_schema,
    dead_letter_table_name,
    ensure_tables,
    evolve_raw_table,
    raw_table_schema,
    schema_changes,
)
from skewless.core.admission import MALFORMED, admit
from skewless.core.dsl import EventSource
from skewless.core.schemas import load_schema, validator
from skewless.offline import archive_progress as P

ORDERS = EventSource(name="orders", schema="orders", topic="orders", table="raw.orders", partition_key="user_id")


def _event(i: int, **over: object) -> dict:
    e = {"event_id": f"e{i}", "user_id": f"u{i % 7}", "order_id": f"o{i}", "amount": i * 10, "currency": "EUR",
         "status": "placed", "event_time": f"2024-05-01T12:{i % 60:02d}:00.{i % 1000:03d}Z"}
    e.update(over)
    return e


def test_raw_table_layout() -> None:
    schema = raw_table_schema(ORDERS, load_schema("orders"))
    types = {f.name: str(f.field_type) for f in schema.fields}
    assert types == {
        "event_id": "string", "user_id": "string", "order_id": "string", "amount": "long", "currency": "string",
        "status": "string", "event_time": "timestamptz", "_kafka_partition": "int", "_offset": "long",
        "_kafka_ts": "timestamptz", "_ingested_at": "timestamptz",
    }
    assert schema.find_field("_offset").required and not schema.find_field("amount").required
    dl = {f.name: str(f.field_type) for f in dead_letter_schema().fields}
    assert dl == {"_kafka_partition": "int", "_offset": "long", "_kafka_ts": "timestamptz", "_ingested_at": "timestamptz",
                  "reason": "string", "payload": "binary"}
    assert dead_letter_table_name(ORDERS) == "raw.orders_dead_letters"


MALFORMED_VALUES = [
    b"\xff\xfe",  # not UTF-8
    b"not json",
    b"[1, 2]",
    b'{"event_id": "a", "event_id": "b"}',
    json.dumps(_event(1, amount=-5)).encode(),  # schema: minimum
    json.dumps(_event(2, status="lost")).encode(),  # schema: enum
    json.dumps(_event(3, event_time="2024-05-01T12:00:00Z")).encode(),  # no ms: schema pattern
    json.dumps(_event(4, event_time="2024-02-30T12:00:00.000Z")).encode(),  # no such date
    json.dumps({k: v for k, v in _event(5).items() if k != "user_id"}).encode(),
    json.dumps(_event(6, amount=2**63)).encode(),
    b'{"amount": NaN}',
    json.dumps(_event(7, amount="12")).encode(),
    json.dumps(_event(8, currency="eur")).encode(),
    None,  # a tombstone
]


def test_converter_agrees_with_admission_on_malformed() -> None:
    converter = RecordConverter(ORDERS, load_schema("orders"))
    good = [json.dumps(_event(i)).encode() for i in range(20)]
    good.append(json.dumps({**_event(99), "extra": {"nested": [1]}}).encode())  # unknown fields are allowed
    good.append(json.dumps(_event(98, amount=5.0)).encode())  # JSON Schema: 5.0 is an integer
    values = good + MALFORMED_VALUES
    random.Random(7).shuffle(values)
    records = [{"partition": 0, "offset": i, "timestamp_ms": 1_900_000_000_000, "value": v} for i, v in enumerate(values)]
    result = admit(records, ORDERS, validator("orders"))
    expected = {d.offset for d in result.dead_letters if d.reason == MALFORMED}
    got = {i for i, v in enumerate(values) if converter.convert(v).row is None}
    assert got == expected
    assert len(got) == len(MALFORMED_VALUES)
    for i, v in enumerate(values):
        c = converter.convert(v)
        assert (c.reason is None) == (c.row is not None)
        if c.row is not None:
            row = dict(zip(converter.columns, c.row))
            event = json.loads(v)
            assert row["event_id"] == event["event_id"]
            assert row["amount"] == int(event["amount"]) and isinstance(row["amount"], int)
            assert row["event_time"] == c.event_time_ms * 1000


def test_event_time_fast_path_matches_contract() -> None:
    from skewless.archive.records import timestamp_ok
    from skewless.core.admission import MalformedError, parse_event_time
    from skewless.core.schemas import check_timestamp

    converter = RecordConverter(ORDERS, load_schema("orders"))
    rng = random.Random(3)
    for _ in range(2000):
        y, mo, d = rng.randint(1970, 9999), rng.randint(1, 12), rng.randint(1, 31)
        h, mi, s, ms = rng.randint(0, 25), rng.randint(0, 61), rng.randint(0, 61), rng.randint(0, 999)
        text = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{ms:03d}Z"
        try:
            expected: object = parse_event_time(text)
        except MalformedError:
            expected = MalformedError
        try:
            got: object = converter.event_time_ms(text)
        except MalformedError:
            got = MalformedError
        assert got == expected, text
        assert timestamp_ok(text) == check_timestamp(text), text


def test_fast_validator_is_never_more_lenient() -> None:
    doc = json.loads(Path(load_schema("orders").path).read_text())
    fast = FastValidator(doc)
    assert fast.supported
    full = validator("orders")
    rng = random.Random(11)
    mutations = [("amount", -1), ("amount", 1.5), ("amount", True), ("amount", None), ("status", "x"), ("currency", "EURO"),
                 ("event_id", ""), ("user_id", 5), ("event_time", "2024-13-01T00:00:00.000Z"), ("order_id", None)]
    for i in range(300):
        e = _event(i)
        for field, value in rng.sample(mutations, rng.randint(0, 2)):
            e[field] = value
        if fast.certainly_valid(e):
            assert full(e) is None, e
    nullable_enum = {**doc, "properties": {**doc["properties"], "status": {"type": ["string", "null"], "enum": ["placed"]}}}
    assert not FastValidator(nullable_enum).certainly_valid(_event(1, status=None))  # enum applies to null too
    assert FastValidator(nullable_enum).certainly_valid(_event(1))
    unsupported = {**doc, "properties": {**doc["properties"], "x": {"type": "object"}}}
    assert not FastValidator(unsupported).supported


def test_complete_until_semantics() -> None:
    pp = P.PartitionProgress
    L = 100
    # a lagging partition holds everything back
    assert P.complete_until({0: pp(5, 1000, True), 1: pp(3, 500, False)}, L, None) == 400
    # caught-up idle partitions do not hold back; all caught up -> the max
    assert P.complete_until({0: pp(5, 1000, True), 1: pp(3, 500, True)}, L, None) == 900
    # a lagging partition without events: unknown -> previous stays
    assert P.complete_until({0: pp(5, 1000, True), 1: pp(0, None, False)}, L, 300) == 300
    assert P.complete_until({0: pp(5, 1000, True), 1: pp(0, None, False)}, L, None) is None
    # never decreases
    assert P.complete_until({0: pp(5, 200, False)}, L, 900) == 900
    progress = P.ArchiveProgress("orders", "raw.orders", "running", complete_until_ms=1_714_608_000_000)  # 2024-05-02T00:00Z
    assert progress.is_day_complete(date(2024, 5, 1)) and not progress.is_day_complete(date(2024, 5, 2))


def test_offsets_and_progress_roundtrip() -> None:
    offsets = {0: 10, 2: 7}
    assert P.parse_offsets(P.dump_offsets(offsets)) == offsets
    parts = {0: P.PartitionProgress(10, 1234, True), 2: P.PartitionProgress(7, None, False)}
    doc = P.progress_document("orders", parts, 99, 5)
    assert P.parse_partitions(doc, offsets) == parts
    assert json.loads(doc)["partitions"]["0"]["last_offset"] == 9


@pytest.fixture
def local_catalog(tmp_path: Path):
    from skewless.engines.iceberg_catalog import load_catalog

    return load_catalog(catalog_db=tmp_path / "catalog.db", warehouse=tmp_path / "warehouse")


def _write_schema(folder: Path, extra: dict | None = None, amount_type: str = "integer") -> Path:
    doc = json.loads(load_schema("orders").path.read_text())
    doc["properties"]["amount"]["type"] = amount_type
    doc["properties"].update(extra or {})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orders.schema.json").write_text(json.dumps(doc))
    return folder


def test_schema_drift(local_catalog, tmp_path: Path) -> None:
    import os
    import time

    schemas = _write_schema(tmp_path / "schemas")
    raw, _ = ensure_tables(local_catalog, ORDERS, load_schema("orders", schemas))
    _write_schema(schemas, {"coupon": {"type": ["string", "null"]}})
    os.utime(schemas / "orders.schema.json", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert evolve_raw_table(raw, ORDERS, load_schema("orders", schemas)) == ["coupon"]
    assert str(raw.schema().find_field("coupon").field_type) == "string"
    assert evolve_raw_table(raw, ORDERS, load_schema("orders", schemas)) == []  # idempotent
    _write_schema(schemas, {"coupon": {"type": ["string", "null"]}}, amount_type="number")
    os.utime(schemas / "orders.schema.json", ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    with pytest.raises(IncompatibleSchemaError) as err:
        schema_changes(ORDERS, load_schema("orders", schemas), raw.schema())
    assert "'amount'" in str(err.value) and "long" in str(err.value) and "double" in str(err.value)


def _append(table, rows: list[dict]) -> None:
    import pyarrow as pa

    schema = table.schema().as_arrow()
    data = pa.Table.from_pylist(rows, schema=schema)
    with table.transaction() as tx:
        tx.append(data)
        tx.set_properties({P.OFFSETS_PROP: P.dump_offsets({0: rows[-1]["_offset"] + 1})})


def test_compaction_keeps_rows_offsets_and_expires(local_catalog) -> None:
    from skewless.archive.maintenance import compact

    raw, _ = ensure_tables(local_catalog, ORDERS, load_schema("orders"))
    base_us = 1_714_564_800_000_000  # 2024-05-01T12:00Z
    offset = 0
    for batch in range(6):
        rows = []
        for _ in range(5):
            day = offset % 2  # two days
            rows.append({"event_id": f"e{offset}", "user_id": "u", "order_id": "o", "amount": offset, "currency": "EUR",
                         "status": "placed", "event_time": base_us + day * 86_400_000_000 + offset, "_kafka_partition": 0,
                         "_offset": offset, "_kafka_ts": base_us, "_ingested_at": base_us})
            offset += 1
        _append(raw, rows)
    before = raw.scan().to_arrow().sort_by([("_offset", "ascending")])
    files_before = len(list(raw.scan().plan_files()))
    assert files_before == 12
    results = compact(local_catalog, ORDERS, keep_snapshots=2, min_age_s=0)
    raw.refresh()
    after = raw.scan().to_arrow().sort_by([("_offset", "ascending")])
    assert after.equals(before)
    assert len(list(raw.scan().plan_files())) == 2
    assert results[0].partitions_rewritten == 2 and results[0].rows == 30
    assert len(raw.metadata.snapshots) == 2 and results[0].snapshots_expired == 5
    assert P.parse_offsets(raw.properties[P.OFFSETS_PROP]) == {0: 30}
    assert raw.current_snapshot().summary[P.OFFSETS_PROP] == P.dump_offsets({0: 30})
    # every file the table still references exists; a second run is a no-op
    import os
    from urllib.parse import urlparse

    for task in raw.scan().plan_files():
        assert os.path.exists(urlparse(task.file.file_path).path)
    again = compact(local_catalog, ORDERS, keep_snapshots=2, min_age_s=0)
    assert again[0].partitions_rewritten == 0
    raw.refresh()
    assert raw.scan().to_arrow().sort_by([("_offset", "ascending")]).equals(before)
    # appending after compaction still works (resume path)
    _append(raw, [{**before.slice(0, 1).to_pylist()[0], "_offset": 30, "event_id": "e30"}])
    raw.refresh()
    assert raw.scan().to_arrow().num_rows == 31 and timedelta(0) == timedelta(0)


def test_fast_parse_matches_parse_payload() -> None:
    from skewless.archive.records import fast_parse
    from skewless.core.admission import MalformedError, parse_payload

    values = [v for v in MALFORMED_VALUES if v is not None] + [
        json.dumps(_event(1)).encode(), b'{"a": {"b": 1, "b": 2}}', b'{"a": [1, 2, 99999999999999999999]}',
        b'{"a": 9223372036854775808}', b'{"a": -9223372036854775808}', b'{"a": Infinity}', b'{"a": 1e400}', b'"s"',
        b'{"a": {"x": [1, {"y": NaN}]}}', "caf\u00e9".encode("latin-1"),
    ]
    for v in values:
        outcomes = []
        for f in (fast_parse, parse_payload):
            try:
                outcomes.append(("ok", f(v)))
            except MalformedError as exc:
                outcomes.append(("malformed", str(exc)))
        assert outcomes[0] == outcomes[1], v


def _columnar_vs_per_record(converter: RecordConverter, values: list) -> list:
    """Run the columnar converter; every row it makes must equal the per-record converter's row, and every
    record must be either converted or handed back. Returns the handed-back values."""
    from skewless.archive.columnar import ColumnarConverter

    chunk = ColumnarConverter(converter).convert(values)
    assert sorted(chunk.rows.tolist() + chunk.rest) == list(range(len(values)))
    for j, i in enumerate(chunk.rows.tolist()):
        expected = converter.convert(values[i])
        assert expected.row is not None, (values[i], expected.reason)
        got = tuple(chunk.arrays[c][j].as_py() for c in converter.columns)
        assert got == expected.row and int(chunk.event_ms[j]) == expected.event_time_ms, values[i]
        assert all(type(g) is type(e) for g, e in zip(got, expected.row)), values[i]
    return [values[i] for i in chunk.rest]


def test_columnar_converter_equals_per_record_path() -> None:
    converter = RecordConverter(ORDERS, load_schema("orders"))
    good = [json.dumps(_event(i)).encode() for i in range(300)]
    good.append(json.dumps(_event(7, order_id="caf\u00e9 \U0001f600"), ensure_ascii=False).encode())
    odd = MALFORMED_VALUES + [
        b'{"event_id": "e1", "user_id": "u", "order_id": "o", "amount": 1, "amount": 2, "currency": "EUR", '
        b'"status": "placed", "event_time": "2024-05-01T12:00:00.000Z"}',  # a duplicate key orjson would hide
        json.dumps(_event(9, amount=2**64)).encode(),  # orjson reads it as a float
        json.dumps(_event(10, amount=5.0)).encode(),  # valid, but the per-record path converts it
        json.dumps({**_event(11), "extra": 1}).encode(),  # an undeclared field
        json.dumps(_event(12, order_id='q"uote')).encode(),  # an escape
        json.dumps(_event(13, user_id="")).encode(), json.dumps(_event(14, user_id=3)).encode(),
        json.dumps(_event(15, event_time="2024-05-01T24:00:00.000Z")).encode(),
        json.dumps(_event(16, event_time="1969-12-31T23:59:59.999Z")).encode(),
        json.dumps(_event(17, currency="EUR\n")).encode(), json.dumps(_event(18, status=None)).encode(),
        json.dumps({k: v for k, v in _event(19).items() if k != "amount"}).encode(), b"\xef\xbb\xbf{}",
    ]
    values = good + odd
    random.Random(5).shuffle(values)
    rest = _columnar_vs_per_record(converter, values)
    assert len(rest) == len(odd)  # every good record is certified; the odd ones go record by record


def test_columnar_converter_fuzz_other_types(tmp_path: Path) -> None:
    """A schema with every column type, optional and nullable fields and bounds; random payload texts."""
    doc = {"type": "object", "required": ["id", "ts"], "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": 4}, "ts": {"type": "string", "format": "date-time"},
        "n": {"type": ["integer", "null"], "minimum": -5, "exclusiveMaximum": 2**62},
        "x": {"type": "number", "maximum": 1e300}, "b": {"type": "boolean"},
        "d": {"type": "string", "format": "decimal", "x-skewless-scale": 2},
        "code": {"type": "string", "pattern": "^\\w+$", "enum": ["ab", "c", "d"]},
        "t2": {"type": ["string", "null"], "format": "date-time"},
        "s": {"type": ["string", "null"], "enum": ["a", "b"]}, "s2": {"type": ["string", "null"], "enum": ["a", None]}}}
    (tmp_path / "things.schema.json").write_text(json.dumps(doc))
    source = EventSource(name="things", schema="things", topic="t", table="raw.things", event_time="ts", event_id="id")
    converter = RecordConverter(source, load_schema("things", tmp_path), {"d": 2}, tmp_path)
    pools = {"id": ["a", "abcd", "abcde", "", 7, True, "\u00e9", None],
             "ts": ["2024-05-01T12:00:00.000Z", "2024-02-29T23:59:59.999Z", "2023-02-29T00:00:00.000Z", "2024-05-01T12:00:00Z",
                    "2024-05-01T12:60:00.000Z", 5, None],
             "n": [0, -5, -6, 2**62, 2**62 - 1, 2**63, -(2**63) - 1, 2**64 + 1, None, 1.0, "1", False],
             "x": [1.5, 0, -2, 1e300, 1e301, 2**63, 1e19, True, None, "x"],
             "b": [True, False, 0, None], "d": ["1.25", "1.255", "-3", "x", 3, 1.5, None],
             "code": ["ab", "c", "zz", "ab\n", 1], "t2": ["2024-05-01T00:00:00.001Z", None, "nope"],
             "s": ["a", None, "c"], "s2": [None, "a", "b"]}
    rng = random.Random(17)
    values = []
    for _ in range(3000):
        payload = {k: v[0] if rng.random() < 0.8 else rng.choice(v) for k, v in pools.items() if rng.random() < 0.95}
        text = json.dumps(payload)
        roll = rng.random()
        if roll < 0.05 and payload:
            key = rng.choice(list(payload))
            text = text[:-1] + f', "{key}": {json.dumps(rng.choice(pools[key]))}}}'  # a duplicate key
        elif roll < 0.08:
            text = text.replace(": ", " :  ").replace(", ", " ,\n")  # other whitespace
        elif roll < 0.1:
            text = text[:-1] + ', "other": {"n": [1, 2]}}'
        values.append(text.encode())
    rest = _columnar_vs_per_record(converter, values)
    assert len(values) * 0.05 < len(rest) < len(values) * 0.95


def test_safe_patterns() -> None:
    from skewless.archive.columnar import safe_pattern

    assert safe_pattern("^[A-Z]{3}$") and safe_pattern(r"^[0-9]{4}-[0-9]{2}\.x$") and safe_pattern(r"^\d+(\.\d+)?$")
    assert not safe_pattern(r"\bx") and not safe_pattern(r"(?i)eur") and not safe_pattern(r"[^\d]") and not safe_pattern(r"\D")


def test_expiry_never_deletes_the_metadata_of_a_commit_it_did_not_see(local_catalog) -> None:
    """Before: `archive compact` racing the archive deleted the metadata file of an append committed after the
    compaction's refresh (not in its view of the metadata log) whenever the file's mtime looked older than the
    minimum age (coarse or lagging file-system clocks; always with `--min-age 0`): the catalog then pointed at a
    missing file and the raw table could no longer be loaded (found by tests/faults/test_archive_faults.py)."""
    import os
    import time

    from skewless.archive.maintenance import expire_snapshots

    raw, _ = ensure_tables(local_catalog, ORDERS, load_schema("orders"))
    base_us = 1_714_564_800_000_000
    row = {"event_id": "e", "user_id": "u", "order_id": "o", "amount": 1, "currency": "EUR", "status": "placed",
           "event_time": base_us, "_kafka_partition": 0, "_offset": 0, "_kafka_ts": base_us, "_ingested_at": base_us}
    for offset in range(3):
        _append(raw, [{**row, "_offset": offset, "event_id": f"e{offset}"}])
    archiver = local_catalog.load_table(ORDERS.table)  # the archive process's own view of the table
    compactor = local_catalog.load_table(ORDERS.table)
    refresh = compactor.refresh

    def refresh_then_the_archive_commits() -> object:  # the archive appends right after the compaction looked
        out = refresh()
        archiver.refresh()
        _append(archiver, [{**row, "_offset": 3, "event_id": "e3"}])
        new = urlparse(archiver.metadata_location).path
        hour_ago = time.time() - 3600  # the file system's clock lags (or --min-age 0 and a coarse mtime)
        os.utime(new, (hour_ago, hour_ago))
        compactor.refresh = refresh  # type: ignore[method-assign]
        return out

    compactor.refresh = refresh_then_the_archive_commits  # type: ignore[method-assign]
    expire_snapshots(compactor, ORDERS.table)
    table = local_catalog.load_table(ORDERS.table)  # its current metadata file still exists
    assert table.scan().to_arrow().num_rows == 4
    assert P.parse_offsets(table.properties[P.OFFSETS_PROP]) == {0: 4}
