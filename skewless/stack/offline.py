"""The offline half of the cluster topology (``skewless stack up --topology cluster``, docs/infra.md): an
S3-compatible object store (s3proxy, filesystem backend), PostgreSQL as the Iceberg JDBC catalog, and a Spark
standalone master with two workers, as local processes on 127.0.0.1.

Ports are configured base ports (skewless.config): the object store ``SKEWLESS_S3_PORT``, the catalog database
``SKEWLESS_POSTGRES_PORT``, the Spark master ``SKEWLESS_SPARK_MASTER_PORT`` (its web UI +1, the workers' web UIs
+2 and +3; the workers' RPC ports are ephemeral).

Credentials are generated once per state dir into ``<state>/secrets/`` (folder 0700, files 0600) and reach the
servers through files (s3proxy's properties file, initdb's password file), never argv; the written cluster
profile names them by ``{file: ...}`` references.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from skewless import config
from skewless.engines import EngineSetupError, find_jar
from skewless.engines.object_store import check_bucket, check_catalog_db, s3_filesystem
from skewless.stack.base import Node, NodeService, StackError, Started, port_in_use
from skewless.stack.procs import log_tail, pid_alive, spawn, stop_pids, wait_until

HEALTH_TIMEOUT_S = 3.0
OBJECT_STORE_BUCKET = "skewless-warehouse"
WAREHOUSE_URI = f"s3://{OBJECT_STORE_BUCKET}/warehouse"
FLINK_STATE_URI = f"s3://{OBJECT_STORE_BUCKET}/flink"  # checkpoints/ and savepoints/ of the cluster's Flink
OBJECT_STORE_REGION = "us-east-1"
OBJECT_STORE_HEAP = "-Xmx192m"
CATALOG_DATABASE = "iceberg_catalog"
CATALOG_USER = "skewless"
POSTGRES_OS_USER = "postgres"  # initdb and postgres refuse to run as root
SPARK_WORKERS = 2
SPARK_WORKER_CORES = 1
SPARK_WORKER_MEMORY = "1g"  # what a worker may hand to executors (spark.executor.memory must fit in it)
SPARK_DAEMON_MEMORY = "192m"  # the master's and each worker's own heap


# --- generated credentials --------------------------------------------------------------------------


def secret_file(state_dir: Path, name: str) -> Path:
    """``<state>/secrets/<name>``, made once with a random value (folder 0700, file 0600); its path."""
    folder = state_dir / "secrets"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    path = folder / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(20))
    return path


def read_secret_file(path: Path) -> str:
    return path.read_text().strip()


def object_store_credentials(state_dir: Path) -> tuple[Path, Path]:
    """The files holding the object store's access key id and secret access key."""
    return secret_file(state_dir, "object-store-access-key-id"), secret_file(state_dir, "object-store-secret-access-key")


def catalog_password_file(state_dir: Path) -> Path:
    return secret_file(state_dir, "catalog-db-password")


def write_private(path: Path, text: str, owner: str | None = None) -> None:
    """Write ``text`` to ``path`` created 0600 (owned by ``owner`` if given)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if owner is not None:
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)


# --- the object store -------------------------------------------------------------------------------


class ObjectStore(NodeService):
    """s3proxy (``org.gaul:s3proxy`` jar-with-dependencies, pinned in infra/pom.xml) with its filesystem backend
    in ``<state>/object-store/data``; ``start`` waits for it and creates the warehouse bucket through the S3 API."""

    name = "object-store"
    start_timeout_s = 90.0

    def __init__(self, port: int | None = None, state_dir: Path | None = None) -> None:
        self.port = port or config.ports().s3
        self.state_dir = state_dir

    @property
    def endpoint(self) -> str:
        return f"http://{config.HOST}:{self.port}"

    def ports(self) -> dict[str, int]:
        return {"s3": self.port}

    def nodes(self) -> list[Node]:
        return [Node("s3proxy (filesystem backend)", self.port)]

    def port_setting(self, role: str) -> str:
        return "SKEWLESS_S3_PORT"

    def target(self, state_dir: Path) -> config.S3Target:
        key_id, key = object_store_credentials(state_dir)
        return config.S3Target(self.endpoint, OBJECT_STORE_REGION, read_secret_file(key_id), read_secret_file(key),
                               True, HEALTH_TIMEOUT_S)

    def start(self, state_dir: Path, log_dir: Path) -> Started:
        if shutil.which("java") is None:
            raise StackError("object-store: no `java` on PATH; fix: make setup (installs openjdk-17-jdk-headless)")
        try:
            jar = find_jar("s3proxy", "s3proxy-")
        except EngineSetupError as exc:
            raise StackError(f"object-store: {exc}") from None
        self.state_dir = state_dir
        base = state_dir / self.name
        (base / "data").mkdir(parents=True, exist_ok=True)
        target = self.target(state_dir)
        properties = base / "s3proxy.properties"  # holds the credentials: 0600, never argv
        write_private(properties, "\n".join([
            f"s3proxy.endpoint={self.endpoint}",
            "s3proxy.authorization=aws-v2-or-v4",
            f"s3proxy.identity={target.access_key_id}",
            f"s3proxy.credential={target.secret_access_key}",
            "jclouds.provider=filesystem",
            f"jclouds.filesystem.basedir={base / 'data'}",
        ]) + "\n")
        log_file = log_dir / "object-store.log"
        pid = spawn(["java", OBJECT_STORE_HEAP, "-jar", str(jar), "--properties", str(properties)], log_file)
        try:
            wait_until(lambda: port_in_use(self.port), 60.0, "object-store (s3proxy)", interval_s=0.3,
                       abort_if=lambda: None if pid_alive(pid) else f"s3proxy exited; see {log_file}")
            s3_filesystem(target, allow_bucket_creation=True).create_dir(OBJECT_STORE_BUCKET)
        except BaseException as exc:
            stop_pids([pid])
            if isinstance(exc, OSError):
                raise StackError(f"object-store: creating bucket {OBJECT_STORE_BUCKET!r} failed ({exc}); "
                                 f"see {log_file}") from None
            raise
        return Started(self.name, (pid,), {"endpoint": self.endpoint, "warehouse": WAREHOUSE_URI}, log_file)

    def healthy(self) -> bool:
        """The S3 API answers with the stored credentials and lists the warehouse bucket."""
        state = self.state_dir or config.paths().state
        if not port_in_use(self.port):
            return False
        try:
            check_bucket(self.target(state), OBJECT_STORE_BUCKET)
        except (EngineSetupError, OSError):
            return False
        return True


# --- the catalog database ---------------------------------------------------------------------------


def postgres_bindir() -> Path:
    """Debian's PostgreSQL server binaries (``/usr/lib/postgresql/<major>/bin``, the newest)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name)
                   if p.parent.parent.name.isdigit() else 0)
    if not found:
        raise StackError("catalog-db: no PostgreSQL server (/usr/lib/postgresql/*/bin/postgres); fix: "
                         "apt-get install -y postgresql")
    return found[-1].parent


class CatalogDatabase(NodeService):
    """A PostgreSQL cluster in ``<state>/catalog-db/data`` on 127.0.0.1 only (no Unix socket), password auth
    (scram-sha-256) for the generated user ``skewless``; the database ``iceberg_catalog`` holds the Iceberg JDBC
    catalog's tables. Run as the ``postgres`` user when started by root."""

    name = "catalog-db"
    start_timeout_s = 90.0

    def __init__(self, port: int | None = None, state_dir: Path | None = None) -> None:
        self.port = port or config.ports().postgres
        self.state_dir = state_dir

    @property
    def uri(self) -> str:
        return f"postgresql://{config.HOST}:{self.port}/{CATALOG_DATABASE}"

    def ports(self) -> dict[str, int]:
        return {"postgres": self.port}

    def nodes(self) -> list[Node]:
        return [Node(f"postgres (database {CATALOG_DATABASE})", self.port)]

    def port_setting(self, role: str) -> str:
        return "SKEWLESS_POSTGRES_PORT"

    def shared(self, state_dir: Path, database: str = CATALOG_DATABASE) -> config.SharedCatalog:
        """The catalog as a client reaches it (the object store half is a placeholder: only the database is used)."""
        password = read_secret_file(catalog_password_file(state_dir))
        s3 = config.S3Target("", "", "", "", True, HEALTH_TIMEOUT_S)
        return config.SharedCatalog(f"postgresql://{config.HOST}:{self.port}/{database}", CATALOG_USER, password,
                                    WAREHOUSE_URI, s3, HEALTH_TIMEOUT_S)

    def start(self, state_dir: Path, log_dir: Path) -> Started:
        bindir = postgres_bindir()
        self.state_dir = state_dir
        run_as = POSTGRES_OS_USER if os.geteuid() == 0 else None
        base = state_dir / self.name
        data = base / "data"
        base.mkdir(parents=True, exist_ok=True)
        if run_as is not None:
            entry = pwd.getpwnam(run_as)
            os.chown(base, entry.pw_uid, entry.pw_gid)
            if not self._reachable_by(run_as, base):
                raise StackError(f"catalog-db: the {run_as} user (PostgreSQL refuses root) cannot reach {base}; fix: "
                                 f"chmod o+x every folder above it, or set SKEWLESS_STATE_DIR to a folder it can reach")
        log_file = log_dir / "catalog-db.log"
        if not (data / "PG_VERSION").exists():
            self._initdb(bindir, base, data, state_dir, run_as, log_file)
        argv = [str(bindir / "postgres"), "-D", str(data), "-p", str(self.port), "-c", f"listen_addresses={config.HOST}",
                "-c", "unix_socket_directories=", "-c", "max_connections=40", "-c", "shared_buffers=16MB",
                "-c", "fsync=on"]
        pid = spawn(argv, log_file, run_as=run_as)
        try:
            wait_until(lambda: port_in_use(self.port), 60.0, "catalog-db (postgres)", interval_s=0.2,
                       abort_if=lambda: None if pid_alive(pid) else f"postgres exited; see {log_file}")
            self._create_database(state_dir)
        except BaseException:
            self.stop(Started(self.name, (pid,), {}, log_file))
            raise
        return Started(self.name, (pid,), {"uri": self.uri, "user": CATALOG_USER}, log_file)

    @staticmethod
    def _reachable_by(user: str, folder: Path) -> bool:
        probe = subprocess.run(["test", "-w", str(folder)], user=user, group=user, extra_groups=[], timeout=30)
        return probe.returncode == 0

    def _initdb(self, bindir: Path, base: Path, data: Path, state_dir: Path, run_as: str | None, log_file: Path) -> None:
        pwfile = base / "initdb.pw"  # initdb reads the password from a file; removed right after
        write_private(pwfile, read_secret_file(catalog_password_file(state_dir)) + "\n", owner=run_as)
        argv = [str(bindir / "initdb"), "-D", str(data), "-U", CATALOG_USER, f"--pwfile={pwfile}",
                "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions"]
        try:
            with open(log_file, "ab") as log:
                res = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=120,
                                     **({"user": run_as, "group": run_as, "extra_groups": []} if run_as else {}))
        except subprocess.TimeoutExpired:
            raise StackError("catalog-db: initdb did not finish in 120 s") from None
        finally:
            pwfile.unlink(missing_ok=True)
        if res.returncode != 0:
            shutil.rmtree(data, ignore_errors=True)
            raise StackError(f"catalog-db: initdb failed (exit {res.returncode}):\n{log_tail(log_file, 10)}")

    def _create_database(self, state_dir: Path) -> None:
        """``CREATE DATABASE iceberg_catalog`` unless it exists (waits until the server accepts logins)."""
        import pg8000

        admin = self.shared(state_dir, database="postgres")

        def accepts() -> bool:
            try:
                check_catalog_db(admin)
            except EngineSetupError:
                return False
            return True

        wait_until(accepts, 30.0, "catalog-db logins", interval_s=0.3)
        host, port, db = admin.host_port_db
        conn = pg8000.connect(user=admin.user, password=admin.password, host=host, port=port, database=db,
                              timeout=HEALTH_TIMEOUT_S)
        try:
            conn.autocommit = True
            rows = conn.run("SELECT 1 FROM pg_database WHERE datname = :name", name=CATALOG_DATABASE)
            if not rows:
                conn.run(f"CREATE DATABASE {CATALOG_DATABASE}")
        finally:
            conn.close()

    def healthy(self) -> bool:
        """The catalog database accepts the generated user's login."""
        state = self.state_dir or config.paths().state
        if not port_in_use(self.port):
            return False
        try:
            check_catalog_db(self.shared(state))
        except (EngineSetupError, OSError):
            return False
        return True

    def stop(self, started: Started, timeout_s: float = 20.0) -> None:
        """SIGINT first (PostgreSQL's fast shutdown: clients are disconnected), then by pid as every service."""
        for pid in started.pids:
            if pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        try:
            wait_until(lambda: not any(pid_alive(p) for p in started.pids), timeout_s, "catalog-db shutdown",
                       interval_s=0.1)
        except StackError:
            pass
        stop_pids(started.pids, timeout_s)


# --- Spark standalone -------------------------------------------------------------------------------


def spark_home() -> Path:
    """The pyspark wheel's Spark (``bin/spark-class``)."""
    import importlib.util

    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        raise StackError("spark-cluster: pyspark is not installed; fix: make setup")
    return Path(spec.origin).parent


class SparkCluster(NodeService):
    """A Spark standalone master and two workers (1 core, 1 GiB for executors each) from the pyspark wheel
    (``spark-class org.apache.spark.deploy.master.Master`` / ``...worker.Worker``), bound to 127.0.0.1."""

    name = "spark-cluster"
    start_timeout_s = 120.0

    def __init__(self, port: int | None = None) -> None:
        self.port = port or config.ports().spark_master

    @property
    def master_url(self) -> str:
        return f"spark://{config.HOST}:{self.port}"

    @property
    def ui_port(self) -> int:
        return self.port + 1

    def worker_ui_ports(self) -> list[int]:
        return [self.port + 2 + i for i in range(SPARK_WORKERS)]

    def ports(self) -> dict[str, int]:
        out = {"master": self.port, "master ui": self.ui_port}
        out.update({f"worker {i} ui": p for i, p in enumerate(self.worker_ui_ports(), start=1)})
        return out

    def nodes(self) -> list[Node]:
        return [Node(f"master (web UI :{self.ui_port})", self.port),
                *(Node(f"worker {i} ({SPARK_WORKER_CORES} core, {SPARK_WORKER_MEMORY}; web UI :{ui})", None)
                  for i, ui in enumerate(self.worker_ui_ports(), start=1))]

    def port_setting(self, role: str) -> str:
        return f"SKEWLESS_SPARK_MASTER_PORT (the cluster uses it +0..+{1 + SPARK_WORKERS})"

    def start(self, state_dir: Path, log_dir: Path) -> Started:
        if shutil.which("java") is None:
            raise StackError("spark-cluster: no `java` on PATH; fix: make setup (installs openjdk-17-jdk-headless)")
        home = spark_home()
        spark_class = str(home / "bin" / "spark-class")
        base = state_dir / self.name
        env = {"SPARK_HOME": str(home), "SPARK_LOCAL_IP": config.HOST, "SPARK_DAEMON_MEMORY": SPARK_DAEMON_MEMORY,
               "SPARK_LOG_DIR": str(log_dir / "spark")}
        log_files = [log_dir / "spark-master.log", *(log_dir / f"spark-worker-{i}.log"
                                                      for i in range(1, SPARK_WORKERS + 1))]
        pids: list[int] = []
        try:
            pids.append(spawn([spark_class, "org.apache.spark.deploy.master.Master", "--host", config.HOST,
                               "--port", str(self.port), "--webui-port", str(self.ui_port)], log_files[0], env=env))
            for i, ui in enumerate(self.worker_ui_ports(), start=1):
                work = base / f"worker-{i}"
                work.mkdir(parents=True, exist_ok=True)
                pids.append(spawn([spark_class, "org.apache.spark.deploy.worker.Worker", "--host", config.HOST,
                                   "--cores", str(SPARK_WORKER_CORES), "--memory", SPARK_WORKER_MEMORY,
                                   "--webui-port", str(ui), "--work-dir", str(work), self.master_url],
                                  log_files[i], env=env))
        except BaseException:
            stop_pids(pids)
            raise
        return Started(self.name, tuple(pids), {"master": self.master_url, "ui": f"http://{config.HOST}:{self.ui_port}"},
                       log_files[0])

    def master_state(self) -> dict:
        """The master's ``/json/`` (status, workers with their state and cores)."""
        try:
            with urllib.request.urlopen(f"http://{config.HOST}:{self.ui_port}/json/", timeout=HEALTH_TIMEOUT_S) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise StackError(f"spark-cluster: the master's web UI :{self.ui_port} does not answer ({exc})") from None

    def healthy(self) -> bool:
        """The master is ALIVE and lists both workers ALIVE."""
        try:
            state = self.master_state()
        except StackError:
            return False
        alive = [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]
        return state.get("status") == "ALIVE" and len(alive) == SPARK_WORKERS
