"""The public ops: argument checks, backend choice, and the call.

Outside torch.compile each op calls its backend's function directly (no dispatcher
overhead). While compiling it calls the registered torch.ops.eager_kernels op instead, whose
implementation the dispatcher picks by device (C++ or reference on CPU, Triton on CUDA).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from . import checks as _checks, registry as _registry
from .history import EntropyHistory


class StepResult(NamedTuple):
    """What one EAGer decode step computes for each row (active path)."""

    entropy: torch.Tensor  # float32 [B], nats (full or top-K)
    threshold: torch.Tensor  # float32 [B], from the history before this step
    branch: torch.Tensor  # bool [B], entropy > threshold
    token: torch.Tensor  # int64 [B], the sample (greedy where temperature is 0)
    cand_ids: torch.Tensor  # int64 [B, k], descending log-probability, ties by smaller id
    cand_logprobs: torch.Tensor  # float32 [B, k]


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _call(name: str, backend: str, compiling: bool | None = None):
    if _compiling() if compiling is None else compiling:
        return _registry.dispatcher_op(name)
    return getattr(_registry.implementation(backend), name)


def _random_args(temperature, seed, offset, rows, device, compiling: bool | None = None):
    """Direct calls take Python scalars as they are (no fill kernels, no copies); the
    registered ops take tensors."""
    temp = _checks.check_temperature(temperature, rows, device)
    if not (_compiling() if compiling is None else compiling):
        return temp, seed, offset
    return (_checks.temperature_tensor(temp, rows, device), _checks.seed_tensor(seed, device),
            _checks.counter_tensor(offset, device))


def _prepare(logits, backend):
    _checks.check_logits(logits)
    return _registry.resolve(backend, logits.device)


def entropy(logits: torch.Tensor, *, top_k: int | None = None, backend: str = "auto") -> torch.Tensor:
    """Entropy in nats of softmax(logits) per row, or of the renormalised top-K
    distribution when top_k = K. Returns float32 [B]."""
    backend = _prepare(logits, backend)
    if top_k is not None:
        _checks.check_k("top_k", top_k, logits.shape[1], fused=backend != "torch")
    if logits.shape[0] == 0:
        return logits.new_empty((0,), dtype=torch.float32)
    return _call("entropy", backend)(logits, top_k)


def topk_logprobs(logits: torch.Tensor, k: int, *, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest log-softmax values per row, descending, ties ordered by the smaller
    id. Returns (logprobs float32 [B, k], ids int64 [B, k])."""
    backend = _prepare(logits, backend)
    _checks.check_k("k", k, logits.shape[1], fused=backend != "torch")
    if logits.shape[0] == 0:
        return (logits.new_empty((0, k), dtype=torch.float32), logits.new_empty((0, k), dtype=torch.int64))
    return _call("topk_logprobs", backend)(logits, k)


def sample(logits: torch.Tensor, *, temperature, seed, offset=0, backend: str = "auto") -> torch.Tensor:
    """One token per row from softmax(logits / temperature) by the Gumbel-max trick on the
    package's Philox stream keyed by (seed, offset, row, column); temperature 0 is greedy.
    temperature: float or Tensor[B]; seed, offset: Python ints or one-element int64
    tensors (tensors keep a captured graph valid across steps). seed may also be an int64
    tensor [B], a key per row: row r then draws with key seed[r] and row word 0, so
    sample(x, seed=keys)[r] == sample(x[r:r+1], seed=int(keys[r]))[0] whatever the batch.
    Returns int64 [B]."""
    backend = _prepare(logits, backend)
    rows = logits.shape[0]
    seed = _checks.check_seed(seed, rows, logits.device)
    _checks.check_counter("offset", offset)
    temp, seed, offset = _random_args(temperature, seed, offset, rows, logits.device)
    if rows == 0:
        return logits.new_empty((0,), dtype=torch.int64)
    return _call("sample", backend)(logits, temp, seed, offset)


def eager_step(
    logits: torch.Tensor,
    history: EntropyHistory,
    group: torch.Tensor,
    *,
    k: int,
    temperature,
    entropy_top_k: int | None = None,
    q: float,
    theta: float,
    initial_threshold: float,
    seed,
    offset,
    backend: str = "auto",
) -> StepResult:
    """One EAGer decode step for B rows: entropy, threshold from the history before this
    step, branch = entropy > threshold, the sampled token, and the top-k candidates; then
    this step's entropies are appended to the history (in row order).

    On CUDA this is one pass over the logits in at most two launches, with no host sync;
    on CPU with the C++ extension, one pass per row.
    """
    backend = _prepare(logits, backend)
    if not isinstance(history, EntropyHistory):
        raise TypeError(f"history: expected an EntropyHistory, got {type(history).__name__}")
    _checks.check_same_device("history", history.values, logits.device)
    rows, vocab = logits.shape
    fused = backend != "torch"
    _checks.check_k("k", k, vocab, fused)
    if entropy_top_k is not None:
        _checks.check_k("entropy_top_k", entropy_top_k, vocab, fused)
    q = _checks.check_fraction("q", q, 0.0, 100.0)
    theta = _checks.check_finite_number("theta", theta)
    initial_threshold = _checks.check_finite_number("initial_threshold", initial_threshold)
    seed = _checks.check_seed(seed, rows, logits.device)
    _checks.check_counter("offset", offset)
    compiling = _compiling()  # asked once: each ask costs (docs/api.md#wrapper-cost)
    temp, seed, offset = _random_args(temperature, seed, offset, rows, logits.device, compiling)
    group = history.check_group(group, rows, check_values=backend != "cpu" or compiling)
    if rows == 0:
        f32 = dict(dtype=torch.float32, device=logits.device)
        return StepResult(torch.empty(0, **f32), torch.empty(0, **f32),
                          torch.empty(0, dtype=torch.bool, device=logits.device),
                          torch.empty(0, dtype=torch.int64, device=logits.device),
                          torch.empty((0, k), dtype=torch.int64, device=logits.device), torch.empty((0, k), **f32))
    args = (logits, history.values, history.count, history.overflow, group, k, temp,
            entropy_top_k, q, theta, initial_threshold, seed, offset)
    if backend == "cpu" and not compiling:
        # The C++ step checks the history's room itself (room_check=True: the same
        # ValueError, before any change), which saves check_room's cost at B = 1
        # (docs/api.md#wrapper-cost).
        return StepResult(*_registry.implementation("cpu").eager_step(*args, True))
    history.check_room(group)
    return StepResult(*_call("eager_step", backend, compiling)(*args))
