#!/usr/bin/env bash
# Every GPU measurement of docs/speed.md in one call (random weights of the real shapes; no downloads):
#   bash scripts/gpu_measurements.sh [OUT_FOLDER]
# Writes each benchmark's output to OUT_FOLDER (default gpu-results/) and a summary of the name=value lines to
# OUT_FOLDER/summary.txt. A failing benchmark is recorded and the rest still run. About 20 minutes on an H100.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-results}
mkdir -p "$OUT"
export TORCHINDUCTOR_CACHE_DIR="$OUT/inductor-cache"   # a cold cache for the first compiled run
PY=${PYTHON:-python}

run() {  # run NAME COMMAND...: time it, keep its output, note a failure
  local name=$1; shift
  echo "== $name: $*" | tee -a "$OUT/summary.txt"
  local start=$SECONDS
  if "$@" > "$OUT/$name.txt" 2>&1; then
    grep -E '^[a-z_0-9]+=' "$OUT/$name.txt" | sed "s/^/$name./" >> "$OUT/summary.txt"
  else
    echo "$name.FAILED (exit $?); last lines:" >> "$OUT/summary.txt"
    tail -5 "$OUT/$name.txt" >> "$OUT/summary.txt"
  fi
  echo "$name.wall_seconds=$((SECONDS - start))" >> "$OUT/summary.txt"
}

: > "$OUT/summary.txt"
$PY -c "import torch; print('device=' + torch.cuda.get_device_name(), 'torch=' + torch.__version__)" >> "$OUT/summary.txt"
# T2V 25 steps and the paper preset's VCD (vcd_over_floor, MFU per stage), with each attention kernel
run t2v_auto      $PY scripts/benchmark_gpu.py --repeats 5
for kernel in flash efficient cudnn math; do
  run "t2v_sdpa_$kernel" $PY scripts/benchmark_gpu.py --repeats 3 --no-paper --sdpa-backend "$kernel"
done
run t2v_bf16      $PY scripts/benchmark_gpu.py --repeats 3 --no-paper --precision bf16
run t2v_channels_last $PY scripts/benchmark_gpu.py --repeats 3 --no-paper --channels-last
run t2v_fp8       $PY scripts/benchmark_gpu.py --repeats 3 --no-paper --precision bf16 --fp8   # needs torchao
# regional compile: a cold cache (compile time), then the same shapes from the cache
run t2v_compile_cold $PY scripts/benchmark_gpu.py --repeats 3 --compile
run t2v_compile_warm $PY scripts/benchmark_gpu.py --repeats 3 --compile --no-paper
run t2v_compile_max_autotune $PY scripts/benchmark_gpu.py --repeats 3 --compile --compile-mode max-autotune --no-paper
# the few-step path: 4 steps, CFG 1, Euler trailing (AnimateDiff-Lightning's settings), eager and compiled
run fewstep       $PY scripts/benchmark_gpu.py --repeats 5 --no-paper --steps 4 --guidance-scale 1 --scheduler euler-trailing
run fewstep_compile $PY scripts/benchmark_gpu.py --repeats 5 --no-paper --steps 4 --guidance-scale 1 --scheduler euler-trailing --compile
# ID-token training: 400 steps × batch 4 × 512², as trained
run train_bf16    $PY scripts/benchmark_training.py --full-size --mixed-precision bf16 --steps 50
run train_fp16    $PY scripts/benchmark_training.py --full-size --mixed-precision fp16 --steps 50
run train_compile $PY scripts/benchmark_training.py --full-size --mixed-precision bf16 --steps 50 --compile
# the CUDA paths of the test suite (device=auto picks the GPU)
run tests_cuda    $PY -m pytest -q -x -p no:cacheprovider tests/test_speed.py tests/test_sampling.py tests/test_vcd.py
echo "wrote $OUT/summary.txt"
