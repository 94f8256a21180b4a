"""The profile file: where every component is and how to authenticate, per named profile (docs/deploy.md).

A feature repository may hold ``skewless.yaml`` (the file :data:`PROFILE_FILE_NAME`, beside its definitions, as
Feast's ``feature_store.yaml``)::

    default_profile: local          # optional; SKEWLESS_PROFILE or --profile select another
    profiles:
      local: {}                     # the built-in values: the `make up` stack on 127.0.0.1
      prod:
        online_store: {type: redis_cluster, nodes: ["10.0.0.1:6379", "10.0.0.2:6379"],
                       password: {env: PROD_REDIS_PASSWORD}}
        kafka: {bootstrap: "k1:9092,k2:9092", security_protocol: SASL_SSL, sasl_username: svc,
                sasl_password: {file: /run/secrets/kafka}}

This module reads and validates the file into a :class:`Profile` (plain data; a secret is a
:class:`SecretRef` to an environment variable or a file, never the secret itself). Every mistake (unknown key,
wrong type, a secret written inline, an unknown profile) is one :class:`ConfigError` line naming the file, the
profile, the key and the fix. :mod:`skewless.config` layers the environment over the selected profile.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PROFILE_FILE_NAME = "skewless.yaml"
CONFIG_FILE_ENV = "SKEWLESS_CONFIG"  # a profile file's path (wins over the repository's skewless.yaml)
PROFILE_ENV = "SKEWLESS_PROFILE"  # the profile's name (the CLI's --profile sets it for the command)
DEFAULT_REPO = "feature_defs"  # the commands' default --repo, relative to the working directory
BUILTIN_PROFILE = "local"  # the name of the built-in profile (no file, or a file without it)
ONLINE_STORE_TYPES = ("redis", "redis_cluster")
CATALOG_TYPES = ("sqlite", "postgres")  # the Iceberg JDBC catalog's database (Spark: JDBC, PyIceberg: SqlCatalog)
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
TOP_KEYS = ("default_profile", "profiles")


class ConfigError(ValueError):
    """A configuration value (profile file, environment variable, secret file) is wrong; the message names it
    and the fix."""


@dataclass(frozen=True)
class SecretRef:
    """Where a secret is: the environment variable ``env`` or the file ``file`` (exactly one)."""

    env: str | None = None
    file: str | None = None

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env else f"file {self.file}"


def _opt(kind: str, default: Any = None, **extra: Any) -> Any:
    """A profile key of ``kind`` (str, url, hostports, seconds, count, bool, secret, path, choice, nodes)."""
    return field(default=default, metadata={"kind": kind, **extra})


@dataclass(frozen=True)
class OnlineStoreSettings:
    """``online_store``: one Redis (``type: redis``, ``url``) or a Redis Cluster (``type: redis_cluster``,
    ``nodes``: seed ``HOST:PORT``s; ``tls``)."""

    type: str = _opt("choice", "redis", choices=ONLINE_STORE_TYPES)
    url: str | None = _opt("url", schemes=("redis", "rediss", "unix"))
    nodes: tuple[str, ...] = _opt("nodes", ())
    tls: bool = _opt("bool", False)
    username: str | None = _opt("str")
    password: SecretRef | None = _opt("secret")
    tls_ca_file: str | None = _opt("path")
    connect_timeout_s: float | None = _opt("seconds")
    timeout_s: float | None = _opt("seconds")


@dataclass(frozen=True)
class KafkaSettings:
    """``kafka``: bootstrap servers and how every client authenticates."""

    bootstrap: str | None = _opt("hostports")
    security_protocol: str | None = _opt("choice", choices=KAFKA_SECURITY_PROTOCOLS)
    sasl_mechanism: str | None = _opt("choice", choices=KAFKA_SASL_MECHANISMS)
    sasl_username: str | None = _opt("str")
    sasl_password: SecretRef | None = _opt("secret")
    ssl_ca_file: str | None = _opt("path")
    timeout_s: float | None = _opt("seconds")


@dataclass(frozen=True)
class FlinkSettings:
    """``flink``: the session cluster's REST endpoint (jobs are submitted and listed there) and the streaming job's
    ``parallelism`` (default 1; the cluster topology's profile says 4: 2 TaskManagers x 2 slots)."""

    rest_url: str | None = _opt("url", schemes=("http", "https"))
    parallelism: int | None = _opt("count")


@dataclass(frozen=True)
class CatalogSettings:
    """``catalog``: the Iceberg catalog and its warehouse (relative paths: from the profile file's folder).

    ``type: sqlite``: ``path`` (the sqlite file) and a local ``warehouse``. ``type: postgres``: the JDBC catalog
    in the PostgreSQL database ``uri`` (``postgresql://HOST:PORT/DB``) as ``user`` with ``password``, and an
    ``s3://BUCKET/PREFIX`` ``warehouse`` on the profile's ``object_store``."""

    type: str = _opt("choice", "sqlite", choices=CATALOG_TYPES)
    path: str | None = _opt("path")  # the sqlite file
    warehouse: str | None = _opt("path")
    uri: str | None = _opt("url", schemes=("postgresql",))
    user: str | None = _opt("str")
    password: SecretRef | None = _opt("secret")
    timeout_s: float | None = _opt("seconds")


@dataclass(frozen=True)
class ObjectStoreSettings:
    """``object_store``: an S3-compatible endpoint and its credentials (read by a ``postgres`` catalog's
    ``s3://`` warehouse)."""

    endpoint: str | None = _opt("url", schemes=("http", "https"))
    region: str | None = _opt("str")
    access_key_id: SecretRef | None = _opt("secret")
    secret_access_key: SecretRef | None = _opt("secret")
    path_style_access: bool = _opt("bool", False)
    timeout_s: float | None = _opt("seconds")


@dataclass(frozen=True)
class SparkSettings:
    """``spark``: where Spark jobs run (``local[N]``, ``spark://HOST:PORT``)."""

    master: str | None = _opt("str")


@dataclass(frozen=True)
class Profile:
    """One named profile of a profile file (``source``; None for the built-in profile): every section present,
    unset keys None (the environment and the built-in defaults fill them, :mod:`skewless.config`)."""

    name: str = BUILTIN_PROFILE
    source: Path | None = None
    project: str | None = _opt("str")
    online_store: OnlineStoreSettings = _opt("section", OnlineStoreSettings())
    kafka: KafkaSettings = _opt("section", KafkaSettings())
    flink: FlinkSettings = _opt("section", FlinkSettings())
    catalog: CatalogSettings = _opt("section", CatalogSettings())
    object_store: ObjectStoreSettings = _opt("section", ObjectStoreSettings())
    spark: SparkSettings = _opt("section", SparkSettings())

    @property
    def where(self) -> str:
        """How messages name this profile: ``profile 'x' of FILE`` (or the built-in one)."""
        return f"profile {self.name!r} of {self.source}" if self.source else f"the built-in profile {self.name!r}"


# --- finding and reading the file -------------------------------------------------------------------


def profile_file(repo: str | Path | None = None) -> Path | None:
    """The profile file in effect: ``$SKEWLESS_CONFIG`` (must exist), else ``<repo>/skewless.yaml`` when it
    exists (``repo`` default: ``feature_defs`` in the working directory, the commands' default ``--repo``)."""
    explicit = os.environ.get(CONFIG_FILE_ENV) or None
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{CONFIG_FILE_ENV}={explicit}: no such file; point it at a profile file "
                              f"({PROFILE_FILE_NAME}) or unset it")
        return path.resolve()
    candidate = Path(repo if repo is not None else DEFAULT_REPO) / PROFILE_FILE_NAME
    return candidate.resolve() if candidate.is_file() else None


@dataclass(frozen=True)
class ProfileFile:
    """A checked profile file: its profiles by name and the one used when none is selected."""

    path: Path
    profiles: dict[str, Profile]
    default_profile: str | None = None


MAX_PROFILE_FILE_BYTES = 1 << 20  # bounds the cache below in bytes: 16 files of at most 1 MiB
_CACHE: dict[Path, tuple[tuple[int, int], ProfileFile]] = {}  # path -> ((mtime_ns, size), the checked file)


def read_profile_file(path: Path) -> ProfileFile:
    """The checked profile file ``path`` (every profile parsed), cached until the file changes."""
    try:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        cached = _CACHE.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        if st.st_size > MAX_PROFILE_FILE_BYTES:
            raise ConfigError(f"{path}: the profile file is {st.st_size} bytes, more than {MAX_PROFILE_FILE_BYTES}; "
                              "is it the right file?")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the profile file ({exc.strerror}); fix its permissions") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the profile file is not UTF-8 text") from None
    checked = _parse_yaml(path, text)
    if len(_CACHE) > 16:  # a bound: a process reads one or two files
        _CACHE.clear()
    _CACHE[path] = (stamp, checked)
    return checked


def _parse_yaml(path: Path, text: str) -> ProfileFile:
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at} ({getattr(exc, 'problem', None) or 'syntax error'}); "
                          "fix the file") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with the keys {', '.join(TOP_KEYS)}")
    for key in doc:
        if key not in TOP_KEYS:
            raise ConfigError(f"{path}: unknown key {key!r} at the top level; known keys: {', '.join(TOP_KEYS)} "
                              "(settings go under profiles: NAME:)")
    profiles = doc.get("profiles") or {}
    if not isinstance(profiles, dict) or not all(isinstance(n, str) and n for n in profiles):
        raise ConfigError(f"{path}: profiles must be a mapping of profile name -> settings")
    default = doc.get("default_profile")
    if default is not None and (not isinstance(default, str) or (default not in profiles and default != BUILTIN_PROFILE)):
        raise ConfigError(f"{path}: default_profile {default!r} is not a profile of the file; "
                          f"use one of {', '.join(sorted(profiles)) or BUILTIN_PROFILE}")
    # every profile is checked, not only the selected one
    return ProfileFile(path, {name: parse_profile(name, body, path) for name, body in profiles.items()}, default)


def load_profile(repo: str | Path | None = None, name: str | None = None) -> Profile:
    """The selected profile: ``name``, else ``$SKEWLESS_PROFILE``, else the file's ``default_profile``, else
    ``local``; from :func:`profile_file` (``local`` without a file, or not in it, is the built-in profile)."""
    path = profile_file(repo)
    chosen = name or os.environ.get(PROFILE_ENV) or None
    if path is None:
        if chosen not in (None, BUILTIN_PROFILE):
            looked = Path(repo if repo is not None else DEFAULT_REPO) / PROFILE_FILE_NAME
            raise ConfigError(f"profile {chosen!r} is selected but there is no profile file ({looked} does not exist "
                              f"and {CONFIG_FILE_ENV} is unset); write it or select no profile")
        return Profile()
    checked = read_profile_file(path)
    chosen = chosen or checked.default_profile or BUILTIN_PROFILE
    found = checked.profiles.get(chosen)
    if found is None:
        if chosen == BUILTIN_PROFILE:
            return Profile(source=path)
        raise ConfigError(f"{path}: no profile {chosen!r}; use one of "
                          f"{', '.join(sorted({*checked.profiles, BUILTIN_PROFILE}))}")
    return found


# --- validation ---------------------------------------------------------------------------------------


def parse_profile(name: str, body: Any, path: Path) -> Profile:
    """The profile ``name`` of the file ``path`` from its mapping ``body``; :class:`ConfigError` on the first
    mistake."""
    where = f"{path}: profile {name!r}"
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: must be a mapping of sections ({', '.join(_keys(Profile))})")
    values = _section(Profile, body, where, "", path.parent)
    return dataclasses.replace(Profile(name=name, source=path), **values)


def _keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if "kind" in f.metadata]


def _section(cls: type, body: dict[str, Any], where: str, prefix: str, base: Path) -> dict[str, Any]:
    known = {f.name: f for f in dataclasses.fields(cls) if "kind" in f.metadata}
    out: dict[str, Any] = {}
    for key, raw in body.items():
        dotted = f"{prefix}{key}"
        spec = known.get(key) if isinstance(key, str) else None
        if spec is None:
            raise ConfigError(f"{where}: unknown key {dotted!r}; known keys{' of ' + prefix[:-1] if prefix else ''}: "
                              f"{', '.join(known)}")
        if raw is None:
            continue
        kind = spec.metadata["kind"]
        if kind == "section":
            if not isinstance(raw, dict):
                raise ConfigError(f"{where}: {dotted} must be a mapping of its keys ({', '.join(_keys(type(spec.default)))})")
            out[key] = type(spec.default)(**_section(type(spec.default), raw, where, f"{dotted}.", base))
        else:
            out[key] = _value(kind, spec.metadata, raw, f"{where}: {dotted}", key, base)
    if cls is OnlineStoreSettings:
        _check_online_store(out, where, prefix)
    if cls is CatalogSettings:
        _check_catalog(out, where, prefix)
    if cls is KafkaSettings and out.get("security_protocol") is not None:
        out["security_protocol"] = out["security_protocol"].upper()
    return out


def _value(kind: str, meta: Any, raw: Any, at: str, key: str, base: Path) -> Any:
    if kind == "secret":
        return _secret_ref(raw, at, key, base)
    if kind == "bool":
        if not isinstance(raw, bool):
            raise ConfigError(f"{at}: expected true or false, got {raw!r}")
        return raw
    if kind == "seconds":
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 < raw < 86400:
            raise ConfigError(f"{at}: expected a number of seconds > 0, got {raw!r}")
        return float(raw)
    if kind == "count":
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 < raw <= 10_000:
            raise ConfigError(f"{at}: expected a whole number >= 1, got {raw!r}")
        return raw
    if kind == "nodes":
        nodes = [raw] if isinstance(raw, str) else raw
        if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) for n in nodes):
            raise ConfigError(f"{at}: expected a list of HOST:PORT strings, got {raw!r}")
        return tuple(check_hostport(n, at) for n in nodes)
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"{at}: expected a non-empty string, got {raw!r}")
    if kind == "choice":
        value = raw.upper() if meta["choices"][0].isupper() else raw
        if value not in meta["choices"]:
            raise ConfigError(f"{at}: {raw!r} is not one of {', '.join(meta['choices'])}")
        return value
    if kind == "url":
        parts = urlsplit(raw)
        if parts.scheme not in meta["schemes"]:
            raise ConfigError(f"{at}: {raw!r} is not a {'/'.join(s + '://' for s in meta['schemes'])} URL")
        if parts.password is not None:
            raise ConfigError(f"{at}: the URL carries a password (a secret written inline); drop it from the URL "
                              "and write password: {env: VARIABLE} or password: {file: PATH}")
        return raw
    if kind == "hostports":
        return ",".join(check_hostport(h.strip(), at) for h in raw.split(","))
    if kind == "path":
        return raw if "://" in raw else str((base / raw).resolve())
    return raw


def check_hostport(text: str, at: str) -> str:
    """``text`` if it is ``HOST:PORT`` (port 1..65535), else :class:`ConfigError` naming ``at``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{at}: {text!r} is not HOST:PORT (a port 1-65535)")
    return text


def _secret_ref(raw: Any, at: str, key: str, base: Path) -> SecretRef:
    fix = f"write {key}: {{env: VARIABLE}} (an environment variable that holds it) or {key}: {{file: PATH}}"
    if not isinstance(raw, dict):  # never echo the value: it may be the secret itself
        raise ConfigError(f"{at}: a secret written inline is refused (the file is shared and checked in); {fix}")
    if set(raw) - {"env", "file"} or len(raw) != 1:
        raise ConfigError(f"{at}: a secret reference has exactly one key, env or file; {fix}")
    (how, ref), = raw.items()
    if not isinstance(ref, str) or not ref:
        raise ConfigError(f"{at}: {how} must name an environment variable or a file path; {fix}")
    if how == "env":
        if not ref.replace("_", "A").isalnum() or ref[0].isdigit():
            raise ConfigError(f"{at}: {{env: ...}} must be an environment variable's name (letters, digits, _); {fix}")
        return SecretRef(env=ref)
    return SecretRef(file=str((base / ref).resolve()))


def _check_online_store(out: dict[str, Any], where: str, prefix: str) -> None:
    kind = out.get("type", "redis")
    if kind == "redis_cluster":
        if out.get("url"):
            raise ConfigError(f"{where}: {prefix}url is for type redis; a redis_cluster names its seed nodes: "
                              f"{prefix}nodes: [HOST:PORT, ...]")
        if not out.get("nodes"):
            raise ConfigError(f"{where}: {prefix}type redis_cluster needs {prefix}nodes: [HOST:PORT, ...] "
                              "(one or more nodes of the cluster)")
    elif out.get("nodes") or out.get("tls"):
        key = "nodes" if out.get("nodes") else "tls"
        raise ConfigError(f"{where}: {prefix}{key} is for type redis_cluster; for one Redis give {prefix}url: "
                          "redis://HOST:PORT/DB (rediss:// for TLS)")


def _check_catalog(out: dict[str, Any], where: str, prefix: str) -> None:
    warehouse = out.get("warehouse") or ""
    if out.get("type", "sqlite") == "postgres":
        missing = [k for k in ("uri", "user", "password", "warehouse") if not out.get(k)]
        if missing:
            raise ConfigError(f"{where}: {prefix}type postgres needs {', '.join(prefix + k for k in missing)} "
                              f"(uri: postgresql://HOST:PORT/DB, password: {{env: VARIABLE}}, warehouse: s3://BUCKET/PREFIX)")
        if not warehouse.startswith("s3://") or not warehouse[len("s3://"):].split("/")[0]:
            raise ConfigError(f"{where}: {prefix}warehouse {warehouse!r}: a postgres catalog keeps its tables on the "
                              "object store; give s3://BUCKET/PREFIX")
        if out.get("path"):
            raise ConfigError(f"{where}: {prefix}path is the sqlite file of type sqlite; type postgres names {prefix}uri")
    elif any(out.get(k) for k in ("uri", "user", "password")):
        key = next(k for k in ("uri", "user", "password") if out.get(k))
        raise ConfigError(f"{where}: {prefix}{key} is for type postgres; type sqlite names {prefix}path (the sqlite file)")


def dump_profile_file(profiles: dict[str, dict[str, Any]], default_profile: str | None, header: str = "",
                      path: Path | None = None) -> str:
    """The text of a profile file holding ``profiles`` (name -> sections), each checked as the reader checks it
    (relative paths against ``path``'s folder); ``header`` becomes ``#`` comment lines on top."""
    import yaml

    for name, body in profiles.items():
        parse_profile(name, body, path or Path.cwd() / PROFILE_FILE_NAME)
    doc: dict[str, Any] = {"default_profile": default_profile} if default_profile else {}
    doc["profiles"] = profiles
    comments = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
    return comments + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
