"""Which llama.cpp settings make a row's logits depend on its batch: a prompt alone against
the same prompt among 1, 3, 7 and 15 others, fed the same tokens (docs/reproducibility.md,
"llama.cpp: where a row meets its batch"; raw output in benchmarks/results/batch_invariance.txt).

    python benchmarks/llamacpp_batch_paths.py [--models f32 f16 bf16 q8_0]
        [--layouts unified streams invariant] [--flash 1 0] [--threads 1 2] [--extra 1 0]
        [--rows 1 4] [--others 1 3 7 15] [--where first middle last] [--steps 6] [--unchecked]
    python benchmarks/llamacpp_batch_paths.py --cost 12 16 [--weight-type bf16] [--threads 2]
        [--cost-rows 8] [--cost-tokens 32] [--repeats 3]

For each model x layout x flash attention x threads x extra buffers x rows per prompt: the
target prompt (38 tokens) alone (prefill, `rows` rows forked from it, --steps decode steps,
a fork at step 3 when rows > 1: row 1 dropped, row 0 copied into its place), then the same in a
batch with k others (k in --others), the target first, in the middle and last (--where; the
others in a shuffled order, 9 to 80 tokens long, and on SmolLM2 always one of 300 tokens, whose
stream needs 512 cells in a shared step). Every row is fed fixed pseudo-random
tokens that depend only on (prompt, row, step), so the alone and batch runs see the same
inputs. Printed: the largest |logit difference| of the target's rows over the prefill and
all steps, and whether every bit matched.

--cost G [G ...]: instead, tokens per second of the three ways to run G prompts of the
arithmetic suite (bench_batch_invariance.py's cost workload: seed policy, --cost-rows rows a
prompt, --cost-tokens new tokens, every row running every step; --weight-type, --threads):
the default mode (LlamaCppEngine(), prompts batched, layout by call), today's isolation
(EagerConfig(batch_invariant=True) on it: each prompt in calls of its own) and the invariant
engine (LlamaCppEngine(batch_invariant=True), prompts batched); best of --repeats alternated
runs, and how many prompts' trees differ from each prompt run alone on the same engine.

Models: f32 is the tiny random Llama of the test suite (tests/conftest.make_tiny_llama, written
by tests/tiny_gguf.py); f16, bf16, q8_0, q4_1, q4_0 are SmolLM2-135M-Instruct
(models.default_gguf_path).
Layouts: unified (kv_unified=True), streams (kv_unified=False), invariant
(LlamaCppEngine(batch_invariant=True)).
"""
import argparse
import datetime
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from eager_kernels.engines.llamacpp import LlamaCppEngine

ROOT = Path(__file__).resolve().parents[1]


def model_path(name: str, tmp: str) -> str:
    if name == "f32":
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import make_tiny_llama
        from tiny_gguf import write_llama_gguf

        return write_llama_gguf(make_tiny_llama(160, 3, head_scale=25.0, silence_eos=True),
                                Path(tmp) / "tiny-llama-f32.gguf")
    from eager_kernels.engines.models import default_gguf_path

    return str(default_gguf_path(name))


def make_prompts(vocab: int, n: int = 16) -> list:
    rng = np.random.default_rng(7)
    lo = 4 if vocab < 1000 else 100
    hi = min(vocab, 20000)
    lens = [38] + list(rng.integers(9, 81, size=n - 1))
    if vocab >= 1000:  # one other of 300 tokens: its stream needs 512 cells (n_kv) in a shared step
        lens[1] = 300
    return [[1] + rng.integers(lo, hi, size=L - 1).tolist() for L in lens]


def token(vocab: int, prompt: int, row: int, step: int) -> int:
    lo = 4 if vocab < 1000 else 100
    return lo + (prompt * 7919 + row * 104729 + step * 1299709) % (min(vocab, 20000) - lo)


def run(engine, prompts, ids, rows: int, steps: int, target_pos: int):
    """The target's logits [(1 + steps) * rows, V] (prefill repeated per row): prompts[i] has
    id ids[i] (its tokens' key), the target sits at target_pos."""
    G = len(prompts)
    V = engine.vocab_size
    out = []
    try:
        first = engine.prefill(prompts, max_rows=G * rows, max_new_tokens=steps + 1).clone()
        out.append(first[target_pos].repeat(rows, 1))
        lineage = [list(range(rows)) for _ in range(G)]  # the token key of each row
        if rows > 1:
            engine.reorder(torch.arange(G).repeat_interleave(rows))
        for t in range(steps):
            if t == 3 and rows > 1:  # row 1 dropped, row 0 forked into its place
                src = []
                for g in range(G):
                    base = g * rows
                    src += [base, base] + list(range(base + 2, base + rows))
                    lineage[g] = [lineage[g][0], 100 + t] + lineage[g][2:]
                engine.reorder(torch.tensor(src))
            tok = torch.tensor([token(V, ids[g], lineage[g][r], t) for g in range(G) for r in range(rows)])
            logits = engine.decode(tok)
            out.append(logits[target_pos * rows:(target_pos + 1) * rows].clone())
    finally:
        engine.release()
    return torch.cat(out)


def compare(engine, prompts, rows, steps, others, where, rng):
    alone = run(engine, [prompts[0]], [0], rows, steps, 0)
    res = []
    for k in others:
        rest = [1] + list(rng.permutation(np.arange(2, len(prompts)))[:k - 1])  # always the longest other
        rest = list(rng.permutation(rest))
        for w, pos in (("first", 0), ("middle", k // 2), ("last", k)):
            if w not in where:
                continue
            ids = rest[:pos] + [0] + rest[pos:]
            got = run(engine, [prompts[i] for i in ids], ids, rows, steps, pos)
            res.append((k, w, float((got - alone).abs().max()), bool(torch.equal(got, alone))))
    return res


def cost(args) -> None:
    """The --cost part (module docstring)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_batch_invariance import cost_config, suite_prompts, tree_gap

    from eager_kernels import generate
    from eager_kernels.engines.models import default_gguf_path

    torch.set_num_threads(args.threads[0])  # the sampler's threads, as bench_batch_invariance.py sets them
    path = default_gguf_path(args.weight_type)
    engines = {"default": LlamaCppEngine(path, n_threads=args.threads[0]),
               "invariant": LlamaCppEngine(path, n_threads=args.threads[0], batch_invariant=True)}
    ways = {"default": ("default", False), "isolation": ("default", True), "invariant": ("invariant", True)}
    print(f"cost: {args.weight_type}, seed policy, {args.cost_rows} rows a prompt, {args.cost_tokens} new tokens, "
          f"{args.threads[0]} threads, best of {args.repeats} alternated runs (load average before: "
          f"{os.getloadavg()[0]:.1f})", flush=True)
    never_eos = engines["default"].vocab_size - 1
    cfg = {inv: cost_config(args.cost_rows, args.cost_tokens, inv, never_eos) for inv in (False, True)}
    all_prompts = suite_prompts(engines["default"], max(args.cost))
    for G in args.cost:
        prompts, keys = all_prompts[:G], list(range(G))
        rates, outs = {w: [] for w in ways}, {}
        for w, (e, inv) in ways.items():  # warm-up: context sizes, allocator
            generate(engines[e], prompts, cfg[inv], prompt_keys=keys)
        for _ in range(args.repeats):
            for w, (e, inv) in ways.items():
                t0 = time.perf_counter()
                outs[w] = generate(engines[e], prompts, cfg[inv], prompt_keys=keys)
                rates[w].append(outs[w].metrics.tokens_generated / (time.perf_counter() - t0))
        best = {w: max(r) for w, r in rates.items()}
        line = (f"  G={G:>2} ({G * args.cost_rows:>3} rows)  tokens {outs['default'].metrics.tokens_generated:>5}  "
                + "  ".join(f"{w} {best[w]:7.1f} tok/s" for w in ways)
                + f"  invariant/default {best['invariant'] / best['default']:.2f}"
                + f"  invariant/isolation {best['invariant'] / best['isolation']:.2f}")
        for w, (e, inv) in ways.items():
            alone = [generate(engines[e], [p], cfg[inv], prompt_keys=[k]).results[0] for p, k in zip(prompts, keys)]
            differ, gap = tree_gap(outs[w], alone)
            line += f" | {w}: {differ}/{G} trees differ from alone (max |dlogprob| {gap:.3g})"
        print(line, flush=True)
    for e in engines.values():
        e.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["f32", "f16", "bf16", "q8_0"])
    ap.add_argument("--layouts", nargs="+", default=["unified", "streams"],
                    choices=["unified", "streams", "invariant"])
    ap.add_argument("--flash", nargs="+", type=int, default=[1, 0], help="1 on, 0 off")
    ap.add_argument("--threads", nargs="+", type=int, default=[2, 1])
    ap.add_argument("--extra", nargs="+", type=int, default=[1], help="extra buffers (1 on, 0 off)")
    ap.add_argument("--rows", nargs="+", type=int, default=[1, 4])
    ap.add_argument("--others", nargs="+", type=int, default=[1, 3, 7, 15])
    ap.add_argument("--where", nargs="+", default=["first", "middle", "last"], help="the target's place")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--cost", nargs="+", type=int, help="prompts per call: the cost part instead")
    ap.add_argument("--weight-type", default="bf16")
    ap.add_argument("--cost-rows", type=int, default=8)
    ap.add_argument("--cost-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--unchecked", action="store_true",
                    help="invariant layout on any GGUF (the engine's check of measured configurations skipped)")
    args = ap.parse_args(argv)
    import llama_cpp

    if args.unchecked:
        import eager_kernels.engines.llamacpp as L

        L.invariance_blocker = lambda *a, **k: None

    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs; "
          f"llama-cpp-python {llama_cpp.__version__}")
    print("# python " + " ".join(["benchmarks/llamacpp_batch_paths.py"] + (argv if argv is not None else sys.argv[1:])))
    if args.cost:
        with torch.inference_mode():
            cost(args)
        return 0
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for name in args.models:
            path = model_path(name, tmp)
            for layout, fa, th, ex in itertools.product(args.layouts, args.flash, args.threads, args.extra):
                kw = {"batch_invariant": True} if layout == "invariant" else {"kv_unified": layout == "unified"}
                eng = LlamaCppEngine(path, n_threads=th, extra_buffers=bool(ex), **kw)
                eng._flash_attn = fa
                prompts = make_prompts(eng.vocab_size)
                for rows in args.rows:
                    t0 = time.perf_counter()
                    res = compare(eng, prompts, rows, args.steps, args.others, args.where, np.random.default_rng(rows))
                    worst = max(r[2] for r in res)
                    cells = " ".join(f"{k}{w[0]}:{d:.2g}" for k, w, d, _ in res)
                    print(f"{name:5} {layout:9} fa={fa} threads={th} extra={ex} rows={rows}  max|dlogit| "
                          f"{worst:.3g}  bit-identical {all(r[3] for r in res)}  [{cells}]  "
                          f"({time.perf_counter() - t0:.0f} s)", flush=True)
                eng.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
