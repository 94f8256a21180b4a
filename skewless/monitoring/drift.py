"""Distribution drift between a reference (a training set, or a window of the offline store) and what
is served (sampled online values): PSI for numeric and categorical features, two-sample KS for numeric.

PSI = sum_i (c_i - r_i) * ln(c_i / r_i) over bins, where r_i, c_i are the reference and current
fractions, smoothed as ``(f + eps) / (1 + k * eps)`` (k bins) so an empty bin gives a large but finite
term. Numeric bins are the reference's quantiles (``bins`` of them, duplicate edges merged; a value on
an edge belongs to the bin above); categorical bins are the categories of either side. Nulls form one
more bin when either side has any. KS is ``D = max |F_ref - F_cur|`` with the asymptotic p-value.

Default thresholds: PSI >= 0.1 ``warn``, >= 0.25 ``alert``; per feature overridable, KS optional.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Mapping, Sequence

import numpy as np

from skewless.core.dsl import View
from skewless.monitoring.common import ALERT, ERROR, OK, WARN, format_table, guarded, to_pandas

DEFAULT_EPS = 1e-4
NUMERIC = "numeric"
CATEGORICAL = "categorical"
NULL_BIN = "(null)"
DISPLAY_BINS = 20
MAX_CATEGORIES_SHOWN = 20


@dataclass(frozen=True)
class DriftThreshold:
    """Per-feature thresholds: PSI warn/alert, optional KS statistic alert, quantile bins for numeric PSI."""

    psi_warn: float = 0.1
    psi_alert: float = 0.25
    ks_alert: float | None = None
    bins: int = 10


@dataclass(frozen=True)
class Histogram:
    """Bars for the report: labels and the fraction of each side in each bar."""

    labels: tuple[str, ...]
    reference: tuple[float, ...]
    current: tuple[float, ...]


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str  # numeric | categorical | "-" when unknown
    status: str  # ok | warn | alert | error
    n_reference: int = 0
    n_current: int = 0
    psi: float | None = None
    ks_d: float | None = None
    ks_p: float | None = None
    null_rate_reference: float | None = None
    null_rate_current: float | None = None
    threshold: DriftThreshold = field(default_factory=DriftThreshold)
    histogram: Histogram | None = None
    detail: str = ""


@dataclass(frozen=True)
class DriftReport:
    view: str
    features: tuple[FeatureDrift, ...]
    reference_name: str = "reference"
    current_name: str = "current"

    @property
    def status(self) -> str:
        order = [OK, WARN, ALERT, ERROR]
        return max((f.status for f in self.features), key=order.index, default=OK)

    def render(self) -> str:
        rows = [[f.feature, f.kind, f.n_reference, f.n_current, _num(f.psi), _num(f.ks_d), _num(f.ks_p),
                 f"{f.threshold.psi_warn:g}/{f.threshold.psi_alert:g}", f.status, f.detail] for f in self.features]
        return format_table(["feature", "kind", "n_ref", "n_cur", "psi", "ks_d", "ks_p", "psi warn/alert", "status", "detail"], rows)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


# --- measures -------------------------------------------------------------------------------------------------


def smoothed(counts: Sequence[float], eps: float = DEFAULT_EPS) -> np.ndarray:
    """Fractions of ``counts`` smoothed as ``(f + eps) / (1 + k * eps)``."""
    c = np.asarray(counts, dtype=float)
    total = c.sum()
    f = c / total if total > 0 else np.zeros_like(c)
    return (f + eps) / (1.0 + len(c) * eps)


def psi_from_counts(reference: Sequence[float], current: Sequence[float], eps: float = DEFAULT_EPS) -> float:
    """PSI of two count vectors over the same bins."""
    r, c = smoothed(reference, eps), smoothed(current, eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = (c - r) * np.log(c / r)
    terms = np.where((c == r), 0.0, terms)
    return float(np.sum(terms))


def quantile_edges(reference: Sequence[float], bins: int = 10) -> np.ndarray:
    """Inner bin edges: the reference's ``i/bins`` quantiles (linear interpolation), duplicates merged."""
    ref = np.asarray(reference, dtype=float)
    if len(ref) == 0 or bins < 2:
        return np.array([], dtype=float)
    return np.unique(np.quantile(ref, [i / bins for i in range(1, bins)]))


def bin_counts(values: Sequence[float], edges: np.ndarray) -> np.ndarray:
    """Counts per bin ``(-inf, e1), [e1, e2), ..., [ek, inf)``."""
    idx = np.searchsorted(edges, np.asarray(values, dtype=float), side="right")
    return np.bincount(idx, minlength=len(edges) + 1).astype(float)


def psi_numeric(reference: Sequence[float], current: Sequence[float], bins: int = 10, eps: float = DEFAULT_EPS,
                null_counts: tuple[int, int] = (0, 0)) -> float:
    """PSI with quantile bins of the reference; ``null_counts`` (reference, current) add a null bin."""
    edges = quantile_edges(reference, bins)
    r, c = bin_counts(reference, edges), bin_counts(current, edges)
    if any(null_counts):
        r, c = np.append(r, null_counts[0]), np.append(c, null_counts[1])
    return psi_from_counts(r, c, eps)


def psi_categorical(reference: Sequence[Any], current: Sequence[Any], eps: float = DEFAULT_EPS) -> float:
    """PSI over the union of categories (None is a category of its own)."""
    cats = _categories(reference, current)
    rc, cc = Counter(_key(v) for v in reference), Counter(_key(v) for v in current)
    return psi_from_counts([rc[k] for k in cats], [cc[k] for k in cats], eps)


def _key(v: Any) -> Any:
    return NULL_BIN if v is None or (isinstance(v, float) and v != v) else v


def _categories(reference: Sequence[Any], current: Sequence[Any]) -> list[Any]:
    seen: dict[Any, None] = {}
    for v in list(reference) + list(current):
        seen.setdefault(_key(v), None)
    return sorted(seen, key=lambda k: (k == NULL_BIN, str(type(k).__name__), str(k)))


def ks_2samp(reference: Sequence[float], current: Sequence[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov: ``(D, p)`` with the asymptotic p-value (Stephens' correction)."""
    a = np.sort(np.asarray(reference, dtype=float))
    b = np.sort(np.asarray(current, dtype=float))
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        raise ValueError("KS needs values on both sides")
    grid = np.concatenate([a, b])
    d = float(np.max(np.abs(np.searchsorted(a, grid, side="right") / n - np.searchsorted(b, grid, side="right") / m)))
    return d, kolmogorov_q((math.sqrt(n * m / (n + m)) + 0.12 + 0.11 / math.sqrt(n * m / (n + m))) * d)


def kolmogorov_q(lam: float) -> float:
    """Survival function of the Kolmogorov distribution: ``2 * sum (-1)^(j-1) exp(-2 j^2 lam^2)``."""
    if lam < 0.2:
        return 1.0
    total = 0.0
    for j in range(1, 101):
        term = 2.0 * (-1) ** (j - 1) * math.exp(-2.0 * j * j * lam * lam)
        total += term
        if abs(term) < 1e-12:
            break
    return min(1.0, max(0.0, total))


# --- frames ----------------------------------------------------------------------------------------------------


def _split(series: Any) -> tuple[list[Any], int]:
    """(non-null values, null count); Decimals become floats."""
    values, nulls = [], 0
    for v in series.tolist():
        if v is None or (isinstance(v, float) and v != v) or _is_pd_missing(v):
            nulls += 1
        else:
            values.append(float(v) if isinstance(v, Decimal) else v)
    return values, nulls


def _is_pd_missing(v: Any) -> bool:
    import pandas as pd

    return v is pd.NA or v is pd.NaT


def infer_kind(values: Sequence[Any]) -> str:
    """numeric when every value is an int or float (not bool), else categorical."""
    ok = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) for v in values)
    return NUMERIC if ok and values else CATEGORICAL


def compact(v: float) -> str:
    """Short axis label: 0.25, 13, 1.3k, 2.5M."""
    a = abs(v)
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= size:
            return f"{v / size:.3g}{suffix}"
    return f"{v:.3g}"


def _display_numeric(ref: np.ndarray, cur: np.ndarray) -> Histogram:
    """Equal-width bars over both samples' range (one bar per value for small integer ranges)."""
    both = np.concatenate([ref, cur])
    if len(both) == 0:
        return Histogram((), (), ())
    lo, hi = float(both.min()), float(both.max())
    integral = bool(np.all(np.floor(both) == both))
    if integral and hi - lo + 1 <= 2 * DISPLAY_BINS:
        edges = np.arange(lo, hi + 2) - 0.5
        labels = tuple(compact(lo + i) for i in range(len(edges) - 1))
    else:
        if hi == lo:
            hi = lo + 1.0
        if integral:
            width = math.ceil((hi - lo + 1) / DISPLAY_BINS)
            edges = lo + width * np.arange(DISPLAY_BINS + 1)
        else:
            edges = np.linspace(lo, hi, DISPLAY_BINS + 1)
        labels = tuple(compact(float(e)) for e in edges[:-1])
    rc, _ = np.histogram(ref, bins=edges)
    cc, _ = np.histogram(cur, bins=edges)
    return Histogram(labels, tuple((rc / max(len(ref), 1)).tolist()), tuple((cc / max(len(cur), 1)).tolist()))


def _display_categorical(ref: list[Any], cur: list[Any]) -> Histogram:
    cats = _categories(ref, cur)
    rn, cn = max(len(ref), 1), max(len(cur), 1)
    rf = {k: 0 for k in cats}
    cf = {k: 0 for k in cats}
    for v in ref:
        rf[_key(v)] += 1
    for v in cur:
        cf[_key(v)] += 1
    ranked = sorted(cats, key=lambda k: -(rf[k] / rn + cf[k] / cn))
    shown, rest = ranked[:MAX_CATEGORIES_SHOWN], ranked[MAX_CATEGORIES_SHOWN:]
    labels = [str(k) for k in shown]
    r = [rf[k] / rn for k in shown]
    c = [cf[k] / cn for k in shown]
    if rest:
        labels.append(f"other ({len(rest)})")
        r.append(sum(rf[k] for k in rest) / rn)
        c.append(sum(cf[k] for k in rest) / cn)
    return Histogram(tuple(labels), tuple(r), tuple(c))


def feature_drift(feature: str, reference: Any, current: Any, threshold: DriftThreshold | None = None,
                  kind: str | None = None, eps: float = DEFAULT_EPS) -> FeatureDrift:
    """Drift of one feature between two pandas Series. Never raises (status ``error``)."""
    th = threshold or DriftThreshold()

    def compute() -> FeatureDrift:
        ref, ref_null = _split(reference)
        cur, cur_null = _split(current)
        n_ref, n_cur = len(ref) + ref_null, len(cur) + cur_null
        base = dict(feature=feature, n_reference=n_ref, n_current=n_cur, threshold=th,
                    null_rate_reference=ref_null / n_ref if n_ref else None,
                    null_rate_current=cur_null / n_cur if n_cur else None)
        k = kind or infer_kind(ref + cur)
        if n_ref == 0 or n_cur == 0:
            return FeatureDrift(kind=k, status=ERROR, detail="no rows in the " + ("reference" if n_ref == 0 else "current"), **base)
        ks_d = ks_p = None
        if k == NUMERIC:
            psi = psi_numeric(ref, cur, bins=th.bins, eps=eps, null_counts=(ref_null, cur_null))
            if ref and cur:
                ks_d, ks_p = ks_2samp(ref, cur)
            hist = _display_numeric(np.asarray(ref, dtype=float), np.asarray(cur, dtype=float))
        else:
            refv = ref + [None] * ref_null
            curv = cur + [None] * cur_null
            psi = psi_categorical(refv, curv, eps=eps)
            hist = _display_categorical(refv, curv)
        status, why = OK, ""
        if psi >= th.psi_alert:
            status, why = ALERT, f"psi >= {th.psi_alert:g}"
        elif psi >= th.psi_warn:
            status, why = WARN, f"psi >= {th.psi_warn:g}"
        if th.ks_alert is not None and ks_d is not None and ks_d >= th.ks_alert:
            status, why = ALERT, "; ".join(x for x in (why, f"ks_d >= {th.ks_alert:g}") if x)
        return FeatureDrift(kind=k, status=status, psi=psi, ks_d=ks_d, ks_p=ks_p, histogram=hist, detail=why, **base)

    return guarded(compute, lambda reason: FeatureDrift(feature, "-", ERROR, threshold=th, detail=reason),
                   f"drift of {feature}")


def compare(reference: Any, current: Any, *, view: View | None = None, features: Sequence[str] | None = None,
            thresholds: Mapping[str, DriftThreshold] | None = None, default: DriftThreshold | None = None,
            kinds: Mapping[str, str] | None = None, eps: float = DEFAULT_EPS,
            reference_name: str = "reference", current_name: str = "current") -> DriftReport:
    """Drift of each feature between two frames (pandas, Arrow or row dicts). Features: ``features``, else
    the view's features present in either frame, else the columns common to both. Never raises."""
    name = view.name if view is not None else "-"

    def compute() -> DriftReport:
        ref, cur = to_pandas(reference), to_pandas(current)
        if features is not None:
            names = list(features)
        elif view is not None:
            names = [f for f in view.feature_names if f in ref.columns or f in cur.columns]
        else:
            names = [c for c in ref.columns if c in cur.columns and not str(c).startswith("__")]
        out = []
        for f in names:
            th = (thresholds or {}).get(f, default or DriftThreshold())
            if f not in ref.columns or f not in cur.columns:
                side = "reference" if f not in ref.columns else "current"
                out.append(FeatureDrift(f, "-", ERROR, threshold=th, detail=f"column missing in the {side}"))
                continue
            out.append(feature_drift(f, ref[f], cur[f], th, (kinds or {}).get(f), eps))
        return DriftReport(name, tuple(out), reference_name, current_name)

    return guarded(compute, lambda reason: DriftReport(name, (FeatureDrift("*", "-", ERROR, detail=reason),)),
                   f"drift of {name}")


def parse_threshold(text: str) -> tuple[str, DriftThreshold]:
    """``feature=warn,alert[,ks]`` (CLI form) -> (feature, threshold)."""
    feature, _, spec = text.partition("=")
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not feature or len(parts) not in (2, 3):
        raise ValueError(f"threshold {text!r}: expected FEATURE=PSI_WARN,PSI_ALERT[,KS_ALERT]")
    warn, alert = float(parts[0]), float(parts[1])
    ks = float(parts[2]) if len(parts) == 3 else None
    return feature, DriftThreshold(psi_warn=warn, psi_alert=alert, ks_alert=ks)
