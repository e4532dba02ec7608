"""The step-level EAGer scheduler: trees join and leave the running batch at every step.

    sched = Scheduler(engine)
    unit = sched.add(prompts, caps, cfg, stage="init", keys=..., eos=..., stops=..., on_done=fn)
    while sched.busy:
        sched.step()          # fn(unit, paths) runs the moment the unit's last path ends
    sched.abort(unit)         # its rows leave at the next step

A unit is one budget stage of one request's prompts (generate() adds one per stage; the
server one per request and stage). Every step is one engine decode over every active row
of every unit, in six parts:

1. admit: waiting units join: a prefill when the engine holds no rows, else the engine's
   `extend` (engines without it, or without room, make the unit wait until the batch is
   empty); an exclusive unit (batch-invariant mode on an engine that is not) runs alone;
2. sample: `eager_step` over the active rows, one call per run of rows that share the
   step's settings and their tree's step number (one call when all trees started
   together, as in generate());
3. expand: `step.child_counts`, `step.candidates`, `step.keep_and_order`;
4. commit: the table keeps the selected rows and writes their new tokens (one host read:
   a packed tensor of counts);
5. finish: a unit without active rows leaves; its paths go to its callback;
6. decode: the engine reorders its cache (forks, drops) and decodes the active rows.

A prompt's paths depend only on its own rows: its group's history, its paths' keys and its
tree's step. So a unit gives the paths it gives alone, whatever else shares its steps,
wherever the engine's logits for a row do not depend on the other rows (batch_invariant).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..kernels import ops
from ..kernels.history import EntropyHistory
from .config import EagerConfig
from .keys import root_keys
from .memory import check_memory
from .paths import PathTable
from .step import Groups, candidates, child_counts, keep_and_order


@dataclass(eq=False)
class Unit:
    """One budget stage of one request's prompts, decoded as one tree per prompt."""

    prompts: list
    caps: list
    cfg: EagerConfig
    seed: int  # the stage's key (keys.stage_key)
    keys: list  # one per prompt
    eos: list
    stops: list
    on_done: Optional[Callable] = None  # fn(unit, paths per prompt)
    on_error: Optional[Callable] = None  # fn(unit, exception): its admission failed (class docstring)
    exclusive: bool = False  # decode alone (batch-invariant mode on an engine that is not)
    metrics: object = None  # a config.Metrics the unit's counts are added to
    progress: bool = False
    slots: list = field(default_factory=list)  # group slot of each prompt
    step: int = 0  # steps done
    state: str = "waiting"  # waiting, running, done, aborted
    peak: list = field(default_factory=list)  # most active rows of each prompt
    events: list = field(default_factory=list)  # branch events of each prompt
    rows: list = field(default_factory=list)  # active rows of each prompt after the last step
    tokens: int = 0  # tokens generated so far
    _bar: object = None
    _t0: float = 0.0

    @property
    def active(self) -> int:
        """Active rows after the last step."""
        return sum(self.rows)

    @property
    def keep(self) -> list:
        """The most rows each prompt keeps at once: min(M, prune_to), or M."""
        p = self.cfg.prune_to
        return [min(c, p) if p is not None else c for c in self.caps]

    @property
    def sample_key(self) -> tuple:
        c = self.cfg
        return (self.step, c.candidates_k, c.temperature, c.entropy_top_k, c.q, c.theta, c.initial_threshold,
                c.backend)


class Scheduler:
    """Runs units over one engine, step by step (module docstring).

    Args:
        engine: an eager_kernels.engines.Engine.
        reserve_rows / reserve_tokens: the rows and new tokens per row the engine's cache is
            sized for at a prefill, besides what the first units need (so that later units
            can join without a new prefill); 0: only what the first units need.
        max_rows: the most rows the running units may hold at once (the sum of their
            prompts' min(M, prune_to)); a unit that would pass it waits. A unit over it on
            its own runs alone. None: no bound.

    A unit whose admission fails with a ValueError or an EagerMemoryError (its
    configuration does not fit the engine) gets the error through its `on_error` callback
    when it has one (the others stay queued or running); without one the error is raised.
    """

    def __init__(self, engine, *, reserve_rows: int = 0, reserve_tokens: int = 0, max_rows: Optional[int] = None):
        self.engine = engine
        self.max_rows = max_rows
        self.device = engine.device
        self.reserve_rows, self.reserve_tokens = reserve_rows, reserve_tokens
        self.waiting: list = []
        self.running: list = []  # in the table's order of active rows
        self.table = PathTable(self.device)
        self.logits = None  # the active rows' logits for the next step
        self.history = None
        self._slot_unit: list = []  # unit of each group slot (None: free)
        self._groups = None
        self._eos = None  # int64 [G, E]: each group's EOS ids (-2 pads)
        self._dirty = True  # group settings to rebuild
        self._peak = None  # int64 [G]: each group's most active rows so far
        self._fresh_slots: list = []  # slots placed since the last rebuild (peak back to 1)
        self._steps = ops.StepPlans()  # eager_step; on CUDA through prepared steps (kernels/ops.py)

    # -- requests ---------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, unit: Unit) -> Unit:
        """Queue a unit; it joins at the next step that has room for it."""
        unit.state = "waiting"
        self.waiting.append(unit)
        return unit

    def abort(self, unit: Unit) -> None:
        """Drop a unit: waiting, it never starts; running, its rows leave now (the engine's
        cache drops them at the next decode). Its callback is not called."""
        if unit in self.waiting:
            self.waiting.remove(unit)
        elif unit in self.running:
            self._leave([unit])
        unit.state = "aborted"
        self._close_bar(unit)

    def run(self) -> None:
        """Step until every unit is done."""
        try:
            while self.busy:
                self.step()
        finally:
            self.release()

    def release(self) -> None:
        """Free the engine's cache and forget every running unit (after an error too)."""
        try:
            self.engine.release()
        finally:
            for u in self.running:
                u.state = "aborted"
                self._close_bar(u)
            self.running, self.logits, self.table = [], None, PathTable(self.device)
            self._slot_unit, self._groups, self.history, self._dirty = [], None, None, True
            self._peak, self._fresh_slots = None, []

    # -- one step ---------------------------------------------------------------------------

    def step(self) -> None:
        """One decode step over every active row (module docstring, parts 1-6)."""
        self._admit()  # 1
        if not self.running:
            return
        t0 = time.perf_counter()
        units, g = list(self.running), self._group_settings()
        res = self._sample(g)  # 2
        c, keep, order, branched = self._expand(res, g, units)  # 3
        n_act, n_fin, ident, rows_g, per_unit = self._read_counts(c, keep, order, branched, g, units)  # 4
        self._commit(c, res, order[: n_act + n_fin], self.table.R, n_act, branched)
        self._account(units, *per_unit)
        self._groups.step += self._live_groups
        if n_act:
            self._peak = torch.maximum(self._peak, rows_g)
        done = [u for u in units if u.active == 0]
        if done:
            self._finish(done)  # 5
        self._decode(ident)  # 6
        self._add_time(units, "decode_s", time.perf_counter() - t0)

    # -- the parts ----------------------------------------------------------------------------

    def _expand(self, res, g: Groups, units: list) -> tuple:
        """Part 3: child counts, the candidates, which stay and in what order."""
        table, R = self.table, self.table.R
        extra = child_counts(res.branch, table.stopped[:R], table.nbr[:R], table.grp[:R], table.grp, g)
        width = max(u.cfg.num_branches for u in units)
        c = candidates(res, self.logits, extra, width, R, table.N, table.cum, table.grp, table.pkey, g,
                       self._is_eos)
        keep, order = keep_and_order(c, g)
        return c, keep, order, extra > 0

    def _read_counts(self, c, keep, order, branched, g: Groups, units: list) -> tuple:
        """Part 4, the one host read of a step: rows that go on, finished rows kept, whether
        the cache order changed, each group's active rows (also returned on the device),
        and (per_unit) each group's active rows, each unit's new tokens and each group's
        branch events."""
        R, U, G, dev = self.table.R, len(units), g.num, self.device
        going_on = keep & ~c.finished
        n_act = going_on.sum()
        m = min(R, order.numel())
        ident = (n_act == R) & (c.src[order[:m]] == torch.arange(m, device=dev)).all()
        rows_g = torch.zeros(G, dtype=torch.int64, device=dev).scatter_add_(0, c.grp, going_on.to(torch.int64))
        new_u = torch.zeros(U, dtype=torch.int64, device=dev).scatter_add_(
            0, self._unit_index[c.grp], (keep & c.is_new).to(torch.int64))
        events = torch.zeros(G, dtype=torch.int64, device=dev).scatter_add_(
            0, self.table.grp[:R], branched.to(torch.int64))
        packed = torch.cat([torch.stack([n_act, (keep & c.finished).sum(), ident.to(torch.int64)]), rows_g,
                            new_u, events]).tolist()
        per_unit = (packed[3:3 + G], packed[3 + G:3 + G + U], packed[3 + G + U:])
        return packed[0], packed[1], bool(packed[2]), rows_g, per_unit

    def _account(self, units: list, rows_g: list, new_u: list, ev: list) -> None:
        """The step's counts to the units (after the commit: it writes at their old step)."""
        for i, u in enumerate(units):
            made = [ev[slot] for slot in u.slots]
            u.events = [a + b for a, b in zip(u.events, made)]
            u.rows, u.step, u.tokens = [rows_g[s] for s in u.slots], u.step + 1, u.tokens + new_u[i]
            if u.metrics is not None:
                u.metrics.branch_events += sum(made)
                u.metrics.tokens_generated += new_u[i]
                u.metrics.steps += 1
            if u._bar is not None:  # the bar counts decode steps; tokens go in its postfix
                u._bar.update(1)
                rate = u.tokens / max(time.perf_counter() - u._t0, 1e-9)
                u._bar.set_postfix_str(f"rows={u.active}, {u.tokens} tokens, {rate:.0f} tokens/s")

    def _decode(self, ident: bool) -> None:
        """Part 6: the engine's cache follows the table's active rows (forks, drops, order)
        and decodes each row's newest token; with no active row left it is released."""
        R = self.table.R
        if R == 0:
            self.engine.synchronize()
            self.logits = None
            self.engine.release()
            return
        if not ident:
            self.engine.reorder(self._engine_src)
        cols = self._groups.step[self.table.grp[:R]] - 1
        self.logits = self.engine.decode(self.table.tok[torch.arange(R, device=self.device), cols])
        for u in self.running:
            if u.metrics is not None:
                u.metrics.forward_passes += 1
                u.metrics.decode_rows += u.active

    def _admit(self) -> None:
        """Part 1: waiting units join while there is room (module docstring)."""
        if not self.waiting or any(u.exclusive for u in self.running):
            return
        joining = []
        held = sum(sum(u.keep) for u in self.running)
        for u in list(self.waiting):
            if u.exclusive:
                if self.running or joining:
                    break  # waits for an empty batch, and nothing passes it
                joining.append(u)
                self.waiting.remove(u)
                break
            over = self.max_rows is not None and held + sum(u.keep) > self.max_rows
            if (self.running or joining) and over:
                break  # first come, first served: later units wait too
            if self.running and not self._engine_can_extend(joining + [u]):
                break
            joining.append(u)
            held += sum(u.keep)
            self.waiting.remove(u)
        if not joining:
            return
        try:
            self._join(joining)
        except (ValueError, MemoryError) as e:
            if not all(u.on_error is not None for u in joining):
                raise
            for u in joining:
                u.state = "failed"
                self._close_bar(u)
                u.on_error(u, e)

    def _join(self, joining: list) -> None:
        live = self.running + joining
        rows = sum(sum(u.keep) for u in live)
        longest = max(len(p) + u.cfg.max_new_tokens for u in live for p in u.prompts)
        for u in joining:
            check_memory(self.engine, rows, longest, u.cfg)
        prompts = [p for u in joining for p in u.prompts]
        T = max(u.cfg.max_new_tokens for u in joining)
        t0 = time.perf_counter()
        try:
            if self.running:
                self.logits = self.logits.clone()  # an engine's logits may be a view it reuses
                first = self.engine.extend(prompts, max_rows=rows, max_new_tokens=T)
            else:
                first = self.engine.prefill(prompts, max_rows=max(rows, self.reserve_rows),
                                            max_new_tokens=max(T, self.reserve_tokens))
            self.engine.synchronize()
        except BaseException:
            if not self.running:  # (an extend leaves the running rows as they were)
                self.engine.release()
                self.logits = None
            raise
        dt = time.perf_counter() - t0
        for u in joining:
            self._place(u)
            if u.metrics is not None:
                u.metrics.prefill_s += dt
                u.metrics.forward_passes += 1
        self.logits = first if self.logits is None else torch.cat([self.logits, first])

    def _engine_can_extend(self, units: list) -> bool:
        live = self.running + units
        return bool(self.engine.can_extend([p for u in units for p in u.prompts], max_rows=sum(sum(u.keep) for u in live),
                         max_new_tokens=max(u.cfg.max_new_tokens for u in units)))

    def _place(self, u: Unit) -> None:
        """The unit's prompts take free group slots; their first rows join the table."""
        free = [i for i, x in enumerate(self._slot_unit) if x is None]
        slots = []
        for _ in u.prompts:
            if free:
                s = free.pop(0)
                self._slot_unit[s] = u
            else:
                s = len(self._slot_unit)
                self._slot_unit.append(u)
            slots.append(s)
        self._fresh_slots += slots
        u.slots, u.step, u.state, u.rows = slots, 0, "running", [1] * len(slots)
        u.peak, u.events = [1] * len(slots), [0] * len(slots)
        cap = max(1, u.cfg.max_new_tokens * max(u.keep))
        G = len(self._slot_unit)
        if self.history is None:
            self.history = EntropyHistory(G, cap, device=self.device, backend=u.cfg.backend)
        else:
            self._grow_history(G, cap)
            for s in slots:
                self.history.values[s].fill_(float("inf"))
                self.history.count[s] = 0
                self.history.overflow[s] = False
        self.table.widen(u.cfg.max_new_tokens)
        self.table.add_roots(torch.tensor(slots, dtype=torch.int64, device=self.device),
                             root_keys(u.seed, u.keys, self.device))
        self.running.append(u)
        self._dirty = True
        if u.progress:
            from tqdm.auto import tqdm

            u._bar = tqdm(total=u.cfg.max_new_tokens, desc="eager decode", unit="step", leave=False)
            u._t0 = time.perf_counter()

    def _grow_history(self, groups: int, capacity: int) -> None:
        h = self.history
        if groups <= h.num_groups and capacity <= h.capacity:
            return
        G, C = max(groups, h.num_groups), max(capacity, h.capacity)
        values = torch.full((G, C), float("inf"), dtype=torch.float32, device=self.device)
        values[: h.num_groups, : h.capacity] = h.values
        count = torch.zeros(G, dtype=torch.int64, device=self.device)
        count[: h.num_groups] = h.count
        overflow = torch.zeros(G, dtype=torch.bool, device=self.device)
        overflow[: h.num_groups] = h.overflow
        h.values, h.count, h.overflow = values, count, overflow

    def _group_settings(self) -> Groups:
        """Per-group settings as device tensors, rebuilt when units joined or left."""
        if not self._dirty:
            return self._groups
        G = len(self._slot_unit)
        cap, keep, prunes, div, br, step, length = ([0] * G for _ in range(7))
        unit_index, live = [0] * G, [0] * G
        eos = [[-2]] * G
        index = {id(u): i for i, u in enumerate(self.running)}
        for s, u in enumerate(self._slot_unit):
            if u is None:
                continue
            j = u.slots.index(s)
            c = u.cfg
            cap[s], keep[s], prunes[s] = u.caps[j], u.keep[j], c.prune_to is not None
            div[s] = c.branch_divisor if (c.policy == "seed" and c.branch_divisor is not None) else -1
            br[s], length[s], step[s] = c.num_branches, c.max_new_tokens, u.step
            unit_index[s], live[s] = index[id(u)], 1
            eos[s] = list(u.eos) or [-2]
        E = max(len(e) for e in eos) if eos else 1
        dev = dict(dtype=torch.int64, device=self.device)
        self._groups = Groups(cap=torch.tensor(cap, **dev), keep=torch.tensor(keep, **dev),
                              prunes=torch.tensor(prunes, dtype=torch.bool, device=self.device),
                              divisor=torch.tensor(div, **dev), branches=torch.tensor(br, **dev),
                              step=torch.tensor(step, **dev), length=torch.tensor(length, **dev),
                              some_prune=any(prunes[s] for s in range(G) if live[s]),
                              some_cap=any(not prunes[s] for s in range(G) if live[s]))
        peak = torch.ones(G, **dev)
        if self._peak is not None:
            n = min(G, self._peak.shape[0])
            peak[:n] = self._peak[:n]
        for s in self._fresh_slots:
            peak[s] = 1
        self._fresh_slots = []
        self._peak = peak
        self._unit_index = torch.tensor(unit_index, **dev)
        self._live_groups = torch.tensor(live, **dev)
        self._eos = torch.tensor([e + [-2] * (E - len(e)) for e in eos], **dev)
        self._dirty = False
        return self._groups

    def _is_eos(self, token: torch.Tensor, grp: torch.Tensor) -> torch.Tensor:
        return (token[:, None] == self._eos[grp]).any(1)

    def _sample(self, g: Groups):
        """Part 2: eager_step over the active rows, one call per run of units with the same
        sample_key (their rows are contiguous: units keep their order in the table). In
        batch-invariant mode one call per prompt instead: the sampler's kernels may reduce a
        row in an order that depends on the rows of the call (the C++ backend splits a row
        into chunks by the row count; torch splits reductions over threads by the shape),
        and a prompt's rows are then exactly the rows it has alone."""
        runs, start = [], 0
        for u in self.running:
            n = u.active
            if u.cfg.batch_invariant:  # a prompt's active rows are contiguous, in the order of u.slots
                for r in u.rows:
                    if r:
                        runs.append([None, u, r, start])
                        start += r
                continue
            if runs and runs[-1][0] is not None and runs[-1][0] == u.sample_key:
                runs[-1][2] += n
            else:
                runs.append([u.sample_key, u, n, start])
            start += n
        table, R = self.table, self.table.R
        results = []
        self._steps.next_step()
        for key, u, n, a in runs:
            c = u.cfg
            sl = slice(a, a + n)
            logits = self.logits if n == R else self.logits[sl]
            results.append(self._steps(logits, self.history, table.grp[sl], k=c.candidates_k,
                                       temperature=c.temperature, entropy_top_k=c.entropy_top_k, q=c.q,
                                       theta=c.theta, initial_threshold=c.initial_threshold,
                                       seed=table.pkey[sl], offset=u.step, backend=c.backend))
        if len(results) == 1:
            return results[0]
        return _concat_results(results)

    def _commit(self, c, res, sel, R: int, n_act: int, branched) -> None:
        """Part 4: the table keeps the candidates `sel` (active first) and writes the step."""
        table = self.table
        s = c.src[sel]
        new = c.is_new[sel]
        table.select(s, n_act)
        parent = s.clamp_max(R - 1)
        rec = torch.stack([res.entropy[parent], res.threshold[parent], c.logprob[sel].float()], dim=1)
        table.write(c.step[sel], new, c.token[sel], rec, branched[parent] & new)
        table.cum, table.grp, table.pkey = c.cum[sel], c.grp[sel], c.key[sel]
        table.eosf = table.eosf | c.eos[sel]
        for u in self.running:
            for seq in u.stops:
                L = seq.numel()
                if u.step + 1 >= L:
                    mine = self._unit_index[table.grp] == self.running.index(u)
                    window = table.tok[:, u.step + 1 - L: u.step + 1]
                    table.stopped = table.stopped | (new & mine & (window == seq).all(1))
        self._engine_src = s[:n_act]

    def _finish(self, done: list) -> None:
        """Part 5: units without active rows leave; their paths go to their callbacks."""
        paths = self.table.rows_of([s for u in done for s in u.slots])
        peak = self._peak.tolist()
        for u in done:
            u.peak = [peak[s] for s in u.slots]
        i = 0
        results = []
        for u in done:
            results.append((u, paths[i:i + len(u.slots)]))
            i += len(u.slots)
        self._leave(done)
        for u, p in results:
            u.state = "done"
            self._close_bar(u)
            if u.on_done is not None:
                u.on_done(u, p)

    def _leave(self, units: list) -> None:
        """Remove units' rows (active ones too, for an abort) and free their group slots."""
        slots = torch.tensor([s for u in units for s in u.slots], dtype=torch.int64, device=self.device)
        table = self.table
        mine = torch.isin(table.grp, slots)
        if any(u.active for u in units):  # an abort of running rows: the engine drops them
            keep_active = torch.nonzero(~mine[: table.R]).flatten()
            n_act = int(keep_active.numel())
            if n_act:
                self.engine.reorder(keep_active)
            if self.logits is not None:
                self.logits = self.logits[keep_active]
            order = torch.cat([keep_active, table.R + torch.nonzero(~mine[table.R:]).flatten()])
            for name in PathTable._ROW_FIELDS:
                setattr(table, name, getattr(table, name)[order])
            table.R = n_act
        else:
            table.remove(mine)
        for u in units:
            for s in u.slots:
                self._slot_unit[s] = None
            self.running.remove(u)
        self._dirty = True
        if table.R == 0 and self.running == [] and self.logits is not None:
            self.logits = None
            self.engine.release()

    @staticmethod
    def _add_time(units, name, dt) -> None:
        for u in units:
            if u.metrics is not None:
                setattr(u.metrics, name, getattr(u.metrics, name) + dt)

    @staticmethod
    def _close_bar(u: Unit) -> None:
        if u._bar is not None:
            u._bar.close()
            u._bar = None


def _concat_results(results: list):
    """StepResults of row runs as one, candidates padded to the widest k."""
    k = max(r.cand_ids.shape[1] for r in results)

    def pad(x, value):
        return x if x.shape[1] == k else torch.nn.functional.pad(x, (0, k - x.shape[1]), value=value)

    return ops.StepResult(torch.cat([r.entropy for r in results]), torch.cat([r.threshold for r in results]),
                          torch.cat([r.branch for r in results]), torch.cat([r.token for r in results]),
                          torch.cat([pad(r.cand_ids, -1) for r in results]),
                          torch.cat([pad(r.cand_logprobs, -float("inf")) for r in results]))
