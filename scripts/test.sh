#!/usr/bin/env bash
# Install, lint, then run the whole test suite (the datasets in ../shared/data are used when
# present and those tests are skipped otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check e2urec service worker migrations bench tests
exec python -m pytest "$@"
