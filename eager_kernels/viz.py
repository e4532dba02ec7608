"""Pictures of an EAGer result: the tree as one self-contained HTML page, and an entropy plot.

    out = generate(model, prompts, config, tokenizer=tok)
    out.to_html("tree.html")          # or viz.to_html(out, "tree.html")
    out.plot("entropy.png")           # or viz.plot_entropy(out, "entropy.png")

The page draws, per prompt, the paths as a tree: tokens that paths share are drawn once,
and the tree splits (◆) where a path branched. Every token is coloured by the entropy of the
distribution it came from, on one scale for the page (legend at the top); a token whose
entropy exceeded the threshold in force is outlined. Hovering a token shows its entropy,
the threshold, its probability and its step; hovering a split shows the tokens the
children took with their probabilities; hovering a path's label lights its tokens (so does
opening the file as tree.html#path=N). Each
path ends in a label with its score (log-probability per token), its finish reason and
its length; the answer path is starred. Everything is inline: the file opens offline.
"""
from __future__ import annotations

import html
import math
from pathlib import Path as _FilePath
from typing import Optional

# YlOrRd, light to dark: low entropy pale, high entropy deep red.
_RAMP = ((255, 255, 204), (254, 217, 118), (253, 141, 60), (227, 26, 28), (128, 0, 38))


def entropy_color(value: float, vmax: float) -> str:
    """The page's colour for an entropy value on the scale [0, vmax] (hex)."""
    x = 0.0 if vmax <= 0 else min(max(value / vmax, 0.0), 1.0)
    pos = x * (len(_RAMP) - 1)
    i = min(int(pos), len(_RAMP) - 2)
    f = pos - i
    rgb = [round(a + (b - a) * f) for a, b in zip(_RAMP[i], _RAMP[i + 1])]
    return "#%02x%02x%02x" % tuple(rgb)


def _text_color(value: float, vmax: float) -> str:
    return "#fff" if vmax > 0 and value / vmax > 0.62 else "#111"


class _Node:
    __slots__ = ("token", "step", "entropy", "threshold", "logprob", "children", "paths", "ends")

    def __init__(self, token, step, entropy, threshold, logprob):
        self.token, self.step = token, step
        self.entropy, self.threshold, self.logprob = entropy, threshold, logprob
        self.children = {}  # token id -> _Node, in the order the paths reach them
        self.paths = []  # indices of the paths through this token
        self.ends = []  # indices of the paths that end here


def build_tree(paths) -> _Node:
    """A trie of the paths' tokens: the shared prefixes once, a node with several children
    at each split. The root stands for the prompt."""
    root = _Node(None, -1, 0.0, 0.0, 0.0)
    for idx, p in enumerate(paths):
        node = root
        root.paths.append(idx)
        thresholds = p.thresholds or [float("nan")] * len(p.token_ids)
        logprobs = p.token_logprobs or [float("nan")] * len(p.token_ids)
        for t, tok in enumerate(p.token_ids):
            child = node.children.get(tok)
            if child is None:
                child = node.children[tok] = _Node(tok, t, p.entropies[t], thresholds[t], logprobs[t])
            child.paths.append(idx)
            node = child
        node.ends.append(idx)
    return root


def count_splits(root: _Node) -> int:
    """Nodes with more than one child: the branch points the page marks."""
    n = 1 if len(root.children) > 1 else 0
    return n + sum(count_splits(c) for c in root.children.values())


def _token_text(tokenizer, tok: int) -> str:
    if tokenizer is None:
        return f"[{tok}]"
    try:
        text = tokenizer.decode([tok], skip_special_tokens=False)
    except TypeError:
        text = tokenizer.decode([tok])
    return text.replace("\n", "⏎") if text else "∅"


def _fmt(x: float, spec: str = ".2f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


class _Page:
    def __init__(self, tokenizer, vmax):
        self.tok, self.vmax = tokenizer, vmax

    def token(self, node: _Node) -> str:
        text = _token_text(self.tok, node.token)
        p = math.exp(node.logprob) if not math.isnan(node.logprob) else float("nan")
        hot = not math.isnan(node.threshold) and node.entropy > node.threshold
        tip = (f"entropy {node.entropy:.3f} nats (threshold {_fmt(node.threshold, '.3f')})\n"
               f"p {_fmt(p, '.3f')} (log-prob {_fmt(node.logprob, '.3f')})\nstep {node.step} · token id {node.token}")
        cls = "tok hot" if hot else "tok"
        return (f'<span class="{cls}" style="background:{entropy_color(node.entropy, self.vmax)};'
                f'color:{_text_color(node.entropy, self.vmax)}" data-p=" {" ".join(map(str, node.paths))} " '
                f'title="{html.escape(tip)}">{html.escape(text)}</span>')

    def leaf(self, idx: int, path, answer_idx: Optional[int]) -> str:
        star = "★ answer · " if idx == answer_idx else ""
        label = (f"{star}path {idx} · score {path.score:.3f} · {path.finished} · {path.num_tokens} tokens"
                 + (f" · {path.stage}" if path.stage != "init" else ""))
        tip = f"log-probability {path.logprob:.3f}; branched at steps {path.branch_steps or 'none'}"
        cls = "leaf answer" if idx == answer_idx else "leaf"
        return f'<span class="{cls}" data-path="{idx}" title="{html.escape(tip)}">{html.escape(label)}</span>'

    def fork(self, node: _Node, paths) -> str:
        kids = list(node.children.values())
        cands = ", ".join(f"{_token_text(self.tok, k.token)!r} p {_fmt(math.exp(k.logprob), '.3f')}"
                          for k in kids if not math.isnan(k.logprob))
        first = kids[0]
        tip = (f"branch at step {first.step}: entropy {first.entropy:.3f} > threshold "
               f"{_fmt(first.threshold, '.3f')}\nchildren: {cands}")
        return f'<div class="fork" title="{html.escape(tip)}">◆ branch: {len(kids)} ways at step {first.step}</div>'

    def segment(self, node: _Node, paths, answer_idx) -> str:
        """Tokens from `node` down to the next split or end, then the split's subtrees."""
        toks, leaves = [], []
        while True:
            toks.append(self.token(node))
            leaves += [self.leaf(i, paths[i], answer_idx) for i in node.ends]
            if len(node.children) != 1 or node.ends:
                break
            node = next(iter(node.children.values()))
        body = f'<div class="seg">{"<wbr>".join(toks)}{"".join(leaves)}</div>'  # <wbr>: lines break between tokens
        if len(node.children) > 1 or (node.children and node.ends):
            kids = "".join(f'<div class="kid">{self.segment(k, paths, answer_idx)}</div>'
                           for k in node.children.values())
            fork = self.fork(node, paths) if len(node.children) > 1 else ""
            return f'{body}{fork}<div class="kids">{kids}</div>'
        return body


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:1.2em 2em;color:#111;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .3em} h2{font-size:1.05em;margin:1.4em 0 .3em}
.meta{color:#555;margin:.2em 0}
.legend{display:flex;flex-wrap:wrap;align-items:center;gap:.6em;margin:.6em 0 1em}
.legend span{white-space:nowrap}
.bar{width:260px;height:14px;border:1px solid #999;background:linear-gradient(90deg,%s)}
.prompt{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em .9em;margin:.6em 0}
.ptext{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;color:#333;margin:.3em 0 .6em}
.seg{font-family:ui-monospace,Menlo,Consolas,monospace;line-height:1.9}
.tok{white-space:pre;padding:1px 0;border-radius:2px;cursor:default}
.tok.hot{outline:1.5px solid #1f4e9a;outline-offset:-1px}
.tok.on{box-shadow:0 0 0 2px #1f77b4 inset}
.kids{margin-left:1.1em;border-left:2px solid #bbb;padding-left:.7em}
.kid{margin:.15em 0}
.fork{color:#1f4e9a;font-size:.85em;margin:.1em 0 0 .2em;cursor:help}
.leaf{display:inline-block;margin-left:.6em;font:12px system-ui,sans-serif;color:#444;background:#eee;
 border-radius:9px;padding:0 .5em;cursor:pointer}
.leaf.answer{background:#ffe9a8;color:#111;font-weight:600}
"""

_JS = r"""
document.querySelectorAll('.leaf').forEach(function(leaf){
  var box = leaf.closest('.prompt'), key = ' ' + leaf.dataset.path + ' ';
  function mark(on){ box.querySelectorAll('.tok').forEach(function(t){
    if (t.dataset.p.indexOf(key) >= 0) t.classList.toggle('on', on); }); }
  leaf.addEventListener('mouseenter', function(){ mark(true); });
  leaf.addEventListener('mouseleave', function(){ mark(false); });
  leaf.mark = mark;
});
var m = /^#path=(\d+)$/.exec(location.hash);  // a link to file.html#path=N lights path N
if (m) document.querySelectorAll('.leaf[data-path="' + m[1] + '"]').forEach(function(l){ l.mark(true); });
"""


def to_html(out, path=None, *, tokenizer=None, prompts=None, title: Optional[str] = None) -> str:
    """The page for an EagerOutput (see the module docstring); written to `path` if given.

    tokenizer: decodes tokens (default: the one generate() used, out.tokenizer; without one,
        tokens show as [id]). prompts: the prompts' texts (default: out.prompt_ids decoded).
    """
    tok = tokenizer if tokenizer is not None else getattr(out, "tokenizer", None)
    cfg = out.config
    all_paths = [p for r in out.results for p in r.paths]
    values = [e for p in all_paths for e in p.entropies] + [x for p in all_paths for x in p.thresholds
                                                               if not math.isnan(x)]
    vmax = max([1.0] + values)
    vmax = math.ceil(vmax * 2) / 2
    page = _Page(tok, vmax)
    ramp = ",".join(entropy_color(vmax * i / 8, vmax) for i in range(9))
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title or 'EAGer tree')}</title>",
             f"<style>{_CSS % ramp}</style></head><body>",
             f"<h1>{html.escape(title or 'EAGer tree')}</h1>"]
    if cfg is not None:
        ent = f"top-{cfg.entropy_top_k}" if cfg.entropy_top_k else "full-vocabulary"
        parts.append(f"<div class='meta'>policy {cfg.policy} · M = {cfg.max_paths_per_prompt} · T = "
                     f"{cfg.temperature} · {ent} entropy · threshold max(theta = {cfg.theta}, p{cfg.q:g} of the "
                     f"prompt's history), {cfg.initial_threshold} while empty · max {cfg.max_new_tokens} new tokens"
                     "</div>")
    m = out.metrics
    parts.append(f"<div class='meta'>{m.tokens_generated} tokens generated on {sum(m.paths_per_prompt)} paths; "
                 f"{m.branch_events} branch events; {m.steps} decode steps</div>")
    parts.append(f"<div class='legend'><span>entropy (nats): 0</span><div class='bar'></div><span>{vmax:g}</span>"
                 "<span><span class='tok hot' style='background:#fff'>&nbsp;outlined&nbsp;</span> entropy above the "
                 "threshold in force</span><span>◆ branch point</span>"
                 "<span>★ answer (best log-probability per token)</span></div>")
    for i, r in enumerate(out.results):
        if prompts is not None:
            ptext = prompts[i]
        elif getattr(out, "prompt_ids", None) is not None and tok is not None:
            ptext = tok.decode(out.prompt_ids[i])
        else:
            ptext = None
        answer_idx = next((j for j, p in enumerate(r.paths) if p is r.answer), None)
        thr = [x for p in r.paths for x in p.thresholds if not math.isnan(x)]
        thr_note = f"threshold {min(thr):.3f} to {max(thr):.3f} nats" if thr else "thresholds not recorded"
        parts.append(f"<div class='prompt' data-prompt='{i}'><h2>Prompt {i}</h2>")
        if ptext is not None:
            parts.append(f"<div class='ptext'>{html.escape(ptext)}</div>")
        parts.append(f"<div class='meta'>{len(r.paths)} paths · {r.branch_events} branch events · {thr_note} · "
                     f"mean entropy {r.mean_entropy:.3f}</div>")
        for stage in dict.fromkeys(p.stage for p in r.paths):  # a budget stage is a fresh tree
            idx = [j for j, p in enumerate(r.paths) if p.stage == stage]
            sub = [r.paths[j] for j in idx]
            root = build_tree(sub)
            if len(dict.fromkeys(p.stage for p in r.paths)) > 1:
                parts.append(f"<div class='meta'>stage {html.escape(stage)}</div>")
            # numbering over the prompt's paths: remap the subtree's indices
            remap = {k: j for k, j in enumerate(idx)}
            _renumber(root, remap)
            kids = list(root.children.values())
            body = "".join(f"<div class='kid'>{page.segment(k, r.paths, answer_idx)}</div>" for k in kids)
            if len(kids) > 1:
                body = page.fork(root, r.paths) + f"<div class='kids'>{body}</div>"
            parts.append(body)
        parts.append("</div>")
    parts.append(f"<script>{_JS}</script></body></html>")
    doc = "".join(parts)
    if path is not None:
        _FilePath(path).write_text(doc, encoding="utf-8")
    return doc


def _renumber(node: _Node, remap: dict) -> None:
    node.paths = [remap[i] for i in node.paths]
    node.ends = [remap[i] for i in node.ends]
    for c in node.children.values():
        _renumber(c, remap)


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
            x = range(len(p.entropies))
            ax.plot(x, p.entropies, lw=2.2 if is_answer else 0.8, alpha=1.0 if is_answer else 0.45,
                    color="#b2182b" if is_answer else "#4d4d4d", zorder=3 if is_answer else 2,
                    label="answer path" if is_answer else None)
            if p.branch_steps:
                ax.scatter(p.branch_steps, [p.entropies[t] for t in p.branch_steps], s=16, color="#1f4e9a",
                           zorder=4, label="branch point" if j == 0 else None)
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
