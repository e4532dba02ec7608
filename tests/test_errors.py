"""Bad input: a clear error naming the argument, on every backend; no partial state."""
import pytest
import torch

import eager_kernels as ek

from conftest import BACKENDS, make_logits
from gpu_mark import backend_fixture, needs_cuda

backend = backend_fixture(BACKENDS)  # conftest's fixture, the CUDA pairs marked gpu


def _step(x, hist, group, backend, **overrides):
    kw = dict(k=2, temperature=0.5, entropy_top_k=None, q=80.0, theta=0.0, initial_threshold=1.0,
              seed=0, offset=0)
    kw.update(overrides)
    return ek.eager_step(x, hist, group, backend=backend, **kw)


CUDA_DEVICE_ASSERT = "on CUDA data checks are device asserts (test_cuda_device_asserts runs them in a subprocess)"


@pytest.mark.parametrize("op", ["entropy", "topk", "sample", "step"])
def test_bad_logits_values(backend, op):
    name, device = backend
    if device == "cuda":
        pytest.skip(CUDA_DEVICE_ASSERT)
    cases = {
        "nan": (float("nan"), "NaN"),
        "+inf": (float("inf"), r"\+inf"),
    }
    for value, message in cases.values():
        x = make_logits(3, 100, seed=1, device=device)
        x[1, 50] = value
        with pytest.raises(ValueError, match=message):
            _call(op, x, name, device)
    x = make_logits(3, 100, seed=1, device=device)
    x[2] = float("-inf")
    with pytest.raises(ValueError, match="no finite entry"):
        _call(op, x, name, device)


def _call(op, x, name, device):
    if op == "entropy":
        return ek.entropy(x, backend=name)
    if op == "topk":
        return ek.topk_logprobs(x, 3, backend=name)
    if op == "sample":
        return ek.sample(x, temperature=1.0, seed=0, backend=name)
    hist = ek.EntropyHistory(2, 10, device=device, backend=name)
    hist.append(torch.tensor([1.0], device=device), torch.tensor([0], device=device))
    before = (hist.values.clone(), hist.count.clone())
    try:
        _step(x, hist, torch.tensor([0, 1, 0], device=device), name)
    finally:
        # the failed step left the history as it was
        assert torch.equal(hist.values, before[0]) and torch.equal(hist.count, before[1])


def test_shape_dtype_and_range_errors(backend):
    name, device = backend
    x = make_logits(2, 100, device=device)
    with pytest.raises(ValueError, match="logits: expected a 2-D"):
        ek.entropy(x[0], backend=name)
    with pytest.raises(TypeError, match="logits: expected float32"):
        ek.entropy(x.to(torch.int32), backend=name)
    with pytest.raises(TypeError, match="logits: expected float32"):
        ek.entropy(x.double(), backend=name)
    with pytest.raises(ValueError, match="last dimension must be contiguous"):
        ek.entropy(make_logits(100, 2, device=device).t(), backend=name)
    with pytest.raises(ValueError, match="k: expected 1 <= k"):
        ek.topk_logprobs(x, 0, backend=name)
    with pytest.raises(ValueError, match="k: expected 1 <= k"):
        ek.topk_logprobs(x, 101, backend=name)
    with pytest.raises(TypeError, match="k: expected an int"):
        ek.topk_logprobs(x, 2.0, backend=name)
    with pytest.raises(ValueError, match="top_k"):
        ek.entropy(x, top_k=0, backend=name)
    with pytest.raises(ValueError, match="top_k"):
        ek.entropy(x, top_k=101, backend=name)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            ek.sample(x, temperature=bad, seed=0, backend=name)
    if device == "cpu":
        with pytest.raises(ValueError, match="temperature"):
            ek.sample(x, temperature=torch.tensor([1.0, -1.0], device=device), seed=0, backend=name)
    with pytest.raises(ValueError, match="temperature: expected a scalar or shape"):
        ek.sample(x, temperature=torch.ones(3, device=device), seed=0, backend=name)
    with pytest.raises(TypeError, match="seed"):
        ek.sample(x, temperature=1.0, seed=1.5, backend=name)
    with pytest.raises(ValueError, match="offset"):
        ek.sample(x, temperature=1.0, seed=0, offset=2**64, backend=name)
    with pytest.raises(ValueError, match="backend"):
        ek.entropy(x, backend="cuda")


def test_fused_backends_cap_k():
    x = torch.randn(2, 100)
    for name in ("cpu", "triton"):
        with pytest.raises(ValueError, match="k <= 64"):
            ek.topk_logprobs(x, 65, backend=name)
        with pytest.raises(ValueError, match="entropy_top_k <= 64"):
            _step(x, ek.EntropyHistory(1, 4), torch.zeros(2, dtype=torch.int64), name, entropy_top_k=65)
    # the reference has no cap
    assert ek.topk_logprobs(x, 100, backend="torch")[1].shape == (2, 100)


def test_step_argument_errors(backend):
    name, device = backend
    if device == "cuda":
        pytest.skip(CUDA_DEVICE_ASSERT)
    x = make_logits(3, 50, device=device)
    hist = ek.EntropyHistory(2, 10, device=device, backend=name)
    with pytest.raises(ValueError, match="group: ids must lie in"):
        _step(x, hist, torch.tensor([0, 2, 1], device=device), name)
    with pytest.raises(ValueError, match="group: expected shape"):
        _step(x, hist, torch.tensor([0, 1], device=device), name)
    with pytest.raises(TypeError, match="history"):
        _step(x, object(), torch.tensor([0, 1, 0], device=device), name)
    with pytest.raises(ValueError, match="q: expected"):
        _step(x, hist, torch.tensor([0, 1, 0], device=device), name, q=-1.0)
    with pytest.raises(ValueError, match="theta"):
        _step(x, hist, torch.tensor([0, 1, 0], device=device), name, theta=float("nan"))
    meta_hist = ek.EntropyHistory(2, 10, device="meta")
    with pytest.raises(ValueError, match="history: expected a tensor on"):
        _step(x, meta_hist, torch.tensor([0, 1, 0], device=device), name)
    assert hist.count.sum().item() == 0


def test_cpu_backend_requires_cpu_tensors():
    x = torch.randn(2, 10, device="meta")
    with pytest.raises(ValueError, match="backend='cpu' needs CPU tensors"):
        ek.entropy(x, backend="cpu")


@pytest.mark.parametrize("case", ["nan", "empty_row", "group"])
@needs_cuda
def test_cuda_device_asserts(case):
    """On CUDA, bad data fails the stream with a device-side assert (no host sync); each
    case runs in its own process because such an assert ends the CUDA context."""
    import subprocess
    import sys

    code = (
        "import torch, eager_kernels as ek\n"
        "x = torch.randn(3, 100, device='cuda')\n"
        f"case = {case!r}\n"
        "if case == 'nan': x[1, 5] = float('nan')\n"
        "if case == 'empty_row': x[2] = float('-inf')\n"
        "h = ek.EntropyHistory(2, 10, device='cuda')\n"
        "g = torch.tensor([0, 1, 5 if case == 'group' else 0], device='cuda')\n"
        "out = ek.eager_step(x, h, g, k=2, temperature=0.5, q=80, theta=0, initial_threshold=1, seed=0, offset=0)\n"
        "torch.cuda.synchronize()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "assert" in (out.stderr + out.stdout).lower(), out.stderr[-2000:]
