"""The EAGer sampler: batched, KV-cached entropy-aware generation for transformers models.

    from eager_kernels import EagerConfig, generate
    out = generate(model, ["What is 17 + 25?"], EagerConfig.seed_policy(max_new_tokens=32),
                   tokenizer=tokenizer)
    out.results[0].answer.text, out.metrics

transformers is imported on the first generate() call, not here.
"""
from .budget import allocate_budget, entropy_scaled_allocation, saved_budget
from .config import DEFAULT, EagerConfig, EagerOutput, Metrics, Path, PromptResult
from .decode import EagerMemoryError, kv_bytes_per_token
from .generate import generate, generate_stage

__all__ = [
    "DEFAULT",
    "EagerConfig",
    "EagerMemoryError",
    "EagerOutput",
    "Metrics",
    "Path",
    "PromptResult",
    "allocate_budget",
    "entropy_scaled_allocation",
    "generate",
    "generate_stage",
    "kv_bytes_per_token",
    "saved_budget",
]
