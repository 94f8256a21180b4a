"""The one configuration on real services (issue 21, "One configuration"): with no SKEWLESS_* variable in the
environment, commands find Kafka, Redis and the project (key prefix) from the repository's profile file alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from skewless.core import layout
from skewless.core.dsl import FeatureView
from skewless.core.repo import load_repository

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKEWLESS_")}
    return subprocess.run([sys.executable, "-m", "skewless.cli", *argv], capture_output=True, text=True, timeout=180,
                          cwd=cwd, env={**env, "PYTHONPATH": str(ROOT)})


def test_commands_read_kafka_and_redis_from_the_profile_file_alone(tmp_path: Path, kafka_bootstrap: str, kafka_topic,
                                                                   redis_url: str, redis_client) -> None:
    from confluent_kafka import Consumer, TopicPartition

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "feature_defs", repo)
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    project = f"prof{uuid.uuid4().hex[:8]}"
    (repo / "skewless.yaml").write_text(
        "default_profile: local\n"
        "profiles:\n"
        "  local: {}\n"
        "  services:\n"
        f"    project: {project}\n"
        f"    online_store: {{url: '{redis_url}', timeout_s: 5}}\n"
        f"    kafka: {{bootstrap: '{kafka_bootstrap}'}}\n")

    # Kafka: `produce` sends to the profile's broker (not 127.0.0.1:9092, the built-in default)
    topic = kafka_topic(partitions=3)
    done = run_cli("produce", "--repo", "repo", "--profile", "services", "--topic", topic, "--rate", "0",
                   "--duration", "0.05", "--partitions", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"g-{uuid.uuid4().hex[:8]}"})
    try:
        records = sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(3))
    finally:
        consumer.close()
    assert records > 0

    # Redis and the project: `online sample` finds the entity whose key the profile's project prefixes
    view = next(v for v in load_repository(repo).views if isinstance(v, FeatureView))
    tile_ms = layout.tile_groups(view)[0].tile_ms
    redis_client.hset(layout.entity_key(project, view, ("u-from-profile",)), layout.tile_field(tile_ms, 0), b"x")
    done = run_cli("online", "sample", "--repo", "repo", "--profile", "services", "--view", view.name, "--ids",
                   cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, "u-from-profile\n"), done.stderr

    # the same command with the built-in profile looks elsewhere (another project prefix): nothing found
    done = run_cli("online", "sample", "--repo", "repo", "--profile", "local", "--view", view.name, "--ids",
                   cwd=tmp_path)
    assert "u-from-profile" not in done.stdout
