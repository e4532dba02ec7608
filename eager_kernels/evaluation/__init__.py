"""Evaluation: does entropy-gated branching pay on a real model?

`eager-kernels eval` (= `eager_kernels.evaluation.main(argv)`) runs greedy decoding, full
parallel sampling, EAGer-init / EAGer-adapt / full EAGer (policy "paper") and the seed
policy at the same cap M on a seeded suite of short arithmetic and comparison questions,
writes one JSONL record per (method, prompt) as it goes (an interrupted run resumes), and
writes a markdown table, a JSON summary and plots of Pass@k against tokens generated.

    tasks.py   the task suite and the strict answer extractor (rules in its docstring)
    runner.py  the methods, per-prompt records, summaries
    store.py   the resumable JSONL store
    report.py  the table and the plots
    cli.py     main(argv) / run_eval()

Importing this package imports neither transformers nor matplotlib.
"""
from .cli import build_parser, main, run_eval
from .runner import METHODS, EvalConfig, Evaluator, summarize, tree_tokens
from .store import ResultStore
from .tasks import INSTRUCTION, Task, extract_answer, find_numbers, is_correct, make_tasks

__all__ = [
    "INSTRUCTION",
    "METHODS",
    "EvalConfig",
    "Evaluator",
    "ResultStore",
    "Task",
    "build_parser",
    "extract_answer",
    "find_numbers",
    "is_correct",
    "main",
    "make_tasks",
    "run_eval",
    "summarize",
    "tree_tokens",
]
