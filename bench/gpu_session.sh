#!/usr/bin/env bash
# The GPU measurements in one prepared call (bench/README.md, "GPU"), for a machine like the
# H200 this project is sometimes lent: Python 3.12, torch 2.11, transformers 5.17, peft 0.21,
# accelerate 1.15 installed; no network; no bitsandbytes, liger-kernel, datasets or gguf.
#
#   bash bench/gpu_session.sh prepare      # here, with PyPI: what that image lacks -> build/gpu-site
#   bash bench/gpu_session.sh run "$OUT"   # there, with build/gpu-site carried: bench_gpu.py -> $OUT
#
# prepare unpacks the wheels into one folder instead of installing them (nothing to install
# there), and drops bitsandbytes' libraries for the CUDA versions that machine does not have
# (CUDA 13: the cpu, cuda130 and cuda132 builds stay; 8 MB instead of 43), so the folder fits the
# 64 MiB a call may carry. `datasets` is left out: the bench has a stand-in (_datasets_shim.py).
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=build/gpu-site
PY=${PYTHON:-python3}

prepare() {
  local wheels=build/gpu-wheels
  rm -rf "$wheels" "$SITE" && mkdir -p "$wheels" "$SITE"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d "$wheels" \
    bitsandbytes==0.50.2 liger-kernel==0.8.5 gguf==0.19.0
  for w in "$wheels"/*.whl; do "$PY" -m zipfile -e "$w" "$SITE"; done
  find "$SITE/bitsandbytes" -name 'libbitsandbytes_*' \
    ! -name '*_cpu.so' ! -name '*_cuda130.so' ! -name '*_cuda132.so' -delete
  du -sh "$SITE"
}

run() {
  local out=${1:?usage: gpu_session.sh run OUT}
  test -d "$SITE" || { echo "no $SITE: run 'bash bench/gpu_session.sh prepare' first and carry it" >&2; exit 2; }
  export PYTHONPATH="$PWD/$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  # The serving rows need fastapi/uvicorn, which that image lacks; the rest fits 8 minutes.
  "$PY" bench/bench_gpu.py --out "$out" --no-serve 2>&1 | tee "$out/bench-gpu.log"
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  *) echo "usage: bash bench/gpu_session.sh prepare | run OUT" >&2; exit 2 ;;
esac
