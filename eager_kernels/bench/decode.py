"""Decode benchmark: EAGer on SmolLM2-135M-Instruct, per generated token, four ways.

    eager-kernels bench --decode [--max-new-tokens 32] [--repeats 3] [--threads N]
                                 [--skip-practitioner] [--csv benchmarks/results/decode.csv]

(a) The practitioner loop, seed policy, greedy, as usually written: one path at a time;
    every step re-runs the model on the whole sequence (no KV cache); .item() per token;
    the threshold is max(theta, numpy.percentile(history, q)) of all entropies of the
    prompt's paths at earlier steps (initial_threshold while empty), as ../shared/EAGER.md
    fixes it; a branch opens min(num_branches, 10 // (1 + branches so far)) children with
    the top-n tokens; after each step the 32 best cumulative log-probability paths survive
    (finished ones included); the answer is the best log-probability per token.
(b) eager_kernels.generate, seed policy, backend "torch" (the ops of eager_kernels.reference).
(c) eager_kernels.generate, seed policy, the fused backend ("auto": the C++ kernels).
(d) model.generate(do_sample=True, num_return_sequences=N, max_new_tokens=T) with N = the
    number of paths eager_kernels.generate returned: as many sequences and new tokens.
(a), (b) and (c) must choose the same answer (the run fails otherwise).

Prints a table (wall time, process CPU time, tokens, ms per generated token; --threads 1
gives steady figures on a machine shared with other jobs) and appends one row per method to
the CSV, with the date, CPU, threads, torch and transformers versions and the load average.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import benchmarking as bm

PROMPT = "What is 17 + 25?"
RESULTS = Path("benchmarks") / "results" / "decode.csv"
FIELDS = ["date", "cpu", "threads", "torch", "transformers", "load_avg", "max_new_tokens", "method", "seconds_median",
          "seconds_best", "cpu_seconds_median", "sequences", "tokens", "ms_per_token", "forwards", "answer"]


# ---------------------------------------------------------------------------------------
# (a) The practitioner loop, as usually written
# ---------------------------------------------------------------------------------------


def practitioner_eager(model, prompt_ids, *, max_new_tokens=32, num_branches=3, prune_to=32, q=80.0,
                       theta=0.0, initial_threshold=5.0, eos_token_id=2):
    paths = [{"tokens": [], "logprob": 0.0, "branches": 0, "finished": False}]
    history = []
    forwards = tokens = 0
    for _ in range(max_new_tokens):
        candidates, step_entropies = [], []
        for path in paths:
            if path["finished"]:
                continue
            ids = torch.tensor([prompt_ids + path["tokens"]])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, -1]
            forwards += 1
            logp = torch.log_softmax(logits.float(), dim=-1)
            probs = logp.exp()
            entropy = -(probs * logp).sum().item()
            threshold = max(theta, float(np.percentile(history, q))) if history else initial_threshold
            step_entropies.append(entropy)
            n = min(num_branches, 10 // (1 + path["branches"])) if entropy > threshold else 1
            if n > 1:
                top = torch.topk(logp, n)
                for j in range(n):
                    tok = top.indices[j].item()
                    candidates.append({"tokens": path["tokens"] + [tok], "logprob": path["logprob"] + top.values[j].item(),
                                       "branches": path["branches"] + 1, "finished": tok == eos_token_id})
            else:
                tok = torch.argmax(logits).item()
                candidates.append({"tokens": path["tokens"] + [tok], "logprob": path["logprob"] + logp[tok].item(),
                                   "branches": path["branches"], "finished": tok == eos_token_id})
        candidates += [p for p in paths if p["finished"]]  # finished paths keep competing
        history.extend(step_entropies)
        candidates.sort(key=lambda p: p["logprob"], reverse=True)
        paths = candidates[:prune_to]
        tokens += sum(1 for p in paths if p["tokens"] and not p.get("seen"))  # new tokens that survived
        for p in paths:
            p["seen"] = True
        if all(p["finished"] for p in paths):
            break
    best = max(paths, key=lambda p: p["logprob"] / len(p["tokens"]))
    return best, paths, forwards, tokens


# ---------------------------------------------------------------------------------------


def _timed(fn, repeats):
    """(median wall s, best wall s, median process CPU s, result). CPU time (all threads)
    is less disturbed than wall time when other jobs share the machine."""
    times, cpu, result = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(times), min(times), statistics.median(cpu), result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="eager-kernels bench --decode", description=__doc__.split("\n")[0])
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="runs of the fast methods (median); the slow loop runs once")
    ap.add_argument("--backend", default="auto", choices=["auto", "cpu"],
                    help="the fused backend of (c) (default auto: the C++ kernels when built)")
    ap.add_argument("--skip-practitioner", action="store_true", help="leave out (a), which takes about a minute")
    ap.add_argument("--csv", default=str(RESULTS))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for every method (default: torch's); 1 is steadier on a shared machine")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers

    import eager_kernels as ek
    from eager_kernels.models import load_default_model

    model, tok = load_default_model()
    enc = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=True)
    prompt_ids = list(enc["input_ids"] if hasattr(enc, "keys") else enc)
    T = args.max_new_tokens
    fused = ek._registry.resolve(args.backend, model.device)
    rows = []

    with torch.inference_mode():
        model(input_ids=torch.tensor([prompt_ids]))  # warm-up (oneDNN initialisation)

    n_paths = None
    for backend, label in (("torch", "(b) eager_kernels.generate, backend torch"),
                           (args.backend, f"(c) eager_kernels.generate, backend {args.backend} ({fused})")):
        cfg = ek.EagerConfig.seed_policy(max_new_tokens=T, backend=backend)
        ek.generate(model, [prompt_ids], cfg.replace(max_new_tokens=2))  # warm-up
        med, best, cpu, out = _timed(lambda: ek.generate(model, [prompt_ids], cfg, tokenizer=tok), args.repeats)
        n_paths = len(out.results[0].paths)
        rows.append(dict(method=label, seconds=med, best_s=best, cpu_s=cpu, sequences=n_paths,
                         tokens=out.metrics.tokens_generated, forwards=out.metrics.forward_passes,
                         answer=out.results[0].answer.text))

    if not args.skip_practitioner:
        t0, c0 = time.perf_counter(), time.process_time()
        pbest, ppaths, pfwd, ptok = practitioner_eager(model, prompt_ids, max_new_tokens=T, eos_token_id=tok.eos_token_id)
        pt, pc = time.perf_counter() - t0, time.process_time() - c0
        rows.insert(0, dict(method="(a) practitioner loop (no KV cache, one path at a time)", seconds=pt, best_s=pt,
                            cpu_s=pc, sequences=len(ppaths), tokens=ptok, forwards=pfwd,
                            answer=tok.decode(pbest["tokens"], skip_special_tokens=True)))

    def hf():
        torch.manual_seed(0)
        with torch.inference_mode():
            return model.generate(torch.tensor([prompt_ids]), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                  num_return_sequences=n_paths, max_new_tokens=T, min_new_tokens=1,
                                  pad_token_id=tok.pad_token_id)

    hmed, hbest, hcpu, hout = _timed(hf, args.repeats)
    gen = hout[:, len(prompt_ids):]
    hf_tokens = int((gen != tok.pad_token_id).sum()) + int((gen == tok.eos_token_id).any(1).sum())
    rows.append(dict(method=f"(d) transformers generate (sampling, {n_paths} sequences)", seconds=hmed, best_s=hbest,
                     cpu_s=hcpu, sequences=n_paths, tokens=hf_tokens, forwards=T, answer="-"))
    for r in rows:
        r["ms_per_token"] = 1e3 * r["seconds"] / max(1, r["tokens"])

    load = os.getloadavg()[0]
    print(f"\nprompt {PROMPT!r} (chat template), {T} new tokens, SmolLM2-135M-Instruct fp32, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, {torch.get_num_threads()} threads, {bm.cpu_name()}, "
          f"load average {load:.2f} at the end")
    print(f"{'method':<60} {'wall s':>7} {'best s':>7} {'CPU s':>7} {'seqs':>5} {'tokens':>6} {'ms/tok':>7} "
          f"{'fwd':>4}  answer")
    for r in rows:
        print(f"{r['method']:<60} {r['seconds']:>7.2f} {r['best_s']:>7.2f} {r['cpu_s']:>7.2f} {r['sequences']:>5} "
              f"{r['tokens']:>6} {r['ms_per_token']:>7.2f} {r['forwards']:>4}  {r['answer']!r}")
    by = {r["method"][:3]: r for r in rows}
    ok = by["(b)"]["answer"] == by["(c)"]["answer"]
    print(f"\nper generated token: (c) is {by['(b)']['ms_per_token'] / by['(c)']['ms_per_token']:.2f}x faster than "
          f"(b) (same answer: {ok}); (c) / (d) = {by['(c)']['ms_per_token'] / by['(d)']['ms_per_token']:.2f}x the "
          "time per token of transformers generate")
    if "(a)" in by:
        same = by["(a)"]["answer"] == by["(c)"]["answer"]
        print(f"(a) / (c): {by['(a)']['seconds'] / by['(c)']['seconds']:.1f}x the wall time, "
              f"{by['(a)']['cpu_s'] / by['(c)']['cpu_s']:.1f}x the CPU time, "
              f"{by['(a)']['ms_per_token'] / by['(c)']['ms_per_token']:.1f}x per token (same answer: {same})")
        ok &= same
    if not ok:
        print("ERROR: the methods chose different answers", file=sys.stderr)

    path = Path(args.csv)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        with open(path, newline="") as f:
            if next(csv.reader(f), None) != FIELDS:
                path = path.with_name(f"{path.stem}_{datetime.datetime.now():%Y%m%d%H%M%S}{path.suffix}")
                print(f"{args.csv} has other columns (an older version); writing {path} instead")
    new = not path.exists()
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        for r in rows:
            w.writerow(dict(date=stamp, cpu=bm.cpu_name(), threads=torch.get_num_threads(), torch=torch.__version__,
                            transformers=transformers.__version__, load_avg=f"{load:.2f}", max_new_tokens=T,
                            method=r["method"], seconds_median=f"{r['seconds']:.3f}", seconds_best=f"{r['best_s']:.3f}",
                            cpu_seconds_median=f"{r['cpu_s']:.3f}", sequences=r["sequences"], tokens=r["tokens"],
                            ms_per_token=f"{r['ms_per_token']:.3f}", forwards=r["forwards"], answer=r["answer"]))
    print(f"wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
