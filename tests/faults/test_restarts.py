"""Fault tests (`make test-faults`, marked slow), clean restarts of a stateful service in place (same port, same
data dir, the stack's own config): Redis with its persistence (AOF, `appendfsync everysec`) and the Kafka
broker. Each keeps the data; the pipeline reconnects; after the stream drains, zero mismatches.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import (STREAM_RATE, Stack, applied, archive_worker, await_paced_writes, drain_job, parity,
                                  raw_rows, well_formed)

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _users(ctx: Any, n: int = 15) -> list[str]:
    """The first `n` user ids (sorted) of the run's well-formed records."""
    from skewless.e2e.pipeline import read_topic

    users = set()
    for r in read_topic(ctx.targets.bootstrap, ctx.topic):
        try:
            users.add(json.loads(r["value"])["user_id"])
        except Exception:  # noqa: BLE001 - the malformed records
            continue
    return sorted(u for u in users if isinstance(u, str))[:n]


def test_redis_restarted_with_persistence(stack: Stack, tmp_path: Path) -> None:
    """SIGTERM Redis mid-stream (after the job's first write, before its last: records still arrive) and again
    after the values are served, start it on the same port and dir with the stack's config (AOF, everysec):
    nothing is lost (progress and values survive, reads stay `present`), the streaming job keeps writing after
    the restart, and every value is exact after the stream drains."""
    from skewless.e2e.parity import Faults, online_reader

    seen: dict[str, Any] = {}

    class RestartRedis(Faults):
        def during_stream(self, ctx: Any) -> None:
            # the producer is throttled after the job's first write: restart Redis while the job writes
            before_applied = await_paced_writes(ctx)  # the job wrote and records still arrive
            client = ctx.targets.redis()
            before = (before_applied, client.dbsize())
            seen["stream"] = stack.restart("redis", down_s=3)
            seen["applied"] = (before[0], applied(ctx))  # the progress hash survived the restart
            seen["dbsize"] = (before[1], client.dbsize())  # every key survived the restart
            seen.update(drain_job(stack, ctx))

        def before_compare(self, ctx: Any) -> None:
            read = online_reader(ctx.targets.redis(), ctx.project, ctx.repo)
            users, now_ms = _users(ctx), int(time.time() * 1000)
            client = ctx.targets.redis()
            before, keys = read(users, None, now_ms), client.dbsize()
            seen["served"] = stack.restart("redis")
            after = read(users, None, now_ms)
            seen["served_dbsize"] = (keys, client.dbsize())
            seen["statuses"] = ({s for col in before.values() for _, s in col}, {s for col in after.values() for _, s in col})
            seen["same"] = before == after

    parity(stack, tmp_path, seed=404, faults=RestartRedis(), events=3000, produce_rate=STREAM_RATE)
    print(seen)
    before, after = seen["applied"]
    assert 1 <= before <= after < 3000, seen  # after the job's first write, before its last; no applied write lost
    assert seen["dbsize"][1] >= seen["dbsize"][0], seen  # no key lost by the restart
    assert seen["same"], seen  # every value and status read back identically
    assert seen["served_dbsize"][0] > 0 and seen["served_dbsize"][1] == seen["served_dbsize"][0], seen
    # the statuses after the restart are those before it: parity's int64-max amounts (issue 19 item 7) make some
    # windows `incomplete` by the contract on both sides, so "no incomplete at all" is no longer the rule
    assert "present" in seen["statuses"][1] and seen["statuses"][1] == seen["statuses"][0], seen


def test_kafka_broker_restarted(stack: Stack, tmp_path: Path) -> None:
    """SIGTERM the broker while producers send and the streaming job reads (after its first write, before its
    last), start it again on the same port and data dir; again while the archive is between commits (after
    its first, before its last). Producers, Flink source and archive reconnect: every record delivered once,
    archived once, and every value exact after the stream drains."""
    from skewless.e2e.parity import Faults, ParityConfig, generate_stream
    from skewless.e2e.pipeline import archive_drain, create_topic, read_topic
    from skewless.producer.kafka_producer import produce_records

    seen: dict[str, Any] = {}

    class RestartKafka(Faults):
        def during_stream(self, ctx: Any) -> None:
            # a producer sending through the restart (its own topic: the parity stream is already produced)
            side = f"{ctx.topic}-side"
            records, _ = generate_stream(ParityConfig(seed=405, events=1500, entities=25, days=2.5),
                                         ctx.repo.view("user_order_stats").source, int(time.time() * 1000))
            create_topic(ctx.targets.bootstrap, side, 3)
            delivery: dict[str, Any] = {}

            def produce() -> None:
                try:
                    delivery["report"] = produce_records(ctx.targets.bootstrap, side, records, rate=60.0)
                except Exception as exc:  # noqa: BLE001 - reported below
                    delivery["error"] = exc

            producer = threading.Thread(target=produce, name="side-producer", daemon=True)
            producer.start()
            # the parity producer is throttled after the job's first write: stop the broker while the job writes
            # and the records still arrive (its source, dead-letter sink and both producers meet it down)
            before = await_paced_writes(ctx)
            seen["stream"] = stack.restart("kafka", down_s=10)
            seen["applied"] = (before, applied(ctx))
            seen.update(drain_job(stack, ctx))
            producer.join(300)
            assert "report" in delivery, delivery
            got = read_topic(ctx.targets.bootstrap, side)
            seen["side"] = (len(records), delivery["report"].delivered, len(got),
                            len({(r["partition"], r["offset"]) for r in got}),
                            Counter(r["value"] for r in got) == Counter(r.value for r in records))

        def archive(self, ctx: Any) -> bool:
            worker = archive_worker(stack, ctx)
            assert worker.stdout is not None
            lines = []
            for line in worker.stdout:
                lines.append(line)
                if line.startswith("commit"):  # the worker pauses 5 s after each commit
                    seen["archive_rows"] = raw_rows(ctx)
                    seen["archive"] = stack.restart("kafka", down_s=5)
                    break
            lines.extend(worker.stdout)  # the worker reconnects and drains on its own
            seen["archive_rc"] = worker.wait(600)
            seen["archive_out"] = "".join(lines)[-2000:]
            # the drain a rerun would do: nothing left to archive if the worker resumed correctly
            stats = archive_drain(ctx.targets, ctx.repo.view("user_order_stats").source, ctx.topic)
            seen["rerun_records"] = stats.records
            return True

    report = parity(stack, tmp_path, seed=405, faults=RestartKafka(), events=3000, produce_rate=STREAM_RATE)
    print(seen)
    before, after = seen["applied"]
    assert 1 <= before and after < 3000, seen  # after the job's first write, before its last
    assert 0 < seen["archive_rows"] < well_formed(report), seen  # after the archive's first commit, before its last
    n, delivered, read, positions, same = seen["side"]
    assert n == delivered == read == positions and same, seen  # the producer lost nothing and wrote no copy
    assert seen["archive_rc"] == 0 and seen["rerun_records"] == 0, seen  # the worker resumed and drained alone
    status = stack.cli("stack", "status")
    assert status.returncode == 0, status.stdout + status.stderr  # the stack's own archive survived both restarts
