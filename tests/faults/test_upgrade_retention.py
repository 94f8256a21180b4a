"""An upgrade whose new version's windows reach before what the topic still holds (`make test-faults`, slow): v1's job
applied the whole topic; retention then deletes its first half (Kafka's DeleteRecords moves the log start as retention
does); v2's job, started from the earliest retained offsets, cannot rebuild a window that reaches before them. Its
meta says so (`applied_from_ms` = its start), `promote` is refused in one line naming the window and until when, reads
keep serving v1 with the oracle's values, and a read pinned to v2 is `incomplete` (null), never a plausible number.

Real Kafka and Redis (the suite's) and the compiled jobs on the local MiniCluster, as tests/integration/test_upgrade.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import pytest

from skewless.commands import CommandError
from skewless.commands.promote import promote
from skewless.core import admission, layout, oracle
from skewless.core.repo import load_repository
from skewless.core.schemas import validator
from skewless.core.timeutil import MS_PER_HOUR, MS_PER_MINUTE
from skewless.producer import GeneratorConfig, generate
from skewless.producer.kafka_producer import produce_records
from skewless.serving.online import OnlineStore
from tests.integration.test_streaming import read_topic, wait_for
from tests.integration.test_upgrade import (FEATURES, VIEW, cancel_all, progress_records, start_job, v1_setup,
                                            write_repo)

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_an_upgrade_past_the_topics_retention_is_refused_until_its_windows_are_complete(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], redis_url: str, redis_client: Any, tmp_path: Path,
) -> None:
    from confluent_kafka import TopicPartition

    from skewless.engines.kafka import admin_client
    from streaming_jobs.flink_compiler import compile_repository

    topic, project, defs, repo1, now, gen = v1_setup(kafka_topic, tmp_path, "orders-upgrade-retention")
    source = repo1.view(VIEW).source
    records, _ = generate(GeneratorConfig(count=1200, rate=1200 / 7200.0, seed=51, start_ms=now - 2 * MS_PER_HOUR, **gen))
    produce_records(kafka_bootstrap, topic, records)
    (job1,) = compile_repository(repo1)
    clients = [start_job(job1, defs, kafka_bootstrap, redis_url, topic, project, tmp_path / "ckpt1")]
    try:
        wait_for(lambda: progress_records(redis_client, project) >= len(records), 240, "v1 applies the topic", clients[0])
        raw = read_topic(kafka_bootstrap, topic, len(records))
        admitted = list(admission.admit(raw, source, validator(source.schema), key_fields=("user_id",)).admitted)
        # retention passes the first half of every partition (v1 had applied it)
        cut = {p: sum(1 for r in records if r.partition == p) // 2 for p in range(3)}
        admin = admin_client(kafka_bootstrap)  # kept referenced until its futures complete
        for f in admin.delete_records([TopicPartition(topic, p, o) for p, o in cut.items()]).values():
            f.result(timeout=30)

        defs = write_repo(tmp_path, {1: 1, 2: 2})
        repo = load_repository(defs)
        (job2,) = compile_repository(repo, [f"{VIEW}@v2"])
        started = int(time.time() * 1000)
        clients.append(start_job(job2, defs, kafka_bootstrap, redis_url, topic, project, tmp_path / "ckpt2"))
        kept = len(records) - sum(cut.values())
        lane = f"{VIEW}@v2"
        wait_for(lambda: progress_records(redis_client, project, lane) >= kept, 240, "v2 applies what is kept", clients[1])
        time.sleep(1.0)
        v2 = repo.view(VIEW, 2)
        applied_from = int(redis_client.hget(layout.view_meta_key(project, v2), "applied_from_ms"))
        assert applied_from >= started, (applied_from, started)  # the topic no longer starts at offset 0

        with pytest.raises(CommandError, match=r"'orders_recent' \(2h\) reaches before the first event its job applied"):
            promote(repo, redis_client, project, VIEW, 2)
        with pytest.raises(CommandError, match="reads incomplete until"):  # one instant before the 2-hour window fits
            promote(repo, redis_client, project, VIEW, 2, now_ms=applied_from + 2 * MS_PER_HOUR - 1)
        assert layout.active_version_key(project, VIEW) not in {k.decode() for k in redis_client.keys(f"{project}:*")}

        users = sorted({e["user_id"] for e in admitted})
        end = max(e["event_time"] for e in admitted) + 1
        store = OnlineStore(repo, redis_client, project)
        got = store.get_online_features({"user_id": users}, FEATURES, now_ms=end)
        assert got.versions == {VIEW: 1}  # v1 keeps serving, with every event
        for i, user in enumerate(users):
            want = oracle.feature_value(repo.view(VIEW, 1), "orders_recent", admitted, (user,), end, now_read=True)
            assert (got.values["orders_recent"][i], got.statuses["orders_recent"][i]) == (want, "present"), user
        pinned = store.get_online_features({"user_id": users}, [f"{VIEW}@v2:orders_recent"], now_ms=end)
        assert pinned.versions == {f"{VIEW}@v2": 2}
        assert set(pinned.statuses["orders_recent"]) == {"incomplete"} and set(pinned.values["orders_recent"]) == {None}

        # once the 2-hour window lies after v2's first applied event, the same check lets it through
        line = promote(repo, redis_client, project, VIEW, 2, now_ms=applied_from + 2 * MS_PER_HOUR + MS_PER_MINUTE)
        assert "serves v2 from now on" in line
    finally:
        cancel_all(clients)
