"""torch.library schemas for every op, their fake (meta) implementations, the device
implementations, and the choice of backend.

The dispatcher path (torch.ops.eager_kernels.*) is what torch.compile traces through; the
public functions in eager_kernels.kernels.ops call a backend's implementation directly when not
compiling, which skips the several microseconds a dispatcher round trip costs.

Backends, each a namespace of the same functions (see _BackendTorch for the signatures):
- "torch": eager_kernels.kernels.reference plus the value checks; the oracle.
- "cpu":   the C++ extension eager_kernels.kernels._C (built at install time), CPU tensors only.
- "triton": eager_kernels.kernels.triton (CUDA tensors, or CPU tensors under
  TRITON_INTERPRET=1, which is how the tests run it without a GPU).
"""
from __future__ import annotations

import importlib
import os
import warnings

import torch

from . import checks as _checks, reference
from .. import errors
from ..errors import BackendUnavailableError

NAMESPACE = "eager_kernels"

_SCHEMAS = {
    "entropy": "entropy(Tensor logits, int? top_k) -> Tensor",
    "topk_logprobs": "topk_logprobs(Tensor logits, int k) -> (Tensor, Tensor)",
    "sample": "sample(Tensor logits, Tensor temperature, Tensor seed, Tensor offset) -> Tensor",
    "history_threshold": (
        "history_threshold(Tensor values, Tensor count, Tensor group, float q, float theta, "
        "float initial) -> Tensor"
    ),
    "history_append_": (
        "history_append_(Tensor(a!) values, Tensor(b!) count, Tensor(c!) overflow, "
        "Tensor entropy, Tensor group) -> ()"
    ),
    "eager_step": (
        "eager_step(Tensor logits, Tensor(a!) hist_values, Tensor(b!) hist_count, "
        "Tensor(c!) hist_overflow, Tensor group, int k, Tensor temperature, int? entropy_top_k, "
        "float q, float theta, float initial_threshold, Tensor seed, Tensor offset) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
    ),
}

_lib = torch.library.Library(NAMESPACE, "DEF")
for _schema in _SCHEMAS.values():
    _lib.define(_schema)


# ---------------------------------------------------------------------------------------
# Fake implementations: shapes and dtypes only
# ---------------------------------------------------------------------------------------


@torch.library.register_fake(f"{NAMESPACE}::entropy")
def _entropy_fake(logits, top_k):
    return logits.new_empty((logits.shape[0],), dtype=torch.float32)


@torch.library.register_fake(f"{NAMESPACE}::topk_logprobs")
def _topk_fake(logits, k):
    rows = logits.shape[0]
    return (logits.new_empty((rows, k), dtype=torch.float32),
            logits.new_empty((rows, k), dtype=torch.int64))


@torch.library.register_fake(f"{NAMESPACE}::sample")
def _sample_fake(logits, temperature, seed, offset):
    return logits.new_empty((logits.shape[0],), dtype=torch.int64)


@torch.library.register_fake(f"{NAMESPACE}::history_threshold")
def _threshold_fake(values, count, group, q, theta, initial):
    return values.new_empty((group.shape[0],), dtype=torch.float32)


@torch.library.register_fake(f"{NAMESPACE}::history_append_")
def _append_fake(values, count, overflow, entropy, group):
    return None


@torch.library.register_fake(f"{NAMESPACE}::eager_step")
def _step_fake(logits, hist_values, hist_count, hist_overflow, group, k, temperature,
               entropy_top_k, q, theta, initial_threshold, seed, offset):
    rows = logits.shape[0]
    f32 = dict(dtype=torch.float32)
    return (logits.new_empty((rows,), **f32), logits.new_empty((rows,), **f32),
            logits.new_empty((rows,), dtype=torch.bool), logits.new_empty((rows,), dtype=torch.int64),
            logits.new_empty((rows, k), dtype=torch.int64), logits.new_empty((rows, k), **f32))


# ---------------------------------------------------------------------------------------
# The torch backend: the reference plus the data checks the fused kernels do in-pass
# ---------------------------------------------------------------------------------------


class _BackendTorch:
    name = "torch"

    @staticmethod
    def entropy(logits, top_k):
        _checks.check_logits_values(logits)
        return reference.entropy(logits, top_k)

    @staticmethod
    def topk_logprobs(logits, k):
        _checks.check_logits_values(logits)
        return reference.topk_logprobs(logits, k)

    @staticmethod
    def sample(logits, temperature, seed, offset):
        _checks.check_logits_values(logits)
        return reference.sample(logits, temperature, seed, offset)

    history_threshold = staticmethod(reference.history_threshold)
    history_append_ = staticmethod(reference.history_append_)

    @staticmethod
    def eager_step(logits, hist_values, hist_count, hist_overflow, group, k, temperature,
                   entropy_top_k, q, theta, initial_threshold, seed, offset):
        _checks.check_logits_values(logits)
        return reference.eager_step(logits, hist_values, hist_count, hist_overflow, group, k,
                                    temperature, entropy_top_k, q, theta, initial_threshold,
                                    seed, offset)


# ---------------------------------------------------------------------------------------
# The C++ CPU extension: optional, loaded once, with one warning when it cannot be used
# ---------------------------------------------------------------------------------------

_cpu_ext = None
_cpu_ext_error: str | None = None
_warned_fallback = False


def _load_cpu_extension():
    global _cpu_ext, _cpu_ext_error
    if os.environ.get("EAGER_KERNELS_DISABLE_CPP") == "1":
        _cpu_ext_error = "disabled by EAGER_KERNELS_DISABLE_CPP=1"
        return
    try:
        _cpu_ext = importlib.import_module(f"{__package__}._C")
    except ImportError as exc:  # not built (EAGER_KERNELS_SKIP_CPP=1) or built against another torch
        _cpu_ext_error = f"{type(exc).__name__}: {exc}"


_load_cpu_extension()


def cpu_extension_available() -> bool:
    return _cpu_ext is not None


def cpu_extension_error() -> str | None:
    return _cpu_ext_error


def _cpu_unavailable() -> BackendUnavailableError:
    return BackendUnavailableError(
        "backend='cpu': the C++ extension eager_kernels.kernels._C is not available "
        f"({_cpu_ext_error}); build it by reinstalling from a checkout with "
        "`pip install --no-build-isolation -e .` against the installed torch (without "
        "EAGER_KERNELS_SKIP_CPP=1 at install and EAGER_KERNELS_DISABLE_CPP=1 at run time), "
        "or use backend='torch'"
    )


_cpu_backend_module = None


def _cpu_backend():
    global _cpu_backend_module
    if _cpu_ext is None:
        raise _cpu_unavailable()
    if _cpu_backend_module is None:  # imported once: an import per call costs (docs/api.md#wrapper-cost)
        from . import cpu as cpu_backend

        _cpu_backend_module = cpu_backend
    return _cpu_backend_module


def _triton_backend():
    from . import triton as triton_kernels  # imports triton on first use only

    return triton_kernels


# Python CPU implementation for the dispatcher only when the C++ one did not register.
if _cpu_ext is None:
    for _name in _SCHEMAS:
        torch.library.impl(f"{NAMESPACE}::{_name}", "CPU", lib=_lib)(getattr(_BackendTorch, _name))


def _register_cuda():
    def make(name):
        def cuda_impl(*args):
            return getattr(_triton_backend(), name)(*args)

        cuda_impl.__name__ = f"{name}_cuda"
        return cuda_impl

    for name in _SCHEMAS:
        torch.library.impl(f"{NAMESPACE}::{name}", "CUDA", lib=_lib)(make(name))


_register_cuda()


# ---------------------------------------------------------------------------------------
# Choosing the backend
# ---------------------------------------------------------------------------------------


_TRUE = ("1", "true", "on", "yes", "y")


def triton_interpreter_on() -> bool:
    """TRITON_INTERPRET as Triton reads it (it must be set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE


def _check_triton(device: torch.device) -> None:
    """Before any launch: what the Triton backend needs, said in the user's terms."""
    errors.require("triton", extra="triton", purpose="backend='triton' (the CUDA kernels)")
    if device.type == "cuda":
        return
    if device.type == "cpu" and triton_interpreter_on():
        return
    raise BackendUnavailableError(
        f"backend='triton' needs CUDA tensors, got a tensor on {device}; on CPU use backend='cpu' "
        "or 'torch', or set TRITON_INTERPRET=1 before importing triton for the (slow) interpreter"
    )


def resolve(backend: str, device: torch.device) -> str:
    """The concrete backend for a tensor on `device`; raises before any launch when that
    backend cannot run here (BackendUnavailableError, MissingExtraError)."""
    global _warned_fallback
    _checks.check_backend(backend)
    if backend != "auto":
        if backend == "cpu":
            if device.type != "cpu":
                raise ValueError(f"backend='cpu' needs CPU tensors, got a tensor on {device}")
            if _cpu_ext is None:
                raise _cpu_unavailable()
        elif backend == "triton":
            _check_triton(device)
        return backend
    if device.type == "cuda":
        _check_triton(device)
        return "triton"
    if device.type == "cpu":
        if _cpu_ext is not None:
            return "cpu"
        if not _warned_fallback:
            _warned_fallback = True
            warnings.warn(
                "eager_kernels: the C++ CPU extension is not available "
                f"({_cpu_ext_error}); backend='auto' falls back to the torch reference on CPU.",
                RuntimeWarning,
                stacklevel=3,
            )
        return "torch"
    return "torch"


def implementation(backend: str):
    """The namespace of functions for a concrete backend name."""
    if backend == "torch":
        return _BackendTorch
    if backend == "cpu":
        return _cpu_backend()
    if backend == "triton":
        return _triton_backend()
    raise ValueError(f"backend: expected a concrete backend, got {backend!r}")


def dispatcher_op(name: str):
    return getattr(torch.ops.eager_kernels, name).default
