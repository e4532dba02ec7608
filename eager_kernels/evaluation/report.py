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


# The table with intervals (GSM8K and --dataset runs): accuracy columns carry their 95%
# bootstrap interval over problems.
CI_COLUMNS = [
    ("method", "method", "{}"),
    ("prompts", "problems", "{}"),
    ("tokens", "tokens", "{:,}"),
    ("tokens_per_prompt", "tokens/problem", "{:.1f}"),
    ("sequences_per_prompt", "seq/problem", "{:.2f}"),
    ("pass_at_k", "Pass@k [95% CI]", "ci"),
    ("pass_rate", "pass rate [95% CI]", "ci"),
    ("answer_acc", "acc, best log-prob [95% CI]", "ci"),
    ("majority_acc", "acc, majority vote [95% CI]", "ci"),
    ("branch_events", "branches", "{:,}"),
    ("wall_s", "wall s", "{:.1f}"),
]


def _cell(r: dict, key: str, fmt: str) -> str:
    v = r.get(key)
    if v is None:
        return "-"
    if fmt == "ci":
        ci = r.get(key + "_ci")
        return f"{v:.1%}" + (f" [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else "")
    return fmt.format(v)


def markdown_table(rows: list, columns=None) -> str:
    """rows: dicts with 'method' and summarize()'s keys; columns: COLUMNS (default) or
    CI_COLUMNS."""
    columns = COLUMNS if columns is None else columns
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"
    lines = [head, sep]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r, key, fmt) for key, _, fmt in columns) + " |")
    return "\n".join(lines)


def paired_text(name_a: str, name_b: str, p: dict) -> str:
    """A paragraph of analysis.paired's figures."""
    if not p.get("problems"):
        return f"{name_a} vs {name_b}: no problem completed by both."
    lo, hi = p["pass_at_k_diff_ci"]
    ratio = "-" if p["tokens_ratio"] is None else f"{p['tokens_ratio']:.3f}"
    rci = p.get("tokens_ratio_ci")
    rci = f" [95% CI {rci[0]:.3f}, {rci[1]:.3f}]" if rci else ""
    return (f"{name_a} vs {name_b} on the same {p['problems']} problems: tokens {p['tokens_a']:,} vs "
            f"{p['tokens_b']:,} (ratio {ratio}{rci}; {name_a} used fewer tokens on {p['fewer_tokens_problems']} "
            f"problems); Pass@k {p['pass_at_k_a']:.1%} vs {p['pass_at_k_b']:.1%}, difference "
            f"{100 * p['pass_at_k_diff']:+.1f} points [95% CI {100 * lo:+.1f}, {100 * hi:+.1f}]; solved by "
            f"{name_a} only: {p['a_only']}, by {name_b} only: {p['b_only']}, by both: {p['both']} "
            f"(exact sign test p = {p['sign_p']:.3g}).")


def branching_table(stats: dict) -> str:
    """stats: method -> analysis.branching(...)."""
    head = ("| method | problems | paths | branch events | branch position q1 / median / q3 | "
            "problems with > 1 path | problems with M paths | mean entropy | share of positions > θ | "
            "mean path tokens | paths ended by EOS |")
    lines = [head, "|---|" + "---:|" * 10]
    for m, b in stats.items():
        if not b.get("problems"):
            continue
        q = b.get("branch_position_quartiles")
        qs = " / ".join(f"{x:.0f}" for x in q) if q else "-"
        me = "-" if b.get("mean_entropy") is None else f"{b['mean_entropy']:.3f}"
        sh = "-" if b.get("share_above_theta") is None else f"{b['share_above_theta']:.2%}"
        lines.append(f"| {m} | {b['problems']} | {b['paths']} | {b['branch_events']} | {qs} | "
                     f"{b['problems_branched']} | {b['problems_at_cap']} | {me} | {sh} | "
                     f"{b['path_tokens_mean']:.1f} | {b['finished_eos']} |")
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
    cis = {(r["tokens"], r["pass_at_k"], r["sequences_per_prompt"]): r.get("pass_at_k_ci")
           for r in rows if r.get("prompts")}
    for i, ((tokens, pass_k, seq), names) in enumerate(points.items()):
        x, y = tokens, 100 * pass_k
        color = f"C{i % 10}"
        ci = cis.get((tokens, pass_k, seq))
        if ci:  # the 95% bootstrap interval over problems
            ax.errorbar([x], [y], yerr=[[y - 100 * ci[0]], [100 * ci[1] - y]], fmt="none", capsize=4,
                        alpha=0.6, zorder=2, color=color)
        ax.scatter([x], [y], s=60, zorder=3, color=color)
        ax.annotate(f"{' = '.join(names)} ({seq:.1f} seq/prompt)", (x, y),  # labels alternate above / below
                    textcoords="offset points", xytext=(6, 5 if i % 2 == 0 else -12), fontsize=8)
    ax.set_xlabel("tokens generated (all prompts)")
    ax.set_ylabel("Pass@k (%)" + (", 95% bootstrap CI" if any(cis.values()) else ""))
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


def plot_branching(profiles: dict, positions: dict, path, *, title: str, theta=None) -> Path:
    """Left: mean entropy at each generated position per method (analysis.entropy_profile),
    with theta; right: histogram of the branch events' positions per method."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for name, prof in profiles.items():
        if prof["mean"]:
            a1.plot(range(len(prof["mean"])), prof["mean"], label=name, lw=1)
    if theta is not None:
        a1.axhline(theta, color="k", ls="--", lw=0.8, label=f"θ = {theta:g}")
    a1.set_xlabel("generated position (token)")
    a1.set_ylabel("mean entropy over paths (nats)")
    a1.grid(alpha=0.3)
    a1.legend(fontsize=7)
    drawn = {m: p for m, p in positions.items() if p}
    if drawn:
        hi = max(max(p) for p in drawn.values()) + 1
        bins = list(range(0, hi + 8, 8))
        a2.hist(list(drawn.values()), bins=bins, label=list(drawn), alpha=0.8)
        a2.legend(fontsize=7)
    else:
        a2.text(0.5, 0.5, "no branch events", ha="center", va="center", transform=a2.transAxes)
    a2.set_xlabel("branch position (generated token, bins of 8)")
    a2.set_ylabel("branch events")
    a2.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
