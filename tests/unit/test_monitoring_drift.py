"""PSI and KS against hand-computed values; drift reports and thresholds; the HTML report is self-contained."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from skewless.monitoring import drift
from skewless.monitoring.drift import DriftThreshold, compare, feature_drift, ks_2samp, kolmogorov_q, parse_threshold
from skewless.monitoring.report_html import render_html


def test_psi_categorical_hand_computed():
    # reference a 50%, b 50%; current a 25%, b 75%
    ref = ["a"] * 50 + ["b"] * 50
    cur = ["a"] * 25 + ["b"] * 75
    # (0.25-0.5)*ln(0.25/0.5) + (0.75-0.5)*ln(0.75/0.5) = 0.25*ln2 + 0.25*ln1.5
    assert drift.psi_categorical(ref, cur, eps=0.0) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5), abs=1e-12)
    assert drift.psi_categorical(ref, cur, eps=0.0) == pytest.approx(0.274653, abs=1e-6)
    assert drift.psi_categorical(ref, ref, eps=0.0) == 0.0


def test_psi_numeric_quantile_bins_hand_computed():
    ref = list(range(1, 11))  # quartiles 3.25, 5.5, 7.75 -> counts 3, 2, 2, 3
    assert drift.quantile_edges(ref, 4).tolist() == [3.25, 5.5, 7.75]
    assert drift.bin_counts(ref, drift.quantile_edges(ref, 4)).tolist() == [3, 2, 2, 3]
    cur = [1, 2, 4, 4, 4, 6, 6, 8, 9, 10]  # counts 2, 3, 2, 3
    # (0.2-0.3)*ln(0.2/0.3) + (0.3-0.2)*ln(0.3/0.2) = 0.2*ln1.5
    assert drift.psi_numeric(ref, cur, bins=4, eps=0.0) == pytest.approx(0.2 * math.log(1.5), abs=1e-12)
    assert drift.psi_numeric(ref, cur, bins=4, eps=0.0) == pytest.approx(0.081093, abs=1e-6)


def test_value_on_an_edge_goes_to_the_bin_above():
    edges = np.array([3.25, 5.5, 7.75])
    assert drift.bin_counts([5.5, 5.4999, 7.75], edges).tolist() == [0, 1, 1, 1]


def test_psi_smoothing_keeps_an_empty_bin_finite():
    eps = 1e-4
    r = [(1.0 + eps) / (1 + 2 * eps), eps / (1 + 2 * eps)]  # counts 10, 0
    c = [(0.5 + eps) / (1 + 2 * eps)] * 2  # counts 5, 5
    expected = sum((ci - ri) * math.log(ci / ri) for ri, ci in zip(r, c))
    assert drift.psi_from_counts([10, 0], [5, 5], eps=eps) == pytest.approx(expected, rel=1e-12)
    assert 4.5 < expected < 4.7  # 0.3465 + 4.2579
    assert math.isinf(drift.psi_from_counts([10, 0], [5, 5], eps=0.0))


def test_psi_numeric_null_bin():
    # reference 4 values (2 bins of 2) + no nulls; current same values + 4 nulls -> fractions 0.25, 0.25, 0.5
    ref, cur = [1, 2, 3, 4], [1, 2, 3, 4]
    r = drift.smoothed([2, 2, 0], 1e-4)
    c = drift.smoothed([2, 2, 4], 1e-4)
    expected = float(np.sum((c - r) * np.log(c / r)))
    assert drift.psi_numeric(ref, cur, bins=2, null_counts=(0, 4)) == pytest.approx(expected)


def test_ks_hand_computed():
    d, p = ks_2samp([1, 2, 3, 4], [3, 4, 5, 6])
    assert d == 0.5  # ECDFs differ by 0.5 at x = 2, 3, 4
    en = math.sqrt(4 * 4 / 8)
    lam = (en + 0.12 + 0.11 / en) * 0.5
    expected = 2 * sum((-1) ** (j - 1) * math.exp(-2 * j * j * lam * lam) for j in range(1, 50))
    assert p == pytest.approx(expected, rel=1e-9)
    assert ks_2samp([1, 2, 3], [1, 2, 3]) == (0.0, 1.0)
    assert ks_2samp([1, 2, 3], [10, 11])[0] == 1.0


def test_kolmogorov_critical_value():
    assert kolmogorov_q(1.3581) == pytest.approx(0.05, abs=1e-4)  # the classic 5% critical value
    assert kolmogorov_q(0.1) == 1.0


def test_ks_against_scipy_if_installed():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 400), rng.normal(0.2, 1, 300)
    res = stats.ks_2samp(a, b, method="asymp")
    d, p = ks_2samp(a, b)
    assert d == pytest.approx(res.statistic)
    assert p == pytest.approx(res.pvalue, abs=0.02)


def test_feature_drift_statuses_and_thresholds():
    ref = pd.Series(["a"] * 50 + ["b"] * 50)
    cur = pd.Series(["a"] * 25 + ["b"] * 75)
    assert feature_drift("s", ref, cur).status == "alert"  # psi 0.2747 >= 0.25
    assert feature_drift("s", ref, cur, DriftThreshold(psi_warn=0.2, psi_alert=0.5)).status == "warn"
    assert feature_drift("s", ref, cur, DriftThreshold(psi_warn=0.3, psi_alert=0.5)).status == "ok"
    num = feature_drift("x", pd.Series(range(100)), pd.Series(range(100)), DriftThreshold(ks_alert=0.1))
    assert (num.kind, num.status, num.psi, num.ks_d) == ("numeric", "ok", 0.0, 0.0)
    shifted = feature_drift("x", pd.Series(range(100)), pd.Series(range(50, 150)), DriftThreshold(psi_alert=99, psi_warn=98, ks_alert=0.4))
    assert shifted.status == "alert" and shifted.ks_d == pytest.approx(0.5)


def test_compare_frames_with_nulls_missing_columns_and_errors():
    ref = pd.DataFrame({"n": [1, 2, 3, None], "c": ["x", "y", None, "x"], "only_ref": [1, 2, 3, 4]})
    cur = pd.DataFrame({"n": [1, 2, 3, 4], "c": ["x", "y", "y", "x"]})
    rep = compare(ref, cur, features=["n", "c", "only_ref"])
    by = {f.feature: f for f in rep.features}
    assert by["n"].kind == "numeric" and by["n"].null_rate_reference == 0.25 and by["n"].null_rate_current == 0.0
    assert by["c"].kind == "categorical" and by["c"].psi > 0
    assert by["only_ref"].status == "error" and "missing in the current" in by["only_ref"].detail
    assert rep.status == "error"
    assert "only_ref" in rep.render()
    broken = compare(object(), cur)
    assert broken.status == "error" and "TypeError" in broken.features[0].detail
    empty = feature_drift("n", pd.Series([], dtype=float), pd.Series([1.0]))
    assert empty.status == "error" and "reference" in empty.detail


def test_parse_threshold():
    assert parse_threshold("f=0.2,0.4") == ("f", DriftThreshold(0.2, 0.4, None))
    assert parse_threshold("f=0.2,0.4,0.3") == ("f", DriftThreshold(0.2, 0.4, 0.3))
    with pytest.raises(ValueError):
        parse_threshold("f=0.2")


def test_html_report_is_self_contained():
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"amount": rng.normal(100, 10, 500), "seg": rng.choice(["a", "b", "<c>"], 500)})
    cur = pd.DataFrame({"amount": rng.normal(110, 10, 300), "seg": rng.choice(["a", "b"], 300)})
    text = render_html(compare(ref, cur))
    assert text.count("<svg") == 2 and "&lt;c&gt;" in text
    for external in ("http://", "https://", "<script", "src=", "@import", "url("):
        assert external not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
