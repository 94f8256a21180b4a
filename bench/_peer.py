"""The peer feature store (Feast), installed on first use in its own venv (`.venv-peer/`).

    from bench._peer import run_peer
    result = run_peer("feast_online.py", ["--redis", "127.0.0.1:6390"], timeout=600)

The script (in ``bench/peer/``) runs with the peer venv's interpreter and must print one JSON object as
its last stdout line; that object is returned. Failures raise :class:`PeerError` with the script's stderr
tail, so a benchmark can report "peer not measured: <why>" instead of a number it did not get.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER_DIR = ROOT / "bench" / "peer"
PEER_VENV = Path(os.environ.get("SKEWLESS_PEER_VENV", ROOT / ".venv-peer"))
PEER_REQUIREMENT = "feast[redis,duckdb]==0.67.0"


class PeerError(RuntimeError):
    """The peer could not be installed or its script failed."""


def peer_python() -> Path:
    """The peer venv's interpreter, creating or updating the venv (pinned Feast) unless it matches the pins.

    Benchmarks may ask at the same moment: creation is serialised by a file lock beside the venv, and the
    venv counts as ready only once the marker is written after a successful install."""
    py = PEER_VENV / "bin" / "python"
    marker = PEER_VENV / ".skewless-peer-ok"
    PEER_VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{PEER_VENV}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        want = PEER_REQUIREMENT + " " + (PEER_DIR / "constraints.txt").read_text().strip().replace("\n", " ")
        if py.exists() and marker.exists() and marker.read_text() == want:
            return py
        try:
            if not (PEER_VENV / "bin" / "pip").exists():
                subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER_VENV)], check=True,
                               capture_output=True, text=True)
            subprocess.run([str(py), "-m", "pip", "install", "-q", "-c", str(PEER_DIR / "constraints.txt"),
                            PEER_REQUIREMENT], check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as exc:
            raise PeerError(f"installing {PEER_REQUIREMENT} into {PEER_VENV} failed: "
                            f"{(exc.stderr or '')[-2000:]}") from exc
        marker.write_text(want)
    return py


def run_peer(script: str, args: list[str], timeout: float = 900) -> dict:
    """Run ``bench/peer/<script>`` in the peer venv; return the JSON object it printed last."""
    py = peer_python()
    proc = subprocess.run([str(py), str(PEER_DIR / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        raise PeerError(f"{script} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise PeerError(f"{script} did not print a JSON object last: {lines[-1][:200]!r}") from exc
