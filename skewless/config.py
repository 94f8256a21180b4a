"""Where things live and which ports they use: one place, each value overridable by environment.

Every service, script and test reads ports and paths from here (or from the same
``SKEWLESS_*`` environment variables in shell scripts), so that a port clash is fixed once. So do the
credentials: secrets (Redis password, API token, Kafka SASL password) come only from the environment or a
file (:func:`secret`), never from flags, and every printed URL goes through :func:`redact_url`. The Redis
target (:func:`redis_target`) and the Kafka clients' security properties (:func:`kafka_client_properties`)
are built here, once, for every command and job (docs/infra.md, "Credentials and TLS").

Where each component is comes from the selected profile of the repository's profile file
(:mod:`skewless.profile`, docs/deploy.md); each value is, in this order: a command-line flag (a location, never
a secret), the environment (``SKEWLESS_*``), the profile, the built-in default (the `make up` stack on
127.0.0.1 at the ``SKEWLESS_*_PORT`` ports).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from skewless.profile import (CONFIG_FILE_ENV, KAFKA_SASL_MECHANISMS, KAFKA_SECURITY_PROTOCOLS, PROFILE_ENV,
                              ConfigError, ObjectStoreSettings, Profile, SecretRef, check_hostport, load_profile,
                              profile_file)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer port; unset it or give a number") from None


def env_seconds(name: str, default: float) -> float:
    """A positive duration in seconds from the environment variable ``name`` (``default`` when unset)."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 86400:
        raise ConfigError(f"environment variable {name}={raw!r} is not a number of seconds > 0; unset it or give one")
    return value


def _env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    return Path(raw).resolve() if raw else default


# --- the profile (skewless.profile): which one is in effect ------------------------------------------


def active_profile() -> Profile:
    """The profile in effect in this process: ``$SKEWLESS_PROFILE`` of ``$SKEWLESS_CONFIG`` or of
    ``feature_defs/skewless.yaml`` (a command sets both from ``--profile`` and ``--repo``: :func:`selected`)."""
    return load_profile()


@contextmanager
def selected(repo: str | Path | None = None, profile: str | None = None, file: Path | None = None) -> Iterator[Profile]:
    """For the duration of a command: the profile ``profile`` (None: as the environment says) of the profile
    file ``file``, else of ``repo`` (unless ``$SKEWLESS_CONFIG`` names one), checked at once. Both are set as
    ``SKEWLESS_PROFILE`` / ``SKEWLESS_CONFIG`` so that the processes a command starts (the streaming job,
    spark-submit) read the same profile; the previous values come back afterwards."""
    saved = {name: os.environ.get(name) for name in (CONFIG_FILE_ENV, PROFILE_ENV)}
    try:
        path = file if file is not None else profile_file(repo)
        if path is not None:
            os.environ[CONFIG_FILE_ENV] = str(path)
        if profile:
            os.environ[PROFILE_ENV] = profile
        ports()  # a bad port variable fails here, before the command starts
        yield load_profile()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass(frozen=True)
class Ports:
    kafka: int
    kafka_controller: int
    flink_rest: int
    redis: int
    s3: int  # the object store (s3proxy) of the cluster topology
    postgres: int  # the catalog database (PostgreSQL) of the cluster topology
    spark_master: int  # the Spark master of the cluster topology (its web UI: +1, the workers' UIs: +2, +3)


@dataclass(frozen=True)
class Paths:
    root: Path
    state: Path  # runtime state of `make up`: pids, data, logs
    logs: Path
    jars: Path  # JVM artifacts fetched by `make setup` from infra/pom.xml
    warehouse: Path  # Iceberg warehouse (file://) of the sqlite catalog
    catalog_db: Path  # Iceberg JDBC/SQL catalog (sqlite); a postgres catalog: shared_catalog()


def ports() -> Ports:
    return Ports(
        kafka=_env_int("SKEWLESS_KAFKA_PORT", 9092),
        kafka_controller=_env_int("SKEWLESS_KAFKA_CONTROLLER_PORT", 9093),
        flink_rest=_env_int("SKEWLESS_FLINK_REST_PORT", 8081),
        redis=_env_int("SKEWLESS_REDIS_PORT", 6379),
        s3=_env_int("SKEWLESS_S3_PORT", 9000),
        postgres=_env_int("SKEWLESS_POSTGRES_PORT", 5432),
        spark_master=_env_int("SKEWLESS_SPARK_MASTER_PORT", 7077),
    )


def paths(profile: Profile | None = None) -> Paths:
    """Paths; the Iceberg catalog and warehouse: ``SKEWLESS_CATALOG_DB`` / ``SKEWLESS_WAREHOUSE``, else the
    profile's ``catalog.path`` / ``catalog.warehouse``, else under the state folder."""
    state = _env_path("SKEWLESS_STATE_DIR", PROJECT_ROOT / ".skewless")
    prof = profile or active_profile()
    catalog = prof.catalog
    warehouse = catalog.warehouse[len("file://"):] if (catalog.warehouse or "").startswith("file://") else catalog.warehouse
    if catalog.type != "sqlite":  # its warehouse is on the object store (shared_catalog()); these stay local
        warehouse = None
    if warehouse is not None and "://" in warehouse:
        raise ConfigError(f"{prof.where}: catalog.warehouse {warehouse!r}: only a local folder (or file:// URI) is "
                          "supported yet; give a folder")
    return Paths(
        root=PROJECT_ROOT,
        state=state,
        logs=_env_path("SKEWLESS_LOG_DIR", state / "logs"),
        jars=_env_path("SKEWLESS_JARS_DIR", PROJECT_ROOT / "infra" / ".cache" / "jars"),
        warehouse=_env_path("SKEWLESS_WAREHOUSE", Path(warehouse) if warehouse else state / "warehouse"),
        catalog_db=_env_path("SKEWLESS_CATALOG_DB", Path(catalog.path) if catalog.path else state / "catalog.db"),
    )


HOST = "127.0.0.1"  # every server we start listens on loopback only
ICEBERG_CATALOG_NAME = "skewless"  # same name for Spark's JdbcCatalog and PyIceberg's SqlCatalog
DEFAULT_PROJECT = "skewless"


def default_project(profile: Profile | None = None) -> str:
    """Key prefix of the online store (the project): ``$SKEWLESS_PROJECT``, the profile's ``project`` or
    ``skewless``."""
    return os.environ.get("SKEWLESS_PROJECT") or (profile or active_profile()).project or DEFAULT_PROJECT


def redis_url(port: int | None = None, db: int = 0) -> str:
    """The URL of the project's Redis on loopback (``port`` default: :func:`ports`' redis)."""
    return f"redis://{HOST}:{ports().redis if port is None else port}/{db}"


# --- secrets: from the environment or a file, never from argv -------------------------------------


def secret(name: str, ref: SecretRef | None = None, where: str = "") -> str | None:
    """The secret ``SKEWLESS_<name>`` from the environment, or read from the file ``SKEWLESS_<name>_FILE``
    (one trailing newline dropped); else from the profile's reference ``ref`` (named ``where`` in errors);
    None when none is set. Secrets never come from command-line flags (argv is visible to every user in
    ``ps``) nor from the profile file itself."""
    var, file_var = f"SKEWLESS_{name}", f"SKEWLESS_{name}_FILE"
    value, path = os.environ.get(var) or None, os.environ.get(file_var) or None
    if value is not None and path is not None:
        raise ConfigError(f"both {var} and {file_var} are set; unset one of them")
    if path is not None:
        return _secret_file(path, f"{file_var}={path}")
    if value is not None or ref is None:
        return value
    if ref.file is not None:
        return _secret_file(ref.file, f"{where}: {{file: {ref.file}}}")
    value = os.environ.get(ref.env or "") or None
    if value is None:
        raise ConfigError(f"{where}: {{env: {ref.env}}} but the environment variable {ref.env} is not set; "
                          f"export it (or set {var} / {file_var})")
    return value


def _secret_file(path: str, label: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read the secret file ({exc.strerror}); "
                          "point it at a readable file") from None
    except UnicodeDecodeError:  # the message would quote a byte of the secret
        raise ConfigError(f"{label}: the secret file is not UTF-8 text") from None
    text = text[:-1] if text.endswith("\n") else text
    if not text:
        raise ConfigError(f"{label}: the secret file is empty; write the secret into it")
    return text


def api_token() -> str | None:
    """The feature server's bearer token: ``SKEWLESS_API_TOKEN`` or ``SKEWLESS_API_TOKEN_FILE``."""
    return secret("API_TOKEN")


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: the only form in which a URL is printed."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


# --- Redis ------------------------------------------------------------------------------------------

REDIS_SCHEMES = ("redis", "rediss", "unix")
REDIS_CONNECT_TIMEOUT_S = 3.0  # default of SKEWLESS_REDIS_CONNECT_TIMEOUT_S
REDIS_TIMEOUT_S = 5.0  # default of SKEWLESS_REDIS_TIMEOUT_S (every read and write on a Redis socket)
KAFKA_TIMEOUT_S = 5.0  # default of SKEWLESS_KAFKA_TIMEOUT_S (metadata, delivery of a push)


def redis_timeouts(profile: Profile | None = None) -> tuple[float, float]:
    """``(connect, read/write)`` timeouts in seconds of every Redis client: ``SKEWLESS_REDIS_CONNECT_TIMEOUT_S``
    and ``SKEWLESS_REDIS_TIMEOUT_S``, else the profile's ``online_store.connect_timeout_s`` / ``timeout_s`` (a hung
    Redis fails a call after them instead of blocking it forever)."""
    store = (profile or active_profile()).online_store
    return (env_seconds("SKEWLESS_REDIS_CONNECT_TIMEOUT_S", store.connect_timeout_s or REDIS_CONNECT_TIMEOUT_S),
            env_seconds("SKEWLESS_REDIS_TIMEOUT_S", store.timeout_s or REDIS_TIMEOUT_S))


def kafka_timeout_s(profile: Profile | None = None) -> float:
    """How long a Kafka client call of a request (``/push``: metadata, delivery) may take:
    ``SKEWLESS_KAFKA_TIMEOUT_S``, else the profile's ``kafka.timeout_s``."""
    return env_seconds("SKEWLESS_KAFKA_TIMEOUT_S", (profile or active_profile()).kafka.timeout_s or KAFKA_TIMEOUT_S)


REDIS_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")  # redis+cluster://HOST:PORT[,HOST:PORT...]


def kafka_timeout_properties(client: str = "librdkafka") -> dict[str, str]:
    """A Kafka client's request and connect timeouts from :func:`kafka_timeout_s` (a broker that does not answer
    fails the request after it; producers and consumers retry): librdkafka's names (``client="librdkafka"``) or
    the Java client's (``"flink"``). A producer also takes ``request.timeout.ms`` (librdkafka: producer only)."""
    ms = max(1, int(kafka_timeout_s() * 1000))
    if client == "flink":
        return {"request.timeout.ms": str(ms), "socket.connection.setup.timeout.ms": str(ms),
                "socket.connection.setup.timeout.max.ms": str(ms)}
    return {"socket.timeout.ms": str(max(10, ms)), "socket.connection.setup.timeout.ms": str(max(1000, ms))}


@dataclass(frozen=True)
class RedisTarget:
    """Where the online store is and its password: from ``SKEWLESS_REDIS_PASSWORD`` (or ``_FILE``), else the
    profile's ``online_store.password`` reference, unless the URL carries one (an ACL user name goes in the URL:
    ``redis://USER@HOST:PORT/DB``, or the profile's ``online_store.username``).

    A Redis Cluster (``cluster``) is named by its seed ``nodes`` (``HOST:PORT``); its ``url`` is then the
    ``redis+cluster://HOST:PORT,...`` form (``rediss+cluster://`` with TLS), which round-trips through
    ``--redis-url`` and ``SKEWLESS_REDIS_URL``; :attr:`seed_url` is a plain URL of the first node."""

    url: str
    password: str | None = field(repr=False)
    tls_ca_file: str | None = None  # rediss://: trust exactly this CA (PEM) instead of the system's
    connect_timeout_s: float = REDIS_CONNECT_TIMEOUT_S
    timeout_s: float = REDIS_TIMEOUT_S  # every read and write on the socket
    cluster: bool = False
    nodes: tuple[str, ...] = ()  # a cluster's seed nodes, HOST:PORT
    username: str | None = None

    @property
    def tls(self) -> bool:
        return self.url.startswith(("rediss://", "rediss+cluster://"))

    @property
    def seed_url(self) -> str:
        """``self.url``, or for a cluster ``redis[s]://`` of its first seed node (a cluster has database 0 only)."""
        return f"{'rediss' if self.tls else 'redis'}://{self.nodes[0]}" if self.cluster else self.url

    def single_node_url(self) -> str:
        """:attr:`url` for a client of one Redis; a cluster is refused with one line (:class:`ConfigError`) by the
        readers and writers that do not speak Redis Cluster yet (rather than a MOVED error on some keys)."""
        if self.cluster:
            raise ConfigError(f"the online store {self.redacted} is a Redis Cluster, which this command does not "
                              "read or write yet; select a profile whose online_store is one Redis (url: redis://...)")
        return self.url

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``redis.Redis.from_url(self.url, **kwargs)`` (a password in the URL wins)."""
        out: dict[str, Any] = {"socket_connect_timeout": self.connect_timeout_s, "socket_timeout": self.timeout_s}
        if self.password is not None:
            out["password"] = self.password
        if self.username is not None:
            out["username"] = self.username
        if self.tls and self.tls_ca_file:
            out["ssl_ca_certs"] = self.tls_ca_file
        return out

    @property
    def redacted(self) -> str:
        return redact_url(self.url)


def check_redis_url(url: str) -> str:
    """``url`` if it is a Redis URL (redis://, rediss://, unix:// or a cluster's redis+cluster://HOST:PORT,...),
    else :class:`ConfigError`."""
    scheme = urlsplit(url).scheme
    if scheme not in REDIS_SCHEMES + REDIS_CLUSTER_SCHEMES:
        raise ConfigError(f"{redact_url(url)!r} is not a Redis URL; use redis://HOST:PORT/DB "
                          "(rediss:// for TLS, unix:///path/to/socket, redis+cluster://HOST:PORT,... for a cluster)")
    if scheme in REDIS_CLUSTER_SCHEMES:
        cluster_nodes(url)
    return url


def cluster_nodes(url: str) -> tuple[str, ...]:
    """The seed nodes ``HOST:PORT`` of a ``redis[s]+cluster://HOST:PORT[,HOST:PORT...]`` URL."""
    netloc = urlsplit(url).netloc.rsplit("@", 1)[-1]
    return tuple(check_hostport(n.strip(), f"Redis Cluster URL {redact_url(url)!r}") for n in netloc.split(","))


def cluster_url(nodes: tuple[str, ...], tls: bool = False) -> str:
    """The ``redis[s]+cluster://`` URL of a cluster's seed ``nodes``."""
    return f"{'rediss' if tls else 'redis'}+cluster://{','.join(nodes)}"


def redis_target(url: str | None = None, profile: Profile | None = None) -> RedisTarget:
    """The online store at ``url`` (a flag), else ``SKEWLESS_REDIS_URL``, else the profile's ``online_store``,
    else ``redis://127.0.0.1:$SKEWLESS_REDIS_PORT/0``; with the password (:func:`secret`), the timeouts
    (:func:`redis_timeouts`) and, for TLS, the CA file (``SKEWLESS_REDIS_TLS_CA_FILE``, else the profile's)."""
    prof = profile or active_profile()
    store = prof.online_store
    url = url or os.environ.get("SKEWLESS_REDIS_URL") or None
    if url is not None:
        url = check_redis_url(url)
    elif store.type == "redis_cluster":
        url = cluster_url(store.nodes, store.tls)
    else:
        url = store.url or redis_url()
    ca_file = os.environ.get("SKEWLESS_REDIS_TLS_CA_FILE") or None
    if ca_file is not None and not Path(ca_file).is_file():
        raise ConfigError(f"SKEWLESS_REDIS_TLS_CA_FILE={ca_file}: no such file; point it at the CA certificate (PEM)")
    if ca_file is None and store.tls_ca_file is not None:
        ca_file = store.tls_ca_file
        if not Path(ca_file).is_file():
            raise ConfigError(f"{prof.where}: online_store.tls_ca_file {ca_file}: no such file; point it at the CA "
                              "certificate (PEM)")
    connect_s, timeout_s = redis_timeouts(prof)
    cluster = urlsplit(url).scheme in REDIS_CLUSTER_SCHEMES
    return RedisTarget(url, secret("REDIS_PASSWORD", store.password, f"{prof.where}: online_store.password"), ca_file,
                       connect_s, timeout_s, cluster, cluster_nodes(url) if cluster else (), store.username)


# --- Kafka: where, and client security (SASL / TLS) ----------------------------------------------------

# the Flink Kafka connector jar (flink-sql-connector-kafka) shades the Kafka client under this package
FLINK_KAFKA_SHADED_PREFIX = "org.apache.flink.kafka.shaded."


def kafka_bootstrap(profile: Profile | None = None) -> str:
    """Kafka's bootstrap servers: ``SKEWLESS_KAFKA_BOOTSTRAP``, else the profile's ``kafka.bootstrap``, else
    ``127.0.0.1:$SKEWLESS_KAFKA_PORT``."""
    raw = os.environ.get("SKEWLESS_KAFKA_BOOTSTRAP") or None
    if raw is not None:
        return ",".join(check_hostport(h.strip(), "SKEWLESS_KAFKA_BOOTSTRAP") for h in raw.split(","))
    return (profile or active_profile()).kafka.bootstrap or f"{HOST}:{ports().kafka}"


@dataclass(frozen=True)
class KafkaSecurity:
    """How every Kafka client of the project (producer, push, archive, streaming job) authenticates."""

    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None


def kafka_security(profile: Profile | None = None) -> KafkaSecurity:
    """From ``SKEWLESS_KAFKA_SECURITY_PROTOCOL``, ``_SASL_MECHANISM``, ``_SASL_USERNAME``,
    ``_SASL_PASSWORD`` (or ``_SASL_PASSWORD_FILE``) and ``_SSL_CA_FILE``, each else the profile's ``kafka``
    key of the same name; checked together (a message names the variable, or the profile key, that is wrong)."""
    prof = profile or active_profile()
    k = prof.kafka

    def pick(var: str, key: str, value: str | None) -> tuple[str | None, str]:
        env = os.environ.get(var) or None
        return (env, var) if env is not None or value is None else (value, f"{prof.where}: kafka.{key}")

    protocol_raw, protocol_at = pick("SKEWLESS_KAFKA_SECURITY_PROTOCOL", "security_protocol", k.security_protocol)
    protocol = (protocol_raw or "PLAINTEXT").upper()
    if protocol not in KAFKA_SECURITY_PROTOCOLS:
        raise ConfigError(f"{protocol_at}={protocol!r} is not one of {', '.join(KAFKA_SECURITY_PROTOCOLS)}")
    sasl = protocol.startswith("SASL_")
    mechanism, mechanism_at = pick("SKEWLESS_KAFKA_SASL_MECHANISM", "sasl_mechanism", k.sasl_mechanism)
    username, _ = pick("SKEWLESS_KAFKA_SASL_USERNAME", "sasl_username", k.sasl_username)
    password = secret("KAFKA_SASL_PASSWORD", k.sasl_password, f"{prof.where}: kafka.sasl_password")
    ca_file, ca_at = pick("SKEWLESS_KAFKA_SSL_CA_FILE", "ssl_ca_file", k.ssl_ca_file)
    if sasl:
        mechanism = (mechanism or "PLAIN").upper()
        if mechanism not in KAFKA_SASL_MECHANISMS:
            raise ConfigError(f"{mechanism_at}={mechanism!r} is not one of {', '.join(KAFKA_SASL_MECHANISMS)}")
        if username is None or password is None:
            raise ConfigError(f"{protocol_at}={protocol} needs SKEWLESS_KAFKA_SASL_USERNAME and "
                              "SKEWLESS_KAFKA_SASL_PASSWORD (or SKEWLESS_KAFKA_SASL_PASSWORD_FILE), or the profile's "
                              "kafka.sasl_username and kafka.sasl_password")
    elif mechanism or username or password:
        raise ConfigError(f"SASL settings are given but {protocol_at}={protocol}; set it to SASL_SSL (or "
                          "SASL_PLAINTEXT) or unset the SKEWLESS_KAFKA_SASL_* variables (profile: kafka.sasl_*)")
    if ca_file is not None:
        if not protocol.endswith("SSL"):
            raise ConfigError(f"{ca_at} is set but {protocol_at}={protocol}; use SSL or SASL_SSL")
        if not Path(ca_file).is_file():
            raise ConfigError(f"{ca_at}={ca_file}: no such file; point it at the CA certificate (PEM)")
    return KafkaSecurity(protocol, mechanism if sasl else None, username, password, ca_file)


def kafka_client_properties(client: str = "librdkafka", security: KafkaSecurity | None = None) -> dict[str, str]:
    """The security properties of a Kafka client, from :func:`kafka_security`: ``client="librdkafka"`` gives
    confluent-kafka's names, ``"flink"`` the Java client's names as the Flink Kafka connector takes them
    (its shaded login modules). Empty for PLAINTEXT. Contains the SASL password: never print it."""
    if client not in ("librdkafka", "flink"):
        raise ValueError(f"client must be 'librdkafka' or 'flink', got {client!r}")
    s = security if security is not None else kafka_security()
    if s.protocol == "PLAINTEXT":
        return {}
    props = {"security.protocol": s.protocol}
    if client == "librdkafka":
        if s.mechanism:
            props.update({"sasl.mechanism": s.mechanism, "sasl.username": s.username or "",
                          "sasl.password": s.password or ""})
        if s.ca_file:
            props["ssl.ca.location"] = s.ca_file
        return props
    if s.mechanism:
        module = ("common.security.plain.PlainLoginModule" if s.mechanism == "PLAIN"
                  else "common.security.scram.ScramLoginModule")
        props["sasl.mechanism"] = s.mechanism
        props["sasl.jaas.config"] = (f"{FLINK_KAFKA_SHADED_PREFIX}org.apache.kafka.{module} required "
                                     f"username={_jaas_quote(s.username or '')} password={_jaas_quote(s.password or '')};")
    if s.ca_file:
        props["ssl.truststore.type"] = "PEM"
        props["ssl.truststore.location"] = s.ca_file
    return props


def _jaas_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- Flink, Spark, object storage ---------------------------------------------------------------------


def flink_rest_url(profile: Profile | None = None) -> str:
    """The Flink session cluster's REST endpoint: ``SKEWLESS_FLINK_REST_URL``, else the profile's
    ``flink.rest_url``, else ``http://127.0.0.1:$SKEWLESS_FLINK_REST_PORT``."""
    raw = os.environ.get("SKEWLESS_FLINK_REST_URL") or (profile or active_profile()).flink.rest_url
    if raw is None:
        return f"http://{HOST}:{ports().flink_rest}"
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
        raise ConfigError(f"Flink REST URL {raw!r} is not http://HOST:PORT; fix SKEWLESS_FLINK_REST_URL or the "
                          "profile's flink.rest_url")
    return raw.rstrip("/")


def spark_master(default: str, profile: Profile | None = None) -> str:
    """Where Spark jobs run: ``SKEWLESS_SPARK_MASTER``, else the profile's ``spark.master``, else ``default``
    (the caller's: ``local[*]`` for a backfill)."""
    return os.environ.get("SKEWLESS_SPARK_MASTER") or (profile or active_profile()).spark.master or default


@dataclass(frozen=True)
class S3Target:
    """An S3-compatible object store with its resolved credentials (never printed: ``repr`` omits them)."""

    endpoint: str
    region: str
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    path_style_access: bool
    timeout_s: float


@dataclass(frozen=True)
class SharedCatalog:
    """The Iceberg JDBC catalog in PostgreSQL (``catalog.type: postgres``) and its ``s3://`` warehouse."""

    uri: str  # postgresql://HOST:PORT/DB, no credentials
    user: str
    password: str = field(repr=False)
    warehouse: str  # s3://BUCKET/PREFIX
    s3: S3Target
    timeout_s: float

    @property
    def host_port_db(self) -> tuple[str, int, str]:
        parts = urlsplit(self.uri)
        return parts.hostname or HOST, parts.port or 5432, parts.path.lstrip("/") or "postgres"

    @property
    def bucket(self) -> str:
        return self.warehouse[len("s3://"):].split("/")[0]


DEFAULT_OBJECT_STORE_TIMEOUT_S = 5.0
DEFAULT_CATALOG_TIMEOUT_S = 5.0


def object_store(profile: Profile | None = None) -> ObjectStoreSettings:
    """The profile's ``object_store`` (an S3-compatible endpoint; credentials as references)."""
    return (profile or active_profile()).object_store


def s3_target(profile: Profile | None = None) -> S3Target:
    """The profile's object store with its credentials resolved (``SKEWLESS_S3_ACCESS_KEY_ID`` /
    ``SKEWLESS_S3_SECRET_ACCESS_KEY`` and their ``_FILE`` forms win over the references)."""
    prof = profile or active_profile()
    store = prof.object_store
    if not store.endpoint:
        raise ConfigError(f"{prof.where}: object_store.endpoint is not set; a postgres catalog's s3:// warehouse needs "
                          "it (object_store: {endpoint: http://HOST:PORT, ...})")
    key_id = secret("S3_ACCESS_KEY_ID", store.access_key_id, f"{prof.where}: object_store.access_key_id")
    key = secret("S3_SECRET_ACCESS_KEY", store.secret_access_key, f"{prof.where}: object_store.secret_access_key")
    if not key_id or not key:
        raise ConfigError(f"{prof.where}: object_store.access_key_id and secret_access_key are needed; write them as "
                          "{env: VARIABLE} or {file: PATH}")
    return S3Target(store.endpoint.rstrip("/"), store.region or "us-east-1", key_id, key, store.path_style_access,
                    store.timeout_s or DEFAULT_OBJECT_STORE_TIMEOUT_S)


def shared_catalog(profile: Profile | None = None) -> SharedCatalog | None:
    """The profile's PostgreSQL catalog with resolved credentials, or None for the sqlite catalog (:func:`paths`)."""
    prof = profile or active_profile()
    cat = prof.catalog
    if cat.type != "postgres":
        return None
    assert cat.uri and cat.user and cat.warehouse  # checked when the profile was read
    password = secret("CATALOG_PASSWORD", cat.password, f"{prof.where}: catalog.password")
    if not password:
        raise ConfigError(f"{prof.where}: catalog.password is needed; write it as {{env: VARIABLE}} or {{file: PATH}}")
    return SharedCatalog(cat.uri, cat.user, password, cat.warehouse.rstrip("/"), s3_target(prof),
                         cat.timeout_s or DEFAULT_CATALOG_TIMEOUT_S)
