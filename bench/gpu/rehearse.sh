#!/usr/bin/env bash
# Rehearse the GPU calls here, on the CPU, before spending device time: a Python 3.11 venv with
# only what the GPU image brings (torch, numpy, scipy, ...), the packed wheels first on the path
# (their compiled ones rebuilt for 3.11), then call 3 with the `tiny` backbone and short cells.
# Run after pack.sh; about 6 minutes on 2 cores (never beside a timed bench). Writes /tmp/site,
# /tmp/m, /tmp/data and /tmp/r as the GPU machine would, and the tarball to /tmp/gpu-rehearsal/out.
set -euo pipefail
cd "$(dirname "$0")/../.."
W=/tmp/gpu-rehearsal
[ -d .gpu1/whl ] || { echo "error: run bash bench/gpu/pack.sh first" >&2; exit 1; }
[ -x $W/venv/bin/python ] || {
  python3.11 -m venv $W/venv
  $W/venv/bin/pip install -q torch==2.13.0 numpy scipy scikit-learn matplotlib pillow jinja2 psutil
}
rm -rf $W/whl /tmp/site /tmp/m /tmp/r /tmp/w && mkdir -p $W/whl $W/out /tmp/m
# the pure-Python wheels as packed; the compiled ones again for this Python
compiled=()
for f in .gpu1/whl/*.whl; do
  case $(basename "$f") in
    *-cp3*-cp3*) compiled+=("$(basename "$f" | cut -d- -f1)==$(basename "$f" | cut -d- -f2)") ;;
    *) cp "$f" $W/whl/ ;;
  esac
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d $W/whl "${compiled[@]}"
$W/venv/bin/pip install -q --no-index --no-deps --no-compile --target /tmp/site $W/whl/*.whl
cp .gpu1/part1 .gpu2/part2 /tmp/m/
mkdir -p /tmp/data && tar xJf .gpu1/ml-1m.tar.xz -C /tmp/data
PATH=$W/venv/bin:$PATH OUT=$W/out BACKBONE=tiny BUDGET=420 SERVING_BUDGET=150 SECONDS_PER_CELL=3 \
  bash bench/gpu/call3.sh
cat /tmp/r/steps.txt
