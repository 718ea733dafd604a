#!/usr/bin/env bash
# Everything the CUDA kernels need a GPU for, in stages that each fit one 10-minute
# call on a lent machine (which keeps nothing between calls once it goes idle):
#
#   benchmarks/gpu_session.sh check      build; one small case per kernel family and
#                                        dtype (a table that isolates a broken path);
#                                        then the whole GPU test suite
#   benchmarks/gpu_session.sh sanitize   build; memcheck, racecheck and synccheck over
#                                        the representative launches of matmul, conv2d
#                                        and the conv2d gradients
#   benchmarks/gpu_session.sh bench      build; matmul vs cuBLAS and conv2d vs cuDNN;
#                                        the tables (device, date, command, commit) go
#                                        to $OUT, to be kept in benchmarks/results/
#
# Several stages may be named in one call. Logs go to $OUT (default ./gpu-out); each
# stage prints a short summary last, since only the tail of a call's output comes back.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export LEPTON_GIT_COMMIT=${LEPTON_GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
status=0

log() { echo "== $(date -u +%H:%M:%S) $*"; }

build() {
  [ -n "${BUILT:-}" ] && return 0
  log "build (sm_90a + sm_80)"
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv \
    >"$OUT/device.txt" 2>&1
  cat "$OUT/device.txt"
  # The machine has no network: build against what is installed there.
  if ! CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) $PY -m pip install --no-build-isolation --no-deps \
      -Ccmake.define.LEPTON_ACCEL_CUDA=ON . >"$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"
    echo "BUILD FAILED"
    exit 1
  fi
  $PY -c "import lepton_accel as la; print(la.build_info()); print(la.backends())" | tee -a "$OUT/build.log"
  BUILT=1
}

check() {
  build
  log "smoke: one case per kernel family x dtype"
  $PY benchmarks/sanitize_cuda.py >"$OUT/smoke_matmul.txt" 2>&1
  local m=$?
  $PY benchmarks/sanitize_cuda_conv.py >"$OUT/smoke_conv.txt" 2>&1
  local c=$?
  $PY benchmarks/sanitize_cuda_conv_grad.py >"$OUT/smoke_conv_grad.txt" 2>&1
  local g=$?
  log "GPU tests"
  timeout 420 $PY -m pytest -m "gpu and not slow" -p no:cacheprovider -q -rf --maxfail=200 \
    tests/test_cuda_matmul.py tests/test_cuda_conv2d.py tests/test_cuda_conv2d_grad.py tests/test_interop.py \
    >"$OUT/pytest_gpu.txt" 2>&1
  local p=$?
  grep -c '^ok' "$OUT/smoke_matmul.txt" "$OUT/smoke_conv.txt" "$OUT/smoke_conv_grad.txt"
  grep -h '^FAIL' "$OUT/smoke_matmul.txt" "$OUT/smoke_conv.txt" "$OUT/smoke_conv_grad.txt" | head -40
  tail -n 3 "$OUT/smoke_matmul.txt" "$OUT/smoke_conv.txt" "$OUT/smoke_conv_grad.txt"
  grep -E '^(FAILED|ERROR)' "$OUT/pytest_gpu.txt" | cut -c1-200 | head -40
  tail -n 2 "$OUT/pytest_gpu.txt"
  echo "check: smoke matmul rc=$m, smoke conv rc=$c, smoke conv grad rc=$g, pytest rc=$p"
  [ $m -eq 0 ] && [ $c -eq 0 ] && [ $g -eq 0 ] && [ $p -eq 0 ] || status=1
}

sanitize() {
  build
  local rc=0
  for tool in memcheck racecheck synccheck; do
    for script in sanitize_cuda sanitize_cuda_conv sanitize_cuda_conv_grad; do
      log "compute-sanitizer --tool $tool $script"
      timeout 280 compute-sanitizer --tool "$tool" --error-exitcode 3 $PY "benchmarks/$script.py" \
        >"$OUT/${tool}_${script}.txt" 2>&1
      local r=$?
      echo "$tool $script rc=$r; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/${tool}_${script}.txt" | tail -1)"
      [ $r -eq 0 ] || rc=1
    done
  done
  [ $rc -eq 0 ] || status=1
}

bench() {
  build
  log "matmul vs cuBLAS"
  timeout 330 $PY benchmarks/bench_cuda_matmul.py --out "$OUT/cuda_matmul.md" >"$OUT/bench_matmul.txt" 2>&1 \
    || status=1
  log "conv2d vs cuDNN"
  timeout 200 $PY benchmarks/bench_cuda_conv2d.py --out "$OUT" >"$OUT/bench_conv.txt" 2>&1 || status=1
  tail -25 "$OUT/bench_matmul.txt"
  tail -25 "$OUT/bench_conv.txt"
}

[ $# -gt 0 ] || { sed -n '2,14p' "$0"; exit 2; }
for stage in "$@"; do
  case "$stage" in
    check|sanitize|bench) "$stage" ;;
    *) echo "unknown stage '$stage' (check, sanitize, bench)"; exit 2 ;;
  esac
done
exit $status
