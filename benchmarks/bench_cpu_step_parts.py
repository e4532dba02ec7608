"""Parts of the C++ eager_step's time that bench_cpu_isa.py does not separate.

    python benchmarks/bench_cpu_step_parts.py [--isa avx2] [--dist randn3] [--rounds 10]

1. The 2-thread `_C.eager_step` alone (no Python wrapper) on bench_cpu_isa.py's B = 8,
   V = 152064 logits, sampling: minimum and 10th percentile of 400 calls.
2. The Python wrapper: `ek.eager_step` against `_C.eager_step` at B = 1, V = 64 (the kernel
   is negligible), 1st percentile of 20000 calls each.
3. bfloat16 against float32 per logit: `_C.eager_step` (2 threads) on the same values in
   both dtypes (bfloat16 logits and their float32 copy), flat and peaked, sampling and
   greedy, B = 8, V = 152064 and B = 1, V = 32000; the minimum over --rounds rounds that
   alternate the dtypes, 40 calls each (a loaded machine slows single calls, not every one).
4. The cost of each of the B = 8 rows on one thread (the row repeated 4 times, one chunk per
   row as at B = 8, divided by 4; minimum of 30): rows of one shape differ in Gumbel work,
   which is why run_pass hands out chunks one at a time.
"""
import argparse
import time

import torch

torch.set_num_threads(2)  # before any parallel region (a later set to 2 after 1 may stick at 1)

import eager_kernels as ek  # noqa: E402
from eager_kernels.kernels import _C  # noqa: E402
from eager_kernels.bench import common as bm  # noqa: E402

ARGS = dict(k=4, entropy_top_k=20, q=99.0, theta=2.0, initial=5.0)


def _times(fn, runs, warmup=10):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / 1e3)
    return sorted(out)


def _direct(x, hist, group, temperature):
    a = ARGS
    return lambda: _C.eager_step(x, hist.values, hist.count, hist.overflow, group, a["k"], temperature,
                                 a["entropy_top_k"], a["q"], a["theta"], a["initial"], 1, 0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--isa", default="avx2", choices=["avx512", "avx2", "scalar"])
    p.add_argument("--dist", default="randn3", choices=list(bm.DISTRIBUTIONS))
    p.add_argument("--rounds", type=int, default=10, help="rounds of the bfloat16 / float32 part")
    args = p.parse_args(argv)
    _C.set_isa(args.isa)
    rows, vocab = 8, 152064
    x = bm.bench_logits(rows, vocab, torch.float32, "cpu", args.dist, seed=rows * 1_000_003 + vocab)
    print(f"# tier {_C.isa()}, logits {args.dist}, torch {torch.__version__}")

    hist = ek.EntropyHistory(rows, 10**6)
    t = _times(_direct(x, hist, torch.arange(rows), 0.6), 400)
    print(f"2 threads, _C.eager_step B={rows} V={vocab} sampling: min {t[0]:.1f} us, p10 {t[len(t) // 10]:.1f} us")

    small = torch.randn(1, 64) * 3
    h1, g1 = ek.EntropyHistory(1, 10**6), torch.zeros(1, dtype=torch.int64)
    direct = _times(_direct(small, h1, g1, 0.0), 20000)
    a = ARGS
    wrapped = _times(lambda: ek.eager_step(small, h1, g1, k=a["k"], temperature=0.0, entropy_top_k=a["entropy_top_k"],
                                           q=a["q"], theta=a["theta"], initial_threshold=a["initial"], seed=1,
                                           offset=0, backend="cpu"), 20000)
    p1 = len(direct) // 100
    print(f"B=1 V=64 greedy, 1st percentile: ek.eager_step {wrapped[p1]:.2f} us, _C.eager_step {direct[p1]:.2f} us, "
          f"wrapper {wrapped[p1] - direct[p1]:.2f} us")

    print("bfloat16 against float32, _C.eager_step, 2 threads, minimum over rounds (ns per logit):")
    for rows_, vocab_ in ((8, 152064), (1, 32000)):
        for dist in ("randn3", "peaked"):
            x16 = bm.bench_logits(rows_, vocab_, torch.bfloat16, "cpu", dist, seed=rows_ * 1_000_003 + vocab_)
            xs = {"float32": x16.float(), "bfloat16": x16}
            grp = torch.arange(rows_) % max(1, min(8, rows_))
            for temperature, mode in ((0.6, "sampling"), (0.0, "greedy")):
                best = {}
                for _ in range(args.rounds):
                    for name, xx in xs.items():
                        h = ek.EntropyHistory(rows_, 10**6)
                        t = _times(_direct(xx, h, grp, temperature), 40, warmup=3)[0]
                        best[name] = min(best.get(name, t), t)
                per = {name: 1e3 * us / (rows_ * vocab_) for name, us in best.items()}
                print(f"  B={rows_} V={vocab_} {dist:6s} {mode:8s}: float32 {best['float32']:7.1f} us "
                      f"{per['float32']:.3f} ns, bfloat16 {best['bfloat16']:7.1f} us {per['bfloat16']:.3f} ns, "
                      f"bfloat16 / float32 {best['bfloat16'] / best['float32']:.3f}")

    torch.set_num_threads(1)
    costs = []
    for r in range(rows):
        xr = x[r:r + 1].expand(4, -1).contiguous()
        hr = ek.EntropyHistory(1, 10**6)
        costs.append(_times(_direct(xr, hr, torch.zeros(4, dtype=torch.int64), 0.6), 30, warmup=3)[0] / 4)
    half = rows // 2
    print("1 thread, each row (us): " + ", ".join(f"{c:.1f}" for c in costs)
          + f"; rows 0-{half - 1}: {sum(costs[:half]):.0f} us, rows {half}-{rows - 1}: {sum(costs[half:]):.0f} us")


if __name__ == "__main__":
    main()
