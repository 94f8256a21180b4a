"""The drift report's axes (issue 26): percentages stop at 100% with 1/2/2.5/5 steps, skewed counts get log-spaced
bins (more than one visible bar), timestamps are left out by default and get dates when named, the report lands
under the state folder."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from skewless.cli import main
from skewless.config import PROJECT_ROOT
from skewless.core.repo import load_repository
from skewless.monitoring import drift
from skewless.monitoring.report_html import histogram_svg, render_html, y_ticks

REPO = str(PROJECT_ROOT / "feature_defs")


def test_y_ticks_are_round_and_stop_at_100_percent():
    assert y_ticks(0.82) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert y_ticks(1.0)[-1] == 1.0 and y_ticks(0.999)[-1] == 1.0
    assert y_ticks(0.36) == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert y_ticks(0.25) == [0.0, 0.05, 0.1, 0.15, 0.2, 0.25]
    assert y_ticks(0.003) == [0.0, 0.001, 0.002, 0.003]
    for top in np.linspace(0.001, 1.0, 400):
        ticks = y_ticks(float(top))
        assert ticks[-1] >= top - 1e-12 and ticks[-1] <= 1.0 and len(ticks) <= 6


def test_svg_axis_labels():
    svg = histogram_svg(drift.Histogram(("a", "b"), (0.5, 0.5), (0.95, 0.05)))
    assert re.findall(r'class="ytick"[^>]*>([^<]+)<', svg) == ["0%", "20%", "40%", "60%", "80%", "100%"]
    assert 'width="100%"' not in svg and 'class="chart"' in svg  # sized by CSS: the card's width


def test_skewed_counts_get_log_bins_with_several_visible_bars():
    rng = np.random.default_rng(1)
    ref = np.where(rng.random(3000) < 0.3, 0, rng.lognormal(9, 1.5, 3000)).round()
    hist = drift.display_numeric(ref, (ref * 1.3).round())
    assert hist.scale == drift.LOG
    assert hist.labels[:4] == ("0", "1", "2–4", "5–9")
    visible = [r for r in hist.reference if r >= 0.02]
    assert len(visible) >= 5
    assert sum(hist.reference) == 1.0 or abs(sum(hist.reference) - 1.0) < 1e-9
    small = drift.display_numeric(np.array([0, 1, 1, 2, 3.0]), np.array([0, 0, 1.0]))
    assert small.scale == drift.LINEAR and small.labels == ("0", "1", "2", "3")


def test_log_edges_and_compact_labels():
    assert drift.log_edges(0, 5000).tolist() == [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
    assert drift.log_edges(3.2, 17).tolist() == [2, 5, 10, 20]
    assert drift.compact(999_999) == "1M" and drift.compact(1_500) == "1.5k" and drift.compact(12) == "12"


def test_timestamps_are_left_out_by_default_and_shown_as_dates_when_named(tmp_path, capsys):
    repo = load_repository(REPO)
    view = repo.view("user_order_stats")
    assert drift.timestamp_features(view, repo.try_schema(view.source.schema)) == ["last_order_ts"]
    day = 86_400_000
    ref = pd.DataFrame({"last_order_ts": 1796515200000 - np.arange(100) * day, "user_orders_last_1h": np.arange(100) % 3})
    cur = ref.assign(last_order_ts=ref.last_order_ts + 3 * day)
    ref.to_parquet(tmp_path / "r.parquet")
    cur.to_parquet(tmp_path / "c.parquet")
    args = ["monitor", "drift", "--repo", REPO, "--view", "user_order_stats", "--reference", str(tmp_path / "r.parquet"),
            "--current", str(tmp_path / "c.parquet"), "--html", str(tmp_path / "d.html")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "left out: last_order_ts (a timestamp: it drifts by construction" in out
    assert "last_order_ts" not in out.split("left out:")[0]
    assert "Left out of drift" in (tmp_path / "d.html").read_text()
    main([*args, "--feature", "last_order_ts"])
    html = (tmp_path / "d.html").read_text()
    labels = re.findall(r'class="xtick"[^>]*>([^<]+)<', html)
    assert labels and all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", label) for label in labels), labels
    assert "G<" not in html


def test_report_goes_under_the_state_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SKEWLESS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    pd.DataFrame({"x": [1, 2, 3]}).to_parquet(tmp_path / "r.parquet")
    assert main(["monitor", "drift", "--reference", "r.parquet", "--current", "r.parquet"]) == 0
    report = tmp_path / "state" / "reports" / "drift-features.html"
    assert report.exists() and f"report: {report} (status ok)" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.html"))


def test_drift_needs_files_or_the_stack(capsys):
    assert main(["monitor", "drift", "--reference", "x.parquet"]) == 2
    assert main(["monitor", "drift", "--from-stack"]) == 2
    assert main(["monitor", "drift"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("skewless monitor drift: give --from-stack --view V")
    assert err[1] == "skewless monitor drift: --from-stack needs --view (the view whose features to compare)"


def test_render_html_lists_left_out_features():
    report = drift.DriftReport("v", (), left_out=(("ts", "a timestamp"),))
    assert "<li>ts: a timestamp</li>" in render_html(report)


def test_psi_sees_drift_from_a_reference_of_few_values():
    """Counts that are mostly 0 in the reference (orders in the last hour at training instants) against served
    counts of 1-2: quantile bins merged 0 and 1 with everything above (PSI 0 while KS D was 0.56)."""
    ref, cur = [0] * 96 + [1] * 4, [0] * 40 + [1] * 40 + [2] * 20
    assert drift.quantile_edges(ref, 10).tolist() == [0.0, 1.0, np.nextafter(1.0, 2.0)]
    assert drift.psi_numeric(ref, cur) > 0.25
    assert drift.psi_numeric(ref, ref) == 0.0
    assert drift.quantile_edges([0] * 10, 10).tolist() == [0.0, np.nextafter(0.0, 1.0)]
    # many distinct values but 95% zeros (the tour's training set): the deciles are all 0; 0 gets its own bin
    ref = [0] * 950 + list(range(1, 51))
    cur = [0] * 400 + list(range(1, 601))
    assert drift.quantile_edges(ref, 10).tolist() == [0.0, np.nextafter(0.0, 1.0)]
    assert drift.psi_numeric(ref, cur) > 0.25


def test_nulls_get_their_own_bar():
    """A training set whose values are all null (incomplete) against served values: the (null) bar shows why."""
    report = drift.feature_drift("x", pd.Series([None] * 10, dtype="Int64"), pd.Series([1, 2, 2, None]))
    hist = report.histogram
    assert hist.labels == ("(null)",) or hist.labels[-1] == "(null)"
    assert hist.reference[-1] == 1.0 and hist.current[-1] == 0.25
    assert abs(sum(hist.current) - 1.0) < 1e-9


def test_drift_from_the_stack_without_redis_is_one_line(capsys, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["monitor", "drift", "--from-stack", "--view", "user_order_stats", "--repo", REPO,
                 "--redis-url", f"redis://127.0.0.1:{port}/0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("skewless monitor drift: Redis unreachable (")
