"""The C++ tiers against each other and float64 on random awkward inputs.

    python benchmarks/cpu_tier_stress.py [--configs 300] [--seed 1]

Each config draws rows (1-8), V (1 .. 70001), dtype (float32, bfloat16, float16), a kind
(flat, peaked, -inf masked, ties), a scale (0.5 .. 30) and a temperature (0 .. 2.5), runs
`eager_step` (k = 4, top-20 entropy) and `topk_logprobs` on every tier this CPU has, and
checks: the sampled tokens are identical on all tiers; the top-k log-probabilities are
within 2e-5 of float64 relative to the row's largest |log p|. Prints the mismatches and the
worst relative log-probability error per tier.
"""
import argparse
import random

import torch

import eager_kernels as ek
from eager_kernels.kernels import _C


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", type=int, default=300)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    tiers = (["avx512"] if _C.avx512_supported() else []) + (["avx2"] if _C.avx2_supported() else []) + ["scalar"]
    rnd = random.Random(args.seed)
    bad, worst = 0, {t: 0.0 for t in tiers}
    for it in range(args.configs):
        rows = rnd.choice([1, 2, 3, 5, 8])
        vocab = rnd.choice([1, 2, 3, 4, 5, 7, 31, 255, 256, 257, 1000, 4099, 16001, 32000, 70001])
        dtype = rnd.choice([torch.float32, torch.bfloat16, torch.float16])
        kind = rnd.choice(["flat", "peaked", "masked", "ties"])
        g = torch.Generator().manual_seed(it)
        x = torch.randn(rows, vocab, generator=g) * rnd.choice([0.5, 3, 8, 20, 30])
        if kind == "peaked":
            x[:, torch.randint(0, vocab, (3,), generator=g)] += 14
        if kind == "masked":
            x[torch.rand(rows, vocab, generator=g) < 0.9] = float("-inf")
            x[:, 0] = 0.0
        if kind == "ties":
            x = x.round()
        x = x.to(dtype)
        temperature = rnd.choice([0.6, 1.0, 2.5, 1e-3, 0.3, 0.0])
        seed, offset = rnd.randrange(1 << 40), rnd.randrange(1 << 20)
        k = min(4, vocab)
        ref = torch.log_softmax(x.double(), -1).topk(k, -1).values
        fin = torch.isfinite(ref)
        scale = max(1.0, ref[fin].abs().max().item()) if fin.any() else 1.0
        tokens = {}
        try:
            for tier in tiers:
                _C.set_isa(tier)
                step = ek.eager_step(x, ek.EntropyHistory(rows, 100), torch.arange(rows), k=k, temperature=temperature,
                                     entropy_top_k=min(20, vocab), q=99.0, theta=2.0, initial_threshold=5.0, seed=seed,
                                     offset=offset, backend="cpu")
                tokens[tier] = step.token
                for name, lp in (("topk_logprobs", ek.topk_logprobs(x, k, backend="cpu")[0]),
                                 ("eager_step", step.cand_logprobs)):
                    err = (lp.double()[fin] - ref[fin]).abs().max().item() / scale if fin.any() else 0.0
                    worst[tier] = max(worst[tier], err)
                    if err > 2e-5:
                        bad += 1
                        print(f"log-prob error {err:.2e}: {tier} {name} config {it} {rows}x{vocab} {dtype} {kind}")
        finally:
            _C.set_isa("auto")
        if any(not torch.equal(tokens[tiers[0]], t) for t in tokens.values()):
            bad += 1
            print(f"draws differ: config {it} {rows}x{vocab} {dtype} {kind} T={temperature}")
    print(f"{args.configs} configs, tiers {' '.join(tiers)}: {bad} mismatches; worst relative log-prob error "
          + ", ".join(f"{t} {e:.3g}" for t, e in worst.items()))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
