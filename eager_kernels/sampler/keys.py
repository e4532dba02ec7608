"""Batch-invariant random keys for the sampler's paths.

Every path draws its samples with its own 64-bit key (eager_step's per-row seed, offset =
the decode step), so a prompt's paths do not depend on which other prompts share its batch,
on its position in the batch, on sharding or on the order of prompts:

- a stage's key:   stage_key(config.seed, stage name)            (host, once per stage)
- a root path:     mix(stage key, the prompt's key)               (prompt_keys of generate)
- a child path:    mix(parent's key, step it was opened, child rank); rank 0 is the parent's
  own continuation and keeps the parent's key.

mix is the SplitMix64 generator: key + (index + 1) * golden gamma, then the SplitMix64
finaliser (Steele, Lea, Flood 2014). On tensors it runs on the device in int64 with
wrapping arithmetic (two's complement; torch's integer multiply and add wrap on CPU and CUDA),
with the right shifts made logical by masking; `mix_int` is the same function on Python
ints (the tests check the two agree bit for bit).
"""
from __future__ import annotations

import zlib

import torch

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB
# Child index = step * _RANKS + rank (rank < num_branches <= 64 in practice, < 2**16 allowed).
_RANKS = 1 << 16


def _signed(v: int) -> int:
    v &= _M64
    return v - (1 << 64) if v >= 1 << 63 else v


def _fmix_int(z: int) -> int:
    z &= _M64
    z = ((z ^ (z >> 30)) * _C1) & _M64
    z = ((z ^ (z >> 27)) * _C2) & _M64
    return z ^ (z >> 31)


def mix_int(key: int, index: int) -> int:
    """SplitMix64 output number `index` of the stream started at `key`, as a signed int64."""
    return _signed(_fmix_int((key & _M64) + ((index + 1) & _M64) * _GOLDEN))


def _lsr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 values (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def mix(key: torch.Tensor, index) -> torch.Tensor:
    """mix_int on int64 tensors (index: an int or an int64 tensor broadcasting with key)."""
    z = key + (torch.as_tensor(index, dtype=torch.int64, device=key.device) + 1) * _signed(_GOLDEN)
    z = (z ^ _lsr(z, 30)) * _signed(_C1)
    z = (z ^ _lsr(z, 27)) * _signed(_C2)
    return z ^ _lsr(z, 31)


def stage_key(seed: int, stage: str) -> int:
    """The key of one budget stage: config.seed mixed with a stable hash of the stage's
    name ("init", "adapt", "full", "entropy"), the same in every process."""
    return mix_int(seed, zlib.crc32(stage.encode()))


def root_keys(stage: int, prompt_keys, device) -> torch.Tensor:
    """int64 [G]: the key of each prompt's first path in a stage."""
    keys = torch.tensor(list(prompt_keys), dtype=torch.int64, device=device)
    return mix(torch.full_like(keys, stage), keys)


def child_keys(parent: torch.Tensor, step: int, rank: torch.Tensor) -> torch.Tensor:
    """Keys of the children a path opens at `step`: rank 0 keeps the parent's key."""
    return torch.where(rank == 0, parent, mix(parent, step * _RANKS + rank))


def check_prompt_keys(prompt_keys, num_prompts: int) -> list:
    """prompt_keys as a list of ints in int64 range, one per prompt (None: 0..G-1)."""
    if prompt_keys is None:
        return list(range(num_prompts))
    if isinstance(prompt_keys, torch.Tensor):
        prompt_keys = prompt_keys.tolist()
    keys = list(prompt_keys)
    if len(keys) != num_prompts:
        raise ValueError(f"prompt_keys: expected one key per prompt ({num_prompts}), got {len(keys)}")
    for k in keys:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"prompt_keys: expected ints, got {type(k).__name__}")
        if not -(2**63) <= k < 2**63:
            raise ValueError(f"prompt_keys: expected values in int64 range, got {k}")
    return [int(k) for k in keys]
