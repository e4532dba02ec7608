"""entropy(): every backend against the float64 reference."""
import pytest
import torch

import eager_kernels as ek
from eager_kernels import reference

from conftest import DTYPES, ENTROPY_TOL, KINDS, make_logits, max_elements

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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,vocab", SHAPES)
@pytest.mark.parametrize("top_k", [None, 20])
def test_entropy_shapes_dtypes(backend, rows, vocab, dtype, top_k):
    _check(backend, rows, vocab, dtype, "normal", top_k, seed=rows * 7 + vocab)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("top_k", [None, 1, 4, 20, 64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_entropy_awkward_inputs(backend, kind, top_k, dtype):
    _check(backend, 3, 997, dtype, kind, top_k, seed=11)


@pytest.mark.parametrize("kind", ["normal", "masked"])
def test_entropy_non_contiguous_rows(backend, kind):
    _check(backend, 3, 1000, torch.float32, kind, None, seed=5, pad=37)
    _check(backend, 3, 1000, torch.bfloat16, kind, 20, seed=6, pad=37)


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
