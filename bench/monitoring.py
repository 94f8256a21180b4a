"""Overhead of online value sampling on the read path (goal: < 5% of the read p99).

A simulated online read loop against a real Redis on 127.0.0.1 (started here on a free port, stopped by
pid at the end): per read one pipeline of GET epoch + HGETALL meta + HGETALL tiles of one entity of a
stream-served view (12 five-minute tiles of COUNT/SUM/MAX over 1 h), then ``reference_reader.evaluate_read``.
Modes alternate read by read so machine noise (JVMs of colleagues) hits them alike:

- ``none``: no sampling; ``1pct``: :class:`ValueSampler` at rate 0.01 (the default to run with);
  ``all``: every read sampled (worst case).

``run() -> dict`` returns ``{name: {"value", "unit", "peer"|"floor", ...}}``: ``peer`` is the figure
to compare with (the p99 without sampling), ``floor`` the goal bound (overhead stays below it).
Run: ``.venv/bin/python bench/monitoring.py`` (prints JSON).
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from skewless import Agg, Aggregation, Entity, EventSource, FeatureView, Window  # noqa: E402
from skewless.core import layout  # noqa: E402
from skewless.core.timeutil import MS_PER_MINUTE, floor_ms  # noqa: E402
from skewless.monitoring.sampling import ValueSampler  # noqa: E402
from tests.support import reference_reader  # noqa: E402
from tests.support.fill import manifest  # noqa: E402

PROJECT = "bench"
ENTITIES = 2_000
READS_PER_MODE = 20_000
GOAL_PCT = 5.0

VIEW = FeatureView(
    "bench_view", Entity("user", {"user_id": "string"}), EventSource("orders", "orders", "raw.orders", topic="orders"),
    [Aggregation("n_1h", Agg.COUNT, None, Window.hours(1)), Aggregation("sum_1h", Agg.SUM, "amount", Window.hours(1)),
     Aggregation("max_1h", Agg.MAX, "amount", Window.hours(1))],
    freshness_sla=timedelta(minutes=5),
)


def _seed(client: Any, now: int) -> None:
    (group,) = layout.tile_groups(VIEW)
    client.set(layout.epoch_key(PROJECT), "E")
    client.hset(layout.view_meta_key(PROJECT, VIEW), mapping={"applied_from_ms": 0, "epoch": "E"})
    rng = random.Random(1)
    pipe = client.pipeline(transaction=False)
    for i in range(ENTITIES):
        fields = {}
        for k in range(12):
            start = floor_ms(now, 5 * MS_PER_MINUTE) - k * 5 * MS_PER_MINUTE
            n = rng.randint(1, 5)
            fields[layout.tile_field(group.tile_ms, start)] = layout.encode_tile_vector(
                k + 1, "E", [n, n * 100, rng.randint(1, 900)], group.aggs)
        fields[layout.MANIFEST_FIELD] = manifest(fields)
        pipe.hset(layout.entity_key(PROJECT, VIEW, (f"u{i}",)), mapping=fields)
        if i % 200 == 199:
            pipe.execute()
    pipe.execute()


def _read(client: Any, entity: str, now: int) -> dict:
    plan = reference_reader.read_plan(PROJECT, VIEW, (entity,))
    pipe = client.pipeline(transaction=False)
    pipe.get(plan.epoch_key)
    pipe.hgetall(plan.meta_key)
    pipe.hgetall(plan.entity_key)
    res = pipe.execute()
    fetched = {plan.epoch_key: res[0], plan.meta_key: res[1], plan.entity_key: res[2]}
    return reference_reader.evaluate_read(plan, fetched, now)


def _p(values: list[int], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] / 1000.0


def _loop(client: Any, now: int) -> dict[str, list[int]]:
    samplers = {"none": None, "1pct": ValueSampler(rate=0.01, seed=1), "all": ValueSampler(rate=1.0, seed=1)}
    lat: dict[str, list[int]] = {m: [] for m in samplers}
    rng = random.Random(2)
    for _ in range(200):  # warm-up
        _read(client, f"u{rng.randrange(ENTITIES)}", now)
    modes = list(samplers)
    for i in range(READS_PER_MODE * len(modes)):  # modes alternate read by read: the same noise hits all
        mode = modes[i % len(modes)]
        sampler = samplers[mode]
        entity = f"u{rng.randrange(ENTITIES)}"
        t0 = time.perf_counter_ns()
        values = _read(client, entity, now)
        if sampler is not None:
            sampler.observe(VIEW.name, values)
        lat[mode].append(time.perf_counter_ns() - t0)
    assert values["n_1h"][1] == "present", values
    return lat


def _observe_cost_ns(rate: float, n: int = 200_000) -> float:
    sampler = ValueSampler(rate=rate, seed=3)
    values = {"n_1h": (3, "present"), "sum_1h": (300, "present"), "max_1h": (120, "present")}
    t0 = time.perf_counter_ns()
    for _ in range(n):
        sampler.observe("v", values)
    return (time.perf_counter_ns() - t0) / n


def run() -> dict:
    import redis

    from skewless.stack.base import free_port
    from skewless.stack.procs import wait_until
    from skewless.stack.redis import RedisServer

    tmp = Path(tempfile.mkdtemp(prefix="skewless-bench-mon-"))
    server = RedisServer(port=free_port())
    started = server.start(tmp, tmp)
    try:
        wait_until(server.healthy, 30, "bench redis", interval_s=0.1)
        client = redis.Redis.from_url(server.url)
        now = int(time.time() * 1000)
        _seed(client, now)
        lat = _loop(client, now)
        client.close()
    finally:
        server.stop(started)
        shutil.rmtree(tmp, ignore_errors=True)
    base = _p(lat["none"], 0.99)
    one, every = _p(lat["1pct"], 0.99), _p(lat["all"], 0.99)
    cost1, cost_all = _observe_cost_ns(0.01), _observe_cost_ns(1.0)
    half_a, half_b = _p(lat["none"][0::2], 0.99), _p(lat["none"][1::2], 0.99)
    return {
        "monitoring.p99_noise_aa": {"value": round(100 * abs(half_a - half_b) / base, 2), "unit": "%",
                                    "note": "p99 difference between two halves of the same no-sampling reads"},
        "monitoring.read_p99_without_sampling": {"value": round(base, 1), "unit": "us", "reads": len(lat["none"]),
                                                 "p50": round(_p(lat["none"], 0.5), 1)},
        "monitoring.read_p99_with_sampling_1pct": {"value": round(one, 1), "unit": "us", "peer": round(base, 1)},
        "monitoring.read_p99_with_sampling_all": {"value": round(every, 1), "unit": "us", "peer": round(base, 1)},
        "monitoring.sampling_overhead_p99_1pct": {"value": round(100 * (one - base) / base, 2), "unit": "%",
                                                  "floor": GOAL_PCT, "goal": "below floor"},
        "monitoring.sampling_overhead_p99_all": {"value": round(100 * (every - base) / base, 2), "unit": "%",
                                                 "floor": GOAL_PCT, "goal": "below floor"},
        "monitoring.observe_cost_1pct": {"value": round(cost1, 1), "unit": "ns/read",
                                         "share_of_p99_pct": round(100 * cost1 / (base * 1000), 4), "floor": GOAL_PCT},
        "monitoring.observe_cost_all": {"value": round(cost_all, 1), "unit": "ns/read",
                                        "share_of_p99_pct": round(100 * cost_all / (base * 1000), 4), "floor": GOAL_PCT},
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
