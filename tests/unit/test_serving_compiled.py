"""The compiled feature-view evaluation (skewless/serving/compiled.py) serves clean entity hashes with exactly the generic
evaluation's result, and leaves every unusual one to it: reads equal the generic evaluation's (the store with nothing
compiled) on hashes edited in each way the compiled code must not decide (a lost or duplicated tile, another epoch, a
stray field, a negative count, a bool, a float, a tagged sum, an old run's record, a broken manifest ...), and the
reference reader's where the hash is readable."""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest

from skewless.core import layout
from skewless.core.timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE, floor_ms
from skewless.serving import OnlineStore, evaluate
from skewless.serving.evaluate import aggregate, compiled_entity, dynamic, prepare, view_meta, window_starts
from tests.unit.test_serving_online import CUTOFF, EPOCH, P, START, MemRedis, filled, reference, repo  # noqa: F401 - fixtures

SERVICES = ("churn_model", "upsell_model", "credit_model")


def _instants() -> list[int]:
    return [START + m * MS_PER_MINUTE + 3 for m in (5, 97, 13 * 60 + 1, 24 * 60 + 33, 40 * 60, 50 * 60 + 7, 75 * 60)] + [
        CUTOFF + 3 * MS_PER_DAY + 5 * MS_PER_HOUR]


@pytest.mark.parametrize("service", SERVICES)
def test_compiled_equals_the_generic_evaluation_and_serves_clean_hashes(repo: Any, filled: Any, service: str) -> None:
    store = OnlineStore(repo, MemRedis(filled.data), P)
    plan = store.plan(service)
    served = 0
    for vp in plan.views:
        if vp.snapshot:
            continue
        meta = view_meta({k.encode(): v.encode() for k, v in filled.data[layout.view_meta_key(P, vp.view)].items()})
        for now in _instants():
            starts, _ = window_starts(vp, now, now, None, EPOCH.encode(), meta)
            entity = compiled_entity(vp, now, now, EPOCH.encode(), meta, None, starts)
            lean = compiled_entity(vp, now, now, EPOCH.encode(), meta, None, starts, keep=False)  # nothing memoised
            assert entity is not None and lean is not None
            for user in filled.users:
                h = {k.encode(): v.encode() for k, v in (filled.data.get(layout.entity_key(P, vp.view, (user,))) or {}).items()}
                flat = [x for kv in h.items() for x in kv]
                got = entity(flat)
                assert got == entity(h)  # a flat RESP2 reply and a dict read the same
                if got is None:
                    assert lean(flat) is None
                    continue
                assert lean(flat) == (got[0][:4] + (None, None), got[1])
                served += 1
                want = prepare(vp, aggregate(vp, [h], EPOCH.encode(), meta, now, None, starts, store.caches))
                assert got[0] == want, (user, now)
                assert list(got[1]) == list(dynamic(vp, want, now)), (user, now)
    assert served >= len(filled.users) * len(_instants()) // 2  # most clean hashes are the compiled path's


def _tile_fields(h: dict[str, str], size: int) -> list[str]:
    return sorted(k for k in h if k.startswith(f"t:{size}:"))


def _edit_vector(h: dict[str, str], field: str, index: int, value: Any) -> None:
    version, epoch, body = h[field].split("|", 2)
    vec = json.loads(body)
    vec[index] = value
    h[field] = f"{version}|{epoch}|{json.dumps(vec)}"


def _edit_part(h: dict[str, str], field: str, part: int, index: int, value: Any) -> None:
    parts = json.loads(h[field])
    parts[part][index] = value
    h[field] = json.dumps(parts)


def _edit_manifest(h: dict[str, str], change: Callable[[dict], None]) -> None:
    man = json.loads(h["m"])
    change(man)
    h["m"] = json.dumps(man)


def _daily(h: dict[str, str]) -> str:
    return _tile_fields(h, MS_PER_DAY)[-1]


EDITS: dict[str, Callable[[dict[str, str]], None]] = {
    "negative count in a tile": lambda h: _edit_vector(h, _daily(h), 3, -1),
    "bool count in a tile": lambda h: _edit_vector(h, _daily(h), 3, True),
    "float max in a tile": lambda h: _edit_vector(h, _daily(h), 0, 12.5),
    "tagged sum in a tile": lambda h: _edit_vector(h, _daily(h), 5, {"$int": "12"}),
    "count near int64 in a batch body": lambda h: _edit_part(h, "b:w:31536000000", 0, 0, 2**63 - 2),
    "decimal sum in a batch body": lambda h: _edit_part(h, "b:w:31536000000", 0, 2, "12.50"),
    "LAST with a string partition": lambda h: _edit_part(h, "b:w:life", 0, 1, [1, "p", 2, "placed"]),
    "LAST with a decimal value": lambda h: _edit_part(h, "b:w:life", 0, 1, [1, 0, 2, {"$decimal": "1.5"}]),
    "duplicate tile start": lambda h: h.update({_daily(h).replace(":", ":0", 2).replace("t:0", "t:", 1): h[_daily(h)]}),
    "tile of another epoch": lambda h: h.update({_daily(h): h[_daily(h)].replace("|e1|", "|e0|")}),
    "tile without an epoch": lambda h: h.update({_daily(h): "7"}),
    "tile start not a number": lambda h: h.update({f"t:{MS_PER_DAY}:x": h[_daily(h)]}),
    "tile of an unknown size": lambda h: h.update({"t:60000:0": h[_daily(h)]}),
    "stray field": lambda h: h.update({"x": "1"}),
    "stray field named as a tile": lambda h: h.update({"x" + _daily(h)[1:]: h.pop(_daily(h))}),
    "duplicate tile start and a lost tile": lambda h: (h.pop(_tile_fields(h, MS_PER_DAY)[0]),
                                                       h.update({_daily(h).replace(":", ":0", 2).replace("t:0", "t:", 1): h[_daily(h)]})),
    "count leaving int64 on the way": lambda h: (_edit_part(h, "b:w:31536000000", 0, 0, 2**63 - 1),
                                                 _edit_part(h, "b:w:31536000000", 1, 0, 1), _edit_vector(h, _daily(h), 3, -1000)),
    "counts beyond int64 together in daily tiles": lambda h: [_edit_vector(h, f, 1, 2**63 - 1) for f in _tile_fields(h, MS_PER_DAY)],
    "batch record newer than listed": lambda h: h.update({"b:cutoff": str(CUTOFF + MS_PER_DAY)}),
    "stray batch field": lambda h: h.update({"b:w:1": "[[0]]"}),
    "lost tile": lambda h: h.pop(_daily(h)),
    "tile loss recorded": lambda h: _edit_manifest(h, lambda m: m["t"][str(MS_PER_DAY)].__setitem__(2, CUTOFF + MS_PER_DAY)),
    "manifest entry too short": lambda h: _edit_manifest(h, lambda m: m["t"].__setitem__(str(MS_PER_DAY), [1])),
    "manifest not JSON": lambda h: h.update({"m": "{"}),
    "manifest without its batch record": lambda h: _edit_manifest(h, lambda m: m.pop("b")),
    "lost batch record": lambda h: [h.pop(k) for k in list(h) if k.startswith("b:")],
    "batch record of another epoch": lambda h: h.update({"b:epoch": "e0"}),
    "batch cut-off not a number": lambda h: h.update({"b:cutoff": "x"}),
    "batch part not JSON": lambda h: h.update({"b:w:604800000": "[["}),
    "older run's record": lambda h: (h.update({"b:cutoff": str(CUTOFF - MS_PER_DAY)}),
                                     _edit_manifest(h, lambda m: m["b"].__setitem__(0, str(CUTOFF - MS_PER_DAY)))),
}


CORRUPT = {"stray field named as a tile", "tile without an epoch", "tile start not a number", "tile of an unknown size", "stray field", "manifest not JSON",
           "manifest entry too short", "batch cut-off not a number", "batch part not JSON"}  # the entity reads incomplete


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_unusual_hashes_read_as_the_generic_evaluation(repo: Any, filled: Any, edit: str, monkeypatch: Any) -> None:
    view = repo.view("user_order_stats")
    data = dict(filled.data)
    users = [u for u in filled.users if any(k.startswith("t:86400000:") for k in data.get(layout.entity_key(P, view, (u,)), {}))]
    for user in users[:3]:
        key = layout.entity_key(P, view, (user,))
        h = dict(data[key])
        EDITS[edit](h)
        data[key] = h
    rows = [{"user_id": u} for u in filled.users]
    for now in (CUTOFF + 5 * MS_PER_HOUR, CUTOFF + MS_PER_DAY + 7 * MS_PER_HOUR, CUTOFF + 3 * MS_PER_DAY):
        got = OnlineStore(repo, MemRedis(data), P).get_online_features(rows, ["user_order_stats"], now_ms=now)
        with monkeypatch.context() as m:
            m.setattr(evaluate, "compile_view", lambda vp, loads: None)
            generic = OnlineStore(repo, MemRedis(data), P).get_online_features(rows, ["user_order_stats"], now_ms=now)
        assert got.values == generic.values and got.statuses == generic.statuses, (edit, now)
        for i, user in enumerate(filled.users):
            everything_incomplete = {got.statuses[name][i] for name in view.feature_names} == {"incomplete"}
            if user in users[:3] and edit in CORRUPT:
                assert everything_incomplete
                continue
            try:
                want = reference(data, view, user, now, None)
            except (ValueError, OverflowError):  # a value the reference reader's decoding refuses: the store's entity is corrupt
                assert everything_incomplete
                continue
            for name in view.feature_names:
                assert (got.values[name][i], got.statuses[name][i]) == want[name], (edit, user, name, now)


def test_feature_names_that_are_not_identifiers_compile(repo: Any) -> None:
    """Feature names are free text (a dash, a space, non-ASCII, a keyword): the compiled code's variables stay valid
    and distinct, and its result equals the generic evaluation's."""
    from datetime import timedelta

    import orjson

    from skewless.core.dsl import Agg, Aggregation, Derived, FeatureView, Ref, Window
    from skewless.core.repo import Repository
    from skewless.serving.compiled import compile_view
    from skewless.serving.read_plan import build_plan
    from tests.support.fill import manifest

    stats = repo.view("user_order_stats")
    view = FeatureView(name="odd_names", entity=stats.entity, source=stats.source, version=1,
                       freshness_sla=timedelta(minutes=5), features=[
                           Aggregation("orders-1h", Agg.COUNT, None, Window.hours(1)),
                           Aggregation("für 7d", Agg.MAX, "amount", Window.days(7)),
                           Derived("class", Ref("orders-1h") / Ref("für 7d"))])
    plan = build_plan(Repository.of([view]), P, ["odd_names:orders-1h", "odd_names:für 7d", "odd_names:class"])
    vp = plan.views[0]
    entity_factory = compile_view(vp, orjson.loads)
    assert entity_factory is not None
    now = CUTOFF + MS_PER_DAY + 7 * MS_PER_HOUR
    fields = {layout.tile_field(300_000, now // 300_000 * 300_000): layout.encode_tile_vector(3, EPOCH, [4], [Agg.COUNT]),
              **layout.batch_fields(layout.encode_batch_record(view, CUTOFF + MS_PER_DAY, "run-1", EPOCH,
                                                               {"w:604800000": [[250], [None], [90]]}))}
    fields[layout.MANIFEST_FIELD] = manifest(fields)
    h = {k.encode(): v.encode() for k, v in fields.items()}
    meta = (0, EPOCH.encode(), None, None)
    starts, _ = window_starts(vp, now, now, None, EPOCH.encode(), meta)
    got = entity_factory(now, [floor_ms(now, g.tile_ms) for g in vp.groups], EPOCH.encode(), 0, None, starts, True)(h)
    want = prepare(vp, aggregate(vp, [h], EPOCH.encode(), meta, now, None, starts, OnlineStore(repo, MemRedis({}), P).caches))
    assert got is not None and got[0] == want and want[0] == (4, 250, 4 / 250)


@pytest.mark.parametrize("service", SERVICES)
def test_one_entity_reads_in_one_context_equal_reads_of_a_fresh_store(repo: Any, filled: Any, service: str) -> None:
    """One-entity reads at one instant share the view's compiled evaluator (evaluate.compiled_entity) and fill the
    response view by view: each entity's answer is the one a fresh store gives it, every field of the response."""
    now = _instants()[3]
    store = OnlineStore(repo, MemRedis(filled.data), P)
    for user in filled.users[:30] + ["never-seen"]:
        got = store.get_online_features([{"user_id": user}], service, now_ms=now)
        want = OnlineStore(repo, MemRedis(filled.data), P).get_online_features([{"user_id": user}], service, now_ms=now)
        assert got.to_dict() == want.to_dict(), user
        assert (got.columns, got.values, got.statuses, got.ages_ms, got.found, got.batch_runs, got.versions,
                got.progress) == (want.columns, want.values, want.statuses, want.ages_ms, want.found, want.batch_runs,
                                  want.versions, want.progress), user
        assert list(got.values) == list(got.columns)  # the columns in order
    assert any(vp.compiled_read is not None for vp in store.plan(service).views)
