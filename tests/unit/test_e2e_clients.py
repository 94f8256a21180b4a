"""Issue 19 item 2, the e2e harness's Redis client (`skewless parity`, `skewless demo`, the fault tests): it connects
as every other client, with the configured timeouts (before: none, so a hung Redis blocked `skewless parity`)."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_the_e2e_redis_client_has_the_configured_timeouts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from skewless.e2e.pipeline import Targets

    monkeypatch.setenv("SKEWLESS_REDIS_TIMEOUT_S", "1.5")
    monkeypatch.setenv("SKEWLESS_REDIS_CONNECT_TIMEOUT_S", "0.5")
    client = Targets("b:1", "redis://127.0.0.1:1/0", tmp_path / "c.db", tmp_path / "wh").redis()
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 1.5 and kwargs["socket_connect_timeout"] == 0.5, kwargs
