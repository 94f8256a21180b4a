"""Shared pytest configuration. Service and engine fixtures live in tests/fixtures/ as plugins."""

pytest_plugins = [
    "tests.fixtures.services",  # Kafka + Redis via testcontainers (images built locally), loopback only
    "tests.fixtures.engines",  # one PyFlink MiniCluster env and one Spark local[2] session per test session
]
