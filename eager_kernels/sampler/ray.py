"""EAGer generation and evaluation sharded over Ray workers with Ray Data.

Optional: `pip install "eager-kernels[ray]"` (ray[data]). Nothing here imports ray before a
function is called.

The pipeline (`generate_ray`):

1. stage "init": the pending prompts (a list, or a JSONL file) become a Ray Dataset;
   `map_batches` runs `generate_stage` on a pool of actors (`ActorPoolStrategy`, `workers`
   actors, `num_cpus` / `num_gpus` each) that each load the model once. Each actor writes
   its batch's prompts (paths and metrics, one JSON line each) to a part file of the stage
   folder (atomically: a temporary file, then a rename), and returns one small summary row
   per prompt (paths used, mean entropy, whether a path is right).
2. the budget (config.budget != "init"): the driver reads only the summary columns of the
   stage's parts with Ray Data, takes the saved budget sum(M - used) as a Ray aggregate
   (`Dataset.sum`) and each prompt's extra paths with `allocate_budget`; no path is
   collected to the driver. The allocation is written to allocation.json.
3. stage config.budget: the prompts that get extra paths, same actors, caps = extra paths.

A finished stage gets a done marker (`_DONE`); a rerun skips finished stages, and in an
unfinished one skips the prompts already in a part file: nothing done is lost or redone.
Every path's randomness is keyed by (config.seed, the stage, the prompt's key, its
lineage), never by its row. With config.batch_invariant the result does not depend on
the number of workers, the batching or the order, to the last bit: `generate_ray` gives
what `generate(model, prompts, config, prompt_keys=keys)` gives in one process. Without
it, a row's logits move with its batch (engines/base.py, "Batch invariance": up to
tenths of a nat on llama.cpp), and an entropy near the threshold can flip a branch.

`eager_kernels.evaluation.ray.RayEvalRunner` runs the evaluation's methods on the same actors' pattern.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Callable, Optional, Sequence

DONE = "_DONE"


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("eager_kernels.sampler.ray needs Ray Data: pip install 'eager-kernels[ray]' "
                          f"(ray[data]) ({exc})") from exc
    return ray


def init_ray(address: Optional[str] = None, **kwargs):
    """Connect to a Ray cluster (address, e.g. "auto" or "ray://host:10001"; None: the
    RAY_ADDRESS environment variable, else a local Ray started here). Reuses a running
    connection."""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, **kwargs)
    return ray


def _pool(workers: int):
    from ray.data import ActorPoolStrategy

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: expected an int >= 1, got {workers!r}")
    return ActorPoolStrategy(size=workers)


# ---------------------------------------------------------------------------------------
# Prompts and outputs
# ---------------------------------------------------------------------------------------


def read_prompts(prompts) -> list:
    """[(key, prompt)] from a list (key = position; a prompt is text or a list of token
    ids) or a JSONL file of {"prompt": text} or {"input_ids": [...]}, optional "key"."""
    if isinstance(prompts, (str, os.PathLike)):
        rows = []
        with open(prompts, encoding="utf-8") as f:
            for i, line in enumerate(x for x in f if x.strip()):
                d = json.loads(line)
                p = d.get("input_ids", d.get("prompt"))
                if p is None:
                    raise ValueError(f"{prompts}: line {i + 1} has neither 'prompt' nor 'input_ids'")
                rows.append((int(d.get("key", i)), p))
        return rows
    return list(enumerate(prompts))


def _write_part(folder: Path, lines: list) -> None:
    """One part file, written whole or not at all (temporary name, fsync, rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{uuid.uuid4().hex}.jsonl"
    tmp = folder / f".{name}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(x, sort_keys=True) + "\n" for x in lines))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / name)


def _read_parts(folder: Path) -> list:
    out = []
    for part in sorted(folder.glob("part-*.jsonl")) if folder.exists() else []:
        with open(part, encoding="utf-8") as f:
            out += [json.loads(x) for x in f if x.strip()]
    return out


def load_results(out_dir) -> list:
    """Every prompt's record (key, prompt index, paths of all stages), sorted by key."""
    by_key = {}
    for stage_dir in sorted(p for p in Path(out_dir).iterdir() if p.is_dir()):
        for r in _read_parts(stage_dir):
            rec = by_key.setdefault(r["key"], {"key": r["key"], "paths": [], "branch_events": 0})
            rec["paths"] += r["paths"]
            rec["branch_events"] += r["branch_events"]
    for rec in by_key.values():
        rec["paths"].sort(key=lambda p: (p["stage"] != "init", p["stage"]))
    return [by_key[k] for k in sorted(by_key)]


# ---------------------------------------------------------------------------------------
# The generation actors
# ---------------------------------------------------------------------------------------


class _StageActor:
    """Loads (model, tokenizer) once; each call runs one stage on a batch of prompts."""

    def __init__(self, model_factory, config, stage, out_dir, threads, verifier):
        import torch

        if threads:
            torch.set_num_threads(threads)
        t0 = time.perf_counter()
        self.model, self.tok = model_factory()
        self.load_s = time.perf_counter() - t0
        self.cfg, self.stage, self.folder, self.verifier = config, stage, Path(out_dir) / stage, verifier

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from .generate import generate_stage

        keys = [int(k) for k in batch["key"]]
        prompts = [json.loads(p) for p in batch["prompt"]]
        caps = [int(c) for c in batch["cap"]]
        t0 = time.perf_counter()
        out = generate_stage(self.model, prompts, self.cfg, stage=self.stage, caps=caps, tokenizer=self.tok,
                             prompt_keys=keys)
        wall = time.perf_counter() - t0
        lines, correct = [], []
        for key, r in zip(keys, out.results):
            paths = [dict(token_ids=p.token_ids, logprob=p.logprob, entropies=p.entropies,
                          branch_steps=p.branch_steps, finished=p.finished, stage=p.stage, text=p.text)
                     for p in r.paths]
            ok = bool(self.verifier and any(self.verifier(key, p) for p in r.paths))
            correct.append(ok)
            lines.append(dict(key=key, stage=self.stage, paths=paths, branch_events=int(r.branch_events),
                              n_paths=len(paths), mean_entropy=r.mean_entropy, correct=ok))
        _write_part(self.folder, lines)
        return {"key": np.array(keys, dtype=np.int64),
                "n_paths": np.array([len(r.paths) for r in out.results], dtype=np.int64),
                "tokens": np.array([int(out.metrics.tokens_generated)] + [0] * (len(keys) - 1), dtype=np.int64),
                "wall_s": np.array([wall] + [0.0] * (len(keys) - 1)),
                "load_s": np.array([self.load_s] + [0.0] * (len(keys) - 1))}


def _run_stage(ray, model_factory, rows: list, cfg, stage: str, out_dir: Path, *, workers, num_cpus, num_gpus,
               batch_size, threads, verifier) -> dict:
    """Run one stage over rows [(key, prompt, cap)] not yet in a part file; mark it done."""
    folder = out_dir / stage
    if (folder / DONE).exists():
        return {"skipped": True}
    done = {r["key"] for r in _read_parts(folder)}
    todo = [r for r in rows if r[0] not in done]
    stats = {"prompts": len(todo), "resumed": len(done), "tokens": 0, "decode_s": 0.0, "load_s": 0.0}
    if todo:
        t0 = time.perf_counter()
        ds = ray.data.from_items([{"key": k, "prompt": json.dumps(p), "cap": c} for k, p, c in todo])
        ds = ds.map_batches(_StageActor, batch_size=batch_size, compute=_pool(workers), num_cpus=num_cpus,
                            num_gpus=num_gpus,
                            fn_constructor_kwargs=dict(model_factory=model_factory, config=cfg, stage=stage,
                                                       out_dir=str(out_dir), threads=threads, verifier=verifier))
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            stats["tokens"] += int(b["tokens"].sum())
            stats["decode_s"] += float(b["wall_s"].sum())
            stats["load_s"] = max(stats["load_s"], float(b["load_s"].max()))
        stats["wall_s"] = time.perf_counter() - t0
    (folder).mkdir(parents=True, exist_ok=True)
    (folder / DONE).write_text(json.dumps(stats))
    return stats


def _allocate(ray, out_dir: Path, cfg, n_prompts: int) -> dict:
    """Extra paths per prompt key, from the init stage's summary columns (a Ray aggregate
    for the saved budget; the paths stay in the part files)."""
    from .budget import allocate_budget

    marker = out_dir / "allocation.json"
    if marker.exists():
        return {int(k): v for k, v in json.loads(marker.read_text())["extra_paths"].items()}
    M = cfg.max_paths_per_prompt
    files = [str(p) for p in sorted((out_dir / "init").glob("part-*.jsonl"))]
    ds = ray.data.read_json(files).select_columns(["key", "n_paths", "mean_entropy", "correct"])
    ds = ds.map(lambda r: dict(r, saved=max(0, M - int(r["n_paths"]))))
    saved = int(ds.sum("saved") or 0)
    small = sorted(ds.select_columns(["key", "n_paths", "mean_entropy", "correct"]).take_all(), key=lambda r: r["key"])
    if len(small) != n_prompts:
        raise RuntimeError(f"allocation: {len(small)} init records for {n_prompts} prompts")
    used = [int(r["n_paths"]) for r in small]
    assert saved == sum(max(0, M - u) for u in used)
    kw = dict(mode=cfg.budget, adapt_factor=cfg.adapt_factor)
    if cfg.budget == "full":
        kw["correct"] = [bool(r["correct"]) for r in small]
    elif cfg.budget == "entropy":
        kw["mean_entropy"] = [float(r["mean_entropy"]) for r in small]
    extras = allocate_budget(used, M, **kw)
    out = {int(r["key"]): int(e) for r, e in zip(small, extras)}
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"saved": saved, "extra_paths": {str(k): v for k, v in out.items()}}))
    os.replace(tmp, marker)
    return out


def generate_ray(model_factory: Callable, prompts, config, out_dir, *, workers: int = 1, num_cpus: float = 1,
                 num_gpus: float = 0, batch_size: int = 16, threads: Optional[int] = 1,
                 verifier: Optional[Callable] = None, address: Optional[str] = None) -> dict:
    """EAGer generation over Ray workers, with the budget stages; returns per-stage stats.

    Args:
        model_factory: a picklable callable returning (model, tokenizer) (tokenizer may be
            None with token-id prompts); each actor calls it once.
        prompts: a list of prompts (text or token ids; key = position) or a JSONL path.
        config: an EagerConfig; config.budget selects the second stage.
        out_dir: the stage folders (init/, <budget>/) of JSONL parts, allocation.json.
        workers, num_cpus, num_gpus: actors and their resources (one actor per GPU:
            num_gpus=1); threads: torch threads per actor (None: leave torch's default).
        batch_size: prompts per generate call in an actor.
        verifier: budget "full": verifier(key, path) -> bool (picklable; default
            config.verifier, which then gets the prompt's key as its prompt index).
    Read the result with load_results(out_dir).
    """
    ray = init_ray(address)
    config.validate()
    out_dir = Path(out_dir)
    rows = read_prompts(prompts)
    keys = [k for k, _ in rows]
    if len(set(keys)) != len(keys):
        raise ValueError("prompts: keys must be unique (they name the outputs)")
    verifier = verifier or config.verifier
    common = dict(workers=workers, num_cpus=num_cpus, num_gpus=num_gpus, batch_size=batch_size, threads=threads,
                  verifier=verifier)
    M = config.max_paths_per_prompt
    stats = {"init": _run_stage(ray, model_factory, [(k, p, M) for k, p in rows], config, "init", out_dir, **common)}
    if config.budget != "init":
        extras = _allocate(ray, out_dir, config, len(rows))
        rows2 = [(k, p, extras[k]) for k, p in rows if extras.get(k, 0) > 0]
        stats[config.budget] = _run_stage(ray, model_factory, rows2, config, config.budget, out_dir, **common)
    return stats
