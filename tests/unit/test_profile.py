"""The one configuration (issue 21, "One configuration"): the profile file of the feature repository
(skewless/profile.py), selected by name, strictly validated, and the environment over it (skewless/config.py):
a flag > SKEWLESS_* > the profile > the built-in defaults."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import stat
from pathlib import Path

import pytest

from skewless import config
from skewless.config import (ConfigError, flink_rest_url, kafka_bootstrap, kafka_client_properties, kafka_security,
                             paths, redis_target, selected, spark_master, shared_catalog)
from skewless.profile import CONFIG_FILE_ENV, PROFILE_ENV, Profile, dump_profile_file, load_profile, profile_file

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-hunter2"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SKEWLESS_* variable of the developer's shell, and a working directory without feature_defs/."""
    for name in list(os.environ):
        if name.startswith("SKEWLESS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write(repo: Path, text: str) -> Path:
    repo.mkdir(parents=True, exist_ok=True)
    path = repo / "skewless.yaml"
    path.write_text(text)
    return path


PROD = """\
default_profile: prod
profiles:
  local: {}
  prod:
    project: shop
    online_store:
      url: redis://cache.internal:6380/2
      password: {env: SHOP_REDIS_PASSWORD}
      connect_timeout_s: 1.5
      timeout_s: 2
    kafka:
      bootstrap: "k1.internal:9093, k2.internal:9093"
      security_protocol: sasl_ssl
      sasl_mechanism: SCRAM-SHA-512
      sasl_username: svc
      sasl_password: {file: secrets/kafka}
      timeout_s: 7
    flink: {rest_url: "http://jm.internal:8081/"}
    catalog: {type: sqlite, path: state/catalog.db, warehouse: state/warehouse}
    spark: {master: "spark://spark.internal:7077"}
    object_store:
      endpoint: http://s3.internal:9000
      access_key_id: {env: S3_KEY}
      secret_access_key: {file: secrets/s3}
      path_style_access: true
  cluster:
    online_store: {type: redis_cluster, nodes: ["10.0.0.1:7000", "10.0.0.2:7000"], tls: true}
"""


@pytest.fixture
def prod_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    repo = tmp_path / "repo"
    write(repo, PROD)
    (repo / "secrets").mkdir()
    (repo / "secrets" / "kafka").write_text(SECRET + "\n")
    monkeypatch.setenv("SHOP_REDIS_PASSWORD", "redis-" + SECRET)
    monkeypatch.setenv(CONFIG_FILE_ENV, str(repo / "skewless.yaml"))
    return repo


def test_without_a_profile_file_the_values_are_todays() -> None:
    assert profile_file() is None
    assert load_profile().name == "local" and load_profile().source is None
    target = redis_target()
    assert (target.url, target.password, target.cluster, target.timeout_s) == ("redis://127.0.0.1:6379/0", None, False, 5.0)
    assert kafka_bootstrap() == "127.0.0.1:9092" and kafka_client_properties() == {}
    assert flink_rest_url() == "http://127.0.0.1:8081" and spark_master("local[*]") == "local[*]"
    assert config.default_project() == "skewless"


def test_todays_port_variables_keep_moving_the_built_in_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write(tmp_path / "feature_defs", "profiles:\n  local: {}\n")  # the shipped file's form
    monkeypatch.setenv("SKEWLESS_REDIS_PORT", "7001")
    monkeypatch.setenv("SKEWLESS_KAFKA_PORT", "7002")
    monkeypatch.setenv("SKEWLESS_FLINK_REST_PORT", "7003")
    assert load_profile().source == tmp_path / "feature_defs" / "skewless.yaml"
    assert redis_target().url == "redis://127.0.0.1:7001/0"
    assert kafka_bootstrap() == "127.0.0.1:7002" and flink_rest_url() == "http://127.0.0.1:7003"


def test_the_selected_profile_says_where_everything_is(prod_repo: Path) -> None:
    target = redis_target()
    assert target.url == "redis://cache.internal:6380/2" and target.password == "redis-" + SECRET
    assert (target.connect_timeout_s, target.timeout_s) == (1.5, 2.0)
    assert kafka_bootstrap() == "k1.internal:9093,k2.internal:9093"
    assert kafka_security().protocol == "SASL_SSL" and kafka_security().password == SECRET  # the file, newline dropped
    assert 'password="s3cr3t-hunter2"' in kafka_client_properties("flink")["sasl.jaas.config"]
    assert config.kafka_timeout_s() == 7.0
    assert flink_rest_url() == "http://jm.internal:8081" and spark_master("local[*]") == "spark://spark.internal:7077"
    assert config.default_project() == "shop"
    assert paths().catalog_db == prod_repo / "state" / "catalog.db"  # relative to the profile file
    assert paths().warehouse == prod_repo / "state" / "warehouse"
    store = config.object_store()
    assert store.endpoint == "http://s3.internal:9000" and store.path_style_access
    assert store.secret_access_key is not None and store.secret_access_key.file == str(prod_repo / "secrets" / "s3")
    assert SECRET not in repr(target) + repr(kafka_security()) + repr(load_profile())


def test_the_environment_wins_over_the_profile_and_a_flag_over_both(prod_repo: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    monkeypatch.setenv("SKEWLESS_REDIS_URL", "redis://env-host:6390/0")
    monkeypatch.setenv("SKEWLESS_REDIS_PASSWORD", "env-pw")
    monkeypatch.setenv("SKEWLESS_REDIS_TIMEOUT_S", "9")
    monkeypatch.setenv("SKEWLESS_KAFKA_BOOTSTRAP", "env-kafka:9092")
    monkeypatch.setenv("SKEWLESS_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    monkeypatch.setenv("SKEWLESS_PROJECT", "envproject")
    monkeypatch.setenv("SKEWLESS_FLINK_REST_URL", "http://env-jm:8082")
    monkeypatch.setenv("SKEWLESS_SPARK_MASTER", "local[3]")
    monkeypatch.setenv("SKEWLESS_CATALOG_DB", str(tmp_path / "env.db"))
    target = redis_target()
    assert (target.url, target.password, target.timeout_s, target.connect_timeout_s) == (
        "redis://env-host:6390/0", "env-pw", 9.0, 1.5)  # the unset variable leaves the profile's value
    assert redis_target("redis://flag-host:6391/0").url == "redis://flag-host:6391/0"
    assert kafka_bootstrap() == "env-kafka:9092" and config.default_project() == "envproject"
    with pytest.raises(ConfigError, match="SASL settings are given but SKEWLESS_KAFKA_SECURITY_PROTOCOL=PLAINTEXT"):
        kafka_security()  # the profile's SASL user and password stay: the combination is refused, not guessed
    assert flink_rest_url() == "http://env-jm:8082" and spark_master("local[*]") == "local[3]"
    assert paths().catalog_db == tmp_path / "env.db" and paths().warehouse == prod_repo / "state" / "warehouse"


def test_profiles_are_selected_by_name(prod_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_profile().name == "prod"  # the file's default_profile
    monkeypatch.setenv(PROFILE_ENV, "local")
    assert load_profile().name == "local" and redis_target().url == "redis://127.0.0.1:6379/0"
    assert load_profile(name="cluster").name == "cluster"  # an explicit name (--profile) wins
    monkeypatch.setenv(PROFILE_ENV, "staging")
    with pytest.raises(ConfigError, match=r"no profile 'staging'; use one of cluster, local, prod"):
        load_profile()


def test_a_profile_without_a_file_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROFILE_ENV, "prod")
    with pytest.raises(ConfigError, match="profile 'prod' is selected but there is no profile file"):
        redis_target()
    monkeypatch.setenv(CONFIG_FILE_ENV, "/nonexistent/skewless.yaml")
    with pytest.raises(ConfigError, match="SKEWLESS_CONFIG=/nonexistent/skewless.yaml: no such file"):
        load_profile()


def test_a_redis_cluster_is_carried_to_the_callers_as_data(prod_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROFILE_ENV, "cluster")
    target = redis_target()
    assert target.cluster and target.nodes == ("10.0.0.1:7000", "10.0.0.2:7000") and target.tls
    assert target.url == "rediss+cluster://10.0.0.1:7000,10.0.0.2:7000" and target.seed_url == "rediss://10.0.0.1:7000"
    # the URL form names a cluster anywhere a Redis URL goes (a flag, SKEWLESS_REDIS_URL), and round-trips
    again = redis_target(target.url)
    assert (again.cluster, again.nodes, again.tls) == (True, target.nodes, True)
    monkeypatch.setenv("SKEWLESS_REDIS_URL", "redis+cluster://127.0.0.1:7100")
    assert redis_target().nodes == ("127.0.0.1:7100",) and not redis_target().tls
    assert not redis_target("redis://one:6379/0").cluster
    with pytest.raises(ConfigError, match=r"'nohost' is not HOST:PORT"):
        redis_target("redis+cluster://nohost")


@pytest.mark.parametrize("body, message", [
    ("profiles:\n  p:\n    online_stor: {}\n", "profile 'p': unknown key 'online_stor'; known keys: project, online_store, kafka"),
    ("profiles:\n  p:\n    kafka: {bootstrap: 'h:1', sasl_pasword: {env: X}}\n",
     "unknown key 'kafka.sasl_pasword'; known keys of kafka: bootstrap, security_protocol"),
    ("profile:\n  p: {}\n", "unknown key 'profile' at the top level; known keys: default_profile, profiles"),
    ("profiles:\n  p:\n    online_store: {timeout_s: soon}\n", "online_store.timeout_s: expected a number of seconds > 0, got 'soon'"),
    ("profiles:\n  p:\n    online_store: {type: redis_cluster, nodes: 5}\n", "online_store.nodes: expected a list of HOST:PORT"),
    ("profiles:\n  p:\n    online_store: {type: redis_cluster}\n", "type redis_cluster needs online_store.nodes"),
    ("profiles:\n  p:\n    online_store: {type: memcached}\n", "online_store.type: 'memcached' is not one of redis, redis_cluster"),
    ("profiles:\n  p:\n    online_store: {url: 'http://x:1'}\n", "online_store.url: 'http://x:1' is not a redis:///rediss:///unix:// URL"),
    ("profiles:\n  p:\n    online_store: {nodes: ['h:1']}\n", "online_store.nodes is for type redis_cluster"),
    ("profiles:\n  p:\n    kafka: {bootstrap: 'k1:9092,k2'}\n", "kafka.bootstrap: 'k2' is not HOST:PORT"),
    ("profiles:\n  p:\n    object_store: {path_style_access: 'yes'}\n", "object_store.path_style_access: expected true or false"),
    ("profiles:\n  p:\n    catalog: {type: glue}\n", "catalog.type: 'glue' is not one of sqlite, postgres"),
    ("profiles:\n  p:\n    catalog: {type: postgres, uri: 'postgresql://h:5432/db'}\n",
     "catalog.type postgres needs catalog.user, catalog.password, catalog.warehouse"),
    ("profiles:\n  p:\n    catalog: {type: postgres, uri: 'postgresql://h:5432/db', user: u, password: {env: P}, "
     "warehouse: /tmp/wh}\n", "catalog.warehouse '/tmp/wh': a postgres catalog keeps its tables on the object store"),
    ("profiles:\n  p:\n    catalog: {type: postgres, uri: 'postgresql://u:hunter2@h:5432/db', user: u, "
     "password: {env: P}, warehouse: 's3://b/w'}\n", "catalog.uri: the URL carries a password"),
    ("profiles:\n  p:\n    catalog: {uri: 'postgresql://h:5432/db'}\n", "catalog.uri is for type postgres"),
    ("profiles:\n  p:\n    kafka: {sasl_password: {vault: x}}\n", "a secret reference has exactly one key, env or file"),
    ("profiles:\n  p: [1]\n", "profile 'p': must be a mapping of sections"),
    ("default_profile: q\nprofiles:\n  p: {}\n", "default_profile 'q' is not a profile of the file"),
    ("profiles:\n  p: {kafka: [\n", "not valid YAML at line"),
])
def test_validation_is_one_line_naming_the_key(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path / "feature_defs", body)
    with pytest.raises(ConfigError) as info:
        load_profile(name="p")
    text = str(info.value)
    assert message in text and "\n" not in text and text.startswith(str(path))


@pytest.mark.parametrize("key, body", [
    ("online_store.password", "online_store: {password: s3cr3t-hunter2}"),
    ("kafka.sasl_password", "kafka: {sasl_password: s3cr3t-hunter2}"),
    ("object_store.secret_access_key", "object_store: {secret_access_key: s3cr3t-hunter2}"),
    ("online_store.url", "online_store: {url: 'redis://:s3cr3t-hunter2@h:6379/0'}"),
])
def test_a_secret_written_inline_is_refused_without_echoing_it(tmp_path: Path, key: str, body: str) -> None:
    write(tmp_path / "feature_defs", f"profiles:\n  p:\n    {body}\n")
    with pytest.raises(ConfigError) as info:
        load_profile(name="p")
    text = str(info.value)
    assert f"profile 'p': {key}:" in text and SECRET not in text
    assert "{env: VARIABLE}" in text and "{file: PATH}" in text


def test_every_profile_of_the_file_is_checked_not_only_the_selected_one(tmp_path: Path) -> None:
    write(tmp_path / "feature_defs", "profiles:\n  good: {}\n  bad: {kafka: {bootstrap: 1}}\n")
    with pytest.raises(ConfigError, match="profile 'bad': kafka.bootstrap: expected a non-empty string"):
        load_profile(name="good")


def test_a_secret_reference_that_does_not_resolve_names_the_key_and_the_fix(prod_repo: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOP_REDIS_PASSWORD")
    with pytest.raises(ConfigError, match=r"profile 'prod' of .*skewless.yaml: online_store.password: \{env: "
                                          r"SHOP_REDIS_PASSWORD\} but the environment variable SHOP_REDIS_PASSWORD is not set"):
        redis_target()
    (prod_repo / "secrets" / "kafka").unlink()
    with pytest.raises(ConfigError, match=r"kafka.sasl_password: \{file: .*secrets/kafka\}: cannot read the secret file"):
        kafka_security()


def test_selected_sets_the_profile_for_the_command_and_its_children_then_restores(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "elsewhere"
    write(repo, PROD.replace("password: {env: SHOP_REDIS_PASSWORD}", "username: svc"))
    (repo / "secrets").mkdir()
    (repo / "secrets" / "kafka").write_text(SECRET)
    with selected(repo, "prod") as profile:
        assert profile.name == "prod" and os.environ[PROFILE_ENV] == "prod"
        assert os.environ[CONFIG_FILE_ENV] == str(repo / "skewless.yaml")
        child = subprocess.run([sys.executable, "-c", "from skewless.config import redis_target; print(redis_target().url)"],
                               capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert child.stdout.strip() == "redis://cache.internal:6380/2"
        assert redis_target().client_kwargs()["username"] == "svc"
    assert PROFILE_ENV not in os.environ and CONFIG_FILE_ENV not in os.environ
    assert redis_target().url == "redis://127.0.0.1:6379/0"


def test_a_written_profile_file_reads_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.yaml"
    body = {"online_store": {"type": "redis_cluster", "nodes": ["127.0.0.1:7000"]}, "kafka": {"bootstrap": "127.0.0.1:9"}}
    path.write_text(dump_profile_file({"cluster": body}, "cluster", header="written by a test", path=path))
    assert path.read_text().startswith("# written by a test\n")
    monkeypatch.setenv(CONFIG_FILE_ENV, str(path))
    assert redis_target().nodes == ("127.0.0.1:7000",) and kafka_bootstrap() == "127.0.0.1:9"
    with pytest.raises(ConfigError, match="unknown key 'kafka.bootstrp'"):
        dump_profile_file({"cluster": {"kafka": {"bootstrp": "x:1"}}}, None)


def test_the_cluster_topology_writes_the_profile_of_what_it_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from skewless.stack.cluster import cluster_profile_path, cluster_services, write_cluster_profile

    monkeypatch.setenv("SKEWLESS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SKEWLESS_REDIS_PORT", "27000")
    monkeypatch.setenv("SKEWLESS_KAFKA_PORT", "29092")
    path = write_cluster_profile(cluster_services())
    assert path == cluster_profile_path()
    for name in ("SKEWLESS_REDIS_PORT", "SKEWLESS_KAFKA_PORT"):  # the file alone says where the cluster is
        monkeypatch.delenv(name)
    monkeypatch.setenv(CONFIG_FILE_ENV, str(path))
    target = redis_target()
    assert target.cluster and target.nodes == tuple(f"127.0.0.1:{27000 + i}" for i in range(6))
    assert kafka_bootstrap() == "127.0.0.1:29092,127.0.0.1:29094,127.0.0.1:29096"
    assert paths().catalog_db == tmp_path / "state" / "catalog.db"
    # the offline half: the PostgreSQL catalog with an s3:// warehouse on the object store, the Spark master;
    # the generated credentials are files (0600 in a 0700 folder) that the profile names, never their values
    shared = shared_catalog()
    assert shared is not None and shared.warehouse == "s3://skewless-warehouse/warehouse"
    assert shared.uri == "postgresql://127.0.0.1:5432/iceberg_catalog" and shared.user == "skewless"
    assert shared.s3.endpoint == "http://127.0.0.1:9000" and shared.s3.path_style_access
    assert spark_master("local[2]") == "spark://127.0.0.1:7077"
    folder = tmp_path / "state" / "secrets"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = sorted(folder.iterdir())
    assert len(files) == 3 and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    text = path.read_text()
    values = [f.read_text().strip() for f in files]
    assert {shared.password, shared.s3.access_key_id, shared.s3.secret_access_key} == set(values)
    assert not any(v in text for v in values) and not any(v in repr(shared) for v in values)


def test_the_shipped_profile_file_is_valid_and_changes_nothing() -> None:
    shipped = load_profile(ROOT / "feature_defs")
    assert shipped.source == ROOT / "feature_defs" / "skewless.yaml"
    assert dataclasses.replace(shipped, source=None) == Profile()  # every value is the built-in one


def run_cli(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SKEWLESS_")}
    return subprocess.run([sys.executable, "-m", "skewless.cli", *argv], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env={**clean, "PYTHONPATH": str(ROOT), **(env or {})})


def test_a_bad_key_in_the_profile_file_is_one_error_line_of_any_command(tmp_path: Path) -> None:
    path = write(tmp_path / "repo", "profiles:\n  prod:\n    online_store: {urll: 'redis://h:1/0'}\n")
    line = (f"error: {path}: profile 'prod': unknown key 'online_store.urll'; known keys of online_store: type, url, "
            "nodes, tls, username, password, tls_ca_file, connect_timeout_s, timeout_s\n")
    runs = {"plan": run_cli("plan", "--repo", "repo", cwd=tmp_path),
            "online": run_cli("online", "sample", "--repo", "repo", "--profile", "prod", cwd=tmp_path),
            "jobs": run_cli("--profile", "prod", "jobs", cwd=tmp_path, env={CONFIG_FILE_ENV: str(path)})}
    for command, done in runs.items():
        assert (done.returncode, done.stdout, done.stderr) == (2, "", f"skewless {command}: {line}")


def test_the_streaming_job_gets_the_profile_by_name_and_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    import skewless.stack.flink as flink
    import skewless.stack.kafka as kafka
    from skewless.cli import main

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "feature_defs", repo)
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    (tmp_path / "pw").write_text(SECRET)
    write(repo, "profiles:\n  prod:\n    online_store: {url: 'redis://cache.internal:6380/0', password: {file: ../pw}}\n"
                "    kafka: {bootstrap: 'k1.internal:9093'}\n    flink: {rest_url: 'http://jm.internal:8081'}\n")
    submitted: list[tuple[str, list[str]]] = []
    topics: list[str] = []
    monkeypatch.setattr(kafka, "create_topics", lambda bootstrap, *a, **k: topics.append(bootstrap))
    monkeypatch.setattr(flink.FlinkSessionCluster, "list_jobs", lambda self: [])
    monkeypatch.setattr(flink.FlinkSessionCluster, "submit_python_job",
                        lambda self, script, args, **kw: submitted.append((self.rest_url, [str(script), *args])) or "job-1")
    assert main(["submit", "--repo", str(repo), "--profile", "prod"]) == 0
    ((rest, argv),) = submitted
    assert rest == "http://jm.internal:8081" and topics == ["k1.internal:9093"]
    assert argv[argv.index("--profile") + 1] == "prod" and argv[argv.index("--bootstrap") + 1] == "k1.internal:9093"
    assert argv[argv.index("--redis") + 1] == "redis://cache.internal:6380/0"
    assert not any(SECRET in a for a in argv) and SECRET not in capsys.readouterr().out
    assert PROFILE_ENV not in os.environ  # the command's selection ended with it


def test_submit_sends_a_cluster_profile_and_its_parallelism_to_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21: the streaming sink writes to a Redis Cluster, so submit passes the cluster's URL (it refused it
    before) and the profile's flink.parallelism (the cluster topology's 4) unless --parallelism says otherwise."""
    import shutil

    import skewless.stack.flink as flink
    import skewless.stack.kafka as kafka
    from skewless.cli import main

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "feature_defs", repo)
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    write(repo, "profiles:\n  c:\n    online_store: {type: redis_cluster, nodes: ['10.0.0.1:7000', '10.0.0.2:7000']}\n"
                "    flink: {rest_url: 'http://jm.internal:8081', parallelism: 4}\n")
    submitted: list[list[str]] = []
    monkeypatch.setattr(kafka, "create_topics", lambda bootstrap, *a, **k: None)
    monkeypatch.setattr(flink.FlinkSessionCluster, "list_jobs", lambda self: [])
    monkeypatch.setattr(flink.FlinkSessionCluster, "submit_python_job",
                        lambda self, script, args, **kw: submitted.append([*args, f"-p={kw['parallelism']}"]) or "j")
    assert main(["submit", "--repo", str(repo), "--profile", "c"]) == 0
    assert main(["submit", "--repo", str(repo), "--profile", "c", "--parallelism", "2"]) == 0
    first, second = submitted
    assert first[first.index("--redis") + 1] == "redis+cluster://10.0.0.1:7000,10.0.0.2:7000"
    assert first[first.index("--parallelism") + 1] == "4" and first[-1] == "-p=4"
    assert second[second.index("--parallelism") + 1] == "2" and second[-1] == "-p=2"
    write(repo, "profiles:\n  c:\n    flink: {parallelism: 0}\n")
    with pytest.raises(ConfigError, match="flink.parallelism: expected a whole number >= 1, got 0"):
        load_profile(repo, "c")


def test_the_sdk_reads_the_profile_of_its_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from skewless.serving.online import open_store
    from skewless.store import FeatureStore

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "feature_defs", repo)
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    monkeypatch.setenv("SHOP_REDIS_PASSWORD", SECRET)
    write(repo, "profiles:\n  prod:\n    project: shop\n"
                "    online_store: {url: 'redis://cache.internal:6380/3', password: {env: SHOP_REDIS_PASSWORD}}\n"
                "    kafka: {bootstrap: 'k1.internal:9093'}\n"
                "    catalog: {path: state/catalog.db, warehouse: state/warehouse}\n")
    store = open_store(str(repo), profile_name="prod")  # no connection yet: redis-py connects on the first command
    kwargs = store.client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"], store.project) == (
        "cache.internal", 6380, 3, SECRET, "shop")
    fs = FeatureStore(repo, profile="prod")
    assert fs.profile.name == "prod" and str(fs.catalog.properties["uri"]).endswith(f"{repo}/state/catalog.db")
    assert FeatureStore(repo).profile.name == "local"  # the file has no default_profile
    with pytest.raises(ConfigError, match="no profile 'staging'"):
        FeatureStore(repo, profile="staging")


def test_an_object_store_warehouse_is_refused_until_it_is_supported(tmp_path: Path) -> None:
    write(tmp_path / "feature_defs", "profiles:\n  p: {catalog: {warehouse: 's3://bucket/wh'}}\n")
    with pytest.raises(ConfigError, match=r"profile 'p' of .*: catalog.warehouse 's3://bucket/wh': only a local folder"):
        paths(load_profile(name="p"))


def test_commands_open_a_redis_cluster_and_name_its_unreachable_seed_in_one_line(tmp_path: Path) -> None:
    import shutil

    shutil.copytree(ROOT / "feature_defs", tmp_path / "repo")
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    write(tmp_path / "repo", "profiles:\n  c: {online_store: {type: redis_cluster, nodes: ['127.0.0.1:1']}}\n")
    message = ("no seed node of the Redis Cluster redis+cluster://127.0.0.1:1 answers (Error 111 connecting to 127.0.0.1:1. "
               "Connection refused.); start the cluster or fix online_store.nodes (or the redis+cluster:// URL)\n")
    for argv in (["online", "sample"], ["online", "rebuild", "--day", "2024-01-01"], ["monitor", "freshness"],
                 ["materialize", "--day", "2024-01-01"], ["serve"]):
        done = run_cli(*argv, "--repo", "repo", "--profile", "c", cwd=tmp_path)
        assert done.returncode == 2 and done.stderr.endswith(message) and len(done.stderr.splitlines()) == 1, done.stderr
    assert redis_target("redis://h:1/0").single_node_url() == "redis://h:1/0"


def test_backfill_runs_on_the_profiles_spark_master_unless_a_flag_names_one(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import skewless.commands.backfill as backfill_command
    from skewless.cli import main

    shutil.copytree(ROOT / "feature_defs", tmp_path / "repo")
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    write(tmp_path / "repo", "profiles:\n  p: {spark: {master: 'spark://spark.internal:7077'}}\n")
    calls: list[list[str]] = []
    monkeypatch.setattr(backfill_command.subprocess, "call", lambda cmd, **kw: calls.append(cmd) or 0)
    base = ["backfill", "--repo", str(tmp_path / "repo"), "--start", "2024-01-01", "--end", "2024-01-02"]
    assert main([*base, "--profile", "p"]) == 0
    assert main([*base, "--profile", "p", "--master", "local[1]"]) == 0
    assert main(base) == 0
    assert [cmd[cmd.index("--master") + 1] for cmd in calls] == ["spark://spark.internal:7077", "local[1]", "local[*]"]


POSTGRES_PROFILE = (
    "profiles:\n  shared:\n"
    "    catalog: {type: postgres, uri: 'postgresql://127.0.0.1:PORT/iceberg_catalog', user: skewless,\n"
    "              password: {env: SHOP_CATALOG_PASSWORD}, warehouse: 's3://shop-warehouse/wh', timeout_s: 2}\n"
    "    object_store: {endpoint: 'http://127.0.0.1:PORT', access_key_id: {env: SHOP_S3_KEY_ID},\n"
    "                   secret_access_key: {file: s3.key}, path_style_access: true, timeout_s: 2}\n")


def test_a_postgres_catalog_reaches_spark_and_pyiceberg_as_settings(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from skewless.engines.object_store import pyiceberg_properties
    from skewless.engines.spark_session import catalog_conf, spark_jars

    repo = tmp_path / "feature_defs"
    write(repo, POSTGRES_PROFILE.replace("PORT", "5999"))
    (repo / "s3.key").write_text(SECRET + "\n")
    monkeypatch.setenv("SHOP_CATALOG_PASSWORD", "pw-" + SECRET)
    monkeypatch.setenv("SHOP_S3_KEY_ID", "key-id")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(PROFILE_ENV, "shared")
    shared = shared_catalog()
    assert shared is not None and (shared.bucket, shared.host_port_db) == ("shop-warehouse", ("127.0.0.1", 5999, "iceberg_catalog"))
    assert SECRET not in repr(shared)
    conf = catalog_conf()
    p = "spark.sql.catalog.skewless"
    assert conf[f"{p}.uri"] == "jdbc:postgresql://127.0.0.1:5999/iceberg_catalog"
    assert conf[f"{p}.jdbc.password"] == "pw-" + SECRET and conf[f"{p}.s3.secret-access-key"] == SECRET
    assert conf[f"{p}.io-impl"] == "org.apache.iceberg.aws.s3.S3FileIO" and conf[f"{p}.warehouse"] == "s3://shop-warehouse/wh"
    assert conf["spark.executorEnv.AWS_REQUEST_CHECKSUM_CALCULATION"] == "when_required"
    assert pyiceberg_properties(shared)["uri"].startswith("postgresql+pg8000://skewless:pw-")
    names = [j.name for j in spark_jars(shared=True)]
    assert any(n.startswith("iceberg-aws-bundle-") for n in names) and any(n.startswith("postgresql-") for n in names)
    assert "://" not in str(paths().warehouse)  # the sqlite paths stay local; the s3:// warehouse is not one of them


def test_an_unreachable_postgres_catalog_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from skewless.engines import EngineSetupError
    from skewless.engines.iceberg_catalog import load_catalog
    from skewless.stack.base import free_port

    port = free_port()
    repo = tmp_path / "feature_defs"
    write(repo, POSTGRES_PROFILE.replace("PORT", str(port)))
    (repo / "s3.key").write_text(SECRET + "\n")
    monkeypatch.setenv("SHOP_CATALOG_PASSWORD", "pw-" + SECRET)
    monkeypatch.setenv("SHOP_S3_KEY_ID", "key-id")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(PROFILE_ENV, "shared")
    with pytest.raises(EngineSetupError) as info:
        load_catalog()
    text = str(info.value)
    assert text.startswith(f"catalog database postgresql://127.0.0.1:{port}/iceberg_catalog: cannot connect")
    assert "fix catalog.uri" in text and "\n" not in text and SECRET not in text
