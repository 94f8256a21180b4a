"""The offline path on the cluster topology's offline half (issue 22), the `make test` smoke: the object store
(s3proxy), PostgreSQL as the shared Iceberg JDBC catalog and a Spark master with 2 workers, started through the
stack code on free ports of 127.0.0.1, with the profile `stack up --topology cluster` writes.

One scenario, each step a process reading only that profile (as a team's commands would): the archive commits
Kafka records into the ``s3://`` warehouse; `skewless backfill` runs on the standalone master with tasks on both
workers; both training engines equal the oracle; `archive compact` rewrites, expires and deletes old metadata
files on S3; every table's metadata, manifest lists, manifests and data files are ``s3://`` paths only; no
credential in any argv, log or output. Bad input (wrong endpoint, missing bucket, bad credentials, unreachable
catalog) on the archive, the backfill and a training set: one line naming the component and the fix, and
nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from skewless.config import PROJECT_ROOT
from skewless.stack.base import free_port
from skewless.stack.cluster import free_cluster_ports_env

pytestmark = pytest.mark.integration

WAREHOUSE_PREFIX = "s3://skewless-warehouse/warehouse/"
END = "2024-03-01"
START = "2023-01-27"  # END - 399 days: every window of the view is covered from START + 366 days on
STEP_TIMEOUT_S = 420

UP = """
import sys
from skewless.stack.flink import FlinkSessionCluster
from skewless.stack.manager import up
from skewless.stack.offline import FLINK_STATE_URI, CatalogDatabase, ObjectStore, SparkCluster
store = ObjectStore()
flink = FlinkSessionCluster(tm_memory="1280m", slots=1, state_store=lambda state: (store.target(state), FLINK_STATE_URI))
sys.exit(up([store, CatalogDatabase(), SparkCluster(), flink], topology="cluster"))
"""

# A small unbounded job with checkpoints every second (datagen -> blackhole), for the Flink session cluster.
FLINK_JOB = """
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.table import StreamTableEnvironment

env = StreamExecutionEnvironment.get_execution_environment()
env.enable_checkpointing(1000)
tables = StreamTableEnvironment.create(env)
tables.execute_sql("CREATE TABLE src (x BIGINT) WITH ('connector' = 'datagen', 'rows-per-second' = '20')")
tables.execute_sql("CREATE TABLE snk (x BIGINT) WITH ('connector' = 'blackhole')")
tables.execute_sql("INSERT INTO snk SELECT x FROM src")
"""


@dataclass
class OfflineStack:
    env: dict[str, str]  # the profile (SKEWLESS_CONFIG) and nothing else that names a catalog
    state: Path
    profile: Path
    up_output: str


def run(env: dict[str, str], argv: list[str], timeout: float = STEP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT)


def python(env: dict[str, str], code: str, *args: str, timeout: float = STEP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return run(env, [sys.executable, "-c", code, *args], timeout)


def cli(env: dict[str, str], *args: str, timeout: float = STEP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return run(env, [sys.executable, "-m", "skewless.cli", *args], timeout)


@pytest.fixture(scope="module")
def offline_stack() -> Iterator[OfflineStack]:
    """s3proxy, PostgreSQL and Spark (master + 2 workers) through `skewless.stack.manager.up`, the cluster profile
    written; a state dir others may traverse (PostgreSQL runs as the postgres user); `stack down` after."""
    root = Path(tempfile.mkdtemp(prefix="skewless-offline-s3-"))
    root.chmod(0o711)
    env = {**os.environ, "SKEWLESS_STATE_DIR": str(root / "state"), **free_cluster_ports_env()}
    for name in ("SKEWLESS_LOG_DIR", "SKEWLESS_CONFIG", "SKEWLESS_PROFILE", "SKEWLESS_SPARK_MASTER",
                 "SKEWLESS_CATALOG_DB", "SKEWLESS_WAREHOUSE"):
        env.pop(name, None)
    # the scenario's feature repository imports this suite's view helper (REPO_DEFS): every child process, the
    # Spark driver that `skewless backfill` starts included, finds `tests` as the suite's own process does
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    try:
        up = python(env, UP, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        state = root / "state"
        profile = state / "cluster-profile.yaml"
        yield OfflineStack({**env, "SKEWLESS_CONFIG": str(profile)}, state, profile, up.stdout)
    finally:
        cli(env, "stack", "down", timeout=120)
        shutil.rmtree(root, ignore_errors=True)


# --- the scenario's steps (child processes with the profile) -----------------------------------------------

REPO_DEFS = """
from tests.integration.test_batch import make_view

orders_s3 = make_view({name!r}, {table!r})
"""

ARCHIVE = """
import sys
from pathlib import Path
from skewless.archive.runner import ArchiveConfig, SourceArchiver
from skewless.core.repo import load_repository
from skewless.engines.iceberg_catalog import load_catalog

defs, name, bootstrap = sys.argv[1:]
repo = load_repository(defs)
view = next(v for v in repo.views if v.name == name)
config = ArchiveConfig(bootstrap=bootstrap, schemas_dir=Path(defs).parent / "schemas", max_records=400,
                       max_interval_s=0.5)
stats = SourceArchiver(view.source, load_catalog(), config).run(drain=True)
print("archived", stats.raw_rows if hasattr(stats, "raw_rows") else stats)
"""

# Both engines on the S3 warehouse (the Spark one on the standalone master) against the oracle at instants where
# every window is covered by the backfill's tiles; then `archive compact` on S3 (old metadata files deleted through
# the FileIO) and the paths every table's metadata holds. Prints one JSON document.
TRAIN_AND_INSPECT = """
import json, os, pathlib, random, sys
from datetime import timezone
import pandas as pd
import pyarrow.fs as pafs
from skewless import config
from skewless.archive.maintenance import compact, referenced_files
from skewless.core import oracle
from skewless.core.repo import load_repository
from skewless.core.timeutil import MS_PER_DAY, day_start_ms, from_epoch_ms
from skewless.engines.iceberg_catalog import load_catalog
from skewless.engines.object_store import s3_filesystem
from skewless.engines.spark_session import spark_session
from skewless.store import FeatureStore
from tests.integration.test_batch import offline_events

defs, name, records_file, start_ms, cutoff = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
repo = load_repository(defs)
view = next(v for v in repo.views if v.name == name)
records = json.loads(open(records_file).read())
events = [e for e in offline_events(records, view) if e["event_time"] >= start_ms]
users = sorted({e["user_id"] for e in events})
rng = random.Random(7)
first_full = start_ms + 366 * MS_PER_DAY
times = sorted({e["event_time"] for e in events if first_full <= e["event_time"] < cutoff})
instants = [cutoff - 1, first_full] + rng.sample(times, 25) + [t + 1 for t in rng.sample(times, 10)]
rows = [{"user_id": rng.choice(users), "event_timestamp": from_epoch_ms(t).replace(tzinfo=None)} for t in instants]
entity_df = pd.DataFrame(rows)
expected = []
for u, t in zip(entity_df["user_id"], instants):
    row = dict(oracle.feature_row(view, events, (u,), t))
    row[f"{view.name}__status"] = "present"
    expected.append(row)

catalog = load_catalog()
spark = spark_session("offline-s3-training", master=config.spark_master("local[1]"), driver_memory="768m",
                      extra_conf={"spark.executor.memory": "640m", "spark.ui.showConsoleProgress": "false"})
store = FeatureStore(repo, catalog=catalog, spark=spark)
# the driver's JVM (a child of this process, started by PySpark's spark-submit): no credential in its argv
shared = config.shared_catalog()
secrets = [shared.password, shared.s3.access_key_id, shared.s3.secret_access_key]
children = [p for p in pathlib.Path("/proc").glob("[0-9]*")
            if (p / "stat").exists() and (p / "stat").read_text().rsplit(")", 1)[-1].split()[1] == str(os.getpid())]
argv_secret = any(s in (p / "cmdline").read_bytes().decode(errors="replace") for p in children for s in secrets)
mismatches = {}
for engine in ("duckdb", "spark"):
    got = store.get_historical_features(entity_df, [view.name], engine=engine, progress=False)
    columns = [c for c in got.columns if c not in entity_df.columns]
    out = []
    for rec in got[columns].astype(object).to_dict("records"):
        out.append({k: (None if v is pd.NA or (isinstance(v, float) and v != v) else v) for k, v in rec.items()})
    bad = [(i, {k: (str(g.get(k)), str(w.get(k))) for k in w if g.get(k) != w.get(k)})
           for i, (g, w) in enumerate(zip(out, expected)) if g != w]
    mismatches[engine] = {"rows": len(out), "bad": bad[:5], "n_bad": len(bad)}
    if engine == "duckdb":  # what `skewless training-set --entities s3://...` must write
        got.to_parquet(sys.argv[6])
# the entity rows as a Parquet object on the store, for the CLI
import pyarrow as pa, pyarrow.parquet as pq
pq.write_table(pa.Table.from_pandas(entity_df, preserve_index=False), "skewless-warehouse/entities/rows.parquet",
               filesystem=s3_filesystem(config.s3_target()))
master = spark.sparkContext.master
spark.stop()

# archive compact on S3: keep one previous metadata version in the log, so older metadata files are garbage
raw = catalog.load_table(view.source.table)
raw.transaction().set_properties({"write.metadata.previous-versions-max": "1"}).commit_transaction()
fs = s3_filesystem(config.s3_target())
meta_dir = raw.metadata_location.removeprefix("s3://").rsplit("/", 1)[0]
def metadata_json():
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(meta_dir)) if i.base_name.endswith(".metadata.json"))
before_rows = raw.scan().to_arrow().num_rows
before_meta = metadata_json()
results = compact(catalog, view.source, min_files=2, keep_snapshots=1, min_age_s=0)
raw = catalog.load_table(view.source.table)
kept = {e.metadata_file.rsplit("/", 1)[-1] for e in raw.metadata.metadata_log} | {raw.metadata_location.rsplit("/", 1)[-1]}

paths = {}
for namespace in catalog.list_namespaces():
    for ident in catalog.list_tables(namespace):
        table = catalog.load_table(ident)
        paths[".".join(ident)] = [table.metadata_location, table.location(),
                                  *(e.metadata_file for e in table.metadata.metadata_log),
                                  *referenced_files(table, table.metadata.snapshots)]
print(json.dumps({"mismatches": mismatches, "master": master, "paths": paths, "argv_secret": argv_secret,
                  "jvm_children": len(children),
                  "compact": {"rows_before": before_rows, "rows_after": raw.scan().to_arrow().num_rows,
                              "meta_before": before_meta, "meta_after": metadata_json(), "kept": sorted(kept),
                              "snapshots": len(raw.metadata.snapshots),
                              "rewritten": results[0].partitions_rewritten, "deleted": results[0].files_deleted}}))
"""


def produce(bootstrap: str, topic: str, records: list[dict]) -> None:
    """Produce the records at their partition, offset order and Kafka timestamp."""
    from confluent_kafka import Producer

    errors: list = []
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
    for r in records:
        producer.produce(topic, value=r["value"].encode(), key=json.loads(r["value"])["user_id"].encode(),
                         partition=r["partition"], timestamp=r["timestamp_ms"],
                         on_delivery=lambda err, _msg: errors.append(err) if err else None)
        producer.poll(0)
    assert producer.flush(60) == 0 and not errors, errors[:3]


def with_closing_events(records: list[dict], end_day_ms: int) -> list[dict]:
    """The records plus one event per partition a day after the cut-off, so the archive's progress (the minimum
    over partitions) passes the backfill's gate, as a live topic's would."""
    from skewless.core.timeutil import MS_PER_DAY, iso_ms

    out = list(records)
    ts = end_day_ms + 2 * MS_PER_DAY
    for p in (0, 1, 2):
        offset = 1 + max((r["offset"] for r in records if r["partition"] == p), default=-1)
        value = {"event_id": f"close-{p}", "user_id": f"u{100 + p}", "order_id": "o-close", "amount": 1,
                 "currency": "EUR", "status": "placed", "event_time": iso_ms(ts)}
        out.append({"partition": p, "offset": offset, "timestamp_ms": ts, "value": json.dumps(value)})
    return out


def worker_task_counts(state: Path, before: dict[str, set[str]]) -> dict[str, int]:
    """Tasks the executors of applications started since ``before`` ran, per worker (their executor logs)."""
    counts = {}
    for worker in sorted((state / "spark-cluster").glob("worker-*")):
        apps = {p.name for p in worker.glob("app-*")} - before.get(worker.name, set())
        counts[worker.name] = sum(f.read_text(errors="replace").count("Running task")
                                  for app in apps for f in (worker / app).glob("*/stderr"))
    return counts


def apps_now(state: Path) -> dict[str, set[str]]:
    return {w.name: {p.name for p in w.glob("app-*")} for w in (state / "spark-cluster").glob("worker-*")}


def secret_values(state: Path) -> list[str]:
    return [f.read_text().strip() for f in (state / "secrets").iterdir()]


def test_archive_backfill_and_training_sets_on_s3(offline_stack: OfflineStack, kafka_bootstrap: str,
                                                   tmp_path: Path) -> None:
    from datetime import date

    from skewless.core.timeutil import day_start_ms
    from skewless.e2e.pipeline import create_topic
    from batch_jobs.runner import cutoff_ms
    from tests.integration.test_batch import make_records

    env, state = offline_stack.env, offline_stack.state
    name = f"s3_{uuid.uuid4().hex[:6]}"
    defs, schemas = tmp_path / "repo" / "defs", tmp_path / "repo" / "schemas"
    defs.mkdir(parents=True)
    schemas.mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "schemas" / "orders.schema.json", schemas / "orders.schema.json")
    (defs / "views.py").write_text(REPO_DEFS.format(name=name, table=f"raw.orders_{name}"))
    end = date.fromisoformat(END)
    records = with_closing_events(make_records(5, day_start_ms(end)), day_start_ms(end))
    create_topic(kafka_bootstrap, f"t_{name}", 3, retention_ms=-1)
    produce(kafka_bootstrap, f"t_{name}", records)
    records_file = tmp_path / "records.json"
    records_file.write_text(json.dumps(records))

    # 1. the archive commits into the s3:// warehouse through the PostgreSQL catalog
    archived = python(env, ARCHIVE, str(defs), name, kafka_bootstrap)
    assert archived.returncode == 0, archived.stderr[-4000:]

    # 2. the backfill, spark-submit to the standalone master of the profile (archive-gated: no --force)
    before = apps_now(state)
    backfill = cli(env, "backfill", "--repo", str(defs), "--view", name, "--start", START, "--end", END,
                   "--driver-memory", "768m")
    assert backfill.returncode == 0, backfill.stdout[-3000:] + backfill.stderr[-4000:]
    spark_base = int(env["SKEWLESS_SPARK_MASTER_PORT"])
    assert f"on spark://127.0.0.1:{spark_base}" in backfill.stdout, backfill.stdout
    tasks = worker_task_counts(state, before)
    assert set(tasks) == {"worker-1", "worker-2"} and all(n > 0 for n in tasks.values()), tasks

    # 3. training sets by both engines on the S3 warehouse equal the oracle; compaction on S3; the paths
    inspect = python(env, TRAIN_AND_INSPECT, str(defs), name, str(records_file),
                     str(day_start_ms(date.fromisoformat(START))), str(cutoff_ms(end)), str(tmp_path / "duckdb.parquet"))
    assert inspect.returncode == 0, inspect.stderr[-5000:]
    result = json.loads(inspect.stdout.strip().splitlines()[-1])
    for engine, m in result["mismatches"].items():
        assert m["rows"] == 37 and m["n_bad"] == 0, (engine, m)
    assert result["master"] == f"spark://127.0.0.1:{spark_base}"
    # the CLI with its entity rows on the object store writes what the DuckDB engine gave above
    out = tmp_path / "train.parquet"
    train = cli(env, "training-set", "--repo", str(defs), "--features", name, "--quiet",
                "--entities", "s3://skewless-warehouse/entities/rows.parquet", "--out", str(out))
    assert train.returncode == 0, train.stderr[-3000:]
    import pandas as pd

    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(tmp_path / "duckdb.parquet"), check_dtype=False)
    assert result["jvm_children"] >= 1 and not result["argv_secret"]  # PySpark's driver JVM: no credential in argv
    compacted = result["compact"]
    assert compacted["rows_after"] == compacted["rows_before"] > 0 and compacted["rewritten"] > 0
    assert compacted["snapshots"] == 1
    # older metadata files, out of the metadata log, were deleted on the object store (not only locally)
    assert len(compacted["meta_before"]) > len(compacted["kept"])
    assert set(compacted["meta_after"]) == set(compacted["kept"]), compacted

    # every table (raw, dead letters, tiles, serving, runs log) holds only s3:// paths of the warehouse
    tables = result["paths"]
    assert any(t.startswith("raw.") for t in tables) and len(tables) >= 4, sorted(tables)
    for table, paths in tables.items():
        assert paths and all(p.startswith(WAREHOUSE_PREFIX) for p in paths), (table, [p for p in paths
                                                                                    if not p.startswith(WAREHOUSE_PREFIX)])

    # credentials: never in the output of any step, a log, nor the argv of a running process
    secrets = secret_values(state)
    said = (archived.stdout + archived.stderr + backfill.stdout + backfill.stderr + inspect.stdout + inspect.stderr
            + train.stdout + train.stderr)
    logs = "".join(f.read_text(errors="replace") for f in state.rglob("*") if f.is_file() and f.suffix in (".log", "")
                   and "secrets" not in f.parts and f.stat().st_size < 50_000_000 and "data" not in f.parts)
    assert not any(s in said or s in logs for s in secrets)
    argvs = [p.read_bytes().decode(errors="replace") for p in Path("/proc").glob("[0-9]*/cmdline") if p.exists()]
    assert not any(s in a for s in secrets for a in argvs)


def bad_offline_cases(good: dict, free: int) -> dict[str, tuple[dict, dict[str, str], str]]:
    """Broken copies of a cluster profile's ``good`` sections (``free``: a port nothing listens on): override,
    extra environment, the kernel of the one-line message."""
    return {
        "wrong endpoint": ({"object_store": {**good["object_store"], "endpoint": f"http://127.0.0.1:{free}"}}, {},
                           f"object store http://127.0.0.1:{free}: no S3 server answers"),
        "missing bucket": ({"catalog": {**good["catalog"], "warehouse": "s3://no-such-bucket/wh"}}, {},
                           "no bucket 'no-such-bucket'"),
        "bad credentials": ({"object_store": {**good["object_store"], "secret_access_key": {"env": "WRONG_S3_KEY"}}},
                            {"WRONG_S3_KEY": "not-the-key"}, "the credentials were refused"),
        "unreachable catalog": ({"catalog": {**good["catalog"], "uri": f"postgresql://127.0.0.1:{free}/iceberg_catalog"}},
                                {}, f"catalog database postgresql://127.0.0.1:{free}/iceberg_catalog: cannot connect"),
    }


def test_bad_object_store_or_catalog_is_one_line_and_writes_nothing(offline_stack: OfflineStack, tmp_path: Path) -> None:
    """Each broken profile, for the backfill, the archive's compaction and a training set: exit 2, one line on
    stderr naming the component and the fix, no secret, no JVM started, the object store's files unchanged."""
    import pandas as pd
    import yaml

    good = yaml.safe_load(offline_stack.profile.read_text())["profiles"]["cluster"]
    data = offline_stack.state / "object-store" / "data"
    stored_before = sorted(str(p) for p in data.rglob("*"))
    secrets = secret_values(offline_stack.state)
    entities = tmp_path / "entities.parquet"
    pd.DataFrame({"user_id": ["u1"], "event_timestamp": [pd.Timestamp("2024-02-01")]}).to_parquet(entities)
    commands = {
        "backfill": ("backfill", "--view", "user_order_stats", "--start", "2024-01-01", "--end", "2024-01-02"),
        "archive compact": ("archive", "compact", "--source", "orders"),
        "training-set": ("training-set", "--features", "user_order_stats", "--entities", str(entities),
                         "--out", str(tmp_path / "out.parquet")),
    }
    for case, (override, extra_env, message) in bad_offline_cases(good, free_port()).items():
        bad = tmp_path / f"bad-{case.replace(' ', '-')}.yaml"
        bad.write_text(yaml.safe_dump({"default_profile": "cluster", "profiles": {"cluster": {**good, **override}}}))
        for command, argv in commands.items():
            res = cli(offline_stack.env | {"SKEWLESS_CONFIG": str(bad)} | extra_env, *argv, timeout=90)
            lines = res.stderr.strip().splitlines()
            assert res.returncode == 2 and len(lines) == 1, (case, command, res.stdout[-2000:], res.stderr[-3000:])
            assert message in lines[0] and "fix" in lines[0], (case, command, lines[0])
            assert not any(s in res.stderr + res.stdout for s in secrets), (case, command)
    assert not (tmp_path / "out.parquet").exists()
    assert sorted(str(p) for p in data.rglob("*")) == stored_before  # nothing half-written on the object store


def rest(url: str, method: str = "GET", body: dict | None = None) -> dict:
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


def test_flink_checkpoints_and_savepoints_go_to_the_object_store(offline_stack: OfflineStack, tmp_path: Path) -> None:
    """The session cluster configured with the object store (Flink's S3 plugin, pinned) writes a job's
    checkpoints and its stop-with-savepoint under s3://skewless-warehouse/flink/; the objects are on s3proxy."""
    import time

    from skewless.stack.flink import FlinkSessionCluster

    state = offline_stack.state
    flink = FlinkSessionCluster(rest_port=int(offline_stack.env["SKEWLESS_FLINK_REST_PORT"]), state_dir=state,
                                log_dir=state / "logs")
    script = tmp_path / "checkpointed_job.py"
    script.write_text(FLINK_JOB)
    job = flink.submit_python_job(script, timeout_s=240)
    base = f"{flink.rest_url}/jobs/{job}"
    deadline, completed = time.monotonic() + 180, None
    while time.monotonic() < deadline and completed is None:
        completed = (rest(f"{base}/checkpoints").get("latest") or {}).get("completed")
        time.sleep(1)
    assert completed, rest(f"{base}/checkpoints")
    assert completed["external_path"].startswith(f"s3://skewless-warehouse/flink/checkpoints/{job}/chk-"), completed
    stored = state / "object-store" / "data" / "skewless-warehouse" / "flink"
    found, deadline = [], time.monotonic() + 20  # a newer checkpoint subsumes (deletes) an older one: look a while
    while not found and time.monotonic() < deadline:
        found = list((stored / "checkpoints" / job).glob("chk-*/_metadata"))
        time.sleep(0.2)
    assert found, sorted(str(p) for p in stored.rglob("*"))
    trigger = rest(f"{base}/stop", "POST", {"drain": False})["request-id"]
    deadline, status = time.monotonic() + 120, {}
    while time.monotonic() < deadline and status.get("status", {}).get("id") != "COMPLETED":
        status = rest(f"{base}/savepoints/{trigger}")
        time.sleep(1)
    location = status["operation"].get("location")
    assert location and location.startswith("s3://skewless-warehouse/flink/savepoints/savepoint-"), status
    assert (stored / "savepoints" / location.rsplit("/", 1)[-1] / "_metadata").exists()
    conf = (state / "flink" / "conf" / "config.yaml").read_text()
    assert not any(s in conf for s in secret_values(state))  # the keys: in the processes' environment only
