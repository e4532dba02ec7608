"""The "cpu" backend: the C++ kernels of eager_kernels.kernels._C, called directly (no dispatcher).

Every function has the signature of _registry._BackendTorch. temperature may be a Python
float or a float32 [B] tensor, seed / offset Python ints or one-element int64 tensors: the
C++ entry points read them as they are (no fill kernel, no .item() round trip). The same
kernels are registered for the CPU dispatch key (torch.ops.eager_kernels.*), which is the
path torch.compile traces.

Kernels (csrc/): one pass over each row's logits per op, AVX-512 when the CPU has it
(`_C.isa()`), parallel over rows and over vocabulary chunks (chunk layout fixed by the
shape, so results do not depend on the thread count). NaN / +inf logits and rows without a
finite logit raise ValueError; eager_step raises before touching the history.
"""
from __future__ import annotations

from . import _C

name = "cpu"

entropy = _C.entropy  # (logits, top_k)
topk_logprobs = _C.topk_logprobs  # (logits, k)
sample = _C.sample  # (logits, temperature, seed, offset)
history_threshold = _C.history_threshold  # (values, count, group, q, theta, initial)
history_append_ = _C.history_append_  # (values, count, overflow, entropy, group)
# (logits, hist_values, hist_count, hist_overflow, group, k, temperature, entropy_top_k,
#  q, theta, initial_threshold, seed, offset)
eager_step = _C.eager_step
