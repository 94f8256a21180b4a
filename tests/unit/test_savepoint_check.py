"""Refusing a savepoint the job cannot restore (streaming_jobs.savepoint): one line naming what and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from streaming_jobs.savepoint import IncompatibleSavepointError, check_restorable, local_path


def test_a_missing_savepoint_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(IncompatibleSavepointError) as err:
        check_restorable(str(tmp_path / "nowhere"), ["orders"], "user_order_stats")
    message = str(err.value)
    assert "\n" not in message and "no _metadata" in message
    assert "skewless submit user_order_stats --starting-offsets earliest" in message and "backfill" in message


def test_a_file_that_is_no_savepoint_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "_metadata").write_bytes(b"not a savepoint")
    with pytest.raises(IncompatibleSavepointError) as err:
        check_restorable(tmp_path.as_uri(), ["orders"])
    assert "\n" not in str(err.value) and "cannot be read" in str(err.value) and "--starting-offsets earliest" in str(err.value)


def test_only_local_pointers_are_read_here() -> None:
    assert local_path("file:///a/b") == Path("/a/b") and local_path("/a/b") == Path("/a/b")
    assert local_path("s3://bucket/flink/savepoints/x") is None
    check_restorable("s3://bucket/flink/savepoints/x", ["orders"])  # Flink refuses an unmappable one at restore
