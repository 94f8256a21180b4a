"""`skewless submit` while a job of the same view runs (issue 26): refused with the running job's id and name,
or, with --replace, that job is cancelled (and gone) before the new one is submitted. The Flink REST calls are
faked here (our decision logic); tests/integration/test_submit.py refuses against a real session cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from skewless.cli import main
from skewless.commands.submit import conflicting_jobs
from streaming_jobs.flink_compiler import views_of_stream_job as views_of_job

ROOT = Path(__file__).resolve().parents[2]
REPO = str(ROOT / "feature_defs")
JID = "0123456789abcdef0123456789abcdef"


def job(name: str, state: str = "RUNNING", jid: str = JID, start: int = 1_796_515_200_000) -> dict[str, Any]:
    return {"jid": jid, "name": name, "state": state, "start-time": start}


class FakeCluster:
    """The FlinkSessionCluster calls `submit` makes, recorded; cancelled jobs report CANCELED."""

    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs, self.calls = jobs, []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
        import skewless.stack.flink as flink
        import skewless.stack.kafka as kafka

        fake = self
        monkeypatch.setattr(kafka, "create_topics", lambda *a, **k: fake.calls.append(("create_topics",)))
        monkeypatch.setattr(flink.FlinkSessionCluster, "list_jobs", lambda self: [dict(j) for j in fake.jobs])
        monkeypatch.setattr(flink.FlinkSessionCluster, "cancel_job", lambda self, jid: fake.cancel(jid))
        monkeypatch.setattr(flink.FlinkSessionCluster, "wait_job",
                            lambda self, jid, states=("RUNNING",), timeout_s=180.0: fake.wait(jid, states, timeout_s))
        monkeypatch.setattr(flink.FlinkSessionCluster, "submit_python_job",
                            lambda self, script, args, **kw: fake.calls.append(("submit", list(args))) or "f" * 32)
        return self

    def cancel(self, jid: str) -> None:
        self.calls.append(("cancel", jid))
        for j in self.jobs:
            if j["jid"] == jid:
                j["state"] = "CANCELED"

    def wait(self, jid: str, states: tuple[str, ...], timeout_s: float) -> str:
        self.calls.append(("wait", jid, tuple(states)))
        assert timeout_s <= 300
        return next(j["state"] for j in self.jobs if j["jid"] == jid)


def test_views_of_a_job_name() -> None:
    assert views_of_job("skewless-stream-user_order_stats") == {"user_order_stats"}
    assert views_of_job("skewless-stream-a_b-c") == {"a_b", "c"}
    assert views_of_job("skewless-e2e-parity") == frozenset() and views_of_job("") == frozenset()


def test_conflicting_jobs_are_active_jobs_sharing_a_view() -> None:
    jobs = [job("skewless-stream-a-b", jid="1", start=2), job("skewless-stream-b", "RESTARTING", jid="2", start=1),
            job("skewless-stream-a", "CANCELED", jid="3"), job("skewless-stream-c", jid="4"),
            job("skewless-stream-ab", jid="5"), job("other-a", jid="6")]
    assert [j["jid"] for j in conflicting_jobs(jobs, ["a"])] == ["1"]
    assert [j["jid"] for j in conflicting_jobs(jobs, ["b"])] == ["2", "1"]  # oldest first
    assert conflicting_jobs(jobs, ["d"]) == []


@pytest.mark.parametrize("view", ["user_order_stats", "all"])
def test_submit_refuses_while_the_views_job_runs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                 view: str) -> None:
    fake = FakeCluster([job("skewless-stream-user_order_stats")]).install(monkeypatch)
    assert main(["submit", view, "--repo", REPO]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("skewless submit: error: "), err
    assert f"Flink job {JID} 'skewless-stream-user_order_stats' (RUNNING since 2026-12-06 00:00:00 UTC)" in err
    assert "already computes user_order_stats" in err and "--replace" in err
    assert fake.calls == []  # nothing submitted, nothing cancelled


def test_a_finished_or_unrelated_job_does_not_block(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCluster([job("skewless-stream-user_order_stats", "CANCELED"),
                        job("skewless-e2e-parity", jid="e" * 32)]).install(monkeypatch)
    assert main(["submit", "user_order_stats", "--repo", REPO]) == 0
    assert [c[0] for c in fake.calls] == ["create_topics", "submit"]


def test_replace_cancels_the_running_job_before_submitting(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeCluster([job("skewless-stream-user_order_stats")]).install(monkeypatch)
    assert main(["submit", "user_order_stats", "--repo", REPO, "--replace"]) == 0
    assert [c[0] for c in fake.calls] == ["cancel", "wait", "create_topics", "submit"]
    assert fake.calls[0] == ("cancel", JID) and fake.calls[1] == ("wait", JID, ("CANCELED",))
    out = capsys.readouterr().out
    assert f"cancelling Flink job {JID} 'skewless-stream-user_order_stats'" in out
    assert "a plain cancel, not stop-with-savepoint" in out and "--starting-offsets earliest" in out
    assert "-> Flink job " + "f" * 32 in out


def test_an_unreachable_cluster_is_one_line_before_anything_is_submitted(monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from skewless.stack.base import free_port

    monkeypatch.setenv("SKEWLESS_FLINK_REST_PORT", str(free_port()))  # nothing listens there
    fake = FakeCluster([])
    import skewless.stack.flink as flink
    monkeypatch.setattr(flink.FlinkSessionCluster, "submit_python_job",
                        lambda self, *a, **k: fake.calls.append(("submit",)) or "x")
    assert main(["submit", "user_order_stats", "--repo", REPO]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skewless submit: error: flink: REST ") and "unreachable" in err and err.count("\n") == 1
    assert fake.calls == []
