"""The fault tests' module-scoped stack: each module starts its own `skewless stack up` (free ports, temp state
dir) and stops it afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.harness import Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("faults"))
    up = s.cli("stack", "up")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield s
    finally:
        s.cli("stack", "down")
