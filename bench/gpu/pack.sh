#!/usr/bin/env bash
# Build what a GPU machine without network needs, in three parts that each fit a 64 MiB upload
# beside the repository (~12 MiB): wheels of this venv's versions for the machine's Python, the
# ML-1M files, and the SmolLM2 GGUF split in three. Parts land in .gpu1/ .gpu2/ .gpu3/ at the repo
# root (git-ignored through .git/info/exclude). Usage: bash bench/gpu/pack.sh [PYTHON_VERSION]
set -euo pipefail
cd "$(dirname "$0")/../.."
PYV=${1:-3.12}  # the GPU image's python3
DATA=${E2UREC_DATA:-../shared/data/ml-1m}
VENV=${VENV:-.venv}
for d in .gpu1 .gpu2 .gpu3; do
  grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude
done
rm -rf .gpu1 .gpu2 .gpu3 && mkdir -p .gpu1/whl .gpu2 .gpu3

# The GPU image has torch, numpy, scipy, scikit-learn, matplotlib, tqdm-era packages, but older
# transformers/peft (e2urec needs transformers>=5.24 for `cache=`) and no service stack: carry
# those at exactly this venv's versions, with what pip resolves them to need.
version() { "$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))"; }
WANT=()
for p in transformers peft accelerate gguf fastapi starlette pydantic pydantic-settings uvicorn \
         sqlalchemy alembic cryptography typer httpx prometheus-client; do
  WANT+=("$p==$(version "$p")")
done
PLAT=()
for n in 2_17 2_24 2_27 2_28 2_31 2_34; do PLAT+=(--platform "manylinux_${n}_x86_64"); done
PLAT+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# peft and accelerate would pull a CUDA torch: they go without their dependencies
python3 -m pip download -q --only-binary=:all: --python-version "$PYV" --implementation cp \
  "${PLAT[@]}" -d .gpu1/whl $(printf '%s\n' "${WANT[@]}" | grep -v -e '^peft' -e '^accelerate')
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" \
  --implementation cp "${PLAT[@]}" -d .gpu1/whl \
  $(printf '%s\n' "${WANT[@]}" | grep -e '^peft' -e '^accelerate')
# already on the image, and large: numpy (torch's own), hf_xet (only used to download)
rm -f .gpu1/whl/numpy-*.whl .gpu1/whl/hf_xet-*.whl

tar cJf .gpu1/ml-1m.tar.xz -C "$(dirname "$DATA")" "$(basename "$DATA")"

GGUF=$("$VENV/bin/python" -c 'from e2urec.backbones.smollm2 import smollm2_gguf; print(smollm2_gguf())')
sha256sum "$GGUF" | cut -d' ' -f1 > .gpu3/gguf.sha256
# Each upload holds the repository too: size the parts to what is left of 62 MiB (2 spare).
repo=$(git ls-files -z | xargs -0 stat -c %s | awk '{s += $1} END {print int(s / 1048576) + 1}')
room=$((62 - repo))
first=$((room - $(du -sm .gpu1 | cut -f1) - 1))
model=$(( ($(stat -c %s "$GGUF") + 1048575) / 1048576 ))
if [ "$first" -lt 1 ] || [ $((model - first - room)) -gt "$room" ]; then
  echo "error: the repository ($repo MiB) leaves too little room for the model in three calls" >&2
  exit 1
fi
split() { dd if="$GGUF" of="$1" bs=1M skip="$2" ${3:+count="$3"} status=none; }
split .gpu1/part1 0 "$first"
split .gpu2/part2 "$first" "$room"
split .gpu3/part3 $((first + room))

for d in .gpu1 .gpu2 .gpu3; do
  echo "$d: $(du -sm "$d" | cut -f1) MiB + the repository's $repo MiB"
done
