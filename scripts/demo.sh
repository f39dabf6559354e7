#!/usr/bin/env bash
# Fresh machine to recommendations: install, then synthetic data -> tiny LLM -> train -> recommend.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/e2urec demo "$@"
