"""Sweep the Triton launch parameters of eager_step on this GPU: block size, warps per
program and the number of programs aimed for (eager_kernels.kernels.triton.launch_config).

    python benchmarks/tune_triton.py [--rows 1 64] [--vocab 152064] [--dtype bfloat16] [--out CSV]

The defaults (block 4096, 8 warps, 264 programs) were chosen without a GPU; ptxas reports
244 registers per thread for the eager_step partial kernel at block 4096 (one 8-warp
program per SM), so smaller blocks or more warps may stream faster. Prints the median time
of each configuration (sampling step: k=4, top-20 entropy, T=0.6) and the best per B, and
writes a CSV. Under TRITON_INTERPRET=1 (no GPU) it runs on CPU with the interpreter, which
only checks that the script works (tests/test_bench.py); the times then mean nothing.
"""
import argparse
import itertools
import os
import sys

import torch

import eager_kernels as ek
from eager_kernels.bench import common as bm
from eager_kernels.kernels import triton as tk
from eager_kernels.bench.common import write_csv

BLOCKS = (1024, 2048, 4096)
WARPS = (4, 8, 16)
PROGRAMS = (264, 528)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 64])
    p.add_argument("--vocab", type=int, default=152064)
    p.add_argument("--dtype", choices=["bfloat16", "float32", "float16"], default="bfloat16")
    p.add_argument("--blocks", type=int, nargs="+", default=list(BLOCKS))
    p.add_argument("--warps", type=int, nargs="+", default=list(WARPS))
    p.add_argument("--programs", type=int, nargs="+", default=list(PROGRAMS))
    p.add_argument("--min-seconds", type=float, default=0.1)
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "tune_triton.csv"))
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("tune_triton.py: needs CUDA (or TRITON_INTERPRET=1 to check the script itself)")
    env = bm.environment()
    dtype = getattr(torch, args.dtype)
    saved = dict(tk.launch_config)
    print(f"# {env['device']}, torch {env['torch']}, triton {env['triton']}, {env['date']}; eager_step "
          f"{args.dtype} V={args.vocab}, T=0.6, k=4, top-20 entropy; median call us, kernel (GPU) us per call")
    print(f"{'B':>4} {'block':>6} {'warps':>6} {'programs':>9} {'call us':>10} {'kernel us':>10}")
    rows_out = []
    try:
        for rows in args.rows:
            x = bm.realistic_logits(rows, args.vocab, dtype, device, seed=rows)
            group = torch.arange(rows, device=device) % 8
            fill = (torch.rand(8 * 256, device=device) * 5, torch.arange(8, device=device).repeat_interleave(256))
            hist = ek.EntropyHistory(8, 256 + 64 * rows, device=device, backend="triton")
            best = None
            for block, warps, programs in itertools.product(args.blocks, args.warps, args.programs):
                tk.launch_config.update(block=block, num_warps=warps, target_programs=programs)
                steps = [0]

                def step():
                    steps[0] += 1
                    if steps[0] % 64 == 1:
                        hist.reset()
                        hist.append(*fill)
                    return ek.eager_step(x, hist, group, k=4, temperature=0.6, entropy_top_k=20, q=99.0, theta=2.0,
                                         initial_threshold=5.0, seed=1, offset=steps[0], backend="triton")

                call = bm.time_stats(step, device=device, min_runs=5 if device == "cpu" else 20,
                                     min_seconds=args.min_seconds, max_seconds=2.0)[0]
                # on CUDA the kernels' GPU time decides (the call time is mostly the host's launch work)
                t = bm.kernel_seconds(step) if device == "cuda" else call
                rows_out.append(dict(env, B=rows, V=args.vocab, dtype=args.dtype, block=block, num_warps=warps,
                                     target_programs=programs, median_us=round(call * 1e6, 2),
                                     kernel_us=round(t * 1e6, 2)))
                print(f"{rows:>4} {block:>6} {warps:>6} {programs:>9} {call * 1e6:>10.1f} {t * 1e6:>10.1f}", flush=True)
                if best is None or t < best[0]:
                    best = (t, block, warps, programs)
            print(f"# best at B={rows}: block {best[1]}, {best[2]} warps, {best[3]} programs: {best[0] * 1e6:.1f} us")
    finally:
        tk.launch_config.clear()
        tk.launch_config.update(saved)
        if rows_out:
            write_csv(rows_out, args.out)
            print(f"# wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
