"""Every validation rule (skewless.core.validation), one case each, plus message format and all-at-once."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import pytest

from skewless import (
    Agg,
    Aggregation,
    BinOp,
    Check,
    Const,
    DaysSince,
    Derived,
    Entity,
    EventSource,
    Expectation,
    FeatureService,
    FeatureView,
    Field,
    Ref,
    SnapshotView,
    TableSource,
    Where,
    Window,
)
from skewless.core.repo import Repository
from skewless.core.timeutil import format_duration
from skewless.core.validation import DefinitionError, Problem, check_repository, iter_notes, validate_repository

TS = {"type": "string", "format": "date-time"}
EVENTS_SCHEMA = {
    "type": "object",
    "required": ["event_id", "user_id", "event_time"],
    "properties": {
        "event_id": {"type": "string"},
        "user_id": {"type": "string"},
        "account_id": {"type": "integer"},
        "amount": {"type": "integer"},
        "price": {"type": "number"},
        "tax": {"type": "string", "format": "decimal"},
        "flag": {"type": "boolean"},
        "status": {"type": "string", "enum": ["placed", "completed"]},
        "note": {"type": ["string", "null"]},
        "shipped_at": TS,
        "event_time": TS,
    },
}
PROFILE_SCHEMA = {
    "type": "object",
    "properties": {
        "user_id": {"type": "string"},
        "score": {"type": "integer"},
        "segment": {"type": "string"},
        "event_time": TS,
        "created_at": TS,
        "label": {"type": "string"},
    },
}


@pytest.fixture(scope="module")
def schemas_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("schemas")
    (d / "events.schema.json").write_text(json.dumps(EVENTS_SCHEMA))
    (d / "profile.schema.json").write_text(json.dumps(PROFILE_SCHEMA))
    (d / "broken.schema.json").write_text("{not json")
    return d


USER = Entity("user", {"user_id": "string"})
EVENTS = EventSource("events", schema="events", table="raw.events", topic="events", partition_key="user_id")
PROFILES = TableSource("profiles", table="crm.profile", schema="profile", created_at="created_at")


def valid_features() -> list[Any]:
    return [
        Aggregation("event_count_1h", Agg.COUNT, None, Window.hours(1)),
        Aggregation("amount_sum_365d", Agg.SUM, "amount", Window.days(365), where=Where("status", "==", "completed")),
        Aggregation("event_count_365d", Agg.COUNT, None, Window.days(365)),
        Aggregation("tax_avg_30d", Agg.AVG, "tax", Window.days(30)),
        Aggregation("price_max_1d", Agg.MAX, "price", Window.days(1)),
        Aggregation("last_event_ts", Agg.MAX, "event_time", Window.lifetime()),
        Aggregation("last_status", Agg.LAST, "status", Window.lifetime()),
        Derived("amount_avg_365d", Ref("amount_sum_365d") / Ref("event_count_365d")),
        Derived("days_since_last_event", DaysSince(Ref("last_event_ts"))),
    ]


def feature_view(**kw: Any) -> FeatureView:
    args: dict[str, Any] = dict(name="user_events", entity=USER, source=EVENTS, features=valid_features())
    args.update(kw)
    return FeatureView(**args)


def snapshot_view(**kw: Any) -> SnapshotView:
    args: dict[str, Any] = dict(
        name="user_profile", entity=USER, source=PROFILES, fields=[Field("score", "int64"), Field("segment", "string")],
        ttl=timedelta(days=1),
    )
    args.update(kw)
    return SnapshotView(**args)


def with_feature(f: Any, **kw: Any) -> FeatureView:
    return feature_view(features=valid_features() + [f], **kw)


SERVICE = FeatureService("churn_model", ["user_events:event_count_1h", "user_profile"])


def repo_of(schemas_dir: Path, *defs: Any, base: bool = True) -> Repository:
    items = list(defs)
    if base:
        names = {getattr(d, "name", None) for d in items if isinstance(d, (FeatureView, SnapshotView))}
        items += [v for v in (feature_view(), snapshot_view()) if v.name not in names]
        if not any(isinstance(d, FeatureService) for d in items):
            items.append(SERVICE)
    return Repository.of(items, schemas_dir=schemas_dir)


def codes(problems: list[Problem]) -> list[str]:
    return [p.code for p in problems]


def test_valid_repository_has_no_problems(schemas_dir: Path) -> None:
    assert validate_repository(repo_of(schemas_dir)) == []
    check_repository(repo_of(schemas_dir))  # does not raise


def test_example_message_names_definition_field_value_and_fix(schemas_dir: Path) -> None:
    bad = with_feature(Aggregation("amount_sum_7d", Agg.SUM, "amout", Window.days(7)))
    (p,) = validate_repository(repo_of(schemas_dir, bad))
    assert str(p).startswith("feature view 'user_events' feature 'amount_sum_7d': field 'amout' is not in schema 'events' (fields: event_id, user_id")
    assert "fix the field name or add it to events.schema.json" in str(p)


def test_all_problems_at_once_and_error_lists_each(schemas_dir: Path) -> None:
    view = feature_view(
        version=0,
        freshness_sla=timedelta(0),
        features=[
            Aggregation("BadName", Agg.COUNT, None, Window.hours(1)),
            Aggregation("x_sum", Agg.SUM, "price", Window.hours(1)),
            Aggregation("y_max", Agg.MAX, "nope", Window.hours(1)),
        ],
    )
    problems = validate_repository(repo_of(schemas_dir, view, FeatureService("svc", ["user_events:zzz"])))
    assert {"view.version", "view.freshness_sla", "name.identifier", "agg.summable", "agg.field", "service.ref"} <= set(codes(problems))
    err = DefinitionError(problems)
    assert err.problems == tuple(problems)
    for p in problems:
        assert str(p) in str(err)
    assert str(err).startswith(f"{len(problems)} problems in the feature definitions:")


DAY = timedelta(days=1)

# (id, definitions to add (replacing the base views of the same name), expected code, text in the message)
CASES: list[tuple[str, Callable[[], list[Any]], str, str]] = [
    # names
    ("view name", lambda: [feature_view(name="UserEvents")], "name.identifier", "'UserEvents' is not a lower snake case"),
    ("entity name", lambda: [feature_view(entity=Entity("User", {"user_id": "string"}))], "name.identifier", "entity 'User'"),
    ("feature name", lambda: [with_feature(Aggregation("count-1h", Agg.COUNT, None, Window.hours(1)))], "name.identifier", "'count-1h'"),
    ("keyword name", lambda: [with_feature(Aggregation("class", Agg.COUNT, None, Window.hours(1)))], "name.identifier", "'class'"),
    ("service name", lambda: [FeatureService("Churn", ["user_events"])], "name.identifier", "'Churn'"),
    ("source name", lambda: [feature_view(source=replace(EVENTS, name="Events"))], "name.identifier", "'Events'"),
    ("snapshot field name", lambda: [snapshot_view(fields=[Field("Score", "int64")])], "name.identifier", "'Score'"),
    ("unique views", lambda: [feature_view(), snapshot_view(name="user_events")], "name.unique", "two different definitions are named 'user_events'"),
    ("three versions of a view", lambda: [feature_view(), feature_view(version=2), feature_view(version=3)], "name.unique",
     "3 definitions are named 'user_events' (versions 1, 2, 3)"),
    ("upgrade changes the kind", lambda: [feature_view(), snapshot_view(name="user_events", version=2)], "view.upgrade",
     "differ in kind or entity join keys"),
    ("unique entities", lambda: [snapshot_view(entity=Entity("user", {"user_id": "string"}, description="other"))], "name.unique", "entity 'user'"),
    ("unique sources", lambda: [snapshot_view(source=replace(PROFILES, name="events"))], "name.unique", "source 'events'"),
    ("unique services", lambda: [SERVICE, FeatureService("churn_model", ["user_profile"])], "name.unique", "feature service 'churn_model'"),
    ("unique features", lambda: [with_feature(Aggregation("event_count_1h", Agg.COUNT, None, Window.hours(2)))], "feature.unique", "event_count_1h"),
    ("unique snapshot fields", lambda: [snapshot_view(fields=[Field("score", "int64"), Field("score", "int64")])], "feature.unique", "'score'"),
    # entities and keys
    ("no join keys", lambda: [feature_view(entity=Entity("user", {}))], "entity.keys", "join_keys is empty"),
    ("key type", lambda: [feature_view(entity=Entity("user", {"user_id": "uuid"}))], "entity.key_type", "'uuid'"),
    ("duplicate key", lambda: [feature_view(entity=Entity("user", (("user_id", "string"), ("user_id", "string"))))], "entity.key_unique", "user_id"),
    ("key missing in source", lambda: [feature_view(entity=Entity("user", {"customer_id": "string"}))], "view.join_key", "'customer_id' is not in schema 'events'"),
    ("key type mismatch", lambda: [feature_view(entity=Entity("user", {"account_id": "string"}))], "view.join_key_type", "string in the entity but int64"),
    ("entity not Entity", lambda: [feature_view(entity="user")], "view.entity", "is not an Entity"),
    # event sources
    ("missing schema", lambda: [feature_view(source=replace(EVENTS, schema="nope"))], "source.schema", "schema 'nope' cannot be used"),
    ("broken schema", lambda: [feature_view(source=replace(EVENTS, schema="broken"))], "source.schema", "not valid JSON"),
    ("event_time missing", lambda: [feature_view(source=replace(EVENTS, event_time="ts"))], "source.field", "event_time 'ts' is not in schema"),
    ("event_time type", lambda: [feature_view(source=replace(EVENTS, event_time="amount"))], "source.field_type", "event_time 'amount' has type int64"),
    ("event_id missing", lambda: [feature_view(source=replace(EVENTS, event_id="id"))], "source.field", "event_id 'id'"),
    ("partition_key missing", lambda: [feature_view(source=replace(EVENTS, partition_key="uid"))], "source.field", "partition_key 'uid'"),
    ("negative lateness", lambda: [feature_view(source=replace(EVENTS, allowed_lateness=timedelta(minutes=-1)))], "source.lateness", "allowed_lateness must be a timedelta >= 0, got -1m"),
    ("negative skew", lambda: [feature_view(source=replace(EVENTS, clock_skew_tolerance=timedelta(seconds=-5)))], "source.clock_skew", "clock_skew_tolerance"),
    ("sub-ms duration", lambda: [feature_view(source=replace(EVENTS, allowed_lateness=timedelta(microseconds=1500)))], "duration.ms", "whole number of milliseconds"),
    ("topic chars", lambda: [feature_view(source=replace(EVENTS, topic="orders topic"))], "source.topic", "'orders topic' is not a valid Kafka topic"),
    ("topic dots", lambda: [feature_view(source=replace(EVENTS, topic=".."))], "source.topic", "'..'"),
    ("topic length", lambda: [feature_view(source=replace(EVENTS, topic="t" * 250))], "source.topic", "1-249 chars"),
    ("table name", lambda: [feature_view(source=replace(EVENTS, table="events"))], "source.table", "'events' is not 'namespace.table'"),
    ("table source table", lambda: [snapshot_view(source=replace(PROFILES, table="a.b.c"))], "source.table", "'a.b.c'"),
    ("table timestamp", lambda: [snapshot_view(source=replace(PROFILES, timestamp="label"))], "source.field_type", "timestamp 'label' has type string"),
    ("table created_at", lambda: [snapshot_view(source=replace(PROFILES, created_at="made_at"))], "source.field", "created_at 'made_at'"),
    # windows
    ("window too wide", lambda: [with_feature(Aggregation("c_huge", Agg.COUNT, None, Window.days(999999999)))], "duration.max", "window width 999999999d is longer than the longest duration skewless accepts, 36500d"),
    ("lateness too long", lambda: [feature_view(source=replace(EVENTS, allowed_lateness=timedelta(days=40_000)))], "duration.max", "allowed_lateness 40000d"),
    ("ttl too long", lambda: [snapshot_view(ttl=timedelta(days=36_501))], "duration.max", "ttl 36501d"),
    ("window type", lambda: [with_feature(Aggregation("c_1h", Agg.COUNT, None, timedelta(hours=1)))], "window.type", "is not a Window"),
    ("width positive", lambda: [with_feature(Aggregation("c_0", Agg.COUNT, None, Window(timedelta(0))))], "window.width", "window width must be a timedelta > 0, got 0s"),
    ("tile positive", lambda: [with_feature(Aggregation("c_1h", Agg.COUNT, None, Window.hours(1).with_tile(timedelta(minutes=-5))))], "window.tile", "window tile must be a timedelta > 0"),
    ("W multiple of H", lambda: [with_feature(Aggregation("c_1h", Agg.COUNT, None, Window.minutes(50).with_tile(timedelta(minutes=15))))], "window.multiple", "window width 50m is not a multiple of its tile 15m"),
    ("tile divides day", lambda: [with_feature(Aggregation("c_7h", Agg.COUNT, None, Window.hours(14).with_tile(timedelta(hours=7))))], "window.tile_alignment", "tile 7h neither divides a day"),
    ("tile multiple of day ok but batch needs 1d", lambda: [with_feature(Aggregation("c_14d", Agg.COUNT, None, Window.days(14).with_tile(timedelta(days=7))))], "window.batch_tile", "its tile is 7d"),
    ("batch-served sub-day tile", lambda: [with_feature(Aggregation("c_7d", Agg.COUNT, None, Window.days(7).with_tile(timedelta(hours=1))))], "window.batch_tile", "window 7d is wider than 1 day"),
    ("lifetime has no width, daily tiles", lambda: [with_feature(Aggregation("c_all", Agg.COUNT, None, Window(None, timedelta(hours=1))))], "window.lifetime_tile", "a lifetime window has no width"),
    ("stream window needs topic", lambda: [feature_view(source=replace(EVENTS, topic=None))], "window.needs_stream", "has no topic"),
    # aggregations
    ("agg valid", lambda: [with_feature(Aggregation("x_median_1h", "median", "amount", Window.hours(1)))], "agg.valid", "'median' is not valid"),
    ("count of a field ok, sum needs field", lambda: [with_feature(Aggregation("x_sum_1h", Agg.SUM, None, Window.hours(1)))], "agg.needs_field", "Agg.SUM needs a field"),
    ("count field missing", lambda: [with_feature(Aggregation("x_count_1h", Agg.COUNT, "nope", Window.hours(1)))], "agg.field", "'nope' is not in schema"),
    ("last field missing", lambda: [with_feature(Aggregation("x_last", Agg.LAST, "nope", Window.lifetime()))], "agg.field", "'nope'"),
    ("float sum refused", lambda: [with_feature(Aggregation("price_sum_1h", Agg.SUM, "price", Window.hours(1)))], "agg.summable", "use integer minor units or decimal"),
    ("float avg refused", lambda: [with_feature(Aggregation("price_avg_1h", Agg.AVG, "price", Window.hours(1)))], "agg.summable", "float sums differ"),
    ("string sum refused", lambda: [with_feature(Aggregation("s_sum_1h", Agg.SUM, "status", Window.hours(1)))], "agg.summable", "is not a number"),
    ("string max refused", lambda: [with_feature(Aggregation("s_max_1h", Agg.MAX, "status", Window.hours(1)))], "agg.comparable", "Agg.MAX over string"),
    ("bool min refused", lambda: [with_feature(Aggregation("f_min_1h", Agg.MIN, "flag", Window.hours(1)))], "agg.comparable", "Agg.MIN over bool"),
    # where
    ("where type", lambda: [with_feature(Aggregation("c_1h", Agg.COUNT, None, Window.hours(1), where=[("status", "==", "placed")]))], "where.type", "is not a Where"),
    ("where op", lambda: [with_feature(Aggregation("c_1h", Agg.COUNT, None, Window.hours(1), where=Where("status", "=~", "p")))], "where.op", "'=~'"),
    ("where field", lambda: [with_feature(Aggregation("c_1h", Agg.COUNT, None, Window.hours(1), where=Where("stat", "==", "placed")))], "where.field", "where field 'stat' is not in schema"),
    ("where value type", lambda: [with_feature(Aggregation("c_1h", Agg.COUNT, None, Window.hours(1), where=Where("amount", ">", "100")))], "where.value_type", "'100' does not match the int64 field 'amount'"),
    ("where bool is not int", lambda: [with_feature(Aggregation("c_1h", Agg.COUNT, None, Window.hours(1), where=Where("amount", "==", True)))], "where.value_type", "True"),
    ("where timestamp value", lambda: [with_feature(Aggregation("c_1h", Agg.COUNT, None, Window.hours(1), where=Where("shipped_at", ">", 5)))], "where.value_type", "timestamp field"),
    ("where single value", lambda: [with_feature(Aggregation("c_1h", Agg.COUNT, None, Window.hours(1), where=Where("status", "==", ("placed",))))], "where.value_type", "needs one str value"),
    ("where None", lambda: [with_feature(Aggregation("c_1h", Agg.COUNT, None, Window.hours(1), where=Where("note", "==", None)))], "where.value_type", "nulls never pass"),
    ("in empty", lambda: [with_feature(Aggregation("c_1h", Agg.COUNT, None, Window.hours(1), where=Where("status", "in", ())))], "where.in", "non-empty tuple"),
    ("in not tuple", lambda: [with_feature(Aggregation("c_1h", Agg.COUNT, None, Window.hours(1), where=Where("status", "in", "placed")))], "where.in", "got 'placed'"),
    ("in element type", lambda: [with_feature(Aggregation("c_1h", Agg.COUNT, None, Window.hours(1), where=Where("amount", "in", [1, "2"])))], "where.value_type", "'2'"),
    ("where enum", lambda: [with_feature(Aggregation("c_1h", Agg.COUNT, None, Window.hours(1), where=Where("status", "==", "complete")))], "where.enum", "'complete' is not an allowed value of 'status' (placed, completed)"),
    ("where string ordering", lambda: [with_feature(Aggregation("c_1h", Agg.COUNT, None, Window.hours(1), where=Where("note", "<", "m")))], "where.ordering", "use ==, != or in"),
    # derived
    ("derived ref", lambda: [with_feature(Derived("ratio", Ref("amount_sum_365d") / Ref("nope")))], "derived.ref", "Ref('nope') names no feature"),
    ("derived non numeric", lambda: [with_feature(Derived("bad", Ref("last_status") + 1))], "derived.numeric", "Ref('last_status') is a string feature"),
    ("derived timestamp arithmetic", lambda: [with_feature(Derived("bad", Ref("last_event_ts") - 1))], "derived.numeric", "timestamp feature"),
    ("derived const", lambda: [with_feature(Derived("bad", BinOp("+", Ref("event_count_1h"), Const("1"))))], "derived.const", "Const('1')"),
    ("derived op", lambda: [with_feature(Derived("bad", BinOp("%", Ref("event_count_1h"), Const(2))))], "derived.op", "'%'"),
    ("derived expr", lambda: [with_feature(Derived("bad", "event_count_1h * 2"))], "derived.expr", "is not a Ref, Const, BinOp or DaysSince"),
    ("days since needs ref", lambda: [with_feature(Derived("bad", DaysSince("last_event_ts")))], "derived.days_since", "needs a Ref"),
    ("days since timestamp", lambda: [with_feature(Derived("bad", DaysSince(Ref("event_count_1h"))))], "derived.days_since", "needs a timestamp-valued feature"),
    ("days since missing", lambda: [with_feature(Derived("bad", DaysSince(Ref("nope"))))], "derived.ref", "DaysSince(Ref('nope'))"),
    ("derived self cycle", lambda: [with_feature(Derived("loop", Ref("loop") + 1))], "derived.cycle", "loop -> loop"),
    ("derived cycle", lambda: [feature_view(features=valid_features() + [Derived("a", Ref("b") + 1), Derived("b", Ref("a") * 2)])], "derived.cycle", "a -> b -> a"),
    ("feature type", lambda: [with_feature(Field("x", "int64"))], "feature.type", "is not an Aggregation or Derived"),
    ("no features", lambda: [feature_view(features=[])], "view.features", "features is empty"),
    ("feature view source type", lambda: [feature_view(source=PROFILES)], "view.source", "is not an EventSource"),
    # views
    ("version >= 1", lambda: [feature_view(version=0)], "view.version", "version 0 is not an integer >= 1"),
    ("version int", lambda: [snapshot_view(version="2")], "view.version", "'2'"),
    ("freshness sla", lambda: [feature_view(freshness_sla=timedelta(0))], "view.freshness_sla", "freshness_sla must be a timedelta > 0"),
    ("snapshot sla", lambda: [snapshot_view(freshness_sla=None)], "view.freshness_sla", "got None"),
    # snapshot views
    ("ttl > 0", lambda: [snapshot_view(ttl=timedelta(0))], "snapshot.ttl", "ttl must be a timedelta > 0"),
    ("snapshot field missing", lambda: [snapshot_view(fields=[Field("credit", "int64")])], "snapshot.field", "'credit' is not in schema 'profile'"),
    ("snapshot dtype", lambda: [snapshot_view(fields=[Field("score", "integer")])], "snapshot.dtype", "'integer' is not valid"),
    ("snapshot dtype mismatch", lambda: [snapshot_view(fields=[Field("score", "string")])], "snapshot.field_type", "declare Field('score', 'int64')"),
    ("snapshot field type", lambda: [snapshot_view(fields=["score"])], "feature.type", "is not a Field"),
    ("snapshot no fields", lambda: [snapshot_view(fields=[])], "view.features", "fields is empty"),
    ("snapshot source type", lambda: [snapshot_view(source=EVENTS)], "view.source", "is not a TableSource"),
    # expectations
    ("expectation feature", lambda: [feature_view(expectations=[Expectation.not_null("nope")])], "expectation.feature", "feature 'nope' is not in this view"),
    ("expectation type", lambda: [feature_view(expectations=["not_null"])], "expectation.type", "is not an Expectation"),
    ("range min > max", lambda: [feature_view(expectations=[Expectation.range("event_count_1h", 10, 1)])], "expectation.range", "min=10 is greater than max=1"),
    ("range empty", lambda: [feature_view(expectations=[Expectation.range("event_count_1h")])], "expectation.range", "neither min nor max"),
    ("range non numeric", lambda: [feature_view(expectations=[Expectation.range("event_count_1h", "a")])], "expectation.range", "not numbers"),
    ("range on string", lambda: [feature_view(expectations=[Expectation.range("last_status", 0, 1)])], "expectation.range", "range on string feature"),
    ("allowed values empty", lambda: [feature_view(expectations=[Expectation.allowed_values("last_status", [])])], "expectation.allowed_values", "is empty"),
    ("rate > 1", lambda: [feature_view(expectations=[Expectation.max_null_rate("event_count_1h", 1.5)])], "expectation.rate", "1.5 is not between 0 and 1"),
    ("rate < 0", lambda: [snapshot_view(expectations=[Expectation.max_null_rate("score", -0.1)])], "expectation.rate", "-0.1"),
    ("check valid", lambda: [feature_view(expectations=[Expectation("event_count_1h", "unique")])], "expectation.check", "'unique' is not valid"),
    # services
    ("service unknown view", lambda: [FeatureService("svc_model", ["user_evnts:event_count_1h"])], "service.ref", "did you mean 'user_events'"),
    ("service unknown feature", lambda: [FeatureService("svc_model", ["user_events:event_count"])], "service.ref", "has no feature 'event_count'"),
    ("service no features", lambda: [FeatureService("svc_model", [])], "service.features", "features is empty"),
    ("service duplicate", lambda: [FeatureService("svc_model", ["user_profile", "user_profile"])], "service.duplicate", "listed twice"),
    ("service nesting", lambda: [SERVICE, FeatureService("svc_model", ["churn_model"])], "service.ref", "services cannot nest"),
    ("service name clash", lambda: [FeatureService("user_profile", ["user_events"])], "service.name_clash", "also a view name"),
]


@pytest.mark.parametrize("case_id,make,code,text", CASES, ids=[c[0] for c in CASES])
def test_rule(schemas_dir: Path, case_id: str, make: Callable[[], list[Any]], code: str, text: str) -> None:
    problems = validate_repository(repo_of(schemas_dir, *make()))
    matching = [p for p in problems if p.code == code]
    assert matching, f"expected a {code} problem, got: {[str(p) for p in problems]}"
    assert any(text in str(p) for p in matching), [str(p) for p in matching]
    for p in problems:
        assert p.kind and p.name and p.message and p.fix


VALID_VARIANTS: list[tuple[str, Callable[[], list[Any]]]] = [
    ("count of a field", lambda: [with_feature(Aggregation("note_count_1h", Agg.COUNT, "note", Window.hours(1)))]),
    ("decimal sum", lambda: [with_feature(Aggregation("tax_sum_30d", Agg.SUM, "tax", Window.days(30)))]),
    ("timestamp min", lambda: [with_feature(Aggregation("first_event_ts", Agg.MIN, "event_time", Window.lifetime()))]),
    ("last of float", lambda: [with_feature(Aggregation("last_price", Agg.LAST, "price", Window.lifetime()))]),
    ("in with list", lambda: [with_feature(Aggregation("c_1h", Agg.COUNT, None, Window.hours(1), where=Where("status", "in", ["placed", "completed"])))]),
    ("decimal and timestamp where", lambda: [with_feature(Aggregation("c_1h", Agg.COUNT, None, Window.hours(1), where=[
        Where("tax", ">=", Decimal("1.5")), Where("shipped_at", "<", datetime(2024, 1, 1, tzinfo=timezone.utc))]))]),
    ("float compare with int", lambda: [with_feature(Aggregation("c_1h", Agg.COUNT, None, Window.hours(1), where=Where("price", ">", 3)))]),
    ("a 100-year window", lambda: [with_feature(Aggregation("c_100y", Agg.COUNT, None, Window.days(36_500)))]),
    ("default daily tile on 2d", lambda: [with_feature(Aggregation("c_2d", Agg.COUNT, None, Window.days(2)))]),
    ("explicit daily tile on 7d", lambda: [with_feature(Aggregation("c_7d", Agg.COUNT, None, Window.days(7).with_tile(DAY)))]),
    ("sub-day tiles", lambda: [with_feature(Aggregation("c_30m", Agg.COUNT, None, Window.minutes(30).with_tile(timedelta(minutes=1))))]),
    ("batch-only source with long windows", lambda: [feature_view(source=replace(EVENTS, topic=None), features=valid_features()[1:4]),
                                                     FeatureService("svc_model", ["user_events"])]),
    ("int64 key", lambda: [feature_view(entity=Entity("account", {"account_id": "int64"}))]),
    ("derived chain", lambda: [with_feature(Derived("amount_avg_365d_x2", Ref("amount_avg_365d") * 2))]),
    ("expectations", lambda: [feature_view(expectations=[Expectation.range("last_event_ts", min=datetime(2020, 1, 1)),
                                                        Expectation(feature="event_count_1h", check=Check.NOT_NULL),
                                                        Expectation.max_null_rate("event_count_1h", 0)])]),
    ("snapshot without created_at", lambda: [snapshot_view(source=replace(PROFILES, created_at=None))]),
    ("same entity object reused", lambda: [snapshot_view(entity=Entity("user", {"user_id": "string"}))]),
]


@pytest.mark.parametrize("case_id,make", VALID_VARIANTS, ids=[c[0] for c in VALID_VARIANTS])
def test_valid_variant(schemas_dir: Path, case_id: str, make: Callable[[], list[Any]]) -> None:
    assert [str(p) for p in validate_repository(repo_of(schemas_dir, *make()))] == []


def test_snapshot_without_created_at_gets_a_note(schemas_dir: Path) -> None:
    repo = repo_of(schemas_dir, snapshot_view(source=replace(PROFILES, created_at=None)))
    (note,) = list(iter_notes(repo))
    assert "duplicate" in note or "data error" in note
    assert list(iter_notes(repo_of(schemas_dir))) == []


def test_two_versions_of_a_view_are_an_upgrade_not_a_clash(schemas_dir: Path) -> None:
    assert validate_repository(repo_of(schemas_dir, feature_view(), feature_view(version=2))) == []


def test_every_rule_code_has_a_case() -> None:
    import re

    import skewless.core.validation as v

    source = Path(v.__file__).read_text()
    declared = set(re.findall(r'"([a-z_]+\.[a-z_]+)"', source)) - {"namespace.table", "raw.orders"}
    covered = {c[2] for c in CASES}
    assert declared - covered == set()


def test_format_duration() -> None:
    assert [format_duration(x) for x in (None, 0, 300_000, 3_900_000, 86_400_000 * 365, 1500, -60_000)] == [
        "lifetime", "0s", "5m", "1h5m", "365d", "1s500ms", "-1m"]
