"""Decode benchmark: eager_kernels.generate against (a) the practitioner EAGer loop as it is
usually written and (b) transformers' own generate(), on SmolLM2-135M-Instruct (CPU here).

(a) The practitioner algorithm, seed policy, greedy: one path at a time; every step re-runs
    the model on the whole sequence (no KV cache); .item() per token; the threshold is
    max(theta, numpy.percentile(history, q)) of all entropies of the prompt's paths at
    earlier steps (initial_threshold while empty), as ../shared/EAGER.md fixes it; a branch
    opens min(num_branches, 10 // (1 + branches so far)) children with the top-n tokens;
    after each step the 32 best cumulative log-probability paths survive (finished ones
    included); the answer is the best log-probability per token. Both must choose the same
    answer.
(b) model.generate(do_sample=True, num_return_sequences=N, max_new_tokens=T) with N = the
    number of paths eager_kernels.generate returned: the same number of sequences and tokens.

    python benchmarks/bench_decode.py [--max-new-tokens 32] [--repeats 3] [--backend auto]
                                      [--threads N] [--skip-practitioner]

Prints a table (wall time and process CPU time; --threads 1 gives steady figures on a machine
shared with other jobs, where two OpenMP threads spin-wait on each other) and appends to
benchmarks/results/decode.csv (one row per method, with the date, CPU, threads, torch and
transformers versions and the load average).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import eager_kernels as ek  # noqa: E402
from eager_kernels.models import load_default_model  # noqa: E402

PROMPT = "What is 17 + 25?"
RESULTS = Path(__file__).resolve().parent / "results" / "decode.csv"


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


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="runs of the fast methods (median); the slow loop runs once")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--skip-practitioner", action="store_true")
    ap.add_argument("--csv", default=str(RESULTS))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for every method (default: torch's); 1 is steadier on a shared machine")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok = load_default_model()
    enc = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=True)
    prompt_ids = list(enc["input_ids"] if hasattr(enc, "keys") else enc)
    T = args.max_new_tokens
    cfg = ek.EagerConfig.seed_policy(max_new_tokens=T, backend=args.backend)
    rows = []

    with torch.inference_mode():
        model(input_ids=torch.tensor([prompt_ids]))  # warm-up (oneDNN initialisation)
    ek.generate(model, [prompt_ids], cfg.replace(max_new_tokens=2))

    med, best, cpu, out = _timed(lambda: ek.generate(model, [prompt_ids], cfg, tokenizer=tok), args.repeats)
    ans = out.results[0].answer
    n_paths = len(out.results[0].paths)
    rows.append(dict(method=f"eager_kernels.generate (seed, backend={args.backend})", seconds=med, best_s=best, cpu_s=cpu,
                     sequences=n_paths, tokens=out.metrics.tokens_generated, forwards=out.metrics.forward_passes,
                     answer=ans.text))

    if not args.skip_practitioner:
        t0, c0 = time.perf_counter(), time.process_time()
        pbest, ppaths, pfwd, ptok = practitioner_eager(model, prompt_ids, max_new_tokens=T, eos_token_id=tok.eos_token_id)
        pt, pc = time.perf_counter() - t0, time.process_time() - c0
        ptext = tok.decode(pbest["tokens"], skip_special_tokens=True)
        rows.append(dict(method="practitioner loop (no cache, one path at a time)", seconds=pt, best_s=pt, cpu_s=pc,
                         sequences=len(ppaths), tokens=ptok, forwards=pfwd,
                         answer=ptext))

    def hf():
        torch.manual_seed(0)
        with torch.inference_mode():
            return model.generate(torch.tensor([prompt_ids]), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                  num_return_sequences=n_paths, max_new_tokens=T, min_new_tokens=1,
                                  pad_token_id=tok.pad_token_id)

    hmed, hbest, hcpu, hout = _timed(hf, args.repeats)
    gen = hout[:, len(prompt_ids):]
    hf_tokens = int((gen != tok.pad_token_id).sum()) + int((gen == tok.eos_token_id).any(1).sum())
    rows.append(dict(method=f"transformers generate (sampling, {n_paths} sequences)", seconds=hmed, best_s=hbest, cpu_s=hcpu,
                     sequences=n_paths, tokens=hf_tokens, forwards=T, answer="-"))

    # Table
    print(f"\nprompt {PROMPT!r} (chat template), {T} new tokens, SmolLM2-135M-Instruct fp32, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {_cpu_name()}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print(f"{'method':<55} {'wall s':>8} {'best s':>8} {'CPU s':>8} {'seqs':>5} {'tokens':>7} {'tok/s':>6} {'fwd':>5}  answer")
    for r in rows:
        print(f"{r['method']:<55} {r['seconds']:>8.2f} {r['best_s']:>8.2f} {r['cpu_s']:>8.2f} {r['sequences']:>5} "
              f"{r['tokens']:>7} {r['tokens'] / r['seconds']:>6.0f} {r['forwards']:>5}  {r['answer']!r}")
    ours, ours_cpu = rows[0]["seconds"], rows[0]["cpu_s"]
    ok = True
    if not args.skip_practitioner:
        same = rows[1]["answer"] == rows[0]["answer"]
        print(f"\nspeedup over the practitioner loop: {rows[1]['seconds'] / ours:.1f}x wall, "
              f"{rows[1]['cpu_s'] / ours_cpu:.1f}x CPU time (goal >= 15x); same answer: {same}")
        ok &= same
    print(f"eager_kernels.generate / transformers generate: {ours / hmed:.2f}x the wall time, "
          f"{ours_cpu / hcpu:.2f}x the CPU time (goal <= 1.2x)")

    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    new = not Path(args.csv).exists()
    with open(args.csv, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["date", "cpu", "threads", "torch", "transformers", "load_avg", "backend", "max_new_tokens",
                        "method", "seconds_median", "seconds_best", "cpu_seconds_median", "sequences", "tokens", "forwards", "answer"])
        import transformers

        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        for r in rows:
            w.writerow([stamp, _cpu_name(), torch.get_num_threads(), torch.__version__, transformers.__version__,
                        f"{os.getloadavg()[0]:.2f}", args.backend, T, r["method"], f"{r['seconds']:.3f}",
                        f"{r['best_s']:.3f}", f"{r['cpu_s']:.3f}", r["sequences"], r["tokens"], r["forwards"], r["answer"]])
    print(f"wrote {args.csv}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
