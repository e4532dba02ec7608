"""How the decode step's cost grows with the sequence on the default model's DynamicCache
(the cache eager_kernels.generate uses), and what one reorder of the whole cache costs.

    python benchmarks/bench_cache_growth.py [--rows 8] [--steps 1024] [--threads N]

Runs `rows` sequences (random 16-token prompts) through `steps` greedy decode steps, one
forward each, and prints the median step time per quarter of the run, then the time of
`cache.reorder_cache` (one index_select per layer, as generate() does when rows branch,
finish or are pruned) at the final length.
"""
import argparse
import statistics
import time

import torch

from eager_kernels.bench import common as bm
from eager_kernels.engines.models import load_default_model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--steps", type=int, default=1024)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import DynamicCache

    model, _ = load_default_model()
    ids = torch.randint(100, 1000, (args.rows, 16), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache(config=model.config)
    env = bm.environment()
    print(f"# {env['device']}, {env['threads']} threads, torch {env['torch']}, {env['date']}; "
          f"SmolLM2-135M fp32, {args.rows} rows, {args.steps} steps")
    quarter = max(1, args.steps // 4)
    times = []
    with torch.inference_mode():
        nxt = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
        for t in range(args.steps):
            t0 = time.perf_counter()
            nxt = model(input_ids=nxt, past_key_values=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
            times.append(time.perf_counter() - t0)
            if (t + 1) % quarter == 0:
                print(f"steps {t + 1 - quarter:>5}-{t:<5} median {statistics.median(times[-quarter:]) * 1e3:7.1f} ms/step")
        length = cache.get_seq_length()
        order = torch.arange(args.rows).flip(0)
        t_re = bm.time_fn(lambda: cache.reorder_cache(order), min_runs=5, min_seconds=0.2, warmup=1)
    print(f"reorder_cache of all layers at length {length}: {t_re * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
