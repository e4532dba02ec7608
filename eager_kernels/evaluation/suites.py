"""What the evaluation runs on: a suite is its problems, how each becomes a prompt, and how
a generated text is judged.

    ArithmeticSuite  the built-in seeded arithmetic / comparison suite (tasks.py), judged by
                     the strict hand-written extractor (tasks.extract_answer)
    QASuite          question / answer records from JSONL (GSM8K, shipped with the package,
                     or any local file), judged by Hugging Face's math-verify

GSM8K protocol (QASuite with the shipped data, `gsm8k_suite`):
- Problems: `split="test"` reads the full test set (1,319 problems; the first `n` are
  evaluated); `split="train"` reads the tuning problems of the shipped train slice (lines
  9-108 of train.jsonl, at most 100), never the few-shot pool (lines 1-8).
- Prompt: the tokenizer's chat template; the first `fewshot` train examples (default 2) as
  earlier user / assistant turns, their worked solutions cleaned for the model (calculator
  annotations "<<48/2=24>>" removed, the "#### 72" line written "Answer: 72"), then the
  question. Every user turn ends with GSM8K_INSTRUCTION (step-by-step reasoning, final
  answer on the last line as "Answer: <number>").
- Gold: the number after the last "####" of the answer field (thousands commas removed).
- Judge: math_verify.parse(text) against math_verify.parse(gold), math_verify.verify; a
  path is correct when verify says so. The path's answer must be stated ("Answer: 18",
  "the answer is 18", "final answer: 18", \boxed{18}): parse runs with
  try_extract_without_anchor=False, so a path cut off mid-reasoning is not credited with
  a number that happens to stand in its text (the pilot's "...feed to her 20 chickens. The
  total ... given to" read as 20 = the gold with math-verify's default, which reads
  unanchored numbers too). math-verify's timeouts use signals, which only work in the main
  thread: off the main thread both timeouts are passed as None.

The data are read from the package (eager_kernels/evaluation/data/gsm8k), never from the
network.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .tasks import EXAMPLES, Task, chat_prompt_ids, extract_answer, make_tasks

DATA_DIR = Path(__file__).resolve().parent / "data"
GSM8K_DIR = DATA_DIR / "gsm8k"
GSM8K_FEWSHOT_POOL = 8  # lines 1-8 of the shipped train slice: few-shot examples only
GSM8K_TUNING = 100  # lines 9-108: the tuning problems of --split train
GSM8K_INSTRUCTION = ("Solve the problem step by step, then give the final answer on the last line "
                     "as 'Answer: <number>'.")
SPLITS = ("test", "train")

_ANNOTATION = re.compile(r"<<[^<>]*>>")
_GOLD = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


# ---------------------------------------------------------------------------------------
# math-verify
# ---------------------------------------------------------------------------------------

class _NoTimeoutNotice(logging.Filter):
    """math-verify logs a notice on every call made with its timeouts off (None), which the
    evaluation does on purpose off the main thread."""

    def filter(self, record) -> bool:
        return "Timeout is disabled" not in record.getMessage()


def _math_verify():
    try:
        import math_verify
    except ImportError as e:  # pragma: no cover - exercised only without the package
        from ..errors import MissingExtraError

        raise MissingExtraError("math-verify", "eval", "the GSM8K / --dataset suites (their answer judge)") from e
    for name in ("math_verify", "math_verify.parser", "math_verify.grader", "math_verify.utils"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _NoTimeoutNotice) for f in lg.filters):
            lg.addFilter(_NoTimeoutNotice())
    return math_verify


def _timeout(seconds: int) -> Optional[int]:
    """math-verify's timeouts use SIGALRM: only in the main thread; None elsewhere."""
    return seconds if threading.current_thread() is threading.main_thread() else None


def verify_answer(gold: str, text: Optional[str], *, anchored: bool = True) -> tuple:
    """(pred, correct): math-verify's reading of `text` (its extracted string, or None) and
    whether it equals `gold`. anchored: only an answer the text states counts (math-verify's
    anchors: "answer:", "answer is", "final answer", \boxed); False: math-verify's default,
    which also reads unanchored numbers."""
    if not text:
        return None, False
    mv = _math_verify()
    g = mv.parse(str(gold), parsing_timeout=_timeout(5))
    if anchored:
        cfg = [mv.LatexExtractionConfig(try_extract_without_anchor=False),
               mv.ExprExtractionConfig(try_extract_without_anchor=False)]
        p = mv.parse(text, extraction_config=cfg, parsing_timeout=_timeout(5))
    else:
        p = mv.parse(text, parsing_timeout=_timeout(5))
    if not p:
        return None, False
    pred = str(p[-1]) if isinstance(p[-1], str) else str(p[0])
    return pred, bool(mv.verify(g, p, timeout_seconds=_timeout(5)))


def vote_key(pred) -> Optional[str]:
    """The majority-vote key of a prediction: numbers by value ("72", "72.0", "72.00" are one
    answer), anything else by its text."""
    if pred is None:
        return None
    s = str(pred).strip().replace(",", "")
    try:
        v = float(s)
    except ValueError:
        return s
    if v != v or v in (float("inf"), float("-inf")):
        return s
    r = round(v, 6)
    return str(int(r)) if r == int(r) else repr(r)


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------

def gold_answer(answer) -> str:
    """The gold of a GSM8K-style answer: the text after the last "####" (thousands commas
    removed), or the whole answer when it has no "####"."""
    s = str(answer)
    if "####" in s:
        s = s[s.rindex("####"):]
        s = _GOLD.match(s).group(1) if _GOLD.match(s) else ""
    s = s.strip()
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if not s:
        raise ValueError(f"gold_answer: no final answer in {answer!r}")
    return s


def solution_for_prompt(answer: str) -> str:
    """A GSM8K worked solution as a few-shot reply: no calculator annotations, the final
    "#### X" line written "Answer: X"."""
    text = _ANNOTATION.sub("", str(answer))
    if "####" in text:
        head = text[:text.rindex("####")].rstrip()
        text = (head + "\n" if head else "") + f"Answer: {gold_answer(answer)}"
    return text


def load_jsonl(path, question_key: str = "question", answer_key: str = "answer") -> list:
    """[(question, answer)] of a JSONL file; a line without either key is an error naming
    the line and the keys found."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset: no file {str(path)!r}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise ValueError(f"dataset {path}: line {n} is not JSON ({e})") from None
            if not isinstance(rec, dict) or question_key not in rec or answer_key not in rec:
                keys = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
                raise ValueError(f"dataset {path}: line {n} lacks question key {question_key!r} or answer key "
                                 f"{answer_key!r} (found {keys}); set --question-key / --answer-key")
            rows.append((str(rec[question_key]), rec[answer_key]))
    if not rows:
        raise ValueError(f"dataset {path}: no records")
    return rows


# ---------------------------------------------------------------------------------------
# Suites
# ---------------------------------------------------------------------------------------

class ArithmeticSuite:
    """The built-in suite (tasks.make_tasks), judged by tasks.extract_answer."""

    name = "arithmetic"

    def __init__(self, n: int, seed: int = 0):
        self.tasks = make_tasks(n, seed)
        self.examples = EXAMPLES

    def prompt_ids(self, tokenizer, task: Task) -> list:
        return chat_prompt_ids(tokenizer, task.question, self.examples)

    def judge(self, text: Optional[str], task: Task) -> tuple:
        pred = extract_answer(text)
        return pred, pred is not None and pred == task.answer

    def fingerprint(self) -> str:
        return "arithmetic"  # make_tasks is fixed by (n, seed), both in the run config


@dataclass(frozen=True)
class QASuite:
    """Question / gold-answer problems from JSONL, judged by math-verify.

    tasks: Task(id, kind=name, question, answer=gold string); examples: (user, assistant)
    few-shot turns; instruction: appended to every user turn ("" for none).
    """

    name: str
    tasks: list
    examples: tuple = ()
    instruction: str = GSM8K_INSTRUCTION

    def user_turn(self, question: str) -> str:
        return f"{question.strip()}\n{self.instruction}" if self.instruction else question.strip()

    def prompt_ids(self, tokenizer, task: Task) -> list:
        examples = tuple((self.user_turn(q), a) for q, a in self.examples)
        return chat_prompt_ids(tokenizer, self.user_turn(task.question), examples)

    def judge(self, text: Optional[str], task: Task) -> tuple:
        return verify_answer(task.answer, text)

    def fingerprint(self) -> str:
        """Covers the gold answers and the judge (the prompt token ids cover the questions)."""
        h = hashlib.sha1(json.dumps([self.name, "math-verify-anchored", [t.answer for t in self.tasks]]).encode())
        return h.hexdigest()[:16]


def _gsm8k_examples(fewshot: int) -> tuple:
    if not 0 <= fewshot <= GSM8K_FEWSHOT_POOL:
        raise ValueError(f"fewshot: expected 0..{GSM8K_FEWSHOT_POOL} (the shipped example pool), got {fewshot}")
    rows = load_jsonl(GSM8K_DIR / "train.jsonl")[:fewshot]
    return tuple((q, solution_for_prompt(a)) for q, a in rows)


def gsm8k_suite(n: Optional[int] = None, split: str = "test", fewshot: int = 2) -> QASuite:
    """GSM8K from the shipped data: the first n problems of `split` ("test": 1,319; "train":
    the 100 tuning problems), with `fewshot` worked train examples in every prompt."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if split == "test":
        rows = load_jsonl(GSM8K_DIR / "test.jsonl")
    else:
        rows = load_jsonl(GSM8K_DIR / "train.jsonl")[GSM8K_FEWSHOT_POOL:GSM8K_FEWSHOT_POOL + GSM8K_TUNING]
    return _qa_suite(f"gsm8k-{split}", rows, n, _gsm8k_examples(fewshot))


def dataset_suite(path, n: Optional[int] = None, question_key: str = "question", answer_key: str = "answer",
                  fewshot: int = 0, instruction: str = GSM8K_INSTRUCTION) -> QASuite:
    """Any local JSONL of question / answer records (the gold is the text after "####", or
    the whole answer); few-shot examples, if any, come from the shipped GSM8K train pool."""
    rows = load_jsonl(path, question_key, answer_key)
    digest = hashlib.sha1(Path(path).read_bytes()).hexdigest()[:10]
    return _qa_suite(f"dataset-{Path(path).stem}-{digest}", rows, n, _gsm8k_examples(fewshot), instruction)


def _qa_suite(name, rows, n, examples, instruction=GSM8K_INSTRUCTION) -> QASuite:
    if n is None:
        n = len(rows)
    if n < 1:
        raise ValueError(f"prompts: expected >= 1, got {n}")
    if n > len(rows):
        raise ValueError(f"prompts: {name} has {len(rows)} problems, asked for {n}")
    tasks = [Task(id=i, kind=name, question=q, answer=gold_answer(a)) for i, (q, a) in enumerate(rows[:n])]
    return QASuite(name=name, tasks=tasks, examples=examples, instruction=instruction)


SUITES = ("arithmetic", "gsm8k", "dataset")


def build_suite(cfg):
    """The suite an EvalConfig names (its suite, prompts, suite_seed, split, fewshot,
    dataset, question_key, answer_key)."""
    if cfg.suite == "arithmetic":
        return ArithmeticSuite(cfg.prompts, cfg.suite_seed)
    if cfg.suite == "gsm8k":
        return gsm8k_suite(cfg.prompts, cfg.split, cfg.fewshot)
    if cfg.suite == "dataset":
        if not cfg.dataset:
            raise ValueError("suite 'dataset' needs a JSONL path (--dataset FILE.jsonl)")
        return dataset_suite(cfg.dataset, cfg.prompts, cfg.question_key, cfg.answer_key, cfg.fewshot)
    raise ValueError(f"suite: expected one of {SUITES}, got {cfg.suite!r}")
