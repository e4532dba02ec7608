"""The batched, KV-cached EAGer decode loop (one budget stage), over any engine.

The loop uses only the engine protocol (eager_kernels/engines/base.py): prefill, decode one
token per row, reorder rows, release, and a few facts (vocabulary, device, KV bytes per
token). All active paths of all prompts are rows of one batch: one engine decode per step, one
eager_step per step, and one host read per step (a packed tensor of four counters: rows that
go on, finished rows kept, whether the cache order changed, branch events). Everything else
stays on the device:

- the path table: generated tokens [N, T], per token its entropy, the threshold in force
  and its log-probability [N, T, 3], branch marks [N, T], cumulative log-probability,
  branch count, group (prompt), finished / stopped flags, and each path's random key
  (keys.py: from the stage, the prompt's key and the path's lineage, never its row, so a
  prompt's paths do not depend on its batch). Rows 0..R-1 are the active paths in the
  cache's row order; rows R..N-1 are finished paths still held (they count toward M in the
  paper policy and compete in pruning in the seed policy).
- each step expands every active row into its children (1, or n on a branch), adds the
  finished rows as candidates, selects the kept ones (cap M, or pruning per prompt by a
  segmented rank), and orders them active-first with one stable sort;
- the engine's cache is reordered by a source index (a repeated row forks, an omitted one
  drops; the transformers engine does one index_select per layer, llama.cpp copies and
  removes sequence ids), and the reorder is skipped when nothing moved.
"""
from __future__ import annotations

import time

import torch

from ..kernels import ops
from ..engines.base import Engine
from ..engines.transformers import kv_bytes_per_token  # noqa: F401  (re-exported by the sampler)
from ..kernels.history import EntropyHistory
from .config import EagerConfig
from .keys import child_keys, root_keys


class EagerMemoryError(MemoryError):
    """The configuration's KV cache cannot fit in the memory limit."""


def default_memory_limit(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.9)
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def check_memory(engine: Engine, rows: int, seq_len: int, cfg: EagerConfig) -> int:
    """Raise EagerMemoryError when rows x seq_len tokens of KV cache (x engine.kv_copies:
    the transformers cache is copied when it grows or is reordered) exceed the limit.
    Returns the estimate."""
    device = engine.device
    copies = engine.kv_copies
    need = copies * rows * seq_len * engine.kv_bytes_per_token
    limit = cfg.memory_limit_bytes if cfg.memory_limit_bytes is not None else default_memory_limit(device)
    if need > limit:
        raise EagerMemoryError(
            f"the KV cache of this configuration needs about {need / 2**30:.2f} GiB "
            f"({rows} rows = prompts x min(M, prune_to), x {seq_len} tokens = prompt + "
            f"max_new_tokens{f', x{copies} for copies' if copies > 1 else ''}) but the limit is {limit / 2**30:.2f} GiB; lower "
            f"max_paths_per_prompt, max_new_tokens or the number of prompts per call, or "
            f"raise memory_limit_bytes"
        )
    return need


# ---------------------------------------------------------------------------------------
# One stage
# ---------------------------------------------------------------------------------------


def _group_count(grp: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Entries per group; unlike torch.bincount, no host sync on CUDA (the size is known)."""
    out = torch.zeros(num_groups, dtype=torch.int64, device=grp.device)
    return out.scatter_add_(0, grp, torch.ones_like(grp))


def _segmented_rank(score: torch.Tensor, grp: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Rank of each entry within its group by descending score (ties: lower index first)."""
    o1 = torch.argsort(score, descending=True, stable=True)
    o2 = torch.argsort(grp[o1], stable=True)
    order = o1[o2]
    counts = _group_count(grp, num_groups)
    starts = torch.cumsum(counts, 0) - counts
    rank_sorted = torch.arange(score.numel(), device=score.device) - starts[grp[order]]
    rank = torch.empty_like(rank_sorted)
    rank[order] = rank_sorted
    return rank


def run_stage(engine: Engine, prompts: list, caps: list, cfg: EagerConfig, *, eos_ids: list,
              stop_seqs: list, seed: int, metrics, progress=None, prompt_keys=None) -> tuple:
    """Decode one tree per prompt (prompts: lists of token ids, caps: M per prompt) on
    `engine`. seed: the stage's key (keys.stage_key); prompt_keys: one int per prompt
    (default 0..G-1); each path samples with its own key (per-row seed of eager_step).
    Returns (per prompt: a list of raw path dicts, the peak number of active rows, the
    number of branch events) and updates `metrics` in place. The caller releases the
    engine's cache (engine.release()), also when this raises."""
    device = engine.device
    G = len(prompts)
    T = cfg.max_new_tokens
    seed_policy = cfg.policy == "seed"
    prune = cfg.prune_to
    keep_host = [min(c, prune) if prune is not None else c for c in caps]  # most kept rows per prompt
    caps_t = torch.tensor(caps, dtype=torch.int64, device=device)
    keep_n = torch.tensor(keep_host, dtype=torch.int64, device=device)
    k = cfg.candidates_k
    nmax = cfg.num_branches

    P = max(len(p) for p in prompts)
    max_rows = sum(keep_host)
    check_memory(engine, max_rows, P + T, cfg)

    t0 = time.perf_counter()
    logits = engine.prefill(prompts, max_rows=max_rows, max_new_tokens=T)
    engine.synchronize()
    metrics.prefill_s += time.perf_counter() - t0
    metrics.forward_passes += 1

    # The path table (rows 0..R-1 active, R..N-1 finished).
    tok = torch.full((G, T), -1, dtype=torch.int64, device=device)
    # per token: entropy, threshold in force, log-probability (one table: one gather a step)
    rec = torch.zeros((G, T, 3), dtype=torch.float32, device=device)
    brf = torch.zeros((G, T), dtype=torch.bool, device=device)
    cum = torch.zeros(G, dtype=torch.float64, device=device)
    nbr = torch.zeros(G, dtype=torch.int64, device=device)
    length = torch.zeros(G, dtype=torch.int64, device=device)
    grp = torch.arange(G, dtype=torch.int64, device=device)
    pkey = root_keys(seed, range(G) if prompt_keys is None else prompt_keys, device)
    eosf = torch.zeros(G, dtype=torch.bool, device=device)
    stopped = torch.zeros(G, dtype=torch.bool, device=device)
    R, N = G, G
    peak = torch.ones(G, dtype=torch.int64, device=device)
    branch_events = torch.zeros(G, dtype=torch.int64, device=device)

    history = EntropyHistory(G, max(1, T * max(keep_host)), device=device, backend=cfg.backend)
    eos_t = torch.tensor(eos_ids or [-2], dtype=torch.int64, device=device)
    stops = [torch.tensor(s, dtype=torch.int64, device=device) for s in stop_seqs if len(s) > 0]
    arange_j = torch.arange(nmax, device=device)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        # the bar counts decode steps; generated tokens (every row's, each step) go in its postfix
        bar = tqdm(total=T, desc="eager decode", unit="step", leave=False)
    tokens_before = metrics.tokens_generated
    t0 = time.perf_counter()
    for t in range(T):
        agrp = grp[:R]
        res = ops.eager_step(logits, history, agrp, k=k, temperature=cfg.temperature,
                             entropy_top_k=cfg.entropy_top_k, q=cfg.q, theta=cfg.theta,
                             initial_threshold=cfg.initial_threshold, seed=pkey[:R], offset=t,
                             backend=cfg.backend)
        # How many children each row opens.
        want = res.branch & ~stopped[:R]
        if seed_policy and cfg.branch_divisor is not None:
            nk = torch.clamp(torch.clamp(cfg.branch_divisor // (1 + nbr[:R]), max=nmax), min=1)
        else:
            nk = torch.full((R,), nmax, dtype=torch.int64, device=device)
        req = torch.where(want, nk - 1, torch.zeros_like(nk))
        if prune is None:
            # Cap M counting finished paths: grant new paths in row order within a prompt.
            live = _group_count(grp[:N], G)
            room = (caps_t - live).clamp_min(0)
            member = agrp[None, :] == torch.arange(G, device=device)[:, None]
            before = (member * req[None, :]).cumsum(1).gather(0, agrp[None, :])[0] - req
            req = torch.minimum(req, (room[agrp] - before).clamp_min(0))
        branched = req > 0
        nk = req + 1
        branch_events.scatter_add_(0, agrp, branched.to(torch.int64))

        # Candidates: children of active rows [R * nmax], then the finished rows.
        lse = logits.gather(1, res.cand_ids[:, :1]).float()[:, 0] - res.cand_logprobs[:, 0]
        tok0 = torch.where(branched, res.cand_ids[:, 0], res.token)
        lp0 = torch.where(branched | (res.token == res.cand_ids[:, 0]), res.cand_logprobs[:, 0],
                          logits.gather(1, res.token[:, None]).float()[:, 0] - lse)
        ctok = res.cand_ids[:, :nmax].clone()
        clp = res.cand_logprobs[:, :nmax].clone()
        ctok[:, 0] = tok0
        clp[:, 0] = lp0
        cvalid = arange_j[None, :] < nk[:, None]
        F = N - R
        src = torch.cat([torch.arange(R, device=device).repeat_interleave(nmax),
                         torch.arange(R, N, device=device)])
        is_new = torch.cat([cvalid.reshape(-1), torch.zeros(F, dtype=torch.bool, device=device)])
        valid = torch.cat([cvalid.reshape(-1), torch.ones(F, dtype=torch.bool, device=device)])
        new_tok = torch.cat([ctok.reshape(-1), torch.full((F,), -1, dtype=torch.int64, device=device)])
        add_lp = torch.cat([clp.reshape(-1).double(), torch.zeros(F, dtype=torch.float64, device=device)])
        ccum = cum[src] + add_lp
        cgrp = grp[src]
        child_rank = torch.cat([arange_j.repeat(R), torch.zeros(F, dtype=torch.int64, device=device)])
        ckey = child_keys(pkey[src], t, child_rank)
        c_eos = is_new & torch.isin(new_tok, eos_t)
        cfin = ~is_new | c_eos | (t + 1 >= T)

        if prune is not None:
            rank = _segmented_rank(torch.where(valid, ccum, torch.full_like(ccum, -float("inf"))), cgrp, G)
            keep = valid & (rank < keep_n[cgrp])
        else:
            keep = valid
        key = torch.where(keep, cfin.to(torch.int64), torch.full_like(src, 2))
        order = torch.argsort(key, stable=True)
        n_act = (keep & ~cfin).sum()
        n_fin = (keep & cfin).sum()
        m = min(R, order.numel())
        ident = (n_act == R) & (src[order[:m]] == torch.arange(m, device=device)).all()
        packed = torch.stack([n_act, n_fin, ident.to(torch.int64), branched.sum(), (keep & is_new).sum()])
        n_act, n_fin, ident, n_branch, n_new = packed.tolist()  # the one host read per step

        sel = order[: n_act + n_fin]
        s = src[sel]
        new = is_new[sel]
        tok, rec, brf = tok[s], rec[s], brf[s]
        parent = s.clamp_max(R - 1)
        tok[:, t] = torch.where(new, new_tok[sel], tok[:, t])
        step_rec = torch.stack([res.entropy[parent], res.threshold[parent], add_lp[sel].float()], dim=1)
        rec[:, t] = torch.where(new[:, None], step_rec, rec[:, t])
        par_branched = branched[parent] & new
        brf[:, t] = brf[:, t] | par_branched
        cum = ccum[sel]
        nbr = nbr[s] + par_branched.to(torch.int64)
        length = torch.where(new, torch.full_like(s, t + 1), length[s])
        grp = cgrp[sel]
        pkey = ckey[sel]
        eosf = eosf[s] | c_eos[sel]
        stopped = stopped[s]
        for seq in stops:
            L = seq.numel()
            if t + 1 >= L:
                stopped = stopped | (new & (tok[:, t + 1 - L: t + 1] == seq).all(1))
        metrics.branch_events += n_branch
        metrics.tokens_generated += n_new
        metrics.steps += 1
        R, N = n_act, n_act + n_fin
        if bar is not None:
            bar.update(1)
            made = metrics.tokens_generated - tokens_before
            bar.set_postfix_str(f"rows={R}, {made} tokens, {made / max(time.perf_counter() - t0, 1e-9):.0f} tokens/s")
        if R == 0:
            break
        peak = torch.maximum(peak, _group_count(grp[:R], G))
        if not ident:
            engine.reorder(s[:R])
        logits = engine.decode(tok[:R, t])
        metrics.forward_passes += 1
        metrics.decode_rows += R
    engine.synchronize()
    metrics.decode_s += time.perf_counter() - t0
    if bar is not None:
        bar.close()

    # One copy of the table to the host.
    host = [x.cpu() for x in (tok, rec, brf, cum, length, grp, eosf)]
    tok_h, rec_h, brf_h, cum_h, len_h, grp_h, eos_h = host
    out_paths = [[] for _ in range(G)]
    for i in range(N):
        n = int(len_h[i])
        out_paths[int(grp_h[i])].append(dict(
            token_ids=tok_h[i, :n].tolist(), logprob=float(cum_h[i]),
            entropies=rec_h[i, :n, 0].tolist(), thresholds=rec_h[i, :n, 1].tolist(),
            token_logprobs=rec_h[i, :n, 2].tolist(),
            branch_steps=torch.nonzero(brf_h[i, :n]).flatten().tolist(),
            finished="eos" if bool(eos_h[i]) else "length"))
    return out_paths, peak.tolist(), branch_events.tolist()
