"""The summary table (markdown) and the plots (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path

COLUMNS = [
    ("method", "method", "{}"),
    ("prompts", "prompts", "{}"),
    ("tokens", "tokens", "{:,}"),
    ("tokens_per_prompt", "tokens/prompt", "{:.1f}"),
    ("sequences", "sequences", "{:,}"),
    ("sequences_per_prompt", "seq/prompt", "{:.2f}"),
    ("pass_at_k", "Pass@k", "{:.1%}"),
    ("pass_rate", "pass rate", "{:.1%}"),
    ("answer_acc", "answer acc", "{:.1%}"),
    ("branch_events", "branches", "{:,}"),
    ("wall_s", "wall s", "{:.1f}"),
]


def markdown_table(rows: list) -> str:
    """rows: dicts with 'method' and summarize()'s keys."""
    head = "| " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    sep = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            v = r.get(key)
            cells.append("-" if v is None else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pass_vs_tokens(rows: list, path, *, title: str) -> Path:
    """One point per method: Pass@k (%) against tokens generated (the paper's Figure 1)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    points = {}  # methods with identical results share one point and one label
    for r in rows:
        if r.get("prompts"):
            points.setdefault((r["tokens"], r["pass_at_k"], r["sequences_per_prompt"]), []).append(r["method"])
    for (tokens, pass_k, seq), names in points.items():
        x, y = tokens, 100 * pass_k
        ax.scatter([x], [y], s=60, zorder=3)
        ax.annotate(f"{' = '.join(names)} ({seq:.1f} seq/prompt)", (x, y),
                    textcoords="offset points", xytext=(6, 5), fontsize=8)
    ax.set_xlabel("tokens generated (all prompts)")
    ax.set_ylabel("Pass@k (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(x=0.25, y=0.15)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_theta_sweep(curves: dict, refs: list, path, *, title: str) -> Path:
    """curves: method -> [(theta, row)], drawn as lines through (tokens, Pass@k) with each
    point labelled by its theta; refs: rows drawn as single reference points."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, pts in curves.items():
        pts = sorted(((th, r) for th, r in pts if r.get("prompts")), key=lambda x: x[0])
        if not pts:
            continue
        xs = [r["tokens"] for _, r in pts]
        ys = [100 * r["pass_at_k"] for _, r in pts]
        ax.plot(xs, ys, marker="o", label=name)
        for (th, _), x, y in zip(pts, xs, ys):
            ax.annotate(f"θ={th:g}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    for i, r in enumerate(refs):  # colours after the curves', so no reference shares one
        if r.get("prompts"):
            ax.scatter([r["tokens"]], [100 * r["pass_at_k"]], marker="s", s=50, label=r["method"], zorder=3,
                       color=f"C{(len(curves) + i) % 10}")
    ax.set_xlabel("tokens generated (all prompts)")
    ax.set_ylabel("Pass@k (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
