"""Distribution drift between a reference (a training set, or a window of the offline store) and what
is served (sampled online values): PSI for numeric and categorical features, two-sample KS for numeric.

PSI = sum_i (c_i - r_i) * ln(c_i / r_i) over bins, where r_i, c_i are the reference and current
fractions, smoothed as ``(f + eps) / (1 + k * eps)`` (k bins) so an empty bin gives a large but finite
term. Numeric bins are the reference's quantiles (``bins`` of them, duplicate edges merged; a value on
an edge belongs to the bin above); categorical bins are the categories of either side. Nulls form one
more bin when either side has any. KS is ``D = max |F_ref - F_cur|`` with the asymptotic p-value.

Default thresholds: PSI >= 0.1 ``warn``, >= 0.25 ``alert``; per feature overridable, KS optional.

Timestamp-valued features (e.g. ``MAX(event_time)``) drift by construction -- time moves on -- so a view's
are left out by default (:func:`timestamp_features`); named explicitly they are compared like numbers and
shown on a date axis. Skewed non-negative numbers (one equal-width bar holding most values) are shown on
log-spaced 1-2-5 bins, so more than one bar is visible; PSI and KS do not depend on the display bins.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Mapping, Sequence

import numpy as np

from skewless.core.dsl import FeatureView, View
from skewless.core.schemas import EventSchema
from skewless.core.timeutil import from_epoch_ms
from skewless.core.validation import feature_type
from skewless.monitoring.common import ALERT, ERROR, OK, WARN, format_table, guarded, to_pandas

DEFAULT_EPS = 1e-4
NUMERIC = "numeric"
CATEGORICAL = "categorical"
TIMESTAMP = "timestamp"  # epoch ms: compared like numbers, shown on a date axis
LINEAR, LOG = "linear", "log"  # display bins: equal-width, or log-spaced 1-2-5
SKEWED_SHARE = 0.6  # an equal-width bar holding more than this share of values: show log bins
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
    scale: str = LINEAR  # LINEAR: equal-width bins (or one per value); LOG: log-spaced 1-2-5 bins


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
    left_out: tuple[tuple[str, str], ...] = ()  # (feature, why) not compared

    @property
    def status(self) -> str:
        order = [OK, WARN, ALERT, ERROR]
        return max((f.status for f in self.features), key=order.index, default=OK)

    def render(self) -> str:
        rows = [[f.feature, f.kind, f.n_reference, f.n_current, _num(f.psi), _num(f.ks_d), _num(f.ks_p),
                 f"{f.threshold.psi_warn:g}/{f.threshold.psi_alert:g}", f.status, f.detail] for f in self.features]
        table = format_table(["feature", "kind", "n_ref", "n_cur", "psi", "ks_d", "ks_p", "psi warn/alert", "status", "detail"], rows)
        return table + "".join(f"\nleft out: {name} ({why})" for name, why in self.left_out)


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
    """Inner bin edges: the reference's ``i/bins`` quantiles (linear interpolation), duplicates merged; a
    quantile that repeats (a value holding over ``1/bins`` of the reference, e.g. the 0 of mostly-0 counts)
    also closes its own bin, so the values above it are not merged with it. A reference of at most ``bins``
    distinct values gets one bin per value and one above its largest."""
    ref = np.asarray(reference, dtype=float)
    if len(ref) == 0 or bins < 2:
        return np.array([], dtype=float)
    distinct = np.unique(ref)
    if len(distinct) <= bins:
        return np.append(distinct, np.nextafter(distinct[-1], np.inf))
    edges, repeats = np.unique(np.quantile(ref, [i / bins for i in range(1, bins)]), return_counts=True)
    return np.unique(np.concatenate([edges, np.nextafter(edges[repeats > 1], np.inf)]))


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
        if a >= size * 0.9995:  # what rounds to 1000 of the smaller unit reads as 1 of this one
            return f"{v / size:.3g}{suffix}"
    return f"{v:.3g}"


def _nice_125(x: float, up: bool) -> float:
    """The 1-2-5 series value at or above (``up``) or at or below ``x`` (> 0)."""
    exp = math.floor(math.log10(x))
    steps = [m * 10.0 ** e for e in (exp - 1, exp, exp + 1) for m in (1, 2, 5)]
    return min(v for v in steps if v >= x * (1 - 1e-12)) if up else max(v for v in steps if v <= x * (1 + 1e-12))


def log_edges(lo: float, hi: float) -> np.ndarray:
    """Bin edges on the 1-2-5 series covering ``[lo, hi]`` (``lo >= 0``), with ``[0, first)`` when lo < first."""
    top = max(hi, 1e-12)
    first = _nice_125(lo, up=False) if lo > 0 else min(1.0, _nice_125(top, up=False))
    edges = [0.0] if lo < first else []
    v = first
    while v <= top:
        edges.append(v)
        v = _nice_125(v * 1.5, up=True)
    edges.append(v)
    return np.asarray(edges, dtype=float)


def _range_label(a: float, b: float, integral: bool) -> str:
    if integral:
        lo, hi = math.ceil(a), math.ceil(b) - 1
        return compact(lo) if hi <= lo else f"{compact(lo)}–{compact(hi)}"
    return f"{compact(a)}–{compact(b)}"


def date_label(ms: float, span_ms: float) -> str:
    """An epoch-ms axis label: the UTC date for spans over two days, else month-day hour:minute."""
    when = from_epoch_ms(int(ms))
    return when.strftime("%Y-%m-%d") if span_ms > 2 * 86_400_000 else when.strftime("%m-%d %H:%M")


def display_numeric(ref: np.ndarray, cur: np.ndarray, kind: str = NUMERIC, nulls: tuple[int, int] = (0, 0)) -> Histogram:
    """Bars over both samples' range: one per value for small integer ranges; dates for timestamps; log-spaced
    1-2-5 bins when equal-width bars would put most values in one bar; else equal-width bins. With ``nulls``
    (reference, current) a last ``(null)`` bar; fractions are of each side's rows, nulls included."""
    both = np.concatenate([ref, cur])
    if len(both) == 0:
        return Histogram((NULL_BIN,), (1.0,), (1.0,)) if all(nulls) else Histogram((), (), ())
    lo, hi = float(both.min()), float(both.max())
    integral = bool(np.all(np.floor(both) == both))
    scale = LINEAR
    if kind != TIMESTAMP and integral and hi - lo + 1 <= 2 * DISPLAY_BINS:
        edges = np.arange(lo, hi + 2) - 0.5
        labels = tuple(compact(lo + i) for i in range(len(edges) - 1))
    else:
        if hi == lo:
            hi = lo + 1.0
        if integral and kind != TIMESTAMP:
            width = math.ceil((hi - lo + 1) / DISPLAY_BINS)
            edges = lo + width * np.arange(DISPLAY_BINS + 1)
        else:
            edges = np.linspace(lo, hi, DISPLAY_BINS + 1)
        counts, _ = np.histogram(both, bins=edges)
        if kind != TIMESTAMP and lo >= 0 and counts.max() > SKEWED_SHARE * len(both):
            edges, scale = log_edges(lo, hi), LOG
            labels = tuple(_range_label(a, b, integral) for a, b in zip(edges[:-1], edges[1:]))
        elif kind == TIMESTAMP:
            labels = tuple(date_label(float(e), hi - lo) for e in edges[:-1])
        else:
            labels = tuple(compact(float(e)) for e in edges[:-1])
    rc, _ = np.histogram(ref, bins=edges)
    cc, _ = np.histogram(cur, bins=edges)
    if any(nulls):
        labels, rc, cc = (*labels, NULL_BIN), np.append(rc, nulls[0]), np.append(cc, nulls[1])
    return Histogram(labels, tuple((rc / max(rc.sum(), 1)).tolist()), tuple((cc / max(cc.sum(), 1)).tolist()), scale)


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
        if k in (NUMERIC, TIMESTAMP):
            psi = psi_numeric(ref, cur, bins=th.bins, eps=eps, null_counts=(ref_null, cur_null))
            if ref and cur:
                ks_d, ks_p = ks_2samp(ref, cur)
            hist = display_numeric(np.asarray(ref, dtype=float), np.asarray(cur, dtype=float), k, (ref_null, cur_null))
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


def timestamp_features(view: View, schema: EventSchema | None) -> list[str]:
    """The view's timestamp-valued features (``MAX``/``MIN``/``LAST`` of a timestamp field)."""
    if not isinstance(view, FeatureView):
        return []
    return [f for f in view.feature_names if feature_type(view, f, schema) == "timestamp"]


def compare(reference: Any, current: Any, *, view: View | None = None, features: Sequence[str] | None = None,
            thresholds: Mapping[str, DriftThreshold] | None = None, default: DriftThreshold | None = None,
            kinds: Mapping[str, str] | None = None, eps: float = DEFAULT_EPS,
            reference_name: str = "reference", current_name: str = "current",
            left_out: Mapping[str, str] | None = None) -> DriftReport:
    """Drift of each feature between two frames (pandas, Arrow or row dicts). Features: ``features``, else
    the view's features present in either frame, else the columns common to both; minus ``left_out``
    (feature -> why, listed in the report) unless named in ``features``. Never raises."""
    name = view.name if view is not None else "-"
    skipped = dict(left_out or {})

    def compute() -> DriftReport:
        ref, cur = to_pandas(reference), to_pandas(current)
        if features is not None:
            names = list(features)
        elif view is not None:
            names = [f for f in view.feature_names if f in ref.columns or f in cur.columns]
        else:
            names = [c for c in ref.columns if c in cur.columns and not str(c).startswith("__")]
        shown_left_out = tuple((f, skipped[f]) for f in names if f in skipped and features is None)
        names = [f for f in names if features is not None or f not in skipped]
        out = []
        for f in names:
            th = (thresholds or {}).get(f, default or DriftThreshold())
            if f not in ref.columns or f not in cur.columns:
                side = "reference" if f not in ref.columns else "current"
                out.append(FeatureDrift(f, "-", ERROR, threshold=th, detail=f"column missing in the {side}"))
                continue
            out.append(feature_drift(f, ref[f], cur[f], th, (kinds or {}).get(f), eps))
        return DriftReport(name, tuple(out), reference_name, current_name, shown_left_out)

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
