#!/usr/bin/env bash
# Runs pytest in the project venv. Exit code 5 (no tests collected) is a failure, never a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
export TESTCONTAINERS_RYUK_DISABLED=true
start=$(date +%s)
.venv/bin/python -m pytest -m "${PYTEST_MARK:-not slow}" "$@"
rc=$?
echo "tests: exit ${rc} after $(( $(date +%s) - start )) s"
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"
