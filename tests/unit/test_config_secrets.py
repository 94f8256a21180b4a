"""Secrets and client security from skewless.config (issue 19 item 10): secrets come from the environment or a
file, never from flags; URLs are printed redacted; one function maps the Kafka security settings to
librdkafka's and to the Flink Kafka connector's (Java client) property names; no secret in argv, repr or errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from skewless.config import ConfigError, kafka_client_properties, kafka_security, redact_url, redis_target, secret
from tests.support.kafka_configs import captured_kafka_configs

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "p'w\"d-hunter2"  # quotes on purpose: JAAS and SQL quoting
ENV_NAMES = [n for n in os.environ if n.startswith(("SKEWLESS_KAFKA_S", "SKEWLESS_REDIS_PASSWORD", "SKEWLESS_API_TOKEN",
                                                    "SKEWLESS_REDIS_TLS"))]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name)


@pytest.fixture
def sasl_ssl(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    pw = tmp_path / "kafka-password"
    pw.write_text(PASSWORD + "\n")
    monkeypatch.setenv("SKEWLESS_KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("SKEWLESS_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("SKEWLESS_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("SKEWLESS_KAFKA_SASL_PASSWORD_FILE", str(pw))
    monkeypatch.setenv("SKEWLESS_KAFKA_SSL_CA_FILE", str(ca))
    return ca


def test_secret_from_the_environment_or_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert secret("REDIS_PASSWORD") is None
    monkeypatch.setenv("SKEWLESS_REDIS_PASSWORD", "env-pw")
    assert secret("REDIS_PASSWORD") == "env-pw"
    path = tmp_path / "pw"
    path.write_text("file-pw\n")
    monkeypatch.setenv("SKEWLESS_REDIS_PASSWORD_FILE", str(path))
    with pytest.raises(ConfigError, match="both SKEWLESS_REDIS_PASSWORD and SKEWLESS_REDIS_PASSWORD_FILE are set"):
        secret("REDIS_PASSWORD")
    monkeypatch.delenv("SKEWLESS_REDIS_PASSWORD")
    assert secret("REDIS_PASSWORD") == "file-pw"  # one trailing newline dropped
    path.write_text("")
    with pytest.raises(ConfigError, match="the secret file is empty"):
        secret("REDIS_PASSWORD")
    monkeypatch.setenv("SKEWLESS_REDIS_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="cannot read the secret file"):
        secret("REDIS_PASSWORD")


def test_redact_url() -> None:
    assert redact_url("redis://:hunter2@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("rediss://user:p%40ss@h/0") == "rediss://user:***@h/0"
    assert redact_url("redis://user@h:1/0") == "redis://user@h:1/0"
    assert redact_url("redis://h:1") == "redis://h:1"


def test_redis_target(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SKEWLESS_REDIS_PORT", "6400")
    timeouts = {"socket_connect_timeout": 3.0, "socket_timeout": 5.0}
    assert redis_target().url == "redis://127.0.0.1:6400/0" and redis_target().client_kwargs() == timeouts
    monkeypatch.setenv("SKEWLESS_REDIS_PASSWORD", "hunter2")
    target = redis_target("rediss://h:1/0")
    assert target.client_kwargs() == {"password": "hunter2", **timeouts} and target.tls and "hunter2" not in repr(target)
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    monkeypatch.setenv("SKEWLESS_REDIS_TLS_CA_FILE", str(ca))
    assert redis_target("rediss://h:1/0").client_kwargs() == {"password": "hunter2", "ssl_ca_certs": str(ca), **timeouts}
    assert "ssl_ca_certs" not in redis_target("redis://h:1/0").client_kwargs()
    with pytest.raises(ConfigError, match="is not a Redis URL") as info:
        redis_target("http://u:hunter2@x")
    assert "hunter2" not in str(info.value)


def test_plaintext_kafka_has_no_security_properties() -> None:
    assert kafka_client_properties() == {} and kafka_client_properties("flink") == {}


def test_kafka_sasl_ssl_maps_to_librdkafka_and_to_the_flink_connector(sasl_ssl: Path) -> None:
    assert kafka_client_properties() == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "svc",
        "sasl.password": PASSWORD, "ssl.ca.location": str(sasl_ssl)}
    assert kafka_client_properties("flink") == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.jaas.config": "org.apache.flink.kafka.shaded.org.apache.kafka.common.security.scram.ScramLoginModule "
                            'required username="svc" password="p\'w\\"d-hunter2";',
        "ssl.truststore.type": "PEM", "ssl.truststore.location": str(sasl_ssl)}
    assert PASSWORD not in repr(kafka_security())


def test_the_flink_jaas_module_is_the_one_the_connector_jar_ships(sasl_ssl: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zipfile

    from skewless.engines.flink_env import kafka_connector_jar

    names = set(zipfile.ZipFile(kafka_connector_jar()).namelist())
    for mechanism in ("PLAIN", "SCRAM-SHA-256"):
        monkeypatch.setenv("SKEWLESS_KAFKA_SASL_MECHANISM", mechanism)
        module = kafka_client_properties("flink")["sasl.jaas.config"].split()[0]
        assert module.replace(".", "/") + ".class" in names


@pytest.mark.parametrize("env, says", [
    ({"SKEWLESS_KAFKA_SECURITY_PROTOCOL": "TLS"}, "is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    ({"SKEWLESS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "SKEWLESS_KAFKA_SASL_USERNAME": "svc"},
     "needs SKEWLESS_KAFKA_SASL_USERNAME and SKEWLESS_KAFKA_SASL_PASSWORD"),
    ({"SKEWLESS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "SKEWLESS_KAFKA_SASL_MECHANISM": "GSSAPI",
      "SKEWLESS_KAFKA_SASL_USERNAME": "svc", "SKEWLESS_KAFKA_SASL_PASSWORD": PASSWORD}, "'GSSAPI' is not one of"),
    ({"SKEWLESS_KAFKA_SASL_USERNAME": "svc", "SKEWLESS_KAFKA_SASL_PASSWORD": PASSWORD}, "SASL settings are given"),
    ({"SKEWLESS_KAFKA_SECURITY_PROTOCOL": "SSL", "SKEWLESS_KAFKA_SSL_CA_FILE": "/no/ca.pem"}, "/no/ca.pem: no such file"),
    ({"SKEWLESS_KAFKA_SSL_CA_FILE": "/no/ca.pem"}, "use SSL or SASL_SSL"),
])
def test_inconsistent_kafka_security_is_refused_without_the_secret(monkeypatch: pytest.MonkeyPatch, env: dict,
                                                                    says: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        kafka_client_properties()
    assert says in str(info.value) and PASSWORD not in str(info.value)


def test_every_confluent_kafka_client_gets_the_security_properties(sasl_ssl: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from skewless.producer.kafka_producer import make_producer
    from skewless.engines.kafka import admin_client
    from streaming_jobs.job import applied_from

    seen = captured_kafka_configs(monkeypatch, lambda: make_producer("b:1"), lambda: admin_client("b:1"),
                                  lambda: applied_from("b:1", "t", "earliest"))
    for conf in seen:
        assert conf["security.protocol"] == "SASL_SSL" and conf["sasl.password"] == PASSWORD


def test_the_streaming_jobs_kafka_source_and_sink_get_them(sasl_ssl: Path) -> None:
    from skewless.core.repo import load_repository
    from streaming_jobs.flink_compiler import compile_repository
    from streaming_jobs.job import kafka_source_options
    from streaming_jobs.sink import SinkConfig, sink_spec

    options = kafka_source_options(kafka_client_properties("flink"))
    assert "'properties.security.protocol' = 'SASL_SSL'" in options
    assert "password=\"p''w\\\"d-hunter2\";'" in options  # SQL quotes doubled inside the option value
    repo = load_repository(ROOT / "feature_defs")
    job = compile_repository(repo)[0]
    spec = sink_spec(job, {v: repo.view(v) for v in job.views},
                     SinkConfig("redis://127.0.0.1:6379/0", "p", job.source, "t.dead-letters", "b:1", 0))
    import json

    assert json.loads(spec)["kafka_properties"].items() >= kafka_client_properties("flink").items()


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "skewless.cli", *argv], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.mark.parametrize("flag, env", [("--api-token", "SKEWLESS_API_TOKEN"), ("--redis-password", "SKEWLESS_REDIS_PASSWORD")])
def test_secret_flags_are_refused_naming_the_variable_without_echoing_the_value(flag: str, env: str) -> None:
    for argv in ([flag, "hunter2"], [f"{flag}=hunter2"]):
        done = run_cli("serve", *argv)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert f"{flag} was removed" in done.stderr and f"set {env} or {env}_FILE" in done.stderr
        assert "hunter2" not in done.stderr + done.stdout


@pytest.mark.parametrize("command", [["serve"], ["materialize", "--day", "2024-01-01"]])
def test_a_password_in_a_redis_url_flag_is_refused_without_echoing_it(command: list[str]) -> None:
    done = run_cli(*command, "--redis-url", "redis://:hunter2@127.0.0.1:6379/0")
    assert done.returncode == 2 and "SKEWLESS_REDIS_PASSWORD" in done.stderr and "hunter2" not in done.stderr


def test_a_bad_secret_file_is_one_line(tmp_path: Path) -> None:
    done = run_cli("serve", env={"SKEWLESS_API_TOKEN_FILE": str(tmp_path / "missing")})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("skewless serve: error: SKEWLESS_API_TOKEN_FILE=") and "cannot read" in done.stderr


def test_config_errors_in_port_variables_are_one_line() -> None:
    done = run_cli("plan", env={"SKEWLESS_KAFKA_PORT": "ninety"})
    assert done.returncode == 2 and "Traceback" not in done.stderr and "SKEWLESS_KAFKA_PORT='ninety'" in done.stderr


def test_submit_passes_no_secret_to_the_job_command_line(sasl_ssl: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The job reads the Redis password and the Kafka credentials from the environment it inherits."""
    import skewless.stack.flink as flink
    import skewless.stack.kafka as kafka
    from skewless.cli import main

    monkeypatch.setenv("SKEWLESS_REDIS_PASSWORD", "redis-hunter2")
    submitted: list[list[str]] = []
    monkeypatch.setattr(kafka, "create_topics", lambda *a, **k: None)
    monkeypatch.setattr(flink.FlinkSessionCluster, "list_jobs", lambda self: [])
    monkeypatch.setattr(flink.FlinkSessionCluster, "submit_python_job",
                        lambda self, script, args, **kw: submitted.append([str(script), *args]) or "job-1")
    assert main(["submit", "--repo", str(ROOT / "feature_defs")]) == 0
    (argv,) = submitted
    assert "--redis" in argv and not any("hunter2" in a or PASSWORD in a for a in argv)
    assert "hunter2" not in capsys.readouterr().out


def test_redis_timeouts_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKEWLESS_REDIS_CONNECT_TIMEOUT_S", "0.5")
    monkeypatch.setenv("SKEWLESS_REDIS_TIMEOUT_S", "1")
    kwargs = redis_target("redis://h:1/0").client_kwargs()
    assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"]) == (0.5, 1.0)
    monkeypatch.setenv("SKEWLESS_REDIS_TIMEOUT_S", "soon")
    with pytest.raises(ConfigError, match="SKEWLESS_REDIS_TIMEOUT_S='soon' is not a number of seconds"):
        redis_target("redis://h:1/0")
