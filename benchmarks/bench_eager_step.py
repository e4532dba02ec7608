"""eager_step against the plain torch step a user would write, on this machine's device.

    python benchmarks/bench_eager_step.py [--quick] [--no-compile] [--out CSV]

For each (B, V, dtype): median time of eager_step (backend "auto": Triton on CUDA, the C++
kernels on CPU), of eager_kernels.benchmarking.plain_torch_step eagerly and under
torch.compile, and of the read floor (one amax pass on CPU; on CUDA the measured copy
bandwidth). Prints a table and writes one CSV row per case with device, versions and date.
Settings: k=4, entropy_top_k=20, temperature 0.6 (and 0 = greedy), q=99, theta=2.0, a
history of 256 values per prompt, 8 prompts; logits from benchmarking.realistic_logits.
"""
import argparse
import csv
import os
import sys

import torch

import eager_kernels as ek
from eager_kernels import benchmarking as bm

GRID_CUDA = dict(rows=[1, 8, 64], vocab=[32000, 128256, 152064], dtypes=[torch.bfloat16])
GRID_CPU = dict(rows=[1, 8, 32], vocab=[32000, 49152, 128256, 152064], dtypes=[torch.float32, torch.bfloat16])
QUICK = dict(rows=[1, 8], vocab=[32000, 152064], dtypes=[torch.bfloat16])
STEP = dict(k=4, entropy_top_k=20, q=99.0, theta=2.0)


def run_case(rows, vocab, dtype, device, temperature, compile_baseline, floor):
    x = bm.realistic_logits(rows, vocab, dtype, device, seed=rows + vocab)
    groups = 8
    group = (torch.arange(rows, device=device) % groups)
    hist_plain = torch.rand(groups, 256, device=device) * 5
    refill = 512  # steps between history resets (no host sync inside the timed step)
    hist = ek.EntropyHistory(groups, 256 + rows * refill, device=device)
    fill_groups = torch.arange(groups, device=device).repeat_interleave(256)
    hist.append(hist_plain.flatten(), fill_groups)
    step_no = [0]

    def fused():
        step_no[0] += 1
        if step_no[0] % refill == 0:
            hist.reset()
            hist.append(hist_plain.flatten(), fill_groups)
        return ek.eager_step(x, hist, group, temperature=temperature, initial_threshold=5.0, seed=1,
                             offset=step_no[0], **STEP)

    def plain():
        return bm.plain_torch_step(x, hist_plain, group, temperature=temperature, **STEP)

    t_fused = bm.time_fn(fused, device=device)
    t_plain = bm.time_fn(plain, device=device)
    t_comp = float("nan")
    if compile_baseline:
        compiled = torch.compile(bm.plain_torch_step, dynamic=False)
        t_comp = bm.time_fn(lambda: compiled(x, hist_plain, group, temperature=temperature, **STEP),
                            device=device, warmup=3)
    nbytes = x.numel() * x.element_size()
    if device == "cpu":
        t_floor = bm.read_floor_seconds(x)
        floor_gbs = nbytes / t_floor / 1e9
    else:
        t_floor = nbytes / floor  # read at the measured copy bandwidth
        floor_gbs = floor / 1e9
    return dict(rows=rows, vocab=vocab, dtype=str(dtype).replace("torch.", ""), temperature=temperature,
                fused_ms=t_fused * 1e3, plain_ms=t_plain * 1e3, compiled_ms=t_comp * 1e3,
                floor_ms=t_floor * 1e3, fused_gbs=nbytes / t_fused / 1e9, floor_gbs=floor_gbs,
                speedup_vs_plain=t_plain / t_fused, speedup_vs_compiled=t_comp / t_fused,
                fused_over_floor=t_fused / t_floor)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the baseline")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    grid = QUICK if args.quick else (GRID_CUDA if device == "cuda" else GRID_CPU)
    env = bm.environment()
    backend = ek._registry.resolve("auto", torch.device(device))
    floor = bm.copy_bandwidth(device) if device == "cuda" else None
    print(f"# eager_step vs plain torch step on {env['device']} ({env['threads']} threads), backend {backend}, "
          f"torch {env['torch']}, triton {env['triton']}, {env['date']}")
    if floor:
        print(f"# measured copy bandwidth {floor / 1e9:.0f} GB/s (read+write)")
    head = f"{'B':>3} {'V':>7} {'dtype':>8} {'T':>4} {'fused ms':>9} {'plain ms':>9} {'compile ms':>10} " \
           f"{'x plain':>8} {'x comp':>7} {'GB/s':>7} {'% floor':>8}"
    print(head)
    rows_out = []
    for dtype in grid["dtypes"]:
        for vocab in grid["vocab"]:
            for rows in grid["rows"]:
                for temperature in (0.6, 0.0):
                    r = run_case(rows, vocab, dtype, device, temperature, not args.no_compile, floor)
                    r.update(env, backend=backend)
                    rows_out.append(r)
                    print(f"{rows:>3} {vocab:>7} {r['dtype']:>8} {temperature:>4} {r['fused_ms']:>9.3f} "
                          f"{r['plain_ms']:>9.3f} {r['compiled_ms']:>10.3f} {r['speedup_vs_plain']:>7.1f}x "
                          f"{r['speedup_vs_compiled']:>6.1f}x {r['fused_gbs']:>7.1f} "
                          f"{100 * r['fused_gbs'] / r['floor_gbs']:>7.0f}%", flush=True)
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"eager_step_{device}.csv")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows_out[0]))
        w.writeheader()
        w.writerows(rows_out)
    print(f"# wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
