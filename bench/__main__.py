"""Run the benchmarks, print one table, write bench/results/latest.json.

    python -m bench                 # every bench module
    python -m bench stream batch    # only these

Each module runs in its own interpreter, so one module's JVMs and memory never colour another's numbers,
and a failing module is reported (with its error) without stopping the others.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "latest.json"
MARK = "@@BENCH-RESULT@@"
_CHILD = (
    "import json, importlib, sys; m = importlib.import_module('bench.' + sys.argv[1]); "
    f"r = m.run(); print({MARK!r} + json.dumps(r, default=str))"
)


def modules() -> list[str]:
    return sorted(i.name for i in pkgutil.iter_modules([str(HERE)]) if not i.name.startswith("_"))


def run_module(name: str) -> tuple[dict, str | None, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, name], cwd=HERE.parent, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    sys.stderr.write(proc.stderr[-4000:] if proc.returncode else "")
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):]), None, elapsed
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {}, f"exit {proc.returncode}: {tail[0]}", elapsed


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def _compare(entry: dict) -> str:
    parts = []
    for label in ("peer", "floor"):
        other = entry.get(label)
        if isinstance(other, dict) and "value" in other:
            parts.append(f"{label} {_fmt(other['value'])} {other.get('unit', entry.get('unit', ''))} ({other.get('name', '')})".strip())
        elif other is not None:
            parts.append(f"{label} {_fmt(other)}")
    if "goal" in entry:
        parts.append(f"goal {entry['goal']}")
    return "; ".join(parts)


def main(argv: list[str]) -> int:
    wanted = argv or modules()
    unknown = sorted(set(wanted) - set(modules()))
    if unknown:
        print(f"unknown bench module(s): {', '.join(unknown)}; available: {', '.join(modules())}", file=sys.stderr)
        return 2
    results: dict[str, dict] = {}
    errors: dict[str, str] = {}
    for name in wanted:
        print(f"bench: running {name} ...", flush=True)
        metrics, error, elapsed = run_module(name)
        print(f"bench: {name} finished in {elapsed:.0f} s" + (f" with an error: {error}" if error else ""), flush=True)
        if error:
            errors[name] = error
        measured_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for metric, entry in metrics.items():
            results[metric] = {**entry, "module": name, "measured_at": measured_at}
    # One entry per metric (stable names); metrics of modules not run this time are kept from the last run.
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    merged = {k: v for k, v in previous.items() if isinstance(v, dict) and v.get("module") not in wanted} | results
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    width = max([len(m) for m in results] + [6])
    print(f"\n{'metric':<{width}}  {'value':>14}  unit        compared with")
    for metric, entry in sorted(results.items()):
        print(f"{metric:<{width}}  {_fmt(entry.get('value')):>14}  {entry.get('unit', ''):<10}  {_compare(entry)}")
    for name, error in errors.items():
        print(f"ERROR {name}: {error}")
    print(f"\nwritten: {RESULTS.relative_to(HERE.parent)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
