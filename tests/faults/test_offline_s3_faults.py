"""Fault tests (`make test-faults`, marked slow) of the offline path on the cluster topology's offline half (issue
22): s3proxy as the object store, PostgreSQL as the shared Iceberg JDBC catalog, a Spark master with 2 workers, one
set of services for the module (test_offline_s3's stack fixture, free ports, its own state dir).

- a Spark worker (and its executor) killed mid-backfill: the run finishes (or a rerun resumes it); its tables equal
  an undisturbed run's;
- the object store restarted between the archive's commits: every record once in the raw table;
- the catalog database restarted mid-backfill: at every moment the runs log claims only what the tables hold (no
  half-committed run); after it (and a rerun if it failed), the tables equal an undisturbed run's;
- `archive compact` racing the archive's appends on S3: the archive drains, a compaction that lost says so;
  every record once.

The undisturbed run writes the same view into namespace ``undisturbed``, a faulted run into its own namespace:
same run ids and fingerprints, so the tables compare row for row (timing columns aside).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from skewless.config import PROJECT_ROOT
from tests.faults.harness import Stack, wait
from tests.integration.test_offline_s3 import (  # noqa: F401 - offline_stack is the module's stack fixture
    ARCHIVE,
    END,
    START,
    OfflineStack,
    apps_now,
    cli,
    offline_stack,
    produce,
    python,
    secret_values,
    with_closing_events,
    worker_task_counts,
    write_repo,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CHUNK_DAYS = "100"  # 400 days: 4 tile commits, the serving state and rows, the runs log: a fault lands mid-run

# Each table of the view in each namespace: its rows (timing columns aside), sorted, as one JSON document.
TABLES = """
import json, sys
from skewless.core.repo import load_repository
from skewless.engines.iceberg_catalog import load_catalog
from skewless.offline.tables import ViewTables
from pyiceberg.exceptions import NoSuchTableError

defs, name, namespaces = sys.argv[1], sys.argv[2], sys.argv[3:]
view = next(v for v in load_repository(defs).views if v.name == name)
catalog = load_catalog()
VOLATILE = {"seconds", "finished_at", "tiles_snapshot_id", "started_at"}
out = {}
for ns in namespaces:
    tables = ViewTables(ns, view.name, view.version)
    for kind in ("daily_tiles", "serving_state", "serving", "runs"):
        try:
            table = catalog.load_table(tables.ident(kind))
        except NoSuchTableError:
            out[f"{ns}.{kind}"] = None
            continue
        rows = table.scan().to_arrow().to_pylist()
        rows = [{k: str(v) for k, v in r.items() if k not in VOLATILE} for r in rows]
        out[f"{ns}.{kind}"] = sorted(json.dumps(r, sort_keys=True) for r in rows)
print(json.dumps(out))
"""

# An archive of one source in this process, committing ``records``-record batches, printing ``commit <n>`` after
# each raw-table commit and pausing ``pause`` s there (a window to fault between commits); drains and exits.
ARCHIVE_WORKER = """
import sys, threading
from pathlib import Path
from skewless.archive.runner import ArchiveConfig, SourceArchiver
from skewless.core.repo import load_repository
from skewless.engines.iceberg_catalog import load_catalog

defs, name, bootstrap, records, pause = sys.argv[1:6]
view = next(v for v in load_repository(defs).views if v.name == name)
def hook(point, n):
    if point == "after-raw-commit":
        print("commit", n, flush=True)
        threading.Event().wait(float(pause))
config = ArchiveConfig(bootstrap=bootstrap, schemas_dir=Path(defs).parent / "schemas", max_records=int(records),
                       max_interval_s=0.5, fault=hook)
stats = SourceArchiver(view.source, load_catalog(), config).run(drain=True)
print("drained", stats.records, stats.commits, flush=True)
"""

# The raw table's rows as (partition, offset) pairs: the count and the distinct count.
RAW_ROWS = """
import json, sys
from skewless.engines.iceberg_catalog import load_catalog
from skewless.archive.tables import OFFSET_COL, PARTITION_COL
rows = load_catalog().load_table(sys.argv[1]).scan(selected_fields=(PARTITION_COL, OFFSET_COL)).to_arrow()
pairs = list(zip(rows.column(PARTITION_COL).to_pylist(), rows.column(OFFSET_COL).to_pylist()))
print(json.dumps({"rows": len(pairs), "distinct": len(set(pairs))}))
"""

# `archive compact` (rewrite small files, expire every older snapshot) in a loop until the file ``stop`` exists.
COMPACT_LOOP = """
import json, pathlib, sys
from skewless.archive.maintenance import compact
from skewless.core.repo import load_repository
from skewless.engines.iceberg_catalog import load_catalog
defs, name, stop, archive_done = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4])
source = next(v for v in load_repository(defs).views if v.name == name).source
catalog = load_catalog()
done, errors = [], []
while not stop.exists():
    try:
        r = compact(catalog, source, min_files=2, keep_snapshots=1, min_age_s=0)[0]
        if r.files_before:  # a rewrite committed; whether the archive still ran then (the test's marker)
            done.append([r.files_before, r.files_after, not archive_done.exists()])
    except Exception as exc:  # a lost race: reported, must say what happened
        errors.append(f"{type(exc).__name__}: {exc}"[:300])
print(json.dumps({"compactions": done, "errors": errors}))
"""


@dataclass
class Source:
    """A feature repository with view ``name`` over ``raw.orders_<name>`` and its records on topic ``t_<name>``."""

    defs: Path
    name: str
    topic: str
    records: list[dict]

    @property
    def raw_table(self) -> str:
        return f"raw.orders_{self.name}"


def make_source(tmp: Path, bootstrap: str, seed: int, users: int = 8, n: int = 500) -> Source:
    from datetime import date

    from skewless.core.timeutil import day_start_ms
    from skewless.e2e.pipeline import create_topic
    from tests.integration.test_batch import make_records

    name = f"fx_{uuid.uuid4().hex[:6]}"
    defs = write_repo(tmp, name)
    end = day_start_ms(date.fromisoformat(END))
    records = with_closing_events(make_records(seed, end, users=users, n=n), end)
    create_topic(bootstrap, f"t_{name}", 3, retention_ms=-1)
    produce(bootstrap, f"t_{name}", records)
    return Source(defs, name, f"t_{name}", records)


@pytest.fixture(scope="module")
def archived(offline_stack: OfflineStack, kafka_bootstrap: str,  # noqa: F811 - the imported fixture
             tmp_path_factory: pytest.TempPathFactory) -> Source:
    """One source archived into the S3 warehouse: the raw table every backfill here reads."""
    source = make_source(tmp_path_factory.mktemp("archived"), kafka_bootstrap, seed=5)
    done = python(offline_stack.env, ARCHIVE, str(source.defs), source.name, kafka_bootstrap)
    assert done.returncode == 0, done.stderr[-4000:]
    return source


def backfill(env: dict[str, str], source: Source, namespace: str) -> subprocess.Popen[str]:
    """`skewless backfill` of the source's view over START..END on the profile's standalone master (a child)."""
    argv = [sys.executable, "-m", "skewless.cli", "backfill", "--repo", str(source.defs), "--view", source.name,
            "--start", START, "--end", END, "--driver-memory", "768m", "--namespace", namespace,
            "--chunk-days", CHUNK_DAYS]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=PROJECT_ROOT)


def finish(proc: subprocess.Popen[str], timeout: float = 600) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def tables(env: dict[str, str], source: Source, *namespaces: str) -> dict[str, Any]:
    res = python(env, TABLES, str(source.defs), source.name, *namespaces)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def same_as(got: dict[str, Any], namespace: str, reference: str = "undisturbed") -> list[str]:
    """Tables of ``namespace`` whose rows differ from the ``reference`` namespace's."""
    kinds = ("daily_tiles", "serving_state", "serving", "runs")
    return [k for k in kinds if got.get(f"{namespace}.{k}") != got.get(f"{reference}.{k}")]


@pytest.fixture(scope="module")
def undisturbed(offline_stack: OfflineStack, archived: Source) -> str:  # noqa: F811
    """The backfill without a fault, into namespace ``undisturbed``."""
    rc, out = finish(backfill(offline_stack.env, archived, "undisturbed"))
    assert rc == 0, out[-4000:]
    return "undisturbed"


def offline_services(stack: OfflineStack) -> Stack:
    """The fault harness's view of the stack (its record of pids in ``stack.json``)."""
    return Stack(stack.state.parent)


def test_spark_worker_killed_mid_backfill(offline_stack: OfflineStack, archived: Source,  # noqa: F811
                                         undisturbed: str) -> None:
    """SIGKILL a worker's process group (the worker and its executor: a lost machine) once its executor runs the
    backfill's tasks: the driver reschedules them on the other worker and the run finishes (a failed run would be
    rerun, resuming); the tables equal the undisturbed run's. The worker is then started again in place."""
    from skewless.stack.offline import SparkCluster
    from skewless.stack.procs import pid_alive

    env, state = offline_stack.env, offline_stack.state
    services = offline_services(offline_stack)
    (master, *workers) = [p["pid"] for p in services.entry("spark-cluster")["pids"]]
    before = apps_now(state)
    proc = backfill(env, archived, "worker_killed")
    wait(lambda: any(n > 0 for n in worker_task_counts(state, before).values()) or proc.poll() is not None, 300,
         "the backfill's first task on a worker", interval_s=0.1)
    counts = worker_task_counts(state, before)
    assert proc.poll() is None, "the backfill ended before a worker could be killed"
    victim = max(counts, key=lambda w: counts[w])  # "worker-<i>"
    i = int(victim.rsplit("-", 1)[1])
    pid = workers[i - 1]
    os.killpg(pid, signal.SIGKILL)
    wait(lambda: not pid_alive(pid), 30, f"worker {i} to die")
    rc, out = finish(proc)
    resumed = None
    if rc != 0:  # the run failed: a rerun resumes it (chunks logged are skipped)
        resumed = finish(backfill(env, archived, "worker_killed"))
    spark = SparkCluster(port=int(env["SKEWLESS_SPARK_MASTER_PORT"]))
    new = spark.start_worker(i, state, state / "logs")
    services.replace_pid("spark-cluster", pid, new)
    wait(spark.healthy, 120, "both Spark workers alive again")
    print({"killed": victim, "tasks_at_kill": counts, "rc": rc, "resumed": resumed and resumed[0]}, out[-1500:])
    assert resumed is None or resumed[0] == 0, resumed[1][-3000:] if resumed else ""
    assert "done in" in (out if resumed is None else resumed[1])
    got = tables(env, archived, undisturbed, "worker_killed")
    assert all(got[f"{undisturbed}.{k}"] for k in ("daily_tiles", "serving", "runs")), got.keys()
    assert same_as(got, "worker_killed") == [], same_as(got, "worker_killed")


def runs_log_claims_hold(got: dict[str, Any], namespace: str) -> list[str]:
    """What the runs log of ``namespace`` claims and its tables do not hold: each logged day's tile rows (the
    count it logged), the serving rows of a logged cut-off."""
    runs = [json.loads(r) for r in got.get(f"{namespace}.runs") or []]
    tiles = [json.loads(r) for r in got.get(f"{namespace}.daily_tiles") or []]
    serving = [json.loads(r) for r in got.get(f"{namespace}.serving") or []]
    per_day: dict[str, int] = {}
    for t in tiles:
        per_day[t["day"]] = per_day.get(t["day"], 0) + 1
    per_cutoff: dict[str, int] = {}
    for s in serving:
        per_cutoff[s["cutoff_ms"]] = per_cutoff.get(s["cutoff_ms"], 0) + 1
    wrong = [f"day {r['day']}: logged {r['tile_rows']} tile rows, the table has {per_day.get(r['day'], 0)}"
             for r in runs if int(r["tile_rows"]) != per_day.get(r["day"], 0) and r["serving_rows"] == "None"]
    wrong += [f"cut-off {r['cutoff_ms']}: logged {r['serving_rows']} serving rows, the table has "
              f"{per_cutoff.get(r['cutoff_ms'], 0)}" for r in runs
              if r["serving_rows"] != "None" and int(r["serving_rows"]) != per_cutoff.get(r["cutoff_ms"], 0)]
    return wrong


def test_catalog_database_restarted_mid_backfill(offline_stack: OfflineStack, archived: Source,  # noqa: F811
                                                 undisturbed: str) -> None:
    """Restart PostgreSQL (fast shutdown: connections cut, a few seconds down) after the backfill's first chunk
    committed and before its last: the runs log never claims what the tables do not hold; the run finishes, or
    fails with a clear error and a rerun resumes it; then the tables equal the undisturbed run's."""
    env, state = offline_stack.env, offline_stack.state
    services = offline_services(offline_stack)
    proc = backfill(env, archived, "catalog_restarted")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    wait(lambda: any(" tile rows, " in line for line in lines) or proc.poll() is not None, 420,
         "the backfill's first committed chunk", interval_s=0.1)
    assert proc.poll() is None, "".join(lines)[-3000:]
    timings = restart_catalog_db(services, offline_stack)
    proc.wait(600)
    reader.join(30)
    out = "".join(lines)
    after_fault = tables(env, archived, "catalog_restarted")
    resumed = None
    if proc.returncode != 0:
        resumed = finish(backfill(env, archived, "catalog_restarted"))
    errors = [line for line in out.splitlines() if "Error" in line or "Exception" in line or "backfill" in line]
    print({"restart": timings, "rc": proc.returncode, "resumed": resumed and resumed[0]}, *errors[:20], sep="\n")
    assert runs_log_claims_hold(after_fault, "catalog_restarted") == [], runs_log_claims_hold(after_fault, "catalog_restarted")
    if proc.returncode != 0:  # a clear error, not a JVM stack dump
        assert "Traceback" not in out and "Py4JJavaError" not in out, out[-3000:]
    assert resumed is None or resumed[0] == 0, resumed[1][-3000:] if resumed else ""
    got = tables(env, archived, undisturbed, "catalog_restarted")
    assert same_as(got, "catalog_restarted") == [], same_as(got, "catalog_restarted")


def restart_service(services: Stack, name: str, service: Any, stop: Any, down_s: float = 3.0) -> dict[str, float]:
    """Stop the stack's service ``name`` with ``stop(pid)``, keep it down ``down_s``, start it again as `stack up`
    does (same port, same data), record its new pid and wait until it is healthy."""
    (old,) = [p["pid"] for p in services.entry(name)["pids"]]
    t0 = time.monotonic()
    stop(old)
    time.sleep(down_s)
    (new,) = service.start(services.state, services.state / "logs").pids
    services.replace_pid(name, old, new)
    wait(service.healthy, 60, f"{name} healthy again", interval_s=0.1)
    return {"down_s": round(time.monotonic() - t0, 1)}


def restart_catalog_db(services: Stack, stack: OfflineStack) -> dict[str, float]:
    """PostgreSQL's fast shutdown (its clients' connections cut), then started again."""
    from skewless.stack.base import Started
    from skewless.stack.offline import CatalogDatabase

    db = CatalogDatabase(port=int(stack.env["SKEWLESS_POSTGRES_PORT"]), state_dir=stack.state)
    return restart_service(services, "catalog-db", db,
                           lambda pid: db.stop(Started("catalog-db", (pid,), {}, stack.state / "logs" / "catalog-db.log")))


def restart_object_store(services: Stack, stack: OfflineStack) -> dict[str, float]:
    from skewless.stack.offline import ObjectStore
    from skewless.stack.procs import stop_pids

    store = ObjectStore(port=int(stack.env["SKEWLESS_S3_PORT"]), state_dir=stack.state)
    return restart_service(services, "object-store", store, lambda pid: stop_pids([pid], timeout_s=30.0))


def raw_counts(env: dict[str, str], source: Source) -> dict[str, int]:
    res = python(env, RAW_ROWS, source.raw_table)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def archive_worker(env: dict[str, str], source: Source, bootstrap: str, records: int, pause_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", ARCHIVE_WORKER, str(source.defs), source.name, bootstrap,
                             str(records), str(pause_s)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=PROJECT_ROOT)


def test_object_store_restarted_between_archive_commits(offline_stack: OfflineStack,  # noqa: F811
                                                       kafka_bootstrap: str, tmp_path: Path) -> None:
    """Restart s3proxy (same port and data) while the archive pauses after its first commit, its next commit
    coming while the store is down: the archive retries through the outage and drains; every record once."""
    env = offline_stack.env
    services = offline_services(offline_stack)
    source = make_source(tmp_path, kafka_bootstrap, seed=11)
    worker = archive_worker(env, source, kafka_bootstrap, records=100, pause_s=0.5)
    assert worker.stdout is not None
    lines = []
    for line in worker.stdout:
        lines.append(line)
        if line.startswith("commit 1"):
            break
    timings = restart_object_store(services, offline_stack)
    lines.extend(worker.stdout)
    rc = worker.wait(300)
    out = "".join(lines)
    print({"restart": timings, "rc": rc}, out[-2500:])
    commits = sum(line.startswith("commit") for line in lines)
    assert rc == 0 and commits >= 3, out[-3000:]  # it rode through the outage, committing after it
    assert raw_counts(env, source) == {"rows": len(source.records), "distinct": len(source.records)}


def test_compaction_racing_the_archive_appends_on_s3(offline_stack: OfflineStack,  # noqa: F811
                                                      kafka_bootstrap: str, tmp_path: Path) -> None:
    """`archive compact` in a loop (rewrite, expire all older snapshots) while the archive commits 100 records
    every ~0.3 s on S3 through the PostgreSQL catalog: the archive drains (its lost races retried), a compaction
    that lost says so, a compaction committed mid-archive; every record once."""
    env = offline_stack.env
    source = make_source(tmp_path, kafka_bootstrap, seed=13, n=1500)
    stop = tmp_path / "stop"
    worker = archive_worker(env, source, kafka_bootstrap, records=100, pause_s=0.3)
    assert worker.stdout is not None
    first = worker.stdout.readline()
    assert first.startswith("commit"), first
    archive_done = tmp_path / "archive-done"
    compactor = subprocess.Popen([sys.executable, "-c", COMPACT_LOOP, str(source.defs), source.name, str(stop),
                                  str(archive_done)],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
    rest = worker.stdout.read()
    rc = worker.wait(300)
    archive_done.touch()
    time.sleep(2)  # a compaction once the archive stopped appending
    stop.touch()
    c_out, c_err = compactor.communicate(timeout=300)
    print({"rc": rc}, rest[-2000:], c_out[-2000:], c_err[-2000:])
    assert rc == 0, rest[-3000:]
    assert compactor.returncode == 0, c_err[-3000:]
    race = json.loads(c_out.strip().splitlines()[-1])
    assert any(while_archiving for _, _, while_archiving in race["compactions"]), race  # raced mid-archive
    assert all("concurrent" in e.lower() or "conflict" in e.lower() for e in race["errors"]), race["errors"]
    assert raw_counts(env, source) == {"rows": len(source.records), "distinct": len(source.records)}
    secrets = secret_values(offline_stack.state)
    assert not any(s in rest + c_out + c_err for s in secrets)


def test_bad_profile_for_the_archive_run_and_materialize(offline_stack: OfflineStack, tmp_path: Path) -> None:  # noqa: F811
    """test_offline_s3's broken profiles (wrong endpoint, missing bucket, bad credentials, unreachable catalog) for
    `archive run` and `materialize` (the smoke test covers backfill, compact and training-set): exit 2, one line
    naming the component and the fix, within the profile's timeouts; no secret said; nothing written."""
    from skewless.stack.base import free_port
    from tests.integration.test_offline_s3 import assert_bad_profiles_refused

    free = free_port()
    assert_bad_profiles_refused(offline_stack, tmp_path, {
        "archive run": ("archive", "run", "--source", "orders", "--drain", "--bootstrap", f"127.0.0.1:{free}"),
        "materialize": ("materialize", "--view", "user_order_stats", "--day", "2024-01-01",
                        "--redis-url", f"redis://127.0.0.1:{free}/0"),
    }, free)
