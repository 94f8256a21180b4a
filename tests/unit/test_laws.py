"""Laws of the aggregate intermediates: identity, associativity, commutativity, split-invariance, codec."""

from __future__ import annotations

import json
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skewless.core import laws
from skewless.core.dsl import Agg, Aggregation, Where, Window
from skewless.core.laws import LAWS, SumOverflowError, law, merge_all

INT64 = st.integers(min_value=-(2**40), max_value=2**40)
FLOATS = st.floats(allow_nan=False, allow_infinity=False, width=64)
DECIMALS = st.decimals(min_value=-(10**12), max_value=10**12, places=2, allow_nan=False, allow_infinity=False)


def value_strategy(agg: Agg) -> st.SearchStrategy:
    if agg in (Agg.SUM, Agg.AVG):
        return st.one_of(st.none(), INT64) | st.one_of(st.none(), DECIMALS)
    if agg in (Agg.MIN, Agg.MAX):
        return st.one_of(st.none(), INT64, FLOATS, DECIMALS)
    return st.one_of(st.none(), INT64, st.text(max_size=3), FLOATS)


@st.composite
def events_for(draw: st.DrawFn, agg: Agg) -> list[tuple]:
    """(value, order_key) pairs with distinct order keys; one value type per list (as a field has)."""
    kind = draw(value_strategy(agg).filter(lambda v: v is not None))
    typ = type(kind)
    values = draw(st.lists(st.one_of(st.none(), value_strategy(agg).filter(lambda v: isinstance(v, typ))),
                           max_size=25))
    keys = draw(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 3), st.integers(0, 10**6)),
                         min_size=len(values), max_size=len(values), unique=True))
    return list(zip(values, keys))


def canon(agg: Agg, acc) -> str:
    return json.dumps(LAWS[agg].encode(acc), sort_keys=True)


AGGS = list(Agg)


@pytest.mark.parametrize("agg", AGGS)
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_split_into_any_tiles_equals_direct(agg: Agg, data: st.DataObject) -> None:
    events = data.draw(events_for(agg))
    lw = LAWS[agg]
    direct = lw.aggregate(events)
    groups = data.draw(st.lists(st.integers(0, 4), min_size=len(events), max_size=len(events)))
    tiles = [lw.aggregate([e for e, g in zip(events, groups) if g == i]) for i in range(5)]
    order = data.draw(st.permutations(range(5)))
    merged = lw.merge_all([tiles[i] for i in order])
    assert canon(agg, merged) == canon(agg, direct)
    assert lw.finalize(merged) == lw.finalize(direct) or (lw.finalize(merged) is None and lw.finalize(direct) is None)


@pytest.mark.parametrize("agg", AGGS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_merge_associative_commutative_identity(agg: Agg, data: st.DataObject) -> None:
    events = data.draw(events_for(agg))
    lw = LAWS[agg]
    thirds = [events[0::3], events[1::3], events[2::3]]
    a, b, c = (lw.aggregate(part) for part in thirds)
    assert canon(agg, lw.merge(a, b)) == canon(agg, lw.merge(b, a))
    assert canon(agg, lw.merge(lw.merge(a, b), c)) == canon(agg, lw.merge(a, lw.merge(b, c)))
    assert canon(agg, lw.merge(lw.init(), a)) == canon(agg, a)
    assert canon(agg, lw.merge(a, lw.init())) == canon(agg, a)


@pytest.mark.parametrize("agg", AGGS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_encode_decode_round_trip_through_json(agg: Agg, data: st.DataObject) -> None:
    lw = LAWS[agg]
    acc = lw.aggregate(data.draw(events_for(agg)))
    text = laws.dumps(lw.encode(acc))
    back = lw.decode(laws.loads(text))
    assert canon(agg, back) == canon(agg, acc)
    assert type(lw.finalize(back)) is type(lw.finalize(acc))
    assert laws.dumps(lw.encode(back)) == text


def test_encodings_are_plain_json_ints_and_strings() -> None:
    assert LAWS[Agg.SUM].encode(LAWS[Agg.SUM].aggregate([(5, None), (7, None)])) == 12
    assert LAWS[Agg.SUM].encode(LAWS[Agg.SUM].aggregate([(Decimal("1.10"), None), (Decimal("2.05"), None)])) == "3.15"
    assert LAWS[Agg.AVG].encode(LAWS[Agg.AVG].aggregate([(5, None), (None, None), (6, None)])) == [11, 2]
    assert LAWS[Agg.LAST].encode(LAWS[Agg.LAST].aggregate([("a", (1, 0, 5)), ("b", (1, 0, 4))])) == [1, 0, 5, "a"]
    assert LAWS[Agg.MAX].encode(Decimal("2.50")) == {"$decimal": "2.50"}
    assert LAWS[Agg.COUNT].encode(LAWS[Agg.COUNT].init()) == 0


def test_empty_window_values() -> None:
    assert {agg: LAWS[agg].finalize(LAWS[agg].init()) for agg in Agg} == {
        Agg.COUNT: 0, Agg.SUM: 0, Agg.AVG: None, Agg.MIN: None, Agg.MAX: None, Agg.LAST: None,
    }


def test_avg_is_float_of_exact_sum_over_count() -> None:
    big = 2**53 + 1  # not representable as float64: summing floats would lose it
    acc = LAWS[Agg.AVG].aggregate([(big, None), (1, None), (None, None)])
    assert acc == (big + 1, 2)
    assert LAWS[Agg.AVG].finalize(acc) == float(big + 1) / 2


def test_sum_refuses_floats_and_bools() -> None:
    with pytest.raises(TypeError, match="minor units"):
        LAWS[Agg.SUM].update(0, 1.5, None)
    with pytest.raises(TypeError):
        LAWS[Agg.AVG].update((0, 0), True, None)


def test_int_sums_never_overflow_and_a_window_outside_int64_is_no_value() -> None:
    """docs/semantics.md §4 (issue 19 item 7): partial sums are exact at any size; only the window's value must
    fit int64, else it is no value (in_range False; the readers answer null, incomplete)."""
    big = 2**63 - 1
    total = LAWS[Agg.SUM].aggregate([(big, None), (big, None)])
    assert total == 2 * big and not LAWS[Agg.SUM].in_range(total)
    with pytest.raises(SumOverflowError):
        LAWS[Agg.SUM].finalize(total)
    assert LAWS[Agg.SUM].merge(total, -big) == big and LAWS[Agg.SUM].in_range(big)
    assert LAWS[Agg.SUM].aggregate([(2**63 - 1, None), (-1, None), (1, None)]) == 2**63 - 1
    assert LAWS[Agg.SUM].decode(json.loads(laws.dumps(LAWS[Agg.SUM].encode(total)))) == total
    # beyond int64 as text: JSON readers such as orjson turn integers from 2**64 on (or below -2**63) into floats
    assert LAWS[Agg.SUM].encode(total) == {"$int": str(total)} and LAWS[Agg.SUM].encode(big) == big
    assert LAWS[Agg.SUM].decode(orjson.loads(laws.dumps(LAWS[Agg.SUM].encode(-total)))) == -total
    avg = LAWS[Agg.AVG].aggregate([(big, None), (big, None)])
    assert avg == (2 * big, 2) and not LAWS[Agg.AVG].in_range(avg)
    assert LAWS[Agg.AVG].decode(json.loads(laws.dumps(LAWS[Agg.AVG].encode(avg)))) == avg
    with pytest.raises(SumOverflowError):
        LAWS[Agg.AVG].finalize(avg)
    assert LAWS[Agg.AVG].in_range(LAWS[Agg.AVG].merge(avg, (-big, 0)))
    assert all(LAWS[a].in_range(LAWS[a].init()) for a in Agg)
    with pytest.raises(SumOverflowError):  # counts stay int64
        LAWS[Agg.COUNT].merge(2**63 - 1, 1)


def test_decimal_sum_is_exact_or_an_error() -> None:
    assert LAWS[Agg.SUM].aggregate([(Decimal("0.1"), None)] * 10) == Decimal("1.0")
    with pytest.raises(SumOverflowError):
        LAWS[Agg.SUM].merge(Decimal("9" * 38), Decimal("1"))


def test_min_max_negative_zero_ordering() -> None:
    assert str(merge_all(Agg.MIN, [0.0, -0.0])) == "-0.0"
    assert str(merge_all(Agg.MIN, [-0.0, 0.0])) == "-0.0"
    assert str(merge_all(Agg.MAX, [-0.0, 0.0])) == "0.0"


def test_min_max_reject_nan_and_strings() -> None:
    with pytest.raises(ValueError):
        LAWS[Agg.MIN].update(None, float("nan"), None)
    with pytest.raises(TypeError):
        LAWS[Agg.MAX].update(None, "abc", None)


def test_last_tie_on_equal_ts_later_offset_wins_and_skips_nulls() -> None:
    acc = LAWS[Agg.LAST].aggregate([("x", (100, 0, 7)), ("y", (100, 0, 8)), (None, (100, 0, 9)), ("z", (99, 0, 10))])
    assert LAWS[Agg.LAST].finalize(acc) == "y"
    with pytest.raises(ValueError):
        LAWS[Agg.LAST].update(None, "v", None)


def test_law_lookup_and_unknown() -> None:
    assert law("sum") is LAWS[Agg.SUM]
    with pytest.raises(ValueError, match="unknown aggregation"):
        law("median")


def test_contribution_filters_and_count_star() -> None:
    agg = Aggregation("n", Agg.COUNT, None, Window.hours(1), where=Where("status", "==", "ok"))
    assert laws.contribution(agg, {"status": "ok"}) == 1
    assert laws.contribution(agg, {"status": None}) is None
    assert laws.contribution(agg, {}) is None
    s = Aggregation("s", Agg.SUM, "amount", Window.hours(1), where=[Where("amount", ">", 10), Where("c", "in", ["a"])])
    assert laws.contribution(s, {"amount": 11, "c": "a"}) == 11
    assert laws.contribution(s, {"amount": 10, "c": "a"}) is None
    assert laws.contribution(s, {"amount": 11, "c": "b"}) is None
    assert laws.contribution(s, {"amount": "11", "c": "a"}) is None  # incompatible types never pass
    flag = Aggregation("f", Agg.COUNT, None, Window.hours(1), where=Where("flag", "==", 1))
    assert laws.contribution(flag, {"flag": True}) is None  # a bool is not the number 1
