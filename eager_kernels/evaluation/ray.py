"""The evaluation on Ray workers (`eager-kernels eval --ray`).

`RayEvalRunner` runs the evaluation's methods the same way (`eager-kernels eval --ray`,
batch-invariant by default there): actors hold an Evaluator with the model; the driver
writes the records to the same results.jsonl (the store is the done marker per prompt)
and computes the budget allocation from the eager_init records. In the default mode its
actor calls are the in-process run's calls (batch_size prompts; the budget stages grouped
as Evaluator.budget_calls), so the records equal the in-process run's.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..sampler.ray import _pool, init_ray

def _memory_store():
    from .store import ResultStore

    class MemoryStore(ResultStore):
        def __init__(self):
            self.path, self.records, self.skipped_lines = Path(os.devnull), {}, 0

        def add(self, records) -> None:
            for r in records:
                self.records[r["key"]] = r

    return MemoryStore()


class _EvalActor:
    """An Evaluator with the model loaded once; each row is one chunk of task ids."""

    def __init__(self, model_factory, cfg, threads):
        import torch

        from .runner import Evaluator

        if threads:
            torch.set_num_threads(threads)
        t0 = time.perf_counter()
        model, tok = model_factory()
        self.load_s = time.perf_counter() - t0
        self.ev = Evaluator(model, tok, cfg, _memory_store(), progress=False, log=lambda *a: None)
        self.all_tasks = list(self.ev.tasks)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        out = []
        for spec in batch["spec"]:
            s = json.loads(spec)
            ev = self.ev
            ev.store = _memory_store()
            ev.store.add(s["init"])
            ev.tasks = [self.all_tasks[i] for i in s["ids"]]
            if s["method"] in ("eager_adapt", "eager_full"):
                ev.run_budget(s["method"], s["theta"], extras=s["extras"])
            else:
                ev.run_simple(s["method"], s["theta"])
            out.append(json.dumps(ev.records(s["label"])))
        return {"records": np.array(out, dtype=object), "load_s": np.array([self.load_s] * len(out))}


class RayEvalRunner:
    """Runs Evaluator methods on Ray actors; records go to the evaluator's store (driver)."""

    def __init__(self, evaluator, model_factory: Callable, *, workers: int = 1, address: Optional[str] = None,
                 num_cpus: float = 1, num_gpus: float = 0, threads: Optional[int] = 1,
                 chunk: Optional[int] = None):
        self.ray = init_ray(address)
        self.ev, self.factory = evaluator, model_factory
        self.workers, self.num_cpus, self.num_gpus, self.threads = workers, num_cpus, num_gpus, threads
        _pool(workers)
        # Prompts per actor call. Batch-invariant: enough calls to keep every worker busy (a
        # record does not depend on its batch). Default mode: the batch size, and the budget
        # stages in the in-process calls (Evaluator.budget_calls), so that the records equal
        # the in-process run's of the same batch size.
        self.invariant = bool(evaluator.cfg.batch_invariant)
        balanced = max(1, min(evaluator.cfg.batch_size, -(-len(evaluator.tasks) // (2 * workers))))
        self.chunk = chunk or (balanced if self.invariant else evaluator.cfg.batch_size)
        self.timings = []

    def _specs(self, method: str, theta, extras=None) -> list:
        """The pending prompts of one method label, in chunks (one actor call each)."""
        from .runner import label

        ev = self.ev
        lab, init_lab = label(method, theta), label("eager_init", theta)
        pending = ev._pending(lab)
        if extras is not None and not self.invariant:
            chunks = [[t.id for t in chunk] for _, chunk in ev.budget_calls(pending, extras)]
            chunks += [[t.id for t in pending if extras[t.id] == 0]]
        else:
            chunks = [[t.id for t in pending[i: i + self.chunk]] for i in range(0, len(pending), self.chunk)]
        specs = []
        for ids in filter(None, chunks):
            init = [ev.store.get(ev.key(init_lab, j)) for j in ids] if extras is not None else []
            specs.append({"spec": json.dumps(dict(ids=ids, method=method, theta=theta, label=lab, extras=extras,
                                                  init=init))})
        return specs

    def _map(self, specs: list, what: str) -> None:
        """One Ray Data pipeline over the chunks: one actor pool, the model loaded once per
        actor; records stored (fsynced) on the driver as each chunk arrives."""
        if not specs:
            return
        ev = self.ev
        t0 = time.perf_counter()
        ds = self.ray.data.from_items(specs).map_batches(
            _EvalActor, batch_size=1, compute=_pool(self.workers), num_cpus=self.num_cpus, num_gpus=self.num_gpus,
            fn_constructor_kwargs=dict(model_factory=self.factory, cfg=ev.cfg, threads=self.threads))
        load, prompts, first = 0.0, 0, None
        for b in ds.iter_batches(batch_size=1, batch_format="numpy"):
            recs = json.loads(b["records"][0])
            ev.store.add(recs)
            prompts += len(recs)
            load = max(load, float(b["load_s"][0]))
            first = first if first is not None else time.perf_counter() - t0
        self.timings.append(dict(what=what, prompts=prompts, wall_s=time.perf_counter() - t0, load_s=load,
                                 first_result_s=first))

    def run_many(self, runs: Sequence) -> None:
        """runs: (method, theta) pairs. Two pipelines: every independent method (and the
        eager_init stage of the budget methods) together, then the budget methods with
        their allocations computed on the driver from the eager_init records."""
        ev = self.ev
        runs = [(m, None if th is not None and th == ev.cfg.theta else th) for m, th in runs]
        budget = [(m, th) for m, th in runs if m in ("eager_adapt", "eager_full")]
        first = [(m, th if m == "eager_init" else None) for m, th in runs if m not in ("eager_adapt", "eager_full")]
        first += [("eager_init", th) for _, th in budget]
        specs, seen = [], set()
        for m, th in first:
            if (m, th) not in seen:
                seen.add((m, th))
                specs += self._specs(m, th)
        self._map(specs, "independent methods and eager_init")
        specs = []
        for m, th in dict.fromkeys(budget):
            specs += self._specs(m, th, extras=ev.allocate(m, th))
        self._map(specs, "budget stages")

    def run(self, method: str, theta: Optional[float] = None) -> None:
        self.run_many([(method, theta)])
