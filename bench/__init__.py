"""Benchmarks (`make bench`). Each module ``bench/<name>.py`` exposes ``run() -> dict`` mapping stable metric
names to ``{"value": x, "unit": "...", "peer": {...} | "floor": {...}, ...}``. Benchmarks measure; tests assert.
"""
