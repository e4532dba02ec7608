#!/usr/bin/env bash
# One call on a lent GPU machine (device tool), in order of importance: the kernel tests on
# CUDA (8 pytest-xdist workers: Triton compiles each variant once), the kernel benchmark grid
# (eager-kernels bench: torch and Triton, call and kernel GPU times), the EAGer loop end to
# end (benchmarks/gpu_decode_check.py: backends agree, host syncs per step, tokens/s;
# GPU_CHECK_SKIP_DECODE=1 leaves it out), host time per call (benchmarks/host_overhead.py),
# a sweep of the Triton launch parameters, then eager_step against torch.compile. CSVs, plots and
# logs go to $OUT (or benchmarks/results/gpu). Finishes inside 9 minutes (each part has a
# timeout; the grid rewrites its CSV after every case, so a cut-off run keeps what it
# measured; `eager-kernels bench --replot CSV` draws its plots later).
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=580)
# The machine's own python3 (torch + triton) is used; the C++ extension is not built there.
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 EAGER_KERNELS_DISABLE_CPP=1
python3 - <<'PY' 2>&1 | tee "$OUT/env.txt"
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name(0))
PY
echo "== kernel tests on CUDA (the gpu mark: triton-cuda and torch-cuda parametrisations, CUDA-only tests) =="
XDIST=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
timeout 130 python3 -m pytest -q --maxfail=40 -p no:cacheprovider $XDIST tests/test_entropy.py \
    tests/test_topk_logprobs.py tests/test_sample.py tests/test_eager_step.py tests/test_history.py \
    tests/test_errors.py tests/test_hf.py -m gpu 2>&1 | tee "$OUT/tests.log" | tail -40
echo "== kernel grid: torch, triton (bf16 and fp32; B 1 8 64 256; V 32000 152064); call and kernel times =="
timeout 140 python3 -m eager_kernels bench --device cuda --backends torch,triton --min-seconds 0.05 \
    --vocab 32000 152064 --out-dir "$OUT" 2>&1 | tee "$OUT/bench.log"
if [ -z "${GPU_CHECK_SKIP_DECODE:-}" ]; then
echo "== the EAGer loop end to end (random SmolLM2-shaped Llama; torch vs triton ops; bf16, fp32) =="
timeout 110 python3 benchmarks/gpu_decode_check.py --out "$OUT/gpu_decode.csv" 2>&1 | tee "$OUT/decode.log"
fi
echo "== host time per call (back to back) and a cProfile of the Triton eager_step =="
timeout 40 python3 benchmarks/host_overhead.py --rows 8 --vocab 152064 --calls 300 2>&1 | tee "$OUT/host.log"
echo "== Triton launch parameters for eager_step (bf16, V 152064, B 1 and 64) =="
timeout 50 python3 benchmarks/tune_triton.py --out "$OUT/tune_triton.csv" 2>&1 | tee "$OUT/tune.log"
echo "== eager_step against torch.compile of the plain step (bf16) =="
timeout 45 python3 -m eager_kernels bench --device cuda --backends torch,compile,triton --dtypes bfloat16 \
    --ops eager_step,eager_step_greedy --rows 1 64 --vocab 152064 --tag compile --out-dir "$OUT" 2>&1 \
    | tee "$OUT/bench_compile.log"
grep -q "FAILED compile" "$OUT/bench_compile.log" && timeout 30 python3 - <<'PY' 2>&1 | tail -25 | tee "$OUT/compile_error.log"
import torch
from eager_kernels.bench.kernels import _compile_all
x = torch.randn(8, 152064, device="cuda").to(torch.bfloat16)
h, g = torch.rand(8, 256, device="cuda") * 5, torch.arange(8, device="cuda")
_compile_all()["eager_step"](x, h, g)
PY
