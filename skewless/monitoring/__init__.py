"""Monitoring on the feature definitions: freshness SLAs, data quality, drift, online/offline consistency.

Entry points for other components (each never raises into the caller; failures come back as status
``error`` with the reason):

- materialization gate: :func:`quality.check_spark` / :func:`quality.check_dataframe`,
  :func:`quality.store_results`, :func:`quality.gate`;
- Prometheus: :func:`prometheus.render` (text body, :data:`prometheus.CONTENT_TYPE`);
- freshness: :func:`freshness.freshness` (the staleness rule it applies is :mod:`skewless.core.staleness`, which readers use too);
- drift: :func:`drift.compare` and :func:`report_html.write_html`;
- consistency: :func:`consistency.check_consistency`;
- read-path sampling: :class:`sampling.ValueSampler`.

See docs/monitoring.md.
"""

from skewless.monitoring.common import ALERT, ERROR, FAILED, MISSING, OK, STALE, WARN

__all__ = ["ALERT", "ERROR", "FAILED", "MISSING", "OK", "STALE", "WARN"]
