"""Inference stacks behind one protocol (base.Engine): the EAGer loop runs on any of them.

- TransformersEngine(model, tokenizer=None): a transformers causal LM (any device).
- LlamaCppEngine(model_path, n_ctx=None, n_threads=None): a GGUF file through
  llama-cpp-python (the `llamacpp` extra), CPU; tokenises and applies the chat template
  itself.

See docs/engines.md.
"""
from .base import Engine, as_engine
from .transformers import TransformersEngine

__all__ = ["Engine", "LlamaCppEngine", "TransformersEngine", "as_engine"]


def __getattr__(name):
    if name == "LlamaCppEngine":  # llama_cpp is imported when the engine is created, not here
        from .llamacpp import LlamaCppEngine

        return LlamaCppEngine
    raise AttributeError(name)
