"""End to end: the consistency proof (:mod:`skewless.e2e.parity`) and the demo (:mod:`skewless.e2e.demo`).

Nothing here computes a feature: every value comes from the real pipeline (Kafka, the Flink job, Redis,
the archive, Spark, the training engines) or from the contract's oracle (:mod:`skewless.core.oracle`).
"""
