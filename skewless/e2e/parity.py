"""The consistency proof (`skewless parity`, docs/parity.md): a seeded random stream through the real system,
every path compared with the contract's oracle.

1. generate (skewed users, disorder, duplicates, late, future, malformed, quiet periods; history over
   ``days`` ending now) and produce into a private Kafka topic;
2. the compiled Flink job (bounded) -> Redis under a private key prefix; the raw archive -> Iceberg;
   snapshot rows -> the CRM table; backfill (Spark, archive gate on) + materialization;
3. compare for sampled entities and every feature of the example repository:
   - ``online-now``: `OnlineStore.get_online_features` at "now" after the stream drained (and 7 / 61 minutes later),
   - ``online-asof``: `OnlineStore.get_online_features` at the tile-aligned instants the store answers (day edges),
   - ``training-duckdb`` / ``training-spark``: `get_historical_features` at instants on events, tile
     edges, day edges and TTL edges,
   against the oracle over the offline set (offline paths) and over the admitted events (online; batch
   windows: offline before the cut-off + admitted after it, docs/semantics.md §9-10);
   training paths after more records were archived (a raw snapshot newer than the backfill's, never
   streamed): new orders after the cut-off, late events for days the backfill covered, a copy of an
   archived event; the training sets must count them (all but the copy) like the oracle;
4. the dead-letter sinks: the Kafka dead-letter topic and the archive's dead-letter table hold exactly the
   injected malformed / late / future records.

The generated records carry int64-max amounts for two users (:func:`with_int64_max_amounts`): their
``customer_ltv_365d`` windows leave int64, which every path answers as null, ``incomplete`` (docs/semantics.md §4).

A mismatch is shrunk to the entity, the instant and the events in its window (training rows are re-run
alone to show the case reproduces by itself).
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterable, Mapping, Sequence

from skewless.core import layout, oracle
from skewless.core.admission import DEAD_LETTER_REASONS, AdmissionResult
from skewless.core.dsl import Aggregation, Derived, FeatureView, SnapshotView
from skewless.core.expr import refs
from skewless.core.timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE, iso_ms, td_ms
from skewless.e2e.pipeline import (
    Log,
    Phases,
    Targets,
    archive_drain,
    backfill,
    batch_day,
    create_topic,
    day_of,
    delete_project_keys,
    materialize,
    read_topic,
    run_stream_bounded,
    stream_progress,
    write_snapshot_rows,
)
from skewless.serving.online import OnlineStore

ONLINE_NOW, ONLINE_ASOF, TRAIN_DUCKDB, TRAIN_SPARK = "online-now", "online-asof", "training-duckdb", "training-spark"
PATHS = (ONLINE_NOW, ONLINE_ASOF, TRAIN_DUCKDB, TRAIN_SPARK)
UNKNOWN_USER = "u-never-seen"
FEATURE_VIEW, SNAPSHOT_VIEW = "user_order_stats", "customer_profile"


@dataclass(frozen=True)
class ParityConfig:
    """What to generate and how much to compare."""

    seed: int = 0
    events: int = 3000
    entities: int = 60
    days: float = 3.0  # history span ending now (> 2 days: batch and stream parts both matter)
    partitions: int = 3
    sample: int = 30  # entities compared (plus one never seen)
    instants: int = 12  # training instants per entity (plus the day edges and "now")
    keep: bool = False  # keep the Redis keys (the topic and catalog always stay for inspection)
    # records/s produced while the stream runs (fault tests: the job writes while records still arrive);
    # None: every record is produced before the stream starts
    produce_rate: float | None = None
    topology: str = "single"  # what the run is on (the report's rerun line)


@dataclass
class RunContext:
    """What a fault hook may use: where the run's data lives and how to re-run its steps."""

    targets: Targets
    repo: Any
    topic: str
    project: str
    records: int
    log: Log
    day: Any = None
    produced: int = 0  # records sent so far (grows during the stream with ``produce_rate``)
    job_id: str | None = None  # the streaming job's id on the session cluster
    sample: list[str] = field(default_factory=list)  # the entities compared (after the stream)


class Faults:
    """Fault-injection hooks of a parity run (tests/faults/); the default injects nothing."""

    def during_stream(self, ctx: RunContext) -> None:
        """Runs in a thread while the bounded streaming job runs."""

    def archive(self, ctx: RunContext) -> bool:
        """Archive the topic itself (True) or let the run do it (False)."""
        return False

    def backfill(self, ctx: RunContext, run: Callable[[], Any]) -> Any:
        """Run the backfill (``run()``, returns its report); a fault may run it twice at once."""
        return run()

    def before_compare(self, ctx: RunContext) -> None:
        """After backfill and materialization, before any value is compared."""


class TopologyProbe:
    """Checks that the run used the topology it claims (skewless/e2e/parity_cluster.py); the default checks
    nothing (the single-node run)."""

    def stream_done(self, ctx: RunContext) -> list[Check]:
        """After the streaming job finished (``ctx.job_id``)."""
        return []

    def backfill(self, ctx: RunContext, run: Callable[[], Any]) -> tuple[Any, list[Check]]:
        """Run the backfill (``run()``) and check where it ran."""
        return run(), []

    def run_done(self, ctx: RunContext, catalog: Any) -> list[Check]:
        """After every comparison, before the run's keys are removed (``ctx.sample``: the compared entities)."""
        return []


@dataclass
class Mismatch:
    path: str
    feature: str
    entity: str
    instant_ms: int
    got: Any
    want: Any
    window_events: list[dict[str, Any]] = field(default_factory=list)
    alone: str = ""  # training: does the single request row reproduce it?


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class ParityReport:
    seed: int
    topology: str = "single"
    tally: dict[tuple[str, str], list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    mismatches: list[Mismatch] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    no_value: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # path -> compared values the
    # contract has none of (a window sum outside int64: null, incomplete)

    @property
    def ok(self) -> bool:
        return not self.mismatches and all(c.ok for c in self.checks) and sum(c for c, _ in self.tally.values()) > 0

    def add(self, feature: str, path: str, got: Any, want: Any) -> bool:
        cell = self.tally[(feature, path)]
        cell[0] += 1
        same = same_value(got, want)
        if not same:
            cell[1] += 1
        return same

    def table(self, features: Sequence[str]) -> str:
        """feature x path -> "compared / mismatches"."""
        head = ["feature", *PATHS]
        rows = [head]
        for f in features:
            cells = []
            for p in PATHS:
                n, bad = self.tally.get((f, p), (0, 0))
                cells.append("n/a" if n == 0 else f"{n} / {bad}")
            rows.append([f, *cells])
        total = [sum(self.tally.get((f, p), (0, 0))[i] for f in features) for p in PATHS for i in (0, 1)]
        rows.append(["TOTAL", *(f"{total[2 * i]} / {total[2 * i + 1]}" for i in range(len(PATHS)))])
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.insert(len(lines) - 1, "  ".join("-" * w for w in widths))
        return "\n".join(lines) + "\n(cells: rows compared / mismatches)"


def same_value(got: Any, want: Any) -> bool:
    if got is None or want is None:
        return got is None and want is None
    if isinstance(got, bool) or isinstance(want, bool):
        return type(got) is type(want) and got == want
    if isinstance(got, float) or isinstance(want, float):
        return isinstance(got, float) and isinstance(want, float) and got == want
    return got == want


# --- generation ---------------------------------------------------------------------------------------


def generate_stream(cfg: ParityConfig, source: Any, now_ms: int) -> tuple[list[Any], Any]:
    """Seeded records whose history spans ``cfg.days`` and ends ~10 minutes before ``now_ms``, with quiet
    periods of 2.5 h (windows of 1 h must decay to nothing in between)."""
    from skewless.producer import GeneratorConfig, generate

    span = int(cfg.days * MS_PER_DAY)
    quiet_every = max(25, cfg.events // 12)
    n_quiet = (cfg.events - 1) // quiet_every
    quiet_ms = 150 * MS_PER_MINUTE
    budget = span - 10 * MS_PER_MINUTE - n_quiet * quiet_ms
    if budget < span // 3:
        quiet_ms = max(MS_PER_HOUR + 10 * MS_PER_MINUTE, (span // 2) // max(1, n_quiet))
        budget = span - 10 * MS_PER_MINUTE - n_quiet * quiet_ms
    rate = 1000.0 * cfg.events / budget
    gen = GeneratorConfig(count=cfg.events, rate=rate, start_ms=now_ms - span, seed=cfg.seed, partitions=cfg.partitions,
                          users=cfg.entities, quiet_every=quiet_every, quiet_ms=quiet_ms,
                          allowed_lateness_ms=td_ms(source.allowed_lateness),
                          clock_skew_ms=td_ms(source.clock_skew_tolerance))
    return generate(gen)


INT64_MAX = 2**63 - 1


def with_int64_max_amounts(records: Sequence[Any]) -> tuple[list[Any], list[str]]:
    """``records`` with ``amount = 2**63 - 1`` (issue 19 item 7) on every ``completed`` event of the user with the
    most of them (two such events already leave int64) and on the first one of the next user (its window leaves
    int64 with that user's next completed order); returns the records and those two users."""
    from skewless.producer.generator import CLEAN

    def payload(r: Any) -> dict[str, Any] | None:
        try:
            p = json.loads(r.value)
        except ValueError:
            return None
        return p if isinstance(p, dict) and isinstance(p.get("user_id"), str) else None

    clean = [(r, p) for r in records if r.kind == CLEAN and (p := payload(r)) is not None]
    counts = Counter(p["user_id"] for _, p in clean if p.get("status") == "completed")
    users = [u for u, _ in counts.most_common(2)]
    edit: set[int] = set()
    for i, user in enumerate(users):
        mine = [r.seq for r, p in clean if p["user_id"] == user and p.get("status") == "completed"]
        edit |= set(mine if i == 0 else mine[:1])
    out = []
    for r in records:
        if r.seq in edit:
            p = json.loads(r.value)
            p["amount"] = INT64_MAX
            r = dataclasses.replace(r, value=json.dumps(p, separators=(",", ":")).encode())
        out.append(r)
    return out, users


def snapshot_rows(seed: int, users: Sequence[str], start_ms: int, end_ms: int) -> list[dict[str, Any]]:
    """CRM rows: around one per user and day, on day edges and within days, ties resolved by created_at,
    some null scores (the latest row decides even when null)."""
    rng = random.Random(seed * 7919 + 1)
    rows, seen = [], set()
    first_day = start_ms // MS_PER_DAY
    for u in users:
        for day in range(first_day, end_ms // MS_PER_DAY + 1):
            if rng.random() < 0.3:
                continue
            ts = day * MS_PER_DAY + rng.choice([0, 0, 1, rng.randrange(MS_PER_DAY)])
            if ts >= end_ms:
                continue
            for _ in range(rng.choice([1, 1, 1, 2])):
                created = ts + rng.choice([0, 5 * MS_PER_MINUTE, 2 * MS_PER_HOUR, -MS_PER_HOUR, rng.randrange(MS_PER_DAY)])
                if (u, ts, created) in seen:
                    continue
                seen.add((u, ts, created))
                rows.append({"user_id": u, "credit_score": rng.randrange(300, 851) if rng.random() > 0.08 else None,
                             "segment": rng.choice(["new", "regular", "vip", "dormant"]), "event_time": ts,
                             "created_at": created})
    return rows


# --- expectations ------------------------------------------------------------------------------------


def _served_by_stream(f: Any) -> bool:
    return isinstance(f, Aggregation) and f.window.width is not None and td_ms(f.window.width) <= MS_PER_DAY


def _by_user(events: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for e in events:
        out[e["user_id"]].append(e)
    return out


class Expected:
    """The oracle's values for the online and offline paths."""

    def __init__(self, view: FeatureView, snap: SnapshotView, admitted: Sequence[dict[str, Any]],
                 offline: Sequence[dict[str, Any]], cutoff_ms: int, snapshot: Sequence[dict[str, Any]]) -> None:
        self.view, self.snap, self.cutoff = view, snap, cutoff_ms
        self.admitted = _by_user(admitted)
        self.offline = _by_user(offline)
        mixed = [e for e in offline if e["event_time"] < cutoff_ms] + [e for e in admitted if e["event_time"] >= cutoff_ms]
        self.mixed = _by_user(mixed)
        self.snapshot = _by_user(snapshot)
        self._newest: dict[tuple[str, int], int] = {}

    def online(self, user: str, T: int, now_read: bool) -> dict[str, tuple[Any, str]]:
        """Per feature ``(value, status)``: ``present``, or ``(None, incomplete)`` where the contract has no value."""
        stream = oracle.feature_values(self.view, self.admitted.get(user, []), (user,), T, now_read=now_read)
        batch = oracle.feature_values(self.view, self.mixed.get(user, []), (user,), T, now_read=now_read)
        return {f.name: stream[f.name] if _served_by_stream(f) else batch[f.name] for f in self.view.features}

    def offline_row(self, user: str, T: int) -> dict[str, tuple[Any, str]]:
        return oracle.feature_values(self.view, self.offline.get(user, []), (user,), T)

    def snapshot_row(self, user: str, T: int) -> dict[str, tuple[Any, str]]:
        return oracle.snapshot_row(self.snap, self.snapshot.get(user, []), (user,), T)

    def online_snapshot(self, user: str, T: int) -> dict[str, tuple[Any, str]]:
        """Snapshot values online: materialization loads the latest row with ts and created_at before the
        cut-off, so the contract is evaluated over those rows."""
        rows = [r for r in self.snapshot.get(user, []) if r["event_time"] < self.cutoff and r["created_at"] < self.cutoff]
        return oracle.snapshot_row(self.snap, rows, (user,), T)

    def may_be_incomplete(self, user: str, T: int, now_ms: int) -> set[str]:
        """Features the store may answer ``incomplete`` at T (read at ``now_ms``): stream-served windows starting
        before what Redis retains behind the entity's newest tile or the read instant (docs/semantics.md §11),
        and derived features using them."""
        out: set[str] = set()
        groups = {g.tile_ms: g for g in layout.tile_groups(self.view)}
        for f in self.view.features:
            if not _served_by_stream(f):
                continue
            width, tile = layout.width_ms_of(f), layout.tile_ms_of(f)
            newest = max([e["event_time"] // tile * tile for e in self.admitted.get(user, [])] + [now_ms // tile * tile])
            if (T - width) // tile * tile < newest - groups[tile].retention_ms:
                out.add(f.name)
        return out | {f.name for f in self.view.features if isinstance(f, Derived) and set(refs(f.expr)) & out}

    def window_events(self, feature: str, user: str, T: int, events: str) -> list[dict[str, Any]]:
        """The entity's events the feature's window holds at T (the shrunk reproducing case)."""
        pool = {"online": self.mixed, "offline": self.offline}[events].get(user, [])
        f = self.view.feature(feature) if feature in self.view.feature_names else None
        if isinstance(f, Aggregation):
            lo, hi = oracle.window_bounds(f, T)
        else:
            lo, hi = None, T
        chosen = [e for e in pool if (lo is None or e["event_time"] >= lo) and (hi is None or e["event_time"] < hi)]
        return [{k: e.get(k) for k in ("event_id", "event_time", "status", "amount", "_kafka_partition", "_offset")} for e in chosen]


# --- the run -----------------------------------------------------------------------------------------


def run_parity(cfg: ParityConfig, targets: Targets, log: Log = print, faults: Faults | None = None,
               probe: TopologyProbe | None = None) -> ParityReport:
    """The whole proof against ``targets`` (with ``faults`` injected, the topology checked by ``probe``); returns
    the report (``report.ok``)."""
    import threading

    from skewless.core.admission import admit
    from skewless.core.repo import load_repository
    from skewless.core.schemas import validator
    from skewless.producer.kafka_producer import produce_records

    repo = load_repository()
    view: FeatureView = repo.view(FEATURE_VIEW)  # type: ignore[assignment]
    snap: SnapshotView = repo.view(SNAPSHOT_VIEW)  # type: ignore[assignment]
    source = view.source
    report = ParityReport(cfg.seed, cfg.topology)
    phases = Phases(log)
    uid = uuid.uuid4().hex[:6]
    topic, project = f"parity-{cfg.seed}-{uid}", f"parity{cfg.seed}x{uid}"
    targets.workdir.mkdir(parents=True, exist_ok=True)
    log(f"parity seed {cfg.seed}: {cfg.events} records, {cfg.entities} entities over {cfg.days:g} days; topic {topic}, "
        f"Redis prefix {project}, catalog {targets.catalog_name}")

    now0 = int(time.time() * 1000)
    records, manifest = phases.run("generate", lambda: generate_stream(cfg, source, now0),
                                   lambda r: json.dumps(r[1].counts))
    records, big_users = with_int64_max_amounts(records)
    log(f"int64-max amounts on the completed orders of {big_users[:1]} and the first one of {big_users[1:]}")
    create_topic(targets.bootstrap, topic, cfg.partitions)
    client = targets.redis()
    faults = faults or Faults()
    probe = probe or TopologyProbe()
    ctx = RunContext(targets, repo, topic, project, len(records), log)
    stop_offsets = None
    if cfg.produce_rate is None:
        delivery = phases.run("produce -> Kafka", lambda: produce_records(targets.bootstrap, topic, records),
                              lambda d: f"{d.delivered} records")
        ctx.produced = len(records)
    else:  # the job stops at the offsets the whole run will reach (a fresh topic, one producer, no transactions)
        stop_offsets = {p: sum(1 for r in records if r.partition == p) for p in range(cfg.partitions)}
        production: dict[str, Any] = {}
        producer = threading.Thread(target=_produce_during_stream, name="parity-producer", daemon=True,
                                    args=(ctx, records, cfg.produce_rate, source.name, production))
        producer.start()
    injector = threading.Thread(target=faults.during_stream, args=(ctx,), name="fault-during-stream", daemon=True)
    injector.start()
    ctx.job_id = phases.run(f"stream (Flink {targets.flink}) -> Redis", lambda: run_stream_bounded(
        targets, FEATURE_VIEW, topic, project, log, stop_offsets=stop_offsets))
    injector.join(600)
    report.checks += probe.stream_done(ctx)
    if cfg.produce_rate is not None:
        producer.join(600)
        if "report" not in production:
            raise RuntimeError(f"producing during the stream failed: {production.get('error', 'timed out')}")
        delivery = production["report"]
        log(f"produced {delivery.delivered} records during the stream ({cfg.produce_rate:g}/s after the job's first write)")
    raw = read_topic(targets.bootstrap, topic)
    result = admit(raw, source, validator(source.schema), key_fields=view.entity.key_names)
    admitted, offline = list(result.admitted), list(result.offline)
    report.counts = {"records": len(raw), **result.counts(), "offline": len(offline)}
    progress = stream_progress(client, project, source.name)
    consumed = sum(p.get("records", 0) for p in progress.values())
    report.checks.append(Check("stream consumed every record", consumed == len(raw),
                               f"progress counts {consumed} of {len(raw)} records"))
    report.checks.append(stream_counters_check(progress, result))
    if not faults.archive(ctx):
        phases.run("archive -> Iceberg", lambda: archive_drain(targets, source, topic),
                   lambda s: f"{s.records} rows, {s.dead_letters} dead letters, {s.commits} commits")
    catalog = targets.catalog()
    users = sorted({e["user_id"] for e in offline})
    end_ms = max(r.timestamp_ms for r in records)
    snap_rows = snapshot_rows(cfg.seed, users, now0 - int(cfg.days * MS_PER_DAY) - 2 * MS_PER_DAY, end_ms)
    write_snapshot_rows(catalog, snap.source.table, snap_rows)
    day = batch_day(catalog, source)
    first_day = day_of(min(e["event_time"] for e in offline))
    start = first_day - timedelta(days=366)
    _, where = phases.run(
        f"backfill {start}..{day} (Spark {targets.spark_master}, archive gate on)",
        lambda: probe.backfill(ctx, lambda: faults.backfill(ctx, lambda: backfill(targets, view, repo, start, day,
                                                                                 lambda _: None))),
        lambda r: f"{len(r[0].computed_days)} days, {r[0].tile_rows} tile rows, run {r[0].run_id}")
    report.checks += where
    phases.run(f"materialize day {day} -> Redis", lambda: materialize(targets, repo, day, project),
               lambda rs: ", ".join(f"{r.view} {r.rows} rows" for r in rs))
    ctx.day = day
    faults.before_compare(ctx)
    cutoff = (day.toordinal() - day_of(0).toordinal() + 1) * MS_PER_DAY
    expected = Expected(view, snap, admitted, offline, cutoff, snap_rows)

    rng = random.Random(cfg.seed)
    heavy = sorted(users, key=lambda u: -len(expected.offline.get(u, [])))[: max(1, cfg.sample // 3)]
    rest = [u for u in users if u not in heavy]
    sample = heavy + rng.sample(rest, min(len(rest), cfg.sample - len(heavy))) + [UNKNOWN_USER]
    ctx.sample = sample[:-1]

    phases.run("compare online", lambda: _compare_online(report, expected, client, project, repo, sample, end_ms, cutoff))
    # records archived after the backfill's raw snapshot (never streamed, not in the materialized run): training
    # sets count them (docs/semantics.md §10), also those for days the run's tiles cover (issue 19)
    late_records = _records_after_backfill(cfg, offline, heavy[:2], cutoff, end_ms, len(records))
    late_offline = phases.run("archive after the backfill", lambda: _archive_after_backfill(
        report, targets, source, topic, view, late_records, len(offline)), lambda o: f"{len(late_records)} records")
    expected.offline = _by_user(late_offline)
    requests = _training_requests(expected, sample, rng, cfg.instants, first_day, end_ms, cutoff, snap)
    requests += _requests_around(late_records, first_day, cutoff)
    for engine, path in (("duckdb", TRAIN_DUCKDB), ("spark", TRAIN_SPARK)):
        phases.run(f"compare training ({engine})",
                   lambda: _compare_training(report, expected, repo, targets, catalog, requests, engine, path),
                   lambda _: f"{len(requests)} rows")
    report.checks.append(Check("windows whose sum leaves int64 were compared as null, incomplete on every path",
                               all(report.no_value[p] > 0 for p in PATHS),
                               ", ".join(f"{p} {report.no_value[p]}" for p in PATHS)))
    phases.run("dead-letter sinks", lambda: _check_dead_letters(report, targets, catalog, source, topic, records, manifest,
                                                                delivery.positions, result, len(late_records)))
    report.checks += probe.run_done(ctx, catalog)
    if report.mismatches:
        _shrink(report, expected, repo, targets, catalog)
    if not cfg.keep:
        delete_project_keys(client, project)
    report.timings = phases.timings
    return report


def _produce_during_stream(ctx: RunContext, records: Sequence[Any], rate: float, source: str, out: dict[str, Any]) -> None:
    """Produce the first 5% of ``records`` at once, then, once the streaming job wrote its first records (its
    progress in Redis), the rest at ``rate`` records/s: the job keeps writing while records arrive, so a fault
    injected after its first write lands before its last. ``out["report"]`` (or ``out["error"]``)."""
    from skewless.producer.kafka_producer import produce_records

    def sent(_: Any, __: int) -> None:
        ctx.produced += 1

    try:
        head = max(1, len(records) // 20)
        report = produce_records(ctx.targets.bootstrap, ctx.topic, records[:head], on_sent=sent)
        client, deadline = ctx.targets.redis(), time.monotonic() + 900

        def written() -> bool:
            try:
                return any(p.get("records", 0) for p in stream_progress(client, ctx.project, source).values())
            except Exception:  # noqa: BLE001 - Redis restarting (a fault test): not yet
                return False

        while time.monotonic() < deadline and not written():
            time.sleep(0.2)
        rest = produce_records(ctx.targets.bootstrap, ctx.topic, records[head:], rate=rate, on_sent=sent)
        report.delivered += rest.delivered
        report.positions.update(rest.positions)
        out["report"] = report
    except Exception as exc:  # noqa: BLE001 - reported by the run
        out["error"] = exc


def _records_after_backfill(cfg: ParityConfig, offline: Sequence[Mapping[str, Any]], users: Sequence[str], cutoff: int,
                            end_ms: int, first_seq: int) -> list[Any]:
    """Records to archive after the backfill: per user, three `placed` orders just after the stream's last
    event (the day after the cut-off), one late event on each of the two last days the backfill covered,
    and a copy (same id and event time, another amount) of the user's first event (dropped offline)."""
    from skewless.producer import generator

    head = min(end_ms, cutoff + MS_PER_DAY - 30 * MS_PER_MINUTE) + MS_PER_MINUTE
    out: list[Any] = []

    def add(user: str, ts: int, status: str, amount: int, event_id: str | None = None) -> None:
        key = user.encode()
        seq = first_seq + len(out)
        event_id = event_id or f"after-{cfg.seed}-{seq}"
        payload = {"event_id": event_id, "user_id": user, "order_id": f"oa{cfg.seed}-{seq}", "amount": amount,
                   "currency": "EUR", "status": status, "event_time": generator.iso_ms(ts)}
        out.append(generator.GeneratedRecord(seq, generator.CLEAN, key, json.dumps(payload, separators=(",", ":")).encode(),
                                             int(time.time() * 1000), generator.partition_for(key, cfg.partitions),
                                             event_id))

    for i, user in enumerate(u for u in users if any(e["user_id"] == u for e in offline)):
        for k in range(3):
            add(user, head + (3 * i + k) * MS_PER_MINUTE, "placed", 100 + k)
        add(user, cutoff - MS_PER_DAY + 5 * MS_PER_HOUR + i * MS_PER_MINUTE, "completed", 2500)
        add(user, cutoff - 2 * MS_PER_DAY + 13 * MS_PER_HOUR + i * MS_PER_MINUTE, "placed", 700)
        first = min((e for e in offline if e["user_id"] == user), key=lambda e: (e["event_time"], e["event_id"]))
        add(user, first["event_time"], first["status"], 999_999, first["event_id"])
    return out


def _archive_after_backfill(report: ParityReport, targets: Targets, source: Any, topic: str, view: FeatureView,
                            late_records: Sequence[Any], offline_before: int) -> list[dict[str, Any]]:
    """Produce ``late_records`` into the topic and archive them (a raw snapshot newer than the backfill's);
    returns the offline set of the whole topic now."""
    from skewless.core.admission import admit
    from skewless.core.schemas import validator
    from skewless.producer.kafka_producer import produce_records

    produce_records(targets.bootstrap, topic, late_records)
    archive_drain(targets, source, topic)
    result = admit(read_topic(targets.bootstrap, topic), source, validator(source.schema),
                   key_fields=view.entity.key_names)
    offline = list(result.offline)
    copies = sum(1 for r in late_records if not r.event_id.startswith("after-"))
    added = len(offline) - offline_before
    report.checks.append(Check("records archived after the backfill enter the offline set (copies dropped)",
                               added == len(late_records) - copies,
                               f"{added} of {len(late_records)} records ({copies} copies of archived events)"))
    return offline


def _requests_around(late_records: Sequence[Any], first_day: Any, cutoff: int) -> list[tuple[str, int]]:
    """Training instants around the records archived after the backfill: at and 1 ms after each, and the start
    of the next day (within the days the batch run serves)."""
    from skewless.core.admission import parse_event_time

    lo = (first_day.toordinal() - day_of(0).toordinal()) * MS_PER_DAY
    out: set[tuple[str, int]] = set()
    for r in late_records:
        p = json.loads(r.value)
        ts = parse_event_time(p["event_time"])
        out |= {(p["user_id"], t) for t in (ts, ts + 1, ts // MS_PER_DAY * MS_PER_DAY + MS_PER_DAY)
                if lo <= t < cutoff + MS_PER_DAY}
    return sorted(out)


def online_reader(client: Any, project: str, repo: Any) -> Callable[..., dict[str, list[tuple[Any, str]]]]:
    """``read(users, as_of, now_ms) -> {feature: [(value, status) per user]}`` for both views, through
    ``OnlineStore.get_online_features`` (skewless.serving)."""
    store = OnlineStore(repo, client, project)

    def read(users: Sequence[str], as_of: int | None, now_ms: int) -> dict[str, list[tuple[Any, str]]]:
        r = store.get_online_features([{"user_id": u} for u in users], [FEATURE_VIEW, SNAPSHOT_VIEW], as_of=as_of,
                                      now_ms=now_ms)
        return {c: list(zip(r.values[c], r.statuses[c])) for c in r.columns}
    return read


def _compare_online(report: ParityReport, expected: Expected, client: Any, project: str, repo: Any,
                    sample: Sequence[str], end_ms: int, cutoff: int) -> None:
    read = online_reader(client, project, repo)
    reads: list[tuple[int | None, int]] = [(None, end_ms + 1), (None, end_ms + 7 * MS_PER_MINUTE), (None, end_ms + 61 * MS_PER_MINUTE),
                                           (cutoff, end_ms + 1), (cutoff + MS_PER_DAY, end_ms + 1)]
    for as_of, now_ms in reads:
        got = read(sample, as_of, now_ms)
        if SNAPSHOT_VIEW + "_online" not in report.counts and "segment" not in got:
            report.notes.append("customer_profile online: no reader for snapshot views installed (skewless/serving)")
            report.counts[SNAPSHOT_VIEW + "_online"] = 0
        T = now_ms if as_of is None else as_of
        path = ONLINE_NOW if as_of is None else ONLINE_ASOF
        for i, user in enumerate(sample):
            want = expected.online(user, T, now_read=as_of is None)
            allowed = expected.may_be_incomplete(user, T, now_ms)
            for name in expected.view.feature_names:
                value, status = got[name][i]
                want_value, want_status = want[name]
                if status == "incomplete" and name in allowed:
                    continue
                shown = value if status in ("present", "stale") else f"<{status}>"
                wanted = want_value if want_status == "present" else f"<{want_status}>"
                report.no_value[path] += want_status == "incomplete"
                if not report.add(name, path, shown, wanted):
                    report.mismatches.append(Mismatch(path, name, user, T, shown, wanted))
            if "segment" in got:
                for name, (value, st) in expected.online_snapshot(user, T).items():
                    if not report.add(name, path, got[name][i], (value, st)):
                        report.mismatches.append(Mismatch(path, name, user, T, got[name][i], (value, st)))


def _training_requests(expected: Expected, sample: Sequence[str], rng: random.Random, per_entity: int, first_day: Any,
                       end_ms: int, cutoff: int, snap: SnapshotView) -> list[tuple[str, int]]:
    """(user, T): instants on events (and 1 ms after), tile edges, day edges, TTL edges, "now"."""
    lo = (first_day.toordinal() - day_of(0).toordinal()) * MS_PER_DAY
    hi = min(end_ms + 1, cutoff + MS_PER_DAY - 1)
    ttl = td_ms(snap.ttl)
    out: list[tuple[str, int]] = []
    for user in sample:
        cands: set[int] = {cutoff, cutoff - 1, cutoff + 1, end_ms + 1}
        for e in rng.sample(expected.offline.get(user, []), min(6, len(expected.offline.get(user, [])))):
            ts = e["event_time"]
            cands |= {ts, ts + 1, ts // (5 * MS_PER_MINUTE) * 5 * MS_PER_MINUTE + 5 * MS_PER_MINUTE,
                      ts // MS_PER_HOUR * MS_PER_HOUR, ts // MS_PER_DAY * MS_PER_DAY + MS_PER_DAY}
        for r in rng.sample(expected.snapshot.get(user, []), min(3, len(expected.snapshot.get(user, [])))):
            cands |= {r["event_time"], r["event_time"] - 1, r["event_time"] + ttl, r["event_time"] + ttl + 1, r["created_at"]}
        cands = {t for t in cands if lo <= t <= hi}
        fixed = sorted(t for t in cands if t in (cutoff, cutoff - 1, end_ms + 1))
        others = sorted(cands - set(fixed))
        out += [(user, t) for t in fixed + rng.sample(others, min(per_entity, len(others)))]
    return out


def historical(repo: Any, catalog: Any, requests: Sequence[tuple[str, int]], engine: str = "duckdb",
               spark: Any = None) -> list[dict[str, Any]]:
    """Both views' features for ``(user, T)`` rows via ``FeatureStore.get_historical_features``, as dicts."""
    import pyarrow as pa

    from skewless.core.timeutil import from_epoch_ms
    from skewless.store import FeatureStore

    entity_df = pa.table({"user_id": [u for u, _ in requests],
                          "event_timestamp": pa.array([from_epoch_ms(t) for _, t in requests], pa.timestamp("ms", tz="UTC"))})
    store = FeatureStore(repo, catalog=catalog, spark=spark)
    out = store.get_historical_features(entity_df, [FEATURE_VIEW, SNAPSHOT_VIEW], engine=engine, progress=False)
    return out.to_pylist()


def _compare_training(report: ParityReport, expected: Expected, repo: Any, targets: Targets, catalog: Any,
                      requests: Sequence[tuple[str, int]], engine: str, path: str) -> None:
    rows = historical(repo, catalog, requests, engine, targets.spark_session() if engine == "spark" else None)
    for (user, T), row in zip(requests, rows, strict=True):
        want = expected.offline_row(user, T)
        status = row.get(f"{FEATURE_VIEW}__status")
        # one status per view: incomplete when a feature has no value (its value, and those of the derived
        # features using it, null; the others keep theirs)
        want_status = "incomplete" if any(st == "incomplete" for _, st in want.values()) else "present"
        for name, (value, st) in want.items():
            report.no_value[path] += st == "incomplete"
            got = row.get(name) if status == want_status else f"<{status}>"
            if not report.add(name, path, got, value):
                report.mismatches.append(Mismatch(path, name, user, T, got, value))
        snap = expected.snapshot_row(user, T)
        snap_status = row.get(f"{SNAPSHOT_VIEW}__status")
        for name, (value, st) in snap.items():
            got, wanted = (row.get(name), snap_status), (value, st)
            if not report.add(name, path, got, wanted):
                report.mismatches.append(Mismatch(path, name, user, T, got, wanted))


def _shrink(report: ParityReport, expected: Expected, repo: Any, targets: Targets, catalog: Any) -> None:
    """Attach to the smallest mismatches the window's events and, for training, a run of that row alone."""
    def size(m: Mismatch) -> int:
        return len(expected.window_events(m.feature, m.entity, m.instant_ms, "offline"))

    report.mismatches.sort(key=lambda m: (size(m), m.path, m.feature))
    for m in report.mismatches[:5]:
        m.window_events = expected.window_events(m.feature, m.entity, m.instant_ms,
                                                 "online" if m.path.startswith("online") else "offline")
        if m.path in (TRAIN_DUCKDB, TRAIN_SPARK):
            try:
                spark = targets.spark_session() if m.path == TRAIN_SPARK else None
                (row,) = historical(repo, catalog, [(m.entity, m.instant_ms)], "spark" if spark else "duckdb", spark)
                m.alone = f"re-run alone: {row.get(m.feature)!r} ({row.get(f'{FEATURE_VIEW}__status')})"
            except Exception as exc:  # noqa: BLE001 - the shrink is best effort
                m.alone = f"re-run alone failed: {exc}"


def _check_dead_letters(report: ParityReport, targets: Targets, catalog: Any, source: Any, topic: str, records: Sequence[Any],
                        manifest: Any, positions: Mapping[int, tuple[int, int]], result: Any, archived_after: int = 0) -> None:
    from skewless.archive.tables import dead_letter_table_name
    from streaming_jobs.flink_compiler import dead_letter_topic

    kind_at = {positions[r.seq]: r.kind for r in records}
    injected = {k: {positions[s] for s in manifest.injected[k]} for k in ("malformed", "late", "future")}
    dl = [json.loads(m["value"]) for m in read_topic(targets.bootstrap, dead_letter_topic(topic))]
    got = {(d["partition"], d["offset"]): d["reason"] for d in dl}
    want = {(d.partition, d.offset): d.reason for d in result.dead_letters}
    report.checks.append(Check("Kafka dead-letter topic = admission.py's dead letters", got == want,
                               f"{len(got)} records, reference {len(want)}; differ at {sorted(set(got.items()) ^ set(want.items()))[:5]}"
                               if got != want else f"{len(got)} records, same positions and reasons"))
    wrong = {k: sorted(p for p in pos if got.get(p) != k)[:5] for k, pos in injected.items()}
    extra = {p: r for p, r in got.items() if not any(p in pos for pos in injected.values())}
    extra_ok = all(kind_at.get(p) == "duplicate" and r == "late" for p, r in extra.items())
    n = {k: len(v) for k, v in injected.items()}
    report.checks.append(Check(
        "Kafka dead-letter topic holds exactly the injected malformed/late/future records",
        not any(wrong.values()) and extra_ok,
        f"injected malformed {n['malformed']}, late {n['late']}, future {n['future']} all present with their reason"
        + (f"; plus {len(extra)} re-sent copies whose original is beyond the lateness horizon (late by §6)" if extra else "")
        if not any(wrong.values()) and extra_ok else f"missing or other reason: {wrong}; unexpected: {dict(list(extra.items())[:5])}"))
    table = catalog.load_table(dead_letter_table_name(source)).scan().to_arrow()
    archived = set(zip(table.column("_kafka_partition").to_pylist(), table.column("_offset").to_pylist()))
    report.checks.append(Check("archive dead-letter table = the injected malformed records", archived == injected["malformed"],
                               f"{len(archived)} rows, injected {len(injected['malformed'])}"
                               + ("" if archived == injected["malformed"] else
                                  f"; missing {sorted(injected['malformed'] - archived)[:5]}, extra {sorted(archived - injected['malformed'])[:5]}")))
    raw_rows = catalog.load_table(source.table).scan(selected_fields=("_kafka_partition",)).to_arrow().num_rows
    want_rows = len(records) - len(injected["malformed"]) + archived_after
    report.checks.append(Check("archive raw table = every other record, once", raw_rows == want_rows,
                               f"{raw_rows} rows, {want_rows} well-formed records produced "
                               f"({archived_after} of them after the backfill)"))


def stream_counters_check(progress: dict[int, dict[str, Any]], result: AdmissionResult) -> Check:
    """The progress hash's per-partition counters of dropped records equal admission.py's, reason by reason."""
    want: dict[tuple[int, str], int] = {}
    for d in result.dead_letters:
        want[(d.partition, d.reason)] = want.get((d.partition, d.reason), 0) + 1
    for e in result.duplicates:
        want[(e["_kafka_partition"], "duplicate")] = want.get((e["_kafka_partition"], "duplicate"), 0) + 1
    reasons = (*DEAD_LETTER_REASONS, "duplicate")
    wrong = {(p, r): (info.get(r), want.get((p, r), 0)) for p, info in sorted(progress.items()) for r in reasons
             if info.get(r) != want.get((p, r), 0)}
    return Check("stream counts malformed/future/late/duplicate per partition exactly", not wrong,
                 f"{len(progress)} partitions agree" if not wrong else f"(partition, reason): (stream, admission) {wrong}")


def format_report(report: ParityReport, view: FeatureView, snap: SnapshotView) -> str:
    """The table, the checks and (on failure) the smallest reproducing cases."""
    lines = [report.table([*view.feature_names, *snap.feature_names]), ""]
    c = report.counts
    lines.append(f"records {c.get('records')}: admitted {c.get('admitted')}, duplicates {c.get('duplicate')}, "
                 f"late {c.get('late')}, future {c.get('future')}, malformed {c.get('malformed')}; offline set {c.get('offline')}")
    for check in report.checks:
        lines.append(f"[{'ok' if check.ok else 'FAIL'}] {check.name}: {check.detail}")
    for note in report.notes:
        lines.append(f"note: {note}")
    if report.mismatches:
        lines.append(f"\n{len(report.mismatches)} MISMATCHES; smallest reproducing cases:")
        for m in report.mismatches[:5]:
            lines.append(f"  {m.path} {m.feature} entity={m.entity!r} T={m.instant_ms} ({iso_ms(m.instant_ms)}): "
                         f"got {m.got!r}, contract {m.want!r} {m.alone}")
            for e in m.window_events[:20]:
                lines.append(f"      {e}")
            if len(m.window_events) > 20:
                lines.append(f"      ... {len(m.window_events) - 20} more events in the window")
        topology = "" if report.topology == "single" else f" TOPOLOGY={report.topology}"
        lines.append(f"rerun: make parity{topology} SEED={report.seed}")
    on = "" if report.topology == "single" else f", topology {report.topology}"
    lines.append(f"\nPARITY {'OK: zero mismatches' if report.ok else 'FAILED'} (seed {report.seed}{on})")
    return "\n".join(lines)


__all__ = ["Check", "Faults", "ParityConfig", "ParityReport", "RunContext", "Targets", "TopologyProbe", "format_report",
           "run_parity"]
