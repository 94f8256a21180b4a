"""Online/offline consistency in production: logged online responses recomputed offline at the same T.

Logged responses (a pandas frame, Arrow table or row dicts), one row per served entity and view:

- the view's join key columns, ``request_ms`` (the instant T the value answered; epoch ms),
- one column per feature with the served value, optionally ``status:<feature>`` with its status,
- optional ``progress`` (the source progress the response reflected) and ``batch_run``: passed through
  so the recompute can restrict itself to the events the pipeline had applied (docs/semantics.md §10).

``recompute(rows) -> frame`` gets those rows (keys, ``request_ms``, ``progress``, ``batch_run``) and
returns one row per input row, in input order, with the feature columns (the training-set engine's
point-in-time contract, §12). A value logged as ``incomplete`` or ``expired`` is null by contract and
is skipped (counted), not compared.

Comparison per the contract: integers, decimals, strings and timestamps must be equal exactly. Floats
(AVG, Derived ``/`` and float operands) are exact too: the contract fixes AVG as ``float64(sum) / count``
computed once with correctly rounded conversions, and ``/`` as float64 division, so every engine gives
the same bits. ``float_ulps`` per feature relaxes that deliberately (e.g. while an engine is known to
differ); the default tolerance is 0 ULP (and -0.0 differs from 0.0, as in MIN/MAX).
In a correct deployment every mismatch rate is zero.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Mapping

from skewless.core.dsl import View
from skewless.monitoring.common import ERROR, FAILED, OK, format_table, guarded, is_null, to_pandas

REQUEST_COLUMN = "request_ms"
SKIPPED_STATUSES = ("incomplete", "expired")
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class Mismatch:
    entity: tuple
    request_ms: int
    online: Any
    offline: Any


@dataclass(frozen=True)
class FeatureConsistency:
    feature: str
    compared: int
    mismatches: int
    skipped: int
    examples: tuple[Mismatch, ...] = ()

    @property
    def mismatch_rate(self) -> float:
        return self.mismatches / self.compared if self.compared else 0.0


@dataclass(frozen=True)
class ConsistencyReport:
    view: str
    rows: int
    features: tuple[FeatureConsistency, ...]
    error: str = ""

    @property
    def status(self) -> str:
        if self.error:
            return ERROR
        return FAILED if any(f.mismatches for f in self.features) else OK

    def render(self) -> str:
        head = f"consistency {self.view}: {self.rows} logged responses, status {self.status}"
        if self.error:
            return f"{head}: {self.error}"
        table = format_table(
            ["feature", "compared", "skipped", "mismatches", "rate", "example (entity, T, online, offline)"],
            [[f.feature, f.compared, f.skipped, f.mismatches, f"{f.mismatch_rate:.4%}",
              (lambda m: f"{m.entity} {m.request_ms} {m.online!r} {m.offline!r}")(f.examples[0]) if f.examples else ""]
             for f in self.features])
        return f"{head}\n{table}"


def _ordered(x: float) -> int:
    (i,) = struct.unpack("<q", struct.pack("<d", x))
    return i if i >= 0 else -(i & 0x7FFFFFFFFFFFFFFF) - 1


def ulp_distance(a: float, b: float) -> int:
    """Number of representable doubles between ``a`` and ``b`` (-0.0 and 0.0 are 1 apart)."""
    return abs(_ordered(a) - _ordered(b))


def values_equal(online: Any, offline: Any, float_ulps: int = 0) -> bool:
    """Equality by the contract: nulls equal nulls; exact for ints, decimals, strings, bools; floats within
    ``float_ulps`` (0: the same bits)."""
    if is_null(online) or is_null(offline):
        return is_null(online) and is_null(offline)
    if hasattr(online, "item") and not isinstance(online, (str, bytes)):
        online = online.item()  # numpy scalar
    if hasattr(offline, "item") and not isinstance(offline, (str, bytes)):
        offline = offline.item()
    if isinstance(online, bool) or isinstance(offline, bool):
        return type(online) is type(offline) and online == offline
    if isinstance(online, float) or isinstance(offline, float):
        if not isinstance(online, (int, float, Decimal)) or not isinstance(offline, (int, float, Decimal)):
            return False
        a, b = float(online), float(offline)
        if isinstance(online, int) and isinstance(offline, float) or isinstance(online, float) and isinstance(offline, int):
            return float(online) == float(offline) and abs(online) < 2**53 and abs(offline) < 2**53
        if not (math.isfinite(a) and math.isfinite(b)):
            return a == b
        return ulp_distance(a, b) <= float_ulps
    return online == offline


def _plain(v: Any) -> Any:
    item = getattr(v, "item", None)
    return item() if callable(item) and not isinstance(v, (str, bytes)) else v


def check_consistency(view: View, logged: Any, recompute: Callable[[Any], Any], *,
                      float_ulps: Mapping[str, int] | None = None, features: list[str] | None = None) -> ConsistencyReport:
    """Recompute ``logged`` responses offline and count mismatches per feature. Never raises."""

    def compute() -> ConsistencyReport:
        df = to_pandas(logged).reset_index(drop=True)
        keys = list(view.entity.key_names)
        names = [f for f in (features or view.feature_names) if f in df.columns]
        passthrough = [c for c in [*keys, REQUEST_COLUMN, "progress", "batch_run"] if c in df.columns]
        missing = [c for c in [*keys, REQUEST_COLUMN] if c not in df.columns]
        if missing:
            raise ValueError(f"logged responses lack column(s) {missing}")
        offline = to_pandas(recompute(df[passthrough].copy())).reset_index(drop=True)
        if len(offline) != len(df):
            raise ValueError(f"recompute returned {len(offline)} rows for {len(df)} logged responses")
        out = []
        for f in names:
            if f not in offline.columns:
                raise ValueError(f"recompute returned no column {f!r}")
            ulps = int((float_ulps or {}).get(f, 0))
            status_col = f"status:{f}"
            compared = skipped = bad = 0
            examples: list[Mismatch] = []
            statuses = df[status_col].tolist() if status_col in df.columns else [None] * len(df)
            for i, (on, off, st) in enumerate(zip(df[f].tolist(), offline[f].tolist(), statuses)):
                if st in SKIPPED_STATUSES:
                    skipped += 1
                    continue
                compared += 1
                if not values_equal(on, off, ulps):
                    bad += 1
                    if len(examples) < MAX_EXAMPLES:
                        examples.append(Mismatch(tuple(_plain(df.at[i, k]) for k in keys), int(df.at[i, REQUEST_COLUMN]),
                                                 _plain(on), _plain(off)))
            out.append(FeatureConsistency(f, compared, bad, skipped, tuple(examples)))
        return ConsistencyReport(view.name, len(df), tuple(out))

    return guarded(compute, lambda reason: ConsistencyReport(view.name, 0, (), error=reason), f"consistency of {view.name}")
