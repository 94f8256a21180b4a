"""Engine wiring without a JVM: rendered configs, jar lookup errors, catalog settings."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from skewless.config import ICEBERG_CATALOG_NAME
from skewless.engines import EngineSetupError, find_jar
from skewless.engines.flink_env import flink_settings, kafka_connector_jar
from skewless.engines.spark_session import catalog_conf, spark_jars
from skewless.stack.base import StackError, free_port
from skewless.stack.flink import JOB_ID_PATTERN, FlinkSessionCluster


@pytest.fixture()
def fake_jars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A jar cache with empty stand-ins for the pinned artifacts (SKEWLESS_JARS_DIR)."""
    for rel in (
        "flink/flink-sql-connector-kafka-5.0.0-2.2.jar",
        "spark/iceberg-spark-runtime-4.1_2.13-1.11.0.jar",
        "spark/sqlite-jdbc-3.51.1.0.jar",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    monkeypatch.setenv("SKEWLESS_JARS_DIR", str(tmp_path))
    return tmp_path


def test_missing_jar_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKEWLESS_JARS_DIR", str(tmp_path))
    with pytest.raises(EngineSetupError, match=r"flink-sql-connector-kafka-\*\.jar.*make setup"):
        kafka_connector_jar()


def test_two_versions_of_a_jar_are_refused(fake_jars: Path) -> None:
    (fake_jars / "flink" / "flink-sql-connector-kafka-4.0.0-2.0.jar").write_bytes(b"")
    with pytest.raises(EngineSetupError, match="several versions"):
        find_jar("flink", "flink-sql-connector-kafka-")


def test_flink_settings_make_jar_interpreter_and_time_zone_explicit(fake_jars: Path, tmp_path: Path) -> None:
    conf = flink_settings(
        parallelism=2, checkpoint_dir=tmp_path / "cp", mini_batch=True, extra_conf={"pipeline.name": "x"}
    )
    assert conf["pipeline.jars"] == (fake_jars / "flink" / "flink-sql-connector-kafka-5.0.0-2.2.jar").as_uri()
    assert conf["python.executable"] == conf["python.client.executable"] == sys.executable
    assert conf["table.local-time-zone"] == "UTC"
    assert conf["parallelism.default"] == "2"
    assert conf["execution.checkpointing.dir"] == (tmp_path / "cp").as_uri()
    assert conf["table.exec.mini-batch.enabled"] == "true"
    assert conf["table.exec.mini-batch.size"] == "1000"
    assert conf["pipeline.name"] == "x"
    assert "table.exec.mini-batch.enabled" not in flink_settings()
    assert "execution.checkpointing.dir" not in flink_settings()


def test_spark_catalog_conf_points_at_one_sqlite_file(fake_jars: Path, tmp_path: Path) -> None:
    conf = catalog_conf(warehouse=tmp_path / "wh", catalog_db=tmp_path / "c.db")
    p = f"spark.sql.catalog.{ICEBERG_CATALOG_NAME}"
    assert conf == {
        p: "org.apache.iceberg.spark.SparkCatalog",
        f"{p}.type": "jdbc",
        f"{p}.uri": f"jdbc:sqlite:{tmp_path / 'c.db'}",
        f"{p}.warehouse": (tmp_path / "wh").as_uri(),
        f"{p}.jdbc.schema-version": "V1",
    }
    assert [j.name for j in spark_jars()] == ["iceberg-spark-runtime-4.1_2.13-1.11.0.jar", "sqlite-jdbc-3.51.1.0.jar"]


def test_pyiceberg_catalog_has_the_shared_name(tmp_path: Path) -> None:
    from skewless.engines.iceberg_catalog import load_catalog

    cat = load_catalog(catalog_db=tmp_path / "c.db", warehouse=tmp_path / "wh")
    assert cat.name == ICEBERG_CATALOG_NAME
    cat.create_namespace("unit")
    assert ("unit",) in cat.list_namespaces()
    assert (tmp_path / "c.db").exists()


def test_cluster_conf_is_fully_rendered(fake_jars: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKEWLESS_FLINK_REST_PORT", "18181")
    c = FlinkSessionCluster(state_dir=tmp_path / "state", log_dir=tmp_path / "logs")
    assert c.ports() == {"rest": 18181}
    conf_dir = c.write_conf()
    text = (conf_dir / "config.yaml").read_text()
    assert "${" not in text
    lines = dict(
        ln.split(": ", 1) for ln in text.splitlines() if ln and not ln.startswith("#") and ": " in ln
    )
    assert lines["rest.port"] == "18181"
    assert lines["rest.bind-address"] == lines["jobmanager.bind-host"] == lines["taskmanager.bind-host"] == "127.0.0.1"
    assert lines["python.executable"] == lines["python.client.executable"] == sys.executable
    assert lines["pipeline.jars"].endswith("flink-sql-connector-kafka-5.0.0-2.2.jar")
    assert lines["execution.checkpointing.dir"] == (tmp_path / "state" / "flink" / "checkpoints").as_uri()
    assert lines["taskmanager.numberOfTaskSlots"] == "2"
    assert (conf_dir / "workers").read_text().strip() == "localhost"
    assert (conf_dir / "log4j-console.properties").exists()
    lib = {p.name for p in c.lib_dir.iterdir()}
    assert any(n.startswith("flink-python-") for n in lib) and any(n.startswith("flink-dist-") for n in lib)


def test_cluster_not_healthy_when_nothing_listens(tmp_path: Path) -> None:
    c = FlinkSessionCluster(rest_port=free_port(), state_dir=tmp_path)
    assert c.healthy() is False
    with pytest.raises(StackError, match="unreachable"):
        c.list_jobs()
    with pytest.raises(StackError, match="does not exist"):
        c.submit_python_job(tmp_path / "nope.py")


def test_job_id_is_parsed_from_flink_run_output() -> None:
    out = "Job has been submitted with JobID e513c8320cbbb9a5b36a6506458b4616\n"
    m = JOB_ID_PATTERN.search(out)
    assert m and m.group(1) == "e513c8320cbbb9a5b36a6506458b4616"
