"""Prometheus text exposition (format 0.0.4) of the monitoring figures, and a tiny stdlib exporter.

The HTTP feature server reuses :func:`render`: ``body = render(freshness=rows)`` served with
:data:`CONTENT_TYPE`. Every family is a gauge; a monitor that failed shows up as
``skewless_monitor_error{monitor=...,view=...} 1``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable, Mapping

from skewless.config import HOST
from skewless.monitoring.common import ERROR, describe, log

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_STATUS_CODES = {"ok": 0, "warn": 1, "stale": 2, "missing": 3, "alert": 2, "failed": 2, "error": 4}


@dataclass
class Family:
    """One metric family: name, help, type and samples ``(labels, value)``."""

    name: str
    help: str
    type: str = "gauge"
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float | int | bool | None, **labels: object) -> None:
        if value is None:
            return
        self.samples.append(({k: str(v) for k, v in labels.items()}, float(value)))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)


def exposition(families: Iterable[Family]) -> str:
    """Families as text exposition; families without samples are left out."""
    lines: list[str] = []
    for fam in families:
        if not fam.samples:
            continue
        lines.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        for labels, value in fam.samples:
            text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(labels.items()))
            lines.append(f"{fam.name}{{{text}}} {_value(value)}" if text else f"{fam.name} {_value(value)}")
    return "\n".join(lines) + ("\n" if lines else "")


def freshness_families(rows: Iterable) -> list[Family]:
    """From :class:`skewless.monitoring.freshness.FreshnessRow` s."""
    lag = Family("skewless_view_freshness_lag_seconds", "Age of the newest data served for a view part (now - newest applied event / cut-off / snapshot).")
    sla = Family("skewless_view_freshness_sla_seconds", "Freshness SLA of a view part.")
    breach = Family("skewless_view_freshness_breach", "1 when the view part is stale or missing, else 0.")
    status = Family("skewless_view_freshness_status", "Status code: 0 ok, 1 warn, 2 stale, 3 missing, 4 error.")
    written = Family("skewless_view_progress_age_seconds", "Stream part: now - the streaming job's last progress write.")
    dropped = Family("skewless_stream_records_dropped", "Stream part: records of a source partition dropped, per reason "
                     "(malformed, future, late: dead-lettered; duplicate: copies), exact at the partition's progress offset.")
    entries = Family("skewless_stream_dedup_entries", "Stream part: live de-duplication entries of a source partition.")
    err = Family("skewless_monitor_error", "1 when a monitor failed and reports itself instead of a figure.")
    for r in rows:
        labels = dict(view=r.view, version=r.version, part=r.part)
        for partition, name, n in r.counters:
            if name == "dedup_entries":
                entries.add(n, view=r.view, version=r.version, source=r.source, partition=partition)
            else:
                dropped.add(n, view=r.view, version=r.version, source=r.source, partition=partition, reason=name)
        if r.status == ERROR:
            err.add(1, monitor="freshness", view=r.view, reason=r.detail)
            continue
        lag.add(None if r.lag_ms is None else r.lag_ms / 1000.0, **labels)
        sla.add(None if r.sla_ms is None else r.sla_ms / 1000.0, **labels)
        breach.add(1 if r.breach else 0, **labels)
        status.add(_STATUS_CODES.get(r.status, 4), **labels)
        written.add(None if r.progress_age_ms is None else r.progress_age_ms / 1000.0, **labels)
    return [lag, sla, breach, status, written, dropped, entries, err]


def quality_families(reports: Iterable) -> list[Family]:
    """From :class:`skewless.monitoring.quality.CheckReport` s."""
    passed = Family("skewless_quality_check_passed", "1 when the expectation passed on the latest checked frame.")
    observed = Family("skewless_quality_check_observed", "Observed figure of the expectation (violations or null rate).")
    rows = Family("skewless_quality_rows_checked", "Rows in the latest checked frame.")
    err = Family("skewless_monitor_error", "1 when a monitor failed and reports itself instead of a figure.")
    for rep in reports:
        if rep.error:
            err.add(1, monitor="quality", view=rep.view, reason=rep.error)
            continue
        rows.add(rep.rows, view=rep.view, version=rep.version)
        for r in rep.results:
            labels = dict(view=rep.view, version=rep.version, expectation=r.expectation)
            passed.add(1 if r.passed else 0, **labels)
            observed.add(r.observed, **labels)
    return [passed, observed, rows, err]


def drift_families(reports: Iterable) -> list[Family]:
    """From :class:`skewless.monitoring.drift.DriftReport` s."""
    psi = Family("skewless_drift_psi", "Population stability index of a feature, reference vs served.")
    ks = Family("skewless_drift_ks_statistic", "Two-sample KS statistic D of a numeric feature.")
    status = Family("skewless_drift_status", "0 ok, 1 warn, 2 alert, 4 error.")
    for rep in reports:
        for f in rep.features:
            labels = dict(view=rep.view, feature=f.feature)
            psi.add(f.psi, **labels)
            ks.add(f.ks_d, **labels)
            status.add(_STATUS_CODES.get(f.status, 4), **labels)
    return [psi, ks, status]


def consistency_families(reports: Iterable) -> list[Family]:
    """From :class:`skewless.monitoring.consistency.ConsistencyReport` s."""
    rate = Family("skewless_consistency_mismatch_rate", "Share of logged online values that differ from the offline recompute at the same T (0 when correct).")
    compared = Family("skewless_consistency_compared", "Logged values compared in the latest consistency run.")
    err = Family("skewless_monitor_error", "1 when a monitor failed and reports itself instead of a figure.")
    for rep in reports:
        if rep.error:
            err.add(1, monitor="consistency", view=rep.view, reason=rep.error)
            continue
        for f in rep.features:
            rate.add(f.mismatch_rate, view=rep.view, feature=f.feature)
            compared.add(f.compared, view=rep.view, feature=f.feature)
    return [rate, compared, err]


def _merge(families: Iterable[Family]) -> list[Family]:
    by_name: dict[str, Family] = {}
    for fam in families:
        if fam.name in by_name:
            by_name[fam.name].samples.extend(fam.samples)
        else:
            by_name[fam.name] = Family(fam.name, fam.help, fam.type, list(fam.samples))
    return list(by_name.values())


def render(freshness: Iterable = (), quality: Iterable = (), drift: Iterable = (), consistency: Iterable = (),
           extra: Mapping[str, float] | None = None) -> str:
    """All given monitoring figures as one Prometheus text body. ``extra``: name -> value gauges."""
    fams = [*freshness_families(freshness), *quality_families(quality), *drift_families(drift),
            *consistency_families(consistency)]
    for name, value in (extra or {}).items():
        f = Family(name, name)
        f.add(value)
        fams.append(f)
    return exposition(_merge(fams))


class _Handler(BaseHTTPRequestHandler):
    collect: Callable[[], str] = staticmethod(lambda: "")  # type: ignore[assignment]

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404, "only /metrics")
            return
        try:
            body = self.collect()
        except Exception as exc:  # noqa: BLE001 - the exporter reports, never dies
            body = exposition([Family("skewless_monitor_error", "1 when a monitor failed.",
                                      samples=[({"monitor": "exporter", "reason": describe(exc)}, 1.0)])])
        data = body.encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        log.debug("exporter: " + format, *args)


def make_server(collect: Callable[[], str], port: int = 0, host: str = HOST) -> ThreadingHTTPServer:
    """An HTTP server answering ``GET /metrics`` with ``collect()`` (loopback by default; port 0 = free)."""
    handler = type("MetricsHandler", (_Handler,), {"collect": staticmethod(collect)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve_in_thread(collect: Callable[[], str], port: int = 0, host: str = HOST) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Start :func:`make_server` in a daemon thread; stop with ``server.shutdown(); server.server_close()``."""
    server = make_server(collect, port, host)
    thread = threading.Thread(target=server.serve_forever, name="skewless-metrics", daemon=True)
    thread.start()
    return server, thread
