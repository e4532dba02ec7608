"""topk_logprobs(): values against the float64 reference; ids exactly (the contract fixes
the tie order: equal logits go to the smaller id first)."""
import pytest
import torch

import eager_kernels as ek
from eager_kernels import reference

from conftest import DTYPES, INTERPRETED, KINDS, LOGPROB_TOL, make_logits, max_elements


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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,vocab,k", [(1, 1, 1), (3, 7, 7), (2, 1000, 5), (3, 111, 64),
                                          (4, 32000, 4), (2, 49152, 20), (2, 152064, 64)])
def test_topk_shapes_dtypes(backend, rows, vocab, k, dtype):
    _check(backend, rows, vocab, k, dtype, "normal", seed=vocab + k)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [1, 2, 20, 33])
def test_topk_awkward_inputs(backend, kind, k):
    # "masked" has rows with 1 and 3 finite entries: k exceeds them (the rest are -inf)
    _check(backend, 3, 999, k, torch.float32, kind, seed=k)
    _check(backend, 3, 999, k, torch.bfloat16, kind, seed=k + 1)


def test_topk_non_contiguous_rows(backend):
    _check(backend, 3, 1000, 8, torch.float32, "ties", seed=2, pad=24)


def test_topk_all_equal_row_orders_by_id(backend):
    name, device = backend
    x = torch.zeros(2, 300, device=device)
    lp, ids = ek.topk_logprobs(x, 6, backend=name)
    assert ids.cpu().tolist() == [list(range(6))] * 2


@pytest.mark.skipif(not INTERPRETED, reason="patches module globals, which only the interpreter reads per call")
def test_triton_fallback_without_tl_topk(monkeypatch):
    """Triton releases without tl.topk use max-and-remove rounds: same ids and values."""
    import triton.language as tl

    from eager_kernels import triton_kernels

    def unavailable(*args, **kwargs):
        raise AssertionError("tl.topk must not be called on the fallback path")

    monkeypatch.setattr(tl, "topk", unavailable, raising=False)
    monkeypatch.setattr(triton_kernels, "_HAS_TL_TOPK", False)
    x = make_logits(3, 700, kind="ties", seed=4)
    lp, ids = ek.topk_logprobs(x, 20, backend="triton")
    want_lp, want_ids = reference.topk_logprobs(x.double(), 20)
    assert torch.equal(ids, want_ids)
    torch.testing.assert_close(lp.double(), want_lp, **LOGPROB_TOL)
