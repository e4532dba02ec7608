"""The pure functions of one EAGer step over the path table (no state, no host reads).

scheduler.Scheduler.step calls them in this order:

1. `child_counts`: how many children each active row opens (1, or more on a branch), with
   the seed policy's divisor and the paper policy's cap M counting finished paths;
2. `candidates`: the children of the active rows (their tokens, log-probabilities and
   keys), then the finished rows, as one candidate list;
3. `keep_and_order`: which candidates stay (cap M, or pruning per prompt by a segmented
   rank of cumulative log-probability) and their order, active first.

Every tensor is indexed by row or by group (prompt slot); per-group settings come as
tensors indexed by group (`Groups`), so prompts of different requests, with different
settings and at different steps of their trees, share one step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .keys import child_keys


def group_count(grp: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Entries per group; unlike torch.bincount, no host sync on CUDA (the size is known)."""
    out = torch.zeros(num_groups, dtype=torch.int64, device=grp.device)
    return out.scatter_add_(0, grp, torch.ones_like(grp))


def segmented_rank(score: torch.Tensor, grp: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Rank of each entry within its group by descending score (ties: lower index first)."""
    o1 = torch.argsort(score, descending=True, stable=True)
    o2 = torch.argsort(grp[o1], stable=True)
    order = o1[o2]
    counts = group_count(grp, num_groups)
    starts = torch.cumsum(counts, 0) - counts
    rank_sorted = torch.arange(score.numel(), device=score.device) - starts[grp[order]]
    rank = torch.empty_like(rank_sorted)
    rank[order] = rank_sorted
    return rank


@dataclass
class Groups:
    """Per-group (prompt slot) settings and state, int64 / bool tensors [G] on the device."""

    cap: torch.Tensor  # M: the most paths of the prompt's tree
    keep: torch.Tensor  # the most rows kept per step: min(M, prune_to) or M
    prunes: torch.Tensor  # bool: the seed policy's pruning (prune_to set) instead of cap M
    divisor: torch.Tensor  # the seed policy's branch_divisor, or -1
    branches: torch.Tensor  # num_branches: children on a branch
    step: torch.Tensor  # the step of the prompt's tree (its column in the table)
    length: torch.Tensor  # max_new_tokens
    some_prune: bool  # any group prunes (host-side: no device read to know)
    some_cap: bool  # any group is held to cap M

    @property
    def num(self) -> int:
        return self.cap.shape[0]


def child_counts(branch: torch.Tensor, stopped: torch.Tensor, nbr: torch.Tensor, agrp: torch.Tensor,
                 all_grp: torch.Tensor, g: Groups) -> torch.Tensor:
    """Extra children each active row opens (0 where it does not branch), int64 [R].
    branch, stopped, nbr: the active rows'; agrp: their groups; all_grp: every row's
    group (finished rows count toward M)."""
    div, nmax = g.divisor[agrp], g.branches[agrp]
    nk = torch.where(div >= 0, torch.clamp(torch.clamp(div // (1 + nbr), max=nmax), min=1), nmax)
    req = torch.where(branch & ~stopped, nk - 1, torch.zeros_like(nk))
    if g.some_cap:
        # Cap M counting finished paths: grant new paths in row order within a prompt.
        live = group_count(all_grp, g.num)
        room = (g.cap - live).clamp_min(0)
        member = agrp[None, :] == torch.arange(g.num, device=agrp.device)[:, None]
        before = (member * req[None, :]).cumsum(1).gather(0, agrp[None, :])[0] - req
        capped = torch.minimum(req, (room[agrp] - before).clamp_min(0))
        req = torch.where(g.prunes[agrp], req, capped)
    return req


@dataclass
class Candidates:
    """The children of the active rows ([R * width], in row order, rank order within a
    row), then the finished rows [F]."""

    src: torch.Tensor  # the row each candidate comes from
    is_new: torch.Tensor  # a child (a new token) rather than a finished row
    valid: torch.Tensor
    token: torch.Tensor  # the child's token (-1 for finished rows)
    logprob: torch.Tensor  # float64: the child's token log-probability (0 for finished rows)
    cum: torch.Tensor  # float64: cumulative log-probability
    grp: torch.Tensor
    key: torch.Tensor  # the child's random key
    step: torch.Tensor  # the step of the candidate's tree
    eos: torch.Tensor  # a child that ended on an EOS id
    finished: torch.Tensor  # a finished row, an EOS child, or a child at its last step


def candidates(res, logits: torch.Tensor, extra: torch.Tensor, width: int, rows: int, total: int, cum, grp,
               pkey, g: Groups, eos_of) -> Candidates:
    """res: the step's eager_step result of the R active rows; extra: child_counts;
    width: the most children a row may open; eos_of(token, grp) -> bool of the children
    that are EOS for their prompt."""
    R, N, device = rows, total, logits.device
    arange_j = torch.arange(width, device=device)
    branched = extra > 0
    nk = extra + 1
    lse = logits.gather(1, res.cand_ids[:, :1]).float()[:, 0] - res.cand_logprobs[:, 0]
    tok0 = torch.where(branched, res.cand_ids[:, 0], res.token)
    lp0 = torch.where(branched | (res.token == res.cand_ids[:, 0]), res.cand_logprobs[:, 0],
                      logits.gather(1, res.token[:, None]).float()[:, 0] - lse)
    ctok = res.cand_ids[:, :width].clone()
    clp = res.cand_logprobs[:, :width].clone()
    ctok[:, 0] = tok0
    clp[:, 0] = lp0
    cvalid = arange_j[None, :] < nk[:, None]
    F = N - R
    src = torch.cat([torch.arange(R, device=device).repeat_interleave(width), torch.arange(R, N, device=device)])
    is_new = torch.cat([cvalid.reshape(-1), torch.zeros(F, dtype=torch.bool, device=device)])
    valid = torch.cat([cvalid.reshape(-1), torch.ones(F, dtype=torch.bool, device=device)])
    new_tok = torch.cat([ctok.reshape(-1), torch.full((F,), -1, dtype=torch.int64, device=device)])
    add_lp = torch.cat([clp.reshape(-1).double(), torch.zeros(F, dtype=torch.float64, device=device)])
    cgrp = grp[src]
    cstep = g.step[cgrp]
    child_rank = torch.cat([arange_j.repeat(R), torch.zeros(F, dtype=torch.int64, device=device)])
    c_eos = is_new & eos_of(new_tok, cgrp)
    cfin = ~is_new | c_eos | (cstep + 1 >= g.length[cgrp])
    return Candidates(src=src, is_new=is_new, valid=valid, token=new_tok, logprob=add_lp, cum=cum[src] + add_lp,
                      grp=cgrp, key=child_keys(pkey[src], cstep, child_rank), step=cstep, eos=c_eos,
                      finished=cfin)


def keep_and_order(c: Candidates, g: Groups) -> tuple:
    """(keep, order): the candidates kept (cap M: every valid one; pruning: the best
    `keep` of each prompt by cumulative log-probability), and an order that puts the kept
    active ones first, then the kept finished ones, then the rest (stable)."""
    keep = c.valid
    if g.some_prune:
        score = torch.where(c.valid, c.cum, torch.full_like(c.cum, -float("inf")))
        rank = segmented_rank(score, c.grp, g.num)
        keep = torch.where(g.prunes[c.grp], c.valid & (rank < g.keep[c.grp]), c.valid)
    key = torch.where(keep, c.finished.to(torch.int64), torch.full_like(c.src, 2))
    return keep, torch.argsort(key, stable=True)
