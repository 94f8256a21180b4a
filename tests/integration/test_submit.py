"""`skewless submit` against a real Flink session cluster (issue 26): while the view's job runs, a second submit
is refused naming that job and starts nothing; `--replace` cancels it before the new one starts. A private
`skewless stack up` (free ports, temp state dir) as in the fault tests."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.faults.conftest import stack  # noqa: F401 (the module-scoped private stack fixture)
from tests.faults.harness import Stack, flink

pytestmark = pytest.mark.integration

JOB_NAME = "skewless-stream-user_order_stats"


def active_stream_jobs(stack: Stack) -> list[dict[str, Any]]:
    from skewless.commands.jobs import ACTIVE_STATES

    return [j for j in flink(stack).list_jobs() if j["name"] == JOB_NAME and j["state"] in ACTIVE_STATES]


def submitted_job_id(stdout: str) -> str:
    match = re.search(r"-> Flink job ([0-9a-f]{32})", stdout)
    assert match, stdout
    return match.group(1)


def test_a_second_submit_is_refused_and_replace_cancels_the_running_job(stack: Stack) -> None:  # noqa: F811
    first = stack.cli("submit", "user_order_stats", "--starting-offsets", "latest", timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    old = submitted_job_id(first.stdout)
    assert flink(stack).wait_job(old, ("RUNNING",), timeout_s=180) == "RUNNING"

    again = stack.cli("submit", "user_order_stats", timeout=120)
    assert again.returncode == 2, again.stdout + again.stderr
    (line,) = again.stderr.splitlines()
    assert line.startswith("skewless submit: error: ") and "Traceback" not in again.stderr
    assert f"Flink job {old} '{JOB_NAME}' (RUNNING since " in line and "--replace" in line, line
    assert [j["jid"] for j in active_stream_jobs(stack)] == [old]  # nothing new started

    replaced = stack.cli("submit", "user_order_stats", "--starting-offsets", "latest", "--replace", timeout=600)
    assert replaced.returncode == 0, replaced.stdout + replaced.stderr
    assert f"cancelling Flink job {old} '{JOB_NAME}'" in replaced.stdout and "not stop-with-savepoint" in replaced.stdout
    new = submitted_job_id(replaced.stdout)
    assert new != old and flink(stack).job_state(old) == "CANCELED"
    assert [j["jid"] for j in active_stream_jobs(stack)] == [new]
    flink(stack).cancel_job(new)
