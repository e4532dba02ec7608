"""Kernel benchmark grid: every op and eager_step on every backend available here.

    eager-kernels bench [--quick] [--device cpu|cuda] [--backends torch,compile,reference,cpu,triton]
                        [--rows 1 8 32] [--vocab 32000 152064] [--dtypes float32 bfloat16]
                        [--dist randn3|peaked|llm] [--threads N] [--out-dir DIR] [--tag NAME] [--no-plots]
    eager-kernels bench --replot DIR/kernels_<device>.csv

Backends ("impl" in the CSV):
  torch      the plain torch ops a user writes, each in its fastest form
             (eager_kernels.bench.common.plain_*): the reference every ratio is taken against
  compile    the same functions under torch.compile(dynamic=True)
  reference  eager_kernels with backend="torch" (eager_kernels.kernels.reference: written for clarity
             and bit-exact randomness, not speed)
  cpu        the C++ kernels (CPU device, extension built)
  triton     the Triton kernels (CUDA device)

Ops: entropy (full), entropy_top20, topk_logprobs (k=4), sample (T=0.6), threshold (q=99
over a history of about 256 values per prompt), eager_step (T=0.6: top-20 entropy,
threshold, branch, sample, top-4 log-probs, history append) and eager_step_greedy (T=0).
The plain torch step is spared the history append (its history is a fixed [G, 256] tensor).

Each timing is the median of at least 20 runs and 0.3 s (CPU; 0.1 s on CUDA, timed with
events), at most about 1.5 s for slow calls (then at least 3 runs), after warm-up, of the
public call (argument checks included). On CUDA each backend is also timed by its kernels'
GPU time (`kernel_us`, from the profiler's device records, benchmarking.kernel_seconds):
a call's event time also counts the GPU idling while the host launches, so small calls
measure the host. The read floor is one logits.amax(-1) pass on CPU and the measured copy
bandwidth on CUDA; GB/s counts the logits read once, over the kernel time on CUDA and the
call time on CPU.

Writes DIR/kernels_<device>[_TAG].csv (one row per case and backend, with device, versions
and date), DIR/kernels_<device>[_TAG]_<dtype>.png (time against V per backend, one panel per
op and batch size) and DIR/kernels_<device>[_TAG]_step_gbps.png (eager_step GB/s against V),
and prints a table.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import sys

import torch

from ..kernels.history import EntropyHistory
from ..kernels.registry import cpu_extension_available
from .common import write_csv

BACKENDS = ("torch", "compile", "reference", "cpu", "triton")
OPS = ("entropy", "entropy_top20", "topk_logprobs", "sample", "threshold", "eager_step", "eager_step_greedy")
K, TOP_K, TEMPERATURE, Q, THETA, INITIAL = 4, 20, 0.6, 99.0, 2.0, 5.0
HISTORY_LEN, REFILL = 256, 64

GRIDS = {
    "cpu": dict(rows=[1, 8, 32], vocab=[32000, 49152, 128256, 152064], dtypes=["float32", "bfloat16"]),
    "cuda": dict(rows=[1, 8, 64, 256], vocab=[32000, 128256, 152064], dtypes=["bfloat16", "float32"]),
    "quick": dict(rows=[1, 8], vocab=[32000, 152064], dtypes=["float32"]),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def available_backends(device: str) -> list[str]:
    """The backends that run on `device` in this environment."""
    from ..kernels import ops as ek

    names = ["torch", "compile", "reference"]
    if device == "cpu" and cpu_extension_available():
        names.append("cpu")
    if device == "cuda":
        names.append("triton")
    return names


def _requestable_backends(device: str) -> list[str]:
    """What --backends may name: available_backends, plus Triton on CPU under
    TRITON_INTERPRET=1 (for testing this script only: interpreter times mean nothing)."""
    names = available_backends(device)
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        names.append("triton")
    return names


class _Case:
    """The inputs of one (B, V, dtype) case and a callable per (op, backend)."""

    def __init__(self, rows, vocab, dtype, device, dist, compiled):
        from . import common as bm

        self.device = device
        self.x = bm.bench_logits(rows, vocab, dtype, device, dist, seed=rows * 1_000_003 + vocab)
        self.groups = max(1, min(8, rows))
        self.group = torch.arange(rows, device=device) % self.groups
        gen = torch.Generator().manual_seed(vocab)
        self.hist_plain = (torch.rand(self.groups, HISTORY_LEN, generator=gen) * 5).to(device)
        self.compiled = compiled
        self._histories = {}
        self._step = 0

    def history(self, backend, op):
        """A history per backend and op of HISTORY_LEN values per group, refilled every REFILL steps
        (inside the timed call, without a host sync) so its size stays near HISTORY_LEN."""
        from ..kernels import ops as ek

        if (backend, op) not in self._histories:
            rows = self.x.shape[0]
            h = EntropyHistory(self.groups, HISTORY_LEN + REFILL * rows, device=self.device, backend=backend)
            fill = (self.hist_plain.flatten(), torch.arange(self.groups, device=self.device).repeat_interleave(HISTORY_LEN))
            h.append(*fill)
            self._histories[backend, op] = (h, fill)
        return self._histories[backend, op]

    def plain(self, op):
        from . import common as bm

        x, hist, group = self.x, self.hist_plain, self.group
        return {
            "entropy": lambda: bm.plain_entropy(x),
            "entropy_top20": lambda: bm.plain_entropy(x, TOP_K),
            "topk_logprobs": lambda: bm.plain_topk_logprobs(x, K),
            "sample": lambda: bm.plain_sample(x, TEMPERATURE),
            "threshold": lambda: bm.plain_threshold(hist, group, Q, THETA),
            "eager_step": lambda: bm.plain_torch_step(x, hist, group, k=K, temperature=TEMPERATURE,
                                                      entropy_top_k=TOP_K, q=Q, theta=THETA),
            "eager_step_greedy": lambda: bm.plain_torch_step(x, hist, group, k=K, temperature=0.0,
                                                             entropy_top_k=TOP_K, q=Q, theta=THETA),
        }[op]

    def compiled_fn(self, op):
        x, hist, group = self.x, self.hist_plain, self.group
        fn = self.compiled[op]
        if op in ("eager_step", "eager_step_greedy"):
            return lambda: fn(x, hist, group)
        if op == "threshold":
            return lambda: fn(hist, group)
        return lambda: fn(x)

    def fused(self, op, backend):
        from ..kernels import ops as ek

        x, group = self.x, self.group
        if op == "entropy":
            return lambda: ek.entropy(x, backend=backend)
        if op == "entropy_top20":
            return lambda: ek.entropy(x, top_k=TOP_K, backend=backend)
        if op == "topk_logprobs":
            return lambda: ek.topk_logprobs(x, K, backend=backend)
        if op == "sample":
            return lambda: ek.sample(x, temperature=TEMPERATURE, seed=1, offset=0, backend=backend)
        hist, fill = self.history(backend, op)
        if op == "threshold":
            return lambda: hist.threshold(group, q=Q, theta=THETA, initial=INITIAL)
        temperature = TEMPERATURE if op == "eager_step" else 0.0

        appended = [0]  # steps since this history was last refilled

        def step():
            self._step += 1
            appended[0] += 1
            if appended[0] == REFILL:
                hist.reset()
                hist.append(*fill)
                appended[0] = 1
            return ek.eager_step(x, hist, group, k=K, temperature=temperature, entropy_top_k=TOP_K, q=Q,
                                 theta=THETA, initial_threshold=INITIAL, seed=1, offset=self._step, backend=backend)
        return step

    def fn(self, op, impl):
        if impl == "torch":
            return self.plain(op)
        if impl == "compile":
            return self.compiled_fn(op)
        return self.fused(op, "torch" if impl == "reference" else impl)


def _compile_all():
    from . import common as bm

    def step(temperature):
        return lambda x, h, g: bm.plain_torch_step(x, h, g, k=K, temperature=temperature, entropy_top_k=TOP_K,
                                                   q=Q, theta=THETA)
    fns = {
        "entropy": bm.plain_entropy,
        "entropy_top20": lambda x: bm.plain_entropy(x, TOP_K),
        "topk_logprobs": lambda x: bm.plain_topk_logprobs(x, K),
        "sample": lambda x: bm.plain_sample(x, TEMPERATURE),
        "threshold": lambda h, g: bm.plain_threshold(h, g, Q, THETA),
        "eager_step": step(TEMPERATURE),
        "eager_step_greedy": step(0.0),
    }
    return {name: torch.compile(fn, dynamic=True) for name, fn in fns.items()}


def _floor_seconds(x, device, copy_bw):
    """One amax pass on CPU; on CUDA the logits read at the measured copy bandwidth."""
    from . import common as bm

    if device == "cpu":
        return bm.read_floor_seconds(x)
    return x.numel() * x.element_size() / copy_bw


def run_grid(*, device, backends, rows, vocab, dtypes, dist="randn3", ops=OPS, min_runs=20, min_seconds=None,
             max_seconds=1.5, log=print, csv_path=None):
    """Times every (dtype, B, V, op, backend); returns the CSV rows (dicts). With csv_path,
    the CSV is rewritten after every case, so an interrupted run keeps what it measured."""
    from . import common as bm

    if min_seconds is None:
        min_seconds = 0.3 if device == "cpu" else 0.1
    env = bm.environment()
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                device=env["device"], device_type=device, threads=env["threads"], torch=env["torch"],
                triton=env["triton"], python=env["python"], cpu_isa=_cpu_isa() if device == "cpu" else "",
                dist=dist, load=f"{os.getloadavg()[0]:.2f}")
    copy_bw = bm.copy_bandwidth(device) if device == "cuda" else None
    compiled = _compile_all() if "compile" in backends else {}
    out = []
    fused = [b for b in backends if b not in ("torch", "compile", "reference")]
    log(_header(backends, fused, cuda=device == "cuda"))
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        for b in rows:
            for v in vocab:
                case = _Case(b, v, dtype, device, dist, compiled)
                nbytes = case.x.numel() * case.x.element_size()
                floor = _floor_seconds(case.x, device, copy_bw)
                for op in ops:
                    reads_logits = op != "threshold"
                    stats = {}  # impl -> (median s, minimum s, runs, error)
                    for impl in backends:
                        try:
                            stats[impl] = (*bm.time_stats(case.fn(op, impl), device=device, min_runs=min_runs,
                                                          min_seconds=min_seconds, max_seconds=max_seconds), "")
                        except Exception as exc:  # a failing baseline (say, no compiler for inductor) is a row
                            stats[impl] = (float("nan"), float("nan"), 0,
                                           f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                    times = {impl: st[0] for impl, st in stats.items()}
                    # On CUDA the bandwidth figures come from the kernels' own GPU time (the
                    # call time also holds the host's launch work, which the GPU waits for).
                    kernel = {}
                    if device == "cuda":
                        for impl, st in stats.items():
                            kernel[impl] = float("nan")
                            if not st[3]:
                                try:
                                    kernel[impl] = bm.kernel_seconds(case.fn(op, impl))
                                except Exception:  # a profiler failure leaves the call times standing
                                    pass
                    for impl, (med, best, runs, error) in stats.items():
                        dev_t = kernel.get(impl, med)
                        out.append(dict(meta, dtype=dtype_name, B=b, V=v, op=op, impl=impl,
                                        median_us=round(med * 1e6, 3), min_us=round(best * 1e6, 3), runs=runs,
                                        kernel_us=round(kernel[impl] * 1e6, 3) if impl in kernel else "",
                                        x_torch=round(times["torch"] / med, 3) if "torch" in times else "",
                                        gbps=round(nbytes / dev_t / 1e9, 3) if reads_logits else "",
                                        floor_us=round(floor * 1e6, 3) if reads_logits else "",
                                        floor_gbps=round(nbytes / floor / 1e9, 3) if reads_logits else "",
                                        pct_floor=float(f"{100 * floor / dev_t:.3g}") if reads_logits else "",
                                        error=error))
                    log(_line(dtype_name, b, v, op, backends, fused, times, floor if reads_logits else None, nbytes,
                              kernel))
                if csv_path:
                    write_csv(out, csv_path)
    return out


def _cpu_isa():
    from ..kernels import ops as ek

    if not cpu_extension_available():
        return "none"
    from eager_kernels.kernels import _C

    return _C.isa()


def _header(backends, fused, cuda=False):
    cols = "".join(f"{b + ' us':>13}" for b in backends)
    kern = f"{'kern torch':>11}{'kern fused':>11}{'xk torch':>9}" if cuda and fused else ""
    extra = "".join(f"{'x torch':>9}{'x comp':>8}{'GB/s':>8}{'%floor':>7}" for _ in fused[:1])
    return f"{'dtype':>8} {'B':>4} {'V':>7} {'op':<18}{cols}{extra}{kern}"


def _line(dtype, b, v, op, backends, fused, times, floor, nbytes, kernel=None):
    """Call times per backend; for the fused backend the ratios to torch and torch.compile and,
    from its kernel time on CUDA (else its call time), GB/s and % of the read floor; on CUDA
    the kernel times of torch and the fused backend and their ratio."""
    cols = "".join(f"{times[i] * 1e6:>13.1f}" for i in backends)
    extra = kern = ""
    if fused:
        t = times[fused[0]]
        dev_t = kernel[fused[0]] if kernel else t
        comp = f"{times['compile'] / t:>7.1f}x" if "compile" in times else f"{'-':>8}"
        gbps = f"{nbytes / dev_t / 1e9:>8.1f}{100 * floor / dev_t:>6.0f}%" if floor else f"{'-':>8}{'-':>7}"
        extra = f"{times['torch'] / t:>8.1f}x{comp}{gbps}"
        if kernel:
            kt, kf = kernel.get("torch", float("nan")), kernel[fused[0]]
            ratio = kt / kf if kf > 0 else float("nan")
            kern = f"{kt * 1e6:>11.1f}{kf * 1e6:>11.1f}{ratio:>8.1f}x"
    return f"{dtype:>8} {b:>4} {v:>7} {op:<18}{cols}{extra}{kern}"


def read_csv(path) -> list[dict]:
    """The rows of a CSV written by this script, numbers parsed as plot() wants them."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["B"], r["V"] = int(r["B"]), int(r["V"])
        for key in ("median_us", "gbps", "floor_us", "floor_gbps"):
            r[key] = float(r[key]) if r[key] not in ("", "nan") else ""
    return rows


def plot(rows, prefix) -> list[str]:
    """Time against V per backend (one figure per dtype: a panel per op and B) and the
    eager_step GB/s against V; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    kilo = FuncFormatter(lambda v, _: f"{v / 1000:.0f}k")

    def finish(fig, axes, title, path):
        for ax in (a for row in axes for a in row):
            ax.xaxis.set_major_formatter(kilo)
        handles, labels = axes[0][0].get_legend_handles_labels()
        h = fig.get_figheight()
        fig.suptitle(title, y=1 - 0.05 / h, va="top", fontsize=10)
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.25 / h), ncol=len(labels),
                   fontsize=9, frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / h))
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)

    written = []
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    colors = dict(zip(BACKENDS, ["tab:gray", "tab:purple", "tab:brown", "tab:blue", "tab:green"]))
    bs = sorted({r["B"] for r in rows})
    first = rows[0]

    def figure(panels, value, floor, ylabel, title, path):
        """One row of panels per (dtype, op) in `panels`, one column per B: `value` of each
        backend against V, and the `floor` column dashed."""
        fig, axes = plt.subplots(len(panels), len(bs), figsize=(3.6 * len(bs), 2.7 * len(panels)), squeeze=False,
                                 sharex=True)
        for i, (dtype, op) in enumerate(panels):
            for j, b in enumerate(bs):
                ax = axes[i][j]
                sel = [r for r in rows if r["dtype"] == dtype and r["op"] == op and r["B"] == b]
                for impl in impls:
                    pts = sorted((r["V"], r[value]) for r in sel if r["impl"] == impl and r[value] != "")
                    if pts:
                        ax.plot(*zip(*pts), marker="o", ms=3, label=impl, color=colors.get(impl))
                pts = sorted({(r["V"], r[floor]) for r in sel if r[floor] != ""})
                if pts:
                    ax.plot(*zip(*pts), ls="--", color="black", lw=1, label="read floor")
                ax.set_yscale("log")
                ax.set_title(f"{op} {dtype}, B={b}", fontsize=9)
                ax.grid(True, which="both", alpha=0.3)
                if j == 0:
                    ax.set_ylabel(ylabel)
                if i == len(panels) - 1:
                    ax.set_xlabel("vocabulary V")
        finish(fig, axes, title, path)

    ops = list(dict.fromkeys(r["op"] for r in rows))
    where = f"on {first['device']}, {first['threads']} threads, {first['date']}"
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        figure([(dtype, op) for op in ops], "median_us", "floor_us", "median time (us)",
               f"{dtype} logits ({first['dist']}) {where}", f"{prefix}_{dtype}.png")
    steps = [op for op in ("eager_step", "eager_step_greedy") if op in ops]
    if steps:
        figure([(d, op) for d in dict.fromkeys(r["dtype"] for r in rows) for op in steps], "gbps", "floor_gbps",
               "logits read GB/s", f"eager_step throughput (logits {first['dist']}) {where}",
               f"{prefix}_step_gbps.png")
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="eager-kernels bench", description=__doc__.splitlines()[0],
                                 epilog="eager-kernels bench --decode [--help]: the end-to-end decode benchmark")
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    ap.add_argument("--backends", default=None,
                    help=f"comma-separated subset of {','.join(BACKENDS)} (default: all available; torch is always "
                         "kept, as the reference of the ratios)")
    ap.add_argument("--ops", default=None, help=f"comma-separated subset of {','.join(OPS)}")
    ap.add_argument("--quick", action="store_true", help=f"the grid {GRIDS['quick']}")
    ap.add_argument("--rows", type=int, nargs="+", default=None, help="batch sizes B")
    ap.add_argument("--vocab", type=int, nargs="+", default=None, help="vocabulary sizes V")
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=None)
    ap.add_argument("--dist", choices=["randn3", "peaked", "llm"], default="randn3",
                    help="logits: 3*randn (flat, the default), peaked, or llm (benchmarking.realistic_logits)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--min-runs", type=int, default=20)
    ap.add_argument("--min-seconds", type=float, default=None)
    ap.add_argument("--out-dir", default=os.path.join("benchmarks", "results"))
    ap.add_argument("--tag", default="", help="appended to the output file names")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--replot", metavar="CSV", default=None,
                    help="measure nothing: redraw the plots of a CSV this command wrote (beside it)")
    args = ap.parse_args(argv)
    for name in ("rows", "vocab", "min_runs", "threads"):
        values = getattr(args, name, None)
        values = values if isinstance(values, list) else [values] if values is not None else []
        if any(v < 1 for v in values):
            ap.error(f"--{name.replace('_', '-')}: expected positive integers, got {getattr(args, name)}")
    if args.replot:
        for path in plot(read_csv(args.replot), os.path.splitext(args.replot)[0]):
            print(f"# wrote {path}")
        return 0

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.backends:
        avail = _requestable_backends(device)
        wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
        bad = [b for b in wanted if b not in BACKENDS]
        if bad:
            ap.error(f"--backends: unknown {bad}; expected names from {list(BACKENDS)}")
        missing = [b for b in wanted if b not in avail]
        if missing:
            ap.error(f"--backends: {missing} not available on {device} here (available: {avail})")
        backends = ["torch"] + [b for b in wanted if b != "torch"]
    else:
        backends = available_backends(device)
    ops = OPS
    if args.ops:
        ops = tuple(o.strip() for o in args.ops.split(","))
        bad = [o for o in ops if o not in OPS]
        if bad:
            ap.error(f"--ops: unknown {bad}; expected names from {list(OPS)}")
    grid = dict(GRIDS["quick" if args.quick else device])
    for key in ("rows", "vocab", "dtypes"):
        if getattr(args, key):
            grid[key] = getattr(args, key)

    from . import common as bm

    env = bm.environment()
    print(f"# eager-kernels bench: {env['device']} ({device}, {env['threads']} threads), torch {env['torch']}, "
          f"triton {env['triton']}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, "
          f"logits {args.dist}, backends {backends}")
    if device == "cpu" and os.getloadavg()[0] > 1.0:
        print(f"# WARNING: load average {os.getloadavg()[0]:.2f}: other processes share the cores; the times "
              "are noisy. Rerun on a quiet machine or with --threads 1.")
    print("# times are medians in microseconds; 'x torch' and 'x comp' are the plain torch and torch.compile "
          "times over the fused backend's; GB/s: logits bytes / fused time; %floor: read floor time / fused time")
    prefix = os.path.join(args.out_dir, f"kernels_{device}" + (f"_{args.tag}" if args.tag else ""))
    rows = run_grid(device=device, backends=backends, ops=ops, dist=args.dist, min_runs=args.min_runs,
                    min_seconds=args.min_seconds, csv_path=prefix + ".csv", **grid)
    print(f"# wrote {prefix}.csv ({len(rows)} rows)")
    if not args.no_plots:
        try:
            for path in plot(rows, prefix):
                print(f"# wrote {path}")
        except ImportError as exc:  # a GPU box without matplotlib still gets the CSV
            print(f"# plots skipped ({exc}); draw them later with: eager-kernels bench --replot {prefix}.csv")
    failed = [r for r in rows if r["error"]]
    for r in failed:
        print(f"# FAILED {r['impl']} {r['op']} B={r['B']} V={r['V']} {r['dtype']}: {r['error']}", file=sys.stderr)
    return 1 if any(r["impl"] != "compile" for r in failed) else 0


if __name__ == "__main__":
    sys.exit(main())
