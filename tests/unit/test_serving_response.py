"""What an online response says besides its values: which entities the store holds no state for (``found``, in
the SDK and over HTTP), its DataFrame in a training set's shape and dtypes, and a short repr."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jsonschema
import pandas as pd
import pytest

from skewless.core import layout
from skewless.core.repo import load_repository
from skewless.core.timeutil import MS_PER_DAY, MS_PER_MINUTE
from skewless.serving.online import OnlineStore
from skewless.serving.openapi import spec
from skewless.serving.server import FeatureServer, ServerSettings, ThreadedServer
from tests.support.fill import fill, manifest, snapshot_hash
from tests.unit import test_serving_server as http_support
from tests.unit.test_serving_online import CUTOFF, EPOCH, P, START, MemRedis

TYPO = "u_typo"
# the training set's frame of these features (skewless/training: COUNT/SUM of int64 and MAX of int64 are BIGINT,
# the derived ratio DOUBLE, DaysSince BIGINT, LAST of a string and a string snapshot field VARCHAR; one VARCHAR
# status per view), as pandas dtypes
TRAINING_DTYPES = {
    "user_orders_last_1h": "Int64", "max_order_amount_7d": "Int64", "cancelled_orders_30d": "Int64",
    "user_total_orders_365d": "Int64", "customer_ltv_365d": "Int64", "avg_order_value_365d": "Float64",
    "days_since_last_order": "Int64", "last_order_status": "string", "segment": "string",
    "user_order_stats__status": "string", "customer_profile__status": "string",
}


@pytest.fixture(scope="module")
def repo() -> Any:
    return load_repository()


@dataclass
class Filled:
    data: dict[str, Any]
    users: list[str]
    now: int


@pytest.fixture(scope="module")
def filled(repo: Any) -> Filled:
    """The example store with its batch run recorded in the view meta, as materialization records it (so an
    entity the run did not list reads the laws' identity, not ``incomplete``)."""
    filled = fill(P, repo, users=6, events=400, start_ms=START, rate=0.004, cutoff_ms=CUTOFF, epoch=EPOCH)
    out = dict(filled.data)
    meta = layout.view_meta_key(P, repo.view("user_order_stats"))
    out[meta] = {**out[meta], layout.META_BATCH_CUTOFF: str(CUTOFF), "batch_epoch": EPOCH}
    return Filled(out, filled.users, max(e["event_time"] for e in filled.admitted) + MS_PER_MINUTE)


def _has(data: dict[str, Any], key: str) -> bool:
    return key in data


def test_an_unknown_entity_reads_the_contracts_values_and_is_reported_not_found(repo: Any, filled: Filled) -> None:
    view, profile = repo.view("user_order_stats"), repo.view("customer_profile")
    users = filled.users
    store_data = dict(filled.data)
    only_batch, only_profile = users[0], users[1]
    kept = {k: v for k, v in store_data[layout.entity_key(P, view, (only_batch,))].items()  # tiles pruned, the batch
            if k.startswith(layout.BATCH_FIELD_PREFIX)}  # record kept: still known
    store_data[layout.entity_key(P, view, (only_batch,))] = {**kept, layout.MANIFEST_FIELD: manifest(kept)}
    store_data.pop(layout.entity_key(P, view, (only_profile,)))
    store_data[layout.entity_key(P, profile, (only_profile,))] = snapshot_hash(
        profile, filled.now - MS_PER_DAY // 2, None, {"credit_score": 700, "segment": "vip"}, EPOCH)
    store = OnlineStore(repo, MemRedis(store_data), P)
    asked = users + [TYPO]
    got = store.get_online_features({"user_id": asked}, "churn_model", now_ms=filled.now)
    i = asked.index(TYPO)
    # the contract's values of a never-seen user, every status as before
    assert got.row(i) == {"user_orders_last_1h": 0, "max_order_amount_7d": None, "cancelled_orders_30d": 0,
                          "user_total_orders_365d": 0, "customer_ltv_365d": 0, "avg_order_value_365d": None,
                          "days_since_last_order": None, "last_order_status": None, "segment": None}
    assert {got.statuses[c][i] for c in got.columns} == {"present"}
    # ... and the response says the store holds nothing of it
    assert got.found == {
        "user_order_stats": [u != only_profile for u in users] + [False],
        "customer_profile": [_has(store_data, layout.entity_key(P, profile, (u,))) for u in users] + [False],
    }
    assert got.not_found(i) == ["user_order_stats", "customer_profile"]
    assert got.not_found(asked.index(only_batch)) == [] and got.not_found(asked.index(only_profile)) == ["user_order_stats"]
    assert got.to_dict()["found"] == got.found and json.loads(json.dumps(got.to_dict(), default=str))["found"] == got.found
    # the same read again (entity memo hits) and a one-entity read say the same
    again = store.get_online_features({"user_id": asked}, "churn_model", now_ms=filled.now + 1)
    assert again.found == got.found
    assert store.get_online_features([{"user_id": TYPO}], "churn_model", now_ms=filled.now).found == {
        "user_order_stats": [False], "customer_profile": [False]}
    assert store.get_online_features({"user_id": []}, "churn_model").found == {"user_order_stats": [], "customer_profile": []}


def test_to_pandas_has_the_training_sets_columns_and_dtypes(repo: Any, filled: Filled) -> None:
    store = OnlineStore(repo, MemRedis(filled.data), P)
    users = filled.users[:3] + [TYPO]
    got = store.get_online_features({"user_id": users}, "churn_model", now_ms=filled.now)
    df = got.to_pandas()
    assert list(df.columns) == ["user_id", *got.columns[:-1], "user_order_stats__status", "segment", "customer_profile__status"]
    assert {c: str(df[c].dtype) for c in df.columns if c != "user_id"} == {
        c: str(pd.api.types.pandas_dtype(t)) for c, t in TRAINING_DTYPES.items()}
    typo = df.iloc[3]
    assert typo["cancelled_orders_30d"] == 0 and typo["max_order_amount_7d"] is pd.NA and typo["segment"] is pd.NA
    assert df["customer_ltv_365d"].tolist()[:3] == got.values["customer_ltv_365d"][:3]  # exact ints, no 6240.0
    # per-feature statuses on request (the old shape), found flags on request
    per_feature = got.to_pandas(statuses="feature", found=True)
    assert list(per_feature.columns[:3]) == ["user_id", "user_orders_last_1h", "user_orders_last_1h__status"]
    assert per_feature["user_order_stats__found"].tolist() == got.found["user_order_stats"]
    assert list(got.to_pandas(statuses=None).columns) == ["user_id", *got.columns]
    with pytest.raises(ValueError, match="'view'"):
        got.to_pandas(statuses="value")
    # views interleaved in the request: grouped per view, as the training set's engines output them
    mixed = store.get_online_features({"user_id": users}, ["customer_profile:segment", "user_order_stats:user_orders_last_1h",
                                                           "customer_profile:credit_score"], now_ms=filled.now).to_pandas()
    assert list(mixed.columns) == ["user_id", "segment", "credit_score", "customer_profile__status", "user_orders_last_1h",
                                   "user_order_stats__status"]
    assert str(mixed["credit_score"].dtype) == "Int64"


def test_a_views_status_is_its_worst_features_as_in_training_sets(repo: Any, filled: Filled) -> None:
    """Batch 3 days late: the 1 h window stays present, windows over the batch part are incomplete (null) and the
    lifetime ones stale; the training set reports such a row ``incomplete`` in its one status column."""
    store = OnlineStore(repo, MemRedis(filled.data), P)
    late = CUTOFF + 3 * MS_PER_DAY
    got = store.get_online_features({"user_id": filled.users[:2]}, ["user_order_stats"], as_of=late, now_ms=late + 1)
    assert {got.statuses["user_orders_last_1h"][0], got.statuses["customer_ltv_365d"][0],
            got.statuses["last_order_ts"][0]} == {"present", "incomplete", "stale"}
    assert got.view_statuses() == {"user_order_stats": ["incomplete", "incomplete"]}
    assert got.to_pandas()["user_order_stats__status"].tolist() == ["incomplete", "incomplete"]
    fresh = store.get_online_features({"user_id": filled.users[:1]}, ["user_order_stats:last_order_ts"],
                                      as_of=CUTOFF + 3 * MS_PER_DAY, now_ms=late + 1)
    assert fresh.view_statuses() == {"user_order_stats": ["stale"]}


def test_repr_is_one_short_line_and_str_a_table(repo: Any, filled: Filled) -> None:
    store = OnlineStore(repo, MemRedis(filled.data), P)
    profile = repo.view("customer_profile")
    users = filled.users[:3] + [TYPO]
    got = store.get_online_features({"user_id": users}, "churn_model", now_ms=filled.now)
    no_profile = sum(not _has(filled.data, layout.entity_key(P, profile, (u,))) for u in users)
    assert repr(got) == ("<OnlineResponse 4 entities x 9 features; statuses: present 36; "
                         f"not found: user_order_stats 1, customer_profile {no_profile}>")
    as_of = store.get_online_features({"user_id": users[:1]}, ["user_order_stats:customer_ltv_365d"],
                                      as_of=CUTOFF + 3 * MS_PER_DAY, now_ms=filled.now)
    assert repr(as_of) == ("<OnlineResponse 1 entity x 1 feature as_of 2024-01-15T00:00:00.000Z; "
                           "statuses: incomplete 1; not found: none>")
    lines = str(got).splitlines()
    assert lines[0] == repr(got)
    assert lines[1].split() == ["feature", *(f"user_id={u}" for u in users)]
    assert lines[2].split() == ["user_orders_last_1h", *(str(v) for v in got.values["user_orders_last_1h"])]
    assert lines[-1].split()[-2:] == ["user_order_stats,", "customer_profile"]
    assert len(lines) == 2 + 9 + 1 and max(map(len, lines[1:])) < 160
    html = got._repr_html_()
    assert html.count("<tr>") == 1 + 9 + 1 and "u_typo" in html and "&lt;OnlineResponse" in html
    many = store.get_online_features({"user_id": filled.users + [f"x{i}" for i in range(10)]}, "churn_model",
                                     now_ms=filled.now)
    assert str(many).splitlines()[-1] == f"... and {len(many) - 8} more entities (to_pandas() has all)"


def test_http_body_says_which_entities_are_not_found_and_matches_the_openapi_spec(repo: Any, filled: Filled) -> None:
    store = OnlineStore(repo, http_support.MemRedis(filled.data), P)
    app = FeatureServer(ServerSettings(project=P, max_entities=50, api_token=http_support.TOKEN), store=store)
    users = filled.users[:2] + [TYPO]
    with ThreadedServer(app) as server:
        status, _, body = http_support.call(server, "POST", "/get-online-features", json.dumps(
            {"feature_service": "churn_model", "entities": {"user_id": users}}))
        assert status == 200, body
        got = json.loads(body)
        assert got["found"]["user_order_stats"] == [True, True, False]
        assert got["found"]["customer_profile"][2] is False
        assert got["values"]["user_orders_last_1h"][2] == 0  # read at the real now: statuses as the clock makes them
        _, _, doc = http_support.call(server, "GET", "/openapi.json")
    schemas = json.loads(doc)["components"]["schemas"]
    assert "found" in schemas["FeaturesResponse"]["required"]
    jsonschema.validate(got, {**schemas["FeaturesResponse"], "components": {"schemas": schemas}})
    assert spec()["components"]["schemas"]["FeaturesResponse"] == schemas["FeaturesResponse"]
