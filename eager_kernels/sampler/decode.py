"""The batched, KV-cached EAGer decode loop (one budget stage), over any engine.

The loop uses only the engine protocol (eager_kernels/engines/base.py): prefill, decode one
token per row, reorder rows, release, and a few facts (vocabulary, device, KV bytes per
token). All active paths of all prompts are rows of one batch: one engine decode per step,
one eager_step per step, and one host read per step. The loop itself is the step-level
scheduler (scheduler.py): its state is one PathTable (paths.py), its step the pure
functions of step.py; `run_stage` runs one stage of a fixed set of prompts on it.
"""
from __future__ import annotations

from ..engines.base import Engine
from ..engines.transformers import kv_bytes_per_token  # noqa: F401  (re-exported by the sampler)
from .config import EagerConfig
from .memory import EagerMemoryError, check_memory, default_memory_limit  # noqa: F401  (re-exported)
from .scheduler import Scheduler, Unit


def run_stage(engine: Engine, prompts: list, caps: list, cfg: EagerConfig, *, eos_ids: list,
              stop_seqs: list, seed: int, metrics, progress=None, prompt_keys=None) -> tuple:
    """Decode one tree per prompt (prompts: lists of token ids, caps: M per prompt) on
    `engine`. seed: the stage's key (keys.stage_key); prompt_keys: one int per prompt
    (default 0..G-1); each path samples with its own key (per-row seed of eager_step).
    Returns (per prompt: a list of raw path dicts, the peak number of active rows, the
    number of branch events) and updates `metrics` in place. The engine's cache is
    released at the end, also when this raises."""
    import torch

    device = engine.device
    stops = [torch.tensor(s, dtype=torch.int64, device=device) for s in stop_seqs if len(s) > 0]
    out = {}
    unit = Unit(prompts=[list(p) for p in prompts], caps=list(caps), cfg=cfg, seed=seed,
                keys=list(range(len(prompts))) if prompt_keys is None else list(prompt_keys),
                eos=list(eos_ids or []), stops=stops, metrics=metrics, progress=bool(progress),
                on_done=lambda u, paths: out.update(paths=paths))
    sched = Scheduler(engine)
    sched.add(unit)
    sched.run()
    return out["paths"], unit.peak, unit.events
