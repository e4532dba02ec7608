"""How often each path of the Triton partial kernel's loop runs, for real launch parameters:
a block-by-block model of the top-K filter (numpy), turned into instructions per logit
with the per-path counts of `tests/triton_compile.py --loop-instructions`.

    python benchmarks/topk_filter_model.py [--report benchmarks/results/triton_sm90_ptxas.txt]
                                           [--rows 1 8 64 256] [--vocab 32000 152064] [--k 4 20]

The model follows eager_kernels/kernels/triton.py's launch (block 4096, about 264
programs, chunks of whole blocks) and its filter, block by block: a block whose max does
not pass the threshold skips ("min"); the first block of a chunk takes the bucket bound
("first"); a block with candidates adds them ("filter"), and merges when the buffer is
half full ("merge"; "rounds" when more than it holds); after the loop each chunk merges
once more (counted as a merge path's extra over the filter path, per chunk). The kernel before the filter
(commit 3a32ebc) merged a block through a tl.topk of the whole block whenever the block's max
key passed the run's KP-th key ("old merge", else "old min"). Logits: a normal body with a
Gumbel upper tail (a stand-in for a model's; random columns, the filter's hard case), four
rows per case. With --report, the expected instructions per logit of the sm_90 bfloat16
entropy top-K variants (before: the report's `before` section, after: its `after`
section) are printed beside the fractions.
"""
from __future__ import annotations

import argparse
import re

import numpy as np

BLOCK, TARGET_PROGRAMS, MAX_CHUNKS = 4096, 264, 64


def launch(rows, vocab, kp):
    block = max(min(BLOCK, 1 << (vocab - 1).bit_length()), 2 * kp, 16)
    n_blocks = -(-vocab // block)
    n_chunks = min(n_blocks, MAX_CHUNKS, max(1, -(-TARGET_PROGRAMS // rows)))
    chunk = -(-n_blocks // n_chunks) * block
    return block, chunk


def _kp(k):
    return max(2, 1 << (k - 1).bit_length())


def new_paths(x, k, block, chunk):
    """Counts of each path of the filter over one row."""
    kp = _kp(k)
    cap = max(4 * kp, 64) - kp
    counts = dict(skip=0, first=0, filter=0, merge=0, rounds=0)
    for start in range(0, x.size, chunk):
        stop = min(start + chunk, x.size)
        run, buf, kth, full = np.empty(0), [], -np.inf, False
        for b0 in range(start, stop, block):
            xb = np.full(block, -np.inf)
            xb[: min(block, stop - b0)] = x[b0: min(b0 + block, stop)]
            if full and not xb.max() > kth:
                counts["skip"] += 1
                continue
            if not full:
                lb = np.sort(xb.reshape(-1, 2 * kp).max(0))[::-1][k - 1]
                first = np.arange(block) < 2 * kp
                cand = xb[(xb >= lb) & (xb > -np.inf)] if lb > -np.inf else xb[(xb > -np.inf) | first]
                kth, full, path = lb, True, "first"
            else:
                cand, path = xb[xb > kth], "filter"
            buf += list(cand)
            if len(buf) > cap // 2:
                path = "rounds" if len(buf) > cap else ("merge" if path == "filter" else path)
                run = np.sort(np.concatenate([run, buf]))[::-1][:kp]
                buf = []
                kth = run[k - 1] if run.size >= k else -np.inf
            counts[path] += 1
    return counts


def old_paths(x, k, block, chunk):
    """The kernel before: a block merges (tl.topk of the block) when its max passes the
    run's KP-th key (equal values count as passing: a smaller id would win)."""
    kp = _kp(k)
    counts = {"old min": 0, "old merge": 0}
    for start in range(0, x.size, chunk):
        stop = min(start + chunk, x.size)
        run = np.empty(0)
        for b0 in range(start, stop, block):
            xb = x[b0: min(b0 + block, stop)]
            if run.size < kp or xb.max() > run[-1]:
                counts["old merge"] += 1
                run = np.sort(np.concatenate([run, np.sort(xb)[::-1][:kp]]))[::-1][:kp]
            else:
                counts["old min"] += 1
    return counts


def costs(report: str, section: str, dtype="bfloat16", arch=90) -> dict:
    """{k: {path: instructions per logit}} for the entropy top-K variants of `section`."""
    text = open(report).read()
    part = text.split(f"== {section}")[1].split("\n== ")[0] if f"== {section}" in text else ""
    out = {}
    for m in re.finditer(rf"ok\s+sm_{arch} entropy top-(\d+) {dtype}.*?\n(?:.*\n)*?.*?instructions per logit: ([^(]*)",
                         part):
        out[int(m.group(1))] = {name: float(v) for name, v in re.findall(r"(\w+) ([\d.]+)", m.group(2))}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8, 64, 256])
    ap.add_argument("--vocab", type=int, nargs="+", default=[32000, 152064])
    ap.add_argument("--k", type=int, nargs="+", default=[20])
    ap.add_argument("--report", help="a tests/triton_compile.py --loop-instructions report with before/after sections")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    new_cost = costs(args.report, "after") if args.report else {}
    old_cost = costs(args.report, "before") if args.report else {}
    for vocab in args.vocab:
        for rows in args.rows:
            for k in args.k:
                block, chunk = launch(rows, vocab, _kp(k))
                new, old = {}, {}
                for _ in range(4):
                    x = rng.standard_normal(vocab) * 2.0 + rng.gumbel(size=vocab) * 1.5
                    for d, c in ((new, new_paths(x, k, block, chunk)), (old, old_paths(x, k, block, chunk))):
                        for name, n in c.items():
                            d[name] = d.get(name, 0) + n
                frac = {name: n / sum(new.values()) for name, n in new.items()}
                old_frac = {name: n / sum(old.values()) for name, n in old.items()}
                line = (f"V={vocab:<6} B={rows:<3} K={k:<2} blocks/chunk={chunk // block:<2} "
                        + " ".join(f"{name} {f:.2f}" for name, f in frac.items())
                        + " | " + " ".join(f"{name} {f:.2f}" for name, f in old_frac.items()))
                nc, oc = new_cost.get(k), old_cost.get(k)
                if nc and oc:
                    pick = dict(skip="min", first="first", filter="filter", merge="merge", rounds="max")
                    after = sum(f * nc.get(pick[name], nc["max"]) for name, f in frac.items())
                    # the merge after the loop, once per chunk (about a merge path's extra)
                    after += (nc["merge"] - nc["filter"]) / (chunk // block)
                    before = old_frac["old min"] * oc["min"] + old_frac["old merge"] * oc["max"]
                    line += f" | instructions/logit: before {before:.0f}, after {after:.0f}"
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
