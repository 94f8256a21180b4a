"""`make setup` (infra/setup.sh) says nothing when every phase is up to date, and names a phase (with its time)
when it does work (issue 26: every make target printed ~11 setup/docker lines)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from skewless.config import PROJECT_ROOT

pytestmark = pytest.mark.integration


def _setup(root: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(["bash", "infra/setup.sh"], cwd=root, env=env, capture_output=True, text=True, timeout=900)


def test_setup_is_silent_when_up_to_date():
    first = _setup(PROJECT_ROOT)  # brings this machine up to date (a no-op on CI after `make setup`)
    assert first.returncode == 0, first.stdout + first.stderr
    again = _setup(PROJECT_ROOT)
    assert again.returncode == 0, again.stderr
    assert again.stdout == "" and again.stderr == ""


def test_setup_names_a_phase_that_does_work(tmp_path: Path):
    """A copy of the project whose Java jars and C read kernel were never built: setup builds them and says so, then
    is silent."""
    root = tmp_path / "copy"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_ROOT, capture_output=True, check=True).stdout
    root.mkdir()
    subprocess.run(["tar", "-cf", "-", "--null", "-T", "-"], cwd=PROJECT_ROOT, input=files, check=True,
                   stdout=open(tmp_path / "src.tar", "wb"))
    subprocess.run(["tar", "-xf", str(tmp_path / "src.tar")], cwd=root, check=True)
    cache = PROJECT_ROOT / "infra" / ".cache"
    (root / ".venv").symlink_to((PROJECT_ROOT / ".venv").resolve())
    (root / "infra" / ".cache" / "stamps").mkdir(parents=True)
    for stamp in (cache / "stamps").iterdir():
        (root / "infra" / ".cache" / "stamps" / stamp.name).write_bytes(stamp.read_bytes())
    for shared in ("jars", "docker"):
        (root / "infra" / ".cache" / shared).symlink_to((cache / shared).resolve())
    done = _setup(root)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "setup: C read kernel (setup.py build_ext --inplace)"
    assert lines[1].startswith("setup: read_kernel done in ") and lines[1].endswith(" s")
    assert lines[2] == "setup: Java code of streaming_jobs.udf (javac streaming_jobs/java)"
    assert list(root.glob("skewless/serving/read_kernel.*.so")), "the C read kernel was not built"
    assert any(line.startswith("setup: skewless.engines.spark_jar done in ") and line.endswith(" s") for line in lines)
    assert lines[-1] == "setup: ok"
    assert _setup(root).stdout == ""
