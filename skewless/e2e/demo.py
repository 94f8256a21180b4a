"""`skewless demo` (`make demo`): the whole pipeline on a year of generated order history plus a live stream.

Phases (each printed with its time): the stack (started if not running, with the raw archive); a year of
orders into Kafka and a year of CRM profile rows into Iceberg (once; reruns reuse them); the archive
catching up; the streaming job on the Flink session cluster; the Spark backfill (spark-submit) and the
materialization into Redis; a training set for the ``churn_model`` service; live online features of a few
users while new orders stream in; a small online-vs-contract and training-vs-contract check.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

from skewless import config
from skewless.core.timeutil import MS_PER_DAY, MS_PER_MINUTE, iso_ms, td_ms
from skewless.e2e.pipeline import Log, Phases, create_topic, day_of, end_offsets, read_topic, stream_progress
from streaming_jobs.flink_compiler import views_of_stream_job

HISTORY_EVENTS = 24_000
USERS = 400
SEED = 2024
LIVE_SECONDS = 40
PROJECT = "skewless"
SHOWN = ("user_orders_last_1h", "max_order_amount_7d", "user_total_orders_365d", "customer_ltv_365d",
         "days_since_last_order", "last_order_status")


def _skewless(*args: str, log: Log, prefix: str = "    ") -> int:
    """Run a skewless command, echoing its output lines (indented)."""
    cmd = [str(Path(sys.executable).parent / "skewless"), *args]
    log(f"    $ skewless {' '.join(args)}")
    proc = subprocess.Popen(cmd, cwd=config.PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line and not _noise(line):
            log(prefix + line)
    return proc.wait()


_DAY_LINE = re.compile(r"^\S+ v\d+ \d{4}-\d{2}-(\d{2}): .*tile rows")
_LOG4J = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d (INFO|WARN|DEBUG) ")


def _noise(line: str) -> bool:
    """Spark/JVM log chatter (kept in the JVM's own logs); skewless' own lines pass."""
    day = _DAY_LINE.match(line)
    if day and day.group(1) != "01":  # backfill progress: one line per day; show the first of each month
        return True
    return bool(_LOG4J.match(line)) or any(s in line for s in ("WARN ", "WARNING: Using incubator", "log4j", "setLogLevel", "Setting default log level",
                                   "[Stage ", "NativeCodeLoader"))


class Demo:
    def __init__(self, log: Log) -> None:
        from skewless.core.repo import load_repository

        self.log = log
        self.phases = Phases(log)
        self.repo = load_repository()
        self.view = self.repo.view("user_order_stats")
        self.source = self.view.source
        self.state = config.paths().state / "demo"
        ports = config.ports()
        self.bootstrap = f"{config.HOST}:{ports.kafka}"
        self.redis_url = config.redis_url(ports.redis)

    # --- phases -------------------------------------------------------------------------------------
    def stack(self) -> str:
        from skewless.stack import manager

        record = manager.read_record()
        if record and all(manager.live_pids(e) for e in record["services"]) and manager.status(out=io.StringIO()) == 0:
            names = [e["name"] for e in record["services"]]
            if not any(n.startswith("archive-") for n in names):
                raise SystemExit("demo: the running stack has no archive process (started by an older `make up`); "
                                 "run `make down` then `make demo`")
            return "already running: " + ", ".join(names)
        if manager.up() != 0:
            raise SystemExit("demo: the stack did not start (see above)")
        return "started"

    def history(self) -> dict[str, Any]:
        """A year of orders into Kafka and of CRM rows into Iceberg, once (a marker file remembers it)."""
        marker = self.state / "history.json"
        if marker.exists():
            info = json.loads(marker.read_text())
            self.log(f"    reusing the history loaded at {info['loaded_at']} (`make clean` starts from scratch)")
            return info
        from skewless.engines.iceberg_catalog import load_catalog
        from skewless.producer import GeneratorConfig, generate
        from skewless.producer.kafka_producer import produce_records

        now = int(time.time() * 1000)
        span = 365 * MS_PER_DAY
        cfg = GeneratorConfig(count=HISTORY_EVENTS, rate=1000.0 * HISTORY_EVENTS / (span - 20 * MS_PER_MINUTE),
                              start_ms=now - span, seed=SEED, partitions=3, users=USERS,
                              duplicate_fraction=0.01, late_fraction=0.005, future_fraction=0.003, malformed_fraction=0.005,
                              allowed_lateness_ms=td_ms(self.source.allowed_lateness),
                              clock_skew_ms=td_ms(self.source.clock_skew_tolerance))
        records, manifest = generate(cfg)
        create_topic(self.bootstrap, self.source.topic, 3, retention_ms=-1)  # keep a year of old-stamped records
        produce_records(self.bootstrap, self.source.topic, records)
        self.log(f"    {len(records):,} order events of {USERS} users over 365 days -> Kafka topic "
                 f"{self.source.topic} (injected: {json.dumps({k: v for k, v in manifest.counts.items() if k != 'clean'})})")
        counts: dict[str, int] = {}
        for r in records:
            if r.kind == "clean" and r.key:
                counts[r.key.decode()] = counts.get(r.key.decode(), 0) + 1
        users = sorted(counts, key=lambda u: -counts[u])
        rows = self._profiles(users, now)
        from skewless.e2e.pipeline import write_snapshot_rows

        snap = self.repo.view("customer_profile")
        write_snapshot_rows(load_catalog(), snap.source.table, rows)
        self.log(f"    {len(rows):,} CRM profile rows -> Iceberg table {snap.source.table}")
        info = {"loaded_at": iso_ms(now), "end_ms": now, "records": len(records), "top_users": users[:3],
                "users": users}
        self.state.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(info))
        return info

    @staticmethod
    def _profiles(users: Sequence[str], now: int) -> list[dict[str, Any]]:
        """Weekly CRM rows for a year, daily ones for the last two weeks."""
        rng = random.Random(SEED)
        rows = []
        today = now // MS_PER_DAY
        for u in users:
            score, segment = rng.randrange(450, 820), rng.choice(["new", "regular", "regular", "vip", "dormant"])
            days = sorted({d for d in range(today - 365, today - 14, 7)} | set(range(today - 14, today + 1)))
            for d in days:
                ts = d * MS_PER_DAY + 2 * 3_600_000
                if ts > now:
                    continue
                score = min(850, max(300, score + rng.randrange(-8, 9)))
                rows.append({"user_id": u, "credit_score": score, "segment": segment, "event_time": ts,
                             "created_at": ts + 15 * MS_PER_MINUTE})
        return rows

    def archive_caught_up(self, timeout_s: float = 300.0) -> str:
        from skewless.offline.archive_progress import archive_progress
        from skewless.engines.iceberg_catalog import load_catalog

        ends = end_offsets(self.bootstrap, self.source.topic)
        deadline = time.monotonic() + timeout_s
        while True:
            p = archive_progress(load_catalog(), self.source)
            done = {k: v.last_offset + 1 for k, v in p.partitions.items()}
            if all(done.get(k, 0) >= n for k, n in ends.items()):
                return f"{sum(ends.values()):,} records archived; complete until {iso_ms(p.complete_until_ms or 0)}"
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: the archive did not catch up within {timeout_s:.0f} s ({done} of {ends}); "
                                 f"see {config.paths().logs / 'archive-orders.log'}")
            time.sleep(2)

    def streaming_job(self) -> str:
        from skewless.stack.flink import FlinkSessionCluster

        running = [j for j in FlinkSessionCluster().list_jobs()
                   if j.get("state") == "RUNNING" and "user_order_stats" in views_of_stream_job(j.get("name", ""))]
        if running:
            return f"already running: job {running[0]['jid']}"
        if _skewless("submit", "user_order_stats", log=self.log) != 0:
            raise SystemExit("demo: `skewless submit` failed (see above)")
        return "submitted"

    def backfill(self, first_ms: int) -> Any:
        from skewless.e2e.pipeline import batch_day
        from skewless.engines.iceberg_catalog import load_catalog

        day = batch_day(load_catalog(), self.source)
        start = day_of(first_ms) - timedelta(days=365)  # 365-day windows of the first history days are covered too
        if _skewless("backfill", "--view", "user_order_stats", "--start", str(start), "--end", str(day),
                     "--chunk-days", "800", "--driver-memory", "2g", log=self.log) != 0:
            raise SystemExit("demo: the backfill failed (see above)")
        return day

    def materialize(self, day: Any) -> None:
        if _skewless("materialize", "--day", str(day), "--init-epoch", log=self.log) != 0:
            raise SystemExit("demo: materialization failed (see above)")

    def stream_caught_up(self, timeout_s: float = 600.0) -> str:
        import redis

        client = redis.Redis.from_url(self.redis_url)
        ends = end_offsets(self.bootstrap, self.source.topic)
        deadline = time.monotonic() + timeout_s
        last = -1
        while True:
            prog = stream_progress(client, PROJECT, self.source.name)
            done = {p: v.get("offset", -1) + 1 for p, v in prog.items()}
            n = sum(done.values())
            if all(done.get(p, 0) >= e for p, e in ends.items()):
                return f"{n:,} records applied"
            if n != last:
                self.log(f"    stream: {n:,} of {sum(ends.values()):,} records applied ...")
                last = n
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: the streaming job did not catch up within {timeout_s:.0f} s; `skewless jobs` "
                                 f"and {config.paths().logs / 'flink'}")
            time.sleep(5)

    def training_set(self, users: Sequence[str]) -> None:
        import pandas as pd

        from skewless.store import FeatureStore

        today = int(time.time() * 1000) // MS_PER_DAY * MS_PER_DAY
        rows = [{"user_id": u, "event_timestamp": pd.Timestamp(today - d * MS_PER_DAY + 12 * 3_600_000, unit="ms", tz="UTC")}
                for u in users for d in range(1, 31)]
        entity_df = pd.DataFrame(rows)
        train = FeatureStore().get_historical_features(entity_df, "churn_model", progress=False)
        self.log("    FeatureStore().get_historical_features(entity_df, 'churn_model')  # DuckDB engine")
        self.log(f"    shape: {train.shape[0]} rows x {train.shape[1]} columns (entity_df: {len(users)} users x 30 days at 12:00)")
        self.log(f"    columns: {', '.join(train.columns)}")
        shown = ["user_id", "event_timestamp", "user_orders_last_1h", "max_order_amount_7d", "customer_ltv_365d",
                 "days_since_last_order", "last_order_status", "segment"]
        with pd.option_context("display.width", 250, "display.max_columns", 20):
            for line in train[shown].head(6).to_string(index=False).splitlines():
                self.log("    " + line)

    def live(self, users: Sequence[str]) -> None:
        import redis

        from skewless.e2e.parity import online_reader

        read = online_reader(redis.Redis.from_url(self.redis_url), PROJECT, self.repo)
        stop = threading.Event()
        sent: list[int] = []
        producer = threading.Thread(target=self._produce_live, args=(users, stop, sent), daemon=True)
        producer.start()
        try:
            for i in range(5):
                if i:
                    time.sleep(LIVE_SECONDS / 4)
                got = read(users, None, int(time.time() * 1000))
                self.log(f"    -- refresh {i + 1}/5 at {time.strftime('%H:%M:%S', time.gmtime())} UTC, "
                         f"{len(sent)} live orders events sent so far")
                header = f"    {'user':14}" + "".join(f"{f:>24}" for f in SHOWN)
                self.log(header)
                for j, u in enumerate(users):
                    cells = "".join(f"{self._cell(got[f][j]):>24}" for f in SHOWN)
                    self.log(f"    {u:14}{cells}")
        finally:
            stop.set()
            producer.join(30)

    @staticmethod
    def _cell(value_status: tuple[Any, str]) -> str:
        value, status = value_status
        text = "null" if value is None else str(value)
        return text if status == "present" else f"{text} ({status})"

    def _produce_live(self, users: Sequence[str], stop: threading.Event, sent: list[int]) -> None:
        from skewless.engines.kafka import partition_for
        from skewless.producer.generator import GeneratedRecord
        from skewless.engines.kafka import make_producer

        rng = random.Random()
        producer = make_producer(self.bootstrap, **{"linger.ms": 5})
        open_orders: list[dict[str, Any]] = []
        seq = 0
        while not stop.is_set():
            now = int(time.time() * 1000)
            if open_orders and rng.random() < 0.4:
                order = open_orders.pop(rng.randrange(len(open_orders)))
                order["status"] = "completed" if rng.random() < 0.85 else "cancelled"
            else:
                order = {"user_id": rng.choice(users), "order_id": f"live-{uuid.uuid4().hex[:10]}",
                         "amount": int(rng.lognormvariate(8.0, 1.0)) + 1, "currency": "EUR", "status": "placed"}
                open_orders.append(order)
            payload = {"event_id": f"live-{uuid.uuid4().hex}", **order, "event_time": iso_ms(now)}
            key = order["user_id"].encode()
            rec = GeneratedRecord(seq, "clean", key, json.dumps(payload, separators=(",", ":")).encode(), now,
                                  partition_for(key, 3), payload["event_id"])
            producer.produce(self.source.topic, value=rec.value, key=rec.key, partition=rec.partition, timestamp=now)
            producer.poll(0)
            sent.append(seq)
            seq += 1
            stop.wait(rng.uniform(0.5, 1.5))
        producer.flush(30)

    def consistency(self, users: Sequence[str], cutoff_day: Any, before_live_ms: int) -> None:
        """A small parity check on the demo's data: online now-reads (history + live orders) vs the contract over
        the admitted events, and the training set (the backfill's raw snapshot: the history) vs the contract
        over the offline set."""
        import redis

        from skewless.core.admission import admit
        from skewless.core.schemas import validator
        from skewless.e2e.parity import Expected, ParityReport, historical, online_reader
        from skewless.engines.iceberg_catalog import load_catalog

        raw = read_topic(self.bootstrap, self.source.topic)
        result = admit(raw, self.source, validator(self.source.schema), key_fields=self.view.entity.key_names)
        cutoff = (cutoff_day.toordinal() - day_of(0).toordinal() + 1) * MS_PER_DAY
        exp = Expected(self.view, self.repo.view("customer_profile"), list(result.admitted), list(result.offline), cutoff, [])
        report = ParityReport(SEED)
        now = int(time.time() * 1000)
        got = online_reader(redis.Redis.from_url(self.redis_url), PROJECT, self.repo)(users, None, now)
        for i, u in enumerate(users):
            want = exp.online(u, now, now_read=True)
            for name in self.view.feature_names:
                value, status = got[name][i]
                want_value, want_status = want[name]
                report.add(name, "online-now", value if status in ("present", "stale") else f"<{status}>",
                           want_value if want_status == "present" else f"<{want_status}>")
        # a training row at T needs the daily tiles of every day before T's day: the run of day D (cut-off D+1)
        # covers T < D+2 00:00 UTC. Just after midnight UTC "now" is on D+2 (D is the last day the archive is
        # complete for, allowed lateness included), where the contract answers `incomplete`: check just before.
        T = min(before_live_ms, cutoff + MS_PER_DAY - 1)
        for u, row in zip(users, historical(self.repo, load_catalog(), [(u, T) for u in users])):
            want = exp.offline_row(u, T)
            status = row.get(f"{self.view.name}__status")
            for name in self.view.feature_names:
                report.add(name, "training-duckdb", row.get(name) if status == "present" else f"<{status}>", want[name][0])

        def total(path: str) -> tuple[int, int]:
            cells = [v for (_, p), v in report.tally.items() if p == path]
            return sum(c[0] for c in cells), sum(c[1] for c in cells)

        (n_on, bad_on), (n_tr, bad_tr) = total("online-now"), total("training-duckdb")
        late = sum(1 for d in result.dead_letters if d.reason == "late")
        self.log(f"    {len(users)} users x {len(self.view.feature_names)} features of user_order_stats:")
        self.log(f"      online (Redis) at now {iso_ms(now)} vs the contract over the admitted events: "
                 f"{n_on} values, {bad_on} mismatches")
        self.log(f"      training set (DuckDB) at {iso_ms(T)} vs the contract over the offline set: "
                 f"{n_tr} values, {bad_tr} mismatches")
        self.log(f"      the two sets differ by design only by the {late} late events (kept offline, dead-lettered "
                 "online, docs/semantics.md §6)")
        self.log("      the full proof on random streams, every path and instant kind: `make parity` (docs/parity.md)")

    def run(self) -> None:
        p = self.phases
        p.run("stack up (Kafka, Flink, Redis, raw archive)", self.stack, str)
        info = p.run("history: a year of orders -> Kafka, CRM profiles -> Iceberg", self.history,
                     lambda i: f"{i['records']:,} records")
        p.run("archive: Kafka -> Iceberg raw table", self.archive_caught_up, str)
        p.run("streaming job: Flink session cluster -> Redis", self.streaming_job, str)
        first_ms = info["end_ms"] - 365 * MS_PER_DAY
        day = p.run("backfill: spark-submit batch_jobs/backfill.py", lambda: self.backfill(first_ms),
                    lambda d: f"daily tiles up to {d}, serving rows for cut-off {d + timedelta(days=1)} 00:00 UTC")
        p.run(f"materialize day {day} -> Redis", lambda: self.materialize(day))
        p.run("streaming job catching up on the history", self.stream_caught_up, str)
        users = info["top_users"]
        p.run("training set for the churn_model feature service", lambda: self.training_set(users))
        before_live = int(time.time() * 1000)
        p.run(f"live: new orders stream in for {LIVE_SECONDS} s; online features refreshed", lambda: self.live(users))
        p.run("stream and archive catch up on the live orders", lambda: (self.stream_caught_up(), self.archive_caught_up()))
        sample = info["users"][:20]
        p.run("consistency: online and training vs the contract", lambda: self.consistency(sample, day, before_live))
        total = time.monotonic() - p.t0
        self.log(f"\ndemo done in {total:.0f} s. The stack keeps running (Flink UI http://{config.HOST}:{config.ports().flink_rest}, "
                 "`skewless jobs`, `skewless archive status`).")
        self.log("Stop it with: make down")


def run_demo(log: Log = print) -> int:
    Demo(log).run()
    return 0
