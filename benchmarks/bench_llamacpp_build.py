"""What a llama.cpp build costs or gains in decode speed: the figures behind
docs/engines.md ("Building llama.cpp").

    python benchmarks/bench_llamacpp_build.py [--types bf16 q4_1 q8_0] [--rows 1 8]
        [--tokens 32] [--repeats 5] [--threads 2]

For each GGUF weight type of the default model and each row count: the prompt "What is
17 + 25?" (chat template) prefilled once per row, then --tokens greedy decode steps of
all rows; generated tokens per second (rows x tokens / decode time), median and range of
--repeats runs. Prints the build's CPU features first (llama_print_system_info).

To compare two builds of llama-cpp-python, install each into its own folder
(`pip install --no-deps --target DIR WHEEL`) and run this script with PYTHONPATH=DIR,
alternating between them.
"""
import argparse
import statistics
import time

import torch

from eager_kernels.bench.common import PROMPT
from eager_kernels.engines.llamacpp import LlamaCppEngine, import_llama_cpp
from eager_kernels.engines.models import default_gguf_path


def tokens_per_s(engine, ids, rows, tokens):
    logits = engine.prefill([ids] * rows, max_rows=rows, max_new_tokens=tokens)
    t0 = time.perf_counter()
    for _ in range(tokens):
        logits = engine.decode(logits.argmax(-1).to(torch.int32))
    dt = time.perf_counter() - t0
    engine.release()
    return rows * tokens / dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", nargs="+", default=["bf16", "q4_1", "q8_0"])
    ap.add_argument("--rows", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    lib = import_llama_cpp()
    print("llama.cpp build:", lib.llama_print_system_info().decode().strip())
    print(f"{'type':<6} {'rows':>4} {'tokens/s median':>16} {'min':>8} {'max':>8}")
    for wt in args.types:
        engine = LlamaCppEngine(default_gguf_path(wt), n_threads=args.threads)
        ids = engine.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}],
                                                   add_generation_prompt=True, tokenize=True)
        for rows in args.rows:
            tokens_per_s(engine, ids, rows, 4)  # warm-up
            runs = [tokens_per_s(engine, ids, rows, args.tokens) for _ in range(args.repeats)]
            print(f"{wt:<6} {rows:>4} {statistics.median(runs):>16.1f} {min(runs):>8.1f} {max(runs):>8.1f}",
                  flush=True)
        engine.close()


if __name__ == "__main__":
    main()
