"""Loading a feature repository folder and resolving feature references."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from skewless.core.repo import (
    Repository,
    RepositoryLoadError,
    UnknownFeatureError,
    load_repository,
    resolve_features,
)
from skewless.core.validation import DefinitionError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A copy of the example repository (feature_defs/ + schemas/) that tests may edit."""
    shutil.copytree(ROOT / "feature_defs", tmp_path / "feature_defs")
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    return tmp_path / "feature_defs"


def test_example_repository_loads_and_validates() -> None:
    repo = load_repository(ROOT / "feature_defs")
    assert isinstance(repo, Repository)
    assert {v.name for v in repo.views} == {"user_order_stats", "customer_profile"}
    assert {s.name for s in repo.services} == {"churn_model", "upsell_model", "credit_model"}
    assert [e.name for e in repo.entities] == ["user"]
    assert {s.name for s in repo.sources} == {"orders", "customer_profiles"}
    assert all(v.version == 1 for v in repo.views)


def test_example_services_reuse_features_across_views_and_windows() -> None:
    repo = load_repository(ROOT / "feature_defs")
    churn = repo.resolve_features("churn_model")
    assert len(churn) >= 8 and len({v.name for v, _ in churn}) >= 2
    widths = {v.feature(f).window.label() for v, f in churn if v.name == "user_order_stats" and hasattr(v.feature(f), "window")}
    assert {"1h", "365d"} <= widths
    shared = {(v.name, f) for v, f in churn} & {(v.name, f) for v, f in repo.resolve_features("upsell_model")}
    assert shared


def test_definitions_shared_across_modules_are_deduplicated(example: Path) -> None:
    (example / "more.py").write_text("from feature_defs.entities import user as same_user\nfrom feature_defs.sources import *\n")
    repo = load_repository(example)
    assert [e.name for e in repo.entities] == ["user"]
    assert len(repo.sources) == 2


def test_load_reports_all_problems_at_once(example: Path) -> None:
    path = example / "user_order_stats.py"
    text = path.read_text()
    text = text.replace('Agg.SUM, "amount"', 'Agg.SUM, "amout"').replace("version=1,", "version=0,")
    path.write_text(text)
    with pytest.raises(DefinitionError) as info:
        load_repository(example)
    msg = str(info.value)
    assert "field 'amout' is not in schema 'orders'" in msg
    assert "version 0 is not an integer >= 1" in msg
    assert len(info.value.problems) == 2


def test_schemas_dir_defaults_next_to_repository(example: Path, tmp_path: Path) -> None:
    repo = load_repository(example)
    assert repo.schemas_dir == tmp_path / "schemas"
    shutil.rmtree(tmp_path / "schemas")
    with pytest.raises(DefinitionError, match="schema 'orders' cannot be used"):
        load_repository(example)
    assert load_repository(example, schemas_dir=ROOT / "schemas").schemas_dir == ROOT / "schemas"


def test_import_error_is_a_load_error(example: Path) -> None:
    (example / "broken.py").write_text("this is not python\n")
    with pytest.raises(RepositoryLoadError, match="broken"):
        load_repository(example)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(RepositoryLoadError, match="not found"):
        load_repository(tmp_path / "nope")


def test_folder_without_init_and_with_odd_name(tmp_path: Path) -> None:
    folder = tmp_path / "my-defs"
    folder.mkdir()
    (folder / "defs.py").write_text(textwrap.dedent("""
        from skewless import Entity, FeatureService
        user = Entity("user", {"user_id": "string"})
    """))
    repo = load_repository(folder)
    assert [e.name for e in repo.entities] == ["user"]


def test_reloading_picks_up_edits_and_leaves_sys_modules_alone(example: Path) -> None:
    import sys

    before = {k for k in sys.modules if k.startswith("feature_defs")}
    load_repository(example)
    path = example / "services.py"
    path.write_text(path.read_text().replace('"upsell_model"', '"upsell_v2_model"'))
    repo = load_repository(example)
    assert "upsell_v2_model" in repo.services_by_name
    assert {k for k in sys.modules if k.startswith("feature_defs")} == before


def test_resolve_forms() -> None:
    repo = load_repository(ROOT / "feature_defs")
    one = repo.resolve_features(["user_order_stats:customer_ltv_365d"])
    assert [(v.name, f) for v, f in one] == [("user_order_stats", "customer_ltv_365d")]
    whole = repo.resolve_features(["customer_profile"])
    assert [f for _, f in whole] == ["credit_score", "segment"]
    svc = repo.services_by_name["credit_model"]
    assert resolve_features(repo, svc) == repo.resolve_features("credit_model")
    dedup = repo.resolve_features(["customer_profile", "customer_profile:segment"])
    assert [f for _, f in dedup] == ["credit_score", "segment"]


@pytest.mark.parametrize(
    "ref,text",
    [
        ("user_order_stats:customer_ltv", "has no feature 'customer_ltv'; did you mean 'customer_ltv_365d'?"),
        ("user_ordr_stats:customer_ltv_365d", "unknown feature view 'user_ordr_stats'; did you mean 'user_order_stats'?"),
        ("churn_modle", "did you mean 'churn_model'"),
        ("customer_ltv_365d", "did you mean 'user_order_stats:customer_ltv_365d'?"),
        ("", "is not a 'view:feature'"),
    ],
)
def test_unknown_references_name_the_ref_and_close_matches(ref: str, text: str) -> None:
    repo = load_repository(ROOT / "feature_defs")
    with pytest.raises(UnknownFeatureError) as info:
        repo.resolve_features([ref])
    assert text in str(info.value)
    if ref:
        assert repr(ref) in str(info.value)


def test_repository_is_immutable() -> None:
    repo = load_repository(ROOT / "feature_defs")
    with pytest.raises(AttributeError):
        repo.views = ()  # type: ignore[misc]
    assert repo.view("customer_profile").name == "customer_profile"
    with pytest.raises(UnknownFeatureError, match="did you mean 'customer_profile'"):
        repo.view("customer_profiles")
