"""Choosing and loading an engine for the command line (generate, demo, eval, bench).

The default engine is llama.cpp when llama-cpp-python is installed: it was faster than, or even
with, the transformers engine on every CPU measured (docs/engines.md, "Choosing an engine
per CPU"); without the package
the transformers engine runs, and asking for llamacpp explicitly gives the install line.
"""
from __future__ import annotations

import importlib.util
import time
import warnings
from pathlib import Path
from typing import Optional

from ..errors import BatchInvarianceError

ENGINES = ("auto", "transformers", "llamacpp", "vllm")


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def resolve(engine: str, *, model_dir=None) -> str:
    """"auto" -> "llamacpp" when installed and no transformers --model was given, else
    "transformers"; an explicit name is checked."""
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {ENGINES}, got {engine!r}")
    if engine == "auto":
        return "llamacpp" if llama_cpp_installed() and not model_dir else "transformers"
    return engine


def load(engine: str, *, model_dir=None, gguf=None, threads=None, kv_unified=None, batch_invariant=False):
    """(model or engine, tokenizer, display name, load seconds) for `engine` (resolved);
    kv_unified: the llama.cpp engine's KV layout (LlamaCppEngine; None: its own choice).
    batch_invariant: for a caller that runs EagerConfig(batch_invariant=True): the llama.cpp
    or transformers engine in its batch-invariant mode where it holds (invariant_or), so
    that prompts share decode steps; elsewhere the default engine (the sampler then
    isolates prompts)."""
    t0 = time.perf_counter()
    if engine == "vllm":
        return _load_vllm(model_dir, gguf, t0)
    if engine == "llamacpp":
        from .llamacpp import LlamaCppEngine

        if model_dir:
            raise ValueError("--model is a transformers model directory; with --engine llamacpp pass --gguf FILE")
        if gguf:
            path, name = Path(gguf), Path(gguf).name
        else:
            from .models import GGUF_WEIGHT_TYPE, default_gguf_path

            path = default_gguf_path()
            name = f"SmolLM2-135M-Instruct (default, GGUF {GGUF_WEIGHT_TYPE.upper()})"
        def default():
            return LlamaCppEngine(path, n_threads=threads, kv_unified=kv_unified)

        if batch_invariant and kv_unified is not True:
            eng = invariant_or(lambda: LlamaCppEngine(path, n_threads=threads, batch_invariant=True), default)
        else:
            eng = default()
        return eng, eng.tokenizer, f"{name} on llama.cpp", time.perf_counter() - t0
    if gguf:
        raise ValueError("--gguf needs --engine llamacpp (or auto with llama-cpp-python installed)")
    from .models import load_default_model, load_model

    if model_dir:
        model, tok = load_model(model_dir)
        name = str(model_dir)
    else:
        model, tok = load_default_model()
        name = "SmolLM2-135M-Instruct (default)"
    if batch_invariant:
        model = invariant_transformers(model, tok)
    return model, tok, f"{name} on transformers", time.perf_counter() - t0


def invariant_or(make, fallback):
    """make(): an engine in its batch-invariant mode; where that mode is not claimed for the
    model, build or machine (BatchInvarianceError), a warning that says why and fallback(),
    whose prompts the sampler then isolates."""
    try:
        return make()
    except BatchInvarianceError as e:
        warnings.warn(f"{e}; each prompt decodes in calls of its own", stacklevel=3)
        return fallback()


def invariant_transformers(model, tokenizer):
    """TransformersEngine(model, batch_invariant=True), or the model itself (invariant_or)."""
    from .transformers import TransformersEngine

    return invariant_or(lambda: TransformersEngine(model, tokenizer=tokenizer, batch_invariant=True),
                        lambda: model)


def _load_vllm(model_dir, gguf, t0):
    """VllmEngine on a transformers model directory (default: the converted default model),
    float32 on CPU (as the transformers engine runs it), the model's dtype on a GPU."""
    from .vllm_engine import VllmEngine, import_vllm

    if gguf:
        raise ValueError("--gguf is for --engine llamacpp; --engine vllm takes --model DIR (a transformers directory)")
    import_vllm()
    from vllm.platforms import current_platform

    if model_dir:
        path, name = Path(model_dir), str(model_dir)
    else:
        from .models import default_model_dir, load_default_model

        load_default_model()  # converts the shipped GGUF once into default_model_dir()
        path, name = default_model_dir(), "SmolLM2-135M-Instruct (default)"
    args = {"dtype": "float32"} if current_platform.device_type == "cpu" else {}
    eng = VllmEngine(path, **args)
    return eng, eng.tokenizer, f"{name} on vLLM", time.perf_counter() - t0


def default_model_factory(path: Optional[str] = None, *, engine: str = "transformers",
                          gguf: Optional[str] = None, threads: Optional[int] = 1, batch_invariant: bool = False):
    """A picklable factory of (model or engine, tokenizer): on the transformers engine the
    default model (path None) or a local model directory; on the llama.cpp engine
    (engine="llamacpp") the default GGUF or `gguf`, with `threads` llama.cpp threads; with
    batch_invariant=True the engine in its batch-invariant mode where that holds (load)."""
    if engine not in ("transformers", "llamacpp"):
        raise ValueError(f"engine: expected 'transformers' or 'llamacpp', got {engine!r}")
    return _ModelFactory(path, engine, gguf, threads, batch_invariant)


class _ModelFactory:
    def __init__(self, path, engine="transformers", gguf=None, threads=1, batch_invariant=False):
        self.path, self.engine, self.gguf, self.threads = path, engine, gguf, threads
        self.batch_invariant = batch_invariant

    def __call__(self):
        if self.engine == "llamacpp":
            model, tok, _, _ = load("llamacpp", model_dir=self.path, gguf=self.gguf, threads=self.threads,
                                    batch_invariant=self.batch_invariant)
            return model, tok
        from .models import load_default_model, load_model

        model, tok = load_model(self.path) if self.path else load_default_model()
        return (invariant_transformers(model, tok) if self.batch_invariant else model), tok
