#!/usr/bin/env bash
# Install, lint, then run the whole test suite (the datasets in ../shared/data are used when
# present and those tests are skipped otherwise).
#
# Two pytest workers, one file each at a time (--dist loadfile keeps a module's trained fixtures
# in one process), one torch thread each: the tiny models' small matmuls gain little from a
# second thread, while the waiting on servers, workers and subprocesses overlaps. Set
# E2UREC_TEST_WORKERS=0 for one process (e.g. to debug), or pass pytest options as arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check e2urec service worker migrations bench tests
workers=${E2UREC_TEST_WORKERS:-2}
if [ "$workers" -gt 0 ]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  exec python -m pytest -n "$workers" --dist loadfile "$@"
fi
exec python -m pytest "$@"
