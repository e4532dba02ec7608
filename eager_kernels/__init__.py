"""eager-kernels: fused kernels for entropy-aware (EAGer) generation.

Importing the package compiles nothing and touches no GPU: Triton is imported on the first
Triton call, and the C++ CPU extension (built at install time) is loaded if present.
"""
from .kernels import reference
from .kernels.registry import cpu_extension_available, cpu_extension_error
from .kernels.history import EntropyHistory
from .kernels.ops import PreparedStep, StepResult, eager_step, entropy, sample, topk_logprobs
from .sampler import EagerConfig, EagerOutput, allocate_budget, generate

__version__ = "0.1.0"


def __getattr__(name):
    if name == "hf":  # the transformers entry points (eager_kernels.hf), imported on first use
        import importlib

        return importlib.import_module(".hf", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "EagerConfig",
    "EagerOutput",
    "allocate_budget",
    "generate",
    "EntropyHistory",
    "PreparedStep",
    "StepResult",
    "cpu_extension_available",
    "cpu_extension_error",
    "eager_step",
    "entropy",
    "reference",
    "sample",
    "topk_logprobs",
]
