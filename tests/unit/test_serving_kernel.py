"""The C read kernel (skewless/serving/read_kernel.c) returns exactly what the compiled Python evaluation
(skewless/serving/compiled.py) returns for every entity hash, clean, odd or corrupt: it serves what it can prove and
passes everything else to the compiled Python function, whose result (or error) is then the read's. Randomized
(hypothesis): real entity hashes of the example repository edited at random (JSON values replaced by random JSON,
numbers rewritten as floats / with leading zeros / out of int64, strings escaped, fields dropped, duplicated, renamed,
reordered, truncated, epochs and cut-offs changed) and intermediates set to random valid values (int64 edges,
LAST tuples); where the compiled result is not None it also equals the generic evaluation's."""

from __future__ import annotations

import json
import logging
import random
import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skewless.core import layout
from skewless.core.timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE, floor_ms
from skewless.serving import OnlineStore, compiled
from skewless.serving.compiled import compile_view
from skewless.serving.evaluate import aggregate, as_dict, dynamic, prepare, view_meta, window_starts
from tests.unit.test_serving_online import CUTOFF, EPOCH, P, START, MemRedis, filled, repo  # noqa: F401 - fixtures

I64 = 2**63


def _kernel_module() -> Any:
    if compiled.read_kernel is None:
        pytest.fail("the C read kernel is not built: run `pip install -e .` or `python setup.py build_ext --inplace`")
    return compiled.read_kernel


def _instants() -> list[int]:
    return [START + m * MS_PER_MINUTE + 3 for m in (5, 97, 13 * 60 + 1, 24 * 60 + 33, 40 * 60, 75 * 60)] + [
        CUTOFF + 3 * MS_PER_DAY + 5 * MS_PER_HOUR, CUTOFF + 9 * MS_PER_DAY]


class Reads:
    """For each feature view of the example services and each instant: the kernel's entity function, the compiled
    Python one, and what the generic evaluation needs."""

    def __init__(self, repo: Any, filled: Any) -> None:
        self.store = OnlineStore(repo, MemRedis(filled.data), P)
        self.contexts = []
        self.hashes: list[list[bytes]] = []
        for service in ("churn_model", "upsell_model", "credit_model"):
            for vp in self.store.plan(service).views:
                if vp.snapshot:
                    continue
                with_kernel = compile_view(vp, orjson.loads)
                with pytest.MonkeyPatch.context() as m:
                    m.setattr(compiled, "read_kernel", None)
                    m.setattr(compiled, "_kernel_missing_logged", True)
                    python = compile_view(vp, orjson.loads)
                assert with_kernel is not None and python is not None
                meta = view_meta({k.encode(): v.encode() for k, v in filled.data[layout.view_meta_key(P, vp.view)].items()})
                for now in _instants():
                    starts, _ = window_starts(vp, now, now, None, EPOCH.encode(), meta)
                    floors = [floor_ms(now, g.tile_ms) for g in vp.groups]
                    args = (now, floors, EPOCH.encode(), meta[0], meta[2], starts)
                    for keep in (True, False):
                        self.contexts.append((vp, now, meta, starts, with_kernel(*args, keep), python(*args, keep)))
                for user in filled.users:
                    h = filled.data.get(layout.entity_key(P, vp.view, (user,)))
                    if h:
                        self.hashes.append([x.encode() for kv in h.items() for x in kv])

    def check(self, context: tuple, flat: Any) -> Any:
        """The kernel's outcome equals the compiled Python's; a result also equals the generic evaluation's."""
        vp, now, meta, starts, kernel, python = context
        got, want = _outcome(kernel, flat), _outcome(python, flat)
        assert got == want, flat
        if got[0] == "ok" and got[1] is not None:
            prepared, at_t = got[1]
            generic = prepare(vp, aggregate(vp, [as_dict(flat)], EPOCH.encode(), meta, now, None, starts, self.store.caches))
            if prepared[4] is not None:  # kept for the memo: the whole prepared result
                assert prepared == generic
            else:
                assert prepared[:4] == generic[:4] and prepared[5] is None
            assert list(at_t) == list(dynamic(vp, generic, now))
        return got


def _outcome(fn: Any, flat: Any) -> tuple:
    try:
        return ("ok", fn(flat))
    except Exception as exc:  # noqa: BLE001 - the error's type is the outcome compared
        return ("raised", type(exc))


@pytest.fixture(scope="module")
def reads(repo: Any, filled: Any) -> Reads:
    _kernel_module()
    return Reads(repo, filled)


def test_the_kernel_serves_clean_hashes_as_the_compiled_python(reads: Reads) -> None:
    """Every clean hash the compiled Python serves, the kernel serves (passing on only what Python returns None for:
    a read before the batch record's cut-off, ...)."""
    served = 0
    for context in reads.contexts:
        kernel = context[4]
        assert type(kernel).__name__ == "BoundRead"
        for flat in reads.hashes:
            for reply in (flat, dict(zip(flat[::2], flat[1::2]))):  # a flat RESP2 reply, a dict (RESP3, another client)
                passed = kernel.passed
                outcome = reads.check(context, reply)
                if outcome[1] is not None:
                    assert kernel.passed == passed
                    served += 1
    assert served >= len(reads.contexts) * len(reads.hashes)


# --- random edits ------------------------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-I64 - 5, I64 + 5), st.sampled_from([0, -1, 1, I64 - 1, -I64, 2**64]),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6), st.sampled_from(["placed", "é", "\u2028", "a\"b", "\\"]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                                 st.dictionaries(st.text(max_size=3), inner, max_size=3)),
                           max_leaves=12)
valid_intermediates = st.one_of(
    st.integers(0, 50), st.integers(-I64, I64 - 1), st.sampled_from([I64 - 1, -I64, I64 - 2, 0]), st.none(),
    st.tuples(st.integers(-I64, I64 - 1), st.integers(0, 3), st.integers(0, 10**6),
              st.one_of(st.none(), st.booleans(), st.integers(-I64, I64 - 1), st.text(max_size=4))).map(list))
TEXT_EDITS = [  # (old, new) replacements in a value's bytes
    (b"1", b"01"), (b"0", b"-0"), (b"5", b"5.0"), (b"7", b"7e0"), (b",", b" , "), (b"[", b"[ "), (b"]", b"\n]"),
    (b"placed", b"pla\\u0063ed"), (b"placed", "plac\u00e9d".encode()), (b"placed", b"pl\xe9ced"), (b"\"", b"'"),
    (b"null", b"nul"), (b"|e1|", b"|e0|"), (b"|", b""), (b"e1", b"e1 "), (b"]", b"],"), (b"[", b"{"),
    (b"9", b"99999999999999999999"), (b":", b"::"), (b"-1", b"-01"), (b"1", b"\xef\xbb\xbf1"), (b"]", b"]]"),
]


def _set_in_json(raw: bytes, path_seed: int, value: Any, prefix: bytes = b"") -> bytes:
    """``raw`` (JSON after ``prefix``) with one randomly chosen node replaced by ``value``."""
    doc = json.loads(raw[len(prefix):])
    rng = random.Random(path_seed)
    holder, key = None, None
    node = doc
    while isinstance(node, (list, dict)) and node and rng.random() < 0.8:
        holder = node
        key = rng.randrange(len(node)) if isinstance(node, list) else rng.choice(list(node))
        node = node[key]
    if holder is None:
        doc = value
    else:
        holder[key] = value
    return prefix + json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode()


@st.composite
def edited(draw: Any, hashes: list[list[bytes]]) -> list[Any]:
    flat = list(draw(st.sampled_from(hashes)))
    for _ in range(draw(st.integers(1, 4))):
        n = len(flat) // 2
        i = 2 * draw(st.integers(0, max(0, n - 1)))
        what = draw(st.integers(0, 11))
        try:
            key, value = flat[i], flat[i + 1]
            prefix = value[:value.index(b"|", value.index(b"|") + 1) + 1] if key.startswith(b"t:") else b""
            if what in (0, 1):  # an intermediate set to a random valid one (most are served, some overflow)
                flat[i + 1] = _set_in_json(value, draw(st.integers(0, 99)), draw(valid_intermediates), prefix)
            elif what == 2:
                flat[i + 1] = _set_in_json(value, draw(st.integers(0, 99)), draw(json_values), prefix)
            elif what in (3, 4):
                old, new = draw(st.sampled_from(TEXT_EDITS))
                if old in value:
                    flat[i + 1] = value.replace(old, new, 1)
                elif old in key:
                    flat[i] = key.replace(old, new, 1)
            elif what == 5:
                del flat[i:i + 2]
            elif what == 6:
                flat += [key, draw(st.sampled_from([value, value + b" ", b"x"]))]  # a field twice
            elif what == 7:
                pairs = [flat[j:j + 2] for j in range(0, len(flat), 2)]
                draw(st.randoms(use_true_random=False)).shuffle(pairs)
                flat = [x for p in pairs for x in p]
            elif what == 8:
                flat[i + 1] = value[:draw(st.integers(0, max(0, len(value) - 1)))]
            elif what == 9:
                flat[i] = draw(st.sampled_from([b"t:300000:" + key[-5:], b"t:86400000:0" + key[-3:], b"b:cutoff", b"s",
                                                b"t:86400000", b"m", key + b"x", b"t:1:1"]))
            elif what == 10:
                if key == b"b:cutoff":
                    flat[i + 1] = draw(st.sampled_from([str(CUTOFF + MS_PER_DAY).encode(), str(CUTOFF - MS_PER_DAY).encode(),
                                                        b"0" + value, b" " + value, b"1_7", str(I64).encode()]))
                elif key == b"m":
                    flat[i + 1] = _set_in_json(value, draw(st.integers(0, 99)), draw(st.one_of(
                        st.integers(-2, 40), st.sampled_from([str(CUTOFF), CUTOFF, CUTOFF + MS_PER_DAY, -1, None, [], {}]))))
            else:
                flat.append(draw(st.sampled_from([b"x", b"t:300000:1"])))  # an odd-length reply, a field without value
        except (ValueError, IndexError):
            pass
    if draw(st.integers(0, 20)) == 0:
        flat = [x.decode("latin-1") if isinstance(x, bytes) else x for x in flat]  # str, not bytes
    return flat


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_edits_read_as_the_compiled_python_and_the_generic_evaluation(reads: Reads, data: Any) -> None:
    flat = data.draw(edited(reads.hashes))
    for context in reads.contexts[::3]:
        reads.check(context, flat)


def test_random_edits_are_served_and_passed_on(reads: Reads) -> None:
    """The random edits reach both sides: entities the kernel serves (valid intermediates) and ones it passes on."""
    served = passed = 0

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
    @given(data=st.data())
    def run(data: Any) -> None:
        nonlocal served, passed
        flat = data.draw(edited(reads.hashes))
        context = next(c for c in reads.contexts if c[0].batch_fields and CUTOFF < c[1] < CUTOFF + MS_PER_DAY)
        before = (context[4].served, context[4].passed)
        reads.check(context, flat)
        served += context[4].served - before[0]
        passed += context[4].passed - before[1]

    run()
    assert served >= 30 and passed >= 30, (served, passed)


# --- the fallback, case by case ------------------------------------------------------------------------------------

def _edit(flat: list[bytes], field: bytes, old: bytes, new: bytes) -> list[bytes]:
    out = list(flat)
    i = out.index(field)
    assert old in out[i + 1], (field, old)
    out[i + 1] = out[i + 1].replace(old, new, 1)
    return out


def _sub(flat: list[bytes], field: bytes, pattern: bytes, repl: Any) -> list[bytes]:
    out = list(flat)
    i = out.index(field)
    out[i + 1], n = re.subn(pattern, repl, out[i + 1], count=1)
    assert n == 1, (field, pattern)
    return out


def _daily(flat: list[bytes]) -> bytes:
    return [k for k in flat[::2] if k.startswith(b"t:86400000:")][-1]


PASSED_ON = {  # an entity hash the kernel must pass on (the compiled Python decides: None, an error or a value)
    "a float in a tile": lambda f: _edit(f, _daily(f), b"[", b"[1.5,"),
    "an escaped LAST string": lambda f: _sub(f, b"b:w:life", rb'"([a-z])', lambda m: b'"\\u%04x' % m.group(1)[0]),
    "a leading zero": lambda f: _edit(f, b"b:w:2592000000", b"[[", b"[[0"),
    "a count beyond int64": lambda f: _edit(f, b"b:w:2592000000", b"[[", b"[[9223372036854775808,"),
    "-0": lambda f: _edit(f, b"b:w:2592000000", b"[[", b"[[-0,"),
    "a duplicate JSON key": lambda f: _edit(f, b"m", b"{", b'{"t": {}, '),
    "the cut-off as other text": lambda f: _edit(f, b"b:cutoff", b"1", b"01"),
    "a tile of another epoch": lambda f: _edit(f, _daily(f), b"|e1|", b"|e2|"),
    "a field twice": lambda f: f + [b"m", f[f.index(b"m") + 1]],
    "an odd-length reply": lambda f: f + [b"m"],
    "a stray field": lambda f: f + [b"s", b"{}"],
    "str instead of bytes": lambda f: [x.decode() for x in f],
    "a LAST partition as text": lambda f: _sub(f, b"b:w:life", rb"\[(\d+),(\d+),", rb'[\1,"\2",'),
}


@pytest.mark.parametrize("case", sorted(PASSED_ON))
def test_what_the_kernel_cannot_prove_is_passed_to_the_compiled_python(reads: Reads, case: str) -> None:
    flat = next(f for f in reads.hashes if b"b:w:life" in f and any(k.startswith(b"t:86400000:") for k in f[::2]))
    edited_flat = PASSED_ON[case](flat)
    context = next(c for c in reads.contexts if c[0].batch_fields and CUTOFF < c[1] < CUTOFF + MS_PER_DAY)
    kernel = context[4]
    before = kernel.passed, kernel.served
    reads.check(context, flat)  # the hash as written: served
    assert (kernel.passed, kernel.served) == (before[0], before[1] + 1)
    reads.check(context, edited_flat)
    assert (kernel.passed, kernel.served) == (before[0] + 1, before[1] + 1)


def test_without_the_extension_the_python_path_serves_and_says_so_once(repo: Any, filled: Any, monkeypatch: Any,
                                                                      caplog: Any) -> None:
    monkeypatch.setattr(compiled, "read_kernel", None)
    monkeypatch.setattr(compiled, "_kernel_missing_logged", False)
    rows = [{"user_id": u} for u in filled.users]
    now = CUTOFF + 5 * MS_PER_HOUR
    with caplog.at_level(logging.WARNING, logger="skewless.serving"):
        without = OnlineStore(repo, MemRedis(filled.data), P).get_online_features(rows, ["churn_model"], now_ms=now)
        OnlineStore(repo, MemRedis(filled.data), P).get_online_features(rows, ["credit_model"], now_ms=now)
    said = [r.message for r in caplog.records if r.name == "skewless.serving"]
    assert len(said) == 1 and "read kernel" in said[0] and "not built" in said[0], said
    monkeypatch.undo()
    with_kernel = OnlineStore(repo, MemRedis(filled.data), P).get_online_features(rows, ["churn_model"], now_ms=now)
    assert with_kernel.values == without.values and with_kernel.statuses == without.statuses
