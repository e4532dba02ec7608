"""LlamaCppEngine(batch_invariant=True): a prompt's logits and tree are bit-identical alone and
in any batch (issue 36; docs/reproducibility.md, "llama.cpp").

The mode keeps one KV stream per row, prefills each prompt in a call of its own, keeps the
rows' sequence ids 0..R-1 and writes them in that order (llama.cpp makes one ubatch of each
run of consecutive ids), and pads a one-row decode with a dummy row, so that every matmul of
a step runs llamafile's sgemm (whose sum for an output does not depend on the row count)
and never ggml's n = 1 vec_dot path (another summation order). Checked here on the tiny F32 GGUF of the test suite (fast)
and on SmolLM2's F16, BF16, Q8_0 and Q4_1 files (slow):

- engine level: a prompt alone against the same prompt among 1, 3 and 15 others (batches of
  2, 4 and 16), first, in the middle and last, with 1 row (one-row decodes) or 3 rows
  (forks: llama_memory_seq_cp between streams; drops, one of them leaving a row fewer), and
  prompts joining a running batch (extend);
- generate(): both policies, EagerConfig(batch_invariant=True) keeping the prompts in one
  batch (the engine states batch_invariant = True), every path's tokens, branch steps,
  log-probabilities and entropies compared with ==.

Without the padding, without the ordered ids, or in the default layouts these tests fail
(docs/reproducibility.md, "llama.cpp", counts them), and test_the_workload_needs_the_fix
checks here that this workload does take the other paths in a plain stream-per-row engine.
"""
import numpy as np
import pytest
import torch

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (the `llamacpp` extra)")

from eager_kernels import generate  # noqa: E402
from eager_kernels.engines import llamacpp as L  # noqa: E402
from eager_kernels.engines.llamacpp import LlamaCppEngine  # noqa: E402
from eager_kernels.sampler.generate import isolates_prompts  # noqa: E402

from conftest import SLOW, make_tiny_llama, paper_cfg, seed_cfg  # noqa: E402

VOCAB, EOS = 160, 3
SIZES = (2, 4, 16)  # batch sizes: the target and 1, 3, 15 others
PLACES = ("first", "middle", "last")


def _pool(n=16, seed=3):
    """n prompts of the tiny vocabulary, 3 to 40 tokens; prompt 0 is the target."""
    rng = np.random.default_rng(seed)
    return [[1] + rng.integers(4, VOCAB, size=int(L_) - 1).tolist() for L_ in rng.integers(3, 41, size=n)]


POOL = _pool()


def _batch(size, place, seed=0):
    """(prompt indices, the target's position): the target (0) among size - 1 others in a
    shuffled order, placed first, in the middle or last."""
    others = [int(i) for i in np.random.default_rng(seed + size).permutation(np.arange(1, len(POOL)))[:size - 1]]
    pos = {"first": 0, "middle": (size - 1) // 2, "last": size - 1}[place]
    return others[:pos] + [0] + others[pos:], pos


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    pytest.importorskip("gguf", reason="the gguf package writes the tiny GGUF")
    from tiny_gguf import write_llama_gguf

    model = make_tiny_llama(VOCAB, EOS, head_scale=25.0, silence_eos=True)
    return write_llama_gguf(model, tmp_path_factory.mktemp("gguf") / "tiny-llama-f32.gguf")


@pytest.fixture(scope="module")
def engine(tiny_gguf):
    eng = LlamaCppEngine(tiny_gguf, n_threads=1, batch_invariant=True)
    yield eng
    eng.close()


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One torch thread (conftest.one_thread)."""


# ---------------------------------------------------------------------------------------
# Engine level: logits of a prompt's rows alone and in a batch
# ---------------------------------------------------------------------------------------


def _token(prompt, row, step):
    return 4 + (prompt * 7919 + row * 104729 + step * 1299709) % (VOCAB - 4)


def _rows_run(engine, ids, pos, rows, steps=6):
    """The logits of prompt ids[pos]'s rows, [rows x steps + 1, V] (the prefill's once per
    row): prefill, fork to `rows` rows, `steps` decode steps fed tokens that depend on
    (prompt, row, step) only; with more than one row, row 1 is dropped at step 2 and row 0
    forked into its place, and from 3 rows, row 1 is dropped at step 4 (a row fewer)."""
    G = len(ids)
    out = []
    try:
        first = engine.prefill([POOL[i] for i in ids], max_rows=G * rows, max_new_tokens=steps + 1)
        out.append(first[pos].repeat(rows, 1).clone())
        lineage = [list(range(rows)) for _ in ids]
        if rows > 1:
            engine.reorder(torch.arange(G).repeat_interleave(rows))
        n = rows  # rows per prompt
        for t in range(steps):
            if t in (2, 4) and n > 1 and (t == 2 or rows >= 3):
                keep = [0, 0] + list(range(2, n)) if t == 2 else [0] + list(range(2, n))
                engine.reorder(torch.tensor([g * n + r for g in range(G) for r in keep]))
                for g in range(G):
                    lineage[g] = [lineage[g][0], 10 + t] + lineage[g][2:] if t == 2 else [lineage[g][r] for r in keep]
                n = len(keep)
            tok = torch.tensor([_token(ids[g], lineage[g][r], t) for g in range(G) for r in range(n)])
            out.append(engine.decode(tok)[pos * n:(pos + 1) * n].clone())
    finally:
        engine.release()
    return torch.cat(out)


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("size", SIZES)
def test_rows_alone_equal_rows_in_a_batch(engine, size, rows):
    alone = _rows_run(engine, [0], 0, rows)
    for place in PLACES:
        ids, pos = _batch(size, place)
        got = _rows_run(engine, ids, pos, rows)
        assert torch.equal(got, alone), (f"{size} prompts, target {place}, {rows} rows: max |d logit| "
                                         f"{float((got - alone).abs().max()):.3g}")


def test_prompts_joining_a_running_batch(engine):
    """extend(): prompts prefilled into the running context's free streams; the running
    prompt's rows and the joining prompts' rows keep their logits alone."""
    a, b, c = POOL[0], POOL[5], POOL[9]

    def alone(p, steps):
        out = [engine.prefill([p], max_rows=1, max_new_tokens=8)[0].clone()]
        for t in range(steps):
            out.append(engine.decode(torch.tensor([_token(len(p), 0, t)]))[0].clone())
        engine.release()
        return torch.stack(out)

    want = {"a": alone(a, 6), "b": alone(b, 4), "c": alone(c, 4)}
    got = {k: [] for k in want}
    got["a"].append(engine.prefill([a], max_rows=3, max_new_tokens=8)[0].clone())
    steps = {"a": 0}
    for t in range(6):
        if t == 2:
            first = engine.extend([b, c], max_rows=3, max_new_tokens=8)
            got["b"].append(first[0].clone())
            got["c"].append(first[1].clone())
            steps.update(b=0, c=0)
        names = list(steps)
        p = {"a": a, "b": b, "c": c}
        logits = engine.decode(torch.tensor([_token(len(p[k]), 0, steps[k]) for k in names]))
        for i, k in enumerate(names):
            got[k].append(logits[i].clone())
            steps[k] += 1
    engine.release()
    for k in want:
        assert torch.equal(torch.stack(got[k]), want[k]), k


@pytest.mark.parametrize("rows", [1, 3])
def test_the_workload_needs_the_fix(tiny_gguf, rows):
    """In a plain stream-per-row engine (kv_unified=False) a one-row decode, or a row left
    alone in its ubatch after forks and drops, takes ggml's n = 1 matmul path and the rows
    above differ: these tests would catch the fix's loss."""
    eng = LlamaCppEngine(tiny_gguf, n_threads=1, kv_unified=False)
    try:
        alone = _rows_run(eng, [0], 0, rows)
        ids, pos = _batch(2, "first")
        assert not torch.equal(_rows_run(eng, ids, pos, rows), alone)
    finally:
        eng.close()


# ---------------------------------------------------------------------------------------
# generate(): whole trees, both policies
# ---------------------------------------------------------------------------------------


def _exact(result):
    """A prompt's tree with its floats as they are (compared with ==: to the last bit)."""
    return [(p.token_ids, p.branch_steps, p.finished, p.logprob, p.entropies) for p in result.paths]


def _cfg(policy):
    cfg = seed_cfg(temperature=0.8) if policy == "seed" else paper_cfg(temperature=0.6)
    return cfg.replace(batch_invariant=True)


def _prefills_seen(engine):
    """Wrap engine.prefill to record the prompt count of each call."""
    seen = []
    prefill = engine.prefill

    def counting(prompts, **kw):
        seen.append(len(prompts))
        return prefill(prompts, **kw)

    engine.prefill = counting
    return seen


@pytest.mark.parametrize("policy", ["seed", "paper"])
def test_tree_alone_equals_tree_in_a_batch(engine, policy):
    cfg = _cfg(policy)
    assert engine.batch_invariant is True and engine.batch_deviation == 0.0
    assert not isolates_prompts(engine, cfg)  # the prompts stay in one batch
    alone = generate(engine, [POOL[0]], cfg, prompt_keys=[0])
    assert alone.metrics.branch_events > 0, "the test needs branching"
    want = _exact(alone.results[0])
    seen = _prefills_seen(engine)
    try:
        for size in SIZES:
            for place in PLACES:
                ids, pos = _batch(size, place)
                seen.clear()
                out = generate(engine, [POOL[i] for i in ids], cfg, prompt_keys=ids)
                assert seen == [size], "the prompts were not batched"
                assert _exact(out.results[pos]) == want, f"{size} prompts, target {place}"
    finally:
        del engine.prefill


def test_invariant_mode_rejects(tiny_gguf, monkeypatch):
    with pytest.raises(ValueError, match="batch_invariant=True needs a KV stream per row"):
        LlamaCppEngine(tiny_gguf, batch_invariant=True, kv_unified=True)
    with pytest.raises(ValueError, match="batch_invariant: expected True or False"):
        LlamaCppEngine(tiny_gguf, batch_invariant=1)
    assert set(L.gguf_tensor_types(tiny_gguf).values()) == {0}  # every tensor F32
    types = L.gguf_tensor_types(tiny_gguf)
    monkeypatch.setattr(L, "gguf_tensor_types", lambda path: {**types, "blk.0.ffn_up.weight": 12})  # Q4_K
    with pytest.raises(ValueError, match=r"ggml types \[12\].*EagerConfig\(batch_invariant=True\)"):
        LlamaCppEngine(tiny_gguf, batch_invariant=True)
    default = LlamaCppEngine(tiny_gguf, n_threads=1)
    assert default.batch_invariant is False and default.batch_deviation > 0  # the class's figures
    default.close()


# ---------------------------------------------------------------------------------------
# SmolLM2's weight types (slow)
# ---------------------------------------------------------------------------------------


@SLOW
@pytest.mark.parametrize("weight_type", ["bf16", "f16", "q8_0", "q4_1"])
def test_smollm2_tree_alone_equals_tree_in_a_batch(weight_type):
    """The C++ sampler (backend "cpu", the default on CPU), whose kernels split a row of
    SmolLM2's 49152 columns by the rows in the call: the scheduler gives each prompt a
    sampler call of its own in batch-invariant mode."""
    from eager_kernels import cpu_extension_available
    from eager_kernels.engines.models import default_gguf_path

    if not cpu_extension_available():
        pytest.skip("the C++ extension is not built")

    try:
        path = default_gguf_path(weight_type)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    eng = LlamaCppEngine(path, n_threads=2, batch_invariant=True)
    try:
        questions = ["What is 17 + 25?", "Name a prime number above 50.", "What is 6 x 7?",
                     "Spell the word cat backwards."]
        prompts = [eng.tokenizer.apply_chat_template([{"role": "user", "content": q}]) for q in questions]
        for policy in ("seed", "paper"):
            size = dict(max_new_tokens=8, max_paths_per_prompt=4, **({"prune_to": 4} if policy == "seed" else {}))
            cfg = _cfg(policy).replace(backend="cpu", **size)
            alone = generate(eng, [prompts[0]], cfg, prompt_keys=[0]).results[0]
            for order in ([0, 1, 2, 3], [3, 2, 0, 1], [1, 0]):
                out = generate(eng, [prompts[i] for i in order], cfg, prompt_keys=order)
                assert _exact(out.results[order.index(0)]) == _exact(alone), (policy, order)
    finally:
        eng.close()


def test_select_load_falls_back_to_isolation(tiny_gguf, monkeypatch):
    """The command line's loader (serve, generate and eval with batch invariance): the
    invariant mode where it holds, else a warning that says why and the default engine."""
    from eager_kernels.engines.select import load

    eng = load("llamacpp", gguf=tiny_gguf, threads=1, batch_invariant=True)[0]
    assert eng.batch_invariant is True
    eng.close()
    eng = load("llamacpp", gguf=tiny_gguf, threads=1, batch_invariant=True, kv_unified=True)[0]
    assert eng.batch_invariant is False  # a shared cache: isolation
    eng.close()
    types = L.gguf_tensor_types(tiny_gguf)
    monkeypatch.setattr(L, "gguf_tensor_types", lambda path: {**types, "blk.0.ffn_up.weight": 12})  # Q4_K
    with pytest.warns(UserWarning, match=r"ggml types \[12\].*calls of its own"):
        eng = load("llamacpp", gguf=tiny_gguf, threads=1, batch_invariant=True)[0]
    assert eng.batch_invariant is False and isolates_prompts(eng, _cfg("seed"))  # each prompt alone
    eng.close()
