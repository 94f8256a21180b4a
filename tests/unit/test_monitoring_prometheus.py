"""Prometheus text exposition of the monitoring figures and the stdlib exporter."""

from __future__ import annotations

import urllib.request

import pandas as pd

from skewless.monitoring import prometheus
from skewless.monitoring.consistency import ConsistencyReport, FeatureConsistency
from skewless.monitoring.drift import compare
from skewless.monitoring.freshness import FreshnessRow
from skewless.monitoring.quality import CheckReport, CheckResult

ROWS = [
    FreshnessRow("user_order_stats", 1, "stream", 300_000, 42_500, "ok"),
    FreshnessRow("user_order_stats", 1, "batch", 111_600_000, None, "missing", "no batch run"),
    FreshnessRow("customer_profile", 1, "view", None, None, "error", 'ConnectionError: "refused"\nline2'),
]


def test_freshness_exposition():
    text = prometheus.render(freshness=ROWS)
    lines = text.splitlines()
    assert "# TYPE skewless_view_freshness_lag_seconds gauge" in lines
    assert 'skewless_view_freshness_lag_seconds{part="stream",version="1",view="user_order_stats"} 42.5' in lines
    assert 'skewless_view_freshness_sla_seconds{part="stream",version="1",view="user_order_stats"} 300' in lines
    assert 'skewless_view_freshness_breach{part="batch",version="1",view="user_order_stats"} 1' in lines
    assert 'skewless_view_freshness_status{part="batch",version="1",view="user_order_stats"} 3' in lines
    assert ('skewless_monitor_error{monitor="freshness",reason="ConnectionError: \\"refused\\"\\nline2",'
            'view="customer_profile"} 1') in lines
    assert not any(l.startswith("skewless_view_freshness_lag_seconds{part=\"batch\"") for l in lines)  # no lag: no sample
    assert text.endswith("\n")
    for line in lines:  # every sample line is "name{labels} value"
        if not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            float(value)
            assert name.startswith("skewless_")


def test_all_families_and_one_help_per_family():
    quality = CheckReport("r", "v", 1, 10, (CheckResult("not_null(x)", "x", "not_null", 2.0, False),))
    broken = CheckReport("r2", "w", 1, 0, (), error="boom")
    drift = compare(pd.DataFrame({"x": [1, 2, 3]}), pd.DataFrame({"x": [1, 2, 3]}))
    cons = ConsistencyReport("v", 4, (FeatureConsistency("x", 4, 1, 0),))
    text = prometheus.render(freshness=ROWS, quality=[quality, broken], drift=[drift], consistency=[cons],
                             extra={"skewless_sampled_values": 7})
    assert 'skewless_quality_check_passed{expectation="not_null(x)",version="1",view="v"} 0' in text
    assert 'skewless_drift_psi{feature="x",view="-"} 0' in text
    assert 'skewless_consistency_mismatch_rate{feature="x",view="v"} 0.25' in text
    assert "skewless_sampled_values 7" in text
    assert text.count("# TYPE skewless_monitor_error gauge") == 1
    assert 'monitor="quality"' in text and 'monitor="freshness"' in text
    assert prometheus.render() == ""


def test_exporter_serves_metrics_on_loopback():
    calls = []

    def collect():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("collector broke")
        return prometheus.render(freshness=ROWS[:1])

    server, thread = prometheus.serve_in_thread(collect, port=0)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
            assert resp.headers["Content-Type"] == prometheus.CONTENT_TYPE
            assert "skewless_view_freshness_lag_seconds" in resp.read().decode()
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
            assert 'skewless_monitor_error{monitor="exporter",reason="RuntimeError: collector broke"} 1' in resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
