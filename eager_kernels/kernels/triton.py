"""Triton kernels: every op is one read of the logits in at most two launches.

Launch 1, `_partial_kernel`, grid (B, C): program (row, c) reads columns
[c * CHUNK, (c + 1) * CHUNK) of one row in blocks of BLOCK and writes that chunk's partial
state: the online softmax statistics (running max m, s = sum e^(x-m), t = sum e^(x-m)(x-m),
relative to m so that |x| ~ 1e4 loses no precision), the chunk's top-KP as packed int64
keys (float bits made order-preserving in the high word, ~column in the low word, so one
integer comparison orders by value descending then id ascending), the chunk's best Gumbel
score and its column, and a flag for NaN / +inf. The top-K is a filter on the same read
(the comments in _partial_kernel say why it is exact): a block whose max does not pass
the threshold (a lower bound of the chunk's K-th best logit so far) costs nothing more;
the columns above it get slots in a small per-program buffer (one warp-aggregated atomic
per register), which is merged into the run only when half full, by one tl.topk of a few
dozen keys. Splitting the vocabulary keeps enough programs in flight to use the memory
bandwidth at B = 1. The chunk-0 program of each row also reads the row's threshold from
the entropy history (which nothing writes during this launch).

Launch 2, `_finalize_kernel`, grid (B,): merges a row's C partials into the entropy (full
or top-K), the top-k log-probabilities, the sampled token and the branch decision. With a
history, each program then takes its group's ticket (atomic add); the last program of each
group merges that group's new entropies into its sorted buffer (vectorised, groups in
parallel), after checking that no row of the step was bad (all or nothing) and that the
group has room (else its overflow flag is set and nothing is written).

_Plan holds one pass's launch parameters and buffers; the ops build one per call, a
prepared step (ops.PreparedStep) builds one and only launches it at each call, with its
data status or-ed into a device flag and its offset counted on by launch 2.

Triton is imported when this module is, i.e. on the first Triton call, never at package
import. On CPU tensors this runs under TRITON_INTERPRET=1 (the tests); the launch
parameters are then kept small so the interpreter exercises several blocks and chunks.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import checks as _checks, reference

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Launch parameters. On a GPU: 4096-column blocks, enough chunks for ~2 programs per SM.
# Under the interpreter: small blocks so that small test shapes cover the multi-block and
# multi-chunk paths. Tests may change these through `launch_config`.
launch_config = {
    "block": 128 if _INTERPRET else 4096,
    "target_programs": 8 if _INTERPRET else 264,
    "max_chunks": 16 if _INTERPRET else 64,
    "num_warps": 8,
}

# No contraction of a * b + c into one FMA (Triton fuses by default): the Gumbel score
# x - T * log(E) must round as reference.sample computes it (a product, then a difference),
# or near-ties could pick another token than the reference; the C++ kernels are built with
# -ffp-contract=off for the same reason. The interpreter has no such option.
_NUMERICS = {} if _INTERPRET else {"enable_fp_fusion": False}

_KEY_EMPTY = -(2**63)  # sorts below every real key, -inf logits included
_STATUS_BAD_VALUE = 1  # NaN or +inf in the row
_STATUS_EMPTY_ROW = 2  # no finite logit in the row
_STATUS_BAD_GROUP = 4  # the row's group id is outside [0, num_groups)


# ---------------------------------------------------------------------------------------
# Device helpers
# ---------------------------------------------------------------------------------------


@triton.jit
def _gumbel_log_e(seed, offset, row, cols_quad, QUADS: tl.constexpr):
    """log(E), E = -log(u), for 4*QUADS consecutive columns starting at 4*cols_quad[0]:
    one Philox call yields the four lanes of a counter, interleaved back into column
    order. Matches reference.philox_uniform bit for bit."""
    zero = cols_quad.to(tl.uint32) * 0
    off = offset.to(tl.int64)
    r0, r1, r2, r3 = tl.philox(seed.to(tl.int64), cols_quad.to(tl.uint32), zero + row.to(tl.uint32),
                               zero + off.to(tl.uint32), zero + (off >> 32).to(tl.uint32))
    lanes = tl.join(tl.join(r0, r2), tl.join(r1, r3))  # [QUADS, 2, 2] -> r0 r1 r2 r3
    r = tl.reshape(lanes, (QUADS * 4,))
    u = tl.uint_to_uniform_float(r)
    u = tl.maximum(u, 4.6566127342e-10)  # reference.UNIFORM_MIN
    return tl.log(-tl.log(u))


@triton.jit
def _pack_keys(x, cols, valid):
    """Order-preserving int64 keys: larger value first, then the smaller column. -0.0 is
    keyed as +0.0 (equal values, ordered by column, as the reference's stable sort does)."""
    bits = tl.where(x == 0.0, 0, x.to(tl.int32, bitcast=True))
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    low = (0xFFFFFFFF - cols.to(tl.int64))
    key = (ordered.to(tl.int64) << 32) | low
    return tl.where(valid, key, -9223372036854775808)


@triton.jit
def _unpack_keys(key):
    ordered = (key >> 32).to(tl.int32)
    bits = tl.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered)
    value = bits.to(tl.float32, bitcast=True)
    col = 0xFFFFFFFF - (key & 0xFFFFFFFF)
    return value, col


# tl.topk (a partial bitonic sort) is recent; older Triton releases get the same result
# from KP rounds of max-and-remove (keys are unique per column, so nothing is lost).
_HAS_TL_TOPK = tl.constexpr(hasattr(tl, "topk"))


@triton.jit
def _topk_keys(keys, KP: tl.constexpr):
    """The KP largest of `keys` (int64, one dimension), in descending order."""
    if _HAS_TL_TOPK:
        return tl.topk(keys, KP)
    else:
        out = tl.full((KP,), -9223372036854775808, tl.int64)
        slot = tl.arange(0, KP)
        for i in tl.static_range(KP):
            top = tl.max(keys, axis=0)
            out = tl.where(slot == i, top, out)
            keys = tl.where(keys == top, -9223372036854775808, keys)
        return out


@triton.jit
def _kth_largest(values, K):
    """The K-th largest of `values` (float, one dimension, at least K of them): the
    largest value that at least K values reach. n x n comparisons, no sort."""
    reach = tl.sum((values[None, :] >= values[:, None]).to(tl.int32), axis=1)
    return tl.max(tl.where(reach >= K, values, -float("inf")), axis=0)


@triton.jit
def _add_candidates(buf, cols, pending, lanes, KP: tl.constexpr, TOT: tl.constexpr):
    """Append the pending columns to the top-K buffer; returns each pending lane's slot
    (-1 for the others). Slots past the buffer's TOT - KP candidate places are not
    written. The count is a warp-aggregated atomic per register (ptxas), skipped by warps
    without a pending column."""
    slot = tl.atomic_add(buf + TOT + lanes * 0, 1, mask=pending, sem="relaxed", scope="gpu")
    tl.store(buf + KP + slot, cols, mask=pending & (slot < TOT - KP))
    tl.debug_barrier()
    return tl.where(pending, slot, -1)


@triton.jit
def _merge_buffer(buf, base, n_cand, K, KP: tl.constexpr, TOT: tl.constexpr):
    """The run merged with the n_cand buffered candidates. buf[0:KP] holds the run's
    columns (-1: empty), buf[KP:KP + n_cand] the candidates' columns, buf[TOT] their count.
    Their logits are read again (a few cached reads) and keyed, the KP best kept; their
    columns are written back and the count reset to 0. Returns (the KP keys, descending;
    the K-th key's value and column; 1 if the run holds K keys, else 0): a column can
    change the top-K only with a key above the K-th."""
    idx = tl.arange(0, TOT)
    c = tl.load(buf + idx, volatile=True)
    use = tl.where(idx < KP, c >= 0, (idx - KP) < n_cand)
    x = tl.load(base + c, mask=use, other=-float("inf")).to(tl.float32)
    top = _topk_keys(_pack_keys(x, c, use), KP)
    value, col = _unpack_keys(top)
    tl.debug_barrier()  # every thread has read the buffer before it is rewritten
    tl.store(buf + tl.arange(0, KP), tl.where(top != -9223372036854775808, col, -1).to(tl.int32))
    tl.store(buf + TOT, 0)
    tl.debug_barrier()  # the next candidates are counted from 0
    kth_key = tl.max(tl.where(tl.arange(0, KP) == K - 1, top, -9223372036854775808), axis=0)
    full = (kth_key != -9223372036854775808).to(tl.int32)
    kth, kth_col = _unpack_keys(kth_key)
    return top, tl.where(full != 0, kth, -float("inf")), kth_col.to(tl.int32), full


@triton.jit
def _more_rounds(buf, base, x, cols, lanes, kth, kth_col, left, K, KP: tl.constexpr, TOT: tl.constexpr):
    """Rounds of (slots, merge) for the columns `left` without a slot, while any still
    beats the run's K-th key (the exact test: they share the block with the columns just
    merged). Each round places TOT - KP of them, so this ends. Returns (kth, full)."""
    full = 1
    pending = left & ((x > kth) | ((x == kth) & (cols < kth_col)))
    while tl.max(pending.to(tl.int32), axis=0) > 0:
        slot = _add_candidates(buf, cols, pending, lanes, KP, TOT)
        n_buf = tl.load(buf + TOT, volatile=True)
        _, kth, kth_col, full = _merge_buffer(buf, base, n_buf, K, KP, TOT)
        pending = (slot >= TOT - KP) & ((x > kth) | ((x == kth) & (cols < kth_col)))
    return kth, full


# ---------------------------------------------------------------------------------------
# Launch 1: one chunk of one row
# ---------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["temp_scalar", "seed_scalar", "offset_scalar", "q32", "theta", "initial"])
def _partial_kernel(
    x_ptr, stride_row, V, CHUNK, NCH, K,
    temp_ptr, temp_scalar, seed_ptr, seed_scalar, offset_ptr, offset_scalar,
    stats_ptr, keys_ptr, buf_ptr, best_ptr, best_col_ptr,
    hist_values_ptr, hist_stride, hist_count_ptr, group_ptr, NG, q32, theta, initial, thr_ptr,
    BLOCK: tl.constexpr, KP: tl.constexpr, TOT: tl.constexpr, TOPK: tl.constexpr, STATS: tl.constexpr,
    SAMPLE: tl.constexpr, TEMP_IS_PTR: tl.constexpr, COUNTERS_ARE_PTRS: tl.constexpr,
    SEED_PER_ROW: tl.constexpr, THRESHOLD: tl.constexpr,
):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    base = x_ptr + row.to(tl.int64) * stride_row
    start = chunk * CHUNK
    stop = tl.minimum(start + CHUNK, V)
    lanes = tl.arange(0, BLOCK)

    part = row.to(tl.int64) * NCH + chunk
    m = -float("inf")
    s = 0.0
    t = 0.0
    bad = 0
    # The top-K: each program keeps a run of its chunk's KP best keys, exact in its K
    # best (K = the widest top-K asked for, KP = K rounded up to a power of 2). The run's
    # columns and the candidates waiting to join it lie in this program's slice of
    # buf_ptr ([0, KP): the run, [KP, TOT): candidates, [TOT]: their count). kth is the
    # threshold once one is known (full = 1): a lower bound of the K-th best logit so far,
    # the first block's bound, then the run's K-th value after each merge.
    buf = buf_ptr + part * (TOT + 1)
    kth = -float("inf")
    full = 0
    n_buf = 0
    if TOPK:
        tl.store(buf + tl.arange(0, KP), tl.full((KP,), -1, tl.int32))
        tl.store(buf + TOT, 0)
        tl.debug_barrier()
    best = -float("inf")
    best_col = V  # no column yet
    if SAMPLE:
        if TEMP_IS_PTR:
            temp = tl.load(temp_ptr + row)
        else:
            temp = temp_scalar
        # Philox counter word 1: the row, or 0 with a key per row (batch-invariant draws).
        row_word = row
        if COUNTERS_ARE_PTRS:
            if SEED_PER_ROW:
                seed = tl.load(seed_ptr + row)
                row_word = row * 0
            else:
                seed = tl.load(seed_ptr)
            offset = tl.load(offset_ptr)
        else:
            seed = seed_scalar
            offset = offset_scalar

    for block_start in range(start, stop, BLOCK):
        cols = block_start + lanes
        valid = cols < stop
        x = tl.load(base + cols, mask=valid, other=-float("inf")).to(tl.float32)
        bad |= tl.max(((x != x) | (x == float("inf"))).to(tl.int32), axis=0)
        block_max = tl.max(x, axis=0)
        if STATS:
            m_new = tl.maximum(m, block_max)
            if m_new > -float("inf"):
                finite = x > -float("inf")
                d = tl.where(finite, x - m_new, 0.0)
                e = tl.where(finite, tl.exp(d), 0.0)
                shift = m - m_new  # <= 0; -inf while nothing finite was seen (then s = t = 0)
                alpha = tl.exp(shift)
                t = alpha * (t + tl.where(s > 0, shift, 0.0) * s) + tl.sum(e * d, axis=0)
                s = alpha * s + tl.sum(e, axis=0)
                m = m_new
        else:
            m = tl.maximum(m, block_max)
        if TOPK:
            # Only a block whose max is above the run's K-th value holds a column that
            # can enter (all its columns come after the run's): most blocks stop here.
            if (block_max > kth) | (full == 0):
                if full == 0:
                    # No threshold yet (the first block): the columns at or above the K-th
                    # largest of 2 KP bucket maxima (bucket b: the lanes b mod 2 KP, so a
                    # short last block fills every bucket), a lower bound of the block's
                    # K-th largest logit (K distinct columns reach it). It is -inf when
                    # fewer than K buckets hold a finite logit; the block's top-K then lies
                    # in its finite logits and its first 2 K columns.
                    lb = _kth_largest(tl.max(tl.reshape(x, (BLOCK // (2 * KP), 2 * KP)), axis=0), K)
                    ties = tl.where(lb > -float("inf"), BLOCK, 0)
                    first = 2 * KP - tl.minimum(ties, 2 * KP)
                    # (masked lanes hold -inf: no test of `valid` where x is compared; a
                    # mask of i1 kept across branches costs bit packing per element)
                    pending = (x > lb) | ((x == lb) & (lanes < ties)) | ((lanes < first) & (cols < stop))
                    slot = _add_candidates(buf, cols, pending, lanes, KP, TOT)
                    # The bound holds for every later block, strictly (K columns reach it
                    # before theirs): the threshold until a merge raises it.
                    kth = lb
                    full = full * 0 + 1
                else:
                    # the columns above the threshold join the buffer
                    slot = _add_candidates(buf, cols, x > kth, lanes, KP, TOT)
                n_buf = tl.load(buf + TOT, volatile=True)
                # Merged when half full (the next block has room).
                if n_buf > (TOT - KP) // 2:
                    _, kth, kth_col, full = _merge_buffer(buf, base, n_buf, K, KP, TOT)
                    if n_buf > TOT - KP:
                        # More than the buffer holds (ties, a first block without a
                        # bound): the columns left without a slot go round again.
                        kth, full = _more_rounds(buf, base, x, cols, lanes, kth, kth_col, slot >= TOT - KP, K, KP,
                                                 TOT)
                    n_buf = n_buf * 0
        if SAMPLE:
            if temp > 0.0:
                # The noise is at most temp * GUMBEL_MAX: a block that cannot beat the best
                # score needs no random numbers.
                if block_max + temp * 24.0 >= best:
                    log_e = _gumbel_log_e(seed, offset, row_word, block_start // 4 + tl.arange(0, BLOCK // 4), BLOCK // 4)
                    score = x - temp * log_e  # -inf in masked lanes (log_e is finite)
                    block_best = tl.max(score, axis=0)
                    if block_best > best:
                        best = block_best
                        best_col = tl.min(tl.where(score == block_best, cols, V), axis=0)
            else:
                if block_max > best:
                    best = block_max
                    best_col = tl.min(tl.where(x == block_max, cols, V), axis=0)

    tl.store(stats_ptr + part * 4 + 0, m)
    tl.store(stats_ptr + part * 4 + 1, s)
    tl.store(stats_ptr + part * 4 + 2, t)
    tl.store(stats_ptr + part * 4 + 3, bad.to(tl.float32))
    if TOPK:
        top, _, _, _ = _merge_buffer(buf, base, n_buf, K, KP, TOT)
        tl.store(keys_ptr + part * KP + tl.arange(0, KP), top)
    if SAMPLE:
        tl.store(best_ptr + part, best)
        tl.store(best_col_ptr + part, best_col.to(tl.int64))

    if THRESHOLD:
        if chunk == 0:
            g = tl.load(group_ptr + row)
            g = tl.where((g >= 0) & (g < NG), g, 0)  # out of range: flagged by launch 2, nothing read outside
            n = tl.load(hist_count_ptr + g)
            last = tl.maximum(n - 1, 0)
            # torch.quantile's arithmetic: float32 rank, floor/ceil, lerp.
            rank = q32 * last.to(tl.float32)
            below = rank.to(tl.int64)
            above = tl.ceil(rank).to(tl.int64)
            v_below = tl.load(hist_values_ptr + g * hist_stride + below)
            v_above = tl.load(hist_values_ptr + g * hist_stride + above)
            w = rank - below.to(tl.float32)
            lerp = tl.where(w < 0.5, v_below + w * (v_above - v_below),
                            v_above - (v_above - v_below) * (1.0 - w))
            thr = tl.where(n > 0, tl.maximum(lerp, theta), initial)
            tl.store(thr_ptr + row, thr)


# ---------------------------------------------------------------------------------------
# Launch 2: merge one row's chunks; the last program appends the history
# ---------------------------------------------------------------------------------------


@triton.jit
def _finalize_kernel(
    stats_ptr, keys_ptr, best_ptr, best_col_ptr, NCH, B,
    entropy_ptr, lp_ptr, ids_ptr, k, token_ptr, status_ptr, thr_ptr, branch_ptr,
    ticket_ptr, hist_values_ptr, hist_stride, hist_count_ptr, hist_overflow_ptr, group_ptr, NG,
    CAP, ENT_K, errors_ptr, offset_ptr,
    NCH_P: tl.constexpr, KP: tl.constexpr, TOPK: tl.constexpr, ENTROPY: tl.constexpr,
    TOPK_ENTROPY: tl.constexpr, CANDIDATES: tl.constexpr, SAMPLE: tl.constexpr,
    HISTORY: tl.constexpr, B_P: tl.constexpr, MB: tl.constexpr, ERRORS: tl.constexpr,
    NEXT_OFFSET: tl.constexpr,
):
    row = tl.program_id(0)
    c = tl.arange(0, NCH_P)
    cmask = c < NCH
    part = row.to(tl.int64) * NCH + c
    m_i = tl.load(stats_ptr + part * 4 + 0, mask=cmask, other=-float("inf"))
    s_i = tl.load(stats_ptr + part * 4 + 1, mask=cmask, other=0.0)
    t_i = tl.load(stats_ptr + part * 4 + 2, mask=cmask, other=0.0)
    bad_i = tl.load(stats_ptr + part * 4 + 3, mask=cmask, other=0.0)
    m = tl.max(m_i, axis=0)
    status = tl.where(tl.max(bad_i, axis=0) > 0, 1, 0) + tl.where(m == -float("inf"), 2, 0)
    if HISTORY:
        g = tl.load(group_ptr + row)
        g_ok = (g >= 0) & (g < NG)
        status += tl.where(g_ok, 0, 4)
        g = tl.where(g_ok, g, 0)
    tl.store(status_ptr + row, status)
    if ERRORS:
        # a prepared step's sticky flag: every bad row of every call until it is read
        if status != 0:
            tl.atomic_or(errors_ptr, status, sem="relaxed")
    if NEXT_OFFSET:
        # a prepared step's counter moves on for the next call (launch 1 read it already)
        if row == 0:
            tl.store(offset_ptr, tl.load(offset_ptr) + 1)
    seen = s_i > 0
    shift = tl.where(seen, m_i, 0.0) - tl.where(seen, m, 0.0)
    a_i = tl.where(seen, tl.exp(shift), 0.0)
    s = tl.sum(a_i * s_i, axis=0)
    t = tl.sum(a_i * (t_i + shift * s_i), axis=0)

    if TOPK:
        j = tl.arange(0, KP)
        all_keys = tl.load(keys_ptr + part[:, None] * KP + j[None, :], mask=cmask[:, None],
                           other=-9223372036854775808)
        top = _topk_keys(tl.reshape(all_keys, (NCH_P * KP,)), KP)
        value, col = _unpack_keys(top)
        if CANDIDATES:
            # (x - m) - log(s): exact near the top even at |x| ~ 1e4, unlike x - (m + log s)
            tl.store(lp_ptr + row.to(tl.int64) * k + j, (value - m) - tl.log(s), mask=j < k)
            tl.store(ids_ptr + row.to(tl.int64) * k + j, col, mask=j < k)

    if ENTROPY:
        if TOPK_ENTROPY:
            # Renormalise the K largest: value[0] is their max.
            use = (j < ENT_K) & (value > -float("inf"))
            dk = tl.where(use, value - tl.max(tl.where(j < ENT_K, value, -float("inf")), axis=0), 0.0)
            ek = tl.where(use, tl.exp(dk), 0.0)
            sk = tl.sum(ek, axis=0)
            ent = tl.log(sk) - tl.sum(ek * dk, axis=0) / sk
        else:
            ent = tl.log(s) - t / s
        ent = tl.maximum(ent, 0.0)  # rounding can leave -1e-7 for a one-hot row
        tl.store(entropy_ptr + row, ent)

    if SAMPLE:
        best_i = tl.load(best_ptr + part, mask=cmask, other=-float("inf"))
        col_i = tl.load(best_col_ptr + part, mask=cmask, other=2**62)
        best = tl.max(best_i, axis=0)
        token = tl.min(tl.where(best_i == best, col_i, 2**62), axis=0)
        tl.store(token_ptr + row, token)

    if HISTORY:
        thr = tl.load(thr_ptr + row)
        tl.store(branch_ptr + row, ent > thr)
        # The last program of each group (per-group ticket) merges the group's new values:
        # groups merge in parallel, and every row of the group has stored its entropy.
        # (Group ids outside [0, NG) count as group 0 here, and nothing is appended.)
        r = tl.arange(0, B_P)
        groups = tl.load(group_ptr + r, mask=r < B, other=0)
        groups_ok = (groups >= 0) & (groups < NG)
        mine = (tl.where(groups_ok, groups, 0) == g) & (r < B)
        n_new = tl.sum(mine.to(tl.int32), axis=0)
        ticket = tl.atomic_add(ticket_ptr + g, 1)
        if ticket == n_new - 1:
            tl.store(ticket_ptr + g, 0)  # ready for the next step
            # Nothing is appended if any row of the step is bad (status from launch 1).
            rc = r[:, None].to(tl.int64) * NCH + c[None, :]
            both = (r[:, None] < B) & cmask[None, :]
            all_bad = tl.load(stats_ptr + rc * 4 + 3, mask=both, other=0.0)
            all_m = tl.load(stats_ptr + rc * 4 + 0, mask=both, other=-float("inf"))
            row_m = tl.max(all_m, axis=1)
            any_bad = (tl.max(tl.max(all_bad, axis=1), axis=0) > 0) | \
                (tl.min(tl.where(r < B, row_m, 0.0), axis=0) == -float("inf")) | \
                (tl.min(groups_ok.to(tl.int32), axis=0) == 0)
            if not any_bad:
                new = tl.load(entropy_ptr + r, mask=mine, other=float("inf"), volatile=True)
                _merge_group(hist_values_ptr + g.to(tl.int64) * hist_stride, hist_count_ptr + g,
                             hist_overflow_ptr + g, new, n_new, CAP, B_P, MB)


@triton.jit
def _merge_group(values_ptr, count_ptr, overflow_ptr, new, n_new, CAP, B_P: tl.constexpr,
                 MB: tl.constexpr):
    """Merge the step's new values (`new`: [B_P], +inf padded) into one group's sorted
    values[0:count], all or nothing. Old values move right by the number of new values
    below them, block by block from the end; only the tail above the smallest new value
    is touched."""
    n = tl.load(count_ptr, volatile=True)
    if n + n_new > CAP:
        tl.store(overflow_ptr, 1)
    else:
        new_sorted = tl.sort(new)
        smallest = tl.min(new, axis=0)
        # Loop-carried values keep one type (compiled Triton requires it): int64, as n.
        at_or_below = tl.zeros((B_P,), tl.int64)  # per new value: old values <= it
        end = n
        while end > 0:
            begin = tl.maximum(end - MB, 0)
            idx = begin + tl.arange(0, MB)
            live = idx < end
            old = tl.load(values_ptr + idx, mask=live, other=-float("inf"), volatile=True)
            below = tl.sum((new_sorted[None, :] < old[:, None]).to(tl.int32), axis=1)
            tl.store(values_ptr + idx + below, old, mask=live)
            at_or_below += tl.sum(((old[:, None] <= new_sorted[None, :]) & live[:, None]).to(tl.int64), axis=0)
            if tl.max(tl.where(live, old, -float("inf")), axis=0) <= smallest:
                # everything further down is <= the smallest new value: it stays in place
                at_or_below += begin
                end = begin * 0
            else:
                end = begin
        k = tl.arange(0, B_P)
        tl.store(values_ptr + k + at_or_below, new_sorted, mask=k < n_new)
        tl.store(count_ptr, n + n_new)


# ---------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------

_tickets: dict = {}


def _tickets_for(device: torch.device, num_groups: int) -> torch.Tensor:
    """Zeroed int32 counters, one per group, kept per device; each group's last finalize
    program resets its own. Two eager_step launches on one device must therefore not run
    concurrently on two streams."""
    key = (device.type, device.index)
    if key not in _tickets or _tickets[key].numel() < num_groups:
        _tickets[key] = torch.zeros(max(num_groups, 64), dtype=torch.int32, device=device)
    return _tickets[key]


def _device_checks_enabled() -> bool:
    return os.environ.get("EAGER_KERNELS_DEVICE_CHECKS", "1") != "0"


def _check_status(status: torch.Tensor) -> None:
    """Raise (CPU) or queue a device assert (CUDA) for rows with NaN / +inf or no finite
    entry. On CUDA this costs a few tiny launches; EAGER_KERNELS_DEVICE_CHECKS=0 skips it
    (bad rows then give NaN entropies and arbitrary tokens, and are not appended)."""
    if status.device.type != "cpu" and not _device_checks_enabled():
        return
    _checks.raise_if_bad_status(((status & _STATUS_BAD_VALUE) != 0).any(),
                                ((status & _STATUS_EMPTY_ROW) != 0).any())


class _Plan:
    """One pass's launch parameters and buffers, for a shape and for what it computes
    (entropy full or top-K, k candidates, a sample, the history). The ops build one per
    call; a prepared step (ops.PreparedStep) builds one and launches it at every call."""

    def __init__(self, rows, vocab, device, *, entropy_top_k=None, want_entropy=False, k=0, sample=False,
                 history=None):
        cfg = launch_config
        self.rows, self.vocab, self.k, self.entropy_top_k, self.sample = rows, vocab, k, entropy_top_k, sample
        self.history = history is not None
        self.want_entropy = want_entropy or self.history
        # exp sums: for the entropy and the log-probabilities; a lone sample needs only the max
        self.need_sums = self.want_entropy or k > 0
        self.topk_width = max(k, entropy_top_k or 0)
        self.topk = self.topk_width > 0
        self.kp = max(2, triton.next_power_of_2(self.topk_width)) if self.topk else 2
        self.tot = max(4 * self.kp, 64)  # a program's top-K buffer: the run (kp) and the candidates
        self.block = max(min(cfg["block"], triton.next_power_of_2(vocab)), 2 * self.kp, 16)
        n_blocks = triton.cdiv(vocab, self.block)
        n_chunks = min(n_blocks, cfg["max_chunks"], max(1, triton.cdiv(cfg["target_programs"], rows)))
        self.chunk = triton.cdiv(n_blocks, n_chunks) * self.block
        self.n_chunks = triton.cdiv(vocab, self.chunk)
        self.num_warps = cfg["num_warps"]

        nch = self.n_chunks
        f32, i64 = dict(dtype=torch.float32, device=device), dict(dtype=torch.int64, device=device)
        self.stats = torch.empty((rows, nch, 4), **f32)
        self.keys = torch.empty((rows, nch, self.kp) if self.topk else (1,), **i64)
        self.buf = torch.empty((rows * nch, self.tot + 1) if self.topk else (1,), dtype=torch.int32, device=device)
        self.best = torch.empty((rows, nch) if sample else (1,), **f32)
        self.best_col = torch.empty((rows, nch) if sample else (1,), **i64)
        self.status = torch.empty((rows,), dtype=torch.int32, device=device)
        self.ent = torch.empty((rows,), **f32) if self.want_entropy else self.stats
        self.lp = torch.empty((rows, k), **f32) if k else self.stats
        self.ids = torch.empty((rows, k), **i64) if k else self.keys
        self.token = torch.empty((rows,), **i64) if sample else self.keys
        self.thr = torch.empty((rows,), **f32) if self.history else self.stats
        self.branch = torch.empty((rows,), dtype=torch.bool, device=device) if self.history else self.status

    def outputs(self):
        return self.ent, self.thr, self.branch, self.token, self.ids, self.lp

    def arguments(self, logits, temperature=None, seed=0, offset=0, history=None, group=None, q=0.0, theta=0.0,
                  initial=0.0, tickets=None, errors=None, next_offset=False):
        """(partial args, partial constexprs, finalize args, finalize constexprs). Python
        scalars go in as kernel arguments; tensors (temperature [B], seed, offset) are read
        on the device. With `errors` (int32 [1]) each bad row's status is or-ed into it;
        with next_offset, the offset tensor is incremented on the device."""
        temp_is_ptr = isinstance(temperature, torch.Tensor)
        counters_are_ptrs = isinstance(seed, torch.Tensor) or isinstance(offset, torch.Tensor)
        seed_per_row = _checks.is_per_row_seed(seed)
        dev = logits.device
        if counters_are_ptrs:
            seed = seed.contiguous() if seed_per_row else _checks.counter_tensor(seed, dev)
            offset = _checks.counter_tensor(offset, dev)
        stats, status = self.stats, self.status
        if history is not None:
            h_values, h_count, h_overflow = history
            groups, cap, h_stride = h_values.shape[0], h_values.shape[1], h_values.stride(0)
        else:
            h_values = h_count = h_overflow = stats
            groups, cap, h_stride, group = 1, 0, 0, status
        partial = [
            logits, logits.stride(0), self.vocab, self.chunk, self.n_chunks, max(self.topk_width, 1),
            temperature if temp_is_ptr else stats, float(temperature) if (self.sample and not temp_is_ptr) else 0.0,
            seed if counters_are_ptrs else stats, 0 if counters_are_ptrs else int(seed),
            offset if counters_are_ptrs else stats, 0 if counters_are_ptrs else int(offset),
            stats, self.keys, self.buf, self.best, self.best_col,
            h_values, h_stride, h_count, group, groups, q / 100.0, theta, initial, self.thr,
        ]
        partial_meta = dict(
            BLOCK=self.block, KP=self.kp, TOT=self.tot, TOPK=self.topk, STATS=self.need_sums, SAMPLE=self.sample,
            TEMP_IS_PTR=temp_is_ptr, COUNTERS_ARE_PTRS=counters_are_ptrs, SEED_PER_ROW=seed_per_row,
            THRESHOLD=self.history, num_warps=self.num_warps, **_NUMERICS,
        )
        b_p = max(2, triton.next_power_of_2(self.rows)) if self.history else 2
        final = [
            stats, self.keys, self.best, self.best_col, self.n_chunks, self.rows,
            self.ent, self.lp, self.ids, max(self.k, 1), self.token, status, self.thr, self.branch,
            tickets if tickets is not None else status, h_values, h_stride, h_count, h_overflow, group, groups,
            cap, self.entropy_top_k or 0, errors if errors is not None else status,
            offset if (next_offset and counters_are_ptrs) else status,
        ]
        final_meta = dict(
            NCH_P=triton.next_power_of_2(self.n_chunks), KP=self.kp, TOPK=self.topk, ENTROPY=self.want_entropy,
            TOPK_ENTROPY=self.entropy_top_k is not None, CANDIDATES=self.k > 0, SAMPLE=self.sample,
            HISTORY=self.history, B_P=b_p, MB=max(16, min(1024, 4096 // b_p)), ERRORS=errors is not None,
            NEXT_OFFSET=bool(next_offset and counters_are_ptrs), num_warps=4, **_NUMERICS,
        )
        return partial, partial_meta, final, final_meta

    def launch(self, arguments) -> None:
        partial, partial_meta, final, final_meta = arguments
        _partial_kernel[(self.rows, self.n_chunks)](*partial, **partial_meta)
        _finalize_kernel[(self.rows,)](*final, **final_meta)


def _run(logits, *, entropy_top_k=None, want_entropy=False, k=0, temperature=None, seed=0,
         offset=0, history=None, group=None, q=0.0, theta=0.0, initial=0.0):
    """Launch the two kernels for whatever subset of the step is asked for."""
    rows, vocab = logits.shape
    plan = _Plan(rows, vocab, logits.device, entropy_top_k=entropy_top_k, want_entropy=want_entropy, k=k,
                 sample=temperature is not None, history=history)
    tickets = _tickets_for(logits.device, history[0].shape[0]) if history is not None else None
    plan.launch(plan.arguments(logits, temperature, seed, offset, history, group, q, theta, initial, tickets))
    _check_status(plan.status)
    return plan.outputs()


# The backend namespace (same signatures as _registry._BackendTorch).


def entropy(logits, top_k):
    return _run(logits, entropy_top_k=top_k, want_entropy=True)[0]


def topk_logprobs(logits, k):
    out = _run(logits, k=k)
    return out[5], out[4]


def sample(logits, temperature, seed, offset):
    return _run(logits, temperature=temperature, seed=seed, offset=offset)[3]


# The history on its own needs no pass over logits: the reference's vectorised ops run on
# any device without a host sync. Inside eager_step the finalize kernel does both.
history_threshold = reference.history_threshold
history_append_ = reference.history_append_


def eager_step(logits, hist_values, hist_count, hist_overflow, group, k, temperature,
               entropy_top_k, q, theta, initial_threshold, seed, offset):
    ent, thr, branch, token, ids, lp = _run(
        logits, entropy_top_k=entropy_top_k, want_entropy=True, k=k, temperature=temperature,
        seed=seed, offset=offset, history=(hist_values, hist_count, hist_overflow), group=group,
        q=q, theta=theta, initial=initial_threshold,
    )
    return ent, thr, branch, token, ids, lp
