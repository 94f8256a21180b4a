"""The streaming path end to end: generated orders (skew, disorder, duplicates, late, future, malformed)
-> Kafka -> the compiled Flink job (MiniCluster) -> Redis -> the reference reader, against the oracle over the
admitted events (stream-served windows) and a laws-built batch record + admitted events after the cut-off
(batch-served windows). Dead letters are checked against admission.py record by record."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from skewless.core import admission, laws, layout, oracle
from skewless.core.dsl import Aggregation, Derived
from skewless.core.expr import refs
from skewless.core.repo import load_repository
from skewless.core.routing import BATCH_TAIL_DAYS
from skewless.core.schemas import validator
from skewless.core.timeutil import MS_PER_DAY, MS_PER_MINUTE, td_ms
from skewless.producer import GeneratorConfig, generate
from skewless.producer.kafka_producer import produce_records
from streaming_jobs.savepoint import IncompatibleSavepointError, check_restorable, stop_with_savepoint
from tests.support.reference_reader import AsOfNotAlignedError, read_windowed

pytestmark = pytest.mark.integration

# Event and record times end just before the wall clock: Kafka deletes records older than its retention and
# Redis expires tile keys at (newest tile + retention) in event time. The batch cut-off C is today 00:00
# UTC: the data straddles it when the test runs in the first ~80 minutes of a day (then the batch part is
# non-empty), else the batch record is empty and the batch-served values come from the daily stream tiles.
NOW0 = int(time.time() * 1000)
START = NOW0 - 80 * 60_000
CUTOFF = NOW0 // MS_PER_DAY * MS_PER_DAY
VIEW = "user_order_stats"


@pytest.fixture(scope="module")
def repo() -> Any:
    return load_repository()


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Every record of a topic as admission.py wants them: partition, offset, timestamp_ms, value, key."""
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for m in consumer.consume(1000, timeout=1.0):
                if m.error() is None:
                    out.append({"partition": m.partition(), "offset": m.offset(), "timestamp_ms": m.timestamp()[1],
                                "value": m.value(), "key": m.key()})
    finally:
        consumer.close()
    assert len(out) >= expected, f"read {len(out)} of {expected} records from {topic}"
    return out


def run_bounded_job(bootstrap: str, topic: str, redis_url: str, project: str, checkpoint_dir: Path,
                    applied_from_ms: int = 0) -> float:
    """Compile the view, run it on a MiniCluster until the topic's current end; seconds taken."""
    from skewless.engines.flink_env import create_stream_env
    from streaming_jobs.flink_compiler import compile_repository
    from streaming_jobs.job import JobOptions, add_source_job
    from streaming_jobs.run_view import stream_conf

    (job,) = compile_repository(load_repository(), [VIEW])
    env, t_env = create_stream_env(parallelism=1, checkpoint_dir=checkpoint_dir, checkpoint_interval="2 s",
                                   extra_conf=stream_conf("500 ms", 10_000))
    add_source_job(env, t_env, job, JobOptions(
        bootstrap=bootstrap, redis_url=redis_url, project=project, repo_path="feature_defs", topic=topic,
        bounded=True, ns=f"sk_{uuid.uuid4().hex[:8]}", applied_from_ms=applied_from_ms, flush_ms=100))
    t0 = time.monotonic()
    env.execute(f"test-stream-{project}")
    return time.monotonic() - t0


def write_batch_record(redis_client: Any, project: str, view: Any, offline: list[dict[str, Any]], cutoff: int,
                       epoch: str) -> None:
    """What a batch run for day C-1 would write, built with the laws over the offline set."""
    entities = {e["user_id"] for e in offline}
    windows = layout.batch_windows(view)
    for user in entities:
        mine = [e for e in offline if e["user_id"] == user]
        parts: dict[str, list] = {}
        for field, aggs in windows.items():
            width = None if field == layout.LIFETIME_FIELD else int(field[2:])
            ranges = [(None, cutoff)] if width is None else [
                (cutoff - width + BATCH_TAIL_DAYS * MS_PER_DAY, cutoff),
                (cutoff - width, cutoff - width + MS_PER_DAY),
                (cutoff - width + MS_PER_DAY, cutoff - width + 2 * MS_PER_DAY)]
            parts[field] = [[_aggregate(a, mine, lo, hi) for a in aggs] for lo, hi in ranges]
        fields = layout.encode_batch_record(view, cutoff, "test-run", epoch, parts)
        keys, argv = layout.batch_write_args(layout.entity_key(project, view, (user,)), fields, 1)
        redis_client.eval(layout.BATCH_WRITE_LUA, len(keys), *keys, *argv)


def _aggregate(a: Aggregation, events: list[dict[str, Any]], lo: int | None, hi: int) -> Any:
    law = laws.law(a.agg)
    chosen = [e for e in events if (lo is None or e["event_time"] >= lo) and e["event_time"] < hi]
    return law.aggregate((laws.contribution(a, e), (e["event_time"], e["_kafka_partition"], e["_offset"])) for e in chosen)


def expected_row(view: Any, admitted: list, offline: list, user: str, T: int, now_read: bool) -> dict[str, Any]:
    """The contract: stream-served windows over admitted events; batch-served ones over the offline set
    before the cut-off plus the admitted events from it on."""
    combined = [e for e in offline if e["event_time"] < CUTOFF] + [e for e in admitted if e["event_time"] >= CUTOFF]
    stream = oracle.feature_row(view, admitted, (user,), T, now_read=now_read)
    batch = oracle.feature_row(view, combined, (user,), T, now_read=now_read)
    out = {}
    for f in view.features:
        served_by_stream = isinstance(f, Aggregation) and f.window.width is not None and td_ms(f.window.width) <= MS_PER_DAY
        out[f.name] = stream[f.name] if served_by_stream else batch[f.name]
    return out


def allowed_incomplete(view: Any, admitted: list, user: str, T: int) -> set[str]:
    """Features the reader may answer ``incomplete`` for: batch-served ones before the cut-off (the batch
    record's cut-off is after T), stream-served ones whose window starts before what Redis retains."""
    newest = {}
    for g in layout.tile_groups(view):
        starts = [e["event_time"] // g.tile_ms * g.tile_ms for e in admitted if e["user_id"] == user]
        newest[g.tile_ms] = max(starts, default=T // g.tile_ms * g.tile_ms)
    out = set()
    for f in view.features:
        if not isinstance(f, Aggregation):
            continue
        width, tile = layout.width_ms_of(f), layout.tile_ms_of(f)
        group = next(g for g in layout.tile_groups(view) if g.tile_ms == tile)
        if width is not None and width <= MS_PER_DAY:
            if (T - width) // tile * tile < newest[tile] - group.retention_ms:
                out.add(f.name)
        elif T < CUTOFF:
            out.add(f.name)
    out |= {f.name for f in view.features if isinstance(f, Derived) and set(refs(f.expr)) & out}
    return out


def test_stream_job_equals_oracle_and_dead_letters(
    flink_stream_env: Any, kafka_bootstrap: str, kafka_topic: Callable[..., str], redis_url: str, redis_client: Any,
    repo: Any, tmp_path: Path,
) -> None:
    from streaming_jobs.flink_compiler import dead_letter_topic

    view = repo.view(VIEW)
    source = view.source
    topic = kafka_topic(partitions=3, prefix="orders")
    config = GeneratorConfig(count=1500, rate=0.32, seed=11, partitions=3, users=40, start_ms=START,
                             allowed_lateness_ms=td_ms(source.allowed_lateness), clock_skew_ms=td_ms(source.clock_skew_tolerance))
    records, manifest = generate(config)
    produce_records(kafka_bootstrap, topic, records)
    raw = read_topic(kafka_bootstrap, topic, len(records))
    result = admission.admit(raw, source, validator(source.schema), key_fields=view.entity.key_names)
    admitted, offline = list(result.admitted), list(result.offline)
    assert result.counts()["late"] > 10 and result.counts()["malformed"] > 10 and result.counts()["duplicate"] > 10

    project = f"t{uuid.uuid4().hex[:8]}"
    seconds = run_bounded_job(kafka_bootstrap, topic, redis_url, project, tmp_path / "ckpt")
    print(f"\nstreaming job over {len(records)} records took {seconds:.1f} s")

    epoch = redis_client.get(layout.epoch_key(project)).decode()
    write_batch_record(redis_client, project, view, offline, CUTOFF, epoch)

    users = sorted({e["user_id"] for e in admitted})
    end = max(e["event_time"] for e in admitted)
    checks = [(None, START + 30 * MS_PER_MINUTE + 1), (None, START + 61 * MS_PER_MINUTE + 123), (None, end + 1),
              (CUTOFF, CUTOFF), (CUTOFF + MS_PER_DAY, CUTOFF + MS_PER_DAY + 5)]
    checked = 0
    for as_of, now_ms in checks:
        got = read_windowed(redis_client, project, [VIEW], users, as_of=as_of, repo=repo, now_ms=now_ms)
        T = now_ms if as_of is None else as_of
        for i, user in enumerate(users):
            want = expected_row(view, admitted, offline, user, T, now_read=as_of is None)
            ev = got.entities[VIEW][i]
            allowed = allowed_incomplete(view, admitted, user, T)
            assert all(ev.status(k) == "present" for k in want if k not in allowed), ev.features
            want = {k: v for k, v in want.items() if ev.status(k) != "incomplete"}
            assert {k: ev.value(k) for k in want} == want, f"user {user} at as_of={as_of} now={now_ms}: {ev.features}"
            checked += len(want)
    assert checked > 200
    with pytest.raises(AsOfNotAlignedError, match="training-set path"):
        read_windowed(redis_client, project, [VIEW], users[:1], as_of=CUTOFF + 5 * MS_PER_MINUTE, repo=repo)
    # progress: per partition last offset and max admitted event time
    progress = got.progress[source.name]
    assert sorted(progress) == [0, 1, 2]
    for p, info in progress.items():
        assert info["offset"] == max(r["offset"] for r in raw if r["partition"] == p)

    # dead letters: exactly the records admission.py dead-letters, with the same reason
    dead = read_topic(kafka_bootstrap, dead_letter_topic(topic), len(result.dead_letters))
    got_dead = {(d["partition"], d["offset"]): d["reason"] for d in (json.loads(m["value"]) for m in dead)}
    want_dead = {(d.partition, d.offset): d.reason for d in result.dead_letters}
    assert got_dead == want_dead
    positions = {(r["partition"], r["offset"]): r for r in raw}
    seq_of = {rec.value: rec.seq for rec in records if rec.kind != "duplicate"}
    for kind in ("late", "malformed", "future"):
        injected = set(manifest.injected[kind])
        found = {seq_of.get(positions[k]["value"]) for k, reason in got_dead.items() if reason == kind}
        assert injected <= found, f"{kind}: injected {sorted(injected - found)[:5]} not dead-lettered as {kind}"
    assert sum(info["malformed"] for info in progress.values()) == result.counts()["malformed"]
    assert sum(info["late"] for info in progress.values()) == result.counts()["late"]
    assert {p: info["duplicate"] for p, info in progress.items()} == duplicates_per_partition(result, progress)


def duplicates_per_partition(result: admission.AdmissionResult, partitions: Any) -> dict[int, int]:
    """admission.py's duplicate count of each partition."""
    return {p: sum(1 for e in result.duplicates if e["_kafka_partition"] == p) for p in partitions}


def assert_last_hour_equals_oracle(redis_client: Any, project: str, repo: Any, admitted: list[dict[str, Any]]) -> list[str]:
    """Every user's stream-served ``user_orders_last_1h`` read just after the last admitted event equals the
    oracle over the admitted events; the users read."""
    view = repo.view(VIEW)
    users = sorted({e["user_id"] for e in admitted})
    end = max(e["event_time"] for e in admitted) + 1
    got = read_windowed(redis_client, project, [f"{VIEW}:user_orders_last_1h"], users, repo=repo, now_ms=end)
    for i, user in enumerate(users):
        want = oracle.feature_value(view, "user_orders_last_1h", admitted, (user,), end, now_read=True)
        assert got.entities[VIEW][i].features["user_orders_last_1h"] == (want, "present"), user
    return users


def _latest_checkpoint(root: Path, settled: bool = False) -> Path | None:
    """The newest checkpoint with its metadata; ``settled``: the newest one that a later checkpoint followed
    (certainly complete: a checkpoint being finalised when the job is cancelled may still be discarded)."""
    done = sorted((p.parent for p in root.glob("*/chk-*/_metadata")), key=lambda p: int(p.name.split("-")[1]))
    if settled:
        done = done[:-1]
    return done[-1] if done else None


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, client: Any = None,
          describe: Callable[[], str] | None = None) -> None:
    """Poll ``predicate``; fail early if the Flink job (``client``) has ended, and say where things stood."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if client is not None:
            status = str(client.get_job_status().result())
            if any(s in status for s in ("FAILED", "CANCELED", "FINISHED")):
                try:
                    client.get_job_execution_result().result()
                    cause = "no error"
                except Exception as exc:  # the job's own failure, reported as the test's
                    cause = repr(exc)[:4000]
                raise AssertionError(f"the job ended ({status}) while waiting for {what}: {cause}")
        time.sleep(0.5)
    state = f"; {describe()}" if describe is not None else ""
    job = f"; job {client.get_job_status().result()}" if client is not None else ""
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{job}{state}")


@pytest.mark.parametrize("stop", ["cancel", "savepoint"])
def test_recovery_from_checkpoint_keeps_values_exact(
    flink_stream_env: Any, kafka_bootstrap: str, kafka_topic: Callable[..., str], redis_url: str, redis_client: Any,
    repo: Any, tmp_path: Path, stop: str,
) -> None:
    """Cancel the running job after a checkpoint while more records arrive and restore from the retained
    checkpoint, or stop it with a savepoint (no drain: the tile and de-duplication state stays) and restore from
    that; finish the stream: the online values still equal the oracle (no loss, no double count)."""
    from skewless.engines.flink_env import create_stream_env
    from streaming_jobs.flink_compiler import compile_repository
    from streaming_jobs.job import JobOptions, add_source_job
    from streaming_jobs.run_view import stream_conf

    view = repo.view(VIEW)
    source = view.source
    topic = kafka_topic(partitions=3, prefix="orders-rec")
    now = int(time.time() * 1000)
    records, _ = generate(GeneratorConfig(count=1800, rate=0.5, seed=23, partitions=3, users=30, start_ms=now - 61 * MS_PER_MINUTE,
                                          allowed_lateness_ms=td_ms(source.allowed_lateness),
                                          clock_skew_ms=td_ms(source.clock_skew_tolerance)))
    phases = [records[:700], records[700:1200], records[1200:]]
    project, ns, ckpt = f"r{uuid.uuid4().hex[:8]}", f"sk_{uuid.uuid4().hex[:8]}", tmp_path / "ckpt"
    (job,) = compile_repository(repo, [VIEW])

    def start(savepoint: Path | None) -> Any:
        conf = stream_conf("300 ms", 10_000)
        conf["execution.checkpointing.num-retained"] = "3"
        if savepoint is not None:
            conf["execution.savepoint.path"] = savepoint.resolve().as_uri()
        env, t_env = create_stream_env(parallelism=1, checkpoint_dir=ckpt, checkpoint_interval="1 s", extra_conf=conf)
        add_source_job(env, t_env, job, JobOptions(bootstrap=kafka_bootstrap, redis_url=redis_url, project=project,
                                                   repo_path="feature_defs", topic=topic, ns=ns, applied_from_ms=0,
                                                   group=f"g-{project}", flush_ms=100))
        return env.execute_async(f"test-recovery-{project}")

    def consumed() -> int:
        raw = redis_client.hgetall(layout.progress_key(project, source.name))
        return sum(json.loads(v)["records"] for k, v in raw.items() if k.startswith(b"p:"))

    def where() -> str:
        progress = {k.decode(): json.loads(v) for k, v in redis_client.hgetall(layout.progress_key(project, source.name)).items()}
        produced = {p: sum(1 for r in records if r.partition == p) for p in range(3)}
        checkpoints = sorted(str(c.relative_to(ckpt)) for c in ckpt.glob("*/chk-*/_metadata"))
        return f"produced per partition {produced}, progress {progress}, checkpoints {checkpoints}, restored from {restore_from}"

    produce_records(kafka_bootstrap, topic, phases[0])
    client = start(None)
    restore_from: Path | None = None
    wait_for(lambda: consumed() >= len(phases[0]), 180, "phase 1 in Redis", client, where)
    first = _latest_checkpoint(ckpt, settled=True)
    wait_for(lambda: _latest_checkpoint(ckpt, settled=True) not in (None, first), 60, "a checkpoint after phase 1", client)
    produce_records(kafka_bootstrap, topic, phases[1])
    time.sleep(0.5)  # some of phase 2 is applied after the checkpoint: replayed after the restore
    if stop == "savepoint":
        restore_from = Path(stop_with_savepoint(client, (tmp_path / "savepoints").resolve().as_uri())
                            .removeprefix("file:"))
    else:
        client.cancel().result()
        restore_from = _latest_checkpoint(ckpt, settled=True)
    assert restore_from is not None
    check_restorable(str(restore_from), [source.name])  # it holds state for our operators' uids (else it raises)
    produce_records(kafka_bootstrap, topic, phases[2])
    client = start(restore_from)
    try:
        wait_for(lambda: consumed() >= len(records), 240, "every record after the restore", client, where)
        time.sleep(1.5)  # the last flush timer
    finally:
        client.cancel().result()

    raw = read_topic(kafka_bootstrap, topic, len(records))
    result = admission.admit(raw, source, validator(source.schema), key_fields=view.entity.key_names)
    admitted = list(result.admitted)
    users = assert_last_hour_equals_oracle(redis_client, project, repo, admitted)
    progress = {int(k.decode()[2:]): json.loads(v) for k, v in redis_client.hgetall(layout.progress_key(project, source.name)).items()
                if k.startswith(b"p:")}
    assert {p: info["duplicate"] for p, info in progress.items()} == duplicates_per_partition(result, progress)  # none twice
    daily = layout.tile_groups(view)[-1]
    for user in users:  # every daily tile's version = the number of admitted events in it (nothing counted twice)
        stored = layout.read_entity_hash(redis_client.hgetall(layout.entity_key(project, view, (user,))))
        assert stored.tiles_lost(daily.tile_ms) == (False, -1)  # the sink's manifest counts every tile it keeps
        for start_ms, value in stored.tiles.get(daily.tile_ms, {}).items():
            version, _, _ = layout.decode_tile_vector(value, daily.aggs)
            n = sum(1 for e in admitted if e["user_id"] == user and e["event_time"] // daily.tile_ms * daily.tile_ms == int(start_ms))
            assert version == n, (user, start_ms)


def test_a_checkpoint_of_another_job_graph_is_refused_in_one_line(tmp_path: Path) -> None:
    """A retained checkpoint of a job graph without our Java operators (here: a SQL GROUP BY, as before issue 23)
    is refused before any restore: one line naming the missing operators and the fix (start fresh, backfill)."""
    from skewless.engines.flink_env import create_stream_env

    ckpt = tmp_path / "ckpt"
    env, t_env = create_stream_env(parallelism=1, checkpoint_dir=ckpt, checkpoint_interval="500 ms", extra_conf={
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": "3"})  # a settled checkpoint needs a later one kept next to it
    t_env.execute_sql("CREATE TEMPORARY TABLE gen (k INT, v BIGINT) WITH ('connector' = 'datagen', "
                      "'rows-per-second' = '50', 'fields.k.min' = '0', 'fields.k.max' = '9')")
    t_env.execute_sql("CREATE TEMPORARY TABLE sink (k INT, s BIGINT) WITH ('connector' = 'blackhole')")
    statements = t_env.create_statement_set()
    statements.add_insert_sql("INSERT INTO sink SELECT k, SUM(v) FROM gen GROUP BY k")
    statements.attach_as_datastream()  # run by the stream environment, with its checkpointing (as our jobs)
    client = env.execute_async(f"test-old-graph-{uuid.uuid4().hex[:6]}")
    try:
        wait_for(lambda: _latest_checkpoint(ckpt, settled=True) is not None, 120, "a checkpoint", client)
    finally:
        client.cancel().result()
    old = _latest_checkpoint(ckpt, settled=True)
    with pytest.raises(IncompatibleSavepointError) as err:
        check_restorable(old.as_uri(), ["orders"], VIEW)
    message = str(err.value)
    assert "\n" not in message and "deduplicate-orders, tiles-orders" in message, message
    assert f"skewless submit {VIEW} --starting-offsets earliest" in message and "backfill" in message


# --- skewless_admit (the job's Java function) against admission.py, payload by payload ---------------------

_BASE = {"event_id": "e-1", "user_id": "u-1", "order_id": "o-1", "amount": 1250, "currency": "EUR", "status": "placed",
         "event_time": "2024-05-01T12:30:00.123Z"}


def _with(**changes: Any) -> bytes:
    event = {**_BASE, **changes}
    return json.dumps({k: v for k, v in event.items() if v is not _DROP}).encode()


_DROP = object()
_CANON = json.dumps(_BASE, separators=(",", ":"))
ADMIT_CASES: list[bytes | None] = [
    _CANON.encode(), json.dumps(_BASE).encode(), json.dumps(_BASE, indent=2).encode(),
    b" \t\r\n" + _CANON.encode() + b"\n ", b"\x0b" + _CANON.encode(), "\u00a0".encode() + _CANON.encode(),
    b"\xef\xbb\xbf" + _CANON.encode(), b"\xff\xfe" + _CANON.encode(), _CANON.encode().replace(b"u-1", b"u-\xc0\xaf"),
    _CANON.encode().replace(b"u-1", b"u-\xed\xa0\x80"), b"", None, b"null", b"[]", b'"x"', b"42",
    _CANON.encode()[:-1], _CANON.encode()[:-1] + b",}", _CANON.encode() + b" x", _CANON.encode().replace(b'"', b"'"),
    _with(extra={"nested": [1, 2, {"a": None}]}), _with(extra=[]), _with(extra="a\\u0000b"),
    _CANON.encode()[:-1] + b',"user_id":"u-2"}', _CANON.encode()[:-1] + b',"x":{"a":1,"a":2}}',
    _CANON.encode()[:-1] + b',"user\\u005fid":"u-2"}', _CANON.encode()[:-1] + b',"x":{"a":1},"y":{"a":1}}',
    _with(amount=2**63 - 1), _with(amount=2**63), _with(extra=-(2**63)), _with(extra=[-(2**63) - 1]),
    _CANON.encode().replace(b"1250", b"01250"), _CANON.encode().replace(b"1250", b"1250."),
    _CANON.encode().replace(b"1250", b"NaN"), _CANON.encode().replace(b"1250", b"-Infinity"),
    _CANON.encode().replace(b"1250", b"1e2"), _CANON.encode().replace(b"1250", b"1E400"),
    _CANON.encode().replace(b"1250", b"-0"), _CANON.encode().replace(b"1250", b"0.0"),
    _CANON.encode().replace(b"1250", b"-1"), _CANON.encode().replace(b"1250", b"1.5"), _with(amount="100"),
    _with(amount=True), _with(amount=None), _with(currency="eur"), _with(currency="EURO"), _with(currency="EUR\n"),
    _with(currency="EUR\r"), _with(status="shipped"), _with(status=1), _with(status="Placed"),
    *(_with(**{name: _DROP}) for name in _BASE), *(_with(**{name: None}) for name in _BASE),
    _with(event_time="2024-02-30T10:00:00.000Z"), _with(event_time="2024-02-29T10:00:00.000Z"),
    _with(event_time="2023-02-29T10:00:00.000Z"), _with(event_time="2024-01-01T00:00:00Z"),
    _with(event_time="2024-01-01T00:00:00.000+01:00"), _with(event_time=1714566600123),
    _with(event_time="0000-01-01T00:00:00.000Z"), _with(event_time="1969-12-31T23:59:59.999Z"),
    _with(event_time="1970-01-01T00:00:00.000Z"), _with(event_time="9999-12-31T23:59:59.999Z"),
    _with(event_time="2024-01-01T23:59:60.000Z"), _with(event_time="2024-01-01T24:00:00.000Z"),
    _with(event_time="2024-13-01T00:00:00.000Z"), _with(event_time="2024-01-01T00:00:00.000Z\n"),
    _with(event_time="2024-01-01T00:00:00.000z"), _with(event_time=" 2024-01-01T00:00:00.000Z"),
    _with(event_id=""), _with(event_id=5), _with(user_id=""), _with(user_id=7), _with(order_id=""),
    _with(user_id="u\u00e9"), _CANON.encode().replace(b"u-1", b"u\\u00e9"), _with(user_id="\U0001F600"),
    _CANON.encode().replace(b"u-1", b"\\ud83d\\ude00"), _CANON.encode().replace(b"o-1", b"\\ud800"),
    _CANON.encode().replace(b"u-1", b"u\x01"), _CANON.encode().replace(b"u-1", b"u\\u0001"),
    _CANON.encode().replace(b"u-1", b'u\\"x'), _CANON.encode().replace(b"u-1", b"u\\x"),
    _CANON.encode().replace(b"u-1", b"u\\u12"), _CANON.encode().replace(b"u-1", b"u\\/\\b\\f\\n\\r\\t"),
]


def _typed_like_java(value: Any, value_type: str) -> str | None:
    """What the job reads from an admitted payload's field (the compiler's typed columns)."""
    if value_type == "string":
        return value if isinstance(value, str) else None
    if value_type == "int64":
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else None
    if value_type == "bool":
        return str(value).lower() if isinstance(value, bool) else None
    raise AssertionError(value_type)


def test_admit_function_classifies_like_admission_py(repo: Any) -> None:
    """skewless_admit (Java, in a plain JVM) and admission.admit + the schema validator agree on every case:
    malformed or not, and for the others the event time, typed event id and the typed fields the job reads."""
    from streaming_jobs.flink_compiler import compile_repository
    from streaming_jobs.udf import classify

    (job,) = compile_repository(repo, [VIEW])
    view = repo.view(VIEW)
    source = view.source
    validate = validator(source.schema)
    got = classify(job.admission_spec, ADMIT_CASES)
    assert len(got) == len(ADMIT_CASES)
    malformed = 0
    for value, java in zip(ADMIT_CASES, got):
        record = {"partition": 0, "offset": 0, "timestamp_ms": admission.MAX_EVENT_MS, "value": value}
        result = admission.admit([record], source, validate, key_fields=view.entity.key_names)
        if result.dead_letters:
            assert result.dead_letters[0].reason == admission.MALFORMED and java[0] is not None, (value, java)
            malformed += 1
            continue
        (event,) = result.admitted
        assert java[0] is None, (value, java)
        event_id = event[source.event_id]
        want = [None, str(event[source.event_time]), ("s" if isinstance(event_id, str) else "i") + str(event_id),
                *(_typed_like_java(event.get(name), vt) for name, vt in job.typed_fields)]
        assert java == want, value
    assert 20 < malformed < len(ADMIT_CASES) - 10


_PAYMENTS_SCHEMA = {
    "type": "object", "required": ["event_id", "user_id", "price", "amount", "event_time"],
    "properties": {
        "event_id": {"type": "string"}, "user_id": {"type": "string"},
        "price": {"type": "string", "format": "decimal", "x-skewless-scale": 3},
        "amount": {"type": "integer"},
        "event_time": {"type": "string", "format": "date-time"},
    },
}
_PAYMENTS_DEFS = '''
from datetime import timedelta
from skewless import Agg, Aggregation, Derived, Entity, EventSource, FeatureView, Ref, Window

payer = Entity("payer", {"user_id": "string"})
payments = EventSource("payments", "payments", "raw.payments", topic="payments", partition_key="user_id",
                       allowed_lateness=timedelta(minutes=10))
payment_stats = FeatureView("payment_stats", payer, payments, [
    Aggregation("price_1h", Agg.SUM, "price", Window.hours(1)),
    Aggregation("avg_price_1h", Agg.AVG, "price", Window.hours(1)),
    Aggregation("price_1d", Agg.SUM, "price", Window.days(1)),
    Aggregation("amount_1h", Agg.SUM, "amount", Window.hours(1)),
    Aggregation("avg_amount_1d", Agg.AVG, "amount", Window.days(1)),
    Aggregation("n_1h", Agg.COUNT, None, Window.hours(1)),
    Derived("mean_amount_1h", Ref("amount_1h") / Ref("n_1h")),
])
'''


def test_decimal_and_int64_max_sums_in_the_stream_equal_the_oracle(
    flink_stream_env: Any, kafka_bootstrap: str, kafka_topic: Callable[..., str], redis_url: str, redis_client: Any,
    tmp_path: Path,
) -> None:
    """Issue 23: SUM/AVG of a decimal field compiled in the stream (UnsupportedFeatureError before), equal to the
    oracle (the batch's decimal(38, s) sums: docs/semantics.md §4). Issue 19 item 7: int64-max amounts, whose tile
    sums leave int64 (the job failed on them), read null, incomplete where the window's sum does; the rest present."""
    import random
    from decimal import Decimal

    from skewless.engines.flink_env import create_stream_env
    from skewless.producer.generator import CLEAN, GeneratedRecord, iso_ms, partition_for
    from skewless.serving import OnlineStore
    from streaming_jobs.flink_compiler import compile_repository
    from streaming_jobs.job import JobOptions, add_source_job
    from streaming_jobs.run_view import stream_conf

    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "payments.schema.json").write_text(json.dumps(_PAYMENTS_SCHEMA))
    (tmp_path / "paydefs").mkdir()
    (tmp_path / "paydefs" / "payment_defs.py").write_text(_PAYMENTS_DEFS)
    repo = load_repository(tmp_path / "paydefs")
    view = repo.view("payment_stats")
    topic = kafka_topic(partitions=2, prefix="payments")
    rng = random.Random(5)
    records = []
    users = [f"p{i}" for i in range(6)]
    for seq in range(400):
        user = rng.choice(users)
        ts = START + seq * 9_000 + rng.randrange(3_000)
        price = rng.choice(["0.1", "12.5", "-3.125", "999999999999.999", "0", "7", str(rng.randrange(10**6)) + ".25"])
        amount = 2**63 - 1 if user in ("p0", "p1") and rng.random() < 0.3 else rng.randrange(-10**6, 10**6)
        payload = {"event_id": f"e{seq}", "user_id": user, "price": price, "amount": amount, "event_time": iso_ms(ts)}
        key = user.encode()
        records.append(GeneratedRecord(seq, CLEAN, key, json.dumps(payload).encode(), ts, partition_for(key, 2), f"e{seq}"))
    produce_records(kafka_bootstrap, topic, records)
    raw = read_topic(kafka_bootstrap, topic, len(records))
    result = admission.admit(raw, view.source, validator("payments", tmp_path / "schemas"),
                             key_fields=view.entity.key_names, decimal_fields=("price",))
    admitted = list(result.admitted)
    assert len(admitted) == len(records)

    (job,) = compile_repository(repo, ["payment_stats"])
    project = f"t{uuid.uuid4().hex[:8]}"
    env, t_env = create_stream_env(parallelism=1, checkpoint_dir=tmp_path / "ckpt", checkpoint_interval="2 s",
                                   extra_conf=stream_conf("500 ms", 10_000))
    add_source_job(env, t_env, job, JobOptions(
        bootstrap=kafka_bootstrap, redis_url=redis_url, project=project, repo_path=str(tmp_path / "paydefs"), topic=topic,
        bounded=True, ns=f"sk_{uuid.uuid4().hex[:8]}", applied_from_ms=0, flush_ms=100))
    env.execute(f"test-decimal-{project}")

    store = OnlineStore(repo, redis_client, project)
    end = max(e["event_time"] for e in admitted)
    seen: set[tuple[str, str]] = set()
    for now_ms in (START + 30 * MS_PER_MINUTE + 1, START + 47 * MS_PER_MINUTE, end + 1):
        got = store.get_online_features([{"user_id": u} for u in users], ["payment_stats"], now_ms=now_ms)
        for i, user in enumerate(users):
            want = oracle.feature_values(view, admitted, (user,), now_ms, now_read=True)
            for name, (value, status) in want.items():
                assert (got.values[name][i], got.statuses[name][i]) == (value, status), (user, name, now_ms)
                seen.add((name, status))
                if name == "price_1h" and value is not None:
                    assert isinstance(got.values[name][i], Decimal)
    assert {("price_1h", "present"), ("avg_price_1h", "present"), ("amount_1h", "incomplete"),
            ("mean_amount_1h", "incomplete"), ("amount_1h", "present")} <= seen
