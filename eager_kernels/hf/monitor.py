"""EntropyMonitor: record each step's entropy inside any generate() (and llama-cpp-python).

    monitor = EntropyMonitor(entropy_top_k=20)
    out = model.generate(**inputs, logits_processor=LogitsProcessorList([monitor]), ...)
    monitor.entropies          # float32 [rows, steps] on the logits' device

It is a transformers LogitsProcessor that returns the scores unchanged. Each step costs one
fused entropy op on the scores' device (plus, with an EagerConfig, one threshold read and one
history append), all queued without a host synchronisation; the per-step results are kept
as device tensors and stacked when read.

The scores it sees are those generate() hands to processors: transformers applies the
processors built from the generation config (repetition_penalty, min_length, ...) first, then
the ones passed in `logits_processor=`, then the sampling warpers (temperature, top-k,
top-p). Without config processors they are the model's raw logits (beam search hands
log-softmax values, whose entropy is the same).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..kernels import ops
from ..kernels.checks import check_backend
from ..kernels.history import EntropyHistory
from ..sampler import EagerConfig

try:
    from transformers import LogitsProcessor
except ImportError as exc:  # pragma: no cover - exercised only without transformers
    raise ImportError("eager_kernels.hf needs transformers (pip install 'eager-kernels[sampler]')") from exc

_FROM_CONFIG = object()


class EntropyMonitor(LogitsProcessor):
    """A LogitsProcessor that records every row's entropy at every step, scores unchanged.

    Args:
        entropy_top_k: K of the top-K renormalised entropy, or None for the full-vocabulary
            entropy. With `eager_config` and no entropy_top_k, the config's.
        eager_config: optional EagerConfig; when given, the monitor also keeps an
            EntropyHistory per prompt and records, before each step's append, EAGer's
            threshold (max(theta, q-th percentile of the prompt's history), or
            initial_threshold while it is empty) and the branch decision (entropy >
            threshold) for every row, as eager_step does.
        rows_per_prompt: rows of one prompt (consecutive rows, as generate() expands them
            for num_return_sequences or num_beams); they share a history. Default 1.
        backend: the ops backend ("auto", "torch", "cpu", "triton").

    Attributes (stacked on read):
        entropies: float32 [rows, steps].
        thresholds: float32 [rows, steps] (None without eager_config).
        branches: bool [rows, steps] (None without eager_config).
        history: the EntropyHistory (None without eager_config).

    One monitor follows one generate() call; call reset() before the next one (a call
    whose rows or length do not continue the recorded ones raises ValueError).
    Also usable as a llama-cpp-python logits processor (numpy scores of one sequence).
    """

    def __init__(self, entropy_top_k: Optional[int] = _FROM_CONFIG, *, eager_config: Optional[EagerConfig] = None,
                 rows_per_prompt: int = 1, backend: str = "auto"):
        if eager_config is not None and not isinstance(eager_config, EagerConfig):
            raise TypeError(f"eager_config: expected an EagerConfig, got {type(eager_config).__name__}")
        if entropy_top_k is _FROM_CONFIG:
            entropy_top_k = eager_config.entropy_top_k if eager_config is not None else None
        if entropy_top_k is not None and (isinstance(entropy_top_k, bool) or not isinstance(entropy_top_k, int)
                                          or entropy_top_k < 1):
            raise ValueError(f"entropy_top_k: expected a positive int or None, got {entropy_top_k!r}")
        if isinstance(rows_per_prompt, bool) or not isinstance(rows_per_prompt, int) or rows_per_prompt < 1:
            raise ValueError(f"rows_per_prompt: expected a positive int, got {rows_per_prompt!r}")
        check_backend(backend)
        self.entropy_top_k = entropy_top_k
        self.eager_config = eager_config
        self.rows_per_prompt = rows_per_prompt
        self.backend = backend
        self.reset()

    def reset(self) -> None:
        """Forget every recorded step (and the history) for the next generate() call."""
        self._ent, self._thr, self._br = [], [], []
        self._stacked = {}
        self._rows = None
        self._start_len = None
        self._group = None
        self.history = None

    @property
    def steps(self) -> int:
        return len(self._ent)

    def _stack(self, name, items):
        if self._rows is None:
            return None if name != "entropies" else torch.empty((0, 0), dtype=torch.float32)
        cached = self._stacked.get(name)
        if cached is None or cached.shape[1] != len(items):
            cached = torch.stack(items, dim=1)
            self._stacked[name] = cached
        return cached

    @property
    def entropies(self) -> torch.Tensor:
        return self._stack("entropies", self._ent)

    @property
    def thresholds(self) -> Optional[torch.Tensor]:
        return self._stack("thresholds", self._thr) if self.eager_config is not None else None

    @property
    def branches(self) -> Optional[torch.Tensor]:
        return self._stack("branches", self._br) if self.eager_config is not None else None

    def _start(self, rows: int, length: int, device) -> None:
        if rows % self.rows_per_prompt:
            raise ValueError(f"EntropyMonitor: {rows} rows are not a multiple of rows_per_prompt="
                             f"{self.rows_per_prompt}")
        self._rows, self._start_len = rows, length
        if self.eager_config is not None:
            groups = rows // self.rows_per_prompt
            self._group = torch.arange(rows, device=device) // self.rows_per_prompt
            self.history = EntropyHistory(groups, 64 * self.rows_per_prompt, device=device, backend=self.backend)

    def _grow_history(self) -> None:
        """Double the history's capacity before a step that could not fit (the counts are
        known on the host: rows_per_prompt values per group per step; no device read)."""
        need = (self.steps + 1) * self.rows_per_prompt
        old = self.history
        if need <= old.capacity:
            return
        new = EntropyHistory(old.num_groups, max(need, 2 * old.capacity), device=old.device, backend=old.backend)
        new.values[:, : old.capacity] = old.values
        new.count.copy_(old.count)
        new.overflow.copy_(old.overflow)
        self.history = new

    def record(self, scores: torch.Tensor, length: int) -> None:
        """Record one step of scores [rows, V] (a sequence of `length` tokens so far)."""
        if scores.dim() != 2:
            raise ValueError(f"scores: expected [rows, V], got shape {tuple(scores.shape)}")
        rows = scores.shape[0]
        if self._rows is None:
            self._start(rows, length, scores.device)
        elif rows != self._rows or length != self._start_len + self.steps:
            raise ValueError(
                f"EntropyMonitor: this step ({rows} rows, {length} tokens) does not continue the recorded "
                f"call ({self._rows} rows, {self._start_len + self.steps} tokens expected); call "
                f"monitor.reset() before reusing it in another generate()")
        logits = scores if scores.stride(-1) == 1 else scores.contiguous()
        ent = ops.entropy(logits, top_k=self.entropy_top_k, backend=self.backend)
        if self.eager_config is not None:
            cfg = self.eager_config
            self._grow_history()
            thr = self.history.threshold(self._group, q=cfg.q, theta=cfg.theta, initial=cfg.initial_threshold)
            self.history.append(ent, self._group)
            self._thr.append(thr)
            self._br.append(ent > thr)
        self._ent.append(ent)

    def __call__(self, input_ids, scores):
        if isinstance(scores, torch.Tensor):  # transformers: input_ids [rows, length], scores [rows, V]
            self.record(scores, input_ids.shape[-1])
            return scores
        # llama-cpp-python: input_ids (numpy, the sequence so far), scores (numpy float32 [V])
        import numpy as np

        if not isinstance(scores, np.ndarray):
            raise TypeError(f"scores: expected a torch.Tensor or a numpy array, got {type(scores).__name__}")
        arr = scores if scores.dtype == np.float32 else scores.astype(np.float32)
        self.record(torch.from_numpy(np.ascontiguousarray(arr)).reshape(1, -1), len(input_ids))
        return scores

    def __repr__(self) -> str:
        return (f"EntropyMonitor(entropy_top_k={self.entropy_top_k}, eager_config="
                f"{'set' if self.eager_config is not None else None}, steps={self.steps})")
