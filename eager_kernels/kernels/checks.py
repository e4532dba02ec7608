"""Argument checks shared by every backend.

Shape, dtype, device and range checks cost nothing and run always. Checks that need the
data (NaN / +inf logits, a row with no finite logit, group ids out of range) run without a
host synchronisation: on CPU they raise ValueError at once; on CUDA they are queued with
torch._assert_async, which fails the stream (a device-side assert) if they do not hold.
"""
from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BACKENDS = ("auto", "torch", "triton", "cpu")
FUSED_MAX_K = 64  # top-k width the fused kernels keep in registers


def check_logits(logits) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"logits: expected a 2-D tensor [B, V], got shape {tuple(logits.shape)}")
    if logits.dtype not in FLOAT_DTYPES:
        raise TypeError(f"logits: expected float32, bfloat16 or float16, got {logits.dtype}")
    if logits.shape[1] == 0:
        raise ValueError("logits: the vocabulary dimension V is 0")
    if logits.shape[0] > 0 and logits.stride(1) != 1:
        raise ValueError(
            f"logits: the last dimension must be contiguous (stride 1), got strides {logits.stride()}"
        )


def check_backend(backend) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")


def check_k(name: str, k, vocab: int, fused: bool) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{name}: expected an int, got {type(k).__name__}")
    if k < 1 or k > vocab:
        raise ValueError(f"{name}: expected 1 <= {name} <= V = {vocab}, got {k}")
    if fused and k > FUSED_MAX_K:
        raise ValueError(
            f"{name}: the fused backends support {name} <= {FUSED_MAX_K}, got {k} "
            f"(use backend='torch' for wider selections)"
        )


def check_temperature(temperature, rows: int, device):
    """temperature checked: a Python float stays a float; a tensor becomes float32 [B] on
    `device` (its values are checked without a host sync on CUDA)."""
    if isinstance(temperature, torch.Tensor):
        if temperature.dtype.is_complex or temperature.dtype == torch.bool:
            raise TypeError(f"temperature: expected a real tensor, got {temperature.dtype}")
        if temperature.dim() == 0:
            temperature = temperature.reshape(1).expand(rows)
        if temperature.shape != (rows,):
            raise ValueError(f"temperature: expected a scalar or shape [{rows}], got {tuple(temperature.shape)}")
        if temperature.device != torch.device(device):
            raise ValueError(f"temperature: expected device {device}, got {temperature.device}")
        t = temperature.to(torch.float32).contiguous()
        bad = ~((t >= 0) & (t < float("inf")))  # catches NaN too
        fail_if(bad.any(), "temperature: expected finite values >= 0 (0 = greedy), got a negative, inf or NaN value")
        return t
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature: expected a float or a tensor, got {type(temperature).__name__}")
    if not (temperature >= 0) or math.isinf(temperature):
        raise ValueError(f"temperature: expected a finite value >= 0 (0 = greedy), got {temperature}")
    return float(temperature)


def temperature_tensor(temperature, rows: int, device) -> torch.Tensor:
    """A checked temperature (float or tensor) as a float32 [B] tensor."""
    if isinstance(temperature, torch.Tensor):
        return temperature
    return torch.full((rows,), temperature, dtype=torch.float32, device=device)


def check_counter(name: str, value) -> None:
    """seed / offset: a Python int in int64 range or a one-element int64 tensor."""
    if isinstance(value, torch.Tensor):
        if value.dtype != torch.int64 or value.numel() != 1:
            raise TypeError(f"{name}: expected a Python int or a one-element int64 tensor, "
                            f"got {value.dtype} with {value.numel()} elements")
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected a Python int or a one-element int64 tensor, got {type(value).__name__}")
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"{name}: expected a value in int64 range, got {value}")


def check_seed(seed, rows: int, device):
    """seed checked: a Python int or a one-element int64 tensor (one key for the batch; the
    tensor comes back 0-dim), or an int64 tensor of shape [B] on `device`, a key per row
    (per-row mode: row r draws from key seed[r] with the counter's row word 0, so its draws
    do not depend on the batch). At B = 1 the two forms give the same draws."""
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.int64:
            raise TypeError(f"seed: expected a Python int or an int64 tensor, got {seed.dtype}")
        if seed.numel() == 1:
            return seed.reshape(())
        if seed.dim() != 1 or seed.shape[0] != rows:
            raise ValueError(f"seed: expected a Python int, a one-element tensor or shape [{rows}] "
                             f"(a key per row), got shape {tuple(seed.shape)}")
        if seed.device != torch.device(device):
            raise ValueError(f"seed: a per-row seed tensor must be on {device} (the logits' device), "
                             f"got {seed.device}")
        return seed.contiguous()
    check_counter("seed", seed)
    return seed


def is_per_row_seed(seed) -> bool:
    """True for a key-per-row seed (an int64 tensor with other than one element)."""
    return isinstance(seed, torch.Tensor) and seed.numel() != 1


def seed_tensor(seed, device) -> torch.Tensor:
    """A checked seed as the registered ops take it: 0-dim int64, or int64 [B] per row."""
    if is_per_row_seed(seed):
        return seed
    return counter_tensor(seed, device)


def counter_tensor(value, device) -> torch.Tensor:
    """A 0-dim int64 tensor on `device`; ints become a fill, not a host-to-device copy."""
    if isinstance(value, torch.Tensor):
        return value.reshape(()).to(device)
    return torch.full((), value, dtype=torch.int64, device=device)


def check_logits_values(logits: torch.Tensor) -> None:
    """NaN / +inf logits and rows with no finite logit are errors; -inf is legal.
    Used by the torch backend (the fused kernels compute the same status in their pass)."""
    if logits.shape[0] == 0:
        return
    bad_value = (torch.isnan(logits) | (logits == float("inf"))).any()
    empty_row = (logits == float("-inf")).all(dim=-1).any()
    raise_if_bad_status(bad_value, empty_row)


def fail_if(bad: torch.Tensor, message: str) -> None:
    """Raise ValueError(message) if the 0-dim bool tensor `bad` is true: at once on CPU;
    queued with torch._assert_async (no host sync) on CUDA and while compiling."""
    if bad.device.type == "cpu" and not torch.compiler.is_compiling():
        if bool(bad):
            raise ValueError(message)
    else:
        torch._assert_async(~bad, message)


def raise_if_bad_status(bad_value: torch.Tensor, empty_row: torch.Tensor) -> None:
    fail_if(bad_value, "logits: found NaN or +inf (only finite values and -inf are allowed)")
    fail_if(empty_row, "logits: a row has no finite entry (all -inf); its distribution is undefined")


def check_same_device(name: str, tensor: torch.Tensor, device) -> None:
    if tensor.device != (device if isinstance(device, torch.device) else torch.device(device)):
        raise ValueError(f"{name}: expected a tensor on {device} (the logits' device), got {tensor.device}")


def check_group(group, rows: int, num_groups: int, device, check_values: bool = True) -> torch.Tensor:
    """group as a contiguous int64 [B] tensor; its ids are checked to lie in range unless
    check_values is False (the C++ kernels check them on their own, for free)."""
    if (not check_values and type(group) is torch.Tensor and group.dtype == torch.int64 and group.shape == (rows,)
            and group.device == device and group.is_contiguous()):
        return group  # already what the checks below would return (the common case of a decode step)
    if not isinstance(group, torch.Tensor):
        raise TypeError(f"group: expected an int64 tensor, got {type(group).__name__}")
    if group.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"group: expected an integer tensor (int64), got {group.dtype}")
    if group.shape != (rows,):
        raise ValueError(f"group: expected shape [{rows}], got {tuple(group.shape)}")
    check_same_device("group", group, device)
    group = group.to(torch.int64).contiguous()
    if rows and check_values:
        bad = (group < 0).any() | (group >= num_groups).any()
        fail_if(bad, f"group: ids must lie in [0, {num_groups}) (the history's num_groups)")
    return group


def check_fraction(name: str, value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if not (low <= value <= high):
        raise ValueError(f"{name}: expected a value in [{low}, {high}], got {value}")
    return float(value)


def check_finite_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    return float(value)
