"""A standalone Flink session cluster (one JobManager, one or more TaskManagers) from the apache-flink wheel.

FLINK_HOME is the ``pyflink`` package of the venv (it ships bin/, lib/, conf/); the wheel is never
edited: the config is rendered from ``infra/flink/config.yaml`` into ``<state>/flink/conf`` and passed
as FLINK_CONF_DIR. Both processes run in the foreground of their own session (``start-foreground``,
which ``exec``s java), so the pid we record is the JVM itself and stopping is by pid only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from string import Template
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

from skewless.config import HOST, PROJECT_ROOT, S3Target, paths, ports
from skewless.engines import EngineSetupError, find_jar
from skewless.stack.base import Service, Started, StackError, free_port, port_in_use
from skewless.stack.offline import write_private

TEMPLATE = PROJECT_ROOT / "infra" / "flink" / "config.yaml"
S3_PLUGIN = ("flink-plugins/s3-fs-presto", "flink-s3-fs-presto-")  # Flink's S3 file system plugin (infra/pom.xml)
JOB_ID_PATTERN = re.compile(r"JobID\s+([0-9a-f]{32})")


def flink_home() -> Path:
    """The Flink distribution shipped in the apache-flink wheel (``site-packages/pyflink``)."""
    try:
        import pyflink
    except ImportError:
        raise StackError("flink: apache-flink is not installed in this interpreter; run `make setup`") from None
    home = Path(pyflink.__file__).resolve().parent
    if not (home / "bin" / "flink").exists():
        raise StackError(f"flink: {home}/bin/flink missing; the apache-flink wheel is incomplete, run `make setup`")
    return home


class FlinkSessionCluster(Service):
    """Flink session cluster on 127.0.0.1:<flink_rest>; ``submit_python_job`` runs ``flink run -py`` on it."""

    name = "flink"

    def __init__(
        self,
        rest_port: int | None = None,
        state_dir: Path | None = None,
        log_dir: Path | None = None,
        jm_memory: str = "1024m",
        tm_memory: str = "2048m",
        slots: int = 2,
        python: str | None = None,
        taskmanagers: int = 1,
        rest_host: str = HOST,
        state_store: Callable[[Path], tuple[S3Target, str]] | None = None,
    ) -> None:
        """``state_store``: checkpoints and savepoints on an object store instead of the state dir, given as a
        function of the state dir returning the store (with its credentials) and the ``s3://BUCKET/PREFIX``
        under which ``checkpoints/`` and ``savepoints/`` go (through Flink's S3 plugin, :data:`S3_PLUGIN`)."""
        self.rest_port = rest_port if rest_port is not None else ports().flink_rest
        self.rest_host = rest_host
        self.state_dir = Path(state_dir or paths().state)
        self.log_dir = Path(log_dir or paths().logs)
        self.jm_memory, self.tm_memory, self.slots = jm_memory, tm_memory, slots
        self.taskmanagers = taskmanagers
        self.python = python or sys.executable
        self.state_store = state_store
        self.s3_credentials: dict[str, str] = {}  # set by write_conf when the state store is an object store

    # --- Service -------------------------------------------------------------------------------
    def ports(self) -> dict[str, int]:
        return {"rest": self.rest_port}

    @classmethod
    def at(cls, rest_url: str) -> FlinkSessionCluster:
        """A client of the session cluster whose REST endpoint is ``rest_url`` (``http://HOST:PORT``, as
        :func:`skewless.config.flink_rest_url` gives it)."""
        parts = urlsplit(rest_url)
        return cls(rest_port=parts.port, rest_host=parts.hostname or HOST)

    @property
    def rest_url(self) -> str:
        return f"http://{self.rest_host}:{self.rest_port}"

    @property
    def conf_dir(self) -> Path:
        return self.state_dir / "flink" / "conf"

    def write_conf(self) -> Path:
        """Render the cluster/client configuration into ``<state>/flink/conf``; return that dir."""
        from skewless.engines.flink_env import kafka_connector_jar

        if not TEMPLATE.exists():
            raise StackError(f"flink: config template {TEMPLATE} missing; restore infra/flink/ from git")
        home = flink_home()
        base = self.state_dir / "flink"
        conf = self.conf_dir
        conf.mkdir(parents=True, exist_ok=True)
        for f in (home / "conf").iterdir():  # log4j/logback files; config.yaml, masters, workers are ours
            if f.is_file() and f.name not in ("config.yaml", "masters", "workers"):
                shutil.copy2(f, conf / f.name)
        try:
            jar_uri = kafka_connector_jar().resolve().as_uri()
        except RuntimeError as e:
            raise StackError(f"flink: {e}") from None
        for d in ("checkpoints", "savepoints", "tmp"):
            (base / d).mkdir(parents=True, exist_ok=True)
        values = {
            "rpc_port": str(free_port()),
            "rest_port": str(self.rest_port),
            "jm_memory": self.jm_memory,
            "tm_memory": self.tm_memory,
            "slots": str(self.slots),
            "checkpoint_uri": (base / "checkpoints").resolve().as_uri(),
            "savepoint_uri": (base / "savepoints").resolve().as_uri(),
            "tmp_dir": str((base / "tmp").resolve()),
            "python": self.python,
            "pipeline_jars": jar_uri,
        }
        store_lines = ""
        if self.state_store is not None:
            target, prefix = self.state_store(self.state_dir)
            values["checkpoint_uri"], values["savepoint_uri"] = f"{prefix}/checkpoints", f"{prefix}/savepoints"
            store_lines = self._s3_settings(target)
        try:
            text = Template(TEMPLATE.read_text()).substitute(values)
        except KeyError as e:
            raise StackError(f"flink: {TEMPLATE} uses unknown placeholder {e}; known: {sorted(values)}") from None
        write_private(conf / "config.yaml", text + store_lines)
        self._link_lib(home)
        (conf / "masters").write_text(f"{HOST}:{self.rest_port}\n")
        (conf / "workers").write_text("localhost\n")
        return conf

    def _s3_settings(self, target: S3Target) -> str:
        """config.yaml lines of Flink's S3 plugin for ``target`` (linked into :attr:`plugins_dir`)."""
        try:
            jar = find_jar(*S3_PLUGIN)
        except EngineSetupError as exc:
            raise StackError(f"flink: {exc}") from None
        plugin = self.plugins_dir / "s3-fs-presto"
        if plugin.exists():
            shutil.rmtree(plugin)
        plugin.mkdir(parents=True)
        (plugin / jar.name).symlink_to(jar)
        # The keys reach the plugin as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the processes' environment
        # (:meth:`_env`; its AWS default credentials chain): Flink logs every config.yaml entry at start and masks
        # only keys named like secrets, so ``s3.access-key`` would be printed.
        self.s3_credentials = {"AWS_ACCESS_KEY_ID": target.access_key_id, "AWS_SECRET_ACCESS_KEY": target.secret_access_key}
        return "\n".join([
            "", "# Checkpoints and savepoints on the object store (Flink's S3 plugin; keys from the environment).",
            f"s3.endpoint: {json.dumps(target.endpoint)}",
            f"s3.path.style.access: {str(target.path_style_access).lower()}",
            "s3.use-instance-credentials: false",  # the AWS default chain, which reads the environment first
            "",
        ])

    @property
    def plugins_dir(self) -> Path:
        return self.state_dir / "flink" / "plugins"

    @property
    def lib_dir(self) -> Path:
        return self.state_dir / "flink" / "lib"

    def _link_lib(self, home: Path) -> None:
        """FLINK_LIB_DIR = the wheel's lib/ jars plus opt/flink-python (symlinks).

        The wheel keeps flink-python in opt/, where the cluster's classpath never looks; without it the
        JobManager fails with ClassNotFoundException: ...python.scalar.PythonScalarFunctionOperator.
        """
        python_jars = sorted((home / "opt").glob("flink-python-*.jar"))
        if len(python_jars) != 1:
            raise StackError(f"flink: expected one flink-python-*.jar in {home / 'opt'}, found {python_jars}; run `make setup`")
        lib = self.lib_dir
        if lib.exists():
            shutil.rmtree(lib)
        lib.mkdir(parents=True)
        for jar in [*sorted((home / "lib").glob("*.jar")), python_jars[0]]:
            (lib / jar.name).symlink_to(jar)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            FLINK_HOME=str(flink_home()),
            FLINK_CONF_DIR=str(self.conf_dir),
            FLINK_LIB_DIR=str(self.lib_dir),
            FLINK_PLUGINS_DIR=str(self.plugins_dir),
            FLINK_LOG_DIR=str(self.log_dir / "flink"),
            FLINK_PID_DIR=str(self.state_dir / "flink"),
            FLINK_IDENT_STRING="skewless",
            STD_REDIRECT_TO_FILE="true",  # JVM stdout/stderr into FLINK_LOG_DIR/*.out|*.err
            PYFLINK_CLIENT_EXECUTABLE=self.python,
        )
        env["PATH"] = f"{Path(self.python).parent}{os.pathsep}{env.get('PATH', '')}"
        env.update(self.s3_credentials)
        return env

    def start(self, state_dir: Path, log_dir: Path) -> Started:
        self.state_dir, self.log_dir = Path(state_dir), Path(log_dir)
        if port_in_use(self.rest_port):
            raise StackError(
                f"flink: port {self.rest_port} on {HOST} is already in use; stop what holds it "
                "or set SKEWLESS_FLINK_REST_PORT to a free port"
            )
        if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            raise StackError("flink: no java on PATH and JAVA_HOME unset; install a JDK 17 (`make setup`)")
        self.write_conf()
        flink_logs = self.log_dir / "flink"
        flink_logs.mkdir(parents=True, exist_ok=True)
        bin_dir = flink_home() / "bin"
        for stale in (self.state_dir / "flink").glob("*.pid"):  # keeps the log name's index at 0
            stale.unlink()
        pids: list[int] = []
        env = self._env()
        for script in ("jobmanager.sh", *["taskmanager.sh"] * self.taskmanagers):
            launcher_log = flink_logs / f"{script.removesuffix('.sh')}.launcher.log"  # TaskManagers share one (O_APPEND)
            with open(launcher_log, "ab") as out:
                proc = subprocess.Popen(
                    ["bash", str(bin_dir / script), "start-foreground"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # survives the CLI; stopped by pid in stop()
                )
            pids.append(proc.pid)
        return Started(
            name=self.name,
            pids=tuple(pids),
            endpoints={"rest": self.rest_url, "conf_dir": str(self.conf_dir)},
            log_file=self.jobmanager_log(),
        )

    def jobmanager_log(self) -> Path:
        """The JobManager's log file (flink-console.sh names it after ident, service, index and host)."""
        return self.log_dir / "flink" / f"flink-skewless-standalonesession-0-{socket.gethostname()}.log"

    def overview(self) -> dict[str, Any]:
        """``GET /overview``: taskmanagers, slots-total, slots-available, jobs-running, flink-version."""
        return self._rest("GET", "/overview", timeout=3.0)

    def healthy(self) -> bool:
        """Ready for a job: the REST API answers and >= 1 TaskManager with a free slot is registered."""
        try:
            o = self.overview()
        except StackError:
            return False
        return int(o.get("taskmanagers", 0)) >= 1 and int(o.get("slots-available", 0)) >= 1

    def wait_healthy(self, timeout_s: float = 180.0, started: Started | None = None) -> float:
        """Block until :meth:`healthy`; return the seconds waited. Fails fast if a started JVM exited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.healthy():
                return time.monotonic() - t0
            if started is not None:
                dead = [p for p in started.pids if not _alive(p)]
                if dead:
                    raise StackError(f"flink: process(es) {dead} exited during start; see {started.log_file.parent}")
            time.sleep(1.0)
        raise StackError(f"flink: no TaskManager with free slots at {self.rest_url} after {timeout_s:.0f} s; see {self.log_dir / 'flink'}")

    def stop(self, started: Started, timeout_s: float = 30.0) -> None:
        """TERM the TaskManager then the JobManager by pid, KILL after ``timeout_s``; then their leftover children."""
        for pid in reversed(started.pids):
            _terminate(pid, timeout_s)

    # --- jobs ----------------------------------------------------------------------------------
    def submit_python_job(
        self,
        path: str | Path,
        args: Sequence[str] = (),
        detached: bool = True,
        parallelism: int | None = None,
        timeout_s: float = 600.0,
    ) -> str:
        """``flink run -m 127.0.0.1:<rest> -py <path> -pyexec <venv python>``; return the job id.

        ``detached=False`` blocks until the job finishes (the job must be bounded).
        """
        script = Path(path).resolve()
        if not script.exists():
            raise StackError(f"flink: job script {script} does not exist")
        if not (self.conf_dir / "config.yaml").exists():
            self.write_conf()
        cmd = [str(flink_home() / "bin" / "flink"), "run", "-m", f"{self.rest_host}:{self.rest_port}"]
        if detached:
            cmd.append("-d")
        if parallelism is not None:
            cmd += ["-p", str(parallelism)]
        cmd += ["-pyclientexec", self.python, "-pyexec", self.python, "-py", str(script)]
        cmd += [str(a) for a in args]
        env = self._env()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH", "")]))
        (self.log_dir / "flink").mkdir(parents=True, exist_ok=True)
        try:
            res = subprocess.run(cmd, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise StackError(f"flink: `flink run` of {script.name} did not return within {timeout_s:.0f} s") from None
        out = res.stdout + res.stderr
        log = self.log_dir / "flink" / f"submit-{script.stem}.log"
        log.write_text(f"$ {' '.join(cmd)}\n{out}")
        m = JOB_ID_PATTERN.search(out)
        if res.returncode != 0 or not m:
            causes = [ln.strip() for ln in out.splitlines() if "Error" in ln or "Caused by" in ln][:12]
            raise StackError(
                f"flink: submitting {script.name} failed (exit {res.returncode}); full output in {log}:\n" + "\n".join(causes)
            )
        return m.group(1)

    def list_jobs(self) -> list[dict[str, Any]]:
        """``GET /jobs/overview``: one dict per job with jid, name, state, start-time, ..."""
        return list(self._rest("GET", "/jobs/overview").get("jobs", []))

    def job_state(self, job_id: str) -> str:
        return str(self._rest("GET", f"/jobs/{job_id}").get("state"))

    def cancel_job(self, job_id: str) -> None:
        """Cancel a job (``PATCH /jobs/<id>?mode=cancel``); returns once the request is accepted."""
        self._rest("PATCH", f"/jobs/{job_id}?mode=cancel")

    def wait_job(self, job_id: str, states: Sequence[str] = ("RUNNING",), timeout_s: float = 180.0) -> str:
        """Poll until the job is in one of ``states`` (or terminal); return the state reached."""
        terminal = {"FINISHED", "FAILED", "CANCELED"}
        t0 = time.monotonic()
        state = "?"
        while time.monotonic() - t0 < timeout_s:
            state = self.job_state(job_id)
            if state in states or state in terminal:
                return state
            time.sleep(1.0)
        raise StackError(f"flink: job {job_id} still {state} after {timeout_s:.0f} s (wanted {list(states)})")

    def stop_with_savepoint(self, job_id: str, target_dir: str | None = None, timeout_s: float = 300.0) -> str:
        """Stop a job with a savepoint (``POST /jobs/<id>/stop``, no drain: its window state is kept) and return the
        savepoint's location once it completed; ``target_dir`` default: the cluster's ``state.savepoints.dir``."""
        body = {"drain": False, **({"targetDirectory": target_dir} if target_dir else {})}
        trigger = self._rest("POST", f"/jobs/{job_id}/stop", body=body)["request-id"]
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            status = self._rest("GET", f"/jobs/{job_id}/savepoints/{trigger}")
            if status.get("status", {}).get("id") == "COMPLETED":
                operation = status.get("operation", {})
                if "location" in operation:
                    return str(operation["location"])
                cause = str(operation.get("failure-cause", {}).get("stack-trace", "unknown")).splitlines()[0]
                raise StackError(f"flink: the savepoint of job {job_id} failed ({cause}); the job keeps running")
            time.sleep(1.0)
        raise StackError(f"flink: the savepoint of job {job_id} did not complete within {timeout_s:.0f} s")

    def _rest(self, method: str, path: str, timeout: float = 10.0, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.rest_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            raise StackError(f"flink: {method} {path} -> HTTP {e.code}: {e.read()[:300]!r}") from None
        except (urllib.error.URLError, OSError) as e:
            raise StackError(f"flink: REST {self.rest_url} unreachable ({e}); is the cluster up (`make up`)?") from None
        return json.loads(body) if body.strip() else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process counts as dead
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _terminate(pid: int, timeout_s: float) -> None:
    """TERM then KILL ``pid``; then KILL what is left of its process group (its Python workers).

    Each daemon was started as the leader of its own session, so the group holds only its children.
    """
    try:
        _terminate_one(pid, timeout_s)
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _terminate_one(pid: int, timeout_s: float) -> None:
    if not _alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        _reap(pid)
        if not _alive(pid):
            return
        time.sleep(0.3)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    for _ in range(30):
        _reap(pid)
        if not _alive(pid):
            return
        time.sleep(0.2)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
