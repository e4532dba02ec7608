"""No lab notes in the source: no date stamps, no "UTC", no "session", no paths outside the
repository in the package's source (eager_kernels/: .py, .js, .css) or in csrc/.

Measurements and dated notes belong on the docs page of their topic (docs/) or in
benchmarks/results/HISTORY.md; the code keeps why, once, and links the page. Data files
(evaluation/data/*.jsonl, licences) are not source and are not read.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [("eager_kernels", (".py", ".js", ".css")), ("csrc", (".cpp", ".h", ".cc", ".cu", ".cuh", ".hpp"))]

_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?"
RULES = {
    "date": re.compile(r"\b(?:19|20)\d\d-\d\d-\d\d\b"),
    "month-name date": re.compile(rf"\b{_MONTH} \d{{1,2}}(?:st|nd|rd|th)?,? (?:19|20)\d\d\b"
                                  rf"|\b\d{{1,2}} {_MONTH},? (?:19|20)\d\d\b"
                                  rf"|\b{_MONTH} (?:19|20)\d\d\b"),
    "UTC": re.compile(r"\bUTC\b"),
    "session": re.compile(r"\bsessions?\b", re.IGNORECASE),
    "path outside the repository": re.compile(r"\.\./|/work/|/root/|/tmp\b"),
}

# What the code genuinely needs, by (file, rule): a line breaking `rule` in `file` passes
# only if it holds the snippet. Anything else is a finding.
ALLOWED = {
    # The kernel benchmark and the vLLM benchmark stamp their output with the time of the
    # run: a strftime format, not a note.
    ("eager_kernels/bench/kernels.py", "UTC"): "%H:%M UTC",
    ("eager_kernels/bench/vllm.py", "UTC"): "%H:%M UTC",
}


def source_files(root: Path = ROOT) -> list:
    out = []
    for folder, suffixes in SOURCES:
        out += sorted(p for p in (root / folder).rglob("*") if p.is_file() and p.suffix in suffixes)
    return out


def findings(path: Path, root: Path = ROOT, allowed: dict = ALLOWED) -> list:
    """(file:line, rule, the line) for every line of `path` that breaks a rule and is not
    allowed for that file."""
    rel = path.relative_to(root).as_posix()
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        for rule, pattern in RULES.items():
            if pattern.search(line):
                snippet = allowed.get((rel, rule))
                if snippet is None or snippet not in line:
                    out.append((f"{rel}:{n}", rule, line.strip()))
    return out


def test_no_lab_notes_in_the_source():
    files = source_files()
    assert any(p.suffix == ".py" for p in files) and any(p.parent.name == "csrc" for p in files)
    bad = [f for p in files for f in findings(p)]
    assert not bad, ("dated notes, session notes or outside paths in the source (move the figure "
                     "to its docs page, keep why in the code and link it):\n"
                     + "\n".join(f"  {where} [{rule}] {line}" for where, rule, line in bad))


def test_the_allow_list_names_files_that_exist():
    for rel, rule in ALLOWED:
        assert (ROOT / rel).is_file() and rule in RULES, (rel, rule)


@pytest.mark.parametrize("line, rule", [
    ("# measured 2026-11-29 on the EPYC", "date"),
    ("// a run on Nov 29, 2026", "month-name date"),
    ("# as of 29 November 2026", "month-name date"),
    ("# figures from December 2026", "month-name date"),
    ("// 16:01 UTC, results/r21.txt", "UTC"),
    ("# (sixth session; docs/cpu_tiers.md)", "session"),
    ("# see ../shared/EAGER.md", "path outside the repository"),
    ("path = '/work/main/data'", "path outside the repository"),
    ("CACHE = '/root/.cache'", "path outside the repository"),
    ("out = '/tmp/x.csv'", "path outside the repository"),
])
def test_the_checker_finds_a_planted_note(tmp_path, line, rule):
    """A planted violation in a temp tree is found, with its rule and line number; the same
    line allowed for another file is still found."""
    src = tmp_path / "eager_kernels" / "mod.py"
    src.parent.mkdir()
    src.write_text('"""A module."""\nx = 1\n' + line + "\n")
    got = findings(src, root=tmp_path)
    assert ("eager_kernels/mod.py:3", rule) in [(w, r) for w, r, _ in got], got
    other = {("eager_kernels/other.py", rule): line}
    assert ("eager_kernels/mod.py:3", rule) in [(w, r) for w, r, _ in findings(src, root=tmp_path, allowed=other)]


def test_the_checker_reads_source_not_data(tmp_path):
    for rel in ("eager_kernels/a.py", "eager_kernels/viewer.js", "eager_kernels/evaluation/data/d.jsonl",
                "csrc/k.cpp", "csrc/k.h", "docs/notes.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("# 2026-11-29 16:01 UTC, sixth session\n")
    files = [p.relative_to(tmp_path).as_posix() for p in source_files(tmp_path)]
    assert files == ["eager_kernels/a.py", "eager_kernels/viewer.js", "csrc/k.cpp", "csrc/k.h"]
    assert {r for p in source_files(tmp_path) for _, r, _ in findings(p, root=tmp_path)} == {"date", "UTC", "session"}


def test_the_checker_passes_clean_code_and_allowed_lines(tmp_path):
    src = tmp_path / "eager_kernels" / "bench" / "kernels.py"
    src.parent.mkdir(parents=True)
    src.write_text('stamp = now.strftime("%Y-%m-%d %H:%M UTC")\n'
                   "n = round(x, 3)  # a round trip here; version 2.13.0, 1e-5, 2025\n"
                   "from ..engines import base  # relative imports are not paths\n")
    assert findings(src, root=tmp_path) == []
    assert [r for _, r, _ in findings(src, root=tmp_path, allowed={})] == ["UTC"]
