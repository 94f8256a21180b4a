"""The applied state and the versioning rules (skewless.core.registry)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from skewless import Expectation, Window
from skewless.core.plan import RepositoryPlan, build_plan, plan_view, source_field_types
from skewless.core.registry import RefusedChangeError, Registry, RegistryError
from skewless.core.repo import load_repository

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def repo():
    return load_repository(ROOT / "feature_defs")


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "state" / "registry.json")


def plan_with(repo, **changed_views) -> RepositoryPlan:
    base = build_plan(repo)
    views = tuple(plan_view(changed_views[v.name], source_field_types(repo, changed_views[v.name]))
                  if v.name in changed_views else v for v in base.views)
    return replace(base, views=views)


def widen_7d(view, version: int | None = None):
    feats = [replace(f, window=Window.days(14)) if f.name == "max_order_amount_7d" else f for f in view.features]
    return replace(view, features=feats, version=view.version if version is None else version)


def test_first_apply_records_versions_and_fingerprints(repo, registry: Registry) -> None:
    plan = build_plan(repo)
    diff = registry.diff(plan)
    assert diff.first_apply and {c.action for c in diff.views} == {"added"}
    registry.apply(plan)
    doc = json.loads(registry.path.read_text())
    view = doc["views"]["user_order_stats"]
    assert view["version"] == 1 and view["fingerprint"] == plan.view("user_order_stats").semantic_fingerprint
    assert doc["services"]["churn_model"][0] == ["user_order_stats", "user_orders_last_1h"]
    again = registry.diff(plan)
    assert not again.has_changes and not again.first_apply
    assert "unchanged: customer_profile, user_order_stats" in again.render()


def test_semantic_change_without_bump_is_refused(repo, registry: Registry) -> None:
    registry.apply(build_plan(repo))
    before = registry.path.read_text()
    plan = plan_with(repo, user_order_stats=widen_7d(repo.view("user_order_stats")))
    diff = registry.diff(plan)
    (reason,) = diff.refused
    assert reason.startswith("feature view 'user_order_stats' changed its semantics (window of 'max_order_amount_7d' 7d -> 14d) without a new version; bump version=2")
    assert "REFUSED" in diff.render()
    with pytest.raises(RefusedChangeError) as info:
        registry.apply(plan)
    assert info.value.reasons == (reason,)
    assert registry.path.read_text() == before


def test_version_bump_is_applied(repo, registry: Registry) -> None:
    registry.apply(build_plan(repo))
    plan = plan_with(repo, user_order_stats=widen_7d(repo.view("user_order_stats"), version=2))
    diff = registry.apply(plan)
    (change,) = [c for c in diff.views if c.view == "user_order_stats"]
    assert (change.action, change.old_version, change.new_version) == ("version bump", 1, 2)
    assert "window of 'max_order_amount_7d' 7d -> 14d" in change.details
    assert json.loads(registry.path.read_text())["views"]["user_order_stats"]["version"] == 2


def test_version_cannot_go_back_or_be_reused(repo, registry: Registry) -> None:
    view = repo.view("user_order_stats")
    registry.apply(build_plan(repo))
    registry.apply(plan_with(repo, user_order_stats=widen_7d(view, version=2)))
    back = registry.diff(build_plan(repo))
    assert "went back from version 2 to 1" in back.refused[0]
    # v3 applied, then v2 reused with v3's semantics
    registry.apply(plan_with(repo, user_order_stats=replace(widen_7d(view), features=view.features[:3], version=3)))
    reuse = registry.diff(plan_with(repo, user_order_stats=replace(view, features=view.features[:2], version=2)))
    assert any("went back" in r for r in reuse.refused)


def test_removed_then_readded_with_other_semantics_is_refused(repo, registry: Registry) -> None:
    registry.apply(build_plan(repo))
    base = build_plan(repo)
    registry.apply(replace(base, views=tuple(v for v in base.views if v.name != "user_order_stats"), services=()))
    assert "user_order_stats" not in json.loads(registry.path.read_text())["views"]
    diff = registry.diff(plan_with(repo, user_order_stats=widen_7d(repo.view("user_order_stats"))))
    assert any("version 1 was applied before with other semantics; bump version=2" in r for r in diff.refused)
    assert not registry.diff(build_plan(repo)).refused  # same semantics: fine


def test_non_semantic_changes_are_recorded_without_bump(repo, registry: Registry) -> None:
    registry.apply(build_plan(repo))
    view = repo.view("user_order_stats")
    changed = replace(view, freshness_sla=timedelta(minutes=10), expectations=list(view.expectations)[1:] + [Expectation.not_null("last_order_ts")])
    diff = registry.apply(plan_with(repo, user_order_stats=changed))
    (change,) = [c for c in diff.views if c.view == "user_order_stats"]
    assert change.action == "updated" and not diff.refused
    assert "freshness SLA 5m -> 10m" in change.details
    assert "added expectation not_null(last_order_ts)" in change.details
    assert any(d.startswith("removed expectation not_null(user_orders_last_1h)") for d in change.details)


def test_service_and_view_removal_are_reported(repo, registry: Registry) -> None:
    registry.apply(build_plan(repo))
    base = build_plan(repo)
    services = tuple(s if s.name != "upsell_model" else replace(s, features=s.features[:2]) for s in base.services if s.name != "credit_model")
    diff = registry.diff(replace(base, views=base.views[1:], services=services))
    actions = {c.view: c.action for c in diff.views}
    assert actions["customer_profile"] == "removed"
    svc = {s.service: s for s in diff.services}
    assert svc["credit_model"].action == "removed"
    assert svc["upsell_model"].action == "changed" and "- user_order_stats:max_order_amount_7d" in svc["upsell_model"].details


@pytest.mark.parametrize(
    "change,text",
    [
        (lambda v: replace(v, source=replace(v.source, allowed_lateness=timedelta(hours=2))), "source allowed_lateness 1h -> 2h"),
        (lambda v: replace(v, features=v.features[1:]), "removed feature 'user_orders_last_1h'"),
        (lambda v: replace(v, features=[replace(f, where=()) if f.name == "customer_ltv_365d" else f for f in v.features]),
         "filter of 'customer_ltv_365d' status == \"completed\" -> none"),
        (lambda v: replace(v, features=[replace(f, expr=f.expr * 2) if f.name == "avg_order_value_365d" else f for f in v.features]),
         "expression of 'avg_order_value_365d' (customer_ltv_365d / completed_orders_365d) -> ((customer_ltv_365d / completed_orders_365d) * 2)"),
    ],
)
def test_change_descriptions(repo, registry: Registry, change, text) -> None:
    registry.apply(build_plan(repo))
    diff = registry.diff(plan_with(repo, user_order_stats=change(repo.view("user_order_stats"))))
    assert any(text in r for r in diff.refused), diff.refused


def test_snapshot_ttl_change(repo, registry: Registry) -> None:
    registry.apply(build_plan(repo))
    diff = registry.diff(plan_with(repo, customer_profile=replace(repo.view("customer_profile"), ttl=timedelta(days=2))))
    assert "snapshot view 'customer_profile' changed its semantics (ttl 1d -> 2d)" in diff.refused[0]


def test_unreadable_state(registry: Registry) -> None:
    registry.path.parent.mkdir(parents=True)
    registry.path.write_text("{")
    with pytest.raises(RegistryError, match="cannot read registry state"):
        registry.load()
    registry.path.write_text('{"format": 99}')
    with pytest.raises(RegistryError, match="unknown format"):
        registry.load()


def test_a_field_type_change_is_a_semantic_change(repo, registry: Registry, tmp_path: Path) -> None:
    import shutil

    registry.apply(build_plan(repo))
    schemas = tmp_path / "schemas"
    shutil.copytree(ROOT / "schemas", schemas)
    path = schemas / "orders.schema.json"
    doc = json.loads(path.read_text())
    assert doc["properties"]["amount"]["type"] == "integer"
    doc["properties"]["amount"] = {"type": "string", "format": "decimal"}
    path.write_text(json.dumps(doc))
    changed = build_plan(load_repository(ROOT / "feature_defs", schemas_dir=schemas))
    diff = registry.diff(changed)
    (reason,) = diff.refused
    assert reason.startswith("feature view 'user_order_stats' changed its semantics (type of source field 'amount' "
                             "int64 -> decimal) without a new version; bump version=2"), reason
    with pytest.raises(RefusedChangeError):
        registry.apply(changed)


def test_a_state_applied_before_field_types_were_fingerprinted_is_not_refused(repo, registry: Registry) -> None:
    """States written before the fingerprint covered field types keep working: same semantics otherwise is
    'updated' (the next apply records the new fingerprint), and a real change is still refused."""
    from skewless.core.plan import semantic_fingerprint

    plan = build_plan(repo)
    registry.apply(plan)
    doc = json.loads(registry.path.read_text())
    for name, rec in doc["views"].items():  # what an older skewless wrote
        rec["canonical"].pop("field_types", None)
        rec["fingerprint"] = semantic_fingerprint(rec["canonical"])
        doc["history"][name] = {str(rec["version"]): rec["fingerprint"]}
    registry.path.write_text(json.dumps(doc))
    diff = registry.diff(plan)
    assert not diff.refused
    (change,) = [c for c in diff.views if c.view == "user_order_stats"]
    assert change.action == "updated" and any("now covers the types" in d for d in change.details)
    assert registry.diff(plan_with(repo, user_order_stats=widen_7d(repo.view("user_order_stats")))).refused
    registry.apply(plan)
    assert not registry.diff(plan).has_changes


def with_upgrade(repo, v2) -> RepositoryPlan:
    """The shipped plan with a second version of user_order_stats declared next to the first (an upgrade)."""
    base = build_plan(repo)
    return replace(base, views=tuple(sorted((*base.views, plan_view(v2, source_field_types(repo, v2))),
                                            key=lambda v: (v.name, v.version))))


def test_two_declared_versions_are_an_upgrade_and_a_rollback_is_accepted(repo, registry: Registry) -> None:
    registry.apply(build_plan(repo))
    v2 = widen_7d(repo.view("user_order_stats"), version=2)
    diff = registry.apply(with_upgrade(repo, v2))
    actions = {(c.view, c.old_version, c.new_version): c.action for c in diff.views}
    assert actions[("user_order_stats", 1, 1)] == "unchanged" and actions[("user_order_stats", 1, 2)] == "version bump"
    doc = json.loads(registry.path.read_text())
    assert doc["views"]["user_order_stats"]["version"] == 2 and doc["views"]["user_order_stats"]["upgrade_from"] == 1
    assert not registry.diff(with_upgrade(repo, v2)).has_changes  # applied again: nothing changes
    back = registry.diff(build_plan(repo))  # v2 removed from feature_defs after promoting v1 back
    (change,) = [c for c in back.views if c.view == "user_order_stats"]
    assert change.action == "rolled back" and not back.refused


def test_the_older_version_of_an_upgrade_keeps_its_semantics(repo, registry: Registry) -> None:
    registry.apply(build_plan(repo))
    v1 = repo.view("user_order_stats")
    plan = with_upgrade(repo, widen_7d(v1, version=2))
    plan = replace(plan, views=tuple(plan_view(widen_7d(v1), source_field_types(repo, v1)) if (v.name, v.version) ==
                                     ("user_order_stats", 1) else v for v in plan.views))
    with pytest.raises(RefusedChangeError, match="the older version of an upgrade"):
        registry.apply(plan)
