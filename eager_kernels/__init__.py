"""eager-kernels: fused kernels for entropy-aware (EAGer) generation.

Importing the package compiles nothing and touches no GPU: Triton is imported on the first
Triton call, and the C++ CPU extension (built at install time) is loaded if present.
"""
from . import reference
from ._registry import cpu_extension_available, cpu_extension_error
from .history import EntropyHistory
from .ops import StepResult, eager_step, entropy, sample, topk_logprobs
from .sampler import EagerConfig, EagerOutput, allocate_budget, generate

__version__ = "0.1.0"

__all__ = [
    "EagerConfig",
    "EagerOutput",
    "allocate_budget",
    "generate",
    "EntropyHistory",
    "StepResult",
    "cpu_extension_available",
    "cpu_extension_error",
    "eager_step",
    "entropy",
    "reference",
    "sample",
    "topk_logprobs",
]
