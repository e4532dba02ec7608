"""PreparedStep: eager_step planned once. Each call equals eager_step with the offset
counted on (bit for bit, history included), into the same output tensors, without an
allocation; bad data is flagged on the device (Triton) and raised by check(); a CUDA graph
of one call replays the step."""
import pytest
import torch

import eager_kernels as ek
from eager_kernels.kernels.ops import PreparedStep

from conftest import BACKENDS, INTERPRETED, make_logits
from gpu_mark import backend_fixture, needs_cuda

backend = backend_fixture(BACKENDS)  # conftest's fixture, the CUDA pairs marked gpu

STEP = dict(k=4, entropy_top_k=20, q=80.0, theta=0.5, initial_threshold=2.0)


def _pair(name, device, rows, groups=2, capacity=64):
    return (ek.EntropyHistory(groups, capacity, device=device, backend=name),
            ek.EntropyHistory(groups, capacity, device=device, backend=name))


def _same(got, want):
    return all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(got, want))


@pytest.mark.parametrize("form", ["scalar", "per-row"])
def test_calls_equal_eager_step_with_the_offset_counted_on(backend, form):
    name, device = backend
    rows, vocab = 3, 300
    hist, ref = _pair(name, device, rows)
    group = torch.tensor([0, 1, 0], device=device)
    if form == "scalar":
        temperature, seed = 0.7, 5
    else:
        temperature = torch.tensor([0.0, 0.5, 1.0], device=device)
        seed = torch.tensor([11, -3, 2**40], device=device)
    step = PreparedStep(hist, rows=rows, vocab=vocab, temperature=temperature, seed=seed, offset=3, group=group,
                        dtype=torch.bfloat16, backend=name, **STEP)
    x = make_logits(rows, vocab, dtype=torch.bfloat16, device=device)  # one buffer, refilled
    first = None
    for n in range(3):
        x.copy_(make_logits(rows, vocab, dtype=torch.bfloat16, seed=n, device=device))
        got = step(x)
        want = ek.eager_step(x, ref, group, temperature=temperature, seed=seed, offset=3 + n, backend=name, **STEP)
        assert _same(got, want), n
        assert torch.equal(hist.values.cpu(), ref.values.cpu()) and torch.equal(hist.count.cpu(), ref.count.cpu())
        ptrs = [t.data_ptr() for t in got]
        assert first is None or ptrs == first  # the same output tensors every call
        first = ptrs
        assert int(step.offset) == 4 + n
    step.check()


def test_new_tensors_per_call_and_another_group(backend):
    """A call may pass other tensors (checked and bound first) and its own group."""
    name, device = backend
    hist, ref = _pair(name, device, 2)
    step = PreparedStep(hist, rows=2, vocab=129, temperature=1.0, seed=1, backend=name, **STEP)
    for n, group in enumerate(([0, 0], [1, 0])):
        x = make_logits(2, 129, seed=10 + n, device=device)
        g = torch.tensor(group, device=device)
        want = ek.eager_step(x, ref, g, temperature=1.0, seed=1, offset=n, backend=name, **STEP)
        assert _same(step(x, g), want)
    assert torch.equal(hist.count.cpu(), ref.count.cpu())


def test_the_same_tensor_given_another_layout_is_bound_again(backend):
    """A logits tensor given other storage and strides in place (Tensor.set_) is read with
    its new layout, not the one bound at the first call."""
    name, device = backend
    hist, ref = _pair(name, device, 2)
    step = PreparedStep(hist, rows=2, vocab=90, temperature=0.0, seed=1, backend=name, **STEP)
    x = make_logits(2, 90, seed=1, device=device)
    step(x)
    ek.eager_step(x, ref, step.group, temperature=0.0, seed=1, offset=0, backend=name, **STEP)
    wide = make_logits(2, 100, seed=2, device=device)
    x.set_(wide.untyped_storage(), 0, (2, 90), (100, 1))  # rows 100 apart now
    want = ek.eager_step(x, ref, step.group, temperature=0.0, seed=1, offset=1, backend=name, **STEP)
    assert _same(step(x), want)


def test_update_sets_the_state_in_place(backend):
    name, device = backend
    hist, ref = _pair(name, device, 2)
    step = PreparedStep(hist, rows=2, vocab=64, temperature=1.0, seed=1, backend=name, **STEP)
    storage = [t.data_ptr() for t in (step.temperature, step.seed, step.offset)]
    step.update(temperature=0.0, seed=9, offset=40)
    assert [t.data_ptr() for t in (step.temperature, step.seed, step.offset)] == storage
    x = make_logits(2, 64, seed=3, device=device)
    group = torch.tensor([0, 1], device=device)
    want = ek.eager_step(x, ref, group, temperature=0.0, seed=9, offset=40, backend=name, **STEP)
    assert _same(step(x), want)
    assert torch.equal(step.result.token.cpu(), x.float().argmax(-1).cpu())  # greedy


@pytest.mark.skipif(not INTERPRETED, reason="the allocation hooks are CPU-side (the Triton interpreter)")
def test_a_call_allocates_nothing(monkeypatch):
    """After the first call (which binds the tensors), the Triton path allocates no torch
    tensor: the outputs, the scratch and the counters all exist already."""
    hist = ek.EntropyHistory(2, 64, backend="triton")
    step = PreparedStep(hist, rows=2, vocab=200, temperature=0.8, seed=2, backend="triton", **STEP)
    x = make_logits(2, 200, seed=1)
    step(x)

    def no(*args, **kwargs):
        raise AssertionError("a prepared call allocated a tensor")

    for fn in ("empty", "zeros", "full", "ones", "empty_like", "zeros_like", "full_like", "tensor", "arange"):
        monkeypatch.setattr(torch, fn, no)
    res = step(x)
    monkeypatch.undo()
    assert int(step.offset) == 2 and res.token.shape == (2,)


def test_bad_data_is_flagged_then_raised_by_check(backend):
    """Triton: a step with NaN, +inf, an empty row or a group id out of range raises
    nothing, appends nothing and or-s the rows' status into `errors`; check() raises
    eager_step's message and clears it. The CPU backends raise at once, as eager_step."""
    name, device = backend
    hist = ek.EntropyHistory(2, 64, device=device, backend=name)
    step = PreparedStep(hist, rows=3, vocab=100, temperature=0.5, seed=0, backend=name, **STEP)
    good = make_logits(3, 100, seed=4, device=device)
    step(good)
    count = hist.count.clone()
    cases = [("nan", "NaN or \\+inf", None), ("empty", "no finite entry", None),
             ("group", "group: ids must lie in", torch.tensor([0, 5, 1], device=device))]
    for kind, message, group in cases:
        x = good.clone()
        if kind == "nan":
            x[1, 7] = float("nan")
        elif kind == "empty":
            x[2] = float("-inf")
        if name != "triton":
            with pytest.raises(ValueError, match=message):
                step(x, group)
            continue
        step(x, group)  # no raise
        assert torch.equal(hist.count.cpu(), count.cpu())  # nothing appended
        assert int(step.errors) != 0
        with pytest.raises(ValueError, match=message):
            step.check()
        assert int(step.errors) == 0
    step(good)
    step.check()


def test_bad_arguments_name_the_argument():
    hist = ek.EntropyHistory(2, 8, backend="torch")
    kw = dict(rows=2, vocab=50, temperature=1.0, seed=0, backend="torch", **STEP)
    with pytest.raises(TypeError, match="history"):
        PreparedStep(None, **kw)
    with pytest.raises(ValueError, match="rows"):
        PreparedStep(hist, **{**kw, "rows": -1})
    with pytest.raises(ValueError, match="vocab"):
        PreparedStep(hist, **{**kw, "vocab": 0})
    with pytest.raises(ValueError, match="k: expected"):
        PreparedStep(hist, **{**kw, "k": 51})
    with pytest.raises(ValueError, match="temperature"):
        PreparedStep(hist, **{**kw, "temperature": -1.0})
    with pytest.raises(ValueError, match="q: expected"):
        PreparedStep(hist, **{**kw, "q": 101.0})
    with pytest.raises(TypeError, match="dtype"):
        PreparedStep(hist, **kw, dtype=torch.int32)
    step = PreparedStep(hist, **kw, dtype=torch.float32)
    with pytest.raises(ValueError, match="logits: expected shape \\[2, 50\\]"):
        step(torch.zeros(3, 50))
    with pytest.raises(TypeError, match="logits: expected torch.float32"):
        step(torch.zeros(2, 50, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="group: expected shape"):
        step(torch.zeros(2, 50), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="seed: expected the prepared form"):
        step.update(seed=torch.tensor([1, 2]))


def test_an_empty_batch_launches_nothing(backend):
    name, device = backend
    hist = ek.EntropyHistory(1, 4, device=device, backend=name)
    step = PreparedStep(hist, rows=0, vocab=10, temperature=0.5, seed=0, backend=name, **{**STEP, "entropy_top_k": 5})
    res = step(torch.empty(0, 10, device=device))
    assert res.cand_ids.shape == (0, 4) and int(step.offset) == 0 and hist.count.item() == 0


@needs_cuda
def test_cuda_graph_replays_the_step_without_a_sync():
    """One call captured in a CUDA graph: each replay is the next step (new logits copied
    into the captured buffer, the offset counted on the device), equal to eager_step; the
    call itself makes no host synchronisation (sync debug mode "error")."""
    device = "cuda"
    rows, vocab = 8, 32000
    hist = ek.EntropyHistory(4, 256, device=device)
    ref = ek.EntropyHistory(4, 256, device=device)
    group = torch.arange(rows, device=device) % 4
    step = PreparedStep(hist, rows=rows, vocab=vocab, temperature=0.6, seed=7, offset=0, group=group,
                        dtype=torch.bfloat16, **STEP)
    static = make_logits(rows, vocab, dtype=torch.bfloat16, seed=0, device=device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        res = step(static)  # the first call compiles (outside the capture), then binds
        res = step(static)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for n in range(2):
        ek.eager_step(static, ref, group, temperature=0.6, seed=7, offset=n, backend="triton", **STEP)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph, stream=stream):
            res = step(static)
    torch.cuda.current_stream().wait_stream(stream)
    # capturing does not run the step: the offset is still 2
    assert int(step.offset) == 2
    for n in range(3):
        static.copy_(make_logits(rows, vocab, dtype=torch.bfloat16, seed=100 + n, device=device))
        graph.replay()
        want = ek.eager_step(static, ref, group, temperature=0.6, seed=7, offset=2 + n, backend="triton", **STEP)
        assert _same(res, want), n
        assert torch.equal(hist.values, ref.values) and torch.equal(hist.count, ref.count)
    assert int(step.offset) == 5
    step.check()


def test_step_plans_follow_a_changing_batch():
    """StepPlans (the decode loop's adapter) over loop steps whose rows, keys and offsets
    change, two calls in some loop steps, and a history whose buffers are replaced by larger
    ones (as the scheduler grows it): equal to eager_step on a twin history throughout. On
    CPU tensors it runs the plans only with on_cpu=True (the Triton interpreter)."""
    from eager_kernels.kernels.ops import StepPlans

    if not (INTERPRETED or torch.cuda.is_available()):
        pytest.skip("needs Triton (CUDA or the interpreter)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plans = StepPlans(size=4, on_cpu=True)
    hist = ek.EntropyHistory(3, 40, device=device, backend="triton")
    ref = ek.EntropyHistory(3, 40, device=device, backend="triton")
    kw = dict(k=3, temperature=0.9, entropy_top_k=8, q=70.0, theta=0.2, initial_threshold=1.0)
    for step, runs in enumerate([[3], [2, 2], [5], [2, 2], [3]]):
        if step == 3:  # the history grows: new, larger buffers with the same contents
            for h in (hist, ref):
                values = torch.full((4, 80), float("inf"), device=device)
                values[:3, :40] = h.values
                h.values, h.count = values, torch.cat([h.count, h.count.new_zeros(1)])
                h.overflow = torch.cat([h.overflow, h.overflow.new_zeros(1)])
        plans.next_step()
        got, want = [], []
        for n, rows in enumerate(runs):
            x = make_logits(rows, 150, seed=10 * step + n, device=device)
            group = (torch.arange(rows, device=device) + step) % hist.num_groups
            keys = torch.arange(rows, device=device) * 7 + 100 * step + n
            got.append(plans(x, hist, group, seed=keys, offset=step, backend="triton", **kw))
            want.append(ek.eager_step(x, ref, group, seed=keys, offset=step, backend="triton", **kw))
        for g, w in zip(got, want):  # read after the loop step's calls: no plan was reused within it
            assert _same(g, w), step
        assert torch.equal(hist.values.cpu(), ref.values.cpu()) and torch.equal(hist.count.cpu(), ref.count.cpu())
    assert len(plans._plans) <= 4
    bad = make_logits(2, 150, device=device)
    bad[0, 3] = float("nan")
    if device == "cpu":
        with pytest.raises(ValueError, match="NaN"):
            plans(bad, hist, torch.tensor([0, 1]), seed=1, offset=0, backend="triton", **kw)
    eager = StepPlans()
    x = make_logits(2, 150, seed=5, device="cpu")
    h1, h2 = ek.EntropyHistory(2, 8, backend="torch"), ek.EntropyHistory(2, 8, backend="torch")
    g = torch.tensor([0, 1])
    assert _same(eager(x, h1, g, seed=1, offset=0, backend="torch", **kw),
                 ek.eager_step(x, h2, g, seed=1, offset=0, backend="torch", **kw))
    assert not eager._plans


@pytest.mark.skipif(not INTERPRETED, reason="forces the prepared path on CPU (the Triton interpreter)")
@pytest.mark.parametrize("policy", ["seed", pytest.param("paper", marks=pytest.mark.slow)])
def test_generate_through_prepared_steps_equals_eager_step(monkeypatch, policy):
    """generate()'s scheduler calls eager_step through StepPlans, which uses prepared steps
    on CUDA: forced on here (the interpreter), the trees are those of plain eager_step."""
    from eager_kernels.kernels import ops
    from eager_kernels.sampler import scheduler

    from conftest import make_tiny_llama, paper_cfg, seed_cfg

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model's ops gain nothing from threads
    try:
        _generate_both(monkeypatch, policy, make_tiny_llama, paper_cfg, seed_cfg, ops, scheduler)
    finally:
        torch.set_num_threads(threads)


def _generate_both(monkeypatch, policy, make_tiny_llama, paper_cfg, seed_cfg, ops, scheduler):
    tiny = make_tiny_llama(160, 3, head_scale=25.0, silence_eos=True)
    small = dict(max_new_tokens=4, max_paths_per_prompt=3, backend="triton")
    cfg = seed_cfg(prune_to=3, **small) if policy == "seed" else paper_cfg(**small)
    prompts = [[1, 5, 6, 7, 8, 9], [1, 20, 21]]
    want = ek.generate(tiny, prompts, cfg)
    used = []

    class Forced(ops.StepPlans):
        def __init__(self):
            super().__init__(on_cpu=True)
            used.append(self)

    monkeypatch.setattr(scheduler.ops, "StepPlans", Forced)
    got = ek.generate(tiny, prompts, cfg)
    assert used and used[0]._plans  # the prepared path ran
    assert [[(p.token_ids, p.branch_steps, p.finished, p.logprob) for p in r.paths] for r in got.results] == \
        [[(p.token_ids, p.branch_steps, p.finished, p.logprob) for p in r.paths] for r in want.results]
    assert got.metrics.branch_events == want.metrics.branch_events
