"""Instruction counts of a compiled kernel's main loop, from its SASS (nvdisasm -c output).

Used by tests/triton_compile.py --loop-instructions. The SASS is split into basic blocks,
the loop that holds the most global loads (LDG) is taken as the main loop, and the loop body
(its back edge removed) is a graph without cycles whose paths are the ways one iteration can
go. Reported per path: the instructions one thread issues in one iteration (NOPs left out);
divided by the logits a thread holds per iteration (block / (32 * warps)) they give
instructions per logit.

Assumptions, said where the numbers are reported: every warp is convergent, i.e. a
`BRA.DIV` (the jump to the compiler's slow path for shuffles in a divergent warp) is never
taken; a CALL costs its one instruction (Triton's kernels call no functions in the loop);
a predicated instruction costs its issue whether or not its predicate holds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_INSTR = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)\s*(.*?)\s*;?\s*(?:/\*.*)?$")
_LABEL = re.compile(r"^\s*(\.L_x_\d+|\.L_\w+):")
_TARGET = re.compile(r"`\((\.L_\w+)\)")


@dataclass
class Instr:
    addr: int
    pred: str | None
    op: str
    args: str


@dataclass
class Block:
    start: int  # index of its first instruction
    instrs: list = field(default_factory=list)
    succ: list = field(default_factory=list)  # block indices

    @property
    def cost(self) -> int:
        return sum(1 for i in self.instrs if i.op != "NOP")

    def has(self, pattern: str) -> bool:
        return any(re.fullmatch(pattern, i.op) for i in self.instrs)


def parse(sass: str) -> tuple[list, dict]:
    """(instructions in order, label -> index of the instruction it names)."""
    instrs, labels, pending = [], {}, []
    for line in sass.splitlines():
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        for name in pending:
            labels[name] = len(instrs)
        pending = []
        pred = m.group(2).strip() if m.group(2) else None
        instrs.append(Instr(int(m.group(1), 16), pred, m.group(3), m.group(4)))
    for name in pending:
        labels[name] = len(instrs)
    return instrs, labels


def _is_branch(op: str) -> bool:
    return op.split(".")[0] in ("BRA", "JMP", "BRX", "JMX")


def blocks(sass: str) -> list:
    """Basic blocks with their successors (a BRA.DIV falls through: warps are convergent)."""
    instrs, labels = parse(sass)
    leaders = {0}
    for i, ins in enumerate(instrs):
        if _is_branch(ins.op) or ins.op.startswith(("EXIT", "RET")):
            leaders.add(i + 1)
            t = _TARGET.search(ins.args)
            if t and t.group(1) in labels and not ins.op.startswith("BRA.DIV"):
                leaders.add(labels[t.group(1)])
    starts = sorted(s for s in leaders if s < len(instrs))
    index = {s: n for n, s in enumerate(starts)}
    out = []
    for n, s in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(instrs)
        out.append(Block(s, instrs[s:end]))
    for n, b in enumerate(out):
        last = b.instrs[-1]
        nxt = n + 1 if n + 1 < len(out) else None
        if _is_branch(last.op):
            t = _TARGET.search(last.args)
            if last.op.startswith("BRA.DIV") or not t or t.group(1) not in labels:
                falls = True  # convergent warps: the divergent slow path is not taken
            else:
                b.succ.append(index[labels[t.group(1)]])
                falls = last.pred is not None
        elif last.op.startswith(("EXIT", "RET")):
            falls = last.pred is not None
        else:
            falls = True
        if falls and nxt is not None:
            b.succ.append(nxt)
    return out


@dataclass
class LoopPaths:
    """One iteration of the main loop: instructions per thread on its paths."""

    body_blocks: int
    body_instructions: int  # every instruction of the body once (static size)
    shortest: int
    longest: int
    through: dict  # label -> shortest path through the label's instructions (None: no such path)
    loads: int  # LDG instructions in the body
    inner_loops: int  # inner back edges dropped (0 for the kernels here)


def main_loop(bl: list, marks: dict | None = None) -> LoopPaths:
    """The loop holding the most LDG instructions. `marks`: label -> opcode regex, or
    (regex, n): `through[label]` is the shortest path through at least n instructions
    matching it (1 for a bare regex)."""
    back = [(u, h) for u, b in enumerate(bl) for h in b.succ if h <= u]
    if not back:
        raise ValueError("no loop in this kernel")
    pred = {n: [] for n in range(len(bl))}
    for u, b in enumerate(bl):
        for v in b.succ:
            pred[v].append(u)

    def body(u, h):
        seen, stack = {h, u}, [u]
        while stack:
            n = stack.pop()
            if n == h:
                continue
            for p in pred[n]:
                if p not in seen:
                    seen.add(p)
                    stack.append(p)
        return seen

    def loads(nodes):
        return sum(1 for n in nodes for i in bl[n].instrs if i.op.startswith("LDG"))

    # loops sharing a header are one loop (several back edges)
    by_header = {}
    for u, h in back:
        by_header.setdefault(h, set()).update(body(u, h))
    h, nodes = max(by_header.items(), key=lambda kv: (loads(kv[1]), len(kv[1])))
    latches = [u for u, hh in back if hh == h]
    # the body without back edges to h; an inner loop's back edge is dropped too (the inner
    # loop then counts once; `inner_loops` says how many were dropped)
    succ = {n: [v for v in bl[n].succ if v in nodes and v != h] for n in nodes}
    order, state, dropped = [], {}, 0
    stack = [(h, iter(succ[h]))]
    state[h] = 1
    while stack:
        n, it = stack[-1]
        v = next(it, None)
        if v is None:
            stack.pop()
            state[n] = 2
            order.append(n)
        elif state.get(v) == 1:
            succ[n] = [w for w in succ[n] if w != v]
            dropped += 1
        elif v not in state:
            state[v] = 1
            stack.append((v, iter(list(succ[v]))))
    order.reverse()  # topological
    inf = float("inf")
    first = {n: inf for n in order}
    most = {n: -inf for n in order}
    first[h] = most[h] = bl[h].cost
    for n in order:
        if first[n] == inf:
            continue
        for v in succ[n]:
            first[v] = min(first[v], first[n] + bl[v].cost)
            most[v] = max(most[v], most[n] + bl[v].cost)
    # backwards: shortest from each node to a latch
    to_end = {n: inf for n in order}
    for n in reversed(order):
        if n in latches:
            to_end[n] = bl[n].cost
        for v in succ[n]:
            if to_end[v] < inf:
                to_end[n] = min(to_end[n], bl[n].cost + to_end[v])
    through = {}
    for label, mark in (marks or {}).items():
        pattern, need = mark if isinstance(mark, tuple) else (mark, 1)
        # shortest path from h to a latch holding at least `need` instructions matching
        # `pattern`: a shortest path over (block, matches so far, capped at need)
        hits = {n: min(need, sum(1 for i in bl[n].instrs if re.fullmatch(pattern, i.op))) for n in order}
        dist = {(h, hits[h]): bl[h].cost}
        for n in order:
            for got in range(need + 1):
                d = dist.get((n, got))
                if d is None:
                    continue
                for v in succ[n]:
                    key = (v, min(need, got + hits[v]))
                    if d + bl[v].cost < dist.get(key, inf):
                        dist[key] = d + bl[v].cost
        ends = [dist[(u, need)] for u in latches if (u, need) in dist]
        through[label] = int(min(ends)) if ends else None
    return LoopPaths(
        body_blocks=len(nodes),
        body_instructions=sum(bl[n].cost for n in nodes),
        shortest=int(min(first[u] for u in latches)),
        longest=int(max(most[u] for u in latches)),
        through=through,
        loads=loads(nodes),
        inner_loops=dropped,
    )
