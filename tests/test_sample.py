"""sample(): the same Philox stream in every backend (identical tokens), greedy ties, and
the empirical distribution against softmax(x / T)."""
import pytest
import torch

import eager_kernels as ek
from eager_kernels.kernels import reference

from conftest import (BACKENDS, DTYPE_LIST, INTERP, KINDS, NATIVE, interpreted, make_logits, max_elements, rotation)
from gpu_mark import backend_fixture, sweep

backend = backend_fixture(BACKENDS)  # conftest's fixture, the CUDA pairs marked gpu


def test_philox_known_answers():
    """Philox-4x32-10 known-answer vectors (Random123's kat_vectors)."""
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for counter, key, expected in cases:
        out = reference.philox4x32(*[torch.tensor([c]) for c in counter], *key)
        assert tuple(int(o) for o in out) == expected


def test_uniform_stream_properties():
    u = reference.philox_uniform(123, 4, 64, 1000)
    assert u.dtype == torch.float32 and u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01
    assert not torch.equal(u, reference.philox_uniform(123, 5, 64, 1000))  # offset matters
    assert not torch.equal(u, reference.philox_uniform(124, 4, 64, 1000))  # seed matters
    assert torch.equal(u[:, :999], reference.philox_uniform(123, 4, 64, 999))  # column-keyed


TEMPERATURES = [0.0, 0.6, 1.0, 3.0]


def _fast_stream(backend, dtype, kind, temperature):
    # the interpreter: every (kind, dtype) pair, the temperature rotating
    return not interpreted(backend) or (
        TEMPERATURES[rotation((kind, KINDS), (dtype, DTYPE_LIST)) % len(TEMPERATURES)] == temperature)


@pytest.mark.parametrize("backend,dtype,kind,temperature", sweep(BACKENDS, DTYPE_LIST, KINDS, TEMPERATURES,
                                                                 fast=_fast_stream))
def test_sample_matches_reference_stream(backend, dtype, kind, temperature):
    name, device = backend
    rows, vocab = 4, 1000
    x = make_logits(rows, vocab, dtype=dtype, kind=kind, seed=3, device=device)
    got = ek.sample(x, temperature=temperature, seed=2024, offset=17, backend=name)
    want = reference.sample(x.cpu(), temperature, 2024, 17)
    assert got.dtype == torch.int64 and torch.equal(got.cpu(), want)


@pytest.mark.parametrize("rows,vocab", [(1, 1), (3, 7), (2, 32000), (2, 152064)])
def test_sample_large_vocab_matches_reference(backend, rows, vocab):
    name, device = backend
    if rows * vocab > max_elements(name):
        pytest.skip("shape too large for the Triton interpreter")
    x = make_logits(rows, vocab, seed=vocab, device=device)
    temp = torch.tensor([0.7, 0.0, 1.3][:rows], device=device) if rows > 1 else 0.7
    got = ek.sample(x, temperature=temp, seed=-77, offset=2**40 + 5, backend=name)
    assert torch.equal(got.cpu(), reference.sample(x.cpu(), temp if isinstance(temp, float) else temp.cpu(), -77, 2**40 + 5))


def test_sample_tensor_counters_equal_ints(backend):
    name, device = backend
    x = make_logits(3, 500, seed=1, device=device)
    a = ek.sample(x, temperature=1.0, seed=9, offset=4, backend=name)
    b = ek.sample(x, temperature=torch.ones(3, device=device), seed=torch.tensor(9, device=device),
                  offset=torch.tensor([4], device=device), backend=name)
    assert torch.equal(a, b)
    c = ek.sample(x, temperature=1.0, seed=9, offset=5, backend=name)
    assert not torch.equal(a, c) or True  # different offsets may still agree on 3 rows
    rows_differ = ek.sample(make_logits(64, 50, seed=1, device=device), temperature=1.0, seed=9, offset=4, backend=name)
    assert not torch.equal(rows_differ, ek.sample(make_logits(64, 50, seed=1, device=device), temperature=1.0,
                                                  seed=9, offset=5, backend=name))


def test_greedy_ties_go_to_smaller_id(backend):
    name, device = backend
    x = torch.zeros(3, 700, device=device)
    x[0, [5, 300, 699]] = 2.0
    x[1, [650, 699]] = 1.0
    x[2, :] = float("-inf")
    x[2, [400, 401]] = -3.0
    assert ek.sample(x, temperature=0.0, seed=0, backend=name).cpu().tolist() == [5, 650, 400]


def _chi_square(counts, probs):
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


# The interpreter runs one program per row (about 20 ms each): its fast run draws 200 times
# at T = 1 (its tokens equal the reference stream's: test_sample_matches_reference_stream);
# 1,000 draws at every temperature under slow.
@pytest.mark.parametrize("backend,temperature,draws",
                         sweep(NATIVE, [0.5, 1.0, 2.5], [40_000])
                         + sweep(INTERP, [0.5, 1.0, 2.5], [1_000], fast=lambda *v: False)
                         + sweep(INTERP, [1.0], [200]))
def test_sample_distribution(backend, temperature, draws):
    """Empirical frequencies over many independent draws (one per row of a batch of
    identical rows) against softmax(x / T): chi-square with 7 degrees of freedom below
    its 0.9999 quantile (31.3). Deterministic for a fixed seed."""
    name, device = backend
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, 2.0, float("-inf"), 1.5, -1.0, 0.2])
    x = logits.expand(draws, -1).contiguous().to(device)
    tokens = ek.sample(x, temperature=temperature, seed=31337, offset=0, backend=name).cpu()
    counts = torch.bincount(tokens, minlength=9).double()
    assert counts[5] == 0  # a masked token is never drawn
    probs = torch.softmax(logits.double() / temperature, -1)
    keep = probs > 0
    assert _chi_square(counts[keep], probs[keep]) < 31.3


def test_sample_empty_batch(backend):
    name, device = backend
    assert ek.sample(torch.empty(0, 5, device=device), temperature=1.0, seed=0, backend=name).shape == (0,)


# ---------------------------------------------------------------------------------------
# Per-row seeds: a key per row, draws independent of the batch
# ---------------------------------------------------------------------------------------

KEYS = [5, -3, 2**40 + 7, 5, 0]


@pytest.mark.parametrize("temperature", [0.7, "rows"])
def test_per_row_seed_is_batch_invariant(backend, temperature):
    """sample(x, seed=keys)[r] == sample(x[r:r+1], seed=int(keys[r]))[0], the reference
    stream per row, and equal keys on equal rows give equal draws."""
    name, device = backend
    x = make_logits(5, 600, seed=11, device=device)
    x[3] = x[0]  # rows 0 and 3 share a key and their logits
    keys = torch.tensor(KEYS, device=device)
    temp = torch.tensor([0.7, 1.3, 0.0, 0.7, 2.0], device=device) if temperature == "rows" else temperature
    got = ek.sample(x, temperature=temp, seed=keys, offset=9, backend=name).cpu()
    want = reference.sample(x.cpu(), temp.cpu() if isinstance(temp, torch.Tensor) else temp, keys.cpu(), 9)
    assert torch.equal(got, want)
    for r in range(5):
        t_r = temp[r:r + 1] if isinstance(temp, torch.Tensor) else temp
        alone = ek.sample(x[r:r + 1], temperature=t_r, seed=KEYS[r], offset=9, backend=name)
        assert int(alone) == int(got[r])
    assert got[0] == got[3]
    # another order of the rows: the same draws, permuted
    perm = torch.tensor([4, 2, 0, 1, 3])
    again = ek.sample(x[perm.to(device)], temperature=temp[perm.to(device)] if isinstance(temp, torch.Tensor) else temp,
                      seed=keys[perm.to(device)], offset=9, backend=name).cpu()
    assert torch.equal(again, got[perm])


def test_per_row_stream_rows_differ_by_key():
    """The per-row stream: row r is the scalar stream of key keys[r] at row 0."""
    keys = torch.tensor([3, 4, 3])
    u = reference.philox_uniform(keys, 2, 3, 50)
    assert torch.equal(u[0], u[2]) and not torch.equal(u[0], u[1])
    assert torch.equal(u[1:2], reference.philox_uniform(4, 2, 1, 50))
    assert not torch.equal(u, reference.philox_uniform(3, 2, 3, 50))  # not the scalar stream


def test_per_row_seed_statistics(backend):
    """Distinct keys on identical rows give independent draws from softmax(x / T)."""
    name, device = backend
    if interpreted(backend):
        pytest.skip("slow under the interpreter; its per-row draws equal the reference's (tests above)")
    draws = 20_000
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, 2.0, float("-inf"), 1.5, -1.0, 0.2])
    x = logits.expand(draws, -1).contiguous().to(device)
    keys = torch.arange(draws, device=device) * 7919 + 3
    tokens = ek.sample(x, temperature=1.0, seed=keys, offset=0, backend=name).cpu()
    counts = torch.bincount(tokens, minlength=9).double()
    probs = torch.softmax(logits.double(), -1)
    keep = probs > 0
    assert counts[5] == 0 and _chi_square(counts[keep], probs[keep]) < 31.3


def test_per_row_seed_errors(backend):
    name, device = backend
    x = make_logits(3, 50, seed=1, device=device)
    with pytest.raises(TypeError, match="seed: expected .*int64"):
        ek.sample(x, temperature=1.0, seed=torch.tensor([1, 2, 3], dtype=torch.int32, device=device), backend=name)
    with pytest.raises(ValueError, match=r"seed: .*shape \[3\]"):
        ek.sample(x, temperature=1.0, seed=torch.tensor([1, 2], device=device), backend=name)
    with pytest.raises(ValueError, match=r"seed: .*shape \[3\]"):
        ek.sample(x, temperature=1.0, seed=torch.ones(3, 1, dtype=torch.int64, device=device), backend=name)
    if device == "cpu":
        meta = torch.tensor([1, 2, 3], device="meta")
        with pytest.raises(ValueError, match="seed: a per-row seed tensor must be on cpu"):
            ek.sample(x, temperature=1.0, seed=meta, backend=name)


def test_per_row_seed_dispatcher_op():
    """The registered op (what torch.compile traces) takes the [B] seed too."""
    x = make_logits(4, 300, seed=2)
    keys = torch.tensor([1, 2, 3, 4])
    op = torch.ops.eager_kernels.sample.default
    got = op(x, torch.full((4,), 0.8), keys, torch.tensor(6))
    assert torch.equal(got, reference.sample(x, 0.8, keys, 6))
    # a one-element seed of any shape is the scalar form
    assert torch.equal(op(x, torch.full((4,), 0.8), torch.tensor([[6]]), torch.tensor(6)),
                       reference.sample(x, 0.8, 6, 6))


@pytest.mark.slow
def test_per_row_seed_compiled():
    """torch.compile(fullgraph=True) traces the per-row seed through the registered op."""
    x = make_logits(4, 300, seed=2)
    keys = torch.tensor([1, 2, 3, 4])
    compiled = torch.compile(lambda x, s: ek.sample(x, temperature=0.8, seed=s, offset=6), fullgraph=True)
    assert torch.equal(compiled(x, keys), reference.sample(x, 0.8, keys, 6))
