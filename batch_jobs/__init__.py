"""The batch path: feature view plans compiled to Spark SQL, run over the raw Iceberg tables.

- :mod:`skewless.offline` (shared with training): the Spark SQL of tiles, table names/layouts, the runs log,
  raw-table reading and checks.
- :mod:`batch_jobs.archive_gate`: a run waits for the archive to pass its cut-off.
- :mod:`batch_jobs.runner`: run days (daily tiles, serving rows), idempotent and resumable.
- :mod:`batch_jobs.backfill`: ``spark-submit batch_jobs/backfill.py --view V --start D --end D``.
- :mod:`batch_jobs.materialize`: serving rows -> Redis through :mod:`skewless.core.layout`.
- :mod:`batch_jobs.pit`: exact point-in-time values from daily tiles + the head day's offline events.

See docs/batch.md.
"""
