"""Plain-torch reference implementations: the oracle of every test and the "torch" backend.

Written for clarity, not speed. Each function notes its memory traffic for logits of
shape [B, V] (element size e bytes after the float32 upcast: 4) so that the fused kernels'
single pass can be compared with it.

Semantics (see docs/api.md; the method: docs/sampler.md#the-method):
- logits are raw (before temperature); -inf entries are legal and contribute nothing.
- Everything is accumulated in float32 (float64 if float64 is passed, which is how the
  tests build the oracle) and returned in that dtype; token ids are int64.
- Ties between equal logits are broken by the smaller token id.
"""
from __future__ import annotations

import torch

from . import checks as _checks

# ---------------------------------------------------------------------------------------
# Entropy
# ---------------------------------------------------------------------------------------


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    return logits if logits.dtype == torch.float64 else logits.float()


def entropy(logits: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """Entropy in nats of softmax(logits), or of the renormalised top-K distribution.

    Traffic: upcast (read B*V, write 4*B*V), [topk: read 4*B*V], log_softmax (read 2x,
    write once), exp (read, write), product + sum (read 2x): about eight passes over the
    row, against the fused kernels' one.
    """
    x = _upcast(logits)
    if top_k is not None:
        # The K largest logits; ties between equal values do not change the entropy.
        x = torch.topk(x, top_k, dim=-1).values
    logp = torch.log_softmax(x, dim=-1)
    p = logp.exp()
    # -inf logits have p == 0 and logp == -inf: their term is 0, not NaN.
    terms = torch.where(p > 0, p * logp, torch.zeros_like(p))
    return -terms.sum(dim=-1)


# ---------------------------------------------------------------------------------------
# Top-k log-probabilities
# ---------------------------------------------------------------------------------------


def topk_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest log-softmax values, descending, ties ordered by the smaller id.

    A stable descending sort of the raw logits fixes the tie order (torch.topk does not
    promise one); the log-probabilities are the sorted logits minus logsumexp, computed
    as (x - max) - log(sum e^(x - max)).
    Traffic: upcast, logsumexp (2 reads), a full sort (several passes, O(V log V)).
    """
    x = _upcast(logits)
    # (x - max) - log(sum e^(x - max)) rather than x - logsumexp(x): at |x| ~ 1e4 a float32
    # logsumexp alone is off by its rounding (~1e-3); x - max is exact near the top.
    m = x.amax(dim=-1, keepdim=True)
    log_s = torch.log(torch.exp(x - m).sum(dim=-1, keepdim=True))
    values, ids = torch.sort(x, dim=-1, descending=True, stable=True)
    return (values[:, :k] - m) - log_s, ids[:, :k]


# ---------------------------------------------------------------------------------------
# Philox, bit for bit as Triton's tl.philox / tl.randint4x (10 rounds, 32-bit lanes)
# ---------------------------------------------------------------------------------------

PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_ROUNDS = 10
_M32 = 0xFFFFFFFF
# tl.uint_to_uniform_float's scale: the largest value with (2**31 - 1) * scale < 1.0.
UNIFORM_SCALE = 4.6566127342e-10
# The uniform is clamped below at this value, so the exponential -log(u) stays finite and
# every column keeps a finite score. The smallest nonzero uniform is UNIFORM_SCALE itself.
UNIFORM_MIN = UNIFORM_SCALE
# An upper bound of the Gumbel noise -log(-log(u)) for every u the stream can produce
# (u <= 1 - 2**-24 in float32 gives at most 16.6): kernels may skip the noise of a block
# whose largest logit + T * GUMBEL_MAX cannot beat the best score found so far.
GUMBEL_MAX = 24.0


def _mulhi32(a: torch.Tensor, b: int) -> torch.Tensor:
    """High 32 bits of a * b for a in [0, 2**32) (int64 tensor) and b < 2**32, without
    overflowing int64: split a into 16-bit halves."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    return (a_hi * b + ((a_lo * b) >> 16)) >> 16


def _mullo32(a: torch.Tensor, b: int) -> torch.Tensor:
    """Low 32 bits of a * b, again without int64 overflow."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    return ((((a_hi * b) & 0xFFFF) << 16) + a_lo * b) & _M32


def philox4x32(c0, c1, c2, c3, k0, k1):
    """Ten Philox-4x32 rounds on int64 tensors holding uint32 values (broadcasting).
    Same round function and key schedule as triton.language.random.philox_impl."""
    k0 = torch.as_tensor(k0, dtype=torch.int64)
    k1 = torch.as_tensor(k1, dtype=torch.int64)
    for _ in range(PHILOX_ROUNDS):
        prev_c0, prev_c2 = c0, c2
        c0 = _mulhi32(prev_c2, PHILOX_ROUND_B) ^ c1 ^ k0
        c2 = _mulhi32(prev_c0, PHILOX_ROUND_A) ^ c3 ^ k1
        c1 = _mullo32(prev_c2, PHILOX_ROUND_B)
        c3 = _mullo32(prev_c0, PHILOX_ROUND_A)
        k0 = (k0 + PHILOX_KEY_A) & _M32
        k1 = (k1 + PHILOX_KEY_B) & _M32
    return c0, c1, c2, c3


def uint32_to_uniform(r: torch.Tensor) -> torch.Tensor:
    """tl.uint_to_uniform_float for uint32: fold to [0, 2**31), scale into [0, 1) float32."""
    folded = torch.where(r >= 2**31, _M32 - r, r)
    return folded.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32)


def philox_uniform(seed, offset, rows: int, cols: int, device=None) -> torch.Tensor:
    """The package's random stream: a [rows, cols] float32 tensor of uniforms in [0, 1).

    Column j of row r is lane (j % 4) of Philox-4x32-10 with key = seed (64 bits, low word
    first, as tl.philox splits it) and counter = (j // 4, r, offset low word, offset high
    word). seed and offset are Python ints or int64 tensors of one element.
    Per-row mode: seed an int64 tensor [rows] (more than one element): row r uses key
    seed[r] and counter word 1 = 0, so its numbers do not depend on its place in the batch.
    Traffic: about 8 int64 [rows, cols/4] temporaries per round: slow, and only an oracle.
    """
    seed = _checks.seed_tensor(seed, device)  # a Python int is filled in on the device, not copied
    if device is not None:
        seed = seed.to(device)
    per_row = seed.numel() != 1
    seed = seed.reshape(-1, 1) if per_row else seed.reshape(())
    if per_row and seed.shape[0] != rows:
        raise ValueError(f"seed: expected one element or shape [{rows}], got {seed.shape[0]} elements")
    offset = _checks.counter_tensor(offset, seed.device)
    device = seed.device
    quads = (cols + 3) // 4
    c0 = torch.arange(quads, dtype=torch.int64, device=device).expand(rows, quads)
    if per_row:
        c1 = torch.zeros((rows, quads), dtype=torch.int64, device=device)
    else:
        c1 = torch.arange(rows, dtype=torch.int64, device=device)[:, None].expand(rows, quads)
    c2 = (offset & _M32).expand(rows, quads)
    c3 = ((offset >> 32) & _M32).expand(rows, quads)
    k0 = seed & _M32
    k1 = (seed >> 32) & _M32
    lanes = philox4x32(c0, c1, c2, c3, k0, k1)
    r = torch.stack(lanes, dim=-1).reshape(rows, quads * 4)[:, :cols]
    return uint32_to_uniform(r)


# ---------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------


def gumbel_scores(logits: torch.Tensor, temperature, seed, offset) -> torch.Tensor:
    """score = x - T * log(E), E = -log(u): the arg-max is a draw from softmax(x / T).

    This is the Gumbel-max trick written as x + T * Gumbel, which needs no division and
    turns into the plain arg-max at T = 0. All in float32, in this order of operations,
    in every backend. temperature: a float or a [B] tensor; seed, offset: ints or
    one-element int64 tensors, or seed an int64 [B] tensor (a key per row).
    """
    x = logits.float()
    rows, cols = x.shape
    u = philox_uniform(seed, offset, rows, cols, device=x.device).clamp_min(UNIFORM_MIN)
    log_e = torch.log(-torch.log(u))
    t = _checks.temperature_tensor(temperature, rows, x.device).to(x.device, torch.float32).reshape(-1, 1)
    return x - t * log_e


def sample(logits: torch.Tensor, temperature, seed, offset) -> torch.Tensor:
    """One token per row drawn from softmax(logits / T); T == 0 is the greedy arg-max.
    Ties go to the smaller id (torch.argmax returns the first maximum).
    Traffic: upcast, Philox (many passes over [B, V] int64), two logs, a fused
    multiply-subtract, arg-max. A Python temperature of 0 skips the stream: x - 0 * log(E)
    is x exactly, so the arg-max is the same."""
    if not isinstance(temperature, torch.Tensor) and temperature == 0:
        return torch.argmax(logits.float(), dim=-1)
    return torch.argmax(gumbel_scores(logits, temperature, seed, offset), dim=-1)


# ---------------------------------------------------------------------------------------
# Entropy history: sorted per-group buffers
# ---------------------------------------------------------------------------------------


def history_threshold(values, count, group, q: float, theta: float, initial: float):
    """max(theta, q-th percentile of the group's recorded entropies), `initial` where the
    group has recorded none. values[g, :count[g]] is sorted ascending; the percentile is
    computed with torch.quantile's own arithmetic (float32 rank, lerp), so the result is
    equal to torch.quantile(recorded, q / 100). Reads two values per row."""
    n = count[group]
    last = (n - 1).clamp_min(0)
    q32 = torch.full((), q / 100.0, dtype=values.dtype, device=values.device)
    rank = q32 * last.to(values.dtype)
    below = rank.to(torch.int64)
    above = rank.ceil().to(torch.int64)
    v_below = values[group, below]
    v_above = values[group, above]
    quantile = torch.lerp(v_below, v_above, rank - below.to(values.dtype))
    thr = torch.clamp_min(quantile, theta)
    return torch.where(n > 0, thr, torch.full_like(thr, initial))


def history_append_(values, count, overflow, entropy, group) -> None:
    """Insert each row's entropy into its group's sorted buffer, in place.

    A group whose new values do not all fit keeps its old values and gets overflow[g] set
    (all or nothing, so the buffer is never half-updated). Vectorised merge of the sorted
    buffer with the sorted new values: O(capacity) elementwise work, no host sync.
    """
    num_groups, capacity = values.shape
    rows = entropy.shape[0]
    if rows == 0:
        return
    dev = values.device
    member = group[None, :] == torch.arange(num_groups, device=dev)[:, None]  # [G, B]
    n_new = member.sum(dim=1)
    fits = count + n_new <= capacity
    inf = torch.full((), float("inf"), dtype=values.dtype, device=dev)
    new_sorted = torch.where(member & fits[:, None], entropy.to(values.dtype)[None, :], inf)
    new_sorted = new_sorted.sort(dim=1).values  # [G, B], +inf padded
    # Merged position of each old value: its index plus the number of new values below it;
    # of each new value: its index plus the number of old values at or below it.
    pos_old = torch.arange(capacity, device=dev) + torch.searchsorted(new_sorted, values, side="left")
    pos_new = torch.arange(rows, device=dev) + torch.searchsorted(values, new_sorted, side="right")
    merged = torch.full((num_groups, capacity + rows), float("inf"), dtype=values.dtype, device=dev)
    merged.scatter_(1, pos_old, values)
    merged.scatter_(1, pos_new, new_sorted)
    values.copy_(merged[:, :capacity])
    count.add_(torch.where(fits, n_new, torch.zeros_like(n_new)))
    overflow.logical_or_(~fits)


# ---------------------------------------------------------------------------------------
# One EAGer decode step
# ---------------------------------------------------------------------------------------


def eager_step(logits, hist_values, hist_count, hist_overflow, group, k, temperature,
               entropy_top_k, q, theta, initial_threshold, seed, offset):
    """Everything one decode step needs, op by op, as a user would write it with torch.
    Returns (entropy, threshold, branch, token, cand_ids, cand_logprobs); the threshold
    uses the history before this step, then this step's entropies are appended."""
    ent = entropy(logits, entropy_top_k)
    thr = history_threshold(hist_values, hist_count, group, q, theta, initial_threshold)
    branch = ent > thr
    token = sample(logits, temperature, seed, offset)
    cand_logprobs, cand_ids = topk_logprobs(logits, k)
    history_append_(hist_values, hist_count, hist_overflow, ent, group)
    return ent, thr, branch, token, cand_ids, cand_logprobs
