"""The offline store both offline paths share (the batch job and training): the Iceberg tables of a view
(names, layouts, the runs log, raw-table reading and checks) and the Spark SQL of the contract's tiles.

- :mod:`skewless.offline.tables`: output table names/layouts, the runs log, raw-table checks;
- :mod:`skewless.offline.raw`: reading the raw table at a snapshot (by day, by added files);
- :mod:`skewless.offline.spark_compiler`: ViewPlan -> :class:`~skewless.offline.spark_compiler.SparkBatchJob`
  (SQL), :data:`~skewless.offline.spark_compiler.COMPILER_VERSION` and the run fingerprint.
"""
