"""topk_logprobs(): values against the float64 reference; ids exactly (the contract fixes
the tie order: equal logits go to the smaller id first)."""
import pytest
import torch

import eager_kernels as ek
from eager_kernels.kernels import reference

from conftest import (BACKENDS, DTYPE_LIST, HAS_TRITON, INTERP, INTERPRETED, KINDS, LOGPROB_TOL, NATIVE, interpreted,
                      make_logits, max_elements)
from gpu_mark import backend_fixture, cuda_when_present, sweep

backend = backend_fixture(BACKENDS)  # conftest's fixture, the CUDA pairs marked gpu


def _check(backend, rows, vocab, k, dtype, kind, seed=0, pad=0):
    name, device = backend
    if rows * vocab > max_elements(name):
        pytest.skip("shape too large for the Triton interpreter")
    x = make_logits(rows, vocab, dtype=dtype, kind=kind, seed=seed, device=device, row_stride_pad=pad)
    lp, ids = ek.topk_logprobs(x, k, backend=name)
    want_lp, want_ids = reference.topk_logprobs(x.double(), k)
    assert lp.shape == (rows, k) and lp.dtype == torch.float32 and ids.dtype == torch.int64
    torch.testing.assert_close(lp.double().cpu(), want_lp.cpu(), **LOGPROB_TOL)
    assert torch.equal(ids.cpu(), want_ids.cpu())
    # the ids point at the logits the values came from
    gathered = torch.gather(x.double().cpu(), 1, ids.cpu()) - torch.logsumexp(x.double().cpu(), -1, keepdim=True)
    torch.testing.assert_close(gathered, lp.double().cpu(), **LOGPROB_TOL)


SHAPES = [(1, 1, 1), (3, 7, 7), (2, 1000, 5), (3, 111, 64), (4, 32000, 4), (2, 49152, 20), (2, 152064, 64)]


def _fast_shape(backend, shape, dtype):
    # the interpreter (0.3 s per row-block, more for large k): V <= 7 in every dtype, and
    # the k = 64 cap on an odd V of one block
    return not interpreted(backend) or shape[1] <= 7 or (shape == (3, 111, 64) and dtype == torch.float16)


@pytest.mark.parametrize("backend,shape,dtype", sweep(BACKENDS, SHAPES, DTYPE_LIST, fast=_fast_shape))
def test_topk_shapes_dtypes(backend, shape, dtype):
    rows, vocab, k = shape
    _check(backend, rows, vocab, k, dtype, "normal", seed=vocab + k)


# The interpreter's fast run: 2 x 131 (odd V, 2 blocks in 2 chunks) with one k per kind;
# "masked" with k = 20, above its rows' 1 and 3 finite entries. Full: 3 x 999, every k.
_FAST_K = {"normal": 1, "masked": 20, "ties": 33, "huge": 2, "peaked": 2}


@pytest.mark.parametrize("backend,kind,k,size",
                         sweep(NATIVE, KINDS, [1, 2, 20, 33], [(3, 999)])
                         + sweep(INTERP, KINDS, [1, 2, 20, 33], [(3, 999)], fast=lambda *v: False)
                         + sweep(INTERP, KINDS, [1, 2, 20, 33], [(2, 131)],
                                 keep=lambda b, kind, k, size: _FAST_K[kind] == k))
def test_topk_awkward_inputs(backend, kind, k, size):
    # "masked" has rows with 1 and 3 finite entries: k exceeds them (the rest are -inf)
    _check(backend, *size, k, torch.float32, kind, seed=k)
    _check(backend, *size, k, torch.bfloat16, kind, seed=k + 1)


@pytest.mark.parametrize("backend,size", sweep(NATIVE, [(3, 1000)])
                         + sweep(INTERP, [(3, 1000)], fast=lambda *v: False) + sweep(INTERP, [(2, 131)]))
def test_topk_non_contiguous_rows(backend, size):
    _check(backend, *size, 8, torch.float32, "ties", seed=2, pad=24)


def test_topk_all_equal_row_orders_by_id(backend):
    name, device = backend
    x = torch.zeros(2, 300, device=device)
    lp, ids = ek.topk_logprobs(x, 6, backend=name)
    assert ids.cpu().tolist() == [list(range(6))] * 2


@pytest.mark.skipif(not INTERPRETED, reason="patches module globals, which only the interpreter reads per call")
@pytest.mark.parametrize("shape", [(2, 300), pytest.param((3, 700), marks=pytest.mark.slow)])
def test_triton_fallback_without_tl_topk(monkeypatch, shape):
    """Triton releases without tl.topk use max-and-remove rounds: same ids and values."""
    import triton.language as tl

    from eager_kernels.kernels import triton as triton_kernels

    def unavailable(*args, **kwargs):
        raise AssertionError("tl.topk must not be called on the fallback path")

    monkeypatch.setattr(tl, "topk", unavailable, raising=False)
    monkeypatch.setattr(triton_kernels, "_HAS_TL_TOPK", False)
    x = make_logits(*shape, kind="ties", seed=4)
    lp, ids = ek.topk_logprobs(x, 20, backend="triton")
    want_lp, want_ids = reference.topk_logprobs(x.double(), 20)
    assert torch.equal(ids, want_ids)
    torch.testing.assert_close(lp.double(), want_lp, **LOGPROB_TOL)


def _filter_case(case, seed):
    g = torch.Generator().manual_seed(seed)
    if case == "one chunk":  # many blocks per chunk: candidates wait, merges mid-chunk
        return torch.randn(2, 1500, generator=g) * 3, dict(max_chunks=1)
    if case == "ascending":  # every block beats the run: more candidates than the buffer holds
        return torch.arange(1500, dtype=torch.float32).repeat(2, 1), dict(max_chunks=1)
    if case == "ties, block 512":  # a block of equal logits: extra rounds, ordered by id
        return torch.randint(-1, 1, (2, 1500), generator=g).float(), dict(block=512, max_chunks=2)
    if case == "sparse":  # fewer finite logits than buckets: the first block has no bound
        x = torch.full((3, 1500), float("-inf"))
        x[0, 1400] = 1.0
        x[1, 3:300:7] = torch.randn(43, generator=g)
        x[2, 1499] = 0.0
        return x, dict(block=512)
    if case == "signed zeros":  # -0.0 and +0.0 are equal logits: ordered by id
        x = torch.zeros(2, 700)
        x[:, ::3] = -0.0
        x[1, 650:] = 1.0
        return x, {}
    raise ValueError(case)


@pytest.mark.parametrize("case,k", [("one chunk", 20), ("ascending", 20), ("ties, block 512", 2),
                                    ("ties, block 512", 33), ("sparse", 5), ("sparse", 64), ("signed zeros", 8),
                                    pytest.param("one chunk", 64, marks=pytest.mark.slow),
                                    pytest.param("ascending", 3, marks=pytest.mark.slow)])
@cuda_when_present
def test_topk_filter_paths(monkeypatch, case, k):
    """The Triton top-K filter's rarer paths (kernels/triton.py, _partial_kernel) under
    small launch parameters, against the reference: ids exactly, values to tolerance."""
    if not HAS_TRITON:
        pytest.skip("Triton is not installed")
    from eager_kernels.kernels import triton as triton_kernels

    x, config = _filter_case(case, k)
    for key, value in config.items():
        monkeypatch.setitem(triton_kernels.launch_config, key, value)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lp, ids = ek.topk_logprobs(x.to(device), k, backend="triton")
    want_lp, want_ids = reference.topk_logprobs(x.double(), k)
    assert torch.equal(ids.cpu(), want_ids)
    torch.testing.assert_close(lp.double().cpu(), want_lp, **LOGPROB_TOL)
    ent = ek.entropy(x.to(device), top_k=k, backend="triton")
    torch.testing.assert_close(ent.double().cpu(), reference.entropy(x.double(), k), atol=2e-4, rtol=2e-5)
