"""Where things live and which ports they use: one place, each value overridable by environment.

Every service, script and test reads ports and paths from here (or from the same
``SKEWLESS_*`` environment variables in shell scripts), so that a port clash is fixed once. So do the
credentials: secrets (Redis password, API token, Kafka SASL password) come only from the environment or a
file (:func:`secret`), never from flags, and every printed URL goes through :func:`redact_url`. The Redis
target (:func:`redis_target`) and the Kafka clients' security properties (:func:`kafka_client_properties`)
are built here, once, for every command and job (docs/infra.md, "Credentials and TLS").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration value (environment variable, secret file) is wrong; the message names it and the fix."""


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


@dataclass(frozen=True)
class Ports:
    kafka: int
    kafka_controller: int
    flink_rest: int
    redis: int


@dataclass(frozen=True)
class Paths:
    root: Path
    state: Path  # runtime state of `make up`: pids, data, logs
    logs: Path
    jars: Path  # JVM artifacts fetched by `make setup` from infra/pom.xml
    warehouse: Path  # Iceberg warehouse (file://)
    catalog_db: Path  # Iceberg JDBC/SQL catalog (sqlite)


def ports() -> Ports:
    return Ports(
        kafka=_env_int("SKEWLESS_KAFKA_PORT", 9092),
        kafka_controller=_env_int("SKEWLESS_KAFKA_CONTROLLER_PORT", 9093),
        flink_rest=_env_int("SKEWLESS_FLINK_REST_PORT", 8081),
        redis=_env_int("SKEWLESS_REDIS_PORT", 6379),
    )


def paths() -> Paths:
    state = _env_path("SKEWLESS_STATE_DIR", PROJECT_ROOT / ".skewless")
    return Paths(
        root=PROJECT_ROOT,
        state=state,
        logs=_env_path("SKEWLESS_LOG_DIR", state / "logs"),
        jars=_env_path("SKEWLESS_JARS_DIR", PROJECT_ROOT / "infra" / ".cache" / "jars"),
        warehouse=_env_path("SKEWLESS_WAREHOUSE", state / "warehouse"),
        catalog_db=_env_path("SKEWLESS_CATALOG_DB", state / "catalog.db"),
    )


HOST = "127.0.0.1"  # every server we start listens on loopback only
ICEBERG_CATALOG_NAME = "skewless"  # same name for Spark's JdbcCatalog and PyIceberg's SqlCatalog
DEFAULT_PROJECT = "skewless"


def default_project() -> str:
    """Key prefix of the online store (the project): ``$SKEWLESS_PROJECT`` or ``skewless``."""
    return os.environ.get("SKEWLESS_PROJECT") or DEFAULT_PROJECT


def redis_url(port: int | None = None, db: int = 0) -> str:
    """The URL of the project's Redis on loopback (``port`` default: :func:`ports`' redis)."""
    return f"redis://{HOST}:{ports().redis if port is None else port}/{db}"


# --- secrets: from the environment or a file, never from argv -------------------------------------


def secret(name: str) -> str | None:
    """The secret ``SKEWLESS_<name>`` from the environment, or read from the file ``SKEWLESS_<name>_FILE``
    (one trailing newline dropped); None when neither is set. Secrets never come from command-line flags:
    argv is visible to every user in ``ps``."""
    var, file_var = f"SKEWLESS_{name}", f"SKEWLESS_{name}_FILE"
    value, path = os.environ.get(var) or None, os.environ.get(file_var) or None
    if value is not None and path is not None:
        raise ConfigError(f"both {var} and {file_var} are set; unset one of them")
    if path is None:
        return value
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file_var}={path}: cannot read the secret file ({exc.strerror}); "
                          "point it at a readable file") from None
    except UnicodeDecodeError:  # the message would quote a byte of the secret
        raise ConfigError(f"{file_var}={path}: the secret file is not UTF-8 text") from None
    text = text[:-1] if text.endswith("\n") else text
    if not text:
        raise ConfigError(f"{file_var}={path}: the secret file is empty; write the secret into it")
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


def redis_timeouts() -> tuple[float, float]:
    """``(connect, read/write)`` timeouts in seconds of every Redis client: ``SKEWLESS_REDIS_CONNECT_TIMEOUT_S``
    and ``SKEWLESS_REDIS_TIMEOUT_S`` (a hung Redis fails a call after them instead of blocking it forever)."""
    return (env_seconds("SKEWLESS_REDIS_CONNECT_TIMEOUT_S", REDIS_CONNECT_TIMEOUT_S),
            env_seconds("SKEWLESS_REDIS_TIMEOUT_S", REDIS_TIMEOUT_S))


def kafka_timeout_s() -> float:
    """How long a Kafka client call of a request (``/push``: metadata, delivery) may take:
    ``SKEWLESS_KAFKA_TIMEOUT_S``."""
    return env_seconds("SKEWLESS_KAFKA_TIMEOUT_S", KAFKA_TIMEOUT_S)


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
    """Where the online store is and its password: from ``SKEWLESS_REDIS_PASSWORD`` (or ``_FILE``) unless the
    URL carries one (an ACL user name goes in the URL: ``redis://USER@HOST:PORT/DB``)."""

    url: str
    password: str | None = field(repr=False)
    tls_ca_file: str | None = None  # rediss://: trust exactly this CA (PEM) instead of the system's
    connect_timeout_s: float = REDIS_CONNECT_TIMEOUT_S
    timeout_s: float = REDIS_TIMEOUT_S  # every read and write on the socket

    @property
    def tls(self) -> bool:
        return self.url.startswith("rediss://")

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``redis.Redis.from_url(self.url, **kwargs)`` (a password in the URL wins)."""
        out: dict[str, Any] = {"socket_connect_timeout": self.connect_timeout_s, "socket_timeout": self.timeout_s}
        if self.password is not None:
            out["password"] = self.password
        if self.tls and self.tls_ca_file:
            out["ssl_ca_certs"] = self.tls_ca_file
        return out

    @property
    def redacted(self) -> str:
        return redact_url(self.url)


def check_redis_url(url: str) -> str:
    """``url`` if it is a Redis URL (redis://, rediss:// or unix://), else :class:`ConfigError`."""
    scheme = urlsplit(url).scheme
    if scheme not in REDIS_SCHEMES:
        raise ConfigError(f"{redact_url(url)!r} is not a Redis URL; use redis://HOST:PORT/DB "
                          "(rediss:// for TLS, unix:///path/to/socket)")
    return url


def redis_target(url: str | None = None) -> RedisTarget:
    """The online store at ``url`` (default: ``redis://127.0.0.1:$SKEWLESS_REDIS_PORT/0``) with the
    configured password, timeouts (:func:`redis_timeouts`) and, for ``rediss://``, ``SKEWLESS_REDIS_TLS_CA_FILE``."""
    url = check_redis_url(url) if url else redis_url()
    ca_file = os.environ.get("SKEWLESS_REDIS_TLS_CA_FILE") or None
    if ca_file is not None and not Path(ca_file).is_file():
        raise ConfigError(f"SKEWLESS_REDIS_TLS_CA_FILE={ca_file}: no such file; point it at the CA certificate (PEM)")
    connect_s, timeout_s = redis_timeouts()
    return RedisTarget(url, secret("REDIS_PASSWORD"), ca_file, connect_s, timeout_s)


# --- Kafka client security (SASL / TLS) -------------------------------------------------------------

KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# the Flink Kafka connector jar (flink-sql-connector-kafka) shades the Kafka client under this package
FLINK_KAFKA_SHADED_PREFIX = "org.apache.flink.kafka.shaded."


@dataclass(frozen=True)
class KafkaSecurity:
    """How every Kafka client of the project (producer, push, archive, streaming job) authenticates."""

    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None


def kafka_security() -> KafkaSecurity:
    """From ``SKEWLESS_KAFKA_SECURITY_PROTOCOL``, ``_SASL_MECHANISM``, ``_SASL_USERNAME``,
    ``_SASL_PASSWORD`` (or ``_SASL_PASSWORD_FILE``) and ``_SSL_CA_FILE``; checked together."""
    protocol = (os.environ.get("SKEWLESS_KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT").upper()
    if protocol not in KAFKA_SECURITY_PROTOCOLS:
        raise ConfigError(f"SKEWLESS_KAFKA_SECURITY_PROTOCOL={protocol!r} is not one of {', '.join(KAFKA_SECURITY_PROTOCOLS)}")
    sasl = protocol.startswith("SASL_")
    mechanism = os.environ.get("SKEWLESS_KAFKA_SASL_MECHANISM") or None
    username = os.environ.get("SKEWLESS_KAFKA_SASL_USERNAME") or None
    password = secret("KAFKA_SASL_PASSWORD")
    ca_file = os.environ.get("SKEWLESS_KAFKA_SSL_CA_FILE") or None
    if sasl:
        mechanism = (mechanism or "PLAIN").upper()
        if mechanism not in KAFKA_SASL_MECHANISMS:
            raise ConfigError(f"SKEWLESS_KAFKA_SASL_MECHANISM={mechanism!r} is not one of {', '.join(KAFKA_SASL_MECHANISMS)}")
        if username is None or password is None:
            raise ConfigError(f"SKEWLESS_KAFKA_SECURITY_PROTOCOL={protocol} needs SKEWLESS_KAFKA_SASL_USERNAME and "
                              "SKEWLESS_KAFKA_SASL_PASSWORD (or SKEWLESS_KAFKA_SASL_PASSWORD_FILE)")
    elif mechanism or username or password:
        raise ConfigError(f"SASL settings are given but SKEWLESS_KAFKA_SECURITY_PROTOCOL={protocol}; "
                          "set it to SASL_SSL (or SASL_PLAINTEXT) or unset the SKEWLESS_KAFKA_SASL_* variables")
    if ca_file is not None:
        if not protocol.endswith("SSL"):
            raise ConfigError(f"SKEWLESS_KAFKA_SSL_CA_FILE is set but SKEWLESS_KAFKA_SECURITY_PROTOCOL={protocol}; "
                              "use SSL or SASL_SSL")
        if not Path(ca_file).is_file():
            raise ConfigError(f"SKEWLESS_KAFKA_SSL_CA_FILE={ca_file}: no such file; point it at the CA certificate (PEM)")
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
