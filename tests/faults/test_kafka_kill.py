"""Fault test (`make test-faults`, marked slow): the Kafka broker hard-killed (SIGKILL of its process group: no
controlled shutdown, no flush) while the streaming job reads and the producers send, and while `/push` is
called, then started again on the same port and data dir (the log is recovered at start). Pushes answer 503
within the Kafka timeout while it is down and 200 afterwards; the job and the producers recover; every
record is delivered once and every value is exact.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import STREAM_RATE, Stack, applied, await_paced_writes, drain_job, parity

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_kafka_broker_killed_mid_stream_and_during_pushes(stack: Stack, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL the broker after the job's first write while records still arrive; push while it is down (503),
    start it again (same port, data dir), push again (200): the job reads every record, the parity producer
    delivers every record once, the pushed batches that got 200 are in the topic once; zero mismatches."""
    from skewless.e2e.parity import Faults
    from skewless.e2e.pipeline import create_topic, read_topic
    from skewless.serving.push import Pusher
    from skewless.serving.server import FeatureServer, ServerSettings, ThreadedServer
    from tests.integration.test_serving_faults import call

    monkeypatch.setenv("SKEWLESS_KAFKA_TIMEOUT_S", "3")
    seen: dict[str, Any] = {}

    class KillKafka(Faults):
        def during_stream(self, ctx: Any) -> None:
            topic = f"{ctx.topic}-push"
            create_topic(ctx.targets.bootstrap, topic, 3)
            sources = tuple(dataclasses.replace(s, topic=topic) if s.name == "orders" else s for s in ctx.repo.sources)
            repo = dataclasses.replace(ctx.repo, sources=sources)
            app = FeatureServer(ServerSettings(redis_url=ctx.targets.redis_url, project=ctx.project,
                                               kafka_bootstrap=ctx.targets.bootstrap),
                                store=object(), pusher=Pusher(repo, ctx.targets.bootstrap))
            iso = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())

            def push(i: int) -> tuple[int, dict]:
                events = [{"event_id": f"push-{i}-{j}", "user_id": f"u{j}", "order_id": f"o{i}-{j}", "amount": 10 + j,
                           "currency": "EUR", "status": "placed", "event_time": iso} for j in range(5)]
                return call(s.url, "POST", "/push", {"source": "orders", "events": events})

            with ThreadedServer(app) as s:
                seen["push_before"] = push(0)[0]
                before = await_paced_writes(ctx)  # the job wrote and records still arrive

                def while_down() -> None:
                    t = time.monotonic()
                    status, answer = push(1)
                    seen["push_down"] = (status, answer.get("error", {}).get("code"), round(time.monotonic() - t, 1))

                seen["kill"] = stack.restart("kafka", down_s=10, hard=True, while_down=while_down)
                seen["applied"] = (before, applied(ctx))
                t, statuses = time.monotonic(), []
                while 200 not in statuses[-1:]:  # pushes answer again once the broker is back
                    assert time.monotonic() - t < 120, statuses
                    statuses.append(push(2 + len(statuses))[0])
                seen["push_after"] = (statuses, round(time.monotonic() - t, 1))
            seen.update(drain_job(stack, ctx))
            got = [r["value"] for r in read_topic(ctx.targets.bootstrap, topic)]
            pushed_ok = [0] + [2 + i for i, st in enumerate(statuses) if st == 200]
            ids = [json.loads(v)["event_id"] for v in got]
            seen["pushed"] = (len(ids), len(set(ids)), sorted({i.split("-")[1] for i in ids}))
            seen["pushed_ok"] = pushed_ok

    parity(stack, tmp_path, seed=707, faults=KillKafka(), events=3000, produce_rate=STREAM_RATE)
    print(seen)
    before, after = seen["applied"]
    assert 1 <= before and after < 3000, seen  # after the job's first write, before its last
    assert seen["push_before"] == 200, seen
    assert seen["push_down"][:2] == (503, "kafka_unavailable"), seen
    assert seen["job_state"] == "FINISHED", seen
    n, distinct, batches = seen["pushed"]
    assert n == distinct, seen  # no pushed event twice
    assert {str(i) for i in seen["pushed_ok"]} <= set(batches), seen  # every push answered 200 is in the topic
