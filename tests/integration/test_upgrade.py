"""A definition upgrade while the view serves (docs/streaming.md, "Changing a definition while it serves"), on the
suite's real Kafka and Redis and the compiled jobs on the local MiniCluster: a temporary feature repository declares
v1 of a view, then v2 (one window changed from 1 h to 2 h) next to it. v1's job runs; v2's job (its own lane) starts
from the topic's earliest offsets; `promote` is refused before v2's job started and while it is behind the offsets
live at its start, then switches; a rollback switches back while v1's job still runs. Every read, sampled at each
step, says which version it serves and equals the oracle of that version over the admitted events."""

from __future__ import annotations

import json
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from skewless.commands import CommandError
from skewless.commands.promote import describe_upgrades, promote
from skewless.core import admission, layout, oracle
from skewless.core.repo import load_repository
from skewless.core.schemas import validator
from skewless.core.timeutil import MS_PER_MINUTE, td_ms
from skewless.producer import GeneratorConfig, generate
from skewless.producer.kafka_producer import produce_records
from skewless.serving.online import OnlineStore
from streaming_jobs.savepoint import check_restorable, stop_with_savepoint
from tests.integration.test_streaming import read_topic, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
VIEW = "order_counts"
FEATURES = [f"{VIEW}:orders_recent", f"{VIEW}:amount_recent"]
HOUR_MS = 60 * MS_PER_MINUTE

DEFS = '''
from datetime import timedelta

from skewless import Agg, Aggregation, Entity, EventSource, FeatureView, Where, Window

user = Entity("user", {{"user_id": "string"}})
orders = EventSource(name="orders", schema="orders", topic="orders", table="raw.orders", partition_key="user_id",
                     allowed_lateness=timedelta(hours=1), clock_skew_tolerance=timedelta(minutes=5))
PLACED = Where("status", "==", "placed")


def counts(version, hours):
    return FeatureView(name="{view}", entity=user, source=orders, version=version, features=[
        Aggregation("orders_recent", Agg.COUNT, None, Window.hours(hours), where=PLACED),
        Aggregation("amount_recent", Agg.SUM, "amount", Window.hours(1), where=PLACED),
    ])
'''


def write_repo(folder: Path, versions: dict[int, int]) -> Path:
    """A feature repository with ``version -> window hours`` of the view (schemas: the project's)."""
    defs = folder / "upgrade_defs"
    defs.mkdir(parents=True, exist_ok=True)
    if not (folder / "schemas").exists():
        (folder / "schemas").symlink_to(ROOT / "schemas")
    body = DEFS.format(view=VIEW) + "".join(f"\ncounts_v{v} = counts({v}, {h})\n" for v, h in versions.items())
    (defs / "__init__.py").write_text("")
    (defs / "views.py").write_text(textwrap.dedent(body))
    return defs


def progress_records(redis_client: Any, project: str, lane: str = "") -> int:
    fields = redis_client.hgetall(layout.progress_key(project, "orders", lane))
    return sum(json.loads(v)["records"] for k, v in fields.items() if k.startswith(b"p:"))  # not the log_end check


def start_job(job: Any, repo_path: Path, kafka_bootstrap: str, redis_url: str, topic: str, project: str, ckpt: Path,
              stop_offsets: dict[int, int] | None = None, ns: str | None = None, savepoint: str | None = None) -> Any:
    """The compiled job on the local MiniCluster, configured as `skewless submit` does (its consumer group, dead-letter
    topic and progress hash from its lane; applied_from from the topic)."""
    from skewless.engines.flink_env import create_stream_env
    from streaming_jobs.job import JobOptions, add_source_job
    from streaming_jobs.run_view import stream_conf

    conf = stream_conf("300 ms", 10_000)
    if savepoint is not None:
        conf["execution.savepoint.path"] = savepoint
    env, t_env = create_stream_env(parallelism=1, checkpoint_dir=ckpt, checkpoint_interval="2 s", extra_conf=conf)
    add_source_job(env, t_env, job, JobOptions(bootstrap=kafka_bootstrap, redis_url=redis_url, project=project,
                                               repo_path=str(repo_path), topic=topic, ns=ns or f"sk_{uuid.uuid4().hex[:8]}",
                                               stop_offsets=stop_offsets, flush_ms=100))
    return env.execute_async(f"test-upgrade-{project}-{job.lane or 'v1'}")


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from streaming_jobs.job import watermarks

    return {p: high for p, (_, high) in watermarks(bootstrap, topic).items()}


def v1_setup(kafka_topic: Callable[..., str], tmp_path: Path, prefix: str
             ) -> tuple[str, str, Path, Any, int, dict[str, Any]]:
    """``(topic, project, feature repository with v1 alone, that repository, now ms, generator settings)``."""
    topic = kafka_topic(partitions=3, prefix=prefix)
    defs = write_repo(tmp_path, {1: 1})
    repo1 = load_repository(defs)
    source = repo1.view(VIEW).source
    gen = {"partitions": 3, "users": 12, "allowed_lateness_ms": td_ms(source.allowed_lateness),
           "clock_skew_ms": td_ms(source.clock_skew_tolerance)}
    return topic, f"u{uuid.uuid4().hex[:8]}", defs, repo1, int(time.time() * 1000), gen


def http_features(store: OnlineStore, project: str, users: list[str]) -> dict[str, Any]:
    """One ``POST /get-online-features`` through the feature server on ``store``: the JSON body."""
    import http.client

    from skewless.serving.server import FeatureServer, ServerSettings, ThreadedServer

    with ThreadedServer(FeatureServer(ServerSettings(project=project), store=store)) as server:
        host, port = server.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request("POST", "/get-online-features", body=json.dumps({"features": FEATURES, "entities": {"user_id": users}}),
                     headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        body = json.loads(reply.read())
        conn.close()
    assert reply.status == 200, body
    return body


def cancel_all(clients: list[Any]) -> None:
    """Cancel the jobs still running (a test's cleanup)."""
    for c in clients:
        try:
            c.cancel().result()
        except Exception:  # noqa: BLE001 - already ended
            pass


def test_an_upgrade_mid_stream_serves_one_version_per_read_and_rolls_back(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], redis_url: str, redis_client: Any, tmp_path: Path,
) -> None:
    from streaming_jobs.flink_compiler import compile_repository

    topic, project, defs, repo1, now, gen = v1_setup(kafka_topic, tmp_path, "orders-upgrade")
    source = repo1.view(VIEW).source
    # three phases over the last 2.5 hours: before the upgrade, while both versions run, after the rollback
    phases = [generate(GeneratorConfig(count=n, rate=n / span, seed=seed, start_ms=now - start, **gen))[0]
              for n, span, seed, start in ((900, 5400.0, 41, 150 * MS_PER_MINUTE), (300, 1800.0, 42, 60 * MS_PER_MINUTE),
                                           (200, 1500.0, 43, 30 * MS_PER_MINUTE))]
    produced: list[Any] = []
    reads: list[tuple[str, int]] = []  # (step, version served) of every sampled read
    differ = [0]  # users whose orders_recent differs between the versions at a read: a wrong version would fail it

    def produce(records: list[Any]) -> None:
        produce_records(kafka_bootstrap, topic, records)
        produced.extend(records)

    def check_reads(repo: Any, step: str, version: int) -> None:
        """A read of every user at the newest event: it serves ``version``, equal to that version's oracle."""
        raw = read_topic(kafka_bootstrap, topic, len(produced))
        admitted = list(admission.admit(raw, source, validator(source.schema), key_fields=("user_id",)).admitted)
        users = sorted({e["user_id"] for e in admitted})
        end = max(e["event_time"] for e in admitted) + 1
        got = OnlineStore(repo, redis_client, project).get_online_features({"user_id": users}, FEATURES, now_ms=end)
        reads.append((step, got.versions[VIEW]))
        assert got.versions == {VIEW: version}, (step, got.versions)
        view = repo.view(VIEW, version)
        others = [v for v in repo.versions(VIEW) if v.version != version]
        for user in users:
            differ[0] += sum(oracle.feature_value(o, "orders_recent", admitted, (user,), end, now_read=True)
                             != oracle.feature_value(view, "orders_recent", admitted, (user,), end, now_read=True)
                             for o in others)
        for i, user in enumerate(users):
            for feature in ("orders_recent", "amount_recent"):
                want = oracle.feature_value(view, feature, admitted, (user,), end, now_read=True)
                assert (got.values[feature][i], got.statuses[feature][i]) == (want, "present"), (step, user, feature)

    # v1 alone: its job serves, no record is read
    (job1,) = compile_repository(repo1)
    produce(phases[0])
    client1 = start_job(job1, defs, kafka_bootstrap, redis_url, topic, project, tmp_path / "ckpt1")
    clients = [client1]
    try:
        wait_for(lambda: progress_records(redis_client, project) >= len(produced), 240, "v1 applies the head", client1)
        time.sleep(0.5)
        check_reads(repo1, "v1 alone", 1)

        # v2 declared next to v1 (the 1-hour count over 2 hours); promote refused before its job started
        defs = write_repo(tmp_path, {1: 1, 2: 2})
        repo = load_repository(defs)
        check_reads(repo, "v2 declared, no job", 1)
        with pytest.raises(CommandError, match=r"order_counts v2 has not caught up: its streaming job never started"):
            promote(repo, redis_client, project, VIEW, 2)
        (job2,) = compile_repository(repo, [f"{VIEW}@v2"])
        assert job2.lane == f"{VIEW}@v2" and job2.versions == (2,)
        # its job stopped half way through what was live at its start: still refused, naming the partitions
        live = end_offsets(kafka_bootstrap, topic)
        half = {p: o // 2 for p, o in live.items()}
        start_job(job2, defs, kafka_bootstrap, redis_url, topic, project, tmp_path / "ckpt2a",
                  stop_offsets=half).get_job_execution_result().result()
        with pytest.raises(CommandError, match=r"its job has not applied the records live at its start \(partition:"):
            promote(repo, redis_client, project, VIEW, 2)
        check_reads(repo, "v2 behind", 1)

        # its job again, from the earliest offsets (the start offsets recorded first stay): caught up, then promoted
        ns2 = f"sk_{uuid.uuid4().hex[:8]}"
        client2 = start_job(job2, defs, kafka_bootstrap, redis_url, topic, project, tmp_path / "ckpt2", ns=ns2)
        clients.append(client2)
        lane = f"{VIEW}@v2"
        wait_for(lambda: progress_records(redis_client, project, lane) >= len(produced), 240, "v2 catches up", client2)
        time.sleep(0.5)
        check_reads(repo, "v2 caught up, not promoted", 1)
        meta2 = redis_client.hgetall(layout.view_meta_key(project, repo.view(VIEW, 2)))
        assert json.loads(meta2[layout.META_START_OFFSETS.encode()]) == {str(p): o for p, o in live.items()}
        assert "serves v2 from now on" in promote(repo, redis_client, project, VIEW, 2)
        check_reads(repo, "promoted", 2)
        http_read = http_features(OnlineStore(repo, redis_client, project), project, ["u1", "u2"])
        assert http_read["versions"] == {VIEW: 2}, http_read  # the HTTP body names the version too
        jobs = [{"jid": "j2", "state": "RUNNING", "name": f"skewless-stream-{lane}"}]
        lines = describe_upgrades(repo, redis_client, project, jobs)
        assert lines[0] == f"upgrade of {VIEW}: versions v1, v2; serving v2", lines
        assert lines[2].startswith("  v2: job j2 RUNNING;") and lines[2].endswith("caught up"), lines

        # more orders while both run: each job applies them to its own version's keys; reads while they flow
        # serve v2 alone
        produce(phases[1])
        store = OnlineStore(repo, redis_client, project)

        def applied_while_reading() -> bool:
            got = store.get_online_features({"user_id": ["u1", "u2"]}, FEATURES)
            reads.append(("flowing", got.versions[VIEW]))
            assert got.versions == {VIEW: 2}
            return min(progress_records(redis_client, project), progress_records(redis_client, project, lane)) >= len(produced)

        wait_for(applied_while_reading, 240, "both versions apply the second phase", client2)
        time.sleep(0.5)
        check_reads(repo, "both run, v2 active", 2)

        # rollback: v1's job still runs
        promote(repo, redis_client, project, VIEW, 1)
        check_reads(repo, "rolled back", 1)
        produce(phases[2])
        wait_for(lambda: min(progress_records(redis_client, project), progress_records(redis_client, project, lane))
                 >= len(produced), 240, "both versions apply the third phase", client1)
        time.sleep(0.5)
        check_reads(repo, "after the rollback", 1)
        promote(repo, redis_client, project, VIEW, 2)
        check_reads(repo, "promoted again", 2)

        # finish: v1's job cancelled, v1 removed from the definitions; v2's lane job hands over to the source's job
        # through a savepoint (same graph: only its progress hash, consumer group and dead-letter topic change)
        client1.cancel().result()
        savepoint = stop_with_savepoint(client2, (tmp_path / "savepoints").resolve().as_uri())
        defs = write_repo(tmp_path, {2: 2})
        final = load_repository(defs)
        (job_final,) = compile_repository(final)
        assert job_final.lane == "" and job_final.versions == (2,)
        check_restorable(savepoint, [source.name])
        clients.append(start_job(job_final, defs, kafka_bootstrap, redis_url, topic, project, tmp_path / "ckpt3",
                                 ns=ns2, savepoint=savepoint))
        produce(generate(GeneratorConfig(count=150, rate=1.0, seed=44, start_ms=now - 4 * MS_PER_MINUTE, **gen))[0])
        wait_for(lambda: progress_records(redis_client, project) >= len(produced), 240,
                 "the source's job (v2 restored from its lane job) applies the last phase", clients[-1])
        time.sleep(0.5)
        check_reads(final, "finished: v2 alone", 2)
    finally:
        cancel_all(clients)
    assert differ[0] > 0, "the versions' values never differed: the test could not tell them apart"
    print("reads (step, version):", reads, "differing values:", differ[0])
