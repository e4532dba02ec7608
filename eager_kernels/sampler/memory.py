"""The KV cache a configuration needs, checked against a memory limit before decoding."""
from __future__ import annotations

import torch

from ..engines.base import Engine
from .config import EagerConfig


class EagerMemoryError(MemoryError):
    """The configuration's KV cache cannot fit in the memory limit."""


def default_memory_limit(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.9)
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def check_memory(engine: Engine, rows: int, seq_len: int, cfg: EagerConfig) -> int:
    """Raise EagerMemoryError when rows x seq_len tokens of KV cache (x engine.kv_copies:
    the transformers cache is copied when it grows or is reordered) exceed the limit.
    Returns the estimate."""
    device = engine.device
    copies = engine.kv_copies
    need = copies * rows * seq_len * engine.kv_bytes_per_token
    limit = cfg.memory_limit_bytes if cfg.memory_limit_bytes is not None else default_memory_limit(device)
    if need > limit:
        raise EagerMemoryError(
            f"the KV cache of this configuration needs about {need / 2**30:.2f} GiB "
            f"({rows} rows = prompts x min(M, prune_to), x {seq_len} tokens = prompt + "
            f"max_new_tokens{f', x{copies} for copies' if copies > 1 else ''}) but the limit is {limit / 2**30:.2f} GiB; lower "
            f"max_paths_per_prompt, max_new_tokens or the number of prompts per call, or "
            f"raise memory_limit_bytes"
        )
    return need
