"""The batch path: feature view plans compiled to Spark SQL, run over the raw Iceberg tables.

- :mod:`batch_jobs.spark_compiler`: ViewPlan -> :class:`~batch_jobs.spark_compiler.SparkBatchJob` (SQL).
- :mod:`batch_jobs.tables`: output table names/layouts, the runs log, raw-table checks, archive gate.
- :mod:`batch_jobs.runner`: run days (daily tiles, serving rows), idempotent and resumable.
- :mod:`batch_jobs.backfill`: ``spark-submit batch_jobs/backfill.py --view V --start D --end D``.
- :mod:`batch_jobs.materialize`: serving rows -> Redis through :mod:`skewless.core.layout`.
- :mod:`batch_jobs.pit`: exact point-in-time values from daily tiles + the head day's offline events.

See docs/batch.md.
"""
