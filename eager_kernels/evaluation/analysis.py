"""Uncertainty and where-branching-happens figures computed from the evaluation's records.

- bootstrap_ci: 95% percentile bootstrap interval of a mean over problems (resampling
  problems with replacement, a fixed seed: the same records give the same interval).
- paired: one method against another on the same problems (EAGer-init against parallel
  sampling is the paper's headline): token ratio and Pass@k difference with paired
  bootstrap intervals, the discordant problems and an exact two-sided sign test on them.
- branching: mean entropy at each generated position, the positions of branch events,
  how many problems' trees hit the cap M.
"""
from __future__ import annotations

from math import comb
from typing import Optional

import numpy as np

B_DEFAULT = 2000
ACC_KEYS = ("pass_at_k", "pass_rate", "answer_acc", "majority_acc")
_RECORD_KEY = {"pass_at_k": "pass_at_k", "pass_rate": "pass_rate", "answer_acc": "answer_correct",
               "majority_acc": "majority_correct"}


def _resample_index(n: int, b: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(b, n))


def bootstrap_ci(values, *, b: int = B_DEFAULT, seed: int = 0, level: float = 0.95) -> tuple:
    """(low, high) of the mean of `values` (one per problem): percentile bootstrap."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("bootstrap_ci: expected a non-empty 1-D list of per-problem values")
    means = x[_resample_index(x.size, b, seed)].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def per_problem(records: list, key: str) -> list:
    """The per-problem values of a summary column (ACC_KEYS) in record order."""
    rk = _RECORD_KEY[key]
    if rk == "majority_correct":  # records written before majority voting count as wrong
        return [float(bool(r.get(rk, False))) for r in records]
    return [float(r[rk]) for r in records]


def accuracy_cis(records: list, *, b: int = B_DEFAULT, seed: int = 0) -> dict:
    """{key + "_ci": (low, high)} for every accuracy column."""
    if not records:
        return {}
    return {k + "_ci": bootstrap_ci(per_problem(records, k), b=b, seed=seed) for k in ACC_KEYS}


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided binomial sign test p-value of wins against losses (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    p = 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, p)


def paired(a_records: list, b_records: list, *, b: int = B_DEFAULT, seed: int = 0) -> dict:
    """Method A against method B on the problems both completed (matched by prompt_id).

    tokens_ratio: sum of A's per-problem tokens / B's, with a paired bootstrap interval;
    pass_at_k_diff: A's Pass@k - B's (points of fraction), interval likewise; a_only /
    b_only: problems only A / only B solved (Pass@k), sign_p: the exact sign test on them.
    """
    bmap = {r["prompt_id"]: r for r in b_records}
    pairs = [(r, bmap[r["prompt_id"]]) for r in a_records if r["prompt_id"] in bmap]
    if not pairs:
        return {"problems": 0}
    ta = np.array([r["tokens"] for r, _ in pairs], dtype=np.float64)
    tb = np.array([s["tokens"] for _, s in pairs], dtype=np.float64)
    pa = np.array([bool(r["pass_at_k"]) for r, _ in pairs], dtype=np.float64)
    pb = np.array([bool(s["pass_at_k"]) for _, s in pairs], dtype=np.float64)
    idx = _resample_index(len(pairs), b, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = ta[idx].sum(axis=1) / tb[idx].sum(axis=1)
    diffs = (pa[idx] - pb[idx]).mean(axis=1)
    a_only = int(((pa == 1) & (pb == 0)).sum())
    b_only = int(((pa == 0) & (pb == 1)).sum())
    return {
        "problems": len(pairs),
        "tokens_a": int(ta.sum()), "tokens_b": int(tb.sum()),
        "tokens_ratio": float(ta.sum() / tb.sum()) if tb.sum() else None,
        "tokens_ratio_ci": (float(np.nanquantile(ratios, 0.025)), float(np.nanquantile(ratios, 0.975)))
        if tb.sum() else None,
        "fewer_tokens_problems": int((ta < tb).sum()),
        "pass_at_k_a": float(pa.mean()), "pass_at_k_b": float(pb.mean()),
        "pass_at_k_diff": float((pa - pb).mean()),
        "pass_at_k_diff_ci": (float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))),
        "a_only": a_only, "b_only": b_only, "both": int(((pa == 1) & (pb == 1)).sum()),
        "sign_p": sign_test(a_only, b_only),
    }


def branch_positions(records: list) -> list:
    """Generated positions of the branch events of the records' trees (one per event: paths
    born of one event share its position and the tokens before it)."""
    out = []
    for r in records:
        seen = set()
        for p in r["paths"]:
            for step, pre in zip(p.get("branch_steps", []), p.get("branch_prefixes", [])):
                if (p.get("stage"), step, pre) not in seen:
                    seen.add((p.get("stage"), step, pre))
                    out.append(int(step))
    return out


def entropy_profile(records: list, max_len: Optional[int] = None) -> dict:
    """Mean entropy (and paths still generating) at each generated position over all paths
    of the records: {"mean": [...], "paths": [...]}; positions with no path are dropped."""
    lists = [p["entropies"] for r in records for p in r["paths"] if p.get("entropies")]
    if not lists:
        return {"mean": [], "paths": []}
    n = max(len(e) for e in lists) if max_len is None else max_len
    s = np.zeros(n)
    c = np.zeros(n, dtype=np.int64)
    for e in lists:
        e = np.asarray(e[:n], dtype=np.float64)
        s[: e.size] += e
        c[: e.size] += 1
    keep = c > 0
    return {"mean": (s[keep] / c[keep]).round(4).tolist(), "paths": c[keep].tolist()}


def branching(records: list, max_paths: int, theta: Optional[float] = None) -> dict:
    """Where one method branched: events, their positions (quartiles), problems with more
    than one path and with M paths or more (for parallel sampling: all, by construction;
    for EAGer: the trees that hit the cap), and (with theta) the share of generated
    positions above theta."""
    if not records:
        return {"problems": 0}
    pos = branch_positions(records)
    ent = [e for r in records for p in r["paths"] for e in p.get("entropies", [])]
    out = {
        "problems": len(records),
        "branch_events": len(pos),
        "branch_position_quartiles": [float(q) for q in np.quantile(pos, [0.25, 0.5, 0.75])] if pos else None,
        "problems_at_cap": sum(1 for r in records if r["n_paths"] >= max_paths),
        "problems_branched": sum(1 for r in records if r["n_paths"] > 1),
        "mean_entropy": float(np.mean(ent)) if ent else None,
        "path_tokens_mean": float(np.mean([p["tokens"] for r in records for p in r["paths"]])),
        "finished_eos": sum(p["finished"] == "eos" for r in records for p in r["paths"]),
        "paths": sum(len(r["paths"]) for r in records),
    }
    if theta is not None and ent:
        out["share_above_theta"] = float(np.mean(np.asarray(ent) > theta))
    return out
