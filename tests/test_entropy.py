"""entropy(): every backend against the float64 reference."""
import pytest
import torch

import eager_kernels as ek
from eager_kernels.kernels import reference

from conftest import (BACKENDS, DTYPE_LIST, ENTROPY_TOL, INTERP, KINDS, NATIVE, interpreted, make_logits,
                      max_elements, rotation)
from gpu_mark import backend_fixture, sweep

backend = backend_fixture(BACKENDS)  # conftest's fixture, the CUDA pairs marked gpu

SHAPES = [(1, 1), (3, 7), (2, 1000), (1, 1023), (3, 111), (4, 32000), (2, 49152), (2, 152064)]


def _check(backend, rows, vocab, dtype, kind, top_k, seed=0, pad=0):
    name, device = backend
    if rows * vocab > max_elements(name):
        pytest.skip("shape too large for the Triton interpreter")
    if top_k is not None and top_k > vocab:
        pytest.skip("top_k > V")
    x = make_logits(rows, vocab, dtype=dtype, kind=kind, seed=seed, device=device, row_stride_pad=pad)
    got = ek.entropy(x, top_k=top_k, backend=name)
    want = reference.entropy(x.double(), top_k)
    assert got.dtype == torch.float32 and got.shape == (rows,)
    torch.testing.assert_close(got.double().cpu(), want.cpu(), **ENTROPY_TOL)
    assert torch.all(got >= 0)


def _fast_shape(backend, shape, dtype, top_k):
    # the interpreter: the top-K path (0.3 s per row-block) on one small odd shape
    return not interpreted(backend) or top_k is None or (shape == (3, 111) and dtype == torch.float32)


@pytest.mark.parametrize("backend,shape,dtype,top_k", sweep(BACKENDS, SHAPES, DTYPE_LIST, [None, 20], fast=_fast_shape))
def test_entropy_shapes_dtypes(backend, shape, dtype, top_k):
    rows, vocab = shape
    _check(backend, rows, vocab, dtype, "normal", top_k, seed=rows * 7 + vocab)


TOP_KS = [None, 1, 4, 20, 64]


# Full: 3 x 997 for every (kind, top_k, dtype). The interpreter's fast run: 2 x 131 (odd V,
# 2 blocks in 2 chunks), every (kind, dtype) pair with the top_k rotating through None, 1,
# 4, 20 (64: under slow and in test_topk_shapes_dtypes).
@pytest.mark.parametrize(
    "backend,kind,top_k,dtype,size",
    sweep(NATIVE, KINDS, TOP_KS, DTYPE_LIST, [(3, 997)])
    + sweep(INTERP, KINDS, TOP_KS, DTYPE_LIST, [(3, 997)], fast=lambda *v: False)
    + sweep(INTERP, KINDS, TOP_KS[:4], DTYPE_LIST, [(2, 131)],
            keep=lambda b, kind, top_k, dtype, size:
            TOP_KS[rotation((kind, KINDS), (dtype, DTYPE_LIST)) % 4] == top_k))
def test_entropy_awkward_inputs(backend, kind, top_k, dtype, size):
    _check(backend, *size, dtype, kind, top_k, seed=11)


@pytest.mark.parametrize("backend,kind,size", sweep(NATIVE, ["normal", "masked"], [(3, 1000)])
                         + sweep(INTERP, ["normal", "masked"], [(3, 1000)], fast=lambda *v: False)
                         + sweep(INTERP, ["normal", "masked"], [(2, 131)]))
def test_entropy_non_contiguous_rows(backend, kind, size):
    _check(backend, *size, torch.float32, kind, None, seed=5, pad=37)
    _check(backend, *size, torch.bfloat16, kind, 20, seed=6, pad=37)


def test_entropy_known_values(backend):
    name, device = backend
    uniform = torch.zeros(2, 50, device=device)
    one_hot = torch.full((1, 50), float("-inf"), device=device)
    one_hot[0, 7] = 3.0
    torch.testing.assert_close(ek.entropy(uniform, backend=name).cpu(), torch.full((2,), 50.0).log())
    # top-K of a uniform row is uniform over K
    torch.testing.assert_close(ek.entropy(uniform, top_k=20, backend=name).cpu(), torch.full((2,), 20.0).log())
    assert ek.entropy(one_hot, backend=name).item() == pytest.approx(0.0, abs=1e-6)


def test_entropy_empty_batch(backend):
    name, device = backend
    out = ek.entropy(torch.empty(0, 10, device=device), backend=name)
    assert out.shape == (0,) and out.dtype == torch.float32
