"""The C++ kernel tiers side by side (AVX-512, AVX2, portable, forced with _C.set_isa),
against one amax pass and the plain torch step measured in the same run.

    python benchmarks/bench_cpu_isa.py [--isa avx512 avx2 scalar] [--dist randn3 peaked]
        [--dtype float32 bfloat16] [--shapes 8x152064 1x32000] [--repeats 3] [--threads N]
        [--stat median|min]

For every (dist, dtype, shape): one `logits.amax(-1)` pass (the read floor), the plain torch
step (benchmarking.plain_torch_step, T=0.6) and, per tier, `eager_step(backend="cpu")`
sampling (T=0.6) and greedy (T=0), k=4, top-20 entropy, q=99, theta=2. Each time is a
median (benchmarking.time_stats; --stat min takes the fastest run instead, steadier on a loaded
machine); the whole set is measured --repeats times and the summary
gives the median over the repeats of each time and of each ratio (ratios are taken within
one repeat, so machine load moves both sides). At B=1 it also times the Python wrapper:
`ek.eager_step` against the extension's `_C.eager_step` called directly with the same
arguments ("wrapper us" is the difference).

Defaults: every tier this CPU runs, flat `3*randn` and peaked logits
(benchmarking.bench_logits), float32 and bfloat16, B=8 V=152064 and B=1 V=32000, 3 repeats.
"""
import argparse
import os
import statistics

import torch

import eager_kernels as ek
from eager_kernels.kernels import _C
from eager_kernels.bench import common as bm

K, TOP_K, TEMPERATURE, Q, THETA, INITIAL = 4, 20, 0.6, 99.0, 2.0, 5.0
HISTORY_LEN = 256
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _shape(text):
    try:
        b, v = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BxV (as 8x152064), got {text!r}") from None
    if b < 1 or v < 1:
        raise argparse.ArgumentTypeError(f"expected positive B and V, got {text!r}")
    return b, v


def _tiers():
    return [t for t, ok in (("avx512", _C.avx512_supported()), ("avx2", _C.avx2_supported()), ("scalar", True)) if ok]


class _Case:
    def __init__(self, dist, dtype, rows, vocab):
        self.x = bm.bench_logits(rows, vocab, DTYPES[dtype], "cpu", dist, seed=rows * 1_000_003 + vocab)
        self.groups = max(1, min(8, rows))
        self.group = torch.arange(rows) % self.groups
        gen = torch.Generator().manual_seed(vocab)
        self.hist_plain = torch.rand(self.groups, HISTORY_LEN, generator=gen) * 5
        self.hist = ek.EntropyHistory(self.groups, 10**6)
        self.hist.append(self.hist_plain.flatten(), torch.arange(self.groups).repeat_interleave(HISTORY_LEN))

    def amax(self):
        return lambda: self.x.amax(-1)

    def plain(self):
        return lambda: bm.plain_torch_step(self.x, self.hist_plain, self.group, k=K, temperature=TEMPERATURE,
                                           entropy_top_k=TOP_K, q=Q, theta=THETA)

    def step(self, temperature):
        # The history grows by B per call; 10**6 slots last any run of this script.
        return lambda: ek.eager_step(self.x, self.hist, self.group, k=K, temperature=temperature,
                                     entropy_top_k=TOP_K, q=Q, theta=THETA, initial_threshold=INITIAL,
                                     seed=1, offset=0, backend="cpu")

    def direct(self, temperature):
        h = self.hist
        return lambda: _C.eager_step(self.x, h.values, h.count, h.overflow, self.group, K, temperature, TOP_K, Q,
                                     THETA, INITIAL, 1, 0)


def _measure(args, tiers, repeat, log):
    """One repeat: a dict (dist, dtype, B, V) -> times in seconds."""
    pick = 0 if args.stat == "median" else 1

    def time_fn(fn, min_runs):
        return bm.time_stats(fn, min_runs=min_runs)[pick]

    out = {}
    for dist in args.dist:
        for dtype in args.dtype:
            for rows, vocab in args.shapes:
                case = _Case(dist, dtype, rows, vocab)
                t = {"amax": time_fn(case.amax(), min_runs=50), "plain": time_fn(case.plain(), min_runs=10)}
                for tier in tiers:
                    _C.set_isa(tier)
                    t[tier, "sample"] = time_fn(case.step(TEMPERATURE), min_runs=30)
                    t[tier, "greedy"] = time_fn(case.step(0.0), min_runs=30)
                    if rows == 1:
                        t[tier, "direct"] = time_fn(case.direct(TEMPERATURE), min_runs=100)
                _C.set_isa("auto")
                out[dist, dtype, rows, vocab] = t
                for tier in tiers:
                    log(_row(f"#{repeat + 1}", dist, dtype, rows, vocab, tier, [t]))
    return out


def _row(label, dist, dtype, rows, vocab, tier, reps):
    """One table line from the repeats' time dicts: median times and median ratios."""
    med = statistics.median

    def m(f):
        return med(f(t) for t in reps)

    sample, greedy = m(lambda t: t[tier, "sample"]), m(lambda t: t[tier, "greedy"])
    cells = [m(lambda t: t["amax"]) * 1e6, sample * 1e6, greedy * 1e6, m(lambda t: t["plain"]) * 1e6,
             m(lambda t: t[tier, "sample"] / t["amax"]), m(lambda t: t[tier, "greedy"] / t["amax"]),
             m(lambda t: t["plain"] / t[tier, "sample"]), 1e9 * sample / (rows * vocab)]
    wrapper = f"{m(lambda t: t[tier, 'sample'] - t[tier, 'direct']) * 1e6:>8.1f}" if rows == 1 else f"{'-':>8}"
    return (f"{label:>6} {dist:>6} {dtype:>8} {rows:>2} {vocab:>6} {tier:>6} {cells[0]:>7.1f} {cells[1]:>8.1f} "
            f"{cells[2]:>7.1f} {cells[3]:>8.1f} {cells[4]:>6.1f}x {cells[5]:>6.1f}x {cells[6]:>6.1f}x "
            f"{cells[7]:>6.3f} {wrapper}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--isa", nargs="+", choices=["avx512", "avx2", "scalar"], help="tiers (default: all this CPU runs)")
    p.add_argument("--dist", nargs="+", default=["randn3", "peaked"], choices=["randn3", "peaked", "llm"])
    p.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=sorted(DTYPES))
    p.add_argument("--shapes", nargs="+", type=_shape, default=[(8, 152064), (1, 32000)], metavar="BxV")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--stat", choices=["median", "min"], default="median",
                   help="each time: the median of the runs (default) or the minimum (steadier on a loaded machine)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats: expected >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    supported = _tiers()
    tiers = args.isa or supported
    for tier in tiers:
        if tier not in supported:
            p.error(f"--isa: this CPU cannot run the {tier} tier (it runs {', '.join(supported)})")
    env = bm.environment()
    flags = sorted({f for f in open("/proc/cpuinfo").read().split() if f in ("avx2", "avx512f")}) \
        if os.path.exists("/proc/cpuinfo") else []
    print(f"# {env['device']} ({'+'.join(flags) or 'no AVX2'}), {env['threads']} threads, torch {env['torch']}, "
          f"{env['date']}, load {os.getloadavg()[0]:.2f}; auto tier here: {_C.isa()}; tiers forced with _C.set_isa")
    print(f"# eager_step k={K}, top-{TOP_K} entropy, sampling T={TEMPERATURE} / greedy T=0; plain = "
          f"benchmarking.plain_torch_step (T=0.6); times: {args.stat}s in us; ns/el = sampling step per logit; "
          "wrapper = ek.eager_step - _C.eager_step (B=1)")
    header = (f"{'run':>6} {'dist':>6} {'dtype':>8} {'B':>2} {'V':>6} {'tier':>6} {'amax':>7} {'sampling':>8} "
              f"{'greedy':>7} {'plain':>8} {'s/amax':>7} {'g/amax':>7} {'pl/smp':>7} {'ns/el':>6} {'wrapper':>8}")
    print(header)
    reps = [_measure(args, tiers, r, lambda s: print(s, flush=True)) for r in range(args.repeats)]
    print(f"# summary: medians over {args.repeats} repeats (ratios taken within a repeat), "
          f"load {os.getloadavg()[0]:.2f} at the end")
    print(header)
    for key in reps[0]:
        for tier in tiers:
            print(_row("median", *key, tier, [r[key] for r in reps]))


if __name__ == "__main__":
    main()
