"""Redis over TLS (rediss://) with a password from the environment (issue 19 item 10), against a real
redis-server listening on a TLS port with a certificate of a throwaway CA: the streaming sink's hand-written
client (``RedisNodes.open``, what ``RedisTileSink`` connects with) and redis-py through ``skewless.config.redis_target``
(materialize, serve)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from skewless.config import redis_target
from streaming_jobs.sink import redis_endpoint
from streaming_jobs.udf import redis_client_jars, udf_jar

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (shutil.which("redis-server") and shutil.which("openssl") and shutil.which("java")),
                       reason="needs redis-server, openssl and a JDK"),
]
PASSWORD = "tls-hunter2"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca_and_server_cert(d: Path, name: str) -> Path:
    """``<name>-ca.crt`` and a server certificate for 127.0.0.1/localhost signed by it; returns the CA file."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.crt",
             "-days", "2", "-subj", f"/CN={name}-ca", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", "/CN=localhost", cwd=d)
    (d / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{name}-ca.crt", "-CAkey", f"{name}-ca.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", "san.cnf", cwd=d)
    return d / f"{name}-ca.crt"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, Path]]:
    """``(tls port, CA file, another CA's file)`` of a redis-server that requires TLS and a password."""
    d = tmp_path_factory.mktemp("tls")
    ca = make_ca_and_server_cert(d, "server")
    other_ca = make_ca_and_server_cert(d, "other")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--tls-cert-file", "server.crt",
         "--tls-key-file", "server.key", "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
         "--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(d)],
        cwd=d, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                pytest.skip(f"redis-server cannot listen on a TLS port (built without TLS?): {out[-300:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port, ca, other_ca
    finally:
        proc.terminate()
        proc.wait(30)


def resp(spec: dict, *command: str) -> subprocess.CompletedProcess:
    """The sink's Redis client in a plain JVM: connect as ``spec`` says, run one command, print the reply."""
    classpath = os.pathsep.join(map(str, [udf_jar(), *redis_client_jars()]))
    return subprocess.run(["java", "-cp", classpath, "dev.skewless.flink.RedisNodes", json.dumps(spec), *command],
                          capture_output=True, text=True, timeout=120)


def test_the_streaming_sink_client_speaks_tls_with_the_password_from_the_environment(
        tls_redis: tuple[int, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    port, ca, other_ca = tls_redis
    monkeypatch.setenv("SKEWLESS_REDIS_PASSWORD", PASSWORD)
    monkeypatch.setenv("SKEWLESS_REDIS_TLS_CA_FILE", str(ca))
    spec = redis_endpoint(f"rediss://127.0.0.1:{port}/0")
    assert spec["tls"] and spec["password"] == PASSWORD and spec["tls_ca_file"] == str(ca)
    done = resp(spec, "SET", "sink-key", "written-over-tls")
    assert done.returncode == 0 and done.stdout.strip() == "OK", done.stderr
    assert resp(spec, "GET", "sink-key").stdout.strip() == "written-over-tls"
    # a certificate the configured CA did not sign is refused, and so is plain TCP to the TLS port
    refused = resp({**spec, "tls_ca_file": str(other_ca)}, "PING")
    assert refused.returncode != 0 and "SSLHandshakeException" in refused.stderr
    assert resp({**spec, "tls": False}, "PING").returncode != 0
    wrong = resp({**spec, "password": "not-the-password-42"}, "PING")
    assert wrong.returncode != 0 and "redis AUTH: WRONGPASS" in wrong.stderr and "not-the-password-42" not in wrong.stderr


def test_redis_py_clients_get_tls_and_the_password_from_the_configuration(
        tls_redis: tuple[int, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import redis

    port, ca, _ = tls_redis
    monkeypatch.setenv("SKEWLESS_REDIS_PASSWORD", PASSWORD)
    monkeypatch.setenv("SKEWLESS_REDIS_TLS_CA_FILE", str(ca))
    target = redis_target(f"rediss://127.0.0.1:{port}/0")
    client = redis.Redis.from_url(target.url, **{**target.client_kwargs(), "socket_timeout": 10})
    assert client.ping() is True
    assert client.get("sink-key") in (None, b"written-over-tls")
