"""EntropyHistory: each prompt's record of past entropies, kept sorted on the device.

Layout: values[G, capacity] float32, ascending, +inf past count[g]; count[G] int64;
overflow[G] bool. Keeping each group sorted makes threshold() two gathers and one lerp per
row (O(1) in the number of recorded values, against torch.quantile's sort of the whole
history at every step); append() merges the step's few new values into the sorted buffer.
"""
from __future__ import annotations

import torch

from . import checks as _checks, registry as _registry


class EntropyHistory:
    """Per-group (per-prompt) sorted record of entropies.

    Args:
        num_groups: number of groups (prompts); rows name their group by index.
        capacity: the most values one group can hold. Appending past it never writes out
            of bounds: on CPU it raises ValueError before changing anything; on CUDA (where
            checking would need a host sync) the group keeps its old values and
            ``overflow[g]`` is set; ``check()`` raises if any group overflowed.
        device: where the buffers live (that of the logits they will be used with).
        backend: "auto" (C++ on CPU when built, Triton on CUDA, else torch), or a backend
            name as in the ops.
    """

    def __init__(self, num_groups: int, capacity: int, *, device="cpu", backend: str = "auto"):
        for name, value in (("num_groups", num_groups), ("capacity", capacity)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        _checks.check_backend(backend)
        self.backend = backend
        self.values = torch.full((num_groups, capacity), float("inf"), dtype=torch.float32, device=device)
        # the buffers' own device: "cuda" becomes "cuda:0" (the current one), as on the logits
        self.device = self.values.device
        self.count = torch.zeros(num_groups, dtype=torch.int64, device=self.device)
        self.overflow = torch.zeros(num_groups, dtype=torch.bool, device=self.device)

    @property
    def num_groups(self) -> int:
        return self.values.shape[0]

    @property
    def capacity(self) -> int:
        return self.values.shape[1]

    def _impl(self):
        return _registry.implementation(_registry.resolve(self.backend, self.device))

    def check_group(self, group: torch.Tensor, rows: int, check_values: bool = True) -> torch.Tensor:
        return _checks.check_group(group, rows, self.num_groups, self.device, check_values)

    def check_room(self, group: torch.Tensor) -> None:
        """On CPU, raise before an append that would not fit (no state is changed)."""
        if self.device.type != "cpu" or torch.compiler.is_compiling():
            return
        n = group.numel()
        if n == 0:
            return
        if self._count_max() + n <= self.capacity:
            return  # the common case, decided with one read of count
        need = self.count + torch.bincount(group, minlength=self.num_groups)
        if bool((need > self.capacity).any()):
            g = int(torch.argmax((need > self.capacity).to(torch.int8)))
            raise ValueError(
                f"EntropyHistory: group {g} would hold {int(need[g])} values, over capacity "
                f"{self.capacity}; create the history with a larger capacity"
            )

    def _count_max(self) -> int:
        """max(count) of a CPU history: for a few groups through tolist(), faster than a torch
        reduction and .item() (docs/api.md#wrapper-cost)."""
        count = self.count
        return max(count.tolist()) if count.shape[0] <= 64 else int(count.max())

    def append(self, entropy: torch.Tensor, group: torch.Tensor) -> None:
        """Record entropy[i] in group[i]'s history for every row i, in row order."""
        if not isinstance(entropy, torch.Tensor) or entropy.dim() != 1:
            raise ValueError("entropy: expected a 1-D tensor [B]")
        if not entropy.dtype.is_floating_point:
            raise TypeError(f"entropy: expected a floating tensor, got {entropy.dtype}")
        _checks.check_same_device("entropy", entropy, self.device)
        group = self.check_group(group, entropy.shape[0])
        _checks.fail_if(~torch.isfinite(entropy).all(), "entropy: expected finite values")
        self.check_room(group)
        impl = _registry.dispatcher_op("history_append_") if torch.compiler.is_compiling() else self._impl().history_append_
        impl(self.values, self.count, self.overflow, entropy.to(torch.float32).contiguous(), group)

    def threshold(self, group: torch.Tensor, *, q: float, theta: float, initial: float) -> torch.Tensor:
        """max(theta, q-th percentile (0..100, linear interpolation) of each row's group
        history), or `initial` where the group has no values yet. Returns float32 [B]."""
        q = _checks.check_fraction("q", q, 0.0, 100.0)
        theta = _checks.check_finite_number("theta", theta)
        initial = _checks.check_finite_number("initial", initial)
        if not isinstance(group, torch.Tensor) or group.dim() != 1:
            raise ValueError("group: expected a 1-D int64 tensor [B]")
        group = self.check_group(group, group.shape[0])
        impl = _registry.dispatcher_op("history_threshold") if torch.compiler.is_compiling() else self._impl().history_threshold
        return impl(self.values, self.count, group, q, theta, initial)

    def recorded(self, g: int) -> torch.Tensor:
        """Group g's recorded values, sorted ascending (a copy; syncs on CUDA)."""
        return self.values[g, : int(self.count[g])].clone()

    def check(self) -> None:
        """Raise if any group dropped values for lack of capacity (syncs on CUDA)."""
        if bool(self.overflow.any()):
            groups = torch.nonzero(self.overflow).flatten().tolist()
            raise ValueError(f"EntropyHistory: groups {groups} overflowed capacity {self.capacity}")

    def reset(self) -> None:
        self.values.fill_(float("inf"))
        self.count.zero_()
        self.overflow.zero_()

    def __repr__(self) -> str:
        return f"EntropyHistory(num_groups={self.num_groups}, capacity={self.capacity}, device={self.device})"
