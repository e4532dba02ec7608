"""TransformersEngine(model, batch_invariant=True) (issue 36): a row's logits do not depend on
the other rows of its calls, so EagerConfig(batch_invariant=True) keeps the prompts in one
batch on it, and a prompt's tree in any batch, in any order, or joining a running batch
equals its tree alone to the last bit (token ids, branch steps, log-probabilities,
entropies). The constructor's probe refuses a model whose ops depend on the batch; the
default mode and the user's model are left as they were.
"""
import copy
import random

import pytest
import torch

pytest.importorskip("transformers")

from eager_kernels import EagerConfig, generate  # noqa: E402
from eager_kernels.engines import TransformersEngine  # noqa: E402
from eager_kernels.engines import transformers as te  # noqa: E402
from eager_kernels.sampler.keys import stage_key  # noqa: E402
from eager_kernels.sampler.scheduler import Scheduler, Unit  # noqa: E402

from conftest import make_tiny_llama  # noqa: E402

VOCAB, EOS = 160, 3
_rng = random.Random(36)
# 16 prompts of 2 to 13 tokens (the target first): other lengths make the cache left-padded
PROMPTS = [[1] + [_rng.randrange(4, VOCAB) for _ in range(_rng.randrange(1, 13))] for _ in range(16)]
TARGET, KEY = PROMPTS[0], 100


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_llama(VOCAB, EOS, head_scale=25.0, silence_eos=True)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs with one torch thread (conftest.one_thread)."""


def _cfg(policy, **kw):
    """Both policies sampled (the keys matter), batch-invariant mode."""
    if policy == "seed":
        base = dict(max_new_tokens=8, max_paths_per_prompt=6, prune_to=6, temperature=0.8, backend="torch")
        base.update(kw)
        return EagerConfig.seed_policy(batch_invariant=True, **base)
    base = dict(max_new_tokens=8, max_paths_per_prompt=4, theta=0.5, initial_threshold=0.5, q=50.0,
                entropy_top_k=20, temperature=0.6, backend="torch")
    base.update(kw)
    return EagerConfig.paper(batch_invariant=True, **base)


def _bits(result):
    return [(p.token_ids, p.branch_steps, p.finished, p.stage, p.logprob, p.entropies) for p in result.paths]


class _Spy:
    """Records each prefill's prompt count and each decode's row count of an engine."""

    def __init__(self, engine):
        self.prefills, self.rows = [], []
        prefill, decode = engine.prefill, engine.decode

        def spy_prefill(prompts, **kw):
            self.prefills.append(len(prompts))
            return prefill(prompts, **kw)

        def spy_decode(tokens):
            self.rows.append(int(tokens.shape[0]))
            return decode(tokens)

        engine.prefill, engine.decode = spy_prefill, spy_decode


def _orders(prompts, size):
    """Batches of `size` prompts holding prompts[0] (the target) first, last and in the
    middle, the others (prompts[1:size]) shuffled."""
    out = []
    for where in sorted({0, size - 1, size // 2}):
        rest = list(prompts[1:size])
        random.Random(size * 10 + where).shuffle(rest)
        out.append((rest[:where] + [prompts[0]] + rest[where:], where))
    return out


def _check_any_batch(engine, cfg, sizes, prompts=PROMPTS):
    """prompts[0] alone against it in batches of each size, in several orders."""
    spy = _Spy(engine)
    alone = generate(engine, [prompts[0]], cfg, prompt_keys=[KEY])
    assert alone.results[0].branch_events > 0, "the test needs branching"
    rows_alone = max(spy.rows)
    for size in sizes:
        for batch, where in _orders(prompts, size):
            spy.prefills.clear()
            spy.rows.clear()
            keys = [KEY if i == where else 7 * i for i in range(size)]
            out = generate(engine, batch, cfg, prompt_keys=keys)
            assert _bits(out.results[where]) == _bits(alone.results[0]), (size, where)
            # the prompts shared engine calls: one prefill of all, decodes wider than the target's
            assert spy.prefills == [size]
            assert max(spy.rows) > rows_alone


@pytest.mark.parametrize("policy", ["seed", "paper"])
def test_a_prompt_alone_equals_it_in_any_batch(tiny, policy):
    engine = TransformersEngine(tiny, batch_invariant=True)
    assert engine.batch_invariant is True and engine.batch_deviation == 0.0
    _check_any_batch(engine, _cfg(policy), (2, 4, 16))


def _unit(prompts, cfg, keys, out, name):
    return Unit(prompts=prompts, caps=[cfg.max_paths_per_prompt] * len(prompts), cfg=cfg,
                seed=stage_key(cfg.seed, "init"), keys=keys, eos=[EOS], stops=[],
                on_done=lambda u, paths: out.append((name, paths)))


def _scheduled(engine, units, join_at):
    """units: [(prompts, cfg, keys)]; unit i is added before step join_at[i]. {i: paths}."""
    out, sched, step = [], Scheduler(engine), 0
    pending = sorted(range(len(units)), key=lambda i: join_at[i])
    with torch.inference_mode():
        while pending or sched.busy:
            while pending and join_at[pending[0]] <= step:
                i = pending.pop(0)
                sched.add(_unit(*units[i], out, i))
            sched.step()
            step += 1
        sched.release()
    return dict(out)


@pytest.mark.parametrize("policy", ["seed", "paper"])
@pytest.mark.parametrize("join_at", [(0, 3), (0, 6)])
def test_a_prompt_joining_a_running_batch_equals_it_alone(tiny, policy, join_at):
    """The scheduler's continuous batching: TARGET joins (engine.extend) a batch that has run
    a few steps, beside rows of other lengths; its paths equal its paths alone, and the
    running unit's equal theirs."""
    cfg = _cfg(policy, max_new_tokens=10)
    engine = TransformersEngine(tiny, batch_invariant=True)
    joined = []
    extend = engine.extend
    engine.extend = lambda prompts, **kw: joined.append(len(prompts)) or extend(prompts, **kw)
    running = (PROMPTS[1:5], cfg, [1, 2, 3, 4])
    late = ([TARGET], cfg, [KEY])
    got = _scheduled(engine, [running, late], join_at)
    assert joined == [1], "the late unit must join the running batch"
    assert got[1] == _scheduled(engine, [late], (0,))[0]
    assert got[0] == _scheduled(engine, [running], (0,))[0]
    assert sum(len(p) for p in got[1]) > 1  # a tree that branched


def _engine_rows(engine, batch, where, tokens, rows=3):
    """Prefill `batch`, fork each prompt to `rows` rows (interleaved: row i is prompt i % G),
    decode len(tokens) steps (the rows of batch[where] take tokens[t], the others token t + 4);
    the logits of batch[where]'s rows at the prefill and every step."""
    G = len(batch)
    with torch.inference_mode():
        first = engine.prefill(batch, max_rows=G * rows, max_new_tokens=len(tokens))
        out = [first[where].clone()]
        src = torch.arange(G).repeat(rows)
        engine.reorder(src)
        mine = (src == where).nonzero().flatten()
        for t, tok in enumerate(tokens):
            step = torch.full((G * rows,), t + 4)
            step[mine] = tok
            out.append(engine.decode(step)[mine].clone())
        engine.release()
    return out


def _check_engine_rows(engine, prompts, sizes, tokens):
    """prompts[0]'s logits alone against in batches of `sizes`, in several orders: equal bits."""
    alone = _engine_rows(engine, prompts[:1], 0, tokens)
    for size in sizes:
        for batch, where in _orders(prompts, size):
            got = _engine_rows(engine, batch, where, tokens)
            assert all(torch.equal(g, a.expand_as(g)) for g, a in zip(got, alone)), (size, where)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_rows_logits_alone_equal_it_in_any_batch(tiny, threads):
    """At the engine: the prompt's rows' logits (prefill, 4 decodes) to the last bit."""
    torch.set_num_threads(threads)  # restored by the one_thread fixture
    _check_engine_rows(TransformersEngine(tiny, batch_invariant=True), PROMPTS, (2, 4, 16), [9, 17, 33, 5])


def _smollm2_prompts(tok):
    from eager_kernels.engines.base import chat_token_ids

    questions = [f"What is {a} + {b}? Answer briefly." if a % 2 else f"Name {a} animals that live in the sea."
                 for a, b in zip(range(3, 19), range(40, 56))]
    return [chat_token_ids(tok, [{"role": "user", "content": q}]) for q in questions]


@pytest.mark.slow
def test_smollm2_a_rows_logits_alone_equal_it_in_any_batch(smollm2):
    """The real default model (SmolLM2-135M-Instruct, float32) at the engine, 2 threads."""
    model, tok = smollm2
    torch.set_num_threads(2)  # restored by the one_thread fixture
    prompts = _smollm2_prompts(tok)
    _check_engine_rows(TransformersEngine(model, tok, batch_invariant=True), prompts, (2, 4, 16), [504, 28, 253])


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["seed", "paper"])
def test_smollm2_a_prompt_alone_equals_it_in_any_batch(smollm2, policy):
    """The real default model through generate() (one thread: the torch backend's sampler
    reductions follow the row count on more threads, docs/reproducibility.md)."""
    model, tok = smollm2
    prompts = _smollm2_prompts(tok)
    engine = TransformersEngine(model, tok, batch_invariant=True)
    cfg = _cfg(policy, max_new_tokens=6, theta=0.3, initial_threshold=0.3, temperature=1.0,
               **({"max_paths_per_prompt": 4, "prune_to": 4} if policy == "seed" else {}))
    _check_any_batch(engine, cfg, (2, 4, 16), prompts)
    late = ([prompts[0]], cfg, [KEY])
    got = _scheduled(engine, [(prompts[1:4], cfg, [1, 2, 3]), late], (0, 2))
    assert got[1] == _scheduled(engine, [late], (0,))[0]


def test_default_mode_and_the_model_are_unchanged(tiny):
    """The default engine does not state invariance; an invariant engine leaves the model's
    attention implementation and its own forward as they were."""
    assert TransformersEngine(tiny).batch_invariant is False
    ids = torch.tensor([PROMPTS[3]])
    with torch.inference_mode():
        before = tiny(input_ids=ids).logits
        impl = tiny.config._attn_implementation
        generate(TransformersEngine(tiny, batch_invariant=True), PROMPTS[:3], _cfg("seed"))
        assert tiny.config._attn_implementation == impl
        assert torch.equal(tiny(input_ids=ids).logits, before)
    with pytest.raises(RuntimeError, match="only inside TransformersEngine's decode"):
        te._run_attention(None, torch.zeros(1, 4, 1, 16), torch.zeros(1, 2, 3, 16), torch.zeros(1, 2, 3, 16))


def _batch_dependent(module):
    """module's forward plus 1e-3 when it sees more than ROW_MULTIPLE rows."""
    forward = module.forward

    def patched(x):
        y = forward(x)
        return y + 1e-3 if x.reshape(-1, x.shape[-1]).shape[0] > te.ROW_MULTIPLE else y

    module.forward = patched


def test_probe_refuses_a_batch_dependent_linear(tiny):
    model = copy.deepcopy(tiny)
    _batch_dependent(model.model.layers[0].mlp.down_proj)
    with pytest.raises(te.BatchInvarianceError, match=r"model\.layers\.0\.mlp\.down_proj \(Linear 128 -> 64, "
                                                       r"float32, and 1 other\(s\) of that shape\): a row at position"):
        TransformersEngine(model, batch_invariant=True)


def test_probe_refuses_a_batch_dependent_op_end_to_end(tiny):
    """An op the row-wise probe does not see (the second layer's down_proj: one Linear per
    shape is probed) is caught by the probe's decode step."""
    model = copy.deepcopy(tiny)
    _batch_dependent(model.model.layers[1].mlp.down_proj)
    with pytest.raises(te.BatchInvarianceError, match="a decode of a prompt's rows among another's: logits differ"):
        TransformersEngine(model, batch_invariant=True)


def test_new_row_counts_and_thread_counts_are_probed(tiny):
    engine = TransformersEngine(tiny, batch_invariant=True)
    assert engine._probed_threads == {1} and (1, 32) not in engine._probed
    with torch.inference_mode():
        engine.prefill(PROMPTS[:5], max_rows=30, max_new_tokens=1)
        engine.reorder(torch.arange(5).repeat(6))
        engine.decode(torch.full((30,), 7))  # 30 rows: 32 padded
        engine.release()
    assert (1, 32) in engine._probed
    torch.set_num_threads(2)  # restored by the one_thread fixture
    generate(engine, PROMPTS[:2], _cfg("seed"))
    assert engine._probed_threads == {1, 2}


def test_invariant_engine_errors(tiny):
    with pytest.raises(TypeError, match="batch_invariant: expected True or False, got 'yes'"):
        TransformersEngine(tiny, batch_invariant="yes")


def _padded_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """The decode attention without the fix: every row over the whole left-padded width, the
    padding masked (as the default mode's attention does)."""
    runs = te._RUNS.get()
    R, width = key.shape[0], key.shape[2]
    valid = torch.zeros(query.shape[0], 1, 1, width, dtype=torch.bool)
    for a, b, n in runs:
        valid[a:b, ..., width - n:] = True
    valid[R:, ..., -1] = True  # dummy rows: any key
    k, v = (torch.cat([x, x.new_zeros(query.shape[0] - R, *x.shape[1:])]) for x in (key, value))
    out = torch.nn.functional.scaled_dot_product_attention(query, k, v, attn_mask=valid, scale=scaling,
                                                           enable_gqa=True)
    return out.transpose(1, 2), None


@pytest.mark.parametrize("disabled", ["row padding", "attention over valid keys"])
def test_the_workload_needs_the_fix(tiny, monkeypatch, disabled):
    """With either part of the fix off (decode rows not padded: ROW_MULTIPLE = 1; or the
    attention over the left-padded width, masked), a row's logits in a batch differ from the
    row alone on this workload: the tests above check something that the fix makes true.
    Without the row padding the constructor's probe refuses the engine too (the masked
    attention is swapped in behind the probe's back: the probe checks _run_attention itself,
    and its short decode step does not show the masked attention's difference)."""
    from transformers import AttentionInterface

    if disabled == "row padding":
        monkeypatch.setattr(te, "ROW_MULTIPLE", 1)
    else:
        monkeypatch.setitem(AttentionInterface._global_mapping, te._ATTENTION, _padded_attention)
    if disabled == "row padding":
        with pytest.raises(te.BatchInvarianceError, match="batch-invariant mode refused"):
            TransformersEngine(tiny, batch_invariant=True)
    monkeypatch.setattr(TransformersEngine, "_probe", lambda self: None)
    monkeypatch.setattr(TransformersEngine, "_check_probed", lambda self, rows=None: None)
    engine = TransformersEngine(tiny, batch_invariant=True)
    with pytest.raises(AssertionError):
        _check_engine_rows(engine, PROMPTS, (2, 4, 16), [9, 17, 33, 5])
    with pytest.raises(AssertionError):
        _check_any_batch(engine, _cfg("seed"), (4, 16))


def test_select_falls_back_to_the_model_where_the_probe_refuses(tiny):
    """The command line's loader (serve, generate and eval with batch invariance): the
    invariant engine where the probe passes, else a warning that says why and the model
    (whose prompts the sampler then isolates)."""
    from eager_kernels.engines.select import invariant_transformers

    eng = invariant_transformers(tiny, None)
    assert isinstance(eng, TransformersEngine) and eng.batch_invariant is True
    model = copy.deepcopy(tiny)
    _batch_dependent(model.model.layers[0].mlp.down_proj)
    with pytest.warns(UserWarning, match=r"down_proj.*calls of its own"):
        assert invariant_transformers(model, None) is model
