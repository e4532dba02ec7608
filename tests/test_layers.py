"""The package's layers (CONTRIBUTING.md, "Layers"): every import points down, none in a circle.

Every import statement of every module under eager_kernels/ counts, those inside functions
too (a lazy import is a dependency all the same). A module's layer is its top-level
package or module; an import may go to a lower layer or stay inside its own package, and
the modules may not import each other in a circle.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "eager_kernels"

# Lowest first. Names on one line are side by side: neither may import the other.
LAYERS = [
    ("errors", "viz"),  # the package's errors; the tree view (functions over results' data)
    ("kernels",),  # the ops: reference, checks, dispatch, Triton and C++ kernels
    ("engines",),  # model + KV cache behind one protocol; model loading
    ("sampler",),  # the EAGer loop, its config and budget, Ray generation
    ("hf", "evaluation"),  # transformers entry points; the evaluation (and on Ray)
    ("serve", "bench"),  # the OpenAI server; the benchmarks
    ("demo",),
    # the package's face: __init__ and the names of moved modules
    ("__init__", "reference", "ops", "history", "triton_kernels", "cpu_backend", "benchmarking", "models",
     "distributed"),
    ("__main__",),  # the command line
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict) -> set:
    """The package's modules that `name` imports (a name imported from a package is that
    package's submodule when one exists, else the package itself)."""
    out = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                full = f"{mod}.{alias.name}"
                out.add(full if full in modules else mod)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in modules and m != name}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_module_has_a_layer():
    unknown = sorted({_layer(m) for m in _graph()} - set(RANK))
    assert not unknown, f"add these to LAYERS (and to CONTRIBUTING.md's map): {unknown}"


def test_imports_point_down():
    bad = []
    for src, targets in _graph().items():
        for dst in targets:
            a, b = _layer(src), _layer(dst)
            if a != b and RANK[b] >= RANK[a]:
                bad.append(f"{src} -> {dst}")
    assert not bad, "imports that do not point to a lower layer:\n" + "\n".join(sorted(bad))


def test_no_circles():
    graph = _graph()
    # Tarjan's strongly connected components
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, f"modules that import each other in a circle: {circles}"


def test_the_check_sees_an_upward_import(tmp_path):
    """The checks above are not vacuous: the graph holds the layers' real imports."""
    graph = _graph()
    assert "eager_kernels.kernels.ops" in graph["eager_kernels.sampler.scheduler"]
    assert "eager_kernels.engines.base" in graph["eager_kernels.sampler.memory"]
    # a lazy import inside a function counts
    src = tmp_path / "eager_kernels" / "kernels"
    src.mkdir(parents=True)
    (src / "x.py").write_text("def f():\n    from ..sampler import generate\n")
    modules = {"eager_kernels.kernels.x": src / "x.py", "eager_kernels.sampler": None}
    assert _imports("eager_kernels.kernels.x", src / "x.py", modules) == {"eager_kernels.sampler"}
