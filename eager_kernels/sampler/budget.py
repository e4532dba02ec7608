"""Sharing the budget across prompts (docs/sampler.md#budget-across-prompts; EAGer-adapt and
full EAGer are the paper's, arXiv:2510.11170).

The budget is counted in sequences (paths). After EAGer-init each prompt has used
`paths_used[i] <= M` paths; the saved budget is sum(M - paths_used[i]).

- EAGer-adapt (no labels): the saved budget is shared equally among the prompts that hit the
  cap M, at most adapt_factor * M (3M) extra paths each.
- Full EAGer (labels, e.g. a verifier in RL training): the saved budget is shared equally
  among the prompts whose answers are all wrong, at most M extra paths each.
- Entropy-scaled (practitioner variant): a prompt's mean entropy sets its count (above
  `high`: 2 x base, below `low`: base / 2, else base); then the counts are scaled so that
  they sum to `target`.

"Shared equally" means: every eligible prompt gets floor(saved / n); the remainder goes one
path each to the first eligible prompts (prompt order); no prompt exceeds its cap, and what
a capped prompt cannot take is passed on to the others. Every function returns a list of
ints, one per prompt, and touches no model.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np


def _share_equally(budget: int, eligible: Sequence[bool], cap: int) -> list:
    extra = [0] * len(eligible)
    open_ = [i for i, ok in enumerate(eligible) if ok]
    while budget > 0 and open_:
        share, rest = divmod(budget, len(open_))
        given = 0
        for rank, i in enumerate(open_):
            want = share + (1 if rank < rest else 0)
            take = min(want, cap - extra[i])
            extra[i] += take
            given += take
        budget -= given
        open_ = [i for i in open_ if extra[i] < cap]
        if given == 0:
            break
    return extra


def saved_budget(paths_used: Sequence[int], max_paths: int) -> int:
    """sum(M - used) over prompts (prompts over M count as 0 saved)."""
    return int(sum(max(0, max_paths - int(u)) for u in paths_used))


def entropy_scaled_allocation(mean_entropy: Sequence[float], base: int, target: int, *,
                              high: Optional[float] = None, low: Optional[float] = None) -> list:
    """Counts per prompt from each prompt's mean entropy, scaled to sum to `target`.

    high / low default to the 2/3 and 1/3 quantiles of mean_entropy. The scaling rounds by
    the largest remainder (ties to the earlier prompt), so the counts sum to exactly
    `target`.
    """
    h = np.asarray(mean_entropy, dtype=np.float64)
    if h.ndim != 1:
        raise ValueError("mean_entropy: expected one value per prompt")
    if base < 1 or target < 0:
        raise ValueError(f"base must be >= 1 and target >= 0, got base={base}, target={target}")
    if h.size == 0:
        return []
    if high is None:
        high = float(np.quantile(h, 2 / 3))
    if low is None:
        low = float(np.quantile(h, 1 / 3))
    counts = np.where(h > high, 2 * base, np.where(h < low, max(1, base // 2), base)).astype(np.float64)
    exact = counts * (target / counts.sum())
    out = np.floor(exact).astype(np.int64)
    rest = int(target - out.sum())
    order = sorted(range(h.size), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[:rest]:
        out[i] += 1
    return [int(v) for v in out]


def allocate_budget(paths_used: Sequence[int], max_paths: int, *, mode: str = "adapt",
                    correct: Optional[Sequence[bool]] = None,
                    verifier: Optional[Callable] = None, results=None,
                    adapt_factor: int = 3,
                    mean_entropy: Optional[Sequence[float]] = None, base: Optional[int] = None,
                    target: Optional[int] = None, high: Optional[float] = None,
                    low: Optional[float] = None) -> list:
    """Extra paths per prompt after EAGer-init.

    Args:
        paths_used: paths each prompt used in EAGer-init.
        max_paths: M.
        mode: "adapt" (prompts that hit M share the saved budget, at most adapt_factor*M
            each), "full" (prompts with no correct path share it, at most M each) or
            "entropy" (entropy_scaled_allocation of the saved budget, or of `target`).
        correct: mode "full": whether any path of prompt i is right; or give
            verifier(prompt_index, path) -> bool together with `results` (PromptResults).
        mean_entropy, base, target, high, low: mode "entropy" (base defaults to M,
            target to the saved budget).
    """
    used = [int(u) for u in paths_used]
    saved = saved_budget(used, max_paths)
    if mode == "adapt":
        return _share_equally(saved, [u >= max_paths for u in used], adapt_factor * max_paths)
    if mode == "full":
        if correct is None:
            if verifier is None or results is None:
                raise ValueError("mode='full' needs correct=[...] or verifier= with results=")
            correct = [any(bool(verifier(i, p)) for p in r.paths) for i, r in enumerate(results)]
        if len(correct) != len(used):
            raise ValueError("correct: expected one flag per prompt")
        return _share_equally(saved, [not c for c in correct], max_paths)
    if mode == "entropy":
        if mean_entropy is None:
            if results is None:
                raise ValueError("mode='entropy' needs mean_entropy=[...] or results=")
            mean_entropy = [r.mean_entropy for r in results]
        return entropy_scaled_allocation(mean_entropy, base or max_paths,
                                         saved if target is None else target, high=high, low=low)
    raise ValueError(f"mode: expected 'adapt', 'full' or 'entropy', got {mode!r}")
