"""CPU benchmark: the C++ kernels (backend="cpu") against the plain torch step a user would
write, eager and under torch.compile, and against one `logits.amax(-1)` pass (the read
floor). Run:  python benchmarks/bench_cpu.py [--quick] [--out benchmarks/results/cpu.csv]

Logits: x = 3 * randn(B, V), float32 or bfloat16. A flat, high-entropy distribution (about
8 nats): the hard case for the kernels' Gumbel shortcut, which skips the random numbers of
columns that cannot win and so pays off most on peaked, LLM-like logits (--dist peaked adds
+14 to five tokens per row).

Baselines, each in its fastest plain-torch form:
- entropy: p = F.softmax(x, dtype=float32); -(p * log(p + 1e-10)).sum(-1); top-K: topk
  first, then the same on the K values;
- topk_logprobs: log_softmax(x, dtype=float32).topk(k);
- sample: Gumbel arg-max (x / T - log(-log(torch.rand))).argmax(-1) (faster here than
  torch.multinomial); greedy: argmax;
- threshold: torch.quantile over a [G, 256] history, clamp, gather by group;
- the plain step = top-K entropy + threshold + branch + sample + log_softmax top-k (no
  history append: the baseline is spared it).
Every timing is the median of many runs of the public call (argument checks included),
after warm-up; the table prints ratios (baseline / kernel) and GB/s of logits read.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import eager_kernels as ek  # noqa: E402
from eager_kernels import benchmarking as bm  # noqa: E402

K, TOPK_ENT, TEMP, Q, THETA = 4, 20, 0.6, 99.0, 2.0
HIST_LEN = 256


CLOCK = time.perf_counter


def timeit(fn, min_runs: int, budget_s: float, with_min: bool = False):
    """Median time in microseconds (CLOCK) over at least min_runs runs (or budget_s);
    with_min: (median, minimum)."""
    for _ in range(3):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < budget_s and len(times) < 2000):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
        if len(times) >= min_runs and time.perf_counter() - start > budget_s:
            break
    if with_min:
        return statistics.median(times) * 1e6, min(times) * 1e6
    return statistics.median(times) * 1e6


# ---- plain torch baselines: eager_kernels.benchmarking, shared with the other benchmarks --


def plain_entropy(x):
    return bm.plain_entropy(x)


def plain_entropy_topk(x):
    return bm.plain_entropy(x, TOPK_ENT)


def plain_topk_logprobs(x):
    return bm.plain_topk_logprobs(x, K)


def plain_sample(x):
    return bm.plain_sample(x, TEMP)


def plain_threshold(hist, group):
    return bm.plain_threshold(hist, group, Q, THETA)


def plain_step(x, hist, group, greedy: bool):
    return bm.plain_torch_step(x, hist, group, k=K, temperature=0.0 if greedy else TEMP,
                               entropy_top_k=TOPK_ENT, q=Q, theta=THETA)


def make_logits(rows, vocab, dtype, dist, gen):
    x = torch.randn(rows, vocab, generator=gen) * 3
    if dist == "peaked":
        idx = torch.randint(0, vocab, (rows, 5), generator=gen)
        x.scatter_add_(1, idx, torch.full((rows, 5), 14.0))
    return x.to(dtype)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes and runs")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "cpu.csv"))
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    ap.add_argument("--dist", choices=["randn3", "peaked"], default="randn3")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: perf_counter; cpu: the calling thread's CPU time (time.thread_time), which "
                         "ignores time spent descheduled on a busy machine; meaningful with --threads 1 only")
    args = ap.parse_args(argv)
    global CLOCK
    if args.clock == "cpu":
        if args.threads != 1:
            sys.exit("--clock cpu needs --threads 1 (other threads' work would not be counted)")
        CLOCK = time.thread_time

    if args.threads:
        torch.set_num_threads(args.threads)
    if not ek.cpu_extension_available():
        sys.exit(f"the C++ extension is not built: {ek.cpu_extension_error()}")
    from eager_kernels import _C

    batches = [1, 8] if args.quick else [1, 8, 32]
    vocabs = [32000, 152064] if args.quick else [32000, 49152, 128256, 152064]
    dtypes = [torch.float32, torch.bfloat16]
    min_runs, budget = (10, 0.15) if args.quick else (30, 0.6)
    compiled = {}
    if not args.no_compile:
        # dynamic=True: one compile serves every shape.
        for name, fn in [("entropy", plain_entropy), ("entropy_top20", plain_entropy_topk),
                         ("topk_logprobs", plain_topk_logprobs), ("sample", plain_sample)]:
            compiled[name] = torch.compile(fn, dynamic=True)
        compiled["step_sample"] = torch.compile(lambda x, h, g: plain_step(x, h, g, False), dynamic=True)
        compiled["step_greedy"] = torch.compile(lambda x, h, g: plain_step(x, h, g, True), dynamic=True)

    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                cpu=bm.cpu_name(), torch=torch.__version__, threads=torch.get_num_threads(), clock=args.clock,
                isa=_C.isa(),
                dist=args.dist, load=" ".join(f"{v:.2f}" for v in os.getloadavg()))
    print(f"# {meta['date']} | {meta['cpu']} | torch {meta['torch']} | threads {meta['threads']} | "
          f"clock {args.clock} | kernels {meta['isa']} | logits {args.dist} | load {meta['load']}")
    if os.getloadavg()[0] > 1.0:
        print(f"# WARNING: load average {os.getloadavg()[0]:.2f}: other processes share the cores; with 2 threads "
              "a descheduled OpenMP thread stalls a whole op (multi-ms outliers). Rerun on a quiet machine, or "
              "compare with --threads 1.")
    gen = torch.Generator().manual_seed(0)
    rows_out = []
    header = f"{'dtype':>8} {'B':>3} {'V':>7} {'op':<14} {'cpu us':>9} {'torch us':>9} {'compile us':>10} " \
             f"{'x torch':>8} {'x compile':>9} {'/amax':>6} {'GB/s':>6}"
    print(header)
    for dtype in dtypes:
        for rows in batches:
            for vocab in vocabs:
                x = make_logits(rows, vocab, dtype, args.dist, gen)
                nbytes = x.numel() * x.element_size()
                groups = max(1, rows // 4)
                group = torch.arange(rows) % groups
                hist_plain = torch.rand(groups, HIST_LEN, generator=gen) * 5
                history = ek.EntropyHistory(groups, 1 << 20)
                history.append(hist_plain.flatten(), torch.arange(groups).repeat_interleave(HIST_LEN))
                values0, count0 = history.values.clone(), history.count.clone()

                def step(temperature):
                    def run():
                        history.count.copy_(count0)  # keep the history size fixed across runs
                        return ek.eager_step(x, history, group, k=K, temperature=temperature,
                                             entropy_top_k=TOPK_ENT, q=Q, theta=THETA, initial_threshold=5.0,
                                             seed=1, offset=0, backend="cpu")
                    return run

                amax = timeit(lambda: x.amax(-1), min_runs, budget)
                ops = [
                    ("entropy", lambda: ek.entropy(x, backend="cpu"), lambda: plain_entropy(x)),
                    ("entropy_top20", lambda: ek.entropy(x, top_k=TOPK_ENT, backend="cpu"),
                     lambda: plain_entropy_topk(x)),
                    ("topk_logprobs", lambda: ek.topk_logprobs(x, K, backend="cpu"), lambda: plain_topk_logprobs(x)),
                    ("sample", lambda: ek.sample(x, temperature=TEMP, seed=1, offset=0, backend="cpu"),
                     lambda: plain_sample(x)),
                    ("threshold", lambda: history.threshold(group, q=Q, theta=THETA, initial=5.0),
                     lambda: plain_threshold(hist_plain, group)),
                    ("step_sample", step(TEMP), lambda: plain_step(x, hist_plain, group, False)),
                    ("step_greedy", step(0.0), lambda: plain_step(x, hist_plain, group, True)),
                ]
                for name, kernel, plain in ops:
                    t_cpu, t_cpu_min = timeit(kernel, min_runs, budget, with_min=True)
                    t_torch = timeit(plain, max(5, min_runs // 3), budget)
                    t_comp = float("nan")
                    if name in compiled:
                        cfn = compiled[name]
                        if name.startswith("step"):
                            t_comp = timeit(lambda: cfn(x, hist_plain, group), max(5, min_runs // 3), budget)
                        else:
                            t_comp = timeit(lambda: cfn(x), max(5, min_runs // 3), budget)
                    reads_logits = name != "threshold"
                    gbps = nbytes / t_cpu / 1e3 if reads_logits else float("nan")
                    row = dict(meta, dtype=str(dtype).replace("torch.", ""), B=rows, V=vocab, op=name,
                               cpu_us=round(t_cpu, 2), cpu_min_us=round(t_cpu_min, 2), torch_us=round(t_torch, 2), compile_us=round(t_comp, 2),
                               amax_us=round(amax, 2), x_torch=round(t_torch / t_cpu, 2),
                               x_compile=round(t_comp / t_cpu, 2), over_amax=round(t_cpu / amax, 2),
                               gbps=round(gbps, 2))
                    rows_out.append(row)
                    print(f"{row['dtype']:>8} {rows:>3} {vocab:>7} {name:<14} {t_cpu:>9.1f} {t_torch:>9.1f} "
                          f"{t_comp:>10.1f} {row['x_torch']:>8.1f} {row['x_compile']:>9.1f} "
                          f"{row['over_amax']:>6.1f} {gbps:>6.1f}", flush=True)
                history.values.copy_(values0)
                print(f"{'':>8} {rows:>3} {vocab:>7} {'amax (floor)':<14} {amax:>9.1f}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows_out[0]))
        writer.writeheader()
        writer.writerows(rows_out)
    print(f"# wrote {args.out}")


if __name__ == "__main__":
    main()
