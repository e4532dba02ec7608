"""The built-in task suite and the strict answer extractor.

Task suite
----------
`make_tasks(n, seed)` returns `n` distinct short questions with exact integer answers, the
same list for the same (n, seed) on every machine (Python's `random.Random(seed)`, no global
state). Five kinds, taken in turn so that any prefix of the list is balanced:

    add      "What is 23 + 45?"                  a, b in 10..99
    sub      "What is 31 - 58?"                  a, b in 10..99 (answers may be negative)
    mul      "What is 7 * 12?"                   a in 2..12, b in 2..19
    larger   "Which is larger, 47 or 74?"        two different numbers in 10..99
    smaller  "Which is smaller, 47 or 74?"

Every question ends with the same instruction (INSTRUCTION below) asking for the final
answer as "Answer: <number>". The prompt given to the model is the question wrapped in the
tokenizer's chat template (`chat_prompt_ids`), after two fixed worked examples (EXAMPLES:
one sum, one comparison, with operands outside the suite's ranges, so never a task) given as earlier user / assistant turns, so that a small model sees the answer format.

Answer extractor
----------------
`extract_answer(text)` returns the model's final answer as an int (or a float when the
model wrote a non-integer number, which then never equals an integer answer), or None:

1. Numbers are read whole: a number is an optional sign, digits, optional thousands groups
   (",ddd" with exactly three digits: "1,234" is 1234, but "47,74" is two numbers), and an
   optional decimal part (".5"; "42.0" reads as 42). A number is never a piece of a longer
   number or word: "17" reads as 17 and never matches 7; "3.5" is 3.5, never 3 or 5.
2. Units and symbols around a number are ignored: "$42", "42%", "42 apples", "42kg" all
   read 42. A number preceded by a letter or underscore ("x7", "v2") is not a number.
3. A minus sign ("-" or the Unicode minus) is a sign only when it does not follow a digit,
   letter or closing bracket: "-5" and "is -5" read -5, "10-5" reads 10 and 5.
4. If the text contains "Answer:" (any case, spaces allowed before the colon, markdown
   "**Answer:**" included), the answer is the first number after the LAST such marker.
5. Otherwise (no marker, or no number after the last marker) the answer is the last number
   anywhere in the text.
6. No number at all: None (counted as wrong).

`is_correct(text, answer)` is `extract_answer(text) == answer` (None is never correct).
"""
from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass
from typing import Optional, Union

from ..engines.base import chat_token_ids

INSTRUCTION = "Reply with your final answer on the last line as 'Answer: <number>'."
KINDS = ("add", "sub", "mul", "larger", "smaller")
# Worked examples shown before every question (user question, assistant reply); their
# numbers are outside the suite's operand ranges, so no example is also a task.
EXAMPLES = (
    (f"What is 4 + 3? {INSTRUCTION}", "4 + 3 = 7\nAnswer: 7"),
    (f"Which is larger, 105 or 150? {INSTRUCTION}", "150 is larger than 105.\nAnswer: 150"),
)


@dataclass(frozen=True)
class Task:
    id: int
    kind: str
    question: str  # the question with the answer-format instruction
    answer: int

    def as_dict(self) -> dict:
        return asdict(self)


def _make_one(kind: str, rng: random.Random) -> tuple:
    if kind == "add":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return f"What is {a} + {b}?", a + b
    if kind == "sub":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return f"What is {a} - {b}?", a - b
    if kind == "mul":
        a, b = rng.randint(2, 12), rng.randint(2, 19)
        return f"What is {a} * {b}?", a * b
    a, b = rng.sample(range(10, 100), 2)
    if kind == "larger":
        return f"Which is larger, {a} or {b}?", max(a, b)
    return f"Which is smaller, {a} or {b}?", min(a, b)


def make_tasks(n: int = 100, seed: int = 0) -> list:
    """`n` distinct tasks, kinds in turn (add, sub, mul, larger, smaller, add, ...),
    deterministic for (n, seed); the first k tasks of make_tasks(n) are make_tasks(k)."""
    if n < 1:
        raise ValueError(f"make_tasks: n must be >= 1, got {n}")
    rng = random.Random(f"eager-kernels-tasks-{seed}")
    seen, tasks = set(), []
    attempts = 0
    while len(tasks) < n:
        kind = KINDS[len(tasks) % len(KINDS)]
        text, ans = _make_one(kind, rng)
        attempts += 1
        if attempts > 100 * n + 1000:
            raise RuntimeError("make_tasks: could not find enough distinct tasks")
        if text in seen:
            continue
        seen.add(text)
        tasks.append(Task(id=len(tasks), kind=kind, question=f"{text} {INSTRUCTION}", answer=ans))
    return tasks


def chat_messages(question: str, examples=EXAMPLES) -> list:
    """The chat turns of one prompt: the worked examples, then the question."""
    msgs = []
    for q, a in examples:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return msgs + [{"role": "user", "content": question}]


def chat_prompt_ids(tokenizer, question: str, examples=EXAMPLES) -> list:
    """chat_messages(question) through the tokenizer's chat template, with the generation
    prompt appended (plain tokenization of the question when the tokenizer has no
    template)."""
    if getattr(tokenizer, "chat_template", None):
        return chat_token_ids(tokenizer, chat_messages(question, examples))
    return [int(t) for t in tokenizer(question)["input_ids"]]


# ---------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------

_MINUS = "-\u2212"
# sign (only when not after a digit, letter, underscore or closing bracket), digits not
# glued to a word on their left, thousands groups, decimals, and never a prefix of a longer
# number ("47,74" is two numbers; "1,234" one).
_NUMBER = re.compile(
    r"(?:(?<![A-Za-z0-9_)\]])[" + _MINUS + r"])?"
    r"(?<![A-Za-z_])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?"
    r"(?!\d|\.\d|,\d{3}(?!\d))"
)
_MARKER = re.compile(r"answer\s*:", re.IGNORECASE)


def find_numbers(text: str) -> list:
    """All numbers of `text` in order, read by rules 1-3 of the module docstring."""
    out = []
    for m in _NUMBER.finditer(text):
        start = m.start()
        digits_start = m.start(1)
        # A digit run that continues a number or a decimal to its left is no number.
        if digits_start > 0 and (text[digits_start - 1].isdigit() or
                                 (text[digits_start - 1] == "." and digits_start > 1 and
                                  text[digits_start - 2].isdigit())):
            continue
        sign = -1 if start < digits_start else 1
        whole = int(m.group(1).replace(",", ""))
        if m.group(2):
            frac = float("0" + m.group(2))
            value: Union[int, float] = whole + frac
            if frac == 0:
                value = whole
        else:
            value = whole
        out.append(sign * value)
    return out


def extract_answer(text: Optional[str]) -> Optional[Union[int, float]]:
    """The final answer of `text` (rules 4-6 of the module docstring), or None."""
    if not text:
        return None
    markers = list(_MARKER.finditer(text))
    if markers:
        after = find_numbers(text[markers[-1].end():])
        if after:
            return after[0]
    numbers = find_numbers(text)
    return numbers[-1] if numbers else None


def is_correct(text: Optional[str], answer: int) -> bool:
    got = extract_answer(text)
    return got is not None and got == answer
