"""`make demo`, part one: each op on a few realistic shapes, its result checked against
the float64 reference and its time next to the torch reference and the plain torch step,
on the machine that runs it, with the backend "auto" picks there."""
from __future__ import annotations

import torch

from .kernels import registry as _registry, reference
from .bench import common as benchmarking
from .kernels.history import EntropyHistory
from .kernels.ops import eager_step, entropy, sample, topk_logprobs

SHAPES = [(1, 32000, torch.float32), (8, 49152, torch.bfloat16), (8, 152064, torch.float32)]
K, TOP_K, TEMPERATURE = 4, 20, 0.6


def _ops(x, backend, hist, group):
    """(name, call, check) for each op; check(result) returns (ok, detail)."""
    x64 = x.double().cpu()

    def close(got, want, tol=2e-4):
        err = (got.double().cpu() - want).abs().nan_to_num(0.0).max().item()
        return err <= tol, f"max |err| {err:.1e}"

    def same_tokens(got, want):
        n = int((got.cpu() == want).sum())
        return n == want.numel(), f"{n}/{want.numel()} tokens equal"

    def topk_check(got):
        want_lp, want_ids = reference.topk_logprobs(x64, K)
        ok, detail = close(got[0], want_lp)
        ids_ok = torch.equal(got[1].cpu(), want_ids)
        return ok and ids_ok, detail + (", ids equal" if ids_ok else ", ids DIFFER")

    def step():
        hist.reset()
        return eager_step(x, hist, group, k=K, temperature=TEMPERATURE, entropy_top_k=TOP_K, q=80.0,
                          theta=0.0, initial_threshold=5.0, seed=1, offset=0, backend=backend)

    def step_check(got):
        ok1, d1 = close(got.entropy, reference.entropy(x64, TOP_K))
        ok2, d2 = same_tokens(got.token, reference.sample(x.cpu(), TEMPERATURE, 1, 0))
        return ok1 and ok2, f"entropy {d1}, {d2}"

    return [
        ("entropy", lambda: entropy(x, backend=backend), lambda r: close(r, reference.entropy(x64))),
        ("entropy top-20", lambda: entropy(x, top_k=TOP_K, backend=backend),
         lambda r: close(r, reference.entropy(x64, TOP_K))),
        ("topk_logprobs k=4", lambda: topk_logprobs(x, K, backend=backend), topk_check),
        ("sample T=0.6", lambda: sample(x, temperature=TEMPERATURE, seed=1, offset=0, backend=backend),
         lambda r: same_tokens(r, reference.sample(x.cpu(), TEMPERATURE, 1, 0))),
        ("eager_step", step, step_check),
    ]


def backend_label(backend: str) -> str:
    """The backend's name, with the C++ kernel tier picked at run time for this CPU when it
    is the C++ backend (docs/cpu_tiers.md): "'cpu', C++ tier avx512"."""
    if backend != "cpu":
        return repr(backend)
    from .kernels import _C

    return f"{backend!r}, C++ tier {_C.isa()}"


def run_kernel_checks(device: str | None = None) -> bool:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    backend = _registry.resolve("auto", torch.device(device))
    env = benchmarking.environment()
    print(f"== Kernel checks on {env['device']} ({env['threads']} threads), backend 'auto' -> {backend_label(backend)}, "
          f"torch {env['torch']}, {env['date']} ==")
    if backend == "torch":
        print(f"   (C++ extension unavailable: {_registry.cpu_extension_error()}; times compare torch with itself)")
    print("   ('reference' is eager_kernels.kernels.reference, written for clarity and bit-exact randomness; the")
    print("    realistic baseline is the last row of each shape: the plain torch step a user would write)")
    print(f"   {'shape':<24} {'op':<18} {'check':<44} {backend + ' ms':>10} {'ref. ms':>10} {'speedup':>8}")
    all_ok = True
    for rows, vocab, dtype in SHAPES:
        x = benchmarking.realistic_logits(rows, vocab, dtype, device, seed=vocab)
        group = torch.zeros(rows, dtype=torch.int64, device=device)
        hist = EntropyHistory(1, 4 * rows, device=device)
        ref_hist = EntropyHistory(1, 4 * rows, device=device, backend="torch")
        ours = _ops(x, backend, hist, group)
        theirs = dict((name, fn) for name, fn, _ in _ops(x, "torch", ref_hist, group))
        shape = f"{rows}x{vocab} {str(dtype).replace('torch.', '')}"
        for name, fn, check in ours:
            ok, detail = check(fn())
            all_ok &= ok
            t_ours = benchmarking.time_fn(fn, device=device, min_runs=5, min_seconds=0.1)
            t_ref = benchmarking.time_fn(theirs[name], device=device, min_runs=3, min_seconds=0.1)
            print(f"   {shape:<24} {name:<18} {('ok ' if ok else 'FAIL ') + detail:<44} "
                  f"{t_ours * 1e3:>10.3f} {t_ref * 1e3:>10.3f} {t_ref / t_ours:>7.1f}x")
        hist_plain = torch.rand(1, 256, device=device) * 5
        t_plain = benchmarking.time_fn(
            lambda: benchmarking.plain_torch_step(x, hist_plain, group, k=K, temperature=TEMPERATURE,
                                                  entropy_top_k=TOP_K, q=80.0, theta=0.0),
            device=device, min_runs=5, min_seconds=0.1)
        t_step = benchmarking.time_fn(ours[-1][1], device=device, min_runs=5, min_seconds=0.1)
        print(f"   {shape:<24} {'vs plain torch step':<18} {'(F.softmax, topk, quantile, rand)':<44} "
              f"{t_step * 1e3:>10.3f} {t_plain * 1e3:>10.3f} {t_plain / t_step:>7.1f}x")
    print("== all checks passed ==" if all_ok else "== SOME CHECKS FAILED ==")
    return all_ok
