"""``skewless plan`` and ``skewless apply`` end to end on the example repository (no JVM).

Golden file: tests/golden/plan_example.txt. Regenerate after an intended change with
``SKEWLESS_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_cli_plan.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skewless.cli import main

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "plan_example.txt"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def example(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "feature_defs", tmp_path / "feature_defs")
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    return tmp_path / "feature_defs"


def test_plan_output_matches_golden(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    state = tmp_path / "registry.json"
    rc, out, err = run_cli(capsys, "plan", "--repo", str(ROOT / "feature_defs"), "--state", str(state))
    assert rc == 0, err
    out = out.replace(str(state), "<state>")
    if os.environ.get("SKEWLESS_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(out)
    assert out == GOLDEN.read_text(), "plan output changed; regenerate with SKEWLESS_UPDATE_GOLDEN=1 if intended"


def test_plan_reports_every_problem_and_exits_1(capsys: pytest.CaptureFixture[str], example: Path, tmp_path: Path) -> None:
    path = example / "user_order_stats.py"
    path.write_text(path.read_text().replace('Agg.SUM, "amount"', 'Agg.SUM, "amout"').replace('"status", "==", "cancelled"', '"status", "==", "canceled"'))
    rc, out, err = run_cli(capsys, "plan", "--repo", str(example), "--state", str(tmp_path / "s.json"))
    assert rc == 1 and out == ""
    assert "2 problems in the feature definitions" in err
    assert "field 'amout' is not in schema 'orders'" in err
    assert "'canceled' is not an allowed value of 'status'" in err


def test_apply_then_refuse_then_bump(capsys: pytest.CaptureFixture[str], example: Path, tmp_path: Path) -> None:
    state = str(tmp_path / "registry.json")
    rc, out, _ = run_cli(capsys, "apply", "--repo", str(example), "--state", state)
    assert rc == 0 and "+ view user_order_stats v1: added" in out
    rc, out, _ = run_cli(capsys, "plan", "--repo", str(example), "--state", state)
    assert rc == 0 and "= unchanged: customer_profile, user_order_stats" in out

    path = example / "user_order_stats.py"
    path.write_text(path.read_text().replace("Window.days(7)", "Window.days(14)"))
    rc, out, err = run_cli(capsys, "plan", "--repo", str(example), "--state", state)
    assert rc == 1 and "REFUSED: feature view 'user_order_stats' changed its semantics (window of 'max_order_amount_7d' 7d -> 14d)" in out
    assert "would refuse 1 change" in err
    rc, out, err = run_cli(capsys, "apply", "--repo", str(example), "--state", state)
    assert rc == 1 and "bump version=2" in err and "nothing was applied" in err

    path.write_text(path.read_text().replace("    version=1,", "    version=2,"))
    rc, out, _ = run_cli(capsys, "apply", "--repo", str(example), "--state", state)
    assert rc == 0 and "view user_order_stats v1 -> v2: version bump" in out


def test_missing_repository_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = run_cli(capsys, "plan", "--repo", str(tmp_path / "nope"))
    assert rc == 1 and "not found" in err


def test_plan_is_fast_and_starts_no_jvm(tmp_path: Path) -> None:
    code = (
        "import sys; from skewless.cli import main; "
        f"rc = main(['plan', '--repo', {str(ROOT / 'feature_defs')!r}, '--state', {str(tmp_path / 'r.json')!r}]); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('pyflink', 'pyspark', 'py4j')]; "
        "assert not bad, bad; sys.exit(rc)"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 3.0, f"skewless plan took {elapsed:.2f}s (budget: 1s on an idle machine)"
