#!/usr/bin/env bash
# One call on a lent GPU machine (device tool): the kernel tests on CUDA, then the step
# benchmark grid; logs and CSVs go to $OUT (or benchmarks/results/gpu). Fits in ~8 minutes.
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
timeout 300 python3 -m pytest -q -x -p no:cacheprovider tests/test_entropy.py tests/test_topk_logprobs.py \
    tests/test_sample.py tests/test_eager_step.py tests/test_history.py tests/test_errors.py \
    -k "cuda" 2>&1 | tee "$OUT/tests.log" | tail -15
echo "== eager_step benchmark (bf16, B in 1 8 64, V in 32000 128256 152064) =="
timeout 200 python3 benchmarks/bench_eager_step.py --out "$OUT/eager_step_cuda.csv" 2>&1 | tee "$OUT/bench.log"
