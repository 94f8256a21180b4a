"""Issue 22's own logic without servers: the Flink session cluster's checkpoint storage on an object store, which
Spark settings hold credentials (kept out of argv), and the archive's metadata listing through the FileIO."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pyarrow as pa
import pytest

from skewless.config import S3Target, SharedCatalog
from skewless.engines.object_store import is_secret_conf, read_parquet, spark_catalog_conf
from skewless.stack.flink import FlinkSessionCluster

TARGET = S3Target("http://127.0.0.1:19000", "us-east-1", "KEYID-abc", "SECRET-xyz", True, 3.0)


@pytest.fixture
def jars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty stand-ins for the Kafka connector and the S3 plugin (SKEWLESS_JARS_DIR)."""
    for rel in ("flink/flink-sql-connector-kafka-5.0.0-2.2.jar", "flink-plugins/s3-fs-presto/flink-s3-fs-presto-2.2.0.jar"):
        (tmp_path / "jars" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "jars" / rel).write_bytes(b"")
    monkeypatch.setenv("SKEWLESS_JARS_DIR", str(tmp_path / "jars"))
    return tmp_path / "jars"


def test_flink_checkpoints_and_savepoints_on_the_object_store(jars: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    c = FlinkSessionCluster(state_dir=state, log_dir=tmp_path / "logs",
                            state_store=lambda folder: (TARGET, "s3://bucket/flink"))
    conf = c.write_conf() / "config.yaml"
    lines = dict(ln.split(": ", 1) for ln in conf.read_text().splitlines() if ": " in ln and not ln.startswith("#"))
    assert lines["execution.checkpointing.dir"] == "s3://bucket/flink/checkpoints"
    assert lines["execution.checkpointing.savepoint-dir"] == "s3://bucket/flink/savepoints"
    assert lines["s3.endpoint"] == '"http://127.0.0.1:19000"' and lines["s3.path.style.access"] == "true"
    # the keys only in the processes' environment: Flink logs config.yaml entries not named like secrets
    assert "KEYID-abc" not in conf.read_text() and "SECRET-xyz" not in conf.read_text()
    env = c._env()
    assert env["AWS_ACCESS_KEY_ID"] == "KEYID-abc" and env["AWS_SECRET_ACCESS_KEY"] == "SECRET-xyz"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    plugin = c.plugins_dir / "s3-fs-presto" / "flink-s3-fs-presto-2.2.0.jar"
    assert plugin.is_symlink() and plugin.resolve() == (jars / "flink-plugins/s3-fs-presto/flink-s3-fs-presto-2.2.0.jar")
    assert env["FLINK_PLUGINS_DIR"] == str(c.plugins_dir)
    # without a store: the state dir, no S3 key in the file
    local = FlinkSessionCluster(state_dir=tmp_path / "local", log_dir=tmp_path / "logs")
    text = (local.write_conf() / "config.yaml").read_text()
    assert "s3." not in text and (tmp_path / "local" / "flink" / "checkpoints").as_uri() in text


def test_every_credential_of_the_spark_catalog_settings_is_marked_secret() -> None:
    """spark_session sets exactly these after the JVM started (PySpark puts the builder's settings in argv)."""
    catalog = SharedCatalog("postgresql://127.0.0.1:5432/cat", "skewless", "PASSWORD-123", "s3://bucket/wh", TARGET, 3.0)
    conf = spark_catalog_conf(catalog)
    secret_values = {"PASSWORD-123", "KEYID-abc", "SECRET-xyz"}
    assert {v for k, v in conf.items() if is_secret_conf(k)} == secret_values
    assert not any(v in secret_values for k, v in conf.items() if not is_secret_conf(k))


def test_metadata_files_are_listed_through_the_tables_file_io(tmp_path: Path) -> None:
    from skewless.archive.maintenance import metadata_files
    from skewless.engines.iceberg_catalog import load_catalog

    catalog = load_catalog(catalog_db=tmp_path / "c.db", warehouse=tmp_path / "wh")
    catalog.create_namespace("m")
    table = catalog.create_table("m.t", schema=pa.schema([("x", pa.int64())]))
    for i in range(3):
        table.append(pa.table({"x": [i]}))
    listed = metadata_files(table)
    folder = Path(table.metadata_location.removeprefix("file://")).parent
    assert sorted(name for name, _, _ in listed) == sorted(os.listdir(folder))
    assert all(loc == f"{table.metadata_location.rsplit('/', 1)[0]}/{name}" and mtime and mtime > 0
               for name, loc, mtime in listed)
    assert sum(name.endswith(".metadata.json") for name, _, _ in listed) == 4


def test_entity_rows_from_a_local_file(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"user_id": ["u1"]}), tmp_path / "e.parquet")
    assert read_parquet(str(tmp_path / "e.parquet")).column("user_id").to_pylist() == ["u1"]
