"""The C++ CPU backend (eager_kernels.kernels._C) against the float64 reference.

Every data test runs with each kernel set the CPU allows (`_C.set_isa`): AVX-512, the
portable kernels with AVX2 dense loops, and the plain portable kernels, so every code path
is held to the reference.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

import eager_kernels as ek
from eager_kernels.kernels import registry as _registry, reference as ref

if not _registry.cpu_extension_available():  # genuinely not built (EAGER_KERNELS_SKIP_CPP=1)
    pytest.skip(f"C++ extension not built: {_registry.cpu_extension_error()}", allow_module_level=True)

from eager_kernels.kernels import _C, cpu as cpu_backend  # noqa: E402

ISAS = (["avx512"] if _C.avx512_supported() else []) + (["avx2"] if _C.avx2_supported() else []) + ["scalar"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
VOCABS = [1, 7, 1000, 32000, 49152]
CASES = ["randn", "masked", "ties", "huge", "shifted", "negative", "strided"]


@pytest.fixture(autouse=True)
def _restore_isa():
    yield
    _C.set_isa("auto")


@pytest.fixture(params=ISAS)
def isa(request):
    _C.set_isa(request.param)
    yield request.param
    _C.set_isa("auto")


def each_isa():
    """Run the body once per kernel set (the reference is computed once, outside)."""
    try:
        for name in ISAS:
            _C.set_isa(name)
            yield name
    finally:
        _C.set_isa("auto")


def make_logits(case: str, rows: int, vocab: int, dtype, gen: torch.Generator) -> torch.Tensor:
    """Fresh random logits of one awkward kind, in `dtype` (last dimension contiguous)."""
    x = torch.randn(rows, vocab, generator=gen) * 3
    if case == "masked":
        mask = torch.rand(rows, vocab, generator=gen) < 0.6
        x[mask] = float("-inf")
        x[0, :] = float("-inf")
        x[0, vocab // 2] = 1.5  # a row with one finite entry
        for r in range(rows):  # every row keeps a finite entry
            if torch.isinf(x[r]).all():
                x[r, 0] = 0.25
    elif case == "ties":
        x = torch.round(x)  # many exactly equal values
    elif case == "huge":
        x = x * 3000.0  # |x| ~ 1e4
    elif case == "shifted":
        # Rows far from 0: the AVX2 log-sum-exp takes J = ceil(8 log2(e) max) as an integer
        # below 2^21 (|max| up to about 1.8e5; 1.8e5 here) and falls back to x - max beyond
        # (5e5: past 2^22, where its shifter trick would be wrong); float16 tops out at 65504.
        shift = [6e4, -6e4, 5e4] if dtype == torch.float16 else [5e5, -5e5, 1.8e5]
        shift = torch.tensor(shift + [shift[0]] * (rows - 3))[:rows]
        x = x + shift[:, None]
    elif case == "negative":
        # Log-probability-like rows (all below 0) with +0.0 and -0.0 entries on top: the
        # AVX2 bfloat16 filters compare the bits as int16, where a negative bound (the
        # Gumbel scan's best - T G here) and the signed zeros (the top-k bound) take their
        # own form.
        x = x - 12.0
        x[:, ::97] = 0.0
        x[:, 50::97] = -0.0
    if case == "strided":
        wide = torch.randn(rows, vocab + 37, generator=gen).to(dtype) * 3
        return wide[:, 5 : 5 + vocab]  # row stride vocab + 37, last dim contiguous
    return x.to(dtype)


def assert_topk(lp, ids, x, k):
    lp_ref, ids_ref = ref.topk_logprobs(x.double(), k)
    torch.testing.assert_close(lp, lp_ref.float(), atol=1e-4, rtol=1e-5)
    assert torch.equal(ids, ids_ref), "top-k ids differ from the stable-sort order (value desc, id asc)"


def _slow_unless(fast: bool):
    return () if fast else (pytest.mark.slow,)


# The fast run: every case and dtype up to V = 1000, and the real vocabulary 32000 (several
# kernel blocks) on plain and masked rows; every (case, V, dtype) under slow.
@pytest.mark.parametrize("dtype,vocab,case", [
    pytest.param(d, v, c, marks=_slow_unless(v <= 1000 or (v == 32000 and c in ("randn", "masked"))),
                 id=f"{c}-{v}-{d}".replace("torch.", ""))
    for d in DTYPES for v in VOCABS for c in CASES])
def test_ops_match_reference(dtype, vocab, case):
    gen = torch.Generator().manual_seed(hash((dtype, vocab, case)) % 2**31)
    x = make_logits(case, 3, vocab, dtype, gen)
    top_k, k = min(20, vocab), min(8, vocab)
    want_ent = ref.entropy(x.double()).float()
    want_ent_k = ref.entropy(x.double(), top_k).float()
    want_lp, want_ids = ref.topk_logprobs(x.double(), k)
    want_tok = {t: ref.sample(x, t, 1234, vocab) for t in (0.6, 0.0)}
    for isa in each_isa():
        torch.testing.assert_close(ek.entropy(x, backend="cpu"), want_ent, atol=2e-4, rtol=1e-5, msg=isa)
        torch.testing.assert_close(ek.entropy(x, top_k=top_k, backend="cpu"), want_ent_k, atol=2e-5, rtol=1e-5,
                                   msg=isa)
        lp, ids = ek.topk_logprobs(x, k, backend="cpu")
        torch.testing.assert_close(lp, want_lp.float(), atol=1e-4, rtol=1e-5, msg=isa)
        assert torch.equal(ids, want_ids), f"{isa}: top-k ids differ from the order (value desc, id asc)"
        for temperature, want in want_tok.items():
            tok = ek.sample(x, temperature=temperature, seed=1234, offset=vocab, backend="cpu")
            assert torch.equal(tok, want), (isa, temperature)


@pytest.mark.parametrize("dtype", DTYPES)
def test_k_above_finite_entries(isa, dtype):
    """k larger than a row's finite entries: the rest are -inf entries, smallest ids first."""
    x = torch.full((2, 50), float("-inf"))
    x[0, [7, 3, 40]] = torch.tensor([1.0, 2.0, 1.0])
    x[1] = torch.randn(50)
    x = x.to(dtype)
    lp, ids = ek.topk_logprobs(x, 8, backend="cpu")
    assert ids[0].tolist() == [3, 7, 40, 0, 1, 2, 4, 5]
    assert torch.isinf(lp[0, 3:]).all() and (lp[0, 3:] < 0).all()
    assert_topk(lp, ids, x, 8)
    torch.testing.assert_close(ek.entropy(x, top_k=8, backend="cpu"), ref.entropy(x.double(), 8).float(),
                               atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("seed,offset", [(0, 0), (1234, 7), (-1, 2**40 + 3), (2**62 + 5, -(2**35))])
@pytest.mark.parametrize("cols", [1, 7, 64, 1001, 4099])
def test_philox_stream_bit_exact(isa, seed, offset, cols):
    got = _C.philox_uniform(3, cols, seed, offset)
    want = ref.philox_uniform(seed, offset, 3, cols).clamp_min(ref.UNIFORM_MIN)
    assert torch.equal(got, want)


def test_gumbel_bounds_hold():
    """The kernels skip the noise where x + T * bound cannot win: each bucket's bound must
    be above -log(-log u) of the largest uniform in the bucket (computed as torch does)."""
    bounds = torch.tensor(_C.gumbel_bounds())
    assert bounds.max() <= ref.GUMBEL_MAX
    for lz in range(1, 33):
        d = 0 if lz == 32 else 2 ** (31 - lz)
        folded = torch.tensor([2**31 - 1 - d], dtype=torch.int64)
        u = ref.uint32_to_uniform(folded).clamp_min(ref.UNIFORM_MIN)
        g = -torch.log(-torch.log(u))
        assert g.item() <= bounds[lz % 32].item()
    # Every folded value in a bucket gives at most the bucket's edge value (monotone).
    folded = torch.randint(0, 2**31, (100000,), dtype=torch.int64)
    u = ref.uint32_to_uniform(folded).clamp_min(ref.UNIFORM_MIN)
    g = -torch.log(-torch.log(u))
    d = (2**31 - 1) - folded
    lz = torch.where(d == 0, torch.full_like(d, 32), 31 - torch.floor(torch.log2(d.double().clamp_min(1))).long())
    assert (g <= bounds[lz % 32]).all()


def test_gumbel_line_above_table():
    """The AVX2 kernels bound the noise by a line a * lz + b in the bucket (no table lookup):
    it must be above the table for every bucket they can see, lz = 1..23 (a lane with
    2^31 - 1 - folded < 256 comes out as lz = 158 there), evaluated in float32 as they do."""
    a, b = _C.gumbel_line()
    bounds = torch.tensor(_C.gumbel_bounds(), dtype=torch.float64)
    for lz in range(1, 24):
        expo = 158 - lz  # the float exponent field the kernel reads
        line = torch.tensor(158 * a + b, dtype=torch.float32) - torch.tensor(a, dtype=torch.float32) * expo
        assert line.item() >= bounds[lz].item(), lz
        assert line.item() - bounds[lz].item() < 0.5, lz  # loose by under 0.5: few extra lanes pass the test
    assert 158 * a + b >= bounds.max().item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["flat", "peaked", "masked"])
# 4099: a last block of 3 columns, a partial quad (the fast run); 49152 under slow
@pytest.mark.parametrize("vocab", [pytest.param(49152, marks=pytest.mark.slow), 4099])
def test_sample_identical_to_reference(dtype, kind, vocab):
    gen = torch.Generator().manual_seed(7)
    rows = 6
    x = torch.randn(rows, vocab, generator=gen) * 3
    if kind == "peaked":  # LLM-like: a few tokens far above the rest (exercises the skips)
        x = torch.randn(rows, vocab, generator=gen) * 2
        x[:, torch.randint(0, vocab, (5,), generator=gen)] += 14.0
    elif kind == "masked":
        x[torch.rand(rows, vocab, generator=gen) < 0.9] = float("-inf")
    x = x.to(dtype)
    temps = torch.tensor([0.6, 1.0, 0.0, 2.5, 1e-3, 0.3])
    for seed, offset in [(0, 0), (42, 17), (torch.tensor(99), torch.tensor([5]))]:
        want_rows = ref.sample(x, temps, seed, offset)
        want = ref.sample(x, 0.6, seed, offset)
        for isa in each_isa():
            got = ek.sample(x, temperature=temps, seed=seed, offset=offset, backend="cpu")
            assert torch.equal(got, want_rows), isa
            got = ek.sample(x, temperature=0.6, seed=seed, offset=offset, backend="cpu")
            assert torch.equal(got, want), isa


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_max_positions(dtype):
    """The AVX2 kernels seed the Gumbel arg-max with the score of the chunk's largest logit
    (its first column) and read the quads' logits again from the row: the largest logit
    first, last (in a partial last quad), repeated, and in every chunk of a row split in
    several, against the reference."""
    gen = torch.Generator().manual_seed(5)
    for vocab, rows in [(5, 3), (257, 3), (4099, 4), (40003, 1)]:  # 40003: one row in 2 chunks
        x = torch.randn(rows, vocab, generator=gen) * 3
        x[0, 0] = 30.0
        x[-1, -1] = 30.0
        if rows > 2:
            x[1, [1, vocab // 2, vocab - 2]] = 30.0  # ties at the max
        if vocab > 30000:
            x[0, [100, 16500, 33000, 40002]] = 25.0  # high logits in both chunks
        x = x.to(dtype)
        for temperature in (0.6, 1e-3, 5.0):
            want = ref.sample(x, temperature, 3, 1)
            for isa in each_isa():
                assert torch.equal(ek.sample(x, temperature=temperature, seed=3, offset=1, backend="cpu"), want), \
                    (isa, vocab, temperature)


def test_sample_frequencies(isa):
    """Empirical frequencies over many draws against softmax(x / T)."""
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, float("-inf"), 0.5, -3.0])
    temperature, draws = 0.8, 20000
    x = logits.expand(draws, -1).contiguous()  # one row per draw: independent counters
    tok = ek.sample(x, temperature=temperature, seed=3, offset=11, backend="cpu")
    freq = torch.bincount(tok, minlength=7).double() / draws
    p = torch.softmax(logits.double() / temperature, dim=0)
    assert freq[4] == 0
    sigma = torch.sqrt(p * (1 - p) / draws)
    assert ((freq - p).abs() <= 5 * sigma + 1e-12).all(), (freq, p)


# The fast run: bf16 with the top-K entropy (each dtype and both entropy modes on the cpu
# backend at V = 700: test_eager_step.py::test_step_small); all six pairs under slow.
@pytest.mark.parametrize("dtype,entropy_top_k", [
    pytest.param(d, k, marks=_slow_unless((d, k) == (torch.bfloat16, 20)), id=f"{d}-{k}".replace("torch.", ""))
    for d in DTYPES for k in (None, 20)])
def test_eager_step_matches_reference(dtype, entropy_top_k):
    gen = torch.Generator().manual_seed(11)
    rows, vocab, num_groups = 5, 32000, 3
    groups = torch.tensor([0, 0, 1, 2, 1])
    temps = torch.tensor([0.6, 0.0, 1.0, 0.6, 0.0])
    q, theta, initial = 80.0, 0.5, 5.0
    hists = {isa: ek.EntropyHistory(num_groups, 64, backend="cpu") for isa in ISAS}
    # The oracle: reference.eager_step on float64 logits with its own float32 history.
    values = torch.full((num_groups, 64), float("inf"))
    count = torch.zeros(num_groups, dtype=torch.int64)
    overflow = torch.zeros(num_groups, dtype=torch.bool)
    for step in range(6):
        x = torch.randn(rows, vocab, generator=gen) * (1 + step)
        x[1, torch.rand(vocab, generator=gen) < 0.5] = float("-inf")
        x = x.to(dtype)
        ent, thr, branch, token, cand_ids, cand_lp = ref.eager_step(
            x.double(), values, count, overflow, groups, 4, temps, entropy_top_k, q, theta, initial, 5, step)
        away = (ent - thr).abs() > 1e-3  # branch decisions away from a tie
        for isa in each_isa():
            hist = hists[isa]
            got = ek.eager_step(x, hist, groups, k=4, temperature=temps, entropy_top_k=entropy_top_k, q=q,
                                theta=theta, initial_threshold=initial, seed=5, offset=step, backend="cpu")
            torch.testing.assert_close(got.entropy, ent.float(), atol=2e-4, rtol=1e-5, msg=isa)
            torch.testing.assert_close(got.threshold, thr.float(), atol=2e-4, rtol=1e-5, msg=isa)
            assert torch.equal(got.cand_ids, cand_ids), isa
            torch.testing.assert_close(got.cand_logprobs, cand_lp.float(), atol=1e-4, rtol=1e-5, msg=isa)
            assert torch.equal(got.branch[away], branch[away]), isa
            assert torch.equal(got.token, token), isa
            assert torch.equal(hist.count, count), isa
            torch.testing.assert_close(hist.values, values, atol=2e-4, rtol=1e-5, msg=isa)


def test_direct_and_dispatcher_paths_agree(isa):
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(4, 5000, generator=gen) * 3).to(torch.bfloat16)
    group = torch.tensor([0, 1, 1, 0])
    outs = []
    for path in ("direct", "dispatcher"):
        hist = ek.EntropyHistory(2, 16)
        hist.append(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 0, 1]))
        temps = torch.tensor([0.6, 0.6, 0.0, 1.0])
        if path == "direct":
            out = cpu_backend.eager_step(x, hist.values, hist.count, hist.overflow, group, 4, temps, 20,
                                         90.0, 0.0, 5.0, 7, 2)
        else:
            out = torch.ops.eager_kernels.eager_step(x, hist.values, hist.count, hist.overflow, group, 4, temps, 20,
                                                     90.0, 0.0, 5.0, torch.tensor(7), torch.tensor(2))
        outs.append((out, hist.values.clone(), hist.count.clone()))
    (a, va, ca), (b, vb, cb) = outs
    for ta, tb in zip(a, b):
        assert torch.equal(ta, tb)
    assert torch.equal(va, vb) and torch.equal(ca, cb)


@pytest.mark.parametrize("rows,vocab,dtype", [(1, 49152, torch.float32), (3, 32000, torch.bfloat16),
                                              (1, 152064, torch.float16), (9, 20000, torch.float32)])
def test_thread_count_independent(isa, rows, vocab, dtype):
    gen = torch.Generator().manual_seed(rows * vocab)
    x = (torch.randn(rows, vocab, generator=gen) * 4).to(dtype)
    group = torch.arange(rows) % 2
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            hist = ek.EntropyHistory(2, 32)
            step = ek.eager_step(x, hist, group, k=8, temperature=0.7, entropy_top_k=None, q=50.0, theta=0.0,
                                 initial_threshold=1.0, seed=9, offset=1, backend="cpu")
            results.append(list(step) + [ek.entropy(x, top_k=20, backend="cpu"), hist.values.clone()])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


BAD = {
    "nan": lambda x: x.__setitem__((1, 17), float("nan")),
    "posinf": lambda x: x.__setitem__((0, 4000), float("inf")),
    "nan_last": lambda x: x.__setitem__((1, 4999), float("nan")),  # after the max, in a block's scalar tail
    "nan_in_vector": lambda x: x.__setitem__((2, 4119), float("nan")),  # the last lane of a vector
    # A NaN with the sign bit set, written as bits (conversions to bfloat16 drop the sign
    # of a NaN); bfloat16 0xFFC0 is above -inf's 0xFF80 as unsigned bits.
    "negative_nan": lambda x: x.view({4: torch.int32, 2: torch.int16}[x.element_size()]).__setitem__(
        (1, 2000), {torch.float32: -0x400000, torch.bfloat16: -0x40, torch.float16: -0x200}[x.dtype]),
    "all_neginf_row": lambda x: x[2].fill_(float("-inf")),
}


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("dtype", DTYPES)
def test_bad_logits_raise_and_leave_history(isa, bad, dtype):
    x = torch.randn(3, 5000).to(dtype)
    BAD[bad](x)
    match = "no finite entry" if bad == "all_neginf_row" else "NaN or \\+inf"
    with pytest.raises(ValueError, match=match):
        ek.entropy(x, backend="cpu")
    with pytest.raises(ValueError, match=match):
        ek.entropy(x, top_k=5, backend="cpu")
    with pytest.raises(ValueError, match=match):
        ek.topk_logprobs(x, 3, backend="cpu")
    with pytest.raises(ValueError, match=match):
        ek.sample(x, temperature=0.6, seed=1, backend="cpu")
    with pytest.raises(ValueError, match=match):
        ek.sample(x, temperature=0.0, seed=1, backend="cpu")
    hist = ek.EntropyHistory(2, 8)
    hist.append(torch.tensor([0.5, 1.5]), torch.tensor([0, 1]))
    saved = (hist.values.clone(), hist.count.clone(), hist.overflow.clone())
    with pytest.raises(ValueError, match=match):
        ek.eager_step(x, hist, torch.tensor([0, 1, 1]), k=2, temperature=0.6, q=50.0, theta=0.0,
                      initial_threshold=1.0, seed=1, offset=0, backend="cpu")
    assert torch.equal(hist.values, saved[0]) and torch.equal(hist.count, saved[1])
    assert torch.equal(hist.overflow, saved[2])


def test_history_against_quantile():
    gen = torch.Generator().manual_seed(5)
    groups, capacity = 4, 300
    hist = ek.EntropyHistory(groups, capacity, backend="cpu")
    recorded = [[] for _ in range(groups)]
    for step in range(60):
        rows = int(torch.randint(1, 9, (1,), generator=gen))
        group = torch.randint(0, groups, (rows,), generator=gen)
        ent = torch.rand(rows, generator=gen) * 6
        if step % 7 == 0:
            ent[0] = 2.0  # repeated values
        for q in (0.0, 37.5, 80.0, 99.0, 100.0):
            thr = hist.threshold(group, q=q, theta=1.0, initial=4.0)
            for i, g in enumerate(group.tolist()):
                if recorded[g]:
                    want = max(torch.quantile(torch.tensor(recorded[g]), q / 100).item(), 1.0)
                else:
                    want = 4.0
                assert math.isclose(thr[i].item(), want, rel_tol=1e-6, abs_tol=1e-6), (q, g, thr[i], want)
        hist.append(ent, group)
        for i, g in enumerate(group.tolist()):
            recorded[g].append(ent[i].item())
    for g in range(groups):
        assert torch.equal(hist.recorded(g), torch.tensor(sorted(recorded[g]), dtype=torch.float32))


def test_history_append_overflow_is_all_or_nothing():
    values = torch.full((2, 4), float("inf"))
    count = torch.zeros(2, dtype=torch.int64)
    overflow = torch.zeros(2, dtype=torch.bool)
    cpu_backend.history_append_(values, count, overflow, torch.tensor([3.0, 1.0, 2.0]), torch.tensor([0, 0, 1]))
    cpu_backend.history_append_(values, count, overflow, torch.tensor([5.0, 0.5, 4.0]), torch.tensor([0, 0, 0]))
    assert values[0, :2].tolist() == [1.0, 3.0] and count.tolist() == [2, 1]
    assert overflow.tolist() == [True, False]
    assert torch.isinf(values[0, 2:]).all()


def test_opcheck_registered_ops():
    x = torch.randn(3, 300) * 3
    values = torch.full((2, 16), float("inf"))
    values[0, :3] = torch.tensor([0.5, 1.0, 2.0])
    count = torch.tensor([3, 0])
    overflow = torch.zeros(2, dtype=torch.bool)
    group = torch.tensor([0, 1, 0])
    temps = torch.tensor([0.6, 0.0, 1.0])
    seed, offset = torch.tensor(3), torch.tensor(4)
    ops = torch.ops.eager_kernels
    cases = [
        (ops.entropy.default, (x, None)),
        (ops.entropy.default, (x.bfloat16(), 20)),
        (ops.topk_logprobs.default, (x, 5)),
        (ops.sample.default, (x, temps, seed, offset)),
        (ops.history_threshold.default, (values, count, group, 90.0, 0.1, 3.0)),
        (ops.history_append_.default, (values.clone(), count.clone(), overflow.clone(), torch.rand(3), group)),
        (ops.eager_step.default, (x, values.clone(), count.clone(), overflow.clone(), group, 4, temps, 20, 90.0,
                                  0.1, 3.0, seed, offset)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def _cpuinfo() -> tuple[str, int, set]:
    """(vendor, family, flags) of the first CPU in /proc/cpuinfo ('', 0, set() elsewhere)."""
    try:
        text = open("/proc/cpuinfo").read().split("\n\n")[0]
    except OSError:
        return "", 0, set()
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return fields.get("vendor_id", ""), int(fields.get("cpu family", "0") or 0), set(fields.get("flags", "").split())


def test_auto_pick():
    """The run-time pick: AVX-512 where the CPU has it, except on AMD family 19h (Zen 4),
    where the AVX2 tier measured faster (docs/cpu_tiers.md); else AVX2; else portable."""
    if os.environ.get("EAGER_KERNELS_CPU_ISA"):
        pytest.skip("EAGER_KERNELS_CPU_ISA set: the pick is forced")
    vendor, family, flags = _cpuinfo()
    if not flags:
        pytest.skip("no /proc/cpuinfo to compare the pick with")
    _C.set_isa("auto")
    if _C.avx512_supported():
        want = "avx2" if vendor == "AuthenticAMD" and family == 0x19 else "avx512"
    else:
        want = "avx2" if _C.avx2_supported() else "scalar"
    assert _C.isa() == want, (vendor, family)


@pytest.mark.slow
@pytest.mark.parametrize("name", ISAS)
def test_isa_environment_variable(name):
    """EAGER_KERNELS_CPU_ISA forces each tier this CPU has (read once, at the first use)."""
    code = "from eager_kernels.kernels import _C; print(_C.isa())"
    env = dict(os.environ, EAGER_KERNELS_CPU_ISA=name)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == name


def test_demo_names_the_cpp_tier_it_picked():
    from eager_kernels.demo import backend_label

    _C.set_isa("auto")
    assert backend_label("cpu") == f"'cpu', C++ tier {_C.isa()}"
    assert _C.isa() in backend_label("cpu")
    assert backend_label("torch") == "'torch'"
