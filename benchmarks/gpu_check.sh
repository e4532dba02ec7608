#!/usr/bin/env bash
# One call on a lent GPU machine (device tool), in order of importance: the kernel tests on
# CUDA, the kernel benchmark grid (eager-kernels bench: torch, reference, Triton), a sweep
# of the Triton launch parameters, then eager_step against torch.compile. CSVs, plots and
# logs go to $OUT (or benchmarks/results/gpu). Finishes inside 8 minutes (each part has a
# timeout; the grid rewrites its CSV after every case, so a cut-off run keeps what it
# measured; `eager-kernels bench --replot CSV` draws its plots later).
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=540)
# The machine's own python3 (torch + triton) is used; the C++ extension is not built there.
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 EAGER_KERNELS_DISABLE_CPP=1
python3 - <<'PY' 2>&1 | tee "$OUT/env.txt"
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name(0))
PY
echo "== kernel tests on CUDA (triton-cuda and torch-cuda parametrisations) =="
timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_entropy.py tests/test_topk_logprobs.py \
    tests/test_sample.py tests/test_eager_step.py tests/test_history.py tests/test_errors.py \
    -k "cuda" 2>&1 | tee "$OUT/tests.log" | tail -15
echo "== kernel grid: torch, reference, triton (bf16 and fp32; B 1 8 64 256; V 32000 128256 152064) =="
timeout 120 python3 -m eager_kernels bench --device cuda --backends torch,reference,triton \
    --out-dir "$OUT" 2>&1 | tee "$OUT/bench.log"
echo "== Triton launch parameters for eager_step (bf16, V 152064, B 1 and 64) =="
timeout 70 python3 benchmarks/tune_triton.py --out "$OUT/tune_triton.csv" 2>&1 | tee "$OUT/tune.log"
echo "== eager_step against torch.compile of the plain step (bf16) =="
timeout 70 python3 -m eager_kernels bench --device cuda --backends torch,compile,triton --dtypes bfloat16 \
    --ops eager_step,eager_step_greedy --tag compile --out-dir "$OUT" 2>&1 | tee "$OUT/bench_compile.log"
