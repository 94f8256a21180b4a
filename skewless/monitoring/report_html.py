"""A self-contained HTML drift report: a summary table and, per feature, an inline SVG histogram of the
reference against the current values (no scripts, no external assets).

The y axis shows the share of each side's rows per bar, up to the next "nice" step (1, 2, 2.5 or 5 times a
power of ten) above the tallest bar, never past 100%; each chart scales to the width of its card."""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone

from skewless.monitoring.drift import LOG, DriftReport, FeatureDrift, Histogram

REF_COLOR = "#3b6fb6"
CUR_COLOR = "#e07b39"
STATUS_COLORS = {"ok": "#2e7d32", "warn": "#b7791f", "alert": "#c62828", "error": "#6a1b9a"}
W, H = 760, 250
PAD_L, PAD_R, PAD_T, PAD_B = 52, 12, 16, 62
MAX_TICKS = 5  # y-axis steps above 0

_CSS = """
body { font-family: 'DejaVu Sans', Arial, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px 0; } h2 { font-size: 17px; margin: 0 0 6px 0; }
p.meta { color: #555; margin: 0 0 16px 0; font-size: 13px; }
table { border-collapse: collapse; font-size: 13px; margin-bottom: 20px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f0f0f0; } td.name { text-align: left; font-weight: bold; }
.status { color: #fff; border-radius: 3px; padding: 1px 6px; font-weight: bold; }
section { border: 1px solid #ddd; border-radius: 6px; padding: 12px; margin-bottom: 16px; }
.stats { font-size: 13px; color: #444; margin-bottom: 6px; }
.legend span { display: inline-block; width: 12px; height: 12px; margin: 0 4px -2px 12px; }
svg.chart { display: block; width: 100%; height: auto; }
p.note { font-size: 12px; color: #555; margin: 4px 0 0 0; }
"""


def _badge(status: str) -> str:
    color = STATUS_COLORS.get(status, "#555")
    return f'<span class="status" style="background:{color}">{html.escape(status)}</span>'


def _fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def y_ticks(top: float) -> list[float]:
    """Fractions for the y axis from 0: a 1/2/2.5/5 x 10^k step, at most :data:`MAX_TICKS` steps, ending at
    the first step at or above ``top`` and never past 1.0 (100%)."""
    top = min(max(top, 1e-9), 1.0)
    exp = math.floor(math.log10(top / MAX_TICKS))
    step = next(m * 10.0 ** e for e in (exp, exp + 1) for m in (1, 2, 2.5, 5) if top / (m * 10.0 ** e) <= MAX_TICKS + 1e-9)
    count = math.ceil(top / step - 1e-9)
    return [min(round(i * step, 12), 1.0) for i in range(count + 1)]


def _pct(frac: float) -> str:
    return f"{round(frac * 100, 6):g}%"


def histogram_svg(hist: Histogram, title: str = "") -> str:
    """Grouped bars (reference, current) of the fractions per bin, with axes and labels."""
    n = len(hist.labels)
    if n == 0:
        return '<svg xmlns="http://www.w3.org/2000/svg" width="300" height="30"><text x="4" y="20">no values</text></svg>'
    ticks = y_ticks(max(max(hist.reference, default=0.0), max(hist.current, default=0.0)))
    top = ticks[-1]
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    slot = pw / n
    bar = max(slot * 0.4, 1.0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'role="img" aria-label="{html.escape(title)}">',
           f'<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>']
    for frac in ticks:  # horizontal grid and y labels
        y = PAD_T + ph - ph * frac / top
        out.append(f'<line x1="{PAD_L}" y1="{y:.1f}" x2="{W - PAD_R}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        out.append(f'<text class="ytick" x="{PAD_L - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
                   f'fill="#444">{_pct(frac)}</text>')
    every = max(1, -(-n // 20))
    for i, (label, r, c) in enumerate(zip(hist.labels, hist.reference, hist.current)):
        x0 = PAD_L + i * slot + (slot - 2 * bar) / 2
        for j, (v, color) in enumerate(((r, REF_COLOR), (c, CUR_COLOR))):
            h = ph * v / top
            out.append(f'<rect x="{x0 + j * bar:.1f}" y="{PAD_T + ph - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                       f'fill="{color}"><title>{html.escape(label)}: {"reference" if j == 0 else "current"} '
                       f'{v * 100:.1f}%</title></rect>')
        if i % every == 0:
            cx, cy = PAD_L + (i + 0.5) * slot, PAD_T + ph + 12
            text = html.escape(label if len(label) <= 14 else label[:13] + "…")
            out.append(f'<text class="xtick" x="{cx:.1f}" y="{cy:.1f}" font-size="10" fill="#333" text-anchor="end" '
                       f'transform="rotate(-40 {cx:.1f} {cy:.1f})">{text}</text>')
    out.append(f'<line x1="{PAD_L}" y1="{PAD_T + ph}" x2="{W - PAD_R}" y2="{PAD_T + ph}" stroke="#333"/>')
    out.append(f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{PAD_T + ph}" stroke="#333"/>')
    out.append("</svg>")
    return "".join(out)


def _section(f: FeatureDrift, ref_name: str, cur_name: str) -> str:
    stats = (f"kind {html.escape(f.kind)} · PSI {_fmt(f.psi)} (warn {f.threshold.psi_warn:g}, alert {f.threshold.psi_alert:g})"
             + (f" · KS D {_fmt(f.ks_d)}, p {_fmt(f.ks_p)}" if f.ks_d is not None else "")
             + f" · rows {f.n_reference} / {f.n_current}"
             + f" · nulls {_fmt(f.null_rate_reference, 3)} / {_fmt(f.null_rate_current, 3)}")
    legend = (f'<div class="legend"><span style="background:{REF_COLOR}"></span>{html.escape(ref_name)}'
              f'<span style="background:{CUR_COLOR}"></span>{html.escape(cur_name)}</div>')
    body = histogram_svg(f.histogram, f.feature) if f.histogram is not None else f"<p>{html.escape(f.detail)}</p>"
    if f.histogram is not None and f.histogram.scale == LOG:
        body += ('<p class="note">x axis: log-spaced bins (1, 2, 5, 10, ...): most values sit in a narrow range, '
                 "so equal-width bars would show one bar</p>")
    detail = f" — {html.escape(f.detail)}" if f.detail else ""
    return (f'<section id="f-{html.escape(f.feature)}"><h2>{html.escape(f.feature)} {_badge(f.status)}</h2>'
            f'<div class="stats">{stats}{detail}</div>{legend}{body}</section>')


def render_html(report: DriftReport, title: str | None = None) -> str:
    """The whole report as one HTML document (UTF-8, inline CSS and SVG)."""
    title = title or ("Drift report" if report.view in ("", "-") else f"Drift report: {report.view}")
    rows = "".join(
        f'<tr><td class="name"><a href="#f-{html.escape(f.feature)}">{html.escape(f.feature)}</a></td>'
        f"<td>{html.escape(f.kind)}</td><td>{f.n_reference}</td><td>{f.n_current}</td><td>{_fmt(f.psi)}</td>"
        f"<td>{_fmt(f.ks_d)}</td><td>{_fmt(f.ks_p)}</td><td>{_badge(f.status)}</td></tr>"
        for f in report.features
    )
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    sections = "".join(_section(f, report.reference_name, report.current_name) for f in report.features)
    left_out = "".join(f"<li>{html.escape(name)}: {html.escape(why)}</li>" for name, why in report.left_out)
    left_out = f'<p class="meta">Left out of drift:</p><ul class="meta">{left_out}</ul>' if left_out else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)} {_badge(report.status)}</h1>"
        f'<p class="meta">reference: {html.escape(report.reference_name)} · current: {html.escape(report.current_name)}'
        f" · generated {generated}</p>"
        "<table><tr><th>feature</th><th>kind</th><th>n ref</th><th>n cur</th><th>PSI</th><th>KS D</th><th>KS p</th>"
        f"<th>status</th></tr>{rows}</table>{left_out}{sections}</body></html>\n"
    )


def write_html(report: DriftReport, path: str, title: str | None = None) -> str:
    """Write the report to ``path`` (its folder is created)."""
    import os

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(render_html(report, title))
    return path
