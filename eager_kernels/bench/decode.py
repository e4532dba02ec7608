"""Decode benchmark: EAGer on SmolLM2-135M-Instruct, per generated token, on both engines.

    eager-kernels bench --decode [--max-new-tokens 32] [--repeats 3] [--threads N]
                                 [--engine both|transformers|llamacpp|vllm] [--weight-type f16]
                                 [--skip-practitioner] [--csv benchmarks/results/decode.csv]
    eager-kernels bench --decode --step-table [--threads 1]   (one decode step of R rows,
                                 transformers vs llama_decode in each GGUF weight type)

(a) The practitioner loop, seed policy, greedy, as usually written: one path at a time;
    every step re-runs the model on the whole sequence (no KV cache); .item() per token;
    the threshold is max(theta, numpy.percentile(history, q)) of all entropies of the
    prompt's paths at earlier steps (initial_threshold while empty), as docs/sampler.md#threshold
    defines it; a branch opens min(num_branches, 10 // (1 + branches so far)) children with
    the top-n tokens; after each step the 32 best cumulative log-probability paths survive
    (finished ones included); the answer is the best log-probability per token.
(b) eager_kernels.generate, seed policy, backend "torch" (the ops of eager_kernels.kernels.reference).
(c) eager_kernels.generate, seed policy, the fused backend ("auto": the C++ kernels).
(d) model.generate(do_sample=True, num_return_sequences=N, max_new_tokens=T) with N = the
    number of paths eager_kernels.generate returned: as many sequences and new tokens.
(e) eager_kernels.generate on the llama.cpp engine (the default GGUF weight type), seed
    policy, the fused backend: the same prompt ids and settings as (c).
(f) llama.cpp's own batched decode of the same rows: one llama_decode per step of (e) with
    that step's number of rows (no sampling, no path table): the anchor of (e).
(g) the paper policy at M = 8 (T = 0.6, seed 0) on each engine, fused backend (with
    --engine both; with one engine its (g) row runs alone under --engine llamacpp).
(a), (b) and (c) must choose the same answer (the run fails otherwise); (e) runs a
quantised model and may differ.

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

from ..engines.base import chat_token_ids
from ..engines.select import ENGINES
from ..kernels.checks import BACKENDS
from ..kernels.registry import resolve as resolve_backend
from ..sampler.options import add_config_arguments, default
from . import common as bm
from .common import PROMPT

RESULTS = Path("benchmarks") / "results" / "decode.csv"
FIELDS = ["date", "cpu", "threads", "torch", "transformers", "load_avg", "max_new_tokens", "method", "engine",
          "seconds_median", "seconds_best", "cpu_seconds_median", "sequences", "tokens", "ms_per_token", "forwards",
          "forks", "decode_inside_s", "answer"]
# (c)'s backends: the fused ones that run this CPU model (torch is (b)'s; triton needs CUDA)
FUSED_BACKENDS = tuple(b for b in BACKENDS if b not in ("torch", "triton"))
# --engine: both of the CPU engines (transformers, llama.cpp), one of them, or vLLM's rows
BENCH_ENGINES = ("both", *(e for e in ENGINES if e != "auto"))


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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="eager-kernels bench --decode", description=__doc__.split("\n")[0])
    add_config_arguments(ap, ["max_new_tokens"], defaults=dict(max_new_tokens=32))
    ap.add_argument("--repeats", type=int, default=3, help="runs of the fast methods (median); the slow loop runs once")
    ap.add_argument("--backend", default="auto", choices=FUSED_BACKENDS,
                    help="the fused backend of (c) (default auto: the C++ kernels when built)")
    ap.add_argument("--skip-practitioner", action="store_true", help="leave out (a), which takes about a minute")
    ap.add_argument("--csv", default=str(RESULTS))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch and llama.cpp threads for every method (default: torch's); 1 is steadier on a "
                         "shared machine")
    ap.add_argument("--engine", choices=BENCH_ENGINES, default=None,
                    help="which engines' EAGer rows to run (default: both when llama-cpp-python is installed); "
                         "vllm: its own rows against vLLM's parallel sampling and a host loop (bench/vllm.py)")
    ap.add_argument("--host-repeats", type=int, default=1, help="--engine vllm: runs of the host loop (slow)")
    ap.add_argument("--prompts", type=int, default=1,
                    help="--engine vllm: 1 = the bench's prompt; N > 1 = the first N GSM8K test questions, batched")
    paper_t = default("temperature", "paper")
    ap.add_argument("--paper-temperature", type=float, default=paper_t,
                    help=f"--engine vllm: T of the paper-policy rows, (b) and (c) (default {paper_t}, the paper's)")
    ap.add_argument("--seed-rows", action="store_true",
                    help="--engine vllm: the seed-policy row also with --prompts N > 1 (32 rows per prompt)")
    ap.add_argument("--step-rows", type=int, nargs="+", default=None, metavar="N",
                    help="--engine vllm: also time vLLM's own greedy decode step at these row counts (e.g. 1 8 64)")
    ap.add_argument("--raw", default="benchmarks/results/vllm_decode.txt",
                    help="--engine vllm: the text file its table is appended to")
    ap.add_argument("--weight-type", default=None, help="GGUF weight type of the llama.cpp rows (default: "
                    "models.GGUF_WEIGHT_TYPE)")
    ap.add_argument("--paper-m", type=int, default=8, help="M of the paper-policy rows (g) (default 8)")
    ap.add_argument("--step-table", action="store_true",
                    help="only the per-step table: one decode step of 1, 8, 32 rows on each engine / weight type")
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.step_rows and min(args.step_rows) < 1:
        ap.error(f"argument --step-rows: expected row counts >= 1, got {args.step_rows}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.step_table:
        return _print_step_table(args)
    if args.engine == "vllm":
        from .vllm import run

        return run(args)
    from ..engines.select import llama_cpp_installed

    engine_choice = args.engine or ("both" if llama_cpp_installed() else "transformers")
    if engine_choice != "transformers" and not llama_cpp_installed():
        from ..engines.llamacpp import EXTRA_HINT

        print(f"bench --decode --engine {engine_choice}: {EXTRA_HINT}", file=sys.stderr)
        return 2
    return _decode_rows(args, run_tf=engine_choice in ("both", "transformers"),
                        run_llama=engine_choice in ("both", "llamacpp"))


def _decode_rows(args, *, run_tf: bool, run_llama: bool) -> int:
    """The rows of the engines asked for, on the default model, reported (_report)."""
    from eager_kernels.engines.models import load_default_model

    model, tok = load_default_model()
    prompt_ids = chat_token_ids(tok, [{"role": "user", "content": PROMPT}])
    T = args.max_new_tokens
    with torch.inference_mode():
        model(input_ids=torch.tensor([prompt_ids]))  # warm-up (oneDNN initialisation)

    rows = _transformers_rows(args, model, tok, prompt_ids) if run_tf else []
    if run_llama:
        rows += _llama_rows(args, prompt_ids, T)
    rows += _paper_rows(args, model, tok, prompt_ids, run_tf=run_tf, run_llama=run_llama)
    if run_tf and not args.skip_practitioner:
        rows.insert(0, _practitioner_row(model, tok, prompt_ids, T))
    if run_tf:
        n_paths = next(r["sequences"] for r in rows if r["method"].startswith("(c)"))
        rows.append(_hf_row(args, model, tok, prompt_ids, n_paths))
    return _report(args, rows, T)


def _transformers_rows(args, model, tok, prompt_ids) -> list:
    """(b) and (c): eager_kernels.generate, seed policy, on the transformers model."""
    from .. import sampler as ek

    fused = resolve_backend(args.backend, model.device)
    rows = []
    for backend, label in (("torch", "(b) eager_kernels.generate, backend torch"),
                           (args.backend, f"(c) eager_kernels.generate, backend {args.backend} ({fused})")):
        cfg = ek.EagerConfig.seed_policy(max_new_tokens=args.max_new_tokens, backend=backend)
        ek.generate(model, [prompt_ids], cfg.replace(max_new_tokens=2))  # warm-up
        med, best, cpu, out = _timed(lambda: ek.generate(model, [prompt_ids], cfg, tokenizer=tok), args.repeats)
        rows.append(dict(method=label, engine="transformers", seconds=med, best_s=best, cpu_s=cpu,
                         sequences=len(out.results[0].paths), tokens=out.metrics.tokens_generated,
                         forwards=out.metrics.forward_passes, forks=out.metrics.branch_events,
                         answer=out.results[0].answer.text))
    return rows


def _paper_rows(args, model, tok, prompt_ids, *, run_tf: bool, run_llama: bool) -> list:
    """(g): the paper policy at M = --paper-m on each engine (on transformers only when both
    engines run: the row compares them)."""
    from .. import sampler as ek

    cfg = ek.EagerConfig.paper(max_new_tokens=args.max_new_tokens, max_paths_per_prompt=args.paper_m,
                               backend=args.backend)
    rows = []
    if run_tf and run_llama:
        from ..engines import TransformersEngine
        from .engines import eager_rows

        r = eager_rows(TransformersEngine(model, tok), prompt_ids, cfg, args.repeats)
        rows.append(dict(method=f"(g) paper policy M={args.paper_m}, transformers", engine="transformers",
                         cpu_s=float("nan"), **_row(r)))
    if run_llama:
        rows.append(_llama_paper_row(args, prompt_ids, cfg))
    return rows


def _practitioner_row(model, tok, prompt_ids, T) -> dict:
    """(a): the practitioner loop, timed once."""
    t0, c0 = time.perf_counter(), time.process_time()
    pbest, ppaths, pfwd, ptok = practitioner_eager(model, prompt_ids, max_new_tokens=T, eos_token_id=tok.eos_token_id)
    pt, pc = time.perf_counter() - t0, time.process_time() - c0
    return dict(method="(a) practitioner loop (no KV cache, one path at a time)", seconds=pt, best_s=pt, cpu_s=pc,
                sequences=len(ppaths), tokens=ptok, forwards=pfwd,
                answer=tok.decode(pbest["tokens"], skip_special_tokens=True))


def _hf_row(args, model, tok, prompt_ids, n_paths: int) -> dict:
    """(d): transformers' own sampling of n_paths sequences of T new tokens."""
    T = args.max_new_tokens

    def hf():
        torch.manual_seed(0)
        with torch.inference_mode():
            return model.generate(torch.tensor([prompt_ids]), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                  num_return_sequences=n_paths, max_new_tokens=T, min_new_tokens=1,
                                  pad_token_id=tok.pad_token_id)

    hmed, hbest, hcpu, hout = _timed(hf, args.repeats)
    gen = hout[:, len(prompt_ids):]
    hf_tokens = int((gen != tok.pad_token_id).sum()) + int((gen == tok.eos_token_id).any(1).sum())
    return dict(method=f"(d) transformers generate (sampling, {n_paths} sequences)", engine="transformers",
                seconds=hmed, best_s=hbest, cpu_s=hcpu, sequences=n_paths, tokens=hf_tokens, forwards=T, answer="-")


def _report(args, rows, T) -> int:
    import transformers

    rows.sort(key=lambda r: r["method"][:3])  # (a) .. (g), in the order of the docstring
    for r in rows:
        r["ms_per_token"] = 1e3 * r["seconds"] / max(1, r["tokens"])

    load = os.getloadavg()[0]
    print(f"\nprompt {PROMPT!r} (chat template), {T} new tokens, SmolLM2-135M-Instruct fp32, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, {torch.get_num_threads()} threads, {bm.cpu_name()}, "
          f"load average {load:.2f} at the end")
    print(f"{'method':<60} {'wall s':>7} {'best s':>7} {'CPU s':>7} {'seqs':>5} {'tokens':>6} {'ms/tok':>7} "
          f"{'tok/s':>7} {'fwd':>4} {'forks':>5}  answer")
    for r in rows:
        print(f"{r['method']:<60} {r['seconds']:>7.2f} {r['best_s']:>7.2f} {r['cpu_s']:>7.2f} {r['sequences']:>5} "
              f"{r['tokens']:>6} {r['ms_per_token']:>7.2f} {1e3 / r['ms_per_token']:>7.1f} {r['forwards']:>4} "
              f"{r.get('forks', ''):>5}  {_short_answer(r['answer'])!r}")
    by = {r["method"][:3]: r for r in rows}
    by.update({r["method"]: r for r in rows})
    ok = _engine_summary(by, args)
    if "(b)" not in by:
        return _write_csv(args, rows, T, load) or (0 if ok else 1)
    ok &= by["(b)"]["answer"] == by["(c)"]["answer"]
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
    _write_csv(args, rows, T, load)
    return 0 if ok else 1


def _write_csv(args, rows, T, load):
    import transformers

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
                            method=r["method"], engine=r.get("engine", ""), seconds_median=f"{r['seconds']:.3f}",
                            seconds_best=f"{r['best_s']:.3f}", cpu_seconds_median=f"{r['cpu_s']:.3f}",
                            sequences=r["sequences"], tokens=r["tokens"], ms_per_token=f"{r['ms_per_token']:.3f}",
                            forwards=r["forwards"], forks=r.get("forks", ""),
                            decode_inside_s=f"{r['decode_inside_s']:.3f}" if "decode_inside_s" in r else "",
                            answer=r["answer"]))
    print(f"wrote {path}")
    return 0


def _short_answer(text):
    text = text if isinstance(text, str) else str(text)
    return text if len(text) <= 40 else text[:37] + "..."


def _row(r: dict) -> dict:
    keep = ("seconds", "best_s", "tokens", "forks", "sequences", "forwards", "answer")
    out = {k: r[k] for k in keep}
    if r.get("decode_inside_s") == r.get("decode_inside_s"):  # not NaN
        out["decode_inside_s"] = r["decode_inside_s"]
    return out


def _llama_engine(args):
    from ..engines import LlamaCppEngine
    from ..engines.models import GGUF_WEIGHT_TYPE, default_gguf_path

    wt = args.weight_type or GGUF_WEIGHT_TYPE
    return LlamaCppEngine(default_gguf_path(wt), n_threads=args.threads or torch.get_num_threads()), wt


def _llama_rows(args, prompt_ids, T) -> list:
    """(e) EAGer on llama.cpp, seed policy, and (f) llama.cpp's own decode of the same rows."""
    from .. import sampler as ek

    from .engines import eager_rows, llama_anchor

    engine, wt = _llama_engine(args)
    cfg = ek.EagerConfig.seed_policy(max_new_tokens=T, backend=args.backend)
    c0 = time.process_time()
    r = eager_rows(engine, prompt_ids, cfg, args.repeats)
    cpu = (time.process_time() - c0) / (args.repeats + 1)
    e = dict(method=f"(e) eager_kernels.generate on llama.cpp {wt.upper()}, seed policy", engine="llamacpp",
             cpu_s=cpu, **_row(r))
    anchor = llama_anchor(engine, prompt_ids, r["rows_per_step"], args.repeats)
    f = dict(method=f"(f) llama.cpp's own llama_decode of the same rows ({r['steps']} steps)", engine="llamacpp",
             seconds=anchor, best_s=anchor, cpu_s=float("nan"), sequences=r["sequences"], tokens=r["tokens"],
             forwards=r["steps"], forks=0, answer="-", decode_inside_s=anchor)
    engine.close()
    return [e, f]


def _llama_paper_row(args, prompt_ids, cfg) -> dict:
    from .engines import eager_rows

    engine, wt = _llama_engine(args)
    r = eager_rows(engine, prompt_ids, cfg, args.repeats)
    engine.close()
    return dict(method=f"(g) paper policy M={cfg.max_paths_per_prompt}, llama.cpp {wt.upper()}", engine="llamacpp",
                cpu_s=float("nan"), **_row(r))


def _engine_summary(by: dict, args) -> bool:
    """The engine goals: (c)/(e) per token >= 2.5x, paper M=8 transformers/llama.cpp per
    token >= 4x, (e)'s decode time within 1.3x of (f). Printed, not enforced."""
    e = by.get("(e)")
    if e is None:
        return True
    f = by["(f)"]
    inside = e.get("decode_inside_s", float("nan"))
    print(f"\nllama.cpp EAGer (e): {1e3 / e['ms_per_token']:.1f} tokens/s, {e['forks']} forks, "
          f"{e['seconds']:.2f} s per call of which {inside:.2f} s inside llama_decode: "
          f"{100 * (1 - inside / e['seconds']):.0f}% of the time outside llama_decode; "
          f"(e) / (f) = {e['seconds'] / f['seconds']:.2f}x llama.cpp's own decode of the same rows (goal <= 1.3x)")
    if "(c)" in by:
        print(f"per generated token, seed policy: transformers (c) / llama.cpp (e) = "
              f"{by['(c)']['ms_per_token'] / e['ms_per_token']:.2f}x (goal >= 2.5x)")
    gp = [r for k, r in by.items() if k.startswith("(g) paper")]
    if len(gp) == 2:
        tf, ll = gp
        print(f"per generated token, paper policy M={args.paper_m}: transformers / llama.cpp = "
              f"{tf['ms_per_token'] / ll['ms_per_token']:.2f}x (goal >= 4x)")
    return True


def _print_step_table(args) -> int:
    from .engines import STEP_ROWS, step_table

    threads = args.threads or torch.get_num_threads()
    load0 = os.getloadavg()[0]
    table = step_table(threads, repeats=max(5, args.repeats))
    print(f"\none decode step of R rows, ~50 tokens of context, SmolLM2-135M-Instruct, {threads} threads, "
          f"{bm.cpu_name()}, load average {load0:.2f} -> {os.getloadavg()[0]:.2f}; median wall ms (median process "
          "CPU ms)")
    print(f"{'engine':<30}" + "".join(f"{'R = ' + str(r):>22}" for r in STEP_ROWS))
    for name, res in table:
        print(f"{name:<30}" + "".join(f"{res[r][0]:>12.1f} ({res[r][1]:>6.1f})" for r in STEP_ROWS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
