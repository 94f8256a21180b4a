"""Detached local processes: spawn, pidfiles, stop by pid, wait-until, log tails, memory.

Every process is started in its own session (so it outlives the CLI and its process group can be
signalled as a unit) and identified by ``(pid, start time)``, so a recycled pid is never signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path


class StackError(RuntimeError):
    """A service could not start or stop; the message names the service and the fix."""


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def spawn(argv: Sequence[str], log_file: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None,
          run_as: str | None = None) -> int:
    """Start ``argv`` detached (new session, stdin closed, stdout+stderr appended to ``log_file``); return its pid.

    ``run_as``: a user to run it as (its own group, no supplementary groups), for a server that refuses root."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    with open(log_file, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} spawn: {' '.join(argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
                **({"user": run_as, "group": run_as, "extra_groups": []} if run_as else {}),
            )
        except OSError as exc:
            raise StackError(f"cannot execute {argv[0]!r}: {exc}") from exc
    # Let the Popen object go: the child is reaped by _reap() / subprocess' own bookkeeping.
    proc.returncode = 0  # prevent ResourceWarning("subprocess still running") on garbage collection
    return proc.pid


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 = state), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _reap(pid: int) -> None:
    """Collect our own exited child so it does not linger as a zombie (no-op for others)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    _reap(pid)
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def start_time(pid: int) -> float | None:
    """Start time of ``pid`` in seconds since boot (identifies a process across pid reuse), or None."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19]) / _CLK_TCK


def same_process(pid: int, recorded_start: float | None) -> bool:
    """``pid`` is alive and (if a start time was recorded) is still the process that was recorded."""
    if not pid_alive(pid):
        return False
    if recorded_start is None:
        return True
    now = start_time(pid)
    return now is not None and abs(now - recorded_start) < 0.05


def write_pidfile(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid}\n")


def read_pidfile(path: Path) -> int | None:
    """The pid in ``path``, or None if the file is missing or malformed."""
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _signal(pid: int, sig: signal.Signals, group: bool) -> None:
    """Signal ``pid``, or its whole process group if it leads one (we spawn that way)."""
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def stop_pids(pids: Iterable[int], timeout_s: float = 20.0) -> None:
    """SIGTERM each live pid (and its process group), wait up to ``timeout_s``, then SIGKILL the rest.

    Raises StackError naming the pids that survive even SIGKILL.
    """
    live = [p for p in pids if pid_alive(p)]
    groups = {p for p in live if _leads_group(p)}
    for pid in live:
        _signal(pid, signal.SIGTERM, pid in groups)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(pid_alive(p) for p in live):
        time.sleep(0.1)
    for pid in live:  # stragglers, and leftover members of groups whose leader already exited
        _signal(pid, signal.SIGKILL, pid in groups)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(pid_alive(p) for p in live):
        time.sleep(0.1)
    survivors = [p for p in live if pid_alive(p)]
    if survivors:
        ids = ",".join(map(str, survivors))
        raise StackError(f"processes {survivors} survived SIGKILL; inspect them with: ps -o pid,stat,cmd -p {ids}")


def wait_until(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = 0.5,
    abort_if: Callable[[], str | None] | None = None,
) -> float:
    """Poll ``predicate`` until true; return the seconds waited.

    ``abort_if`` returns a reason to give up early (e.g. the process exited). Raises StackError
    ``"<what> not ready after <timeout> s"`` (or the abort reason) on failure.
    """
    t0 = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - t0
        if abort_if is not None and (reason := abort_if()):
            raise StackError(f"{what}: {reason}")
        if time.monotonic() - t0 > timeout_s:
            raise StackError(f"{what} not ready after {timeout_s:.0f} s")
        time.sleep(interval_s)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of ``path`` (or a note that it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def rss_bytes(pids: Iterable[int]) -> int:
    """Resident memory of ``pids`` and all their descendants, in bytes (0 for gone processes)."""
    total = 0
    seen: set[int] = set()
    for pid in pids:
        for p in (pid, *descendants(pid)):
            if p in seen:
                continue
            seen.add(p)
            try:
                for line in Path(f"/proc/{p}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
            except (FileNotFoundError, ProcessLookupError):
                pass
    return total


def fmt_mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.0f} MiB"
