#!/usr/bin/env bash
# `make setup`: install everything skewless needs on this machine, idempotently, printing each phase's time.
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

phase() { echo "setup: $1"; PHASE_T0=$(date +%s); }
done_phase() { echo "setup: $1 done in $(( $(date +%s) - PHASE_T0 )) s"; }

# --- 1. Debian packages -------------------------------------------------------------------------
APT_PKGS=(redis-server redis-tools maven debootstrap docker.io chromium)
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

# --- 3. JVM artifacts ---------------------------------------------------------------------------
want=$(sha256sum infra/pom.xml | cut -c1-16)
if [ "$(cat "$STAMPS/jars" 2>/dev/null)" != "$want" ]; then
  phase "JVM artifacts (mvn -f infra/pom.xml package)"
  rm -rf infra/.cache/jars
  mvn -q -B -f infra/pom.xml package
  echo "$want" > "$STAMPS/jars"
  done_phase jars
fi

# --- 3b. the streaming job's Java code: admission function and sinks (streaming_jobs/java -> infra/.cache/udf) --
phase "streaming Java code (javac streaming_jobs/java against PyFlink's jars and the Kafka connector)"
.venv/bin/python -m streaming_jobs.udf >/dev/null
done_phase udf

# --- 3c. the batch path's Java code: fork-free local file system (batch_jobs/java -> infra/.cache/spark-java) ----
phase "batch Java code (javac batch_jobs/java against pyspark's jars)"
.venv/bin/python -m skewless.engines.spark_jar >/dev/null
done_phase batch-jvm

# --- 4. Docker engine and test images -----------------------------------------------------------
if [ -f infra/docker/setup-docker.sh ]; then
  phase "docker engine and test images"
  bash infra/docker/setup-docker.sh
  done_phase docker
fi
echo "setup: ok"
