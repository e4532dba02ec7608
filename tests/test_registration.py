"""The torch.library registration: opcheck on the registered ops (CPU implementation: the
C++ extension when built, else the reference), and torch.compile(fullgraph=True) of a
decode step that calls the public API."""
import pytest
import torch

import eager_kernels as ek

ops = torch.ops.eager_kernels


def _sample_args(rows=3, vocab=257, k=4):
    x = torch.randn(rows, vocab) * 2
    temp = torch.tensor([0.0, 0.7, 1.5][:rows])
    seed = torch.tensor(3, dtype=torch.int64)
    offset = torch.tensor(1, dtype=torch.int64)
    values = torch.full((2, 16), float("inf"))
    values[0, :3] = torch.tensor([0.5, 1.0, 2.0])
    count = torch.tensor([3, 0])
    overflow = torch.zeros(2, dtype=torch.bool)
    group = torch.tensor([0, 1, 0][:rows])
    return x, temp, seed, offset, values, count, overflow, group


@pytest.mark.parametrize("op_name", ["entropy", "topk_logprobs", "sample", "history_threshold",
                                     "history_append_", "eager_step"])
def test_opcheck(op_name):
    x, temp, seed, offset, values, count, overflow, group = _sample_args()
    args = {
        "entropy": [(x, None), (x, 20)],
        "topk_logprobs": [(x, 5)],
        "sample": [(x, temp, seed, offset)],
        "history_threshold": [(values, count, group, 80.0, 0.5, 2.0)],
        "history_append_": [(values, count, overflow, torch.tensor([0.7, 0.1, 3.0]), group)],
        "eager_step": [(x, values, count, overflow, group, 4, temp, 20, 80.0, 0.5, 2.0, seed, offset)],
    }[op_name]
    for a in args:
        torch.library.opcheck(getattr(ops, op_name).default, a)


def test_compiled_step_fullgraph_matches_eager():
    def decode_step(logits, hist, group, offset):
        out = ek.eager_step(logits, hist, group, k=4, temperature=0.6, entropy_top_k=20, q=80.0,
                            theta=0.5, initial_threshold=2.0, seed=7, offset=offset)
        return out.token, out.branch, out.entropy, out.cand_logprobs

    compiled = torch.compile(decode_step, fullgraph=True)
    group = torch.tensor([0, 1, 0, 1])
    h_eager = ek.EntropyHistory(2, 32)
    h_comp = ek.EntropyHistory(2, 32)
    for step in range(3):
        x = torch.randn(4, 300, generator=torch.Generator().manual_seed(step)) * 3
        off = torch.tensor(step)
        want = decode_step(x, h_eager, group, off)
        got = compiled(x, h_comp, group, off)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        torch.testing.assert_close(got[2], want[2])
        torch.testing.assert_close(got[3], want[3])
    assert torch.equal(h_comp.count, h_eager.count)
    torch.testing.assert_close(h_comp.values, h_eager.values)


def test_compiled_ops_fullgraph():
    def f(x):
        lp, ids = ek.topk_logprobs(x, 3)
        return ek.entropy(x), ek.entropy(x, top_k=8), lp, ids, ek.sample(x, temperature=1.0, seed=1, offset=2)

    x = torch.randn(3, 100)
    got = torch.compile(f, fullgraph=True)(x)
    want = f(x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
