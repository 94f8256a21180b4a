"""A feature view's read evaluation compiled once per read plan for the common case (an uncached entity read).

:func:`compile_view` writes, for one :class:`~skewless.serving.read_plan.ViewReadPlan`, a Python function with the
plan's fields, tile sizes, vector positions and laws written in (no per-entity dicts of aggregations, no generic
dispatch, windows and tails unrolled) and returns a factory: called once per read with the read's context, it gives
``entity(reply) -> (prepared, outputs at T) | None`` (the reply: the entity hash as a flat list or a dict).
``prepared`` is exactly what :func:`skewless.serving.evaluate.prepare` gives for
:func:`skewless.serving.evaluate.aggregate`'s result (the memo keeps it), ``outputs at T`` exactly what
:func:`skewless.serving.evaluate.dynamic` then gives.

The compiled function serves only what it can prove equal to the generic evaluation, and returns None for anything
else, which the generic evaluation (the reference reader's rules) then decides: a read at ``as_of``, no epoch or a
view meta of another epoch, a stream not yet applied (no ``applied_from_ms``), an entity hash without its manifest or
batch record, a part its manifest says is lost, an old or newer-than-T batch record, a tile of another epoch, a tile
start twice, any field it does not expect, a value that is not a plain int (COUNT, SUM, MIN, MAX) or LAST tuple, a
negative count, a sum or count outside int64, JSON orjson refuses, any error. AVG views are not compiled.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from skewless.core import laws
from skewless.core.dsl import Agg, BinOp, DaysSince, Ref
from skewless.core.expr import evaluate
from skewless.core.routing import BATCH_TAIL_DAYS, BATCH_TILE_MS
from skewless.core.staleness import INCOMPLETE, PRESENT, STALE
from skewless.core.timeutil import MS_PER_DAY

if TYPE_CHECKING:
    from skewless.serving.read_plan import ViewReadPlan

try:
    from skewless.serving import read_kernel  # type: ignore[attr-defined]  # the C extension (setup.py)
except ImportError:  # not built: the compiled Python evaluation serves (view_kernel logs it once)
    read_kernel = None

log = logging.getLogger("skewless.serving")
_kernel_missing_logged = False
_COMPILED = (Agg.COUNT, Agg.SUM, Agg.MIN, Agg.MAX, Agg.LAST)
_PLAIN = (int, str, float, bool)

EntityEvaluator = Callable[[Any], "tuple[tuple, tuple] | None"]


def compile_view(vp: ViewReadPlan, loads: Callable[[bytes], Any]) -> Callable[..., EntityEvaluator] | None:
    """``factory(T, now_floors, epoch, applied_from, run_cutoff, starts, keep) -> entity`` for a feature view plan (None
    for a snapshot view or an aggregation kind not compiled); ``now_floors`` per group the tile floor of now,
    ``starts`` :func:`skewless.serving.evaluate.window_starts`'s per-group window starts; ``keep`` False: the prepared
    result's values and pending features are None (nothing will be memoised)."""
    if vp.snapshot or any(a.law.agg not in _COMPILED for g in vp.groups for a in g.aggs):
        return None
    source = _source(vp)
    env: dict[str, Any] = {
        "loads": loads, "evaluate": evaluate, "INC": INCOMPLETE, "PRESENT": PRESENT, "STALE": STALE,
        "I64_MIN": laws.INT64_MIN, "I64_MAX": laws.INT64_MAX, "PLAIN": _PLAIN, "DAY": MS_PER_DAY,
        "BATCH_DAY": BATCH_TILE_MS, "TAIL": BATCH_TAIL_DAYS, "EXPRS": tuple(e for _, e, _ in vp.derived),
        "INPUTS": tuple(i for _, _, i in vp.derived), "NAMES": tuple(n for n, _, _ in vp.derived),
    }
    try:
        exec(compile(source, f"<compiled read of {vp.view.name}>", "exec"), env)  # noqa: S102 - our own generated code
    except Exception as exc:  # noqa: BLE001 - a plan this code cannot write: the generic evaluation serves it, logged
        log.warning("view %s is read without its compiled evaluation (%s: %s)", vp.view.name, type(exc).__name__, exc)
        return None
    python_factory = env["factory"]
    kernel = view_kernel(vp)
    if kernel is None:
        return lambda *context: python_factory(*context)[0]
    bind = kernel.bind

    def factory(T: int, now_floors: list[int], epoch: bytes, applied_from: int, run_cutoff: int | None, starts: Any,
                keep: bool) -> EntityEvaluator:
        entity, finish = python_factory(T, now_floors, epoch, applied_from, run_cutoff, starts, keep)
        return bind(T, now_floors, epoch, applied_from, run_cutoff, starts, entity, finish) or entity
    return factory


def view_kernel(vp: ViewReadPlan) -> Any:
    """The C kernel of a feature view plan (:mod:`skewless.serving.read_kernel`): the plan's shape as a descriptor; None
    when the extension is not built (logged once) or the plan is one it cannot describe."""
    global _kernel_missing_logged
    if read_kernel is None:
        if not _kernel_missing_logged:
            _kernel_missing_logged = True
            log.warning("the C read kernel (skewless.serving.read_kernel) is not built: entities are evaluated in "
                        "Python (slower); build it with `pip install -e .` or `python setup.py build_ext --inplace`")
        return None
    batch = bool(vp.batch_fields)
    fixed = (b"m",) + (tuple(b"b:" + f for f in sorted(vp.batch_names)) if batch else ())
    used = {b"b:" + a.batch_field.encode() for g in vp.groups for a in g.aggs if a.batch_field is not None}
    kinds = {Agg.COUNT: read_kernel.COUNT, Agg.SUM: read_kernel.SUM, Agg.MIN: read_kernel.MIN, Agg.MAX: read_kernel.MAX,
             Agg.LAST: read_kernel.LAST}
    try:
        groups = tuple((g.size, g.retention_ms, tuple(
            (kinds[a.law.agg], a.index, a.stream_served, a.width_ms is None,
             -1 if a.batch_field is None else fixed.index(b"b:" + a.batch_field.encode()), a.batch_index)
            for a in g.aggs)) for g in vp.groups)
        slots = (fixed.index(b"b:cutoff"), fixed.index(b"b:epoch"), fixed.index(b"b:run")) if batch else None
        return read_kernel.ViewKernel(fixed, tuple(f in used for f in fixed), slots, groups, BATCH_TILE_MS,
                                      BATCH_TAIL_DAYS, (INCOMPLETE, PRESENT, STALE))
    except (ValueError, TypeError, KeyError, OverflowError) as exc:  # a plan beyond its limits: the Python path serves
        log.info("view %s is read without the C kernel (%s)", vp.view.name, exc)
        return None


class _Code:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)


def _ident(prefix: str, name: str) -> str:
    """A local variable for a feature: ``{prefix}_{name}``, or ``{prefix}x_{hex of its UTF-8}`` when the name is not an
    identifier (distinct names, distinct variables)."""
    return f"{prefix}_{name}" if name.isidentifier() and name.isascii() else f"{prefix}x_{name.encode().hex()}"


def _var(name: str) -> str:
    return _ident("v", name)


def _sts(name: str) -> str:
    return _ident("s", name)


def _check(agg: Agg, x: str, depth: int, code: _Code) -> None:
    """Code returning None unless ``x`` (a decoded intermediate) is one the compiled merges take."""
    if agg is Agg.COUNT:
        code(depth, f"if type({x}) is not int or {x} < 0: return None")
    elif agg is Agg.SUM:
        code(depth, f"if type({x}) is not int: return None")
    elif agg in (Agg.MIN, Agg.MAX):
        code(depth, f"if {x} is not None and type({x}) is not int: return None")
    else:  # LAST: [ts, partition, offset, plain value] or null -> a tuple (the law's decode of that form)
        code(depth, f"if {x} is not None:")
        code(depth + 1, f"if type({x}) is not list or len({x}) != 4 or type({x}[0]) is not int or "
                        f"({x}[3] is not None and type({x}[3]) not in PLAIN): return None")
        code(depth + 1, f"{x} = ({x}[0], {x}[1], {x}[2], {x}[3])")


def _merge(agg: Agg, acc: str, x: str, depth: int, code: _Code) -> None:
    """Code merging the checked intermediate ``x`` into ``acc`` (the law's merge on those forms)."""
    if agg in (Agg.COUNT, Agg.SUM):
        code(depth, f"{acc} += {x}")
    elif agg in (Agg.MIN, Agg.MAX):
        better = ">" if agg is Agg.MAX else "<"
        code(depth, f"if {x} is not None and ({acc} is None or {x} {better} {acc}): {acc} = {x}")
    else:
        code(depth, f"if {x} is not None and ({acc} is None or not {acc}[:3] >= {x}[:3]): {acc} = {x}")


def _final(agg: Agg, acc: str) -> str:
    return f"(None if {acc} is None else {acc}[3])" if agg is Agg.LAST else acc


def _in_range(agg: Agg, acc: str, depth: int, code: _Code) -> str:
    """Code for a merged value out of int64: a count leaves the compiled path (the law raises); for a sum, the returned
    condition is False (no value, ``incomplete``)."""
    if agg is Agg.COUNT:
        code(depth, f"if {acc} > I64_MAX: return None")
    return f"I64_MIN <= {acc} <= I64_MAX" if agg is Agg.SUM else ""


def _set(agg: Agg, cond: str, v: str, s: str, status: str, depth: int, code: _Code) -> None:
    """Code setting an output from the merged ``b``: its value and ``status`` when ``cond`` holds, else incomplete."""
    if not cond:
        code(depth, f"{v}, {s} = {_final(agg, 'b')}, {status}")
        return
    code(depth, f"if {cond}: {v}, {s} = {_final(agg, 'b')}, {status}")
    code(depth, f"else: {v}, {s} = None, INC")


def _init(agg: Agg) -> str:
    return "0" if agg in (Agg.COUNT, Agg.SUM) else "None"


def _expr(expr: Any, t: str) -> str | None:
    """Inline code of an expression whose exact evaluation is simple (``Ref``, ``Ref / Ref``, ``DaysSince(Ref)``)."""
    if isinstance(expr, Ref):
        return _var(expr.feature)
    if isinstance(expr, DaysSince) and isinstance(expr.ts, Ref):
        x = _var(expr.ts.feature)
        return f"(None if {x} is None else ({t} - {x}) // DAY)"
    if isinstance(expr, BinOp) and expr.op == "/" and isinstance(expr.left, Ref) and isinstance(expr.right, Ref):
        a, b = _var(expr.left.feature), _var(expr.right.feature)
        return f"(None if {a} is None or {b} is None else None if {b} == 0 else float({a}) / float({b}))"
    return None


def _source(vp: ViewReadPlan) -> str:
    code = _Code()
    groups = vp.groups
    batch = bool(vp.batch_fields)
    fixed = [b"m"] + ([b"b:" + f for f in sorted(vp.batch_names)] if batch else [])
    field_var = {f: f"f{i}" for i, f in enumerate(fixed)}
    used_fields = sorted({a.batch_field for g in groups for a in g.aggs if a.batch_field is not None})
    code(0, "def factory(T, now_floors, epoch, applied_from, run_cutoff, starts, keep):")
    for gi, g in enumerate(groups):
        for j, a in enumerate(g.aggs):
            if a.stream_served:
                code(1, f"st_{gi}_{j} = starts[{gi}][{j}]")
        code(1, f"now_floor_{gi} = now_floors[{gi}]")
        stream = [f"st_{gi}_{j}" for j, a in enumerate(g.aggs) if a.stream_served]
        if stream:
            code(1, f"stream_lo_{gi} = min({', '.join(stream)})" if len(stream) > 1 else f"stream_lo_{gi} = {stream[0]}")
    code(1, "def entity(r):")
    d = 2
    code(d, "if type(r) is list:")  # RESP2 (hiredis): [field, value, ...]
    code(d + 1, "it = iter(r)")
    code(d + 1, "h = dict(zip(it, it))")
    code(d, "else:")  # a dict (RESP3, another client): copied, the fields are popped below
    code(d + 1, "h = dict(r)")
    code(d, f"{', '.join(field_var[f] for f in fixed)}, = map(h.pop, {tuple(fixed)!r})")
    code(d, "manifest = loads(f0)")
    code(d, "counts = manifest.get('t') or {}")
    if batch:
        code(d, f"if {field_var[b'b:epoch']} != epoch: return None")
        code(d, f"cutoff = int({field_var[b'b:cutoff']})")
        code(d, "listed = manifest.get('b')")
        code(d, "if listed is None or cutoff != int(listed[0]) or cutoff > T or "
                "(run_cutoff is not None and cutoff < run_cutoff): return None")
        code(d, f"run = ({field_var[b'b:run']}.decode(), cutoff)")
        code(d, "days_late = (T - cutoff) // BATCH_DAY")
        code(d, f"tails = range(1 + days_late, {1 + BATCH_TAIL_DAYS})")  # the tail parts still in the window
    # the tiles: every field left is one (else the generic path decides), merged in the hash's order
    for gi, g in enumerate(groups):
        code(d, f"starts_{gi} = []")
        for j, a in enumerate(g.aggs):
            code(d, f"a_{gi}_{j} = {_init(a.law.agg)}")
            if not a.stream_served:
                code(d, f"st_{gi}_{j} = cutoff")
        if g.aggs:
            stream = any(a.stream_served for a in g.aggs)
            served = not all(a.stream_served for a in g.aggs)
            lo = (f"min(stream_lo_{gi}, cutoff)" if stream and served else f"stream_lo_{gi}" if stream else "cutoff")
            code(d, f"lo_{gi} = {lo}")
    code(d, "for k, v in h.items():")
    code(d + 1, "if k[:2] != b't:': return None")
    code(d + 1, "size, _, start = k[2:].partition(b':')")
    code(d + 1, "version, tile_epoch, body = v.split(b'|', 2)")
    code(d + 1, "if tile_epoch != epoch: return None")
    code(d + 1, "s = int(start)")
    for gi, g in enumerate(groups):
        code(d + 1, f"{'if' if gi == 0 else 'elif'} size == {g.size!r}:")
        code(d + 2, f"starts_{gi}.append(s)")
        if g.aggs:
            code(d + 2, f"if s >= lo_{gi}:")
            code(d + 3, "vec = loads(body)")
            for j, a in enumerate(g.aggs):  # stream-served: each from its window start
                if a.stream_served:
                    code(d + 3, f"if s >= st_{gi}_{j}:")
                    code(d + 4, f"x = vec[{a.index}]")
                    _check(a.law.agg, "x", d + 4, code)
                    _merge(a.law.agg, f"a_{gi}_{j}", "x", d + 4, code)
            if not all(a.stream_served for a in g.aggs):  # batch-served: all from the cut-off
                code(d + 3, "if s >= cutoff:")
                for j, a in enumerate(g.aggs):
                    if not a.stream_served:
                        code(d + 4, f"x = vec[{a.index}]")
                        _check(a.law.agg, "x", d + 4, code)
                        _merge(a.law.agg, f"a_{gi}_{j}", "x", d + 4, code)
    code(d + 1, "else: return None")
    for gi, g in enumerate(groups):  # a count's tiles beyond int64: the generic evaluation's merge raises, whatever is read
        for j, a in enumerate(g.aggs):
            if a.law.agg is Agg.COUNT and not a.stream_served:
                code(d, f"if a_{gi}_{j} > I64_MAX: return None")
    for f in used_fields:
        code(d, f"p_{field_var[b'b:' + f.encode()]} = loads({field_var[b'b:' + f.encode()]})")
    for gi, g in enumerate(groups):
        code(d, f"n_{gi} = len(starts_{gi})")
        code(d, f"if n_{gi} > 1 and len(set(starts_{gi})) != n_{gi}: return None")  # a start twice: generic
        code(d, f"entry = counts.get({g.size.decode()!r})")
        code(d, "if entry is None:")
        code(d + 1, f"if n_{gi}: return None")
        code(d + 1, "lost_upto = -1")
        code(d, "else:")
        code(d + 1, f"if n_{gi} != entry[0]: return None")
        code(d + 1, "lost_upto = entry[2]")
        if not g.aggs:
            continue
        code(d, f"oldest_kept = (max(starts_{gi}) if n_{gi} else now_floor_{gi}) - {g.retention_ms}")
        for j, a in enumerate(g.aggs):  # stream-served: each from its own window start
            if not a.stream_served:
                continue
            agg, st, acc, v, s = a.law.agg, f"st_{gi}_{j}", f"a_{gi}_{j}", _var(a.name), _sts(a.name)
            cond = _in_range(agg, acc, d, code)
            code(d, f"if {st} > lost_upto and applied_from <= {st} and {st} >= oldest_kept{' and ' + cond if cond else ''}: "
                    f"{v}, {s} = {_final(agg, acc)}, PRESENT")
            code(d, f"else: {v}, {s} = None, INC")
        served = [(j, a) for j, a in enumerate(g.aggs) if not a.stream_served]
        if not served:
            continue
        # batch-served: the batch record's parts + the stream from the cut-off (every one's start)
        code(d, "if cutoff <= lost_upto:")
        for _, a in served:
            code(d + 1, f"{_var(a.name)}, {_sts(a.name)} = None, INC")
        code(d, "else:")
        code(d + 1, "batch_ok = applied_from <= cutoff and cutoff >= oldest_kept")
        code(d + 1, "window_ok = batch_ok and days_late <= TAIL")
        for j, a in served:
            agg, acc, v, s = a.law.agg, f"a_{gi}_{j}", _var(a.name), _sts(a.name)
            parts, bi = f"p_{field_var[b'b:' + a.batch_field.encode()]}", a.batch_index  # type: ignore[union-attr]
            code(d + 1, f"b = {parts}[0][{bi}]")
            _check(agg, "b", d + 1, code)
            if a.width_ms is None:  # lifetime: body + stream, stale once the run is more than the tail late
                code(d + 1, "if batch_ok:")
                _merge(agg, "b", acc, d + 2, code)
                _set(agg, _in_range(agg, "b", d + 2, code), v, s, "(STALE if days_late > TAIL else PRESENT)", d + 2, code)
                code(d + 1, f"else: {v}, {s} = None, INC")
                continue
            code(d + 1, "if window_ok:")
            code(d + 2, "if days_late == 0:")  # the usual case, unrolled: every tail part still in the window
            for t in range(1, 1 + BATCH_TAIL_DAYS):
                code(d + 3, f"x = {parts}[{t}][{bi}]")
                _check(agg, "x", d + 3, code)
                _merge(agg, "b", "x", d + 3, code)
            code(d + 2, "else:")
            code(d + 3, "for t in tails:")
            code(d + 4, f"x = {parts}[t][{bi}]")
            _check(agg, "x", d + 4, code)
            _merge(agg, "b", "x", d + 4, code)
            _merge(agg, "b", acc, d + 2, code)
            _set(agg, _in_range(agg, "b", d + 2, code), v, s, "PRESENT", d + 2, code)
            code(d + 1, f"else: {v}, {s} = None, INC")
    # the rest is finish(run, cutoff, <value, status of each aggregation>), shared with the C kernel
    agg_names = [a.name for g in groups for a in g.aggs]
    params = ", ".join(f"{_var(n)}, {_sts(n)}" for n in agg_names)
    code(d, f"return finish({'run, cutoff' if batch else 'None, None'}{', ' + params if params else ''})")
    code(1, f"def finish(run, cutoff{', ' + params if params else ''}):")
    # derived features (dependency order), as prepare() and dynamic() evaluate them
    dynamic = {name for name, _, _ in vp.dynamic_derived}
    pending = []
    for k, (name, expr, inputs) in enumerate(vp.derived):
        v, s = _var(name), _sts(name)
        in_sts = [_sts(i) for i in inputs]
        if name in dynamic:
            code(d, f"pending_{k} = None")
        code(d, f"if INC in ({', '.join(in_sts)},): {v}, {s} = None, INC")
        code(d, "else:")
        code(d + 1, f"{s} = STALE if STALE in ({', '.join(in_sts)},) else PRESENT")
        if name in dynamic:  # evaluated at T on every read: None in the prepared values
            code(d + 1, f"{v} = None")
            known = "None" if any(i in dynamic for i in inputs) else "{" + ", ".join(f"{i!r}: {_var(i)}" for i in inputs) + "}"
            pending.append((k, name, known))
            code(d + 1, f"if keep: pending_{k} = (NAMES[{k}], EXPRS[{k}], INPUTS[{k}], {known})")
            continue
        inline = _expr(expr, "0")
        if inline is None:
            inline = f"evaluate(EXPRS[{k}], {{{', '.join(f'{i!r}: {_var(i)}' for i in inputs)}}}, 0)"
        code(d + 1, f"{v} = {inline}")
    outputs = [f for f, _ in vp.outputs]
    names = agg_names + [n for n, _, _ in vp.derived]
    code(d, "if keep:")  # for the memo (prepare()'s values and the instant-dependent features to evaluate)
    code(d + 1, "vals = {" + ", ".join(f"{n!r}: {_var(n)}" for n in names) + "}")
    pend = [f"pending_{k}" for k, _, _ in pending]
    if pend:
        code(d + 1, f"pending = tuple([p for p in ({', '.join(pend)},) if p is not None])")
    else:
        code(d + 1, "pending = ()")
    code(d, "else:")
    code(d + 1, "vals = pending = None")
    code(d, f"prepared = (({', '.join(_var(f) for f in outputs)},), ({', '.join(_sts(f) for f in outputs)},), "
            "run, cutoff, vals, pending)")
    if not dynamic:
        code(d, "return prepared, prepared[0]")
    else:  # the instant-dependent ones at T (their inputs at T before them: dependency order)
        for k, (name, expr, inputs) in enumerate(vp.derived):
            if name not in dynamic:
                continue
            inline = _expr(expr, "T")
            if inline is None:
                inline = f"evaluate(EXPRS[{k}], {{{', '.join(f'{i!r}: {_var(i)}' for i in inputs)}}}, T)"
            code(d, f"if {_sts(name)} != INC: {_var(name)} = {inline}")
        code(d, f"return prepared, ({', '.join(_var(f) for f in outputs)},)")
    code(1, "return entity, finish")
    return "\n".join(code.lines) + "\n"


__all__ = ["EntityEvaluator", "compile_view", "view_kernel"]
