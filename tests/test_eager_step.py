"""eager_step(): every backend in lockstep with the torch reference over several steps."""
import pytest
import torch

import eager_kernels as ek
from eager_kernels.kernels import reference

from conftest import BACKENDS, DTYPE_LIST, ENTROPY_TOL, INTERP, LOGPROB_TOL, NATIVE, make_logits, max_elements
from gpu_mark import backend_fixture, sweep

backend = backend_fixture(BACKENDS)  # conftest's fixture, the CUDA pairs marked gpu

KINDS = ["normal", "masked", "ties", "huge"]


def _run_steps(backend, rows, vocab, dtype, *, steps, entropy_top_k, temperature, kind="normal", k=4,
               groups=3, q=80.0, theta=0.5):
    name, device = backend
    group = (torch.arange(rows) * 7 % groups).to(device)
    hist = ek.EntropyHistory(groups, steps * rows, device=device, backend=name)
    ref_hist = ek.EntropyHistory(groups, steps * rows, device="cpu", backend="torch")
    for step in range(steps):
        x = make_logits(rows, vocab, dtype=dtype, kind=kind, seed=100 * step + vocab, device=device)
        kw = dict(k=k, temperature=temperature, entropy_top_k=entropy_top_k, q=q, theta=theta,
                  initial_threshold=2.0, seed=42, offset=step)
        got = ek.eager_step(x, hist, group, backend=name, **kw)
        # oracle: each op of the reference on float64 (tokens from the shared stream)
        want_entropy = reference.entropy(x.double().cpu(), entropy_top_k)
        want_thr = ref_hist.threshold(group.cpu(), q=q, theta=theta, initial=2.0)
        want_lp, want_ids = reference.topk_logprobs(x.double().cpu(), k)
        want_token = reference.sample(x.cpu(), temperature, 42, step)
        torch.testing.assert_close(got.entropy.double().cpu(), want_entropy, **ENTROPY_TOL)
        torch.testing.assert_close(got.threshold.cpu(), want_thr, atol=1e-5, rtol=1e-5)
        assert torch.equal(got.branch.cpu(), got.entropy.cpu() > got.threshold.cpu())
        assert torch.equal(got.token.cpu(), want_token)
        assert torch.equal(got.cand_ids.cpu(), want_ids)
        torch.testing.assert_close(got.cand_logprobs.double().cpu(), want_lp, **LOGPROB_TOL)
        ref_hist.append(got.entropy.cpu(), group.cpu())
        assert torch.equal(hist.count.cpu(), ref_hist.count)
    torch.testing.assert_close(hist.values.cpu(), ref_hist.values, atol=1e-6, rtol=0)
    return got


# (rows, vocab, steps); the interpreter's fast run: 3 rows of 2 blocks, 2 steps, one
# (entropy_top_k, temperature) pair per dtype; all pairs at the full size under slow.
STEP_FULL, STEP_TINY = (5, 700, 3), (3, 150, 2)
_TINY_PAIRS = {torch.float32: (None, 0.0), torch.bfloat16: (20, 0.6), torch.float16: (None, 0.6)}


@pytest.mark.parametrize(
    "backend,size,dtype,entropy_top_k,temperature",
    sweep(NATIVE, [STEP_FULL], DTYPE_LIST, [None, 20], [0.0, 0.6])
    + sweep(INTERP, [STEP_FULL], DTYPE_LIST, [None, 20], [0.0, 0.6], fast=lambda *v: False)
    + sweep(INTERP, [STEP_TINY], DTYPE_LIST, [None, 20], [0.0, 0.6],
            keep=lambda b, s, dtype, etk, t: _TINY_PAIRS[dtype] == (etk, t)))
def test_step_small(backend, size, dtype, entropy_top_k, temperature):
    rows, vocab, steps = size
    _run_steps(backend, rows, vocab, dtype, steps=steps, entropy_top_k=entropy_top_k, temperature=temperature)


# The interpreter's fast run: one step on 3 x 150 without the top-K entropy (that path on
# awkward inputs: test_entropy_awkward_inputs); the full case under slow.
@pytest.mark.parametrize("backend,kind,size",
                         sweep(NATIVE, KINDS, ["full"])
                         + sweep(INTERP, KINDS, ["full"], fast=lambda *v: False)
                         + sweep(INTERP, KINDS, ["tiny"]))
def test_step_awkward_inputs(backend, kind, size):
    if size == "full":
        _run_steps(backend, 4, 333, torch.bfloat16, steps=2, entropy_top_k=20, temperature=1.0, kind=kind, k=6)
    else:
        _run_steps(backend, 3, 150, torch.bfloat16, steps=1, entropy_top_k=None, temperature=1.0, kind=kind, k=6)


@pytest.mark.parametrize("backend,shape", sweep(BACKENDS, [(1, 32000), (8, 49152), (3, 152064)],
                                                fast=lambda b, shape: shape == (1, 32000)))
def test_step_real_vocabularies(backend, shape):
    rows, vocab = shape
    name, _ = backend
    if rows * vocab > max_elements(name):
        pytest.skip("shape too large for the Triton interpreter")
    _run_steps(backend, rows, vocab, torch.bfloat16, steps=2, entropy_top_k=20, temperature=0.6)
    _run_steps(backend, rows, vocab, torch.float32, steps=2, entropy_top_k=None, temperature=0.0, k=10)


def test_step_per_row_temperature_and_tensor_counters(backend):
    name, device = backend
    x = make_logits(4, 300, seed=9, device=device)
    temp = torch.tensor([0.0, 0.5, 1.0, 0.0], device=device)
    hist = ek.EntropyHistory(2, 8, device=device, backend=name)
    group = torch.tensor([0, 1, 0, 1], device=device)
    out = ek.eager_step(x, hist, group, k=2, temperature=temp, q=50, theta=0.0, initial_threshold=1.0,
                        seed=torch.tensor(5, device=device), offset=torch.tensor(3, device=device), backend=name)
    assert torch.equal(out.token.cpu(), reference.sample(x.cpu(), temp.cpu(), 5, 3))
    assert torch.equal(out.token[[0, 3]].cpu(), x.argmax(-1)[[0, 3]].cpu())
    assert torch.equal(out.threshold.cpu(), torch.ones(4))  # empty history: initial
    assert hist.count.cpu().tolist() == [2, 2]


def test_step_paper_policy_branch_uses_history_before_step(backend):
    name, device = backend
    hist = ek.EntropyHistory(1, 16, device=device, backend=name)
    hist.append(torch.tensor([1.0, 2.0, 3.0], device=device), torch.zeros(3, dtype=torch.int64, device=device))
    flat = torch.zeros(2, 64, device=device)  # entropy ln 64 = 4.16 > every past value
    out = ek.eager_step(flat, hist, torch.zeros(2, dtype=torch.int64, device=device), k=2, temperature=0.0,
                        q=99.0, theta=2.0, initial_threshold=9.0, seed=0, offset=0, backend=name)
    assert torch.allclose(out.threshold.cpu(), torch.full((2,), torch.quantile(torch.tensor([1.0, 2.0, 3.0]), 0.99).item()))
    assert out.branch.all()
    assert hist.count.item() == 5


def test_step_empty_batch(backend):
    name, device = backend
    hist = ek.EntropyHistory(1, 4, device=device, backend=name)
    out = ek.eager_step(torch.empty(0, 10, device=device), hist, torch.empty(0, dtype=torch.int64, device=device),
                        k=3, temperature=0.5, q=80, theta=0, initial_threshold=1, seed=0, offset=0, backend=name)
    assert out.cand_ids.shape == (0, 3) and out.entropy.shape == (0,)
    assert hist.count.item() == 0


@pytest.mark.parametrize("fill", [0, 3000, 5000])
def test_fused_history_merge_long_buffers_and_ties(backend, fill):
    """The fused append into long sorted buffers (several merge blocks, early stop below
    the smallest new value) with values tied to recorded ones, against the reference."""
    name, device = backend
    if name == "torch":
        pytest.skip("the reference is the oracle here")
    gen = torch.Generator().manual_seed(fill)
    groups, rows = 3, 6
    recorded = (torch.rand(fill, generator=gen) * 4).round(decimals=1)  # many exact ties
    rec_groups = torch.randint(0, groups, (fill,), generator=gen)
    hist = ek.EntropyHistory(groups, fill + 64, device=device, backend=name)
    ref = ek.EntropyHistory(groups, fill + 64, backend="torch")
    if fill:
        hist.append(recorded.to(device), rec_groups.to(device))
        ref.append(recorded, rec_groups)
    group = torch.tensor([2, 0, 2, 2, 1, 0], device=device)
    for step in range(2):
        x = torch.zeros(rows, 64)
        x[:, : 2 + 8 * step] = 1.0  # entropies log(2), log(10): ties across rows
        x = x.to(device)
        out = ek.eager_step(x, hist, group, k=2, temperature=0.0, q=50.0, theta=0.0, initial_threshold=1.0,
                            seed=0, offset=step, backend=name)
        ref.append(out.entropy.cpu(), group.cpu())
    assert torch.equal(hist.count.cpu(), ref.count)
    torch.testing.assert_close(hist.values.cpu(), ref.values, atol=1e-6, rtol=0)


@pytest.mark.parametrize("group_ids", [[1, 0, 1], [0, 0, 0, 1, 1]])
def test_step_raises_before_a_group_overflows_on_cpu(backend, group_ids):
    """On CPU the public step raises ValueError naming the first full group before any
    change (the C++ step checks the room itself, the other backends through check_room)."""
    name, device = backend
    if device == "cuda":
        pytest.skip("on CUDA a full group is flagged, not raised (the test below)")
    hist = ek.EntropyHistory(2, 3, device=device, backend=name)
    hist.append(torch.tensor([1.0, 2.0, 3.0], device=device), torch.tensor([0, 1, 1], device=device))
    saved = (hist.values.clone(), hist.count.clone(), hist.overflow.clone())
    group = torch.tensor(group_ids, device=device)
    x = torch.zeros(len(group_ids), 16, device=device)
    full = 1 if group_ids == [1, 0, 1] else 0  # [0, 0, 0, 1, 1]: both overflow, group 0 is named
    with pytest.raises(ValueError, match=f"group {full} would hold 4 values, over capacity 3"):
        ek.eager_step(x, hist, group, k=2, temperature=0.5, q=50.0, theta=0.0, initial_threshold=1.0,
                      seed=0, offset=0, backend=name)
    assert all(torch.equal(a, b) for a, b in zip((hist.values, hist.count, hist.overflow), saved))
    out = ek.eager_step(x[:1], hist, group[:1], k=2, temperature=0.5, q=50.0, theta=0.0, initial_threshold=1.0,
                        seed=0, offset=0, backend=name)  # a step that fits still runs
    assert hist.count.sum().item() == 4 and out.token.shape == (1,)


def test_cpu_step_room_check_flag():
    """_C.eager_step(..., room_check=True) raises like the public API; the default flags."""
    if not ek.cpu_extension_available():
        pytest.skip("the C++ extension is not built")
    from eager_kernels.kernels import _C

    x = torch.zeros(3, 16)
    group = torch.tensor([0, 0, 1])
    hist = ek.EntropyHistory(2, 2, backend="cpu")
    args = (x, hist.values, hist.count, hist.overflow, group, 2, 0.0, None, 50.0, 0.0, 1.0, 0, 0)
    _C.eager_step(*args, True)
    assert hist.count.tolist() == [2, 1]
    with pytest.raises(ValueError, match="group 0 would hold 4 values, over capacity 2"):
        _C.eager_step(*args, room_check=True)
    assert hist.count.tolist() == [2, 1] and not hist.overflow.any()
    _C.eager_step(*args)
    assert hist.count.tolist() == [2, 2] and hist.overflow.tolist() == [True, False]


def test_fused_step_sets_overflow_flag_when_called_below_the_api(backend):
    """Where the public API cannot check capacity without a host sync (CUDA), the fused
    step leaves a full group untouched and flags it; other groups are appended."""
    name, device = backend
    if name == "torch":
        pytest.skip("fused backends only")
    from eager_kernels.kernels import registry as _registry

    impl = _registry.implementation(name)
    hist = ek.EntropyHistory(2, 3, device=device, backend=name)
    hist.append(torch.tensor([1.0, 2.0], device=device), torch.tensor([0, 0], device=device))
    x = torch.zeros(3, 16, device=device)
    group = torch.tensor([0, 0, 1], device=device)
    impl.eager_step(x, hist.values, hist.count, hist.overflow, group, 2, 0.0, None, 50.0, 0.0, 1.0, 0, 0)
    assert hist.count.cpu().tolist() == [2, 1]
    assert hist.overflow.cpu().tolist() == [True, False]
    assert hist.recorded(0).cpu().tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="overflowed"):
        hist.check()


def test_step_per_row_seed_is_batch_invariant(backend):
    """eager_step with a key per row: each row's token equals the row's own step run alone
    (with its key as a scalar seed) and the reference's per-row stream."""
    name, device = backend
    rows, vocab = 4, 500
    x = make_logits(rows, vocab, seed=5, device=device)
    keys = torch.tensor([10, 2**33 + 1, -4, 10], device=device)
    kw = dict(k=3, temperature=0.8, q=50.0, theta=0.1, initial_threshold=1.0, offset=3)
    hist = ek.EntropyHistory(rows, 4, device=device, backend=name)
    got = ek.eager_step(x, hist, torch.arange(rows, device=device), seed=keys, backend=name, **kw)
    assert torch.equal(got.token.cpu(), reference.sample(x.cpu(), 0.8, keys.cpu(), 3))
    for r in range(rows):
        h1 = ek.EntropyHistory(1, 4, device=device, backend=name)
        alone = ek.eager_step(x[r:r + 1], h1, torch.zeros(1, dtype=torch.int64, device=device),
                              seed=int(keys[r]), backend=name, **kw)
        assert int(alone.token) == int(got.token[r])
        assert torch.equal(alone.cand_ids.cpu()[0], got.cand_ids.cpu()[r])
