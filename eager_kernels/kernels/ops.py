"""The public ops: argument checks, backend choice, and the call.

Outside torch.compile each op calls its backend's function directly (no dispatcher
overhead). While compiling it calls the registered torch.ops.eager_kernels op instead, whose
implementation the dispatcher picks by device (C++ or reference on CPU, Triton on CUDA).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from . import checks as _checks, registry as _registry
from .history import EntropyHistory


class StepResult(NamedTuple):
    """What one EAGer decode step computes for each row (active path)."""

    entropy: torch.Tensor  # float32 [B], nats (full or top-K)
    threshold: torch.Tensor  # float32 [B], from the history before this step
    branch: torch.Tensor  # bool [B], entropy > threshold
    token: torch.Tensor  # int64 [B], the sample (greedy where temperature is 0)
    cand_ids: torch.Tensor  # int64 [B, k], descending log-probability, ties by smaller id
    cand_logprobs: torch.Tensor  # float32 [B, k]


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _call(name: str, backend: str, compiling: bool | None = None):
    if _compiling() if compiling is None else compiling:
        return _registry.dispatcher_op(name)
    return getattr(_registry.implementation(backend), name)


def _random_args(temperature, seed, offset, rows, device, compiling: bool | None = None):
    """Direct calls take Python scalars as they are (no fill kernels, no copies); the
    registered ops take tensors."""
    temp = _checks.check_temperature(temperature, rows, device)
    if not (_compiling() if compiling is None else compiling):
        return temp, seed, offset
    return (_checks.temperature_tensor(temp, rows, device), _checks.seed_tensor(seed, device),
            _checks.counter_tensor(offset, device))


def _prepare(logits, backend):
    _checks.check_logits(logits)
    return _registry.resolve(backend, logits.device)


def entropy(logits: torch.Tensor, *, top_k: int | None = None, backend: str = "auto") -> torch.Tensor:
    """Entropy in nats of softmax(logits) per row, or of the renormalised top-K
    distribution when top_k = K. Returns float32 [B]."""
    backend = _prepare(logits, backend)
    if top_k is not None:
        _checks.check_k("top_k", top_k, logits.shape[1], fused=backend != "torch")
    if logits.shape[0] == 0:
        return logits.new_empty((0,), dtype=torch.float32)
    return _call("entropy", backend)(logits, top_k)


def topk_logprobs(logits: torch.Tensor, k: int, *, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest log-softmax values per row, descending, ties ordered by the smaller
    id. Returns (logprobs float32 [B, k], ids int64 [B, k])."""
    backend = _prepare(logits, backend)
    _checks.check_k("k", k, logits.shape[1], fused=backend != "torch")
    if logits.shape[0] == 0:
        return (logits.new_empty((0, k), dtype=torch.float32), logits.new_empty((0, k), dtype=torch.int64))
    return _call("topk_logprobs", backend)(logits, k)


def sample(logits: torch.Tensor, *, temperature, seed, offset=0, backend: str = "auto") -> torch.Tensor:
    """One token per row from softmax(logits / temperature) by the Gumbel-max trick on the
    package's Philox stream keyed by (seed, offset, row, column); temperature 0 is greedy.
    temperature: float or Tensor[B]; seed, offset: Python ints or one-element int64
    tensors (tensors keep a captured graph valid across steps). seed may also be an int64
    tensor [B], a key per row: row r then draws with key seed[r] and row word 0, so
    sample(x, seed=keys)[r] == sample(x[r:r+1], seed=int(keys[r]))[0] whatever the batch.
    Returns int64 [B]."""
    backend = _prepare(logits, backend)
    rows = logits.shape[0]
    seed = _checks.check_seed(seed, rows, logits.device)
    _checks.check_counter("offset", offset)
    temp, seed, offset = _random_args(temperature, seed, offset, rows, logits.device)
    if rows == 0:
        return logits.new_empty((0,), dtype=torch.int64)
    return _call("sample", backend)(logits, temp, seed, offset)


def eager_step(
    logits: torch.Tensor,
    history: EntropyHistory,
    group: torch.Tensor,
    *,
    k: int,
    temperature,
    entropy_top_k: int | None = None,
    q: float,
    theta: float,
    initial_threshold: float,
    seed,
    offset,
    backend: str = "auto",
) -> StepResult:
    """One EAGer decode step for B rows: entropy, threshold from the history before this
    step, branch = entropy > threshold, the sampled token, and the top-k candidates; then
    this step's entropies are appended to the history (in row order).

    On CUDA this is one pass over the logits in at most two launches, with no host sync;
    on CPU with the C++ extension, one pass per row.
    """
    backend = _prepare(logits, backend)
    if not isinstance(history, EntropyHistory):
        raise TypeError(f"history: expected an EntropyHistory, got {type(history).__name__}")
    _checks.check_same_device("history", history.values, logits.device)
    rows, vocab = logits.shape
    fused = backend != "torch"
    _checks.check_k("k", k, vocab, fused)
    if entropy_top_k is not None:
        _checks.check_k("entropy_top_k", entropy_top_k, vocab, fused)
    q = _checks.check_fraction("q", q, 0.0, 100.0)
    theta = _checks.check_finite_number("theta", theta)
    initial_threshold = _checks.check_finite_number("initial_threshold", initial_threshold)
    seed = _checks.check_seed(seed, rows, logits.device)
    _checks.check_counter("offset", offset)
    compiling = _compiling()  # asked once: each ask costs (docs/api.md#wrapper-cost)
    temp, seed, offset = _random_args(temperature, seed, offset, rows, logits.device, compiling)
    group = history.check_group(group, rows, check_values=backend != "cpu" or compiling)
    if rows == 0:
        f32 = dict(dtype=torch.float32, device=logits.device)
        return StepResult(torch.empty(0, **f32), torch.empty(0, **f32),
                          torch.empty(0, dtype=torch.bool, device=logits.device),
                          torch.empty(0, dtype=torch.int64, device=logits.device),
                          torch.empty((0, k), dtype=torch.int64, device=logits.device), torch.empty((0, k), **f32))
    args = (logits, history.values, history.count, history.overflow, group, k, temp,
            entropy_top_k, q, theta, initial_threshold, seed, offset)
    if backend == "cpu" and not compiling:
        # The C++ step checks the history's room itself (room_check=True: the same
        # ValueError, before any change), which saves check_room's cost at B = 1
        # (docs/api.md#wrapper-cost).
        return StepResult(*_registry.implementation("cpu").eager_step(*args, True))
    history.check_room(group)
    return StepResult(*_call("eager_step", backend, compiling)(*args))


# ---------------------------------------------------------------------------------------
# A prepared step: eager_step planned once, each call only its launches
# ---------------------------------------------------------------------------------------

_STATUS_MESSAGES = (  # the bits of a row's status, as eager_step's checks word them
    (1, "logits: found NaN or +inf (only finite values and -inf are allowed)"),
    (2, "logits: a row has no finite entry (all -inf); its distribution is undefined"),
    (4, "group: ids must lie in [0, num_groups) (the history's num_groups)"),
)


class PreparedStep:
    """eager_step for a fixed batch shape, planned once: the checks of the arguments, the
    launch parameters and every output and scratch buffer come at construction; a call
    is the step's launches and nothing else (the Triton backend: two kernel launches, no
    host synchronisation, no allocation, no branch on data), so it can be captured in a
    CUDA graph (call it once before capturing: the first call compiles the kernels).

        step = PreparedStep(history, rows=B, vocab=V, k=4, temperature=0.6, entropy_top_k=20,
                            q=80.0, theta=2.2, initial_threshold=2.2, seed=0, offset=0)
        res = step(logits, group)   # a StepResult: the same tensors at every call
        ...
        step.check()                # raises if a call met bad data (reads a device flag)

    Call n (from 0) computes what eager_step(logits, history, group, ..., seed=seed,
    offset=offset + n) computes, bit for bit, and appends to the history likewise.

    State on the device, changed in place (never replaced), read by every call:
    `temperature` (float32 [B]), `seed` (int64 [] or [B], a key per row), `offset`
    (int64 [], incremented on the device by each call), `group` (int64 [B], the group
    given at construction; a call may pass another tensor). Change them between calls
    with `update(...)` or in place (`step.offset.fill_(7)`): a captured graph sees the
    change at its next replay.

    Data errors (NaN / +inf logits, a row without a finite logit, a group id out of range)
    on the Triton backend: the bad step appends nothing to the history, each bad row's
    status is or-ed into `errors` (int32 [1], on the device), and `check()` raises them,
    as eager_step would have, when the caller chooses to read them. On the "torch" and
    "cpu" backends (CPU tensors, where eager_step's checks cost no synchronisation) a call
    raises at once, as eager_step does; a call there runs eager_step and copies its
    results into the step's tensors.

    Not safe to call concurrently on two streams (its history and its counters are shared
    by its two launches).
    """

    def __init__(self, history: EntropyHistory, *, rows: int, vocab: int, k: int, temperature,
                 entropy_top_k: int | None = None, q: float, theta: float, initial_threshold: float, seed,
                 offset=0, group=None, dtype=None, backend: str = "auto"):
        if not isinstance(history, EntropyHistory):
            raise TypeError(f"history: expected an EntropyHistory, got {type(history).__name__}")
        for name, value in (("rows", rows), ("vocab", vocab)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "rows" else 1):
                raise ValueError(f"{name}: expected a {'non-negative' if name == 'rows' else 'positive'} int, "
                                 f"got {value!r}")
        if dtype is not None and dtype not in _checks.FLOAT_DTYPES:
            raise TypeError(f"dtype: expected float32, bfloat16 or float16, got {dtype}")
        device = history.device
        self.history, self.rows, self.vocab, self.dtype = history, rows, vocab, dtype
        self.backend = _registry.resolve(backend, device)
        fused = self.backend != "torch"
        _checks.check_k("k", k, vocab, fused)
        if entropy_top_k is not None:
            _checks.check_k("entropy_top_k", entropy_top_k, vocab, fused)
        self.k, self.entropy_top_k = k, entropy_top_k
        self.q = _checks.check_fraction("q", q, 0.0, 100.0)
        self.theta = _checks.check_finite_number("theta", theta)
        self.initial_threshold = _checks.check_finite_number("initial_threshold", initial_threshold)
        self.temperature = _checks.temperature_tensor(_checks.check_temperature(temperature, rows, device), rows,
                                                      device).clone()
        seed = _checks.check_seed(seed, rows, device)
        _checks.check_counter("offset", offset)
        self.seed = _checks.seed_tensor(seed, device).to(device).clone()
        self.offset = _checks.counter_tensor(offset, device).clone()
        group = torch.arange(rows, device=device) % history.num_groups if group is None else group
        self.group = history.check_group(group, rows).clone()
        self.errors = torch.zeros(1, dtype=torch.int32, device=device)
        self._logits = self._group = self._values = self._strides = None
        self._plan = None
        if self.backend == "triton" and rows:
            from . import triton as triton_kernels  # imports triton on first use only

            self._plan = triton_kernels._Plan(rows, vocab, device, entropy_top_k=entropy_top_k, want_entropy=True,
                                              k=k, sample=True, history=history.values)
            self._tickets = torch.zeros(history.num_groups, dtype=torch.int32, device=device)
            self.status = self._plan.status  # each row's status at the last call (0: good)
            self.result = StepResult(*self._plan.outputs())
        else:
            f32 = dict(dtype=torch.float32, device=device)
            self.status = torch.zeros(rows, dtype=torch.int32, device=device)
            self.result = StepResult(torch.zeros(rows, **f32), torch.zeros(rows, **f32),
                                     torch.zeros(rows, dtype=torch.bool, device=device),
                                     torch.zeros(rows, dtype=torch.int64, device=device),
                                     torch.zeros((rows, k), dtype=torch.int64, device=device),
                                     torch.zeros((rows, k), **f32))

    def __call__(self, logits: torch.Tensor, group: torch.Tensor | None = None) -> StepResult:
        """One step on `logits` [rows, vocab] (and `group`, default the step's own): the
        launches only, once `logits` and `group` have been seen (a new tensor object is
        checked and bound first, a few microseconds; so is one whose strides changed).
        Returns `result`."""
        group = self.group if group is None else group
        if (logits is not self._logits or group is not self._group or self.history.values is not self._values
                or logits.stride() != self._strides):  # the same object given another layout (set_)
            self._bind(logits, group)
        if self._plan is not None:
            self._plan.launch(self._args)
        elif self.rows:
            self._eager(logits, self._group_bound)
        return self.result

    def _bind(self, logits, group) -> None:
        _checks.check_logits(logits)
        if tuple(logits.shape) != (self.rows, self.vocab):
            raise ValueError(f"logits: expected shape [{self.rows}, {self.vocab}] (the prepared shape), "
                             f"got {tuple(logits.shape)}")
        if self.dtype is not None and logits.dtype != self.dtype:
            raise TypeError(f"logits: expected {self.dtype} (the prepared dtype), got {logits.dtype}")
        _checks.check_same_device("logits", logits, self.history.device)
        bound = self.history.check_group(group, self.rows, check_values=False)
        h = self.history
        if self._plan is not None:
            if self._tickets.numel() < h.num_groups:  # the history grew (its buffers were replaced)
                self._tickets = torch.zeros(h.num_groups, dtype=torch.int32, device=h.device)
            self._args = self._plan.arguments(
                logits, self.temperature, self.seed, self.offset, (h.values, h.count, h.overflow), bound, self.q,
                self.theta, self.initial_threshold, self._tickets, self.errors, next_offset=True)
        self._logits, self._group, self._group_bound, self._values = logits, group, bound, h.values
        self._strides = logits.stride()

    def _eager(self, logits, group) -> None:
        """The "torch" and "cpu" backends: eager_step, its results copied into place."""
        res = eager_step(logits, self.history, group, k=self.k, temperature=self.temperature,
                         entropy_top_k=self.entropy_top_k, q=self.q, theta=self.theta,
                         initial_threshold=self.initial_threshold, seed=self.seed, offset=self.offset,
                         backend=self.backend)
        for out, new in zip(self.result, res):
            out.copy_(new)
        self.offset.add_(1)

    def update(self, *, temperature=None, seed=None, offset=None) -> None:
        """Set the sampling state in place (the tensors the calls read keep their storage)."""
        device = self.history.device
        if temperature is not None:
            self.temperature.copy_(_checks.temperature_tensor(
                _checks.check_temperature(temperature, self.rows, device), self.rows, device))
        if seed is not None:
            seed = _checks.check_seed(seed, self.rows, device)
            shape = tuple(seed.shape) if isinstance(seed, torch.Tensor) else ()
            if shape != tuple(self.seed.shape):
                raise ValueError(f"seed: expected the prepared form (shape {tuple(self.seed.shape)}), got shape {shape}")
            if isinstance(seed, torch.Tensor):
                self.seed.copy_(seed)
            else:
                self.seed.fill_(seed)
        if offset is not None:
            _checks.check_counter("offset", offset)
            if isinstance(offset, torch.Tensor):
                self.offset.copy_(offset.reshape(()))
            else:
                self.offset.fill_(offset)

    def check(self) -> None:
        """Raise ValueError for the data errors met since the last check (one read of the
        device flag: a synchronisation on CUDA), then clear the flag; also raise if a
        group of the history overflowed its capacity."""
        bits = int(self.errors.item())
        if bits:
            self.errors.zero_()
            raise ValueError(self.error_message(bits))
        self.history.check()

    def error_message(self, bits: int) -> str:
        """The messages of eager_step's checks for the status bits `bits`."""
        return "; ".join(msg.replace("num_groups)", f"{self.history.num_groups})", 1)
                         for bit, msg in _STATUS_MESSAGES if bits & bit)


class StepPlans:
    """eager_step's call, run through PreparedSteps: for a decode loop whose batch changes
    from step to step (the scheduler behind generate()). On the Triton backend each call
    shape (rows, vocab, dtype, the step's settings, the call's place within the loop step)
    gets a PreparedStep on first use, kept afterwards (the `size` most recent); the call's
    seed and offset are written into it in place (a copy or a fill), and its launches
    run. Other backends, and CPU tensors unless `on_cpu` (the Triton interpreter, for
    tests), call eager_step itself.

    Bad data raises as eager_step raises it: at once on CPU (the history's room is checked
    first), a device-side assert on CUDA. The results are the plan's tensors, valid until
    that plan runs again: call next_step() at the start of each loop step, so that several
    calls within one loop step each get their own plan.
    """

    def __init__(self, *, size: int = 32, on_cpu: bool = False):
        self.size, self.on_cpu = size, on_cpu
        self._plans: dict = {}
        self._n = 0

    def next_step(self) -> None:
        self._n = 0

    def __call__(self, logits, history, group, *, k, temperature, entropy_top_k=None, q, theta,
                 initial_threshold, seed, offset, backend: str = "auto") -> StepResult:
        kw = dict(k=k, entropy_top_k=entropy_top_k, q=q, theta=theta, initial_threshold=initial_threshold)
        device = logits.device
        if ((device.type != "cuda" and not self.on_cpu) or _compiling()
                or _registry.resolve(backend, device) != "triton"):
            return eager_step(logits, history, group, temperature=temperature, seed=seed, offset=offset,
                              backend=backend, **kw)
        _checks.check_logits(logits)
        per_row = _checks.is_per_row_seed(seed)
        tensor_temp = isinstance(temperature, torch.Tensor)
        key = (id(history), history.num_groups, tuple(logits.shape), logits.dtype, self._n, per_row,
               "tensor" if tensor_temp else temperature, backend, *kw.values())
        self._n += 1
        step = self._plans.pop(key, None)
        if step is None:
            step = PreparedStep(history, rows=logits.shape[0], vocab=logits.shape[1], temperature=temperature,
                                seed=seed, offset=offset, group=group, backend="triton", **kw)
        else:
            step.update(temperature=temperature if tensor_temp else None, seed=seed, offset=offset)
        self._plans[key] = step  # the most recent last
        while len(self._plans) > self.size:
            self._plans.pop(next(iter(self._plans)))
        # ids out of range: the kernel flags them (status bit 4, the assert below); on CPU the
        # check is cheap and must come before check_room
        group = history.check_group(group, logits.shape[0], check_values=device.type == "cpu")
        if device.type == "cpu":
            history.check_room(group)
        res = step(logits, group)
        if device.type == "cpu":
            if int(step.errors):
                step.check()
        else:
            torch._assert_async(step.errors[0] == 0, "eager_step: bad logits or group ids (NaN, +inf, a row "
                                                      "without a finite logit, or a group id out of range)")
        return res
