# GPU call 3 (warm machine): assemble SmolLM2, then the runs in order of worth, each bounded by
# `timeout` so that the tarball is written before the call's own limit: the paper table (seed 0),
# the serving bench, the paper table (seed 2) with what time is left. BUDGET: seconds for all of
# it (leave 30-60 s under the call's timeout_s and the session's device time).
set -u
BACKBONE=${BACKBONE:-smollm2-135m} SERVING_BUDGET=${SERVING_BUDGET:-200}
T0=$(date +%s); DEADLINE=$((T0 + ${BUDGET:-540}))
left() { echo $((DEADLINE - $(date +%s))); }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 E2UREC_CACHE=/tmp/cache HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
R=/tmp/r; mkdir -p $R /tmp/cache/models
G=/tmp/cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
[ -s /tmp/m/part2 ] && [ -d /tmp/site ] || { echo "no /tmp/m/part2: the machine went cold after call 1 or 2; run them again"; exit 3; }
cat /tmp/m/part1 /tmp/m/part2 .gpu3/part3 > $G
have=$(sha256sum $G | cut -d' ' -f1); want=$(cat .gpu3/gguf.sha256)
echo "gguf sha256 $have (want $want)" | tee $R/env.txt
[ "$have" = "$want" ] || { echo "the assembled GGUF differs: pack again and rerun all three calls"; exit 4; }
{ nvidia-smi; python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())'; nproc; } >> $R/env.txt 2>&1
# the CPU tables' command (bench/results/ml1m-memorising-smollm2-bf16-heldout-seeds) with the
# issue's baselines added
TABLE=(python3 -m bench.paper_table --regime memorising --path /tmp/data/ml-1m
  --ratings-file ratings.users_1-2999.partial.dat --samples 1200 --forget-fraction 0.1
  --heldout-fraction 0.1 --repeat 4 --backbone "$BACKBONE" --eval-samples 120
  --check-samples 40 --unlearn-epochs 4 --max-auc-drop 0.1
  --e2urec-setting min_steps_per_epoch=0 --e2urec-setting aug_max_epochs=4
  --e2urec-setting checks_per_epoch=1 --e2urec-setting activation_checkpointing=true
  --e2urec-setting warmup_steps=5 --e2urec-setting teacher_form=held-out
  --stop-level original --check-distances
  --methods "retrain (another training seed)" --methods e2urec --methods neggrad
  --methods negkl --methods bad-t --no-progress)
run_table() {  # seed, seconds
  local t=$2; [ "$t" -gt 30 ] || return 0
  echo "== table seed $1: $t s" | tee -a $R/steps.txt
  timeout "$t" "${TABLE[@]}" --seeds "$1" --out "$R/table-seed$1" > "$R/table-seed$1.log" 2>&1
  echo "rc=$? after $(( $(date +%s) - T0 )) s" | tee -a $R/steps.txt
}
run_table 0 $(( $(left) - $SERVING_BUDGET ))
T=$(left); [ $T -gt $SERVING_BUDGET ] && T=$SERVING_BUDGET
echo "== serving: $T s" | tee -a $R/steps.txt
timeout $T python3 -m bench.serving --backbone "$BACKBONE" --users 100 --seconds ${SECONDS_PER_CELL:-10} --out $R/serving --work /tmp/w/serving > $R/serving.log 2>&1
echo "rc=$? after $(( $(date +%s) - T0 )) s" | tee -a $R/steps.txt
run_table 2 $(( $(left) - 10 ))
nvidia-smi --query-gpu=memory.used,memory.total --format=csv >> $R/env.txt 2>&1
tar czf $OUT/r.tgz -C /tmp r && ls -la $OUT
