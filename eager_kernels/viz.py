"""Pictures of an EAGer result: the tree as one self-contained HTML page, and an entropy plot.

    out = generate(model, prompts, config, tokenizer=tok)
    out.to_html("tree.html")          # or viz.to_html(out, "tree.html")
    out.plot("entropy.png")           # or viz.plot_entropy(out, "entropy.png")

The page draws, per prompt, the paths as a tree: tokens that paths share are drawn once,
and the tree splits (◆) where a path branched. Every token is coloured by the entropy of
the distribution it came from, on one scale for the page (legend at the top); a token whose
entropy exceeded the threshold in force is outlined. Hovering a token shows its entropy,
the threshold, its probability and its step; hovering a split shows the tokens the
children took with their probabilities; hovering a path's label lights its tokens (so does
opening the file as tree.html#path=N). Each path ends in a label with its score
(log-probability per token), its finish reason and its length; the answer path is starred.

One renderer draws every view: the script in viewer.js (beside this module) turns the
view data (`view_data`: per prompt, its paths with their per-token records) into the tree.
to_html inlines that script and the data, so the file opens offline; the server's page
(`eager-kernels serve`, GET /) runs the same script on the paths its API returns.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path as _FilePath
from typing import Optional

# YlOrRd, light to dark: low entropy pale, high entropy deep red (the page's colour scale;
# viewer.js interpolates it linearly over [0, the page's largest entropy or threshold]).
RAMP = ((255, 255, 204), (254, 217, 118), (253, 141, 60), (227, 26, 28), (128, 0, 38))
_ASSETS = _FilePath(__file__).resolve().parent


def token_text(tokenizer, tok: int) -> str:
    """One token as the page shows it: the tokenizer's text ("[id]" without one), newlines as ⏎."""
    if tokenizer is None:
        return f"[{tok}]"
    try:
        text = tokenizer.decode([tok], skip_special_tokens=False)
    except TypeError:
        text = tokenizer.decode([tok])
    return text.replace("\n", "⏎") if text else "∅"


def _finite(x) -> Optional[float]:
    """A float as JSON can hold it: None for a missing or non-finite value."""
    return None if x is None or not math.isfinite(x) else float(x)


def path_view(p, tokenizer, index: int) -> dict:
    """One path's entry in the view data (also what the server's API returns per path when a
    request asks for the tree)."""
    n = len(p.token_ids)
    return {"index": index, "token_ids": list(p.token_ids),
            "tokens": [token_text(tokenizer, t) for t in p.token_ids],
            "entropies": [_finite(e) for e in p.entropies],
            "thresholds": [_finite(x) for x in (p.thresholds or [None] * n)],
            "token_logprobs": [_finite(x) for x in (p.token_logprobs or [None] * n)],
            "branch_steps": list(p.branch_steps), "logprob": _finite(p.logprob), "score": _finite(p.score),
            "finished": p.finished, "stage": p.stage}


def config_summary(cfg) -> str:
    ent = f"top-{cfg.entropy_top_k}" if cfg.entropy_top_k else "full-vocabulary"
    return (f"policy {cfg.policy} · M = {cfg.max_paths_per_prompt} · T = {cfg.temperature} · {ent} entropy · "
            f"threshold max(theta = {cfg.theta}, p{cfg.q:g} of the prompt's history), {cfg.initial_threshold} "
            f"while empty · max {cfg.max_new_tokens} new tokens")


def view_data(out, *, tokenizer=None, prompts=None, title: Optional[str] = None) -> dict:
    """Everything the page draws, as JSON-able data: per prompt its text, its paths (each
    with per-token text, entropy, threshold and log-probability) and its answer.

    tokenizer: decodes tokens (default: the one generate() used, out.tokenizer; without
        one, tokens show as [id]). prompts: the prompts' texts (default: out.prompt_ids
        decoded with the tokenizer, when both are there).
    """
    tok = tokenizer if tokenizer is not None else getattr(out, "tokenizer", None)
    items = []
    for i, r in enumerate(out.results):
        if prompts is not None:
            text = prompts[i]
        elif getattr(out, "prompt_ids", None) is not None and tok is not None:
            text = tok.decode(out.prompt_ids[i])
        else:
            text = None
        answer = next((j for j, p in enumerate(r.paths) if p is r.answer), None)
        items.append({"index": i, "text": text, "branch_events": int(r.branch_events),
                      "mean_entropy": _finite(r.mean_entropy), "answer": answer,
                      "paths": [path_view(p, tok, j) for j, p in enumerate(r.paths)]})
    m = out.metrics
    stats = (f"{m.tokens_generated} tokens generated on {sum(m.paths_per_prompt)} paths; "
             f"{m.branch_events} branch events; {m.steps} decode steps")
    return {"title": title or "EAGer tree", "config": config_summary(out.config) if out.config else "",
            "stats": stats, "ramp": [list(c) for c in RAMP], "prompts": items}


def page(body: str, *, title: str, data: Optional[dict] = None, script: str = "") -> str:
    """A viewer page: the stylesheet and renderer inline, `body` in it, and, with `data`,
    the view drawn from it on load (into the element #view)."""
    css = (_ASSETS / "viewer.css").read_text(encoding="utf-8")
    js = (_ASSETS / "viewer.js").read_text(encoding="utf-8")
    boot = ""
    if data is not None:  # "</" escaped: the data cannot close the script element
        boot = ("renderEager(JSON.parse(" + json.dumps(json.dumps(data)).replace("</", "<\\/")
                + "), document.getElementById('view'));")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{css}</style></head><body>{body}<script>{js}\n{boot}\n{script}</script></body></html>")


def to_html(out, path=None, *, tokenizer=None, prompts=None, title: Optional[str] = None) -> str:
    """The page for an EagerOutput (see the module docstring); written to `path` if given,
    returned either way. tokenizer and prompts as in view_data."""
    data = view_data(out, tokenizer=tokenizer, prompts=prompts, title=title)
    doc = page("<div id='view'></div>", title=data["title"], data=data)
    if path is not None:
        _FilePath(path).write_text(doc, encoding="utf-8")
    return doc


def plot_entropy(out, path, *, max_prompts: int = 6, dpi: int = 120):
    """Entropy against position for every path, one panel per prompt (the first
    `max_prompts`): thin lines for the paths, the answer path thick, the answer path's
    threshold in force as a dashed line, branch points as dots. Saved to `path`; returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = out.results[:max_prompts]
    n = len(results)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 3.4 * rows), squeeze=False)
    for i, r in enumerate(results):
        ax = axes[i // cols][i % cols]
        for j, p in enumerate(r.paths):
            is_answer = p is r.answer
            ax.plot(range(len(p.entropies)), p.entropies, lw=2.2 if is_answer else 0.8,
                    alpha=1.0 if is_answer else 0.45, color="#b2182b" if is_answer else "#4d4d4d",
                    zorder=3 if is_answer else 2, label="answer path" if is_answer else None)
            if p.branch_steps:
                ax.scatter(p.branch_steps, [p.entropies[t] for t in p.branch_steps], s=16, color="#1f4e9a",
                           zorder=4, label="branch point")
        if r.answer is not None and r.answer.thresholds:
            ax.step(range(len(r.answer.thresholds)), r.answer.thresholds, where="mid", ls="--", color="#1f4e9a",
                    lw=1.2, label="threshold (answer path)")
        ax.set_title(f"prompt {i}: {len(r.paths)} paths, {r.branch_events} branch events", fontsize=10)
        ax.set_xlabel("generated token position")
        ax.set_ylabel("entropy (nats)")
        ax.grid(alpha=0.25)
        handles, labels = ax.get_legend_handles_labels()
        seen = dict(zip(labels, handles))
        ax.legend(seen.values(), seen.keys(), fontsize=8, loc="best", framealpha=0.85)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
