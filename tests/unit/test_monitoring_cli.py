"""`skewless monitor quality|consistency|drift` on files, against the example repository (no services)."""

from __future__ import annotations

import sys

import pandas as pd

from skewless.cli import main
from skewless.config import PROJECT_ROOT

REPO = str(PROJECT_ROOT / "feature_defs")


def test_quality_command(tmp_path, capsys):
    good = pd.DataFrame({"user_orders_last_1h": [1, 2], "user_total_orders_365d": [3, 4], "customer_ltv_365d": [0, 9],
                         "days_since_last_order": [0, 5], "last_order_status": ["placed", "refunded"],
                         "avg_order_value_365d": [None, 4.5]})
    good.to_parquet(tmp_path / "good.parquet")
    assert main(["monitor", "quality", "--repo", REPO, "--view", "user_order_stats", "--input", str(tmp_path / "good.parquet")]) == 0
    good.assign(last_order_status=["placed", "lost"]).to_csv(tmp_path / "bad.csv", index=False)
    assert main(["monitor", "quality", "--repo", REPO, "--view", "user_order_stats", "--input", str(tmp_path / "bad.csv")]) == 1
    assert "e.g. 'lost'" in capsys.readouterr().out
    assert main(["monitor", "quality", "--repo", REPO, "--view", "user_order_stats", "--input", str(tmp_path / "none.csv")]) == 2


def test_consistency_command(tmp_path, capsys, monkeypatch):
    pd.DataFrame({"user_id": ["a", "b"], "request_ms": [1, 2], "user_orders_last_1h": [1, 2]}).to_parquet(tmp_path / "log.parquet")
    (tmp_path / "recompute_mod.py").write_text(
        "import pandas as pd\n\ndef same(rows):\n    return pd.DataFrame({'user_orders_last_1h': [1, 2]})\n\n"
        "def off(rows):\n    return pd.DataFrame({'user_orders_last_1h': [1, 3]})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["monitor", "consistency", "--repo", REPO, "--view", "user_order_stats", "--logged", str(tmp_path / "log.parquet")]
    assert main([*args, "--recompute", "recompute_mod:same"]) == 0
    assert main([*args, "--recompute", "recompute_mod:off"]) == 1
    assert "50.0000%" in capsys.readouterr().out
    assert main([*args, "--recompute", "nocolon"]) == 2
    sys.modules.pop("recompute_mod", None)


def test_drift_command_bad_threshold(tmp_path, capsys):
    pd.DataFrame({"x": [1, 2]}).to_parquet(tmp_path / "r.parquet")
    args = ["monitor", "drift", "--reference", str(tmp_path / "r.parquet"), "--current", str(tmp_path / "r.parquet")]
    assert main([*args, "--threshold", "x=0.1", "--html", str(tmp_path / "d.html")]) == 2
    assert main([*args, "--html", str(tmp_path / "d.html")]) == 0 and (tmp_path / "d.html").exists()
    assert main(["monitor"]) == 2
