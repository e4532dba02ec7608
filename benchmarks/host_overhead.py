"""Where a fused call spends its host time: back-to-back call rates and a cProfile.

    python benchmarks/host_overhead.py [--device cuda] [--rows 8] [--vocab 152064] [--calls 300]

For each op (entropy, sample, eager_step at T = 0.6 and greedy) on the fused backend of the
device (triton on CUDA, the C++ kernels on CPU) and the reference (backend "torch"):
the time per call of `--calls` calls issued back to back with one synchronisation at the
end (what a decode loop sees when the host, not the GPU, is the bottleneck), then the
top functions of a cProfile of the fused eager_step by their own time. Figures only.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch

import eager_kernels as ek
from eager_kernels.bench import common as bm


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=152064)
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args(argv)
    dev = args.device
    fused = "triton" if dev == "cuda" else "cpu"
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    x = torch.randn(args.rows, args.vocab, device=dev).mul_(3).to(torch.bfloat16)
    groups = min(8, args.rows)
    group = torch.arange(args.rows, device=dev) % groups
    fill = (torch.rand(groups * 256, device=dev) * 5, torch.arange(groups, device=dev).repeat_interleave(256))

    def calls(backend):
        hist = ek.EntropyHistory(groups, 256 + 64 * args.rows, device=dev, backend=backend)
        n = [0]

        def step(t):
            n[0] += 1
            if n[0] % 64 == 1:
                hist.reset()
                hist.append(*fill)
            return ek.eager_step(x, hist, group, k=4, temperature=t, entropy_top_k=20, q=99.0, theta=2.0,
                                 initial_threshold=5.0, seed=1, offset=n[0], backend=backend)
        return {
            "entropy": lambda: ek.entropy(x, backend=backend),
            "sample": lambda: ek.sample(x, temperature=0.6, seed=1, offset=0, backend=backend),
            "eager_step": lambda: step(0.6),
            "eager_step_greedy": lambda: step(0.0),
        }

    print(f"# {bm.environment()['device']}, B={args.rows}, V={args.vocab}, bfloat16, "
          f"{args.calls} calls back to back; us per call")
    print(f"{'op':<18}{'torch (reference)':>18}{fused:>10}")
    table = {b: calls(b) for b in ("torch", fused)}
    for op in table[fused]:
        per = {}
        for b in ("torch", fused):
            fn = table[b][op]
            for _ in range(5):
                fn()
            sync()
            t0 = time.perf_counter()
            for _ in range(args.calls):
                fn()
            sync()
            per[b] = (time.perf_counter() - t0) / args.calls
        print(f"{op:<18}{per['torch'] * 1e6:>18.1f}{per[fused] * 1e6:>10.1f}", flush=True)
    prof = cProfile.Profile()
    fn = table[fused]["eager_step"]
    prof.enable()
    for _ in range(args.calls):
        fn()
    sync()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(22)
    print(f"# cProfile of {args.calls} {fused} eager_step calls, by own time")
    print("\n".join(line for line in buf.getvalue().splitlines() if line.strip())[:6000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
