"""pytest-benchmark suite: every op on every backend available here, next to the plain
torch ops a user writes ("plain": eager_kernels.bench.common.plain_*, the reference of the
ratios), on two realistic shapes per device. The full grid with CSV and plots is
`eager-kernels bench`.

    pytest benchmarks/ --benchmark-only [--benchmark-columns=median,ops]

Compare within one run (same machine, same load); the ratio is what matters.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import eager_kernels as ek  # noqa: E402
from eager_kernels.bench import common as bm  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["torch"] + (["cpu"] if ek.cpu_extension_available() else []) + (["triton"] if DEVICE == "cuda" else [])
SHAPES = [(1, 32000), (8, 152064)] if DEVICE == "cpu" else [(1, 128256), (64, 152064)]
DTYPE = torch.bfloat16


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def logits(request):
    rows, vocab = request.param
    return bm.realistic_logits(rows, vocab, DTYPE, DEVICE, seed=vocab)


def _bench(benchmark, fn):
    if DEVICE == "cuda":
        def run():
            fn()
            torch.cuda.synchronize()
        benchmark(run)
    else:
        benchmark(fn)


@pytest.mark.parametrize("backend", ["plain"] + BACKENDS)
@pytest.mark.parametrize("top_k", [None, 20])
def test_entropy(benchmark, logits, backend, top_k):
    benchmark.group = f"entropy top_k={top_k} {tuple(logits.shape)}"
    if backend == "plain":
        _bench(benchmark, lambda: bm.plain_entropy(logits, top_k))
    else:
        _bench(benchmark, lambda: ek.entropy(logits, top_k=top_k, backend=backend))


@pytest.mark.parametrize("backend", ["plain"] + BACKENDS)
def test_topk_logprobs(benchmark, logits, backend):
    benchmark.group = f"topk_logprobs k=4 {tuple(logits.shape)}"
    if backend == "plain":
        _bench(benchmark, lambda: bm.plain_topk_logprobs(logits, 4))
    else:
        _bench(benchmark, lambda: ek.topk_logprobs(logits, 4, backend=backend))


@pytest.mark.parametrize("backend", ["plain"] + BACKENDS)
@pytest.mark.parametrize("temperature", [0.0, 0.6])
def test_sample(benchmark, logits, backend, temperature):
    benchmark.group = f"sample T={temperature} {tuple(logits.shape)}"
    if backend == "plain":
        _bench(benchmark, lambda: bm.plain_sample(logits, temperature))
    else:
        _bench(benchmark, lambda: ek.sample(logits, temperature=temperature, seed=1, backend=backend))


@pytest.mark.parametrize("impl", BACKENDS + ["plain_torch_step"])
def test_eager_step(benchmark, logits, impl):
    benchmark.group = f"eager_step {tuple(logits.shape)}"
    rows = logits.shape[0]
    group = torch.arange(rows, device=DEVICE) % 4
    if impl == "plain_torch_step":
        hist = torch.rand(4, 256, device=DEVICE) * 5
        fn = lambda: bm.plain_torch_step(logits, hist, group, k=4, temperature=0.6, entropy_top_k=20,  # noqa: E731
                                         q=99.0, theta=2.0)
    else:
        hist = ek.EntropyHistory(4, 2_000_000 // 4, device=DEVICE, backend=impl)
        step = [0]

        def fn():
            step[0] += 1
            if hist.capacity - int(hist.count.max()) < rows:
                hist.reset()
            return ek.eager_step(logits, hist, group, k=4, temperature=0.6, entropy_top_k=20, q=99.0,
                                 theta=2.0, initial_threshold=5.0, seed=1, offset=step[0], backend=impl)
    _bench(benchmark, fn)
