"""The server's one worker: requests that arrive together share one generate() call.

The engine is used by one thread only (this one). Requests wait in a bounded queue; the
worker takes the first, then collects more for up to `window_s` or until `max_prompts`
prompts (or `max_rows` rows), and runs them: one generate() per distinct EagerConfig among
them (a call has one config), each request's prompts with their own keys (from the
request's seed), so what a request gets never depends on what it was batched with:

- in batch-invariant mode (the default; EagerConfig(batch_invariant=True)) an engine whose
  `batch_invariant` attribute is False must run each prompt in engine calls of its own.
  One shared generate() call would then run the prompts one after the other and return
  every request at the end; the worker makes the same engine calls as consecutive
  generate() calls, one per request, so each request returns as soon as its own tree is
  done (the same results, lower latency). An engine that is batch-invariant, or
  --no-batch-invariant, runs the batch in one generate() call;
- a budget stage other than "init" shares the saved budget among the prompts of a call
  (allocate_budget): such requests always get a call of their own;
- a call that fails on a capacity error (ValueError, EagerMemoryError) is retried request
  by request, so only the request at fault gets the error.

A request whose client went away is dropped before its call starts (it is skipped when
taken from the queue); one already in a call runs to the end and its result is discarded.
"""
from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections import OrderedDict

from ..sampler import EagerMemoryError, generate
from ..sampler.generate import isolates_prompts
from .protocol import APIError, Parsed

log = logging.getLogger("eager_kernels.serve")

_STOP = object()


class Job:
    def __init__(self, req: Parsed):
        self.req = req
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.cancelled = False
        self.t_submit = time.perf_counter()


class QueueFull(Exception):
    pass


class Batcher:
    def __init__(self, engine, tokenizer, *, window_s: float = 0.01, max_prompts: int = 16,
                 max_rows: int = 256, max_queue: int = 64, metrics=None):
        self.engine, self.tokenizer = engine, tokenizer
        self.window_s, self.max_prompts, self.max_rows = window_s, max_prompts, max_rows
        self.max_queue = max_queue
        self.metrics = metrics
        self._q: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self.waiting = 0  # jobs submitted and not yet taken by the worker
        self.running = 0  # jobs in the current batch
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

    def stop(self, timeout: float = 30.0) -> None:
        self._q.put(_STOP)
        self._thread.join(timeout)

    def _gauge(self):
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.waiting)
            self.metrics.running.set(self.running)

    # -- the worker --------------------------------------------------------------------
    def _take(self, block_s=None):
        job = self._q.get(timeout=block_s) if block_s is not None else self._q.get()
        if job is not _STOP:
            with self._lock:
                self.waiting -= 1
                self._gauge()
        return job

    def _loop(self):
        while True:
            first = self._take()
            if first is _STOP:
                return
            batch, stop = [first], False
            prompts, rows = len(first.req.prompts), len(first.req.prompts) * first.req.config.max_paths_per_prompt
            deadline = time.perf_counter() + self.window_s
            while prompts < self.max_prompts and rows < self.max_rows:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    job = self._take(left)
                except queue.Empty:
                    break
                if job is _STOP:
                    stop = True
                    break
                batch.append(job)
                prompts += len(job.req.prompts)
                rows += len(job.req.prompts) * job.req.config.max_paths_per_prompt
            live = []
            for job in batch:
                if job.cancelled:  # its client went away while it waited
                    job.future.set_result(None)  # nobody waits for it any more
                    if self.metrics is not None:
                        self.metrics.dropped.inc()
                else:
                    live.append(job)
            with self._lock:
                self.running = len(live)
                self._gauge()
            if self.metrics is not None and live:
                self.metrics.batch_requests.observe(len(live))
            try:
                self._run_batch(live)
            finally:
                with self._lock:
                    self.running = 0
                    self._gauge()
            if stop:
                return

    def _run_batch(self, jobs):
        groups = OrderedDict()  # one generate() per distinct config, in arrival order
        for job in jobs:
            groups.setdefault(repr(job.req.config), []).append(job)
        for group in groups.values():
            try:
                self._run_group(group)
            except BaseException as e:  # never let the worker die: fail this group
                log.exception("generate failed")
                for job in group:
                    if not job.future.done():
                        job.future.set_exception(APIError(500, f"internal error: {type(e).__name__}: {e}",
                                                          type="server_error", code="internal_error"))

    def calls(self, group) -> list:
        """How the requests of one config are split into generate() calls (module docstring)."""
        cfg = group[0].req.config
        if cfg.budget != "init" or isolates_prompts(self.engine, cfg):
            return [[job] for job in group]
        return [group]

    def _run_group(self, group):
        for call in self.calls(group):
            self._run_call(call)

    def _run_call(self, group):
        try:
            self._generate(group)
        except (ValueError, EagerMemoryError) as e:
            if len(group) == 1:
                group[0].future.set_exception(APIError(400, str(e), code="invalid_value"))
                return
            for job in group:  # find the request at fault: each alone
                try:
                    self._generate([job])
                except (ValueError, EagerMemoryError) as e1:
                    job.future.set_exception(APIError(400, str(e1), code="invalid_value"))

    def _generate(self, group):
        prompts = [p for job in group for p in job.req.prompts]
        keys = [k for job in group for k in job.req.keys]
        cfg = group[0].req.config
        t0 = time.perf_counter()
        out = generate(self.engine, prompts, cfg, tokenizer=self.tokenizer, prompt_keys=keys)
        if self.metrics is not None:
            self.metrics.batch_prompts.observe(len(prompts))
            self.metrics.batch_seconds.observe(time.perf_counter() - t0)
        i = 0
        for job in group:
            k = len(job.req.prompts)
            job.future.set_result(out.results[i:i + k])
            i += k
