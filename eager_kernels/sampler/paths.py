"""PathTable: every path of every prompt in the running batch, one row each, on the device.

Rows 0..R-1 are the active paths, in the engine cache's row order; rows R..N-1 are
finished paths still held (they count toward M in the paper policy and compete in
pruning in the seed policy). Per row: its generated tokens, per token its entropy, the
threshold in force and its log-probability, branch marks, cumulative log-probability,
branch count, length, group (the prompt's slot), random key (keys.py), EOS and stopped
flags. Column j of the token table is step j of the row's own tree: trees that joined
the batch at different steps write different columns in the same step.

The operations are named: `add_roots` (a prompt's first path), `select` (keep, fork,
drop and order rows by a source index), `write` (the step's new tokens), `remove` (the
rows of prompts that left), `rows_of` (a finished prompt's paths for the host).
"""
from __future__ import annotations

import torch


class PathTable:
    def __init__(self, device: torch.device, width: int = 1):
        self.device = device
        self.R = 0  # active rows
        i64 = dict(dtype=torch.int64, device=device)
        self.tok = torch.full((0, width), -1, **i64)
        self.rec = torch.zeros((0, width, 3), dtype=torch.float32, device=device)  # entropy, threshold, logprob
        self.brf = torch.zeros((0, width), dtype=torch.bool, device=device)
        self.cum = torch.zeros(0, dtype=torch.float64, device=device)
        self.nbr = torch.zeros(0, **i64)
        self.length = torch.zeros(0, **i64)
        self.grp = torch.zeros(0, **i64)
        self.pkey = torch.zeros(0, **i64)
        self.eosf = torch.zeros(0, dtype=torch.bool, device=device)
        self.stopped = torch.zeros(0, dtype=torch.bool, device=device)

    @property
    def N(self) -> int:
        return self.tok.shape[0]

    @property
    def width(self) -> int:
        return self.tok.shape[1]

    _ROW_FIELDS = ("tok", "rec", "brf", "cum", "nbr", "length", "grp", "pkey", "eosf", "stopped")

    def widen(self, width: int) -> None:
        """At least `width` token columns (a joining tree with more new tokens)."""
        extra = width - self.width
        if extra <= 0:
            return
        n = self.N
        self.tok = torch.cat([self.tok, torch.full((n, extra), -1, dtype=torch.int64, device=self.device)], 1)
        self.rec = torch.cat([self.rec, torch.zeros((n, extra, 3), dtype=torch.float32, device=self.device)], 1)
        self.brf = torch.cat([self.brf, torch.zeros((n, extra), dtype=torch.bool, device=self.device)], 1)

    def add_roots(self, groups: torch.Tensor, keys: torch.Tensor) -> None:
        """One fresh active row per group (its prompt's first path), after the active rows."""
        g, d = groups.shape[0], self.device
        new = dict(tok=torch.full((g, self.width), -1, dtype=torch.int64, device=d),
                   rec=torch.zeros((g, self.width, 3), dtype=torch.float32, device=d),
                   brf=torch.zeros((g, self.width), dtype=torch.bool, device=d),
                   cum=torch.zeros(g, dtype=torch.float64, device=d), nbr=torch.zeros(g, dtype=torch.int64, device=d),
                   length=torch.zeros(g, dtype=torch.int64, device=d), grp=groups, pkey=keys,
                   eosf=torch.zeros(g, dtype=torch.bool, device=d), stopped=torch.zeros(g, dtype=torch.bool, device=d))
        R = self.R
        for name in self._ROW_FIELDS:
            old = getattr(self, name)
            setattr(self, name, torch.cat([old[:R], new[name], old[R:]]))
        self.R += g

    def select(self, s: torch.Tensor, active: int) -> None:
        """New row i = old row s[i] (a repeated row forks, an omitted one drops); the first
        `active` rows are the active ones."""
        for name in ("tok", "rec", "brf", "nbr", "length", "eosf", "stopped"):
            setattr(self, name, getattr(self, name)[s])
        self.R = active

    def write(self, cols: torch.Tensor, new: torch.Tensor, token: torch.Tensor, rec: torch.Tensor,
              branched: torch.Tensor) -> None:
        """Row i's new token at column cols[i] where new[i] (other rows are kept as they are)."""
        rows = torch.arange(self.N, device=self.device)
        self.tok[rows, cols] = torch.where(new, token, self.tok[rows, cols])
        self.rec[rows, cols] = torch.where(new[:, None], rec, self.rec[rows, cols])
        self.brf[rows, cols] = self.brf[rows, cols] | branched
        self.nbr = self.nbr + branched.to(torch.int64)
        self.length = torch.where(new, cols + 1, self.length)

    def remove(self, drop: torch.Tensor) -> None:
        """Remove the finished rows where drop (bool [N]); active rows must not be among them."""
        keep = torch.nonzero(~drop).flatten()
        for name in self._ROW_FIELDS:
            setattr(self, name, getattr(self, name)[keep])

    def rows_of(self, groups: list) -> list:
        """Per group of `groups`, its rows' paths as dicts (token ids, cumulative and per-token
        log-probabilities, entropies, thresholds, branch steps, end), in table order: one
        copy of the table to the host."""
        tok, rec, brf, cum, length, grp, eosf = (x.cpu() for x in (self.tok, self.rec, self.brf, self.cum,
                                                                  self.length, self.grp, self.eosf))
        where = {g: j for j, g in enumerate(groups)}
        out = [[] for _ in groups]
        for i in range(tok.shape[0]):
            j = where.get(int(grp[i]))
            if j is None:
                continue
            n = int(length[i])
            out[j].append(dict(
                token_ids=tok[i, :n].tolist(), logprob=float(cum[i]),
                entropies=rec[i, :n, 0].tolist(), thresholds=rec[i, :n, 1].tolist(),
                token_logprobs=rec[i, :n, 2].tolist(),
                branch_steps=torch.nonzero(brf[i, :n]).flatten().tolist(),
                finished="eos" if bool(eosf[i]) else "length"))
        return out
