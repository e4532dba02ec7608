"""Why LlamaCppEngine chooses its KV layout and flash-attention setting per call: the
figures behind docs/engines.md ("KV layout", "Flash attention").

    python benchmarks/bench_llamacpp_layout.py [--threads 2] [--weight-type bf16]
        [--prompts 1 4 12] [--steps 40] [--parts steps seed fa]

- steps: G prompts of 400 random tokens, 8 rows each (one prefill, then forks), then
  --steps decode steps; median ms per row-token over the last 10 steps, unified cache
  against a stream per row (flash attention as the engine sets it for each layout).
- seed: the decode benchmark's workload (`eager-kernels bench --decode` row (e): "What is
  17 + 25?" with the chat template, seed policy, 32 new tokens, 32 paths), best wall s of 3,
  unified against streams, and unified with flash attention forced on.
- fa: 8 prompts of ~600 random tokens (a GSM8K few-shot prompt's length), 8 rows each,
  streams: prefill s and median ms per 64-row step with flash attention on / llama.cpp's
  auto / off.

Needs llama-cpp-python and the default model (models.default_gguf_path).
"""
import argparse
import statistics
import time

import numpy as np
import torch

import eager_kernels as ek
from eager_kernels.bench.decode import PROMPT
from eager_kernels.engines.llamacpp import LlamaCppEngine
from eager_kernels.engines.models import default_gguf_path

FA = {"on": 1, "auto": -1, "off": 0}


def engine(args, unified, flash_attn=None):
    eng = LlamaCppEngine(default_gguf_path(args.weight_type), n_threads=args.threads, kv_unified=unified)
    eng._flash_attn = None if flash_attn is None else FA[flash_attn]
    return eng


def fork_and_step(eng, prompts, steps, rows_per_prompt=8):
    """(prefill s, median ms per step of the last 10 steps) for prompts x rows_per_prompt rows."""
    G = len(prompts)
    t0 = time.perf_counter()
    eng.prefill(prompts, max_rows=G * rows_per_prompt, max_new_tokens=steps + 2)
    prefill_s = time.perf_counter() - t0
    eng.reorder(torch.arange(G).repeat_interleave(rows_per_prompt))
    tok = torch.full((G * rows_per_prompt,), 1000, dtype=torch.int64)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        eng.decode(tok)
        times.append(time.perf_counter() - t0)
    eng.release()
    return prefill_s, 1e3 * statistics.median(times[-10:])


def part_steps(args, rng):
    print(f"\n[steps] 400-token prompts x 8 rows, {args.steps} steps, ms per row-token (last 10 steps)")
    print(f"{'prompts':>8} {'unified':>9} {'streams':>9}")
    for G in args.prompts:
        prompts = [list(rng.integers(100, 40000, 400)) for _ in range(G)]
        cells = {}
        for unified in (True, False):
            _, ms = fork_and_step(engine(args, unified), prompts, args.steps)
            cells[unified] = ms / (8 * G)
        print(f"{G:>8} {cells[True]:>9.2f} {cells[False]:>9.2f}", flush=True)


def part_seed(args):
    print("\n[seed] decode benchmark workload (seed policy, 32 new tokens), best wall s of 3")
    for label, unified, fa in (("unified, flash attention auto", True, None), ("streams, flash attention on", False, None),
                               ("unified, flash attention on", True, "on")):
        eng = engine(args, unified, fa)
        ids = eng.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                                tokenize=True)
        cfg = ek.EagerConfig.seed_policy(max_new_tokens=32)
        ek.generate(eng, [ids], cfg.replace(max_new_tokens=2))  # warm-up, context created
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            out = ek.generate(eng, [ids], cfg)
            times.append(time.perf_counter() - t0)
        print(f"  {label:<32} {min(times):6.2f} s  ({out.metrics.tokens_generated} tokens)", flush=True)


def part_fa(args, rng):
    print("\n[fa] 8 prompts of ~600 tokens x 8 rows, streams: prefill s, ms per 64-row step")
    prompts = [list(rng.integers(100, 40000, n)) for n in (590, 610, 600, 580, 620, 605, 595, 615)]
    for fa in ("on", "auto", "off"):
        prefill_s, ms = fork_and_step(engine(args, False, fa), prompts, 12)
        print(f"  flash attention {fa:<5} prefill {prefill_s:6.2f} s   step {ms:7.1f} ms", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weight-type", default=None, help="GGUF weight type (default: models.GGUF_WEIGHT_TYPE)")
    ap.add_argument("--prompts", type=int, nargs="+", default=[1, 4, 12])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--parts", nargs="+", default=["steps", "seed", "fa"], choices=["steps", "seed", "fa"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"bench_llamacpp_layout: {args.threads} threads, weights {args.weight_type or 'default'}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if "steps" in args.parts:
        part_steps(args, rng)
    if "seed" in args.parts:
        part_seed(args)
    if "fa" in args.parts:
        part_fa(args, rng)


if __name__ == "__main__":
    main()
