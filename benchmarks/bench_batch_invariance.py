"""Batch invariance per engine: how far a row's log-probabilities move with its batch in the
default mode, and what EagerConfig(batch_invariant=True) costs (docs/reproducibility.md).

    python benchmarks/bench_batch_invariance.py [--engines llamacpp transformers]
        [--prompts 1 4 12] [--rows 8] [--new-tokens 32] [--repeats 3] [--threads 2]
        [--parts deviation cost]

- deviation: the prompts of the arithmetic evaluation suite (chat template, two worked
  examples: ~150 tokens each). Each prompt alone: prefill, fork to --rows rows, row r takes
  its rank-r token at the first step, then its greedy token, for --new-tokens steps; then
  the first G prompts (each G > 1 of --prompts) in one batch fed the same tokens. Printed: the
  largest |difference| of a row's log-probabilities (log_softmax of the logits, all
  positions, all rows) in the batch against alone, at the prefill and over the decode steps.
- cost: the seed policy (greedy, full entropy, q = 0 and initial threshold 0 so that every
  prompt reaches --rows rows within a few steps, pruned to --rows; an EOS id the model does
  not emit, so that every row runs --new-tokens steps), --new-tokens tokens, on
  G = --prompts prompts; tokens generated per second of generate()'s wall time, the default
  mode against batch_invariant=True, best of --repeats alternated runs (the machine this was
  written on is shared: other jobs only slow a run down). A first untimed run warms up. Also printed for
  each G > 1: how many prompts' trees (token ids and branch steps) differ between the
  default mode and the prompt run alone, and the largest |difference| of a path's
  log-probability between them; the same for the invariant mode (0 expected).

Engines: llamacpp (the default engine, KV layout by call), llamacpp-streams (kv_unified=
False: one KV stream per row), transformers. The invariant mode runs on transformers on
TransformersEngine(model, batch_invariant=True) (the prompts in one batch; its deviation is
printed too, 0 expected), or with --transformers-invariant isolated on the default engine
(each prompt in calls of its own, as on the other engines).

Needs the default model (models.py) and, for llamacpp, llama-cpp-python.
"""
import argparse
import datetime
import os
import platform
import sys
import time

import torch

from eager_kernels import EagerConfig, generate
from eager_kernels.evaluation.runner import EvalConfig
from eager_kernels.evaluation.suites import build_suite


def load_engines(kind: str, threads: int, transformers_invariant: str = "engine"):
    """(the default mode's engine, the invariant mode's engine)."""
    if kind.startswith("llamacpp"):
        from eager_kernels.engines.llamacpp import LlamaCppEngine
        from eager_kernels.engines.models import default_gguf_path

        engine = LlamaCppEngine(default_gguf_path(), n_threads=threads,
                                kv_unified=False if kind == "llamacpp-streams" else None)
        return engine, engine
    from eager_kernels.engines import TransformersEngine
    from eager_kernels.engines.models import load_default_model

    model, tok = load_default_model()
    engine = TransformersEngine(model, tokenizer=tok)
    if transformers_invariant == "isolated":
        return engine, engine
    return engine, TransformersEngine(model, tokenizer=tok, batch_invariant=True)


def suite_prompts(engine, n: int) -> list:
    suite = build_suite(EvalConfig(prompts=n))
    return [suite.prompt_ids(engine.tokenizer, t) for t in suite.tasks]


def _rows_run(engine, prompts, rows: int, steps: int, tokens=None):
    """Prefill the prompts, fork each to `rows` rows, decode `steps` steps. tokens None:
    choose them (row r: its rank-r token first, then greedy) and return them; else feed them.
    Returns (log-probs [steps + 1, G * rows, V] float64 (the prefill's repeated per row),
    tokens [steps, G * rows])."""
    G = len(prompts)
    out, chosen = [], []
    try:
        first = engine.prefill(prompts, max_rows=G * rows, max_new_tokens=steps + 1)
        src = torch.arange(G, device=engine.device).repeat_interleave(rows)
        lp = torch.log_softmax(first.double(), -1)[src.cpu()]
        out.append(lp)
        engine.reorder(src)
        rank = torch.arange(rows).repeat(G)
        for t in range(steps):
            if tokens is None:
                order = torch.argsort(lp, dim=-1, descending=True, stable=True)
                tok = order[torch.arange(G * rows), rank] if t == 0 else order[:, 0]
            else:
                tok = tokens[t]
            chosen.append(tok)
            lp = torch.log_softmax(engine.decode(tok.to(engine.device)).double().cpu(), -1)
            out.append(lp)
    finally:
        engine.release()
    return torch.stack(out), torch.stack(chosen)


def deviation(engine, prompts, counts, rows: int, steps: int) -> dict:
    """{G: the batch of the first G prompts against each alone}."""
    alone_lp, alone_tok = [], []
    for p in prompts[:max(counts)]:
        lp, tok = _rows_run(engine, [p], rows, steps)
        alone_lp.append(lp)
        alone_tok.append(tok)
    res = {}
    for G in counts:
        tokens = torch.cat(alone_tok[:G], dim=1)  # [steps, G * rows]
        batch_lp, _ = _rows_run(engine, prompts[:G], rows, steps, tokens=tokens)
        want = torch.cat(alone_lp[:G], dim=1)
        diff = (batch_lp - want).abs()
        finite = torch.isfinite(want)
        diff = torch.where(finite, diff, torch.zeros_like(diff))
        res[G] = {"prefill": float(diff[0].max()), "decode": float(diff[1:].max()),
                  "equal_bits": bool(torch.equal(batch_lp[finite], want[finite]))}
    return res


def cost_config(rows: int, new_tokens: int, invariant: bool, never_eos: int) -> EagerConfig:
    return EagerConfig.seed_policy(max_new_tokens=new_tokens, max_paths_per_prompt=rows, prune_to=rows, q=0.0,
                                   initial_threshold=0.0, batch_invariant=invariant, eos_token_id=never_eos)


def tree_gap(out, alone) -> tuple:
    """(prompts whose trees differ, largest |log-prob difference| of equal paths)."""
    differ, gap = 0, 0.0
    for r, a in zip(out.results, alone):
        if _trees_one(r) != _trees_one(a):
            differ += 1
        for p, q in zip(r.paths, a.paths):
            if p.token_ids == q.token_ids:
                gap = max(gap, abs(p.logprob - q.logprob))
    return differ, gap


def _trees_one(r):
    return [(p.token_ids, p.branch_steps) for p in r.paths]


def cost(engine, inv_engine, prompts, counts, rows, new_tokens, repeats, trees=True) -> list:
    """inv_engine: the engine of the invariant mode's runs (engine itself, or one that is
    batch-invariant)."""
    table = []
    engines = {False: engine, True: inv_engine}
    for G in counts:
        ps = prompts[:G]
        keys = list(range(G))
        rates = {False: [], True: []}
        outs = {}
        cfg = {inv: cost_config(rows, new_tokens, inv, engine.vocab_size - 1) for inv in (False, True)}
        for inv in (False, True):  # warm-up (context sizes, allocator; the invariant engine's probes)
            generate(engines[inv], ps, cfg[inv], prompt_keys=keys)
        for _ in range(repeats):
            for inv in (False, True):
                t0 = time.perf_counter()
                out = generate(engines[inv], ps, cfg[inv], prompt_keys=keys)
                wall = time.perf_counter() - t0
                rates[inv].append(out.metrics.tokens_generated / wall)
                outs[inv] = out
                print(f"    G={G:>2} {'invariant' if inv else 'default':9s} {rates[inv][-1]:8.1f} tok/s ({wall:.1f} s; "
                      f"load average {os.getloadavg()[0]:.1f})", flush=True)
        # best of the repeats: on a shared machine other jobs only ever slow a run down
        row = {"G": G, "rows": G * rows, "tokens": outs[False].metrics.tokens_generated,
               "default": max(rates[False]), "invariant": max(rates[True])}
        row["ratio"] = row["invariant"] / row["default"]
        if G > 1 and trees:
            for inv, name in ((False, "default"), (True, "invariant")):
                alone = [generate(engines[inv], [p], cfg[inv], prompt_keys=[k]).results[0]
                         for p, k in zip(ps, keys)]
                row[f"{name}_trees_differ"], row[f"{name}_logprob_gap"] = tree_gap(outs[inv], alone)
        table.append(row)
        print(_fmt(row), flush=True)
    return table


def _fmt(r: dict) -> str:
    s = (f"  G={r['G']:>2} ({r['rows']:>3} rows)  tokens {r['tokens']:>5}  default {r['default']:8.1f} tok/s  "
         f"invariant {r['invariant']:8.1f} tok/s  invariant/default {r['ratio']:.2f}")
    if "default_trees_differ" in r:
        s += (f"  | vs alone: default {r['default_trees_differ']}/{r['G']} trees differ, max |dlogprob| "
              f"{r['default_logprob_gap']:.3g}; invariant {r['invariant_trees_differ']}/{r['G']}, "
              f"{r['invariant_logprob_gap']:.3g}")
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", nargs="+", default=["llamacpp", "llamacpp-streams", "transformers"],
                    choices=["llamacpp", "llamacpp-streams", "transformers"])
    ap.add_argument("--prompts", nargs="+", type=int, default=[1, 4, 12])
    ap.add_argument("--max-prompts", type=int, default=12, help="prompts of the deviation part")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", nargs="+", default=["deviation", "cost"], choices=["deviation", "cost"])
    ap.add_argument("--transformers-invariant", default="engine", choices=["engine", "isolated"],
                    help="the invariant mode on transformers: TransformersEngine(batch_invariant=True) (engine), or "
                         "each prompt in calls of its own on the default engine (isolated)")
    ap.add_argument("--no-trees", action="store_true",
                    help="cost: skip the trees' comparison with each prompt alone (2 G more runs per G)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    versions = [f"torch {torch.__version__}"]
    try:
        import llama_cpp

        versions.append(f"llama-cpp-python {llama_cpp.__version__}")
    except ImportError:
        pass
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu}, "
          f"{len(os.sched_getaffinity(0))} CPUs visible, {args.threads} threads; {', '.join(versions)}")
    print("# python " + " ".join(["benchmarks/bench_batch_invariance.py"] + (argv if argv is not None else sys.argv[1:])))
    for kind in args.engines:
        engine, inv_engine = load_engines(kind, args.threads, args.transformers_invariant)
        how = ("one batch on TransformersEngine(batch_invariant=True)" if inv_engine is not engine
               else "each prompt in calls of its own")
        print(f"\n== {kind} (SmolLM2-135M-Instruct, default weights; batch_invariant={engine.batch_invariant}; "
              f"invariant mode: {how})")
        prompts = suite_prompts(engine, max(args.max_prompts, max(args.prompts)))
        with torch.inference_mode():
            if "deviation" in args.parts:
                counts = [g for g in args.prompts if 1 < g <= args.max_prompts] or [args.max_prompts]
                for eng in [engine] + ([inv_engine] if inv_engine is not engine else []):
                    label = " (batch_invariant=True engine)" if eng.batch_invariant else ""
                    for G, d in deviation(eng, prompts, counts, args.rows, args.new_tokens).items():
                        print(f"deviation{label}, {G} prompts x {args.rows} rows, {args.new_tokens} steps, batch "
                              f"against alone: max |d log-prob| prefill {d['prefill']:.3g}, decode {d['decode']:.3g}; "
                              f"bit-identical: {d['equal_bits']}", flush=True)
            if "cost" in args.parts:
                print(f"cost: seed policy, {args.rows} rows per prompt, {args.new_tokens} new tokens, best of "
                      f"{args.repeats} alternated runs (load average before: {os.getloadavg()[0]:.1f})", flush=True)
                cost(engine, inv_engine, prompts, args.prompts, args.rows, args.new_tokens, args.repeats, not args.no_trees)
    return 0


if __name__ == "__main__":
    sys.exit(main())
