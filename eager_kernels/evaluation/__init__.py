"""Evaluation: does entropy-gated branching pay on a real model?

`eager-kernels eval` (= `eager_kernels.evaluation.main(argv)`) runs greedy decoding, full
parallel sampling, EAGer-init / EAGer-adapt / full EAGer (policy "paper") and the seed
policy at the same cap M on a suite: the seeded arithmetic and comparison questions
(`--suite arithmetic`, the default), GSM8K (`--suite gsm8k`, shipped in data/gsm8k with its
MIT license, judged by math-verify) or a local JSONL (`--dataset`). It writes one JSONL
record per (method, prompt) as it goes (an interrupted run resumes), a markdown table (with
95% bootstrap intervals for GSM8K / JSONL), a JSON summary, the paired comparison of
EAGer-init against parallel sampling, where branching happens, and plots. `--tune-theta`
picks theta on GSM8K train problems.

    tasks.py     the arithmetic suite and its strict answer extractor (rules in its docstring)
    suites.py    suites: problems, prompts (chat template, few-shot turns), judge (GSM8K protocol)
    runner.py    the methods, per-prompt records, summaries
    analysis.py  bootstrap intervals, the paired comparison, the branching figures
    store.py     the resumable JSONL store
    report.py    the tables and the plots
    cli.py       main(argv) / run_eval() / run_tune()

Importing this package imports neither transformers nor matplotlib.
"""
from .cli import build_parser, main, run_eval
from .runner import METHODS, EvalConfig, Evaluator, summarize, tree_tokens
from .store import ResultStore
from .suites import ArithmeticSuite, QASuite, build_suite, dataset_suite, gsm8k_suite, verify_answer
from .tasks import INSTRUCTION, Task, extract_answer, find_numbers, is_correct, make_tasks

__all__ = [
    "INSTRUCTION",
    "METHODS",
    "EvalConfig",
    "Evaluator",
    "ArithmeticSuite",
    "QASuite",
    "ResultStore",
    "Task",
    "build_parser",
    "build_suite",
    "dataset_suite",
    "gsm8k_suite",
    "extract_answer",
    "find_numbers",
    "is_correct",
    "main",
    "make_tasks",
    "run_eval",
    "summarize",
    "tree_tokens",
    "verify_answer",
]
