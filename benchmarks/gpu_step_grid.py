"""The Triton step against the GPU's memory limit: each op, three clocks, one grid.

    python benchmarks/gpu_step_grid.py [--out CSV] [--dtypes bfloat16 float32] [--rows 64 1 8 256]
                                       [--vocab 152064 32000] [--budget-s 210] [--dry-run]

For each case (dtype, B, V; logits as bench.common.bench_logits "randn3") and op, per call:

- kernel_us: the device time of the call's kernels (profiler records, bench.common.kernel_seconds);
- call_us: the wall time per call of 30 calls issued back to back, one synchronisation at
  the end (what a decode loop sees: host and device);
- graph_us: the time per call replaying a CUDA graph of 10 calls (the host out of the way);
  empty where the call cannot be captured.

Ops, Triton: entropy (full), entropy_top20, topk_logprobs (k=4), sample (T=0.6), eager_step
(the public call: top-20 entropy, threshold, sample, top-4, history append) and prepared
(ops.PreparedStep, the same step planned once). Torch: torch_step (bench.common's plain
torch step, each part in its fastest torch form) and torch_best (the fewest torch kernels
for the same results: one torch.topk(20) of the logits for the top-20 entropy and the
top-4, logsumexp for their log-probabilities, a Gumbel sample with torch.rand). The read
floor: copy bandwidth measured in this run (a 1 GiB device copy); gbps is the logits' bytes
over kernel_us and pct_copy its share of that bandwidth.

Writes one CSV row per (case, op) after every case (a run cut short keeps what it has);
stops starting cases after --budget-s seconds. --dry-run: CPU, the Triton interpreter
(set TRITON_INTERPRET=1), tiny sizes, no graphs: checks that the script runs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import eager_kernels as ek  # noqa: E402
from eager_kernels.bench import common as bm  # noqa: E402
from eager_kernels.kernels.ops import PreparedStep  # noqa: E402

K, TOP_K, TEMPERATURE, Q, THETA, INITIAL = 4, 20, 0.6, 99.0, 2.0, 5.0
GROUPS, HISTORY = 8, 256
FIELDS = ["device", "torch", "triton", "date", "dtype", "rows", "vocab", "op", "kernel_us", "call_us", "graph_us",
          "gbps", "pct_copy", "copy_gbps", "note"]


def torch_best(x, hist, group):
    """The step's results in the fewest torch kernels: one topk for the top-20 entropy and the
    top-4, one logsumexp, a Gumbel sample; the threshold as the plain step computes it."""
    top = torch.topk(x, TOP_K, dim=-1)
    v = top.values.float()
    p = torch.softmax(v, dim=-1)
    entropy = -(p * torch.log(p + 1e-10)).sum(-1)
    lse = torch.logsumexp(x.float(), dim=-1, keepdim=True)
    cand_lp, cand_ids = v[:, :K] - lse, top.indices[:, :K]
    threshold = bm.plain_threshold(hist, group, Q, THETA)
    token = bm.plain_sample(x, TEMPERATURE)
    return entropy, threshold, entropy > threshold, token, cand_ids, cand_lp


def _ops(x, device):
    rows = x.shape[0]
    group = torch.arange(rows, device=device) % GROUPS
    plain_hist = torch.rand(GROUPS, HISTORY, device=device) * 5
    fill = (torch.rand(GROUPS * HISTORY, device=device) * 5,
            torch.arange(GROUPS, device=device).repeat_interleave(HISTORY))
    cap = HISTORY + 4096 * rows  # room for every call of a case

    def history():
        h = ek.EntropyHistory(GROUPS, cap, device=device, backend="triton")
        h.append(*fill)
        return h

    step_hist, prep_hist = history(), history()
    step_kw = dict(k=K, temperature=TEMPERATURE, entropy_top_k=TOP_K, q=Q, theta=THETA, initial_threshold=INITIAL)
    prepared = PreparedStep(prep_hist, rows=rows, vocab=x.shape[1], seed=1, offset=0, group=group,
                            dtype=x.dtype, backend="triton", **step_kw)
    return {
        "entropy": lambda: ek.entropy(x, backend="triton"),
        "entropy_top20": lambda: ek.entropy(x, top_k=TOP_K, backend="triton"),
        "topk_logprobs": lambda: ek.topk_logprobs(x, K, backend="triton"),
        "sample": lambda: ek.sample(x, temperature=TEMPERATURE, seed=1, offset=0, backend="triton"),
        "eager_step": lambda: ek.eager_step(x, step_hist, group, seed=1, offset=0, backend="triton", **step_kw),
        "prepared": lambda: prepared(x),
        "torch_step": lambda: bm.plain_torch_step(x, plain_hist, group, k=K, temperature=TEMPERATURE,
                                                  entropy_top_k=TOP_K, q=Q, theta=THETA),
        "torch_best": lambda: torch_best(x, plain_hist, group),
    }, (step_hist, prep_hist, fill)


def _call_seconds(fn, device, calls=30, warmup=3):
    for _ in range(warmup):
        fn()
    bm.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    bm.synchronize(device)
    return (time.perf_counter() - t0) / calls


def _graph_seconds(fn, calls=10, replays=5):
    """Per call, replaying a graph of `calls` calls (None if the call cannot be captured)."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / (replays * calls), ""
    except Exception as exc:  # report the case, go on with the grid
        torch.cuda.synchronize()
        return None, f"graph: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"


def _case(dtype, rows, vocab, device, env, copy_gbps, dry):
    x = bm.bench_logits(rows, vocab, dtype, device)
    ops, (step_hist, prep_hist, fill) = _ops(x, device)
    out = []
    for name, fn in ops.items():
        for h in (step_hist, prep_hist):  # keep the histories short: every op starts alike
            h.reset()
            h.append(*fill)
        row = dict(device=env["device"], torch=env["torch"], triton=env["triton"], date=env["date"],
                   dtype=str(dtype).replace("torch.", ""), rows=rows, vocab=vocab, op=name, note="")
        call = _call_seconds(fn, device, calls=1, warmup=1) if dry else _call_seconds(fn, device)
        row["call_us"] = round(call * 1e6, 1)
        if not dry:
            kern = bm.kernel_seconds(fn, runs=10)
            graph, note = _graph_seconds(fn)
            row.update(kernel_us=round(kern * 1e6, 1), graph_us="" if graph is None else round(graph * 1e6, 1),
                       note=note)
            if kern == kern and kern > 0:  # not NaN
                gbps = x.numel() * x.element_size() / kern / 1e9
                row.update(gbps=round(gbps, 1), pct_copy=round(100 * gbps / copy_gbps, 1))
        row["copy_gbps"] = round(copy_gbps, 1)
        out.append(row)
        print(f"{row['dtype']:>9} B={rows:<4} V={vocab:<7} {name:<14} kernel {row.get('kernel_us', '-'):>9} us  "
              f"call {row['call_us']:>9} us  graph {row.get('graph_us', '-'):>9} us  "
              f"{row.get('pct_copy', '-')}% of copy {row.get('note', '')}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join("benchmarks", "results", "gpu_step_grid.csv"))
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--rows", type=int, nargs="+", default=[64, 1, 8, 256])
    ap.add_argument("--vocab", type=int, nargs="+", default=[152064, 32000])
    ap.add_argument("--budget-s", type=float, default=210.0, help="start no case after this many seconds")
    ap.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny sizes: the script runs")
    args = ap.parse_args(argv)
    if args.dry_run:
        if os.environ.get("TRITON_INTERPRET") != "1":
            sys.exit("gpu_step_grid.py --dry-run: set TRITON_INTERPRET=1 (the Triton interpreter on CPU)")
        device, args.rows, args.vocab = "cpu", [2], [130]
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_step_grid.py: needs CUDA (or --dry-run with TRITON_INTERPRET=1)")
        device = "cuda"
    env = bm.environment()
    copy_gbps = bm.copy_bandwidth(device, nbytes=(1 << 20) if args.dry_run else (1 << 30)) / 1e9
    print(f"# {env['device']}, torch {env['torch']}, triton {env['triton']}, {env['date']}; "
          f"copy bandwidth {copy_gbps:.0f} GB/s (read + write)", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    rows_out, start = [], time.perf_counter()
    for dtype in args.dtypes:
        for vocab in args.vocab:
            for rows in args.rows:
                if time.perf_counter() - start > args.budget_s:
                    print(f"# budget of {args.budget_s:.0f} s spent: stopping before {dtype} B={rows} V={vocab}")
                    return 0
                rows_out += _case(getattr(torch, dtype), rows, vocab, device, env, copy_gbps, args.dry_run)
                bm.write_csv(rows_out, args.out, FIELDS)
    print(f"# rows in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
