"""The evaluation in process against Ray with 1 and 2 single-thread workers: wall time,
tokens/s, and where the time goes (Ray start, actor start + model load, decode).

    python benchmarks/ray_eval_timing.py --prompts 20 --methods greedy,eager_init

Each configuration writes into a fresh folder (no resume); the records of the three runs
are compared (they must be equal but for their batch entries). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def _records(res):
    recs = [json.loads(x) for x in open(res["files"]["jsonl"])]
    return sorted(({k: v for k, v in r.items() if k != "batches"} for r in recs), key=lambda r: r["key"])


def _close(a, b) -> bool:
    """Equal records, floats within 1e-4 (a prompt's logits in a padded batch may differ
    from its logits in another batch in the last bits)."""
    if isinstance(b, float):
        return isinstance(a, (int, float)) and abs(a - b) <= 1e-4 + 1e-5 * abs(b)
    if isinstance(b, dict):
        return isinstance(a, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in b)
    if isinstance(b, list):
        return isinstance(a, list) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def _differ(res, base) -> int:
    """How many records differ from the in-process run's (beyond float rounding)."""
    a, b = _records(res), _records(base)
    if [r["key"] for r in a] != [r["key"] for r in b]:
        return len(b)
    return sum(not _close(x, y) for x, y in zip(a, b))


def _decode_s(res):
    seen, total = set(), 0.0
    for line in open(res["files"]["jsonl"]):
        for b in json.loads(line)["batches"]:
            if b["id"] not in seen:
                seen.add(b["id"])
                total += b["wall_s"]
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--methods", default="greedy,eager_init")
    ap.add_argument("--max-paths", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args(argv)

    import torch

    from eager_kernels.engines.select import default_model_factory
    from eager_kernels.sampler.ray import init_ray
    from eager_kernels.evaluation import EvalConfig, run_eval
    from eager_kernels.engines.models import load_default_model

    torch.set_num_threads(1)
    model, tok = load_default_model()
    cfg = EvalConfig(prompts=args.prompts, max_paths=args.max_paths, max_new_tokens=args.max_new_tokens,
                     batch_size=args.batch_size, model_name="SmolLM2-135M-Instruct")
    methods = args.methods.split(",")
    quiet = dict(methods=methods, plot=False, progress=False, log=lambda *a: None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        base = run_eval(model, tok, cfg, Path(tmp) / "local", **quiet)
        wall = time.perf_counter() - t0
        tokens = sum(r["tokens"] for r in base["rows"])
        rows.append(("in process, 1 thread", wall, tokens, 0.0, 0.0, _decode_s(base), "-"))
        t0 = time.perf_counter()
        init_ray(None, num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
        ray_start = time.perf_counter() - t0
        import ray

        ray.data.DataContext.get_current().enable_progress_bars = False
        for w in [int(x) for x in args.workers.split(",")]:
            t0 = time.perf_counter()
            res = run_eval(model, tok, cfg, Path(tmp) / f"ray{w}",
                           ray=dict(model_factory=default_model_factory(), workers=w, num_cpus=1, threads=1), **quiet)
            wall = time.perf_counter() - t0
            bad = _differ(res, base)
            load = max(t["load_s"] for t in res["ray_timings"])
            first = ", ".join(f"{t['first_result_s']:.1f}" for t in res["ray_timings"])
            rows.append((f"Ray, {w} worker{'s' if w > 1 else ''} x 1 thread"
                         + (f" ({bad} records differ)" if bad else ""),
                         wall, sum(r["tokens"] for r in res["rows"]), ray_start if w == 1 else 0.0, load,
                         _decode_s(res), first))
        t0 = time.perf_counter()
        again = run_eval(model, tok, cfg, Path(tmp) / "local2", **quiet)
        rows.append(("in process again (load drift)", time.perf_counter() - t0,
                     sum(r["tokens"] for r in again["rows"]), 0.0, 0.0, _decode_s(again), "-"))
    print(f"{args.prompts} prompts, methods {args.methods}, M = {args.max_paths}, {args.max_new_tokens} new tokens, "
          f"batch size {args.batch_size}\n")
    print("| run | wall s | tokens | tokens/s | Ray start s | model load per actor s | "
          "first result per pipeline s | generate s (sum over calls) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, wall, tokens, rs, load, dec, first in rows:
        print(f"| {name} | {wall:.1f} | {tokens} | {tokens / wall:.1f} | {rs:.1f} | {load:.1f} | {first} | {dec:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
