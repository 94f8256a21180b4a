"""Shared pytest configuration. Service and engine fixtures live in tests/fixtures/ as plugins."""

import os

from hypothesis import HealthCheck, settings

pytest_plugins = [
    "tests.fixtures.services",  # Kafka + Redis via testcontainers (images built locally), loopback only
    "tests.fixtures.engines",  # one PyFlink MiniCluster env and one Spark local[2] session per test session
]

# CI runs property tests derandomized (the same examples every run), so a red CI is reproducible;
# locally they explore new examples each run. `HYPOTHESIS_PROFILE=explore` forces exploration in CI too.
settings.register_profile("ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "explore"))
