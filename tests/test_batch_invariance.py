"""A prompt's result does not depend on its batch (issue 12, part 1).

generate(m, [a, b, c], cfg, prompt_keys=[0, 1, 2]) gives b the same paths (token ids,
branch steps, log-probabilities) as generate(m, [b], cfg, prompt_keys=[1]), in any order of
the prompts, for both policies and every backend; the same prompt with different keys
gives different samples; the path keys on the device equal the host formula.
"""
import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("transformers")

import eager_kernels as ek  # noqa: E402
from eager_kernels import EagerConfig, generate  # noqa: E402
from eager_kernels.sampler import keys as K  # noqa: E402

from conftest import PathTolerance, make_tiny_llama  # noqa: E402

VOCAB = 160
EOS = 3
A, B, C = [1, 5, 6, 7, 8, 9], [1, 20, 21], [1, 30, 31, 32, 33, 34, 35, 36, 37]

BACKENDS = ["torch"] + (["cpu"] if ek.cpu_extension_available() else [])
HAS_TRITON = importlib.util.find_spec("triton") is not None


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_llama(VOCAB, EOS, head_scale=25.0, silence_eos=True)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs with one torch thread (conftest.one_thread)."""


def _cfg(policy, backend, **kw):
    if policy == "seed":
        # sampled, so that the keys matter (the seed policy is greedy by default)
        base = dict(max_new_tokens=8, max_paths_per_prompt=6, prune_to=6, temperature=0.8, backend=backend)
        base.update(kw)
        return EagerConfig.seed_policy(**base)
    base = dict(max_new_tokens=8, max_paths_per_prompt=4, theta=0.5, initial_threshold=0.5, q=50.0,
                entropy_top_k=20, temperature=0.6, backend=backend)
    base.update(kw)
    return EagerConfig.paper(**base)


def _paths(result):
    return [(p.token_ids, p.branch_steps, p.finished, p.stage) for p in result.paths]


def _same_result(got, want, tol):
    """Equal paths; log-probabilities and entropies within tol (conftest.PathTolerance): the
    logits of a prompt in a padded batch may differ from its logits alone in the last bits."""
    assert _paths(got) == _paths(want)
    for p, q in zip(got.paths, want.paths):
        assert p.logprob == pytest.approx(q.logprob, rel=0, abs=tol.logprob(q.num_tokens))
        torch.testing.assert_close(torch.tensor(p.entropies), torch.tensor(q.entropies), atol=tol.entropy, rtol=0)


def _check_invariance(model, cfg):
    full = generate(model, [A, B, C], cfg, prompt_keys=[0, 1, 2])
    assert sum(r.branch_events for r in full.results) > 0, "the test needs branching"
    tol = PathTolerance.forward(model, [A, B, C], full.results, cfg.max_new_tokens)
    alone = generate(model, [B], cfg, prompt_keys=[1])
    _same_result(alone.results[0], full.results[1], tol)
    shuffled = generate(model, [C, B, A], cfg, prompt_keys=[2, 1, 0])
    for i, j in ((0, 2), (1, 1), (2, 0)):
        _same_result(shuffled.results[i], full.results[j], tol)
    return full


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("policy", ["paper", "seed"])
def test_result_does_not_depend_on_batch(tiny, policy, backend):
    _check_invariance(tiny, _cfg(policy, backend))


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.skipif(torch.cuda.is_available(), reason="Triton on the CPU model needs the interpreter, off with a GPU")
@pytest.mark.parametrize("policy", ["paper", "seed"])
def test_result_does_not_depend_on_batch_triton(tiny, policy):
    """Triton (interpreted here): the same invariance and the same paths as torch."""
    full = _check_invariance(tiny, _cfg(policy, "triton", max_new_tokens=5))
    ref = generate(tiny, [A, B, C], _cfg(policy, "torch", max_new_tokens=5), prompt_keys=[0, 1, 2])
    tol = PathTolerance.kernels(tiny, [A, B, C], ref.results)  # the same batch: only the ops differ
    for got, want in zip(full.results, ref.results):
        _same_result(got, want, tol)


def test_backends_agree_with_keys(tiny):
    if "cpu" not in BACKENDS:
        pytest.skip("the C++ extension is not built")
    for policy in ("paper", "seed"):
        a = generate(tiny, [A, B, C], _cfg(policy, "torch"), prompt_keys=[7, -2, 2**40])
        b = generate(tiny, [A, B, C], _cfg(policy, "cpu"), prompt_keys=[7, -2, 2**40])
        tol = PathTolerance.kernels(tiny, [A, B, C], a.results)  # the same batch: only the ops differ
        for got, want in zip(b.results, a.results):
            _same_result(got, want, tol)


def test_keys_change_samples(tiny):
    """The same prompt under different keys: different samples; under equal keys: equal."""
    cfg = _cfg("paper", "torch", max_new_tokens=12)
    out = generate(tiny, [B] * 4, cfg, prompt_keys=[0, 1, 2, 0])
    sigs = [_paths(r) for r in out.results]
    assert sigs[0] == sigs[3]
    assert len({repr(s) for s in sigs[:3]}) == 3
    # the default keys are the positions: a repeated prompt gets distinct samples
    default = generate(tiny, [B, B], cfg)
    assert _paths(default.results[0]) != _paths(default.results[1])
    assert _paths(default.results[0]) == sigs[0] and _paths(default.results[1]) == sigs[1]
    # config.seed moves every key
    other = generate(tiny, [B], cfg.replace(seed=5), prompt_keys=[0])
    assert _paths(other.results[0]) != sigs[0]


def test_budget_stage_is_batch_invariant(tiny):
    """A budget stage's trees depend only on (config.seed, the stage's name, the prompt's
    key, its extra paths): the "full" stage of generate equals the stage run alone."""
    from eager_kernels.sampler.config import Metrics
    from eager_kernels.sampler.decode import run_stage

    cfg = _cfg("paper", "torch", max_new_tokens=6, budget="full", verifier=lambda i, p: i != 1)
    full = generate(tiny, [A, B, C], cfg, prompt_keys=[0, 10, 20])
    got = [p for p in full.results[1].paths if p.stage == "full"]
    assert got, "the test needs a prompt that gets budget"
    assert all(p.stage == "init" for i in (0, 2) for p in full.results[i].paths)
    from eager_kernels.engines import TransformersEngine

    engine = TransformersEngine(tiny)
    with torch.inference_mode():
        try:
            raw, _, _ = run_stage(engine, [B], [len(got)], cfg, eos_ids=[EOS], stop_seqs=[],
                                  seed=K.stage_key(cfg.seed, "full"), metrics=Metrics(), prompt_keys=[10])
        finally:
            engine.release()
    assert [d["token_ids"] for d in raw[0]] == [p.token_ids for p in got]
    init = [p for p in full.results[1].paths if p.stage == "init"]
    assert [p.token_ids for p in init] != [p.token_ids for p in got][:len(init)]  # a new stream


def test_prompt_keys_errors(tiny):
    cfg = _cfg("paper", "torch", max_new_tokens=2)
    with pytest.raises(ValueError, match="prompt_keys: expected one key per prompt"):
        generate(tiny, [A, B], cfg, prompt_keys=[0])
    with pytest.raises(TypeError, match="prompt_keys: expected ints"):
        generate(tiny, [A], cfg, prompt_keys=["x"])
    with pytest.raises(ValueError, match="int64 range"):
        generate(tiny, [A], cfg, prompt_keys=[2**63])


def test_device_mix_equals_host_formula():
    keys = torch.tensor([0, 1, -1, 2**63 - 1, -(2**63), 123456789012345])
    for index in (0, 1, 7, 2**20 + 3):
        got = K.mix(keys, index).tolist()
        assert got == [K.mix_int(k, index) for k in keys.tolist()]
    # SplitMix64 known answer: the first output of the stream seeded with 0
    assert K.mix_int(0, 0) & (2**64 - 1) == 0xE220A8397B1DCDAF
    parent = torch.tensor([5, 5, 9])
    child = K.child_keys(parent, 3, torch.tensor([0, 1, 1]))
    assert child[0] == 5 and child[1] == K.mix_int(5, 3 * 2**16 + 1) and child[1] != child[2]
    assert K.stage_key(0, "init") != K.stage_key(0, "adapt") != K.stage_key(1, "adapt")


# ---------------------------------------------------------------------------------------
# The batch-invariant mode (EagerConfig(batch_invariant=True); engines/base.py)
# ---------------------------------------------------------------------------------------


def _bits(result):
    return [(p.token_ids, p.branch_steps, p.finished, p.stage, p.logprob, p.entropies) for p in result.paths]


@pytest.mark.parametrize("policy", ["paper", "seed"])
def test_invariant_mode_to_the_last_bit(tiny, policy):
    """Every prompt's tree equals its tree alone, floats compared with ==."""
    cfg = _cfg(policy, "torch", batch_invariant=True)
    full = generate(tiny, [A, B, C], cfg, prompt_keys=[0, 1, 2])
    assert sum(r.branch_events for r in full.results) > 0
    for i, (p, key) in enumerate(zip([A, B, C], [0, 1, 2])):
        alone = generate(tiny, [p], cfg, prompt_keys=[key])
        assert _bits(alone.results[0]) == _bits(full.results[i]), i


def test_invariant_budget_stage_to_the_last_bit(tiny):
    """A budget stage (its caps given, as the allocation hands them out): a prompt's extra
    tree equals the stage run on that prompt alone."""
    from eager_kernels.sampler import generate_stage

    cfg = _cfg("paper", "torch", batch_invariant=True)
    full = generate_stage(tiny, [A, B, C], cfg, stage="adapt", caps=[2, 4, 3], prompt_keys=[0, 1, 2])
    alone = generate_stage(tiny, [B], cfg, stage="adapt", caps=[4], prompt_keys=[1])
    assert full.results[1].branch_events > 0
    assert _bits(alone.results[0]) == _bits(full.results[1])
    assert all(p.stage == "adapt" for p in alone.results[0].paths)


class _CountingEngine:
    """A TransformersEngine that records the prompts of each prefill."""

    def __new__(cls, model, invariant):
        from eager_kernels.engines import TransformersEngine

        class Counting(TransformersEngine):
            batch_invariant = invariant
            calls = []

            def prefill(self, prompts, **kw):
                self.calls.append(len(prompts))
                return super().prefill(prompts, **kw)

        return Counting(model)


@pytest.mark.parametrize("engine_invariant", [False, True])
def test_invariant_mode_splits_only_when_the_engine_needs_it(tiny, engine_invariant):
    """On an engine that is not batch-invariant the mode runs one prefill per prompt; on one
    that is (engine.batch_invariant = True) it keeps the prompts in one batch."""
    from eager_kernels.sampler.generate import isolates_prompts

    engine = _CountingEngine(tiny, engine_invariant)
    cfg = _cfg("paper", "torch", batch_invariant=True)
    assert isolates_prompts(engine, cfg) is (not engine_invariant)
    assert not isolates_prompts(engine, cfg.replace(batch_invariant=False))
    generate(engine, [A, B, C], cfg)
    assert engine.calls == ([3] if engine_invariant else [1, 1, 1])
    engine.calls.clear()
    generate(engine, [A, B, C], cfg.replace(batch_invariant=False))
    assert engine.calls == [3]


def test_engine_states_batch_invariance(tiny):
    from eager_kernels.engines import TransformersEngine

    engine = TransformersEngine(tiny)
    assert engine.batch_invariant is False
    assert isinstance(engine.batch_deviation, float) and engine.batch_deviation > 0


def test_batch_invariant_errors(tiny):
    with pytest.raises(ValueError, match="batch_invariant: expected True or False, got 'yes'"):
        EagerConfig(batch_invariant="yes")
    with pytest.raises(ValueError, match="batch_invariant"):
        _cfg("paper", "torch", batch_invariant=1)
