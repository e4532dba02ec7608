"""The step-level scheduler (eager_kernels/sampler/scheduler.py): units join and leave the
running batch at every step.

On a batch-invariant engine (here: logits a function of the row's own tokens), a unit that
joins a running batch, at any step, with any settings, gets exactly the paths it gets alone,
and so do the units it joins; a short unit finishes while a long one runs; an abort drops
a unit's rows at once. On the real engines, a joined prompt's first logits equal the
prompt's logits alone within float32 rounding.
"""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from eager_kernels import EagerConfig  # noqa: E402
from eager_kernels.engines.base import Engine  # noqa: E402
from eager_kernels.sampler.keys import stage_key  # noqa: E402
from eager_kernels.sampler.scheduler import Scheduler, Unit  # noqa: E402

V = 64


class SequenceEngine(Engine):
    """A batch-invariant engine: row i's logits are a fixed function of its own tokens
    (a hash of the sequence picks a row of a random table, scaled so that some steps are
    sure and some unsure). It records the row count of every decode."""

    name = "sequence"
    batch_invariant = True
    kv_bytes_per_token = 1

    def __init__(self):
        self.vocab_size, self.device, self.eos_token_ids = V, torch.device("cpu"), []
        gen = torch.Generator().manual_seed(0)
        self.table = torch.randn(997, V, generator=gen, dtype=torch.float32)
        self.scale = torch.rand(997, generator=gen) * 6
        self.seqs, self.rows_seen = None, []

    def _logits(self):
        h = torch.tensor([hash(tuple(s)) % 997 for s in self.seqs])
        return self.table[h] * self.scale[h, None]

    def prefill(self, prompts, *, max_rows, max_new_tokens):
        self.seqs = [list(p) for p in prompts]
        return self._logits()

    def can_extend(self, prompts, *, max_rows, max_new_tokens):
        return self.seqs is not None

    def extend(self, prompts, *, max_rows, max_new_tokens):
        old = self.seqs
        self.seqs = [list(p) for p in prompts]
        first = self._logits()
        self.seqs = old + self.seqs
        return first

    def decode(self, tokens):
        self.rows_seen.append(len(self.seqs))
        for s, t in zip(self.seqs, tokens.tolist()):
            s.append(t)
        return self._logits()

    def reorder(self, src):
        self.seqs = [list(self.seqs[i]) for i in src.tolist()]

    def release(self):
        self.seqs = None


SEED = EagerConfig.seed_policy(max_new_tokens=10, max_paths_per_prompt=8, prune_to=8, theta=0.5,
                               initial_threshold=0.5, backend="torch")
PAPER = EagerConfig.paper(max_new_tokens=12, max_paths_per_prompt=6, theta=0.3, initial_threshold=0.3, q=50.0,
                          entropy_top_k=20, temperature=0.8, backend="torch")
OTHER = EagerConfig.paper(max_new_tokens=10, max_paths_per_prompt=8, theta=0.1, initial_threshold=0.1, q=30.0,
                          temperature=1.2, backend="torch")  # with STOPS


# stop branching after any of these tokens (one- and two-token sequences)
STOPS = [torch.tensor([t]) for t in range(0, V, 5)] + [torch.tensor([t, t + 1]) for t in range(1, V - 1, 4)]


def _unit(prompts, cfg, out, name, keys=None):
    stops = STOPS if cfg is OTHER else []
    return Unit(prompts=prompts, caps=[cfg.max_paths_per_prompt] * len(prompts), cfg=cfg,
                seed=stage_key(cfg.seed, "init"), keys=keys or list(range(len(prompts))), eos=[], stops=stops,
                on_done=lambda u, paths: out.append((name, paths)))


def _alone(prompts, cfg, keys=None):
    out = []
    sched = Scheduler(SequenceEngine())
    sched.add(_unit(prompts, cfg, out, "alone", keys))
    sched.run()
    return out[0][1]


def _joined(units, join_at):
    """units: [(prompts, cfg, keys)]; unit i is added before step join_at[i]."""
    engine, out = SequenceEngine(), []
    sched = Scheduler(engine)
    step = 0
    pending = sorted(range(len(units)), key=lambda i: join_at[i])
    while pending or sched.busy:
        while pending and join_at[pending[0]] <= step:
            i = pending.pop(0)
            prompts, cfg, keys = units[i]
            sched.add(_unit(prompts, cfg, out, i, keys))
        sched.step()
        step += 1
    sched.release()
    return dict(out), engine


@pytest.mark.parametrize("join_at", [(0, 0, 0), (0, 3, 5), (2, 0, 9)])
def test_a_unit_gets_its_paths_alone_whenever_it_joins(join_at):
    units = [([[1, 2, 3], [4, 5]], SEED, [10, 11]), ([[6, 7, 8, 9]], PAPER, [3]), ([[2, 2], [9]], OTHER, [0, 1])]
    got, engine = _joined(units, join_at)
    for i, (prompts, cfg, keys) in enumerate(units):
        assert got[i] == _alone(prompts, cfg, keys), f"unit {i} joining at step {join_at[i]}"
    assert sum(len(p) for p in got[0]) > 2 and sum(len(p) for p in got[1]) > 1  # trees that branched
    stopped = 0
    for paths in got[2]:  # no branch after a stop sequence ends
        for p in paths:
            ends = [e for e in range(len(p["token_ids"])) for seq in STOPS
                    if e + 1 >= len(seq) and p["token_ids"][e + 1 - len(seq): e + 1] == seq.tolist()]
            if ends:
                stopped += 1
                assert all(b <= min(ends) for b in p["branch_steps"]), p
    assert stopped > 0
    assert got[2] != _alone(units[2][0], OTHER.replace(), units[2][2])  # the stops changed the trees
    assert max(engine.rows_seen) > 2  # rows of several units shared decodes


def test_a_short_unit_finishes_while_a_long_one_runs():
    engine, order = SequenceEngine(), []
    sched = Scheduler(engine)
    long_cfg = EagerConfig.paper(max_new_tokens=30, max_paths_per_prompt=2, backend="torch")
    short_cfg = EagerConfig.paper(max_new_tokens=3, max_paths_per_prompt=2, backend="torch")
    sched.add(_unit([[1, 2]], long_cfg, order, "long"))
    sched.step()
    sched.step()
    sched.add(_unit([[3, 4]], short_cfg, order, "short"))
    steps = 2
    while sched.busy:
        sched.step()
        steps += 1
        if [n for n, _ in order] == ["short"]:
            assert sched.running and sched.running[0].step < 30  # the long one is mid-tree
    assert [n for n, _ in order] == ["short", "long"]


def test_abort_drops_the_rows_at_once_and_leaves_the_others_alone():
    engine, out = SequenceEngine(), []
    sched = Scheduler(engine)
    a = sched.add(_unit([[1, 2, 3]], SEED, out, "a"))
    b = sched.add(_unit([[5, 6]], SEED, out, "b"))
    for _ in range(4):
        sched.step()
    rows_before = len(engine.seqs)
    b_rows = b.active
    assert b_rows >= 1 and a.state == "running"
    sched.abort(b)
    assert b.state == "aborted" and len(engine.seqs) == rows_before - b_rows  # freed now, not at the end
    sched.run()
    assert [n for n, _ in out] == ["a"]
    assert out[0][1] == _alone([[1, 2, 3]], SEED)
    w = sched.add(_unit([[7]], SEED, out, "w"))
    sched.abort(w)  # a waiting unit never starts
    assert not sched.busy and w.state == "aborted"


def test_an_exclusive_unit_runs_alone():
    engine, out = SequenceEngine(), []
    sched = Scheduler(engine)
    sched.add(_unit([[1, 2]], PAPER, out, "a"))
    sched.step()
    ex = _unit([[3, 4]], PAPER, out, "ex")
    ex.exclusive = True
    sched.add(ex)
    later = sched.add(_unit([[5, 6]], PAPER, out, "later"))
    while sched.busy:
        sched.step()
        if ex.state == "running":
            assert sched.running == [ex]  # neither the first unit nor the later one beside it
    assert [n for n, _ in out] == ["a", "ex", "later"] and later.state == "done"


def _first_logits_joined(engine, long_prompt, short_prompt):
    engine.prefill([long_prompt], max_rows=4, max_new_tokens=8)
    engine.decode(torch.tensor([5], dtype=torch.int64))
    assert engine.can_extend([short_prompt], max_rows=2, max_new_tokens=8)
    joined = engine.extend([short_prompt], max_rows=2, max_new_tokens=8).clone()
    after = engine.decode(torch.tensor([7, 9], dtype=torch.int64)).clone()
    engine.release()
    alone = engine.prefill([short_prompt], max_rows=1, max_new_tokens=8).clone()
    alone_next = engine.decode(torch.tensor([9], dtype=torch.int64)).clone()
    engine.release()
    return joined[0], after[1], alone[0], alone_next[0]


def _joined_atol(model, long_prompt, short_prompt, *logits):
    """A row's float32 logits joined to a running batch against alone: the same sums in
    another order (padding, the matmuls' blocking): conftest.float32_tolerance of the
    forward's reductions at the joined batch's length and the largest |logit| (3.6e-5 here;
    1.9e-6 seen)."""
    from conftest import float32_tolerance, llama_reduction_terms

    seq_len = max(len(long_prompt) + 2, len(short_prompt) + 1)  # the long row has decoded 2 tokens
    n_terms = llama_reduction_terms(model.config, seq_len, logits_only=True)
    return float32_tolerance(n_terms, max(float(t.abs().max()) for t in logits))


def test_transformers_engine_extend_matches_alone():
    pytest.importorskip("transformers")
    from conftest import make_tiny_llama

    from eager_kernels.engines import TransformersEngine

    model = make_tiny_llama(160, 3, head_scale=25.0)
    engine = TransformersEngine(model)
    with torch.inference_mode():
        for long_p, short_p in (([1, 5, 6, 7, 8, 9, 10], [1, 20, 21]), ([1, 4], [1, 30, 31, 32, 33, 34])):
            joined, after, alone, alone_next = _first_logits_joined(engine, long_p, short_p)
            atol = _joined_atol(model, long_p, short_p, joined, after, alone, alone_next)
            torch.testing.assert_close(joined, alone, atol=atol, rtol=0)
            torch.testing.assert_close(after, alone_next, atol=atol, rtol=0)


def test_llamacpp_engine_extend_matches_alone(tmp_path):
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (the `llamacpp` extra)")
    pytest.importorskip("gguf", reason="the gguf package writes the tiny GGUF")
    from conftest import make_tiny_llama
    from tiny_gguf import write_llama_gguf

    from eager_kernels.engines.llamacpp import LlamaCppEngine

    model = make_tiny_llama(160, 3, head_scale=25.0)
    path = write_llama_gguf(model, tmp_path / "tiny-f32.gguf")
    long_p, short_p = [1, 5, 6, 7, 8, 9, 10], [1, 20, 21]
    for unified in (True, False):
        engine = LlamaCppEngine(path, n_threads=1, kv_unified=unified)
        joined, after, alone, alone_next = _first_logits_joined(engine, long_p, short_p)
        # another row in the same llama_decode moves the F32 matmul's blocking (module
        # docstring of engines/llamacpp.py): float32 rounding (1.4e-6 seen)
        atol = _joined_atol(model, long_p, short_p, joined, after, alone, alone_next)
        torch.testing.assert_close(joined, alone, atol=atol, rtol=0)
        torch.testing.assert_close(after, alone_next, atol=atol, rtol=0)
        engine.close()
