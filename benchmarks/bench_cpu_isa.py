"""The C++ kernel tiers side by side: AVX-512, AVX2 and portable, forced with _C.set_isa.

    python benchmarks/bench_cpu_isa.py [--rows 8] [--vocab 152064]

Median microseconds of entropy (full), eager_step greedy and eager_step sampling (T=0.6;
k=4, top-20 entropy) on benchmarking.realistic_logits, float32, all threads.
"""
import argparse

import torch

import eager_kernels as ek
from eager_kernels import _C
from eager_kernels import benchmarking as bm


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--vocab", type=int, default=152064)
    args = p.parse_args(argv)
    x = bm.realistic_logits(args.rows, args.vocab, torch.float32, "cpu")
    hist = ek.EntropyHistory(1, 10**7)
    group = torch.zeros(args.rows, dtype=torch.int64)
    tiers = [t for t, ok in (("avx512", _C.avx512_supported()), ("avx2", _C.avx2_supported()), ("scalar", True)) if ok]
    env = bm.environment()
    print(f"# {env['device']}, {env['threads']} threads, torch {env['torch']}, {env['date']}; "
          f"float32 B={args.rows} V={args.vocab}, realistic logits; median us")
    print(f"{'tier':>8} {'entropy':>9} {'greedy step':>12} {'sampling step':>14}")
    for tier in tiers:
        _C.set_isa(tier)

        def step(temperature):
            return lambda: ek.eager_step(x, hist, group, k=4, temperature=temperature, entropy_top_k=20, q=99.0,
                                         theta=2.0, initial_threshold=5.0, seed=1, offset=0, backend="cpu")

        t_ent = bm.time_fn(lambda: ek.entropy(x, backend="cpu"), min_runs=30)
        t_greedy = bm.time_fn(step(0.0), min_runs=30)
        t_sample = bm.time_fn(step(0.6), min_runs=30)
        print(f"{tier:>8} {t_ent * 1e6:>9.1f} {t_greedy * 1e6:>12.1f} {t_sample * 1e6:>14.1f}")
        hist.reset()
    _C.set_isa("auto")


if __name__ == "__main__":
    main()
