#!/usr/bin/env bash
# `make setup`: install everything skewless needs on this machine, idempotently. Silent when every phase is
# already up to date; a phase that does work prints its name and its time.
#   1. Debian packages (as root): redis-server, maven, a JDK if missing, docker.io + debootstrap for test images,
#      chromium (headless: the drift report is rendered and checked in a real browser)
#   2. the project venv (.venv) from infra/constraints.txt
#   3. the pinned JVM artifacts of infra/pom.xml into infra/.cache/jars, the streaming job's and the batch
#      path's Java code
#   4. the Docker engine and the locally built test images (infra/docker/)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STAMPS="$ROOT/infra/.cache/stamps"
mkdir -p "$STAMPS"

WORKED=0  # 1 once a phase did something (then "setup: ok" closes the output)
phase() { echo "setup: $1"; PHASE_T0=$(date +%s); WORKED=1; }
done_phase() { echo "setup: $1 done in $(( $(date +%s) - PHASE_T0 )) s"; }
# header_on_output NAME: pass stdin through, printing "setup: NAME" before its first line; fails if it was empty
header_on_output() {
  local line printed=0
  while IFS= read -r line; do
    [ "$printed" -eq 1 ] || { echo "setup: $1"; printed=1; }
    echo "$line"
  done
  [ "$printed" -eq 1 ]
}

# --- 1. Debian packages -------------------------------------------------------------------------
APT_PKGS=(redis-server redis-tools maven debootstrap docker.io chromium postgresql)  # postgresql: the cluster topology's catalog
command -v javac >/dev/null 2>&1 || APT_PKGS+=(openjdk-17-jdk-headless)  # javac: the streaming and batch Java code
missing=()
for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  phase "apt-get install ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  done_phase apt
fi

# --- 2. Python venv -----------------------------------------------------------------------------
want=$(cat pyproject.toml infra/constraints.txt | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat "$STAMPS/venv" 2>/dev/null)" != "$want" ]; then
  phase "python venv (.venv) from infra/constraints.txt"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --upgrade "pip>=24" >/dev/null
  .venv/bin/pip install -q -c infra/constraints.txt -e ".[dev]"
  echo "$want" > "$STAMPS/venv"
  done_phase venv
fi

# --- 2b. the online read's C extension (skewless/serving/read_kernel.c): `pip install -e` builds it; rebuilt in place
# when it is missing or its source is newer (a checkout whose venv was made before it, or a pull that changed it)
so=$(ls skewless/serving/read_kernel.*.so 2>/dev/null | head -1) || so=""
if [ -z "$so" ] || [ skewless/serving/read_kernel.c -nt "$so" ]; then
  phase "C read kernel (setup.py build_ext --inplace)"
  # --force: a source changed within the second of the last build is compiled too; touch: the copy in place keeps
  # the build's mtime cut to whole seconds, which would leave it "older" than its source and rebuild on every run
  if .venv/bin/python setup.py -q build_ext --inplace --force >/dev/null 2>&1; then
    touch skewless/serving/read_kernel.*.so
  else
    echo "setup: the C read kernel did not build; the Python evaluation serves" >&2
  fi
  done_phase read_kernel
fi

# --- 3. JVM artifacts ---------------------------------------------------------------------------
want=$(sha256sum infra/pom.xml | cut -c1-16)
if [ "$(cat "$STAMPS/jars" 2>/dev/null)" != "$want" ]; then
  phase "JVM artifacts (mvn -f infra/pom.xml package)"
  rm -rf infra/.cache/jars
  mvn -q -B -f infra/pom.xml package
  echo "$want" > "$STAMPS/jars"
  done_phase jars
fi

# --- 3b/3c. the streaming job's Java code (admission function and sinks: streaming_jobs/java -> infra/.cache/udf)
# and the batch path's (fork-free local file system: batch_jobs/java -> infra/.cache/spark-java); each jar is
# named by its sources' hash, so an existing one is current
stale=$(.venv/bin/python -c 'import streaming_jobs.udf as u, skewless.engines.spark_jar as b
print(*(m for m, j in (("streaming_jobs.udf", u.jar_path), ("skewless.engines.spark_jar", b.jar_path)) if not j().exists()))')
for module in $stale; do
  phase "Java code of $module (javac $([ "$module" = streaming_jobs.udf ] && echo streaming_jobs || echo batch_jobs)/java)"
  .venv/bin/python -m "$module" >/dev/null
  done_phase "$module"
done

# --- 4. Docker engine and test images (setup-docker.sh prints only when it does something) --------
if [ -f infra/docker/setup-docker.sh ]; then
  PHASE_T0=$(date +%s)
  if bash infra/docker/setup-docker.sh | header_on_output "docker engine and test images"; then
    WORKED=1
    done_phase docker
  fi
fi
[ "$WORKED" -eq 0 ] || echo "setup: ok"
