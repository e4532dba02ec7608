"""The EAGer loop end to end on a CUDA device: backends agree, the step does not sync, speed.

    python benchmarks/gpu_decode_check.py [--out results.csv] [--max-new-tokens 64]

No weights are downloaded: the model is a randomly initialised Llama with the default
model's shapes (SmolLM2-135M: 30 layers, hidden 576, vocabulary 49152), its output head
scaled so next-token entropies spread from near 0 to several nats (random init alone gives
near-uniform distributions, where every step would branch). For each dtype (bfloat16,
float32) and policy (seed: greedy, full entropy; paper: M = 8, T = 0.6, top-20 entropy,
theta 0.3 nats)
it runs generate() on 8 prompts with the reference ops (backend "torch") and the fused
Triton kernels (backend "triton") and reports:

- agreement: paths per prompt, token ids and branch steps equal between the backends
  (the same counter-based random stream on both), max |log-prob| difference;
- host synchronisations per decode step, counted by torch.cuda.set_sync_debug_mode("warn")
  over the whole loop (the loop's own bookkeeping included, not only the ops);
- decode time and generated tokens/s, median of --repeats runs after one warm-up.

Figures only; nothing is asserted except that the run completes. Rows go to --out (CSV)
with the device, versions and date.
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import time
import warnings

import torch


def build_model(dtype, vocab=49152, head_scale=40.0, device="cuda", layers=30):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
        model.lm_head.weight[2].mul_(0.0)  # EOS rare: paths run their full length
    return model.to(device=device, dtype=dtype)


def prompts(n=8, seed=1, vocab=49152):
    g = torch.Generator().manual_seed(seed)
    return [[1] + torch.randint(3, vocab, (int(l),), generator=g).tolist()
            for l in torch.randint(12, 40, (n,), generator=g)]


def config(policy, backend, max_new_tokens):
    from eager_kernels import EagerConfig

    if policy == "seed":
        return EagerConfig(policy="seed", max_new_tokens=max_new_tokens, backend=backend, eos_token_id=2)
    # a low floor: the random model's top-20 entropies stay below the paper's 2.2 nats
    return EagerConfig(policy="paper", max_new_tokens=max_new_tokens, max_paths_per_prompt=8, backend=backend,
                       eos_token_id=2, seed=0, theta=0.3, initial_threshold=0.3)


def count_syncs(fn):
    """Run fn under sync debug mode "warn"; return (result, number of sync warnings)."""
    if not torch.cuda.is_available():  # a dry run of this script on a CPU machine
        return fn(), 0
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    n = sum(1 for w in caught if "synchroniz" in str(w.message).lower())
    return out, n


def compare(a, b):
    same_tree, max_lp = True, 0.0
    for ra, rb in zip(a.results, b.results):
        if len(ra.paths) != len(rb.paths):
            same_tree = False
            continue
        for pa, pb in zip(ra.paths, rb.paths):
            if pa.token_ids != pb.token_ids or pa.branch_steps != pb.branch_steps:
                same_tree = False
            else:
                max_lp = max(max_lp, abs(pa.logprob - pb.logprob))
    return same_tree, max_lp


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="gpu_decode.csv")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--policies", nargs="+", choices=["seed", "paper"], default=["seed", "paper"])
    ap.add_argument("--dry-run", action="store_true",
                    help="check this script on a CPU machine: 2 layers, vocabulary 1024, backends torch and cpu")
    args = ap.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    vocab, layers, fused = (1024, 2, "cpu") if args.dry_run else (49152, 30, "triton")
    import triton
    import transformers

    from eager_kernels import generate

    dev = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    ids = prompts(vocab=vocab)
    for dtype in (torch.bfloat16, torch.float32):
        model = build_model(dtype, vocab=vocab, device=device, layers=layers)
        for policy in args.policies:
            outs = {}
            for backend in ("torch", fused):
                cfg = config(policy, backend, args.max_new_tokens)
                generate(model, ids, cfg)  # warm-up (Triton compiles here)
                out, syncs = count_syncs(lambda: generate(model, ids, cfg))
                times = []
                for _ in range(args.repeats):
                    sync()
                    t0 = time.perf_counter()
                    generate(model, ids, cfg)
                    sync()
                    times.append(time.perf_counter() - t0)
                outs[backend] = out
                m = out.metrics
                med = statistics.median(times)
                row = dict(date=date, device=dev, torch=torch.__version__, triton=triton.__version__,
                           transformers=transformers.__version__, dtype=str(dtype).replace("torch.", ""),
                           policy=policy, backend=backend, prompts=len(ids), steps=m.steps,
                           paths=sum(m.paths_per_prompt), tokens=m.tokens_generated, branch_events=m.branch_events,
                           syncs=syncs, syncs_per_step=round(syncs / max(1, m.steps), 2),
                           seconds_median=round(med, 4), tokens_per_s=round(m.tokens_generated / med, 1),
                           ms_per_step=round(1e3 * med / max(1, m.steps), 3))
                rows.append(row)
            same, lp = compare(outs["torch"], outs[fused])
            rows[-1]["same_tree_as_torch"] = same
            rows[-1]["max_abs_logprob_diff"] = f"{lp:.2e}"
            for r in rows[-2:]:
                print(", ".join(f"{k}={v}" for k, v in r.items() if k not in ("date", "device", "torch", "triton",
                                                                                  "transformers")), flush=True)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    from eager_kernels.bench.common import write_csv

    write_csv(rows, args.out, list(rows[0].keys()) + ["same_tree_as_torch", "max_abs_logprob_diff"])
    print(f"{dev}, torch {torch.__version__}, triton {triton.__version__}, {date}; rows in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
