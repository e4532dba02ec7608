"""Helpers of the lm-evaluation-harness task gsm8k_eager.yaml: GSM8K as
`eager-kernels eval --suite gsm8k` asks and judges it (eager_kernels/evaluation/suites.py),
imported from there so that the two cannot drift apart.

- doc_to_text: the question, then the instruction (the user turn of every prompt).
- doc_to_target: the gold number (the text after "####", thousands commas removed).
- fewshot_target: a worked train solution as the assistant turn of a few-shot example
  (calculator annotations removed, "#### 72" written "Answer: 72").
- math_verify_filter: an lm-eval "custom" filter. Each response becomes the gold string
  when math-verify (anchored: the answer must be stated) accepts it, else "[wrong] <what
  math-verify read>" or "[invalid]" (nothing read); exact_match then scores what
  eager-kernels eval scores.
"""
from eager_kernels.evaluation.suites import GSM8K_INSTRUCTION, gold_answer, solution_for_prompt, verify_answer


def doc_to_text(doc: dict) -> str:
    return f"{doc['question'].strip()}\n{GSM8K_INSTRUCTION}"


def doc_to_target(doc: dict) -> str:
    return gold_answer(doc["answer"])


def fewshot_target(doc: dict) -> str:
    return solution_for_prompt(doc["answer"])


def judged(text, gold: str) -> str:
    """`text` as the math-verify filter writes it for `gold`."""
    pred, correct = verify_answer(gold, text)
    if correct:
        return gold
    return "[invalid]" if pred is None else f"[wrong] {pred}"


def math_verify_filter(resps, docs):
    """lm-eval's filter interface: one list of responses per document."""
    return [[judged(r, doc_to_target(doc)) for r in rs] for rs, doc in zip(resps, docs)]
