"""The source's shape: no function under eager_kernels/ is longer than MAX_LINES lines
(its `def` line to its last line, docstring included, decorators not), but the ones listed
in EXEMPT, each with its reason. A long function is split into well-named helpers instead.
"""
import ast
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "eager_kernels"
MAX_LINES = 100

# (path under eager_kernels/, function name): why it may be longer than MAX_LINES.
EXEMPT = {
    ("kernels/triton.py", "_partial_kernel"): "a @triton.jit kernel: one GPU program, whose parts Triton "
                                              "would inline again (a helper is a @triton.jit function too)",
}


def long_functions(root: Path, limit: int = MAX_LINES) -> dict:
    """{(path under root, function name): lines} of every function (nested ones and methods
    too) longer than `limit` lines."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    out[(rel, node.name)] = lines
    return out


def test_no_function_over_the_limit():
    found = long_functions(ROOT)
    bad = {k: n for k, n in found.items() if k not in EXEMPT}
    assert not bad, (f"functions over {MAX_LINES} lines (split them into helpers, or add an exemption with its "
                     f"reason to EXEMPT): " + ", ".join(f"{p}::{f} ({n} lines)" for (p, f), n in sorted(bad.items())))
    stale = sorted(set(EXEMPT) - set(found))
    assert not stale, f"exempt but no longer over {MAX_LINES} lines (remove from EXEMPT): {stale}"


def test_triton_exemptions_are_triton_kernels():
    for (rel, name) in EXEMPT:
        if rel != "kernels/triton.py":
            continue
        tree = ast.parse((ROOT / rel).read_text())
        fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
        assert any("triton.jit" in ast.unparse(d) for d in fn.decorator_list), (name, "is not @triton.jit")


def test_the_checker_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))  # def line + 100 = 101 lines
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(
        f"def long():\n{body}\n\n\ndef short():\n    return 1\n\n\n"
        + textwrap.dedent("""\
        class C:
            def method(self):
                return 2
        """))
    assert long_functions(tmp_path) == {("pkg/m.py", "long"): MAX_LINES + 1}
    assert long_functions(tmp_path, MAX_LINES + 1) == {}
