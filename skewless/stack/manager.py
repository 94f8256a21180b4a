"""`skewless stack up|down|status`: the local stack (Kafka, Flink session cluster, Redis) as processes.

Two topologies: ``single`` (the default: one node each) and ``cluster`` (skewless/stack/cluster.py: three
Kafka nodes, a JobManager with two TaskManagers, a six-node Redis Cluster); the record says which runs.

``up`` checks everything before starting anything (Java, jars, free ports), starts all services,
waits until each answers its protocol, and records ``(pid, start time)`` per service in
``<state>/stack.json``. ``down`` stops exactly those processes. On any failure ``up`` stops what it
started and prints the failing service's log tail and the fix.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from skewless import config
from skewless.core.timeutil import iso_utc
from skewless.stack.archive import PREFIX as ARCHIVE_PREFIX
from skewless.stack.archive import ArchiveProcess, archive_services, ensure_source_topics, is_archive_service
from skewless.stack.base import Service, StackError, Started, port_in_use
from skewless.stack.cluster import SERVICE_NAMES as CLUSTER_SERVICE_NAMES
from skewless.stack.cluster import (CLUSTER_PROFILE, KafkaCluster, NodeService, check_topology, cluster_profile_path,
                                    cluster_service, cluster_services, write_cluster_profile)
from skewless.stack.kafka import KafkaBroker, kafka_jars
from skewless.stack.procs import fmt_mib, log_tail, pid_alive, rss_bytes, same_process, start_time, stop_pids
from skewless.stack.redis import RedisServer

MIN_JAVA = 17
DEFAULT_START_TIMEOUT_S = 180.0
FLINK_MODULE = "skewless.stack.flink"


# --- configuration ---------------------------------------------------------------------------------


def port_env_vars() -> dict[int, str]:
    """Configured port -> the SKEWLESS_* variable that overrides it (derived from config.Ports)."""
    current = config.ports()
    return {
        getattr(current, f.name): f"SKEWLESS_{f.name.upper()}_PORT" for f in dataclasses.fields(config.Ports)
    }


def flink_available() -> bool:
    return importlib.util.find_spec(FLINK_MODULE) is not None


def archive_profile() -> tuple[Path, str] | None:
    """The profile the stack's archives write through: the cluster topology's (its PostgreSQL catalog and
    ``s3://`` warehouse) while it runs, else None (the stack's sqlite catalog)."""
    path = cluster_profile_path()
    return (path, CLUSTER_PROFILE) if path.exists() else None


def make_service(name: str, ports: dict[str, int] | None = None) -> Service:
    """The service called ``name``; Kafka/Redis take recorded ``ports`` (from stack.json) over the config."""
    ports = ports or {}
    if name in CLUSTER_SERVICE_NAMES:
        return cluster_service(name, ports)
    if name == "kafka":
        return KafkaBroker(port=ports.get("broker"), controller_port=ports.get("controller"))
    if name == "redis":
        return RedisServer(port=ports.get("redis"))
    if is_archive_service(name):
        return ArchiveProcess(name[len(ARCHIVE_PREFIX):], kafka_port=ports.get("kafka"), profile=archive_profile())
    if name == "flink":
        try:
            module = importlib.import_module(FLINK_MODULE)
        except ImportError as exc:
            raise StackError(f"flink: cannot import {FLINK_MODULE}: {exc}") from exc
        return module.FlinkSessionCluster()  # the agreed interface: no arguments, ports from skewless.config
    raise StackError(f"unknown service {name!r}")


def stack_services(topology: str = "single") -> list[Service]:
    """What `stack up` starts, in order: Kafka, Flink (when skewless/stack/flink.py exists), Redis."""
    if check_topology(topology) == "cluster":
        return list(cluster_services())
    names = ["kafka", *(["flink"] if flink_available() else []), "redis"]
    return [make_service(n) for n in names]


# --- preflight -------------------------------------------------------------------------------------


def java_version() -> int | None:
    """Major version of ``java`` on PATH, or None if there is none."""
    if shutil.which("java") is None:
        return None
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def port_problems(services: Sequence[Service]) -> list[str]:
    """One message per port that is taken (or claimed twice), naming service, port and env var."""
    env_vars = port_env_vars()
    problems: list[str] = []
    claimed: dict[int, str] = {}
    for svc in services:
        for role, port in svc.ports().items():
            var = env_vars.get(port) or (svc.port_setting(role) if isinstance(svc, NodeService)
                                         else "the service's port setting in skewless/config.py")
            fix = f"stop what holds it (ss -ltnp 'sport = :{port}') or set {var} to a free port"
            if port in claimed:
                problems.append(f"{svc.name} ({role}): port {port} is also configured for {claimed[port]}; set {var} to another port")
            elif port_in_use(port):
                problems.append(f"{svc.name} ({role}): port {config.HOST}:{port} is already in use; {fix}")
            claimed.setdefault(port, f"{svc.name} ({role})")
    return problems


def preflight(services: Sequence[Service]) -> None:
    """Everything `up` needs, checked before anything starts; raises StackError listing every problem."""
    problems: list[str] = []
    version = java_version()
    if version is None:
        problems.append("java: not found on PATH; fix: make setup (installs openjdk-17-jdk-headless)")
    elif version < MIN_JAVA:
        problems.append(f"java: version {version} < {MIN_JAVA}; fix: install openjdk-17-jdk-headless and put it first on PATH")
    if any(s.name == "kafka" for s in services):
        try:
            kafka_jars()
        except StackError as exc:
            problems.append(str(exc))
    problems += port_problems(services)
    if problems:
        raise StackError("cannot start the stack:\n  - " + "\n  - ".join(problems))


# --- the record (<state>/stack.json) ---------------------------------------------------------------


def record_path() -> Path:
    return config.paths().state / "stack.json"


def read_record() -> dict[str, Any] | None:
    try:
        return json.loads(record_path().read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise StackError(f"{record_path()} is corrupt ({exc}); stop the processes listed in it by hand, then delete it") from exc


def write_record(entries: list[dict[str, Any]], topology: str = "single") -> None:
    path = record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"services": entries, "topology": topology, "updated": time.time()}, indent=2))
    tmp.replace(path)


def record_entry(svc: Service, started: Started) -> dict[str, Any]:
    ports = svc.ports()
    if isinstance(svc, ArchiveProcess):  # listens on nothing; remembers which broker it reads
        ports = {"kafka": svc.kafka_port}
    pids = [{"pid": p, "start_time": start_time(p)} for p in started.pids]
    if isinstance(svc, NodeService):  # one pid per node: remember each node's role and port
        for pid, node in zip(pids, svc.nodes()):
            pid.update(role=node.role, port=node.port)
    return {
        "name": started.name,
        "pids": pids,
        "ports": ports,
        "endpoints": started.endpoints,
        "log_file": str(started.log_file),
    }


def live_pids(entry: dict[str, Any]) -> list[int]:
    """Recorded pids that are still the very processes we started (a recycled pid is not ours)."""
    return [p["pid"] for p in entry["pids"] if same_process(p["pid"], p.get("start_time"))]


def stack_owned_ports() -> dict[int, str]:
    """Ports held by a recorded, live stack service -> that service's name."""
    record = read_record() or {"services": []}
    return {port: e["name"] for e in record["services"] if live_pids(e) and not is_archive_service(e["name"])
            for port in e["ports"].values()}


# --- up / down / status ----------------------------------------------------------------------------


def _stop_started(pairs: Sequence[tuple[Service, Started]], out: TextIO) -> None:
    for svc, started in reversed(pairs):
        try:
            svc.stop(started)
        except StackError as exc:
            print(f"stack: stopping {svc.name} failed: {exc}", file=out)


def _await_healthy(pairs: Sequence[tuple[Service, Started]], out: TextIO) -> dict[str, float]:
    """Wait for all services at once; return seconds-to-healthy per service or raise naming the first failure."""
    t0 = time.monotonic()
    pending = list(pairs)
    ready: dict[str, float] = {}
    while pending:
        for svc, started in list(pending):
            if _probe(svc):
                ready[svc.name] = time.monotonic() - t0
                print(f"stack: {svc.name} healthy after {ready[svc.name]:.1f} s", file=out)
                pending.remove((svc, started))
            elif not all(pid_alive(p) for p in started.pids):
                raise _ServiceFailed(svc, started, "its process exited during startup")
            elif time.monotonic() - t0 > getattr(svc, "start_timeout_s", DEFAULT_START_TIMEOUT_S):
                timeout = getattr(svc, "start_timeout_s", DEFAULT_START_TIMEOUT_S)
                raise _ServiceFailed(svc, started, f"not healthy after {timeout:.0f} s")
        time.sleep(0.5)
    return ready


def _probe(svc: Service) -> bool:
    """``svc.healthy()``, with a probe that raises counted as "not yet healthy"."""
    try:
        return svc.healthy()
    except Exception:
        return False


class _ServiceFailed(StackError):
    def __init__(self, svc: Service, started: Started | None, reason: str) -> None:
        super().__init__(f"{svc.name}: {reason}")
        self.svc, self.started, self.reason = svc, started, reason


def fix_hint(name: str) -> str:
    """What to try when service ``name`` fails to start."""
    p = config.paths()
    return {
        "kafka": f"read the log above; a stale or foreign data dir can be removed: rm -rf {p.state / 'kafka'} (or make clean)",
        "flink": f"read the log above and {p.logs / 'flink'}/; check free memory (free -m) and the Flink ports",
        "redis": f"read the log above; check infra/redis/redis.conf and that {p.state / 'redis'} is a writable directory",
        "kafka-cluster": f"read the log above and {p.logs}/kafka-<n>.log; stale data can be removed: rm -rf {p.state / 'kafka-cluster'}",
        "flink-cluster": f"read the log above and {p.logs / 'flink'}/; check free memory (free -m): 3 JVMs",
        "redis-cluster": f"read {p.logs}/redis-<port>.log and redis-cluster-create.log; stale data: rm -rf {p.state / 'redis-cluster'}",
        "object-store": f"read {p.logs}/object-store.log; its data: {p.state / 'object-store'} (make setup fetches the s3proxy jar)",
        "catalog-db": f"read {p.logs}/catalog-db.log; stale data: rm -rf {p.state / 'catalog-db'} (apt-get install postgresql)",
        "spark-cluster": f"read {p.logs}/spark-master.log and spark-worker-<n>.log; check free memory (free -m): 3 JVMs",
    }.get(name, "read the log above; `skewless archive status` shows why an archive stopped"
          if is_archive_service(name) else "read the log above")


def up(services: Sequence[Service] | None = None, out: TextIO = sys.stdout, topology: str = "single") -> int:
    """Start the stack (``topology`` when ``services`` is None); 0 when every service is healthy, 1 (with
    everything stopped again) otherwise."""
    paths = config.paths()
    record = read_record()
    if record and any(live_pids(e) for e in record["services"]):
        running = record.get("topology", "single")
        if services is None and running != topology:
            print(f"stack: the {running} topology is running; to start the {topology} topology run "
                  "`skewless stack down` first", file=out)
            return 1
        print(f"stack: already running, topology {running} (run `skewless stack down` first to restart):", file=out)
        status(out=out)
        return 0 if _all_healthy(record) else 1
    with_archive = services is None  # the default stack also runs the raw archive (docs/infra.md)
    try:
        services = list(services) if services is not None else stack_services(topology)
    except StackError as exc:
        print(f"stack: {exc}", file=out)
        return 1
    t0 = time.monotonic()
    try:
        preflight(services)
    except StackError as exc:
        print(f"stack: {exc}", file=out)
        return 1
    paths.state.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(parents=True, exist_ok=True)
    pairs: list[tuple[Service, Started]] = []
    try:
        for svc in services:
            try:
                started = svc.start(paths.state, paths.logs)
            except (StackError, OSError) as exc:
                raise _ServiceFailed(svc, None, f"could not start: {exc}") from exc
            pairs.append((svc, started))
            write_record([record_entry(s, st) for s, st in pairs], topology)  # recorded at once: `down` works mid-up
            print(f"stack: started {svc.name} (pid {', '.join(map(str, started.pids))}, log {started.log_file})", file=out)
        _await_healthy(pairs, out)
        kafka = next((s for s in services if isinstance(s, KafkaBroker)), None)
        kafka = kafka or next((s.brokers[0] for s in services if isinstance(s, KafkaCluster)), None)
        profile = None
        if topology == "cluster":  # before the archives: they write through its shared catalog
            profile = write_cluster_profile([s for s in services if isinstance(s, NodeService)])
        if with_archive and kafka is not None:  # on the cluster, archives bootstrap from its first broker
            _start_archives(kafka, pairs, paths.state, paths.logs, out, topology)
    except _ServiceFailed as failure:
        print(f"stack: FAILED: {failure}", file=out)
        if failure.started is not None:
            print(f"--- last lines of {failure.started.log_file} ---", file=out)
            print(log_tail(failure.started.log_file), file=out)
            print("---", file=out)
        print(f"stack: fix: {fix_hint(failure.svc.name)}", file=out)
        print("stack: stopping what was started ...", file=out)
        _stop_started(pairs, out)
        record_path().unlink(missing_ok=True)
        cluster_profile_path().unlink(missing_ok=True)
        return 1
    except BaseException:
        _stop_started(pairs, out)
        record_path().unlink(missing_ok=True)
        cluster_profile_path().unlink(missing_ok=True)
        raise
    print(f"stack: up in {time.monotonic() - t0:.1f} s (logs in {paths.logs})", file=out)
    status(out=out)
    if profile is not None:
        print(f"stack: the profile of this topology is {profile}; commands read it with SKEWLESS_CONFIG={profile} "
              "(docs/deploy.md)", file=out)
    return 0


def _start_archives(kafka: KafkaBroker, pairs: list[tuple[Service, Started]], state: Path, logs: Path,
                    out: TextIO, topology: str = "single") -> None:
    """After Kafka is healthy: create the Kafka-fed sources' topics, start one archive process per source,
    record each at once and wait until they are healthy (raises _ServiceFailed like any service)."""
    try:
        archives = archive_services(kafka.port, archive_profile() if topology == "cluster" else None)
        topics = ensure_source_topics(kafka.bootstrap)
    except Exception as exc:  # noqa: BLE001 - a broken repository or broker: report as the archive's failure
        raise _ServiceFailed(ArchiveProcess("all", kafka_port=kafka.port), None, f"could not prepare: {exc}") from exc
    if topics:
        print(f"stack: topics ready: {', '.join(topics)}", file=out)
    started_now: list[tuple[Service, Started]] = []
    for svc in archives:
        try:
            started = svc.start(state, logs)
        except (StackError, OSError) as exc:
            raise _ServiceFailed(svc, None, f"could not start: {exc}") from exc
        pairs.append((svc, started))
        started_now.append((svc, started))
        write_record([record_entry(s, st) for s, st in pairs], topology)
        print(f"stack: started {svc.name} (pid {', '.join(map(str, started.pids))}, log {started.log_file})", file=out)
    _await_healthy(started_now, out)


def down(out: TextIO = sys.stdout) -> int:
    """Stop exactly the recorded processes and remove the record; a no-op when nothing is recorded."""
    record = read_record()
    if record is None:
        print("stack: nothing recorded; nothing to stop", file=out)
        return 0
    failed = False
    for entry in reversed(record["services"]):
        pids = live_pids(entry)
        if not pids:
            print(f"stack: {entry['name']} not running", file=out)
            continue
        started = Started(entry["name"], tuple(pids), entry["endpoints"], Path(entry["log_file"]))
        try:
            try:
                svc = make_service(entry["name"], entry["ports"])
            except StackError:  # e.g. the Flink module is gone: still stop by pid
                stop_pids(pids, 30.0)
            else:
                svc.stop(started)
        except StackError as exc:
            failed = True
            print(f"stack: stopping {entry['name']} failed: {exc}", file=out)
            continue
        print(f"stack: stopped {entry['name']} (pid {', '.join(map(str, pids))})", file=out)
    if failed:
        print(f"stack: some processes could not be stopped; record kept in {record_path()}", file=out)
        return 1
    record_path().unlink(missing_ok=True)
    cluster_profile_path().unlink(missing_ok=True)  # its ports are no longer served
    return 0


def _all_healthy(record: dict[str, Any]) -> bool:
    return all(_entry_healthy(e) for e in record["services"])


def _entry_healthy(entry: dict[str, Any]) -> bool:
    try:
        return bool(live_pids(entry)) and _probe(make_service(entry["name"], entry["ports"]))
    except StackError:
        return False


def node_rows(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Per node of a multi-node service (cluster topology): role (live, where it can change), port, pid,
    running, rss; empty for a single-node service."""
    if not any("role" in p for p in entry["pids"]):
        return []
    try:
        svc = make_service(entry["name"], entry["ports"])
        live = svc.live_roles() if isinstance(svc, NodeService) and live_pids(entry) else {}
    except StackError:
        live = {}
    rows = []
    for p in entry["pids"]:
        running = same_process(p["pid"], p.get("start_time"))
        rows.append({"role": live.get(p.get("port"), p.get("role")), "port": p.get("port"), "pid": p["pid"],
                     "running": running, "rss": rss_bytes([p["pid"]]) if running else 0})
    return rows


def status_rows() -> list[dict[str, Any]]:
    """Per recorded service: name, running, healthy, pids, rss (bytes), endpoints, log, nodes (cluster)."""
    record = read_record()
    rows = []
    for entry in (record or {"services": []})["services"]:
        pids = live_pids(entry)
        rows.append(
            {
                "name": entry["name"],
                "running": bool(pids),
                "healthy": _entry_healthy(entry) if pids else False,
                "pids": pids,
                "rss": rss_bytes(pids),
                "endpoints": entry["endpoints"],
                "log_file": entry["log_file"],
                "nodes": node_rows(entry),
            }
        )
    return rows


def status(out: TextIO = sys.stdout, as_json: bool = False) -> int:
    """Print per-service state; 0 if nothing is recorded or all of it is healthy, else 1."""
    rows = status_rows()
    if as_json:
        print(json.dumps(rows, indent=2), file=out)
    elif not rows:
        print("stack: not running (nothing recorded in " f"{record_path()})", file=out)
    else:
        topology = (read_record() or {}).get("topology", "single")
        if topology != "single":
            print(f"topology: {topology}", file=out)
        print(_table(rows), file=out)
        total = sum(r["rss"] for r in rows)
        print(f"total RSS: {fmt_mib(total)}", file=out)
        flink = next((e for e in (read_record() or {"services": []})["services"] if e["name"] == "flink"), None)
        if flink is not None and live_pids(flink):
            print("\n".join(flink_job_lines(flink["ports"].get("rest"))), file=out)
    return 0 if all(r["healthy"] for r in rows) else 1


FLINK_JOB_STATES = ("RUNNING", "CREATED", "INITIALIZING", "RESTARTING", "FAILING", "CANCELLING")


def flink_job_lines(rest_port: int | None) -> list[str]:
    """The session cluster's running jobs (``GET /jobs/overview``), one line each; ``none`` or why unreachable."""
    module = importlib.import_module(FLINK_MODULE)
    cluster = module.FlinkSessionCluster(rest_port=rest_port)
    try:
        jobs = [j for j in cluster.list_jobs() if j.get("state") in FLINK_JOB_STATES]
    except StackError as exc:
        return [f"flink jobs: Flink unreachable ({exc})"]
    if not jobs:
        return ["flink jobs: none running (`skewless submit <view>` starts one)"]
    lines = ["flink jobs:"]
    for j in sorted(jobs, key=lambda j: j.get("start-time", 0)):
        since = iso_utc(int(j["start-time"])) if j.get("start-time") else "-"
        lines.append(f"  {j.get('state', '?'):<12} {j.get('name', '?')}  id={j.get('jid', '?')}  since {since}")
    return lines


def _table(rows: list[dict[str, Any]]) -> str:
    header = ("SERVICE", "STATE", "PID", "RSS", "ENDPOINTS")
    lines = [header]
    for r in rows:
        state = "healthy" if r["healthy"] else ("running, not healthy" if r["running"] else "stopped")
        endpoints = "  ".join(f"{k}={v}" for k, v in r["endpoints"].items())
        lines.append((r["name"], state, ",".join(map(str, r["pids"])) or "-", fmt_mib(r["rss"]), endpoints))
        for i, n in enumerate(r.get("nodes", []), start=1):
            where = f" on {config.HOST}:{n['port']}" if n["port"] else " (ephemeral ports)"
            lines.append((f"  node {i}", "running" if n["running"] else "stopped", str(n["pid"]), fmt_mib(n["rss"]),
                          f"{n['role']}{where}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line[:-1], widths)) + "  " + line[-1] for line in lines
    )
