"""The vLLM rows of `eager-kernels bench --decode --engine vllm` (docs/vllm.md, "Benchmark").

One vLLM LLM (VllmEngine on the default model, float32 on CPU); the prompts: the bench's
prompt with the chat template (--prompts 1, the default) or the first N GSM8K test questions
zero-shot (--prompts N), all submitted at once; T new tokens, M paths per prompt:

(a) eager_kernels.generate on VllmEngine: the paper policy at M (T = --paper-temperature,
    0.6 by default, seed 0) and, with one prompt or --seed-rows, the seed policy (its
    defaults, prune_to 32): one vLLM step per token for all rows, forks as prefix-cached
    requests;
(b) vLLM's own parallel sampling: SamplingParams(n=M, temperature=the paper's T (0.6 when
    that is 0: vLLM refuses n > 1 greedy), max_tokens=T, ignore_eos=True): M sequences of T
    tokens per prompt, no entropy, no branching;
(b0) the same M x T tokens per prompt as M greedy requests: vLLM's decode cost without its
    random sampler;
(c) the method's reference approach outside the engine: the same loop and paper policy,
    but every step calls LLM.generate once with a request per active path (max_tokens=1,
    logprobs=20, prefix caching on; prompt = the prompt + the path's tokens) and the loop
    reads the top-20 log-probabilities (the other logits -inf): HostLoopEngine below.

With --step-rows 1 2 4 ...: vLLM's own greedy decode step at those row counts (wall / T of
n greedy requests of prompt 1), the curve that decides what fewer live rows are worth.

Per generated token (wall s / tokens) and per step (wall s / steps; for (c) per LLM.generate
call, one per step): goals (a) paper within 1.3x of (b), and (a) paper at least 3x faster
than (c) with the same answers. (c) cannot draw a token outside the top 20 that (a)'s
full-vocabulary sample may take, so at T > 0 the trees part at the first such draw; at
--paper-temperature 0 (greedy rows, top-2 forks) the two must grow the same trees.
"""
from __future__ import annotations

import datetime
import os
import statistics
import time
from pathlib import Path

import torch

from . import common as bm
from ..engines.base import Engine, chat_token_ids
from ..sampler.options import default

RAW = Path("benchmarks") / "results" / "vllm_decode.txt"


class HostLoopEngine(Engine):
    """The reference approach as an engine: each decode step is one LLM.generate call with a
    request per row (prompt + row tokens, max_tokens=1, logprobs=20); the logits the loop
    gets are the top-20 log-probabilities, -inf elsewhere. The vLLM prefix cache holds every
    row's earlier blocks, so a call recomputes each row's last partial block."""

    name = "vllm-host-loop"
    kv_copies = 1

    def __init__(self, vllm_engine, top=20):
        self.v = vllm_engine
        self.llm = vllm_engine.llm
        self.vocab_size = vllm_engine.vocab_size
        self.device = torch.device("cpu")
        self.eos_token_ids = vllm_engine.eos_token_ids
        self.kv_bytes_per_token = vllm_engine.kv_bytes_per_token
        self.tokenizer = vllm_engine.tokenizer
        self.top = top
        self.calls = 0
        self._seqs = []

    def _logits(self):
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, logprobs=self.top, temperature=0.0, detokenize=False)
        outs = self.llm.generate([{"prompt_token_ids": s} for s in self._seqs], params, use_tqdm=False)
        self.calls += 1
        x = torch.full((len(self._seqs), self.vocab_size), float("-inf"))
        for i, o in enumerate(outs):
            lp = o.outputs[0].logprobs[0]
            best = sorted(lp.items(), key=lambda kv: -kv[1].logprob)[: self.top]
            x[i, [t for t, _ in best]] = torch.tensor([v.logprob for _, v in best])
        return x

    def prefill(self, prompts, *, max_rows, max_new_tokens):
        self.calls = 0  # LLM.generate calls of this stage
        self.v._check_capacity(prompts, max_rows, max_new_tokens)
        self._seqs = [list(p) for p in prompts]
        return self._logits()

    def decode(self, tokens):
        for s, t in zip(self._seqs, tokens.tolist()):
            s.append(t)
        return self._logits()

    def reorder(self, src):
        self._seqs = [list(self._seqs[i]) for i in src.tolist()]

    def release(self):
        self._seqs = []


def _in_thread(fn):
    """fn() in a new thread, as VllmEngine runs its vLLM steps: vLLM's CPU worker pins the
    thread that created it to its reserved core, and a helper thread is not pinned; every
    row runs its vLLM calls this way, so that none is favoured by the binding when another
    job holds that core."""
    import threading

    box = {}

    def run():
        try:
            box["out"] = fn()
        except BaseException as e:  # noqa: BLE001
            box["err"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]
    return box["out"]


def _timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = _in_thread(fn)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), out


def _prompts(tok, n: int) -> tuple:
    """The bench's prompt (n = 1) or the first n GSM8K test questions, zero-shot (n > 1), each
    through the chat template: (token id lists, a description for the table header)."""
    from .common import PROMPT

    if n == 1:
        ids = chat_token_ids(tok, [{"role": "user", "content": PROMPT}])
        return [ids], f"prompt {PROMPT!r} (chat template, {len(ids)} tokens)"
    from ..evaluation.suites import gsm8k_suite

    suite = gsm8k_suite(n, split="test", fewshot=0)
    ids = [suite.prompt_ids(tok, t) for t in suite.tasks]
    lens = sorted(len(x) for x in ids)
    return ids, (f"{n} prompts: the first {n} GSM8K test questions, zero-shot, chat template "
                 f"({lens[0]}-{lens[-1]} tokens)")


def _step_sweep(eng, prompt_ids, T, repeats, rows):
    """vLLM's own decode step at each row count: n greedy requests of one prompt, T tokens
    each (ignore_eos), wall / T. How the step grows with rows decides what fewer live rows
    (EAGer's tree) are worth per token on a machine."""
    return [(n, 1e3 * _greedy(eng, [prompt_ids] * n, T, repeats)[0] / T) for n in rows]


def _greedy(eng, prompts, T, repeats):
    """vLLM's own decode of one greedy request per prompt, T tokens each (ignore_eos):
    _timed's (median s, best s, outputs)."""
    from vllm import SamplingParams

    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=T, ignore_eos=True, detokenize=False)
    reqs = [{"prompt_token_ids": ids} for ids in prompts]
    return _timed(lambda: eng.llm.generate(reqs, greedy, use_tqdm=False), repeats)


def run(args) -> int:
    """The rows above, printed as a table and appended to args.raw (default
    benchmarks/results/vllm_decode.txt)."""
    if args.prompts < 1:
        raise ValueError(f"--prompts: expected >= 1, got {args.prompts}")
    step_rows = args.step_rows or []
    eng, tok, name, load_s = _load_engine(step_rows)
    prompts, described = _prompts(tok, args.prompts)
    rows, same = _measure(args, eng, prompts)
    sweep = _step_sweep(eng, prompts[0], args.max_new_tokens, args.repeats, step_rows) if step_rows else []
    eng.close()
    text = "\n".join(_table(args, rows, same, sweep, _header(args, eng, name, load_s, described)))
    print("\n" + text)
    out = Path(args.raw)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(text + "\n\n")
    print(f"appended to {out}")
    return 0


def _load_engine(step_rows):
    """(VllmEngine on the default model, tokenizer, name, load seconds); --step-rows checked
    against its max_num_seqs."""
    from ..engines.select import load

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    t0 = time.perf_counter()
    eng, tok, name, _ = load("vllm")
    load_s = time.perf_counter() - t0
    too_many = [n for n in step_rows if n > eng.max_num_seqs]
    if too_many:
        eng.close()
        raise ValueError(f"--step-rows: {too_many} exceed the engine's max_num_seqs={eng.max_num_seqs}")
    return eng, tok, name, load_s


def _eager_row(rows: list, label, engine, prompts, cfg, reps):
    """eager_kernels.generate on `engine`, timed (after a warm-up), appended to rows; its output."""
    from .. import sampler as ek

    ek.generate(engine, prompts[:1], cfg.replace(max_new_tokens=2))  # warm-up
    med, best, out = _timed(lambda: ek.generate(engine, prompts, cfg), reps)
    m = out.metrics
    rows.append(dict(method=label, seconds=med, best_s=best, sequences=sum(len(r.paths) for r in out.results),
                     tokens=m.tokens_generated, steps=m.steps, forks=m.branch_events,
                     answer=out.results[0].answer.text))
    return out


def _measure(args, eng, prompts) -> tuple:
    """The rows (a), (b), (b0), (c); and whether (a) paper and (c) grew the same paths and
    chose the same answers."""
    from .. import sampler as ek

    T, M, R = args.max_new_tokens, args.paper_m, args.repeats
    seed_cfg = ek.EagerConfig.seed_policy(max_new_tokens=T, backend=args.backend)
    paper_cfg = ek.EagerConfig.paper(max_new_tokens=T, max_paths_per_prompt=M, backend=args.backend,
                                     temperature=args.paper_temperature)
    rows = []
    if len(prompts) == 1 or args.seed_rows:
        _eager_row(rows, "(a) EAGer seed policy on VllmEngine", eng, prompts, seed_cfg, R)
    paper = _eager_row(rows, f"(a) EAGer paper policy M={M} on VllmEngine", eng, prompts, paper_cfg, R)
    rows += _vllm_rows(args, eng, prompts)
    host = HostLoopEngine(eng)
    hout = _eager_row(rows, f"(c) host loop, paper M={M}: LLM.generate per token per path", host, prompts,
                      paper_cfg, max(1, args.host_repeats))
    rows[-1]["steps"] = host.calls  # LLM.generate calls of the last run
    same = [[p.token_ids for p in r.paths] for r in paper.results] == [[p.token_ids for p in r.paths]
                                                                       for r in hout.results]
    same_answers = [r.answer.token_ids for r in paper.results] == [r.answer.token_ids for r in hout.results]
    return rows, (same, same_answers)


def _vllm_rows(args, eng, prompts) -> list:
    """(b) vLLM's parallel sampling and (b0) its greedy decode, M sequences per prompt."""
    from vllm import SamplingParams

    T, M, R, P = args.max_new_tokens, args.paper_m, args.repeats, len(prompts)
    requests = [{"prompt_token_ids": ids} for ids in prompts]
    temp = args.paper_temperature
    b_temp = temp if temp > 0 else default("temperature", "paper")  # vLLM refuses n > 1 with greedy sampling
    params = SamplingParams(n=M, temperature=b_temp, max_tokens=T, ignore_eos=True, detokenize=False)
    _in_thread(lambda: eng.llm.generate(requests[:1], params, use_tqdm=False))  # warm-up
    med, best, outs = _timed(lambda: eng.llm.generate(requests, params, use_tqdm=False), R)
    ntok = sum(len(c.token_ids) for o in outs for c in o.outputs)
    rows = [dict(method=f"(b) vLLM parallel sampling n={M}, T={b_temp:g}", seconds=med, best_s=best, sequences=M * P,
                 tokens=ntok, steps=T, forks=0, answer="-")]
    med, best, outs = _greedy(eng, [ids for ids in prompts for _ in range(M)], T, R)
    rows.append(dict(method=f"(b0) vLLM greedy, {M} requests per prompt", seconds=med, best_s=best,
                     sequences=M * P, tokens=sum(len(o.outputs[0].token_ids) for o in outs), steps=T, forks=0,
                     answer="-"))
    return rows


def _header(args, eng, name, load_s, described) -> str:
    import vllm

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{stamp}; {bm.cpu_name()}; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}; "
            f"vllm {vllm.__version__}, torch {torch.__version__}; {name} (loaded in {load_s:.0f} s); "
            f"block_size {eng.block_size}; {described}, {args.max_new_tokens} new tokens, "
            f"paper T = {args.paper_temperature}, median of {args.repeats} (host loop: {max(1, args.host_repeats)})")


def _table(args, rows, same, sweep, header) -> list:
    """The table's lines: the header, a line per row, the ratios to the goals, the step sweep."""
    T, R = args.max_new_tokens, args.repeats
    for r in rows:
        r["ms_per_token"] = 1e3 * r["seconds"] / max(1, r["tokens"])
        r["ms_per_step"] = 1e3 * r["seconds"] / max(1, r["steps"])
    lines = [header,
             f"{'method':<58} {'wall s':>7} {'best s':>7} {'seqs':>5} {'tokens':>6} {'ms/tok':>8} {'steps':>5} "
             f"{'ms/step':>8} {'forks':>5}  answer (prompt 1)"]
    for r in rows:
        lines.append(f"{r['method']:<58} {r['seconds']:>7.2f} {r['best_s']:>7.2f} {r['sequences']:>5} "
                     f"{r['tokens']:>6} {r['ms_per_token']:>8.1f} {r['steps']:>5} {r['ms_per_step']:>8.1f} "
                     f"{r['forks']:>5}  "
                     f"{(r['answer'] or '')[:40]!r}")
    by = {r["method"].split()[0] + (" paper" if "paper" in r["method"] else ""): r for r in rows}
    a, b, c = by["(a) paper"], by["(b)"], by["(c) paper"]
    b0 = by["(b0)"]
    lines.append(f"per generated token: (a) paper / (b) = {a['ms_per_token'] / b['ms_per_token']:.2f}x (goal <= 1.3), "
                 f"/ (b0) = {a['ms_per_token'] / b0['ms_per_token']:.2f}x; "
                 f"(c) / (a) paper = {c['ms_per_token'] / a['ms_per_token']:.2f}x (goal >= 3); "
                 f"(a) paper and (c): same paths {same[0]}, same answers {same[1]}; per step (a) paper / (b) = "
                 f"{a['ms_per_step'] / b['ms_per_step']:.2f}x, (c) / (a) paper = {c['ms_per_step'] / a['ms_per_step']:.2f}x")
    if sweep:
        lines.append(f"vLLM's own decode step against rows: greedy requests of prompt 1, {T} tokens each, "
                     f"median of {R} (wall s / {T}, prefill included)")
        lines.append("rows    " + " ".join(f"{n:>6}" for n, _ in sweep))
        lines.append("ms/step " + " ".join(f"{ms:>6.1f}" for _, ms in sweep))
    return lines
