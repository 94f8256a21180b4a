"""Derived-feature expressions (docs/semantics.md §8): what one references, which features a selection needs,
the order derived features are evaluated in, whether a value depends on the read instant, and the value.

Every reader and compiler walks expressions through these functions; only what renders an expression for an
engine (SQL text, canonical JSON), checks it (validation) or restates the contract (the oracle) walks its own.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from skewless.core import laws
from skewless.core.dsl import BinOp, Const, DaysSince, Derived, FeatureView, Ref
from skewless.core.timeutil import MS_PER_DAY


def refs(expr: Any) -> tuple[str, ...]:
    """The feature names an expression references directly, each once, in the order they appear."""
    if isinstance(expr, Ref):
        return (expr.feature,)
    if isinstance(expr, BinOp):
        return tuple(dict.fromkeys(refs(expr.left) + refs(expr.right)))
    if isinstance(expr, DaysSince):
        return refs(expr.ts)
    return ()


def closure(wanted: Iterable[str], exprs: Mapping[str, Any]) -> set[str]:
    """``wanted`` and every feature they need, through the derived features' expressions (``exprs``: derived
    feature name -> expression; other names are leaves)."""
    needed: set[str] = set()
    stack = list(wanted)
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        if name in exprs:
            stack.extend(refs(exprs[name]))
    return needed


def derived_order(view: FeatureView) -> list[Derived]:
    """The view's derived features in evaluation order: each after the derived features it references (depth
    first, in declaration order; the repository's validation has refused unknown references and cycles)."""
    derived = {f.name: f for f in view.features if isinstance(f, Derived)}
    out: list[Derived] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        done.add(name)
        for d in refs(derived[name].expr):
            if d in derived:
                visit(d)
        out.append(derived[name])

    for name in derived:
        visit(name)
    return out


def instant_dependent(expr: Any, dynamic: set[str]) -> bool:
    """Whether an expression's value depends on the read instant: a DaysSince, or a Ref to a feature in
    ``dynamic`` (those already found instant-dependent)."""
    if isinstance(expr, DaysSince):
        return True
    if isinstance(expr, Ref):
        return expr.feature in dynamic
    if isinstance(expr, BinOp):
        return instant_dependent(expr.left, dynamic) or instant_dependent(expr.right, dynamic)
    return False


def evaluate(expr: Any, values: Mapping[str, Any], t: int) -> Any:
    """The value of an expression over already computed feature values at instant ``t`` (epoch ms): null in,
    null out; ``/`` in float64 with x/0 null; ``DaysSince`` floors whole days; int64 overflow raises."""
    if isinstance(expr, Ref):
        return values[expr.feature]
    if isinstance(expr, Const):
        return expr.value
    if isinstance(expr, DaysSince):
        ts = evaluate(expr.ts, values, t)
        return None if ts is None else (t - ts) // MS_PER_DAY
    if isinstance(expr, BinOp):
        left, right = evaluate(expr.left, values, t), evaluate(expr.right, values, t)
        if left is None or right is None:
            return None
        if expr.op == "/":
            return None if right == 0 else float(left) / float(right)
        if isinstance(left, float) or isinstance(right, float):
            left, right = float(left), float(right)
        result = left + right if expr.op == "+" else left - right if expr.op == "-" else left * right
        if isinstance(result, int):
            laws.check_int64(result, "result")
        return result
    raise TypeError(f"not an expression: {expr!r}")
