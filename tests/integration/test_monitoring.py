"""Monitoring against real services: freshness from Redis, quality in Spark stored in Iceberg, and the
drift report rendered by a real headless browser (Debian's chromium) to a PNG."""

from __future__ import annotations

import json
import struct
import subprocess
import time
import urllib.request
import zlib
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skewless import Agg, Aggregation, Entity, EventSource, Expectation, FeatureView, Field, SnapshotView, TableSource, Window
from skewless.core import layout
from skewless.core.timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE

pytestmark = pytest.mark.integration

P = "mon"
USER = Entity("user", {"user_id": "string"})
ORDERS = EventSource("orders", "orders", "raw.orders", topic="orders")
VIEW = FeatureView(
    "stats", USER, ORDERS,
    [Aggregation("n_1h", Agg.COUNT, None, Window.hours(1)),
     Aggregation("ltv", Agg.SUM, "amount", Window.days(365)),
     Aggregation("status", Agg.LAST, "status", Window.lifetime())],
    freshness_sla=timedelta(minutes=5),
    expectations=[Expectation.not_null("n_1h"), Expectation.range("n_1h", min=0, max=10), Expectation.range("ltv", min=0),
                  Expectation.allowed_values("status", ["placed", "completed"]), Expectation.max_null_rate("ltv", 0.5)],
)
PROFILE = SnapshotView("profile", USER, TableSource("profiles", "crm.p", "p"), [Field("score", "int64")], ttl=timedelta(days=1),
                       freshness_sla=timedelta(hours=26))
CHROMIUM = "/usr/bin/chromium"


# --- freshness from a real Redis ---------------------------------------------------------------------------------


def test_freshness_from_redis(redis_client):
    from skewless.monitoring import prometheus
    from skewless.monitoring.freshness import freshness

    now = int(time.time() * 1000)
    today = now // MS_PER_DAY * MS_PER_DAY
    redis_client.set(layout.epoch_key(P), "E1")
    redis_client.hset(layout.view_meta_key(P, VIEW), mapping={"applied_from_ms": 0, "epoch": "E1"})
    redis_client.hset(layout.progress_key(P, "orders"), mapping={
        "p:0": json.dumps({"offset": 41, "max_event_ms": now - 90_000, "written_ms": now - 1_000, "epoch": "E1"}),
        "p:1": json.dumps({"offset": 7, "max_event_ms": now - 10 * MS_PER_MINUTE, "written_ms": now - 1_000, "epoch": "E1"}),
        # the job's offset check: partition 1 (quiet for 10 min) applied all it holds, partition 0 is behind
        "log_end": json.dumps({"checked_ms": now - 500, "partitions": {"0": [0, 50], "1": [0, 8]}}),
    })
    redis_client.hset(layout.entity_key(P, VIEW, ("u1",)),
                      mapping=layout.batch_fields({"cutoff": str(today), "run": "r1", "epoch": "E1"}))
    redis_client.hset(layout.entity_key(P, PROFILE, ("u1",)), layout.SNAPSHOT_FIELD,
                      layout.encode_snapshot(PROFILE, now - 30 * MS_PER_HOUR, None, {"score": 700}, "E1"))

    rows = freshness(redis_client, P, [VIEW, PROFILE], now=now)
    by = {(r.view, r.part): r for r in rows}
    assert by["stats", "stream"].status == "ok" and by["stats", "stream"].lag_ms == 90_000
    assert by["stats", "batch"].status == "ok" and by["stats", "batch"].lag_ms == now - today
    assert by["profile", "snapshot"].status == "stale" and by["profile", "snapshot"].lag_ms == 30 * MS_PER_HOUR

    redis_client.hset(layout.progress_key(P, "orders"), "p:0", json.dumps(
        {"offset": 42, "max_event_ms": now - 6 * MS_PER_MINUTE, "written_ms": now, "epoch": "E1"}))
    stream = freshness(redis_client, P, [VIEW], now=now)[0]
    assert (stream.status, stream.lag_ms) == ("stale", 6 * MS_PER_MINUTE)
    text = prometheus.render(freshness=freshness(redis_client, P, [VIEW, PROFILE], now=now))
    assert 'skewless_view_freshness_breach{part="stream",version="1",view="stats"} 1' in text
    assert 'skewless_view_freshness_lag_seconds{part="snapshot",version="1",view="profile"} 108000' in text


def test_cli_freshness_and_exporter(redis_url, redis_client, tmp_path, capsys):
    """`skewless monitor freshness` on the example repository against a real Redis, and the exporter."""
    from skewless.cli import main
    from skewless.config import PROJECT_ROOT

    repo = str(PROJECT_ROOT / "feature_defs")
    assert main(["monitor", "freshness", "--repo", repo, "--redis-url", redis_url, "--project", P]) == 1  # nothing yet
    out = capsys.readouterr().out
    assert "user_order_stats" in out and "missing" in out
    assert main(["monitor", "freshness", "--repo", repo, "--redis-url", redis_url, "--project", P, "--format", "prometheus"]) == 1
    assert "skewless_view_freshness_breach" in capsys.readouterr().out

    from skewless.monitoring import prometheus
    from skewless.monitoring.freshness import freshness
    from skewless.core.repo import load_repository

    views = load_repository(repo).views
    server, thread = prometheus.serve_in_thread(lambda: prometheus.render(freshness=freshness(redis_client, P, views)))
    try:
        host, port = server.server_address[:2]
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=30) as resp:
            body = resp.read().decode()
        assert 'skewless_view_freshness_status{part="stream",version="1",view="user_order_stats"} 3' in body
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- quality in Spark, results in Iceberg -------------------------------------------------------------------------


def test_spark_quality_matches_pandas_and_is_stored(spark, iceberg_catalog):
    from skewless.monitoring.quality import (
        check_dataframe,
        check_spark,
        gate,
        materialization_gate,
        read_results,
        store_results,
    )

    rows = pd.DataFrame({"user_id": ["a", "b", "c", "d"], "n_1h": [1, None, 11, 3], "ltv": [5.0, float("nan"), -2.0, None],
                         "status": ["placed", "lost", None, "completed"]})
    sdf = spark.createDataFrame([("a", 1, 5.0, "placed"), ("b", None, float("nan"), "lost"), ("c", 11, -2.0, None),
                                 ("d", 3, None, "completed")], "user_id string, n_1h long, ltv double, status string")
    report = check_spark(VIEW, sdf, run_id="run-1", day=date(2024, 1, 1))
    embedded = check_dataframe(VIEW, rows)
    assert report.rows == 4 and report.status == "failed"
    assert [(r.expectation, r.observed, r.passed) for r in report.results] == \
           [(r.expectation, r.observed, r.passed) for r in embedded.results]
    observed = {r.expectation: r.observed for r in report.results}
    assert observed["not_null(n_1h)"] == 1 and observed["range(n_1h, min=0, max=10)"] == 1
    assert observed["range(ltv, min=0)"] == 1 and observed["max_null_rate(ltv, 0.5)"] == 0.5  # NaN counts as null
    assert "'lost'" in next(r.detail for r in report.results if r.check == "allowed_values")
    assert gate(report, VIEW) is False

    assert store_results(iceberg_catalog, report)
    assert store_results(iceberg_catalog, check_spark(VIEW, sdf.limit(0), run_id="run-2"))
    stored = read_results(iceberg_catalog, "stats").sort_values(["run_id", "expectation"])
    assert set(stored["run_id"]) == {"run-1", "run-2"} and len(stored) == 10
    run1 = stored[stored["run_id"] == "run-1"]
    assert run1["passed"].tolist().count(False) == 4 and set(run1["day"].astype(str)) == {"2024-01-01"}
    # Spark reads the same table through the shared catalog
    assert spark.table("skewless.monitoring.quality_results").where("run_id = 'run-1'").count() == 5

    hook = materialization_gate(iceberg_catalog)  # the batch_jobs.materialize quality_gate hook
    assert hook(VIEW, date(2024, 1, 2), sdf.toArrow()) is False
    assert len(read_results(iceberg_catalog, "stats")) == 15

    broken = check_spark(VIEW, "not a dataframe")
    assert broken.status == "error" and gate(broken, VIEW) is True


# --- the HTML report in a real browser -------------------------------------------------------------------------------


def decode_png(data: bytes) -> np.ndarray:
    """Pixels (H, W, C) of an 8-bit, non-interlaced RGB/RGBA/gray PNG (what chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and interlace == 0 and color in (0, 2, 6), header
    bpp = {0: 1, 2: 3, 6: 4}[color]
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + width * bpp)
    out = np.zeros((height, width * bpp), dtype=np.uint8)
    prev = np.zeros(width * bpp, dtype=np.int32)
    for y in range(height):
        ftype, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if ftype == 0:
            cur = line
        elif ftype == 2:
            cur = (line + prev) & 0xFF
        elif ftype == 1:
            cur = (np.cumsum(line.reshape(width, bpp), axis=0) & 0xFF).reshape(-1)
        else:
            cur = np.zeros_like(line)
            for i in range(len(line)):
                a = cur[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                if ftype == 3:
                    cur[i] = (line[i] + (a + b) // 2) & 0xFF
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                    cur[i] = (line[i] + pred) & 0xFF
        out[y], prev = cur, cur
    return out.reshape(height, width, bpp)


def test_decode_png_roundtrip():
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 7
    rows = [bytes([0]) + pixels[0].tobytes(), bytes([2]) + ((pixels[1].astype(int) - pixels[0]) & 0xFF).astype(np.uint8).tobytes()]
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 3, 2, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")
    assert (decode_png(png) == pixels).all()


def _screenshot(html: Path, tmp_path: Path, height: int) -> np.ndarray:
    """RGB pixels of ``html`` rendered by headless chromium in a 1200 x ``height`` window."""
    png = tmp_path / (html.stem + ".png")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", f"--window-size=1200,{height}", html.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert png.exists(), f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    data = png.read_bytes()
    assert len(data) > 20_000, f"suspiciously small screenshot: {len(data)} bytes"
    pixels = decode_png(data)
    assert pixels.shape[:2] == (height, 1200)
    return pixels[..., :3].astype(np.int32)


def _mask(rgb: np.ndarray, color: str, tolerance: int = 6) -> np.ndarray:
    want = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
    return np.abs(rgb - want).sum(axis=-1) <= tolerance


def _longest_run(row: np.ndarray) -> int:
    best = run = 0
    for v in row:
        run = run + 1 if v else 0
        best = max(best, run)
    return best


def test_drift_report_renders_in_chromium(tmp_path: Path):
    """The report renders; its y axes run to at most 100% in round steps (never 27/55/82% or 110%), each
    chart spans its card, and a skewed count shows several bars (log-spaced bins), not one."""
    import re

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (infra/setup.sh must apt-get install chromium)")
    from skewless.cli import main
    from skewless.monitoring.report_html import CUR_COLOR, REF_COLOR

    rng = np.random.default_rng(3)
    ref = pd.DataFrame({"n_1h": rng.poisson(1.0, 1500), "ltv": rng.gamma(2, 5000, 1500).round(),
                        "status": rng.choice(["placed", "completed"], 1500)})
    cur = pd.DataFrame({"n_1h": rng.poisson(1.4, 600), "ltv": rng.gamma(2, 7000, 600).round(),
                        "status": rng.choice(["placed", "completed", "lost"], 600)})
    ref.to_parquet(tmp_path / "ref.parquet")
    cur.to_parquet(tmp_path / "cur.parquet")
    html = tmp_path / "report.html"
    code = main(["monitor", "drift", "--reference", str(tmp_path / "ref.parquet"), "--current", str(tmp_path / "cur.parquet"),
                 "--html", str(html), "--threshold", "n_1h=0.5,0.9"])
    assert code == 1 and html.exists()  # ltv and status drift past the alert threshold

    rgb = _screenshot(html, tmp_path, 1600)
    assert rgb.std() > 10, "screenshot is blank"
    for color in (REF_COLOR, CUR_COLOR):  # both series of bars are drawn
        share = _mask(rgb, color).mean()
        assert share > 0.005, f"{color} covers only {share:.4%} of the page"
    # y axes: round steps from 0, the top one the first at or above the tallest bar, never past 100%
    charts = re.findall(r"<svg[^>]*role=\"img\".*?</svg>", html.read_text())
    assert len(charts) == 3
    for svg in charts:
        ticks = [float(t) for t in re.findall(r'font-size="11" text-anchor="end"[^>]*>([0-9.]+)%<', svg)]
        assert ticks[0] == 0 and ticks[-1] <= 100, ticks
        step = ticks[1] - ticks[0]
        mantissa = step / 10 ** np.floor(np.log10(step))
        assert any(np.isclose(mantissa, m) for m in (1, 2, 2.5, 5)), ticks
        assert np.allclose(np.diff(ticks), step), ticks
    # every chart spans its card: its x axis line (#333, anti-aliased over two rows: any grey darker than the
    # #e3e3e3 grid) runs across most of the page, and the last bars reach its right side
    axis = (rgb < 200).all(axis=-1)
    spans = [_longest_run(row) for row in axis]
    assert sum(1 for s in spans if s >= 960) >= 3, f"longest axis lines: {sorted(spans)[-4:]} px of 1200"
    assert np.nonzero(_mask(rgb, CUR_COLOR).any(axis=0))[0].max() > 1020, "the bars stop short of the card's right side"

    # a skewed count (most users have 1-2 orders, a few thousands): several bars, not one
    orders = pd.DataFrame({"orders_365d": rng.zipf(1.8, 2000).clip(1, 20000)})
    orders.to_parquet(tmp_path / "orders.parquet")
    skewed = tmp_path / "skewed.html"
    main(["monitor", "drift", "--reference", str(tmp_path / "orders.parquet"), "--current", str(tmp_path / "orders.parquet"),
          "--html", str(skewed)])
    rgb = _screenshot(skewed, tmp_path, 800)
    bars = _mask(rgb, REF_COLOR)
    legend_rows = np.nonzero(bars.any(axis=1))[0][:14]  # the legend's swatch comes first, above the chart
    columns = bars[legend_rows[-1] + 20:].any(axis=0)
    n_bars = sum(1 for i in range(1, len(columns)) if columns[i] and not columns[i - 1]) + int(columns[0])
    assert n_bars >= 5, f"only {n_bars} reference bar(s) visible for a skewed count"
