"""The engine redesign changed nothing: generate() on the tiny random Llama gives the paths
recorded before the decode loop was moved onto the engine protocol (commit 810cbea).
The sampled case ("paper") was re-recorded when issue #12 changed the random stream on
purpose (each path keyed by its lineage, not its row): the merged code (engines + keys)
was checked to give exactly the paths of the keyed loop before the engine layer (branch
`ray`), for every case here and a budget stage.

tests/data/engine_baseline.json holds, per case (policy x backend), every path's token
ids, branch steps, end reason, cumulative log-probability and entropies, recorded on an
AMD EPYC (one torch thread). Token ids, branch steps and end reasons must match exactly.
Log-probabilities and entropies are float32 results of the model's forward: another CPU
(its SIMD width, MKL's kernel for it) sums in another order and moves them in the last
bits, so they are held to conftest.float32_tolerance of the forward's accumulation length
(conftest.llama_reduction_terms) and the largest |logit| of the recorded sequences:
1.7e-4 for a 10-token path's log-probability, 5.4e-5 for an entropy (issue 33: 3e-6 on an
Intel Xeon failed the earlier fixed 1e-6). The same cases are rerun here under other
accumulation orders (threads, oneDNN off, the C++ tiers; ATen's and MKL's instruction-set
switches in subprocesses), which is how a too tight tolerance shows on one machine.
Re-record only on purpose: `python tests/test_engine_baseline.py --record`.
"""
import contextlib
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).parent))
import eager_kernels as ek  # noqa: E402
from eager_kernels import EagerConfig, generate  # noqa: E402

from conftest import PathTolerance, llama_reduction_terms, make_tiny_llama  # noqa: E402

DATA = Path(__file__).parent / "data" / "engine_baseline.json"
VOCAB, EOS = 160, 3
# different lengths: the batch is left-padded
PROMPTS = [[1, 5, 6, 7, 8, 9], [1, 20, 21], [1, 30, 31, 32, 33, 34, 35, 36, 37]]
CONFIGS = {
    "seed": dict(policy="seed", max_new_tokens=10, max_paths_per_prompt=8, prune_to=8),
    "paper": dict(policy="paper", max_new_tokens=10, max_paths_per_prompt=6, theta=0.5, initial_threshold=0.5,
                  q=50.0, entropy_top_k=20, temperature=0.8),
    # EOS reachable (not silenced): paths end early and finished rows are held
    "seed-eos": dict(policy="seed", max_new_tokens=8, max_paths_per_prompt=6, prune_to=6, eos_token_id=102),
}
BACKENDS = ["torch", "cpu"]


def _cases():
    for name in CONFIGS:
        for backend in BACKENDS:
            yield name, backend


def _run(model, name, backend, threads=1):
    """One case on `threads` torch threads (the recording's: 1); the count is restored."""
    cfg = EagerConfig(backend=backend, **CONFIGS[name])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = generate(model, PROMPTS, cfg)
    finally:
        torch.set_num_threads(before)
    return [[dict(token_ids=p.token_ids, branch_steps=p.branch_steps, finished=p.finished, logprob=p.logprob,
                  entropies=p.entropies) for p in r.paths] for r in out.results]


def _structure(paths):
    return [(p["token_ids"], p["branch_steps"], p["finished"]) for p in paths]


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_llama(VOCAB, EOS, head_scale=25.0, silence_eos=True)


@pytest.fixture(scope="module")
def recorded():
    return json.loads(DATA.read_text())


@pytest.fixture(scope="module")
def tol(tiny, recorded):
    """The recorded paths' float32 tolerances (conftest.PathTolerance): the magnitude over every
    recorded sequence, the sequence length the left-padded batch's."""
    return _tolerance(tiny, recorded)


def _tolerance(model, data):
    seqs = [prompt + p["token_ids"] for case in data.values() for prompt, paths in zip(PROMPTS, case)
            for p in paths]
    longest = max(map(len, PROMPTS)) + max(c["max_new_tokens"] for c in CONFIGS.values())
    return PathTolerance(model, seqs, llama_reduction_terms(model.config, longest))


def _assert_close_to_recording(got, want, tol):
    assert len(got) == len(want)
    for g_paths, r_paths in zip(got, want):
        assert _structure(g_paths) == _structure(r_paths)
        for gp, rp in zip(g_paths, r_paths):
            assert gp["logprob"] == pytest.approx(rp["logprob"], rel=0, abs=tol.logprob(len(rp["token_ids"])))
            assert gp["entropies"] == pytest.approx(rp["entropies"], rel=0, abs=tol.entropy)


def _needs_cpu(backend):
    if backend == "cpu" and not ek.cpu_extension_available():
        pytest.skip("the C++ CPU extension is not built")


@pytest.mark.parametrize("name,backend", list(_cases()))
def test_outputs_equal_the_recorded_ones(tiny, recorded, tol, name, backend):
    _needs_cpu(backend)
    _assert_close_to_recording(_run(tiny, name, backend), recorded[f"{name}/{backend}"], tol)


def test_tolerances_stay_far_below_a_wrong_step(tiny, recorded, tol, one_thread):
    """The tolerances are rounding-sized: a dropped or doubled step moves a path's
    log-probability by at least its smallest |token log-probability| (0.023 here), over 100
    times the path's tolerance; an entropy taken one step off moves by at least the smallest
    change between consecutive steps of a path (2.9e-3 here), over 50 times its tolerance."""
    assert tol.logprob(10) < 2e-4 and tol.entropy < 1e-4
    smallest = {}
    for case in recorded.values():
        for prompt, paths in zip(PROMPTS, case):
            for p in paths:
                with torch.no_grad():
                    logits = tiny(input_ids=torch.tensor([prompt + p["token_ids"]])).logits[0, len(prompt) - 1:-1]
                lp = torch.log_softmax(logits.double(), -1).gather(1, torch.tensor(p["token_ids"])[:, None])
                ratio = float(lp.abs().min()) / tol.logprob(len(p["token_ids"]))
                smallest["step"] = min(smallest.get("step", ratio), ratio)
                ent = p["entropies"]
                moves = [abs(a - b) / tol.entropy for a, b in zip(ent, ent[1:]) if a != b]
                smallest["entropy"] = min([smallest.get("entropy", float("inf"))] + moves)
    assert smallest["step"] > 100 and smallest["entropy"] > 50, smallest


# ---------------------------------------------------------------------------------------
# Other accumulation orders on this machine: what another CPU does to the forward
# ---------------------------------------------------------------------------------------

def _cpu_extension():
    """The C++ extension (its tier switch, _C.set_isa): the module _C next to the backend
    registry."""
    registry = sys.modules[ek.cpu_extension_available.__module__]
    return importlib.import_module(f"{registry.__package__}._C")


def _isa_setting(isa):
    @contextlib.contextmanager
    def forced():
        _C = _cpu_extension()
        supported = {"avx512": _C.avx512_supported(), "avx2": _C.avx2_supported(), "scalar": True}[isa]
        if not supported:
            pytest.skip(f"this CPU has no {isa} tier")
        before = _C.isa()
        _C.set_isa(isa)
        try:
            yield
        finally:
            _C.set_isa(before)
    return forced


ORDERS = {
    # torch's matmuls and reductions split over two threads (the torch cases: the C++
    # kernels' results do not depend on the thread count, test_cpu_backend.py); slow: two
    # OpenMP threads that wait on each other take 0.5-13 s on a shared 2-core machine
    "threads-2": (lambda: contextlib.nullcontext(), 2),
    # fp32 matmuls and norms without oneDNN (no change on torch 2.13 CPU: MKL does them)
    "no-onednn": (lambda: torch.backends.mkldnn.flags(enabled=False), 1),
    # the C++ kernels' tiers (the cpu cases only; each sums the vocabulary in its own order)
    "cpu-avx512": (_isa_setting("avx512"), 1),
    "cpu-avx2": (_isa_setting("avx2"), 1),
    "cpu-scalar": (_isa_setting("scalar"), 1),
}


@pytest.mark.parametrize("order", [pytest.param(o, marks=[pytest.mark.slow] if o == "threads-2" else [])
                                   for o in ORDERS])
def test_recorded_cases_under_other_accumulation_orders(tiny, recorded, tol, order):
    setting, threads = ORDERS[order]
    backends = ["cpu"] if order.startswith("cpu-") else ["torch"] if order == "threads-2" else BACKENDS
    _needs_cpu(backends[-1])
    with setting():
        for name in CONFIGS:
            for backend in backends:
                _assert_close_to_recording(_run(tiny, name, backend, threads), recorded[f"{name}/{backend}"], tol)


# ATen's kernels take their instruction set (and with it the lane count of every vectorised
# reduction) from ATEN_CPU_CAPABILITY, and MKL its sgemm kernel from MKL_CBWR; both are read
# when the library loads, so each setting runs the cases in a subprocess (about 4-5 s each:
# `python tests/test_engine_baseline.py --run` prints them as JSON) and they are checked
# here. Largest deviations from the recording measured on the AMD EPYC (Zen 4, AVX-512):
# ATEN_CPU_CAPABILITY=default 9.9e-6 / 4.2e-6 (log-probability / entropy), avx2 6.8e-6 /
# 2.0e-6, MKL_CBWR=COMPATIBLE 6.2e-6 / 2.6e-6, 2 threads 5.3e-6 / 2.0e-6, the portable C++
# tier 1.9e-6 / 7.2e-7; at most 9% of the tolerances, and the earlier fixed 1e-6 failed
# under each. The fast run keeps ATEN_CPU_CAPABILITY=default (no vector kernels: the
# largest change here).
ENV_ORDERS = [
    pytest.param({"ATEN_CPU_CAPABILITY": "default"}, id="aten-default"),
    pytest.param({"ATEN_CPU_CAPABILITY": "avx2"}, id="aten-avx2", marks=pytest.mark.slow),
    pytest.param({"MKL_CBWR": "COMPATIBLE"}, id="mkl-compatible", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("env", ENV_ORDERS)
def test_recorded_cases_under_other_instruction_sets(recorded, tol, env):
    run = subprocess.run([sys.executable, __file__, "--run"], env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got, "no case ran"
    for case, paths in got.items():
        _assert_close_to_recording(paths, recorded[case], tol)


if __name__ == "__main__" and "--run" in sys.argv:
    # every case (the cpu ones where the extension is built) as one JSON line
    model = make_tiny_llama(VOCAB, EOS, head_scale=25.0, silence_eos=True)
    print(json.dumps({f"{n}/{b}": _run(model, n, b) for n, b in _cases()
                      if b != "cpu" or ek.cpu_extension_available()}))

if __name__ == "__main__" and "--record" in sys.argv:
    model = make_tiny_llama(VOCAB, EOS, head_scale=25.0, silence_eos=True)
    data = {f"{n}/{b}": _run(model, n, b) for n, b in _cases()}
    DATA.write_text(json.dumps(data, indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {DATA}: " + ", ".join(f"{k}: {sum(map(len, v))} paths" for k, v in data.items()))
