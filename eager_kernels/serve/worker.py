"""The server's one worker: every request joins the running batch at the next decode step.

The engine is used by one thread only (this one), which runs a sampler Scheduler: a
request's prompts become a unit the moment it arrives (no batch window), share every
decode step with the requests already running, and leave when their trees are done: the
request's future completes then, while the others go on. Requests wait in a bounded queue
(`max_queue`, 429 beyond it) while the running rows would pass `max_rows`.

- Randomness: each prompt's paths are keyed by the request's seed (its prompt keys), never
  by the batch, so what a request gets does not depend on what it shared steps with
  wherever the engine is batch-invariant. In batch-invariant mode (the default) on an
  engine that is not, each prompt decodes in steps of its own: its unit is exclusive and
  runs when the batch is empty (the requests then take turns, as before).
- A budget stage other than "init" shares the saved budget among the prompts of one
  request (allocate_budget over its init trees): the budget unit joins when the request's
  init unit is done.
- A request whose configuration does not fit the engine (ValueError, EagerMemoryError at
  its admission) gets a 400; one admitted together with others is retried alone first.
- A request whose client went away is aborted: its rows leave at the next step.
"""
from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time

import torch

from ..sampler import EagerMemoryError
from ..sampler.budget import allocate_budget
from ..sampler.config import Metrics, Path, PromptResult
from ..sampler.generate import best_path, isolates_prompts, prepare
from ..sampler.keys import stage_key
from ..sampler.scheduler import Scheduler, Unit
from .protocol import APIError, Parsed

log = logging.getLogger("eager_kernels.serve")

_STOP = object()
RESERVE_ROWS = 64


class Job:
    def __init__(self, req: Parsed):
        self.req = req
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.cancelled = False
        self.t_submit = time.perf_counter()
        self.units: list = []
        self.paths: list = [[] for _ in req.prompts]
        self.events = [0] * len(req.prompts)
        self.pending = 0  # units not done yet
        self.started = False  # a unit of it joined the batch (it no longer counts as waiting)
        self.stage = "init"


class QueueFull(Exception):
    pass


class StepWorker:
    """Runs the requests on one Scheduler (module docstring).

    Args:
        engine, tokenizer: what the requests run on.
        max_rows: the most rows (prompts x min(M, prune_to)) the running requests hold.
        max_queue: the most requests waiting to join; more get QueueFull (HTTP 429).
        metrics: the server's Prometheus metrics (app.Metrics), or None.
    """

    def __init__(self, engine, tokenizer, *, max_rows: int = 256, max_queue: int = 64, metrics=None):
        self.engine, self.tokenizer = engine, tokenizer
        self.max_rows, self.max_queue, self.metrics = max_rows, max_queue, metrics
        self._q: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self.waiting = 0  # jobs submitted and not yet running
        self.running = 0  # jobs with a unit in the batch
        # The engine's cache is sized at a prefill for up to RESERVE_ROWS rows (at most
        # max_rows), so that requests arriving later can join without waiting for an empty
        # batch; one that does not fit waits for it, and the next prefill sizes anew.
        self.sched = Scheduler(engine, max_rows=max_rows, reserve_rows=min(max_rows, RESERVE_ROWS))
        self._jobs: list = []  # jobs taken from the queue and not finished
        self._thread = threading.Thread(target=self._loop, name="eager-serve-worker", daemon=True)
        self._thread.start()

    # -- the request side (event loop thread) ---------------------------------------------

    def submit(self, req: Parsed) -> Job:
        with self._lock:
            if self.waiting >= self.max_queue:
                raise QueueFull()
            self.waiting += 1
            self._gauge()
        job = Job(req)
        self._q.put(job)
        return job

    def cancel(self, job: Job) -> None:
        job.cancelled = True
        self._q.put(None)  # wakes an idle worker

    def stop(self, timeout: float = 30.0) -> None:
        self._q.put(_STOP)
        self._thread.join(timeout)

    def _gauge(self):
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.waiting)
            self.metrics.running.set(self.running)

    # -- the worker --------------------------------------------------------------------

    def _loop(self):
        while True:
            # Idle: block for the next request; busy: take what has arrived, then step.
            try:
                item = self._q.get() if not self.sched.busy else self._q.get_nowait()
            except queue.Empty:
                item = None
            while item is not None or not self._q.empty():
                if item is _STOP:
                    self._drain()
                    return
                if item is not None:
                    self._start(item)
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
            self._abort_cancelled()
            if not self.sched.busy:
                self._set_running()
                continue
            t0 = time.perf_counter()
            try:
                self.sched.step()
            except BaseException as e:  # never let the worker die: fail what was running
                log.exception("decode step failed")
                self._fail_all(e)
                continue
            self._count_step(time.perf_counter() - t0)

    def _drain(self):
        """The server is stopping (after uvicorn's graceful shutdown): finish what runs."""
        while self.sched.busy:
            self._abort_cancelled()
            try:
                self.sched.step()
            except BaseException as e:
                self._fail_all(e)
                return

    def _start(self, job: Job):
        if job.cancelled:  # its client went away while it waited
            self._finish(job, None)
            return
        try:  # generate()'s checks: token ids in the vocabulary, EOS ids, stop sequences
            _, _, job.eos, job.stops = prepare(self.engine, job.req.prompts, job.req.config, self.tokenizer, None,
                                               False, job.req.keys)
        except ValueError as e:
            self._fail(job, APIError(400, str(e), code="invalid_value"))
            return
        self._jobs.append(job)
        self._add_stage(job, "init", [job.req.config.max_paths_per_prompt] * len(job.req.prompts),
                        list(range(len(job.req.prompts))))

    def _add_stage(self, job: Job, stage: str, caps: list, which: list, alone: bool = False):
        req, cfg = job.req, job.req.config
        job.stage = stage
        device = self.engine.device
        eos = job.eos
        stops = [torch.tensor(s, dtype=torch.int64, device=device) for s in job.stops if len(s) > 0]
        isolate = isolates_prompts(self.engine, cfg)
        groups = [[j] for j in which] if isolate or alone else [which]
        metrics = Metrics()
        for group in groups:
            unit = Unit(prompts=[req.prompts[j] for j in group], caps=[caps[which.index(j)] for j in group],
                        cfg=cfg, seed=stage_key(cfg.seed, stage), keys=[req.keys[j] for j in group], eos=eos,
                        stops=stops, metrics=metrics, exclusive=isolate,
                        on_done=self._on_done(job, group, stage), on_error=self._on_error(job, group, stage))
            job.units.append(unit)
            job.pending += 1
            self.sched.add(unit)

    def _on_done(self, job: Job, group: list, stage: str):
        def done(unit, paths):
            job.pending -= 1
            job.units.remove(unit)
            for j, raw, ev in zip(group, paths, unit.events):
                job.events[j] += ev
                for d in raw:
                    text = self.tokenizer.decode(d["token_ids"], skip_special_tokens=True) \
                        if self.tokenizer is not None else None
                    job.paths[j].append(Path(prompt_index=j, stage=stage, text=text, **d))
            if job.pending == 0:
                self._stage_done(job)
        return done

    def _on_error(self, job: Job, group: list, stage: str, retried: bool = False):
        def failed(unit, exc):
            job.units.remove(unit)
            job.pending -= 1
            if not isinstance(exc, (ValueError, EagerMemoryError)):
                self._fail(job, exc)
            elif not retried:  # it may have joined with others: retry it alone first
                retry = Unit(prompts=unit.prompts, caps=unit.caps, cfg=unit.cfg, seed=unit.seed, keys=unit.keys,
                             eos=unit.eos, stops=unit.stops, metrics=unit.metrics, exclusive=True,
                             on_done=self._on_done(job, group, stage),
                             on_error=self._on_error(job, group, stage, retried=True))
                job.units.append(retry)
                job.pending += 1
                self.sched.add(retry)
            else:
                self._fail(job, APIError(400, str(exc), code="invalid_value"))
        return failed

    def _stage_done(self, job: Job):
        cfg = job.req.config
        if job.stage == "init" and cfg.budget != "init":
            used = [len(p) for p in job.paths]
            partial = [PromptResult(paths=list(p), answer=best_path(p)) for p in job.paths]
            extras = allocate_budget(used, cfg.max_paths_per_prompt, mode=cfg.budget, verifier=cfg.verifier,
                                     results=partial, adapt_factor=cfg.adapt_factor)
            which = [i for i, e in enumerate(extras) if e > 0]
            if which:
                self._add_stage(job, cfg.budget, [extras[i] for i in which], which)
                return
        results = [PromptResult(paths=p, answer=best_path(p), branch_events=job.events[i])
                   for i, p in enumerate(job.paths)]
        self._finish(job, results)

    def _finish(self, job: Job, results):
        if job in self._jobs:
            self._jobs.remove(job)
        self._leave_queue(job)
        self._set_running()  # before the client hears back
        if not job.future.done():
            job.future.set_result(results)
        if results is None and self.metrics is not None:
            self.metrics.dropped.inc()

    def _fail(self, job: Job, exc):
        for u in list(job.units):
            self.sched.abort(u)
        job.units.clear()
        if job in self._jobs:
            self._jobs.remove(job)
        self._leave_queue(job)
        self._set_running()
        if not job.future.done():
            if not isinstance(exc, APIError):
                exc = APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error",
                               code="internal_error")
            job.future.set_exception(exc)

    def _fail_all(self, exc):
        for job in list(self._jobs):
            self._fail(job, exc)
        self.sched.release()
        self.sched.waiting.clear()

    def _abort_cancelled(self):
        for job in [j for j in self._jobs if j.cancelled]:
            for u in list(job.units):
                self.sched.abort(u)
            job.units.clear()
            self._finish(job, None)

    def _set_running(self) -> int:
        """The gauges: requests running (a unit in the batch) and waiting (submitted, not
        yet running: in the queue or in the scheduler's)."""
        live, started = 0, 0
        for j in self._jobs:
            if any(u.state == "running" for u in j.units):
                live += 1
            if not j.started and any(u.state != "waiting" for u in j.units):
                j.started, started = True, started + 1
        with self._lock:
            self.running = live
            self.waiting -= started
            self._gauge()
        return live

    def _leave_queue(self, job: Job) -> None:
        """A job that ends without having run: it no longer waits."""
        if not job.started:
            job.started = True
            with self._lock:
                self.waiting -= 1

    def _count_step(self, seconds: float):
        live = self._set_running()
        if self.metrics is not None and live:
            self.metrics.batch_requests.observe(live)
            self.metrics.batch_prompts.observe(sum(len(u.prompts) for u in self.sched.running))
            self.metrics.batch_seconds.observe(seconds)
