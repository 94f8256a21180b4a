"""`skewless doctor`: is this machine ready to run skewless? One line per prerequisite, with the fix."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from dataclasses import dataclass

from skewless import config
from skewless.stack import manager
from skewless.stack.base import StackError, port_in_use

NAME = "doctor"
HELP = "check Java, Maven, pinned jars, redis-server, Docker, ports and the venv; print how to fix what is missing"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _java() -> Check:
    version = manager.java_version()
    if version is None:
        return Check("java", False, "not found on PATH", "make setup (apt: openjdk-17-jdk-headless)")
    ok = version >= manager.MIN_JAVA
    return Check("java", ok, f"version {version}", "" if ok else "install openjdk-17-jdk-headless and put it first on PATH")


def _binary(name: str, fix: str, required: bool = True) -> Check:
    path = shutil.which(name)
    return Check(name, path is not None, path or "not found on PATH", "" if path else fix, required)


def _jars() -> list[Check]:
    root = config.paths().jars
    out = []
    for sub in ("kafka", "flink", "spark"):
        d = root / sub
        n = len(list(d.glob("*.jar"))) if d.is_dir() else 0
        out.append(Check(f"jars/{sub}", n > 0, f"{n} jars in {d}", "" if n else "make setup (mvn -q -f infra/pom.xml package)"))
    return out


def _docker() -> Check:
    if shutil.which("docker") is None:
        return Check("docker engine", False, "no docker CLI (tests use local processes)", "make setup (apt: docker.io)", required=False)
    try:
        res = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return Check("docker engine", False, "`docker info` timed out", "make setup (starts dockerd)", required=False)
    ok = res.returncode == 0
    detail = f"server {res.stdout.strip()}" if ok else "not reachable (tests fall back to local processes)"
    return Check("docker engine", ok, detail, "" if ok else "make setup (starts dockerd as root)", required=False)


def _ports() -> list[Check]:
    try:
        owned = manager.stack_owned_ports()
    except StackError as exc:
        return [Check("ports", False, str(exc), "see the message")]
    env_vars = manager.port_env_vars()
    out = []
    for port, var in sorted(env_vars.items()):
        if port in owned:
            out.append(Check(f"port {port}", True, f"used by our stack ({owned[port]})"))
        elif port_in_use(port):
            out.append(Check(f"port {port}", False, "in use by another process", f"free it or set {var} to a free port"))
        else:
            out.append(Check(f"port {port}", True, f"free ({var})"))
    return out


def _venv() -> Check:
    venv_python = config.PROJECT_ROOT / ".venv" / "bin" / "python"
    if not venv_python.exists():
        return Check("venv python", False, f"{venv_python} missing", "make setup")
    ok = sys.version_info[:2] == (3, 11)
    return Check("venv python", ok, f"{venv_python} (running {sys.executable}, {sys.version.split()[0]})", "" if ok else "make setup (Python 3.11 venv)")


def _profile() -> Check:
    """Which profile this process would use (informational: the CLI checked the file before the command)."""
    profile = config.active_profile()
    return Check("profile", True, f"{profile.where}: Kafka {config.kafka_bootstrap(profile)}, online store "
                                  f"{config.redis_target(profile=profile).redacted}, Flink {config.flink_rest_url(profile)} "
                                  "(docs/deploy.md)", required=False)


def checks() -> list[Check]:
    return [
        _profile(),
        _java(),
        _binary("mvn", "make setup (apt: maven)"),
        *_jars(),
        _binary("redis-server", "make setup (apt: redis-server)"),
        _docker(),
        *_ports(),
        _venv(),
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace) -> int:
    del args
    rows = checks()
    width = max(len(c.name) for c in rows)
    for c in rows:
        mark = "OK" if c.ok else ("MISSING" if c.required else "info")
        line = f"{mark:<8} {c.name:<{width}}  {c.detail}"
        print(line + (f"\n{'':<8} {'':<{width}}  fix: {c.fix}" if c.fix and not c.ok else ""))
    missing = [c.name for c in rows if c.required and not c.ok]
    print(f"doctor: {'missing: ' + ', '.join(missing) if missing else 'all required prerequisites present'}")
    return 1 if missing else 0
