#!/usr/bin/env bash
# One call on a lent GPU machine (device tool), at most 8 minutes, in order of importance:
#  1. the kernel tests on CUDA (the gpu mark: the triton-cuda / torch-cuda cases, the
#     top-K filter's paths, the prepared step with its CUDA-graph capture / replay and
#     no-sync test; 8 pytest-xdist workers: Triton compiles each variant once), 150 s;
#  2. the step grid (benchmarks/gpu_step_grid.py): bf16 and float32, B = 64 1 8 256,
#     V = 152064 32000; kernel, call and graph-replay time of entropy (full, top-20),
#     topk_logprobs, sample, eager_step and the prepared step against the plain torch step,
#     the best torch composition and the copy bandwidth measured in the same run, 210 s;
#  3. the EAGer loop end to end (benchmarks/gpu_decode_check.py: backends agree, host
#     syncs per step, tokens/s), 100 s (GPU_CHECK_SKIP_DECODE=1 leaves it out).
# GPU_CHECK_MORE=1 adds, past the 8 minutes, the older parts: host time per call
# (benchmarks/host_overhead.py), the launch-parameter sweep (benchmarks/tune_triton.py)
# and eager_step against torch.compile. Logs and CSVs go to $OUT (or benchmarks/results/gpu);
# each part has its timeout and writes as it goes, so a part cut short keeps what it has.
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=540)
# The machine's own python3 (torch + triton) is used; the C++ extension is not built there.
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 EAGER_KERNELS_DISABLE_CPP=1
{
echo "date $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git status --porcelain 2>/dev/null | grep -q . && echo ' (uncommitted changes)')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu /'
python3 - <<'PY'
import platform, torch, triton
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "triton", triton.__version__, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
PY
} 2>&1 | tee "$OUT/env.txt"
echo "== 1. kernel tests on CUDA (gpu mark), the prepared step's graph and no-sync tests =="
XDIST=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
timeout 150 python3 -m pytest -q --maxfail=40 -p no:cacheprovider $XDIST tests/test_entropy.py \
    tests/test_topk_logprobs.py tests/test_sample.py tests/test_eager_step.py tests/test_prepared_step.py \
    tests/test_history.py tests/test_errors.py tests/test_hf.py -m gpu 2>&1 | tee "$OUT/tests.log" | tail -40
echo "== 2. step grid: kernel / call / graph-replay times; torch step, best torch composition, copy bandwidth =="
timeout 210 python3 benchmarks/gpu_step_grid.py --out "$OUT/gpu_step_grid.csv" --budget-s 180 2>&1 \
    | tee "$OUT/grid.log"
if [ -z "${GPU_CHECK_SKIP_DECODE:-}" ]; then
echo "== 3. the EAGer loop end to end (random SmolLM2-shaped Llama; torch vs triton ops; bf16, fp32) =="
timeout 100 python3 benchmarks/gpu_decode_check.py --out "$OUT/gpu_decode.csv" --repeats 2 2>&1 \
    | tee "$OUT/decode.log"
fi
if [ -n "${GPU_CHECK_MORE:-}" ]; then
echo "== more: host time per call (back to back) and a cProfile of the Triton eager_step =="
timeout 40 python3 benchmarks/host_overhead.py --rows 8 --vocab 152064 --calls 300 2>&1 | tee "$OUT/host.log"
echo "== more: Triton launch parameters for eager_step (bf16, V 152064, B 1 and 64) =="
timeout 50 python3 benchmarks/tune_triton.py --out "$OUT/tune_triton.csv" 2>&1 | tee "$OUT/tune.log"
echo "== more: eager_step against torch.compile of the plain step (bf16) =="
timeout 45 python3 -m eager_kernels bench --device cuda --backends torch,compile,triton --dtypes bfloat16 \
    --ops eager_step,eager_step_greedy --rows 1 64 --vocab 152064 --tag compile --out-dir "$OUT" 2>&1 \
    | tee "$OUT/bench_compile.log"
fi
echo "== done: $OUT =="
