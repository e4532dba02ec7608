"""Engine benchmarks on the default model (SmolLM2-135M-Instruct): the llama.cpp rows of
`eager-kernels bench --decode`, and the per-step table that chose the default engine and
the default GGUF weight type.

    eager-kernels bench --decode --step-table [--threads 2] [--repeats 9]
        one decode step of R rows (R = 1, 8, 32) with ~50 tokens of context: transformers
        fp32 forward vs llama_decode in each GGUF weight type (median ms per step)

The EAGer rows (eager_rows) time eager_kernels.generate on an engine and report tokens/s,
forks, the time inside llama_decode and the share of a step spent outside it; the anchor
(llama_anchor) is llama.cpp's own batched decode of the same rows: the same number of
steps with the same number of rows per step (the rows of the EAGer run, step by step),
no sampling, no forks.
"""
from __future__ import annotations

import statistics
import time

import torch

STEP_ROWS = (1, 8, 32)
CONTEXT = 50


def _median_ms(fn, repeats):
    """(median wall ms, median process CPU ms): on a machine shared with other jobs the CPU
    time of a 1-thread run is the steadier figure."""
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return 1e3 * statistics.median(times), 1e3 * statistics.median(cpu)


def _context_prompt(tok_encode, n=CONTEXT) -> list:
    ids = tok_encode("What is 17 + 25? Think step by step and give the answer as a number. " * 4)
    return (ids * (1 + n // max(1, len(ids))))[:n]


def step_table(threads: int, repeats: int = 9, weight_types=("q4_1", "q8_0", "f16", "bf16", "q4_0")) -> list:
    """[(engine label, {R: (median wall ms, median CPU ms) per decode step})]: each engine
    holds R rows that share
    a CONTEXT-token prompt (one prefill, then R - 1 forks), then decode steps are timed."""
    from ..engines import LlamaCppEngine, TransformersEngine
    from ..engines.models import default_gguf_path, load_default_model

    torch.set_num_threads(threads)
    model, tok = load_default_model()
    prompt = _context_prompt(lambda s: tok.encode(s, add_special_tokens=False))
    rows_out = []

    def measure(engine):
        res = {}
        with torch.inference_mode():
            for R in STEP_ROWS:
                engine.prefill([prompt], max_rows=R, max_new_tokens=2 * repeats + 4)
                if R > 1:
                    engine.reorder(torch.zeros(R, dtype=torch.int64))
                toks = torch.full((R,), int(prompt[-1]), dtype=torch.int64)
                engine.decode(toks)  # warm-up
                res[R] = _median_ms(lambda: engine.decode(toks), repeats)
                engine.release()
        return res

    rows_out.append(("transformers fp32 forward", measure(TransformersEngine(model, tok))))
    for wt in weight_types:
        eng = LlamaCppEngine(default_gguf_path(wt), n_threads=threads)
        rows_out.append((f"llama_decode {wt.upper()}", measure(eng)))
        eng.close()
    return rows_out


def eager_rows(engine, prompt_ids, cfg, repeats: int, tokenizer=None) -> dict:
    """Time generate(engine, [prompt_ids], cfg): median wall s, tokens, forks, steps, rows
    per step, and (llama.cpp) the seconds inside llama_decode."""
    from .. import sampler as ek

    rows_per_step = []
    orig_decode = engine.decode

    def counting_decode(tokens):
        rows_per_step.append(int(tokens.shape[0]))
        return orig_decode(tokens)

    ek.generate(engine, [prompt_ids], cfg.replace(max_new_tokens=2), tokenizer=tokenizer)  # warm-up
    times, inside, out = [], [], None
    for _ in range(repeats):
        rows_per_step.clear()
        engine.decode = counting_decode
        try:
            t0 = time.perf_counter()
            out = ek.generate(engine, [prompt_ids], cfg, tokenizer=tokenizer)
            times.append(time.perf_counter() - t0)
        finally:
            del engine.decode
        inside.append(getattr(engine, "last_decode_s", float("nan")))
    m = out.metrics
    i = times.index(statistics.median(times)) if repeats % 2 else 0
    return dict(seconds=statistics.median(times), best_s=min(times), tokens=m.tokens_generated,
                forks=m.branch_events, steps=m.steps, sequences=len(out.results[0].paths),
                rows_per_step=list(rows_per_step), decode_inside_s=inside[i] if inside else float("nan"),
                answer=out.results[0].answer.text, forwards=m.forward_passes)


def llama_anchor(engine, prompt_ids, rows_per_step: list, repeats: int) -> float:
    """llama.cpp's own batched decode of the same rows: one prefill, then for each step of
    the EAGer run one llama_decode of that step's number of rows (rows forked from the
    prompt, fixed tokens, no sampling); median seconds of the whole decode."""
    T = len(rows_per_step)
    most = max(rows_per_step) if rows_per_step else 1
    token = torch.tensor([int(prompt_ids[-1])])

    def run():
        engine.prefill([prompt_ids], max_rows=most, max_new_tokens=T + 1)
        have = 1
        t0 = time.perf_counter()
        for r in rows_per_step:
            if r != have:
                engine.reorder(torch.zeros(r, dtype=torch.int64))  # all rows from row 0
                have = r
            engine.decode(token.expand(r))
        dt = time.perf_counter() - t0
        engine.release()
        return dt

    run()
    return statistics.median(run() for _ in range(repeats))
