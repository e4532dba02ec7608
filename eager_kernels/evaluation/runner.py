"""Running the methods on a suite, one generate() call per batch of prompts.

The suite (suites.py: the arithmetic suite, GSM8K or a JSONL) gives the problems, each
problem's prompt token ids and the judge of a path's text; the model is whatever
eager_kernels.generate takes (a transformers model, or an engine object), passed straight
through by Evaluator._call, the one place generate() is called.

Methods (all at the same cap M = max_paths paths per prompt):

    greedy       one greedy path per prompt (temperature 0, branching off)
    parallel     M independent samples per prompt at `temperature` (eager_kernels.generate
                 with branching off: each sample is its own one-path tree)
    eager_init   EAGer, policy "paper": sampling at `temperature`, top-20 entropy, threshold
                 max(theta, q-th percentile of the prompt's history), at most M paths
    eager_adapt  eager_init, then the saved budget sum(M - paths used) goes to the prompts
                 that hit M (at most 3M extra paths each, fresh trees), by
                 eager_kernels.allocate_budget(mode="adapt")
    eager_full   eager_init, then the saved budget goes to the prompts with no correct path
                 (at most M extra each) by allocate_budget(mode="full") with the task's exact
                 answer as the verifier callback
    seed         the practitioner policy (greedy, full entropy, q 80), pruned to M paths

eager_adapt and eager_full reuse the eager_init records of the same theta (they ARE that
first stage; its tokens and time are counted in theirs) and share the saved budget over
the whole suite, not per batch: the allocation is computed from all init records, then the
extra stages run in batches of prompts that receive the same number of extra paths, with
seed + 1. Each prompt's key is its index in the suite (generate's prompt_keys; parallel's
j-th sample of task i has key mix(i, j)), so a prompt's random draws do not depend on how
the prompts are batched or sharded (in process or on Ray workers, see evaluation/ray.py). Its
logits do, on both shipped engines (engines/base.py, "Batch invariance"), and an entropy
near the threshold can then flip a branch: with batch_invariant (eval --batch-invariant,
the default with --ray) each prompt decodes in engine calls of its own, its records do not
depend on batch_size, and the run hash leaves the batch size out (a run resumes with any).
In the default mode the batch size is part of the hash and run_eval refuses to continue a
run's records with another one (Evaluator.batch_conflict).

Tokens: a method's tokens are the sum of metrics.tokens_generated of its generate() calls
(exact, EOS included, prompt and padding excluded); the per-prompt `tokens` of a record
counts the distinct tokens of its paths' trees (equal to the call total for all methods
but seed, whose pruned paths are gone from the output).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from typing import Optional

from ..sampler.options import default
from .analysis import accuracy_cis
from .store import ResultStore
from .suites import build_suite, vote_key

METHODS = ("greedy", "parallel", "eager_init", "eager_adapt", "eager_full", "seed")
NO_BRANCH = 1e9  # a threshold no entropy reaches: branching off


@dataclass
class EvalConfig:
    """An evaluation run. The EAGer settings it shares with EagerConfig (temperature, theta,
    q, seed, backend, batch_invariant) default to EagerConfig's (the paper policy's where the
    policy sets them); max_paths and max_new_tokens are the evaluation's own."""

    prompts: int = 100
    max_paths: int = 8
    max_new_tokens: int = 48
    temperature: float = default("temperature", "paper")
    theta: float = default("theta", "paper")
    q: float = default("q", "paper")
    seed: int = default("seed")
    suite_seed: int = 0
    batch_size: int = 20  # prompts per generate() call (rows = batch_size x paths)
    backend: str = default("backend")
    model_name: str = "model"
    suite: str = "arithmetic"  # "arithmetic" (tasks.py), "gsm8k" (shipped) or "dataset" (a local JSONL)
    split: str = "test"  # gsm8k: "test" or "train" (the tuning problems)
    fewshot: int = 2  # gsm8k / dataset: worked train examples per prompt (arithmetic: its own two)
    dataset: str = ""  # suite "dataset": the JSONL path
    question_key: str = "question"
    answer_key: str = "answer"
    batch_invariant: bool = default("batch_invariant")  # True: records independent of batch_size

    def _identity(self, prompts_fingerprint: str) -> dict:
        d = asdict(self)
        d["prompts_fingerprint"] = prompts_fingerprint
        d.pop("backend")  # every backend gives the same tokens
        d.pop("theta")  # part of the method label
        d["keys"] = "per-prompt"  # samples keyed per prompt (not by batch row): older records differ
        return d

    def run_hash(self, prompts_fingerprint: str = "") -> str:
        """What identifies a run's records; prompts_fingerprint covers the prompt token ids
        (tokenizer, chat template, examples and instruction). In batch-invariant mode the
        batch size is not part of it (a prompt's records do not depend on it: a run resumes
        with any batch size); in the default mode it is (and the hash is the one of runs
        made before the mode existed)."""
        d = self._identity(prompts_fingerprint)
        if d.pop("batch_invariant"):
            d.pop("batch_size")
            d["batch_invariant"] = True
        return _sha(d)

    def run_family(self, prompts_fingerprint: str = "") -> str:
        """The run hash without the batch size and the mode: runs of one family differ only
        in how their prompts were batched (run_eval refuses to mix them, see
        Evaluator.batch_conflict)."""
        d = self._identity(prompts_fingerprint)
        d.pop("batch_invariant")
        d.pop("batch_size")
        return _sha(d)


def _sha(d: dict) -> str:
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


class BatchSizeConflict(ValueError):
    """The output folder holds default-mode records of this configuration made with another
    batch size: resuming would mix trees of two batchings."""


def label(method: str, theta: Optional[float] = None) -> str:
    """The method's name in records and tables; theta-sweep runs carry their theta."""
    return method if theta is None else f"{method}@theta={theta:g}"


def tree_tokens(token_lists) -> int:
    """Distinct tokens of paths that share prefixes (the nodes of their trie)."""
    root = {}
    n = 0
    for toks in token_lists:
        node = root
        for t in toks:
            nxt = node.get(t)
            if nxt is None:
                nxt = node[t] = {}
                n += 1
            node = nxt
    return n


def _path_record(p, task, stage: str, judge) -> dict:
    """One path as stored: text, judged answer, and what the branching analysis reads (the
    entropy of each generated position, 3 decimals, and the lineage's branch steps)."""
    pred, correct = judge(p.text, task)
    return {"text": p.text, "tokens": len(p.token_ids), "logprob": p.logprob,
            "score": p.logprob / max(1, len(p.token_ids)), "pred": pred,
            "correct": bool(correct), "finished": p.finished,
            "branches": len(p.branch_steps), "stage": stage,
            "branch_steps": [int(s) for s in p.branch_steps],
            "branch_prefixes": [_prefix_id(p.token_ids[:s]) for s in p.branch_steps],
            "entropies": [round(float(e), 3) for e in p.entropies]}


def _prefix_id(tokens) -> str:
    """Identifies a branch event: the tokens before it (paths born of one event share them)."""
    return hashlib.sha1(json.dumps([int(t) for t in tokens]).encode()).hexdigest()[:12]


def _majority(paths: list) -> Optional[dict]:
    """The majority-vote answer over paths: the most frequent prediction (numbers by value,
    no prediction never wins); ties go to the answer whose best path has the best log-prob
    per token. Returns that best path of the winning answer, or None."""
    groups = {}
    for p in paths:
        k = vote_key(p["pred"])
        if k is not None:
            groups.setdefault(k, []).append(p)
    if not groups:
        return None
    win = max(groups.values(), key=lambda g: (len(g), max(p["score"] for p in g)))
    return _best(win)


def _best(paths: list) -> Optional[dict]:
    best = None
    for p in paths:  # the sampler's answer rule: best log-prob per token, first of ties
        if best is None or p["score"] > best["score"]:
            best = p
    return best


class Evaluator:
    """Runs methods over the suite, writing one JSONL record per (method, prompt)."""

    def __init__(self, model, tokenizer, cfg: EvalConfig, store: ResultStore, *, progress: bool = True,
                 log=print, suite=None):
        """model: whatever eager_kernels.generate takes as its model (a transformers causal
        LM, or an engine object): it is passed straight through. suite: the problems, prompts
        and judge (default build_suite(cfg))."""
        self.model, self.tok, self.cfg, self.store = model, tokenizer, cfg, store
        self.suite = suite if suite is not None else build_suite(cfg)
        self.tasks = self.suite.tasks
        self.prompt_ids = [self.suite.prompt_ids(tokenizer, t) for t in self.tasks]
        fp = hashlib.sha1(json.dumps([self.suite.fingerprint(), self.prompt_ids]).encode()).hexdigest()[:16]
        self.hash = cfg.run_hash(fp)
        self.family = cfg.run_family(fp)
        self.progress = progress
        self.log = log

    # -- keys and configs ----------------------------------------------------------------
    def key(self, lab: str, pid: int) -> str:
        return f"{self.hash}/{lab}/{pid}"

    def records(self, lab: str) -> list:
        return [r for r in (self.store.get(self.key(lab, t.id)) for t in self.tasks) if r is not None]

    def _eager_config(self, **kw):
        from ..sampler import EagerConfig

        base = dict(max_new_tokens=self.cfg.max_new_tokens, backend=self.cfg.backend, seed=self.cfg.seed,
                    batch_invariant=self.cfg.batch_invariant)
        base.update(kw)
        return EagerConfig(**base)

    def _paper(self, theta: float, paths: int, seed_offset: int = 0):
        return self._eager_config(policy="paper", temperature=self.cfg.temperature, theta=theta,
                                  initial_threshold=theta, q=self.cfg.q, max_paths_per_prompt=paths,
                                  seed=self.cfg.seed + seed_offset)

    # -- running ---------------------------------------------------------------------------
    def _bar(self, lab: str, total: int, done: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=done, desc=f"{lab:<22}", unit="prompt", disable=not self.progress,
                    dynamic_ncols=True)

    def _call(self, ids: list, config, keys: list) -> tuple:
        """The one place the evaluation calls generate() (every method, every stage); keys:
        each prompt's key (its task id, or a mix of it for parallel samples)."""
        from ..sampler import generate

        t0 = time.perf_counter()
        out = generate(self.model, ids, config, tokenizer=self.tok, prompt_keys=keys)
        return out, time.perf_counter() - t0

    @staticmethod
    def _batch_info(bid: str, out, wall: float, n: int) -> dict:
        return {"id": bid, "tokens": int(out.metrics.tokens_generated), "wall_s": wall, "prompts": n,
                "forward_passes": int(out.metrics.forward_passes),
                "branch_events": int(out.metrics.branch_events)}

    def _record(self, lab: str, task, paths: list, batches: list, token_lists: list, answer_path=None) -> dict:
        correct = [p["correct"] for p in paths]
        ans = answer_path if answer_path is not None else _best(paths)
        maj = _majority(paths)
        return {"key": self.key(lab, task.id), "method": lab, "prompt_id": task.id, "kind": task.kind,
                "question": task.question, "answer": task.answer, "n_paths": len(paths),
                "n_correct": sum(correct), "pass_at_k": any(correct),
                "pass_rate": sum(correct) / len(paths) if paths else 0.0,
                "answer_pred": ans["pred"] if ans else None,
                "answer_correct": bool(ans["correct"]) if ans else False,
                "majority_pred": maj["pred"] if maj else None,
                "majority_correct": bool(maj["correct"]) if maj else False,
                "max_paths": self.cfg.max_paths,
                "tokens": tree_tokens(token_lists), "branch_events": sum(p["branches"] for p in paths),
                "batches": batches, "run": self.run_info(), "paths": paths}

    def run_info(self) -> dict:
        """What a record says about its run's batching (read by batch_conflict)."""
        inv = bool(self.cfg.batch_invariant)
        return {"family": self.family, "batch_invariant": inv, "batch_size": None if inv else self.cfg.batch_size}

    def batch_conflict(self) -> Optional[str]:
        """A clear message when the store holds default-mode records of this configuration
        (same family) made with another batch size while this run is in the default mode:
        a prompt's tree there depends on its batch, so resuming would mix two batchings.
        None when there is nothing to refuse (another batch size in batch-invariant mode is
        the same run and resumes)."""
        if self.cfg.batch_invariant:
            return None
        sizes = {}
        for key, rec in self.store.records.items():
            run = rec.get("run") if isinstance(rec, dict) else None
            if (isinstance(run, dict) and run.get("family") == self.family and not run.get("batch_invariant")
                    and run.get("batch_size") != self.cfg.batch_size and not key.startswith(self.hash + "/")):
                sizes[run.get("batch_size")] = sizes.get(run.get("batch_size"), 0) + 1
        if not sizes:
            return None
        size, n = max(sizes.items(), key=lambda kv: kv[1])
        return (f"--batch-size: {self.store.path} holds {n} records of this configuration made with --batch-size "
                f"{size}; in the default mode a prompt's tree depends on its batch, so continuing with "
                f"--batch-size {self.cfg.batch_size} would mix trees of two batchings. Resume with --batch-size "
                f"{size}, write to another --out, or run with --batch-invariant (records that do not depend on "
                f"the batch size; a separate run)")

    def _postfix(self, bar, lab: str, spent: int) -> None:
        """The bar's running figures: tokens so far, Pass@k and answer accuracy (best path)."""
        recs = self.records(lab)
        if recs:
            n = len(recs)
            bar.set_postfix(tokens=spent, pass_k=f"{sum(bool(r['pass_at_k']) for r in recs) / n:.0%}",
                            acc=f"{sum(bool(r['answer_correct']) for r in recs) / n:.0%}")
        else:
            bar.set_postfix(tokens=spent)

    def _pending(self, lab: str) -> list:
        return [t for t in self.tasks if self.key(lab, t.id) not in self.store]

    def _chunks(self, tasks: list, size: int):
        for i in range(0, len(tasks), max(1, size)):
            yield tasks[i: i + size]

    def run_simple(self, method: str, theta: Optional[float] = None) -> None:
        """greedy, parallel, eager_init (any theta) and seed: independent batches."""
        lab = label(method, theta)
        pending = self._pending(lab)
        bar = self._bar(lab, len(self.tasks), len(self.tasks) - len(pending))
        spent = sum(b["tokens"] for b in _unique_batches(self.records(lab)))
        M = self.cfg.max_paths
        for chunk in self._chunks(pending, self.cfg.batch_size):
            bid = f"{lab}/init/{chunk[0].id}-{chunk[-1].id}:{len(chunk)}"
            ids = [self.prompt_ids[t.id] for t in chunk]
            recs = []
            if method == "parallel":
                from ..sampler.keys import mix_int

                out, wall = self._call([x for x in ids for _ in range(M)], self._paper(NO_BRANCH, 1),
                                       [mix_int(t.id, j) for t in chunk for j in range(M)])
                info = self._batch_info(bid, out, wall, len(chunk))
                for j, t in enumerate(chunk):
                    res = out.results[j * M:(j + 1) * M]
                    raw = [r.paths[0] for r in res]
                    paths = [_path_record(p, t, "init", self.suite.judge) for p in raw]
                    recs.append(self._record(lab, t, paths, [info], []))
                    recs[-1]["tokens"] = sum(len(p.token_ids) for p in raw)  # M separate trees
            else:
                if method == "greedy":
                    config = self._eager_config(policy="paper", temperature=0.0, theta=NO_BRANCH,
                                                initial_threshold=NO_BRANCH, max_paths_per_prompt=1)
                elif method == "eager_init":
                    config = self._paper(self.cfg.theta if theta is None else theta, M)
                elif method == "seed":
                    config = self._eager_config(policy="seed", max_paths_per_prompt=M, prune_to=M)
                else:
                    raise ValueError(f"unknown method {method!r}")
                out, wall = self._call(ids, config, [t.id for t in chunk])
                info = self._batch_info(bid, out, wall, len(chunk))
                for j, t in enumerate(chunk):
                    r = out.results[j]
                    paths = [_path_record(p, t, "init", self.suite.judge) for p in r.paths]
                    ans = None
                    if r.answer is not None:
                        ans = paths[next(i for i, p in enumerate(r.paths) if p is r.answer)]
                    recs.append(self._record(lab, t, paths, [info], [p.token_ids for p in r.paths], ans))
                    recs[-1]["branch_events"] = int(r.branch_events)  # the sampler's per-prompt count
            self.store.add(recs)
            spent += info["tokens"]
            bar.update(len(chunk))
            self._postfix(bar, lab, spent)
        bar.close()

    def allocate(self, method: str, theta: Optional[float] = None) -> list:
        """Extra paths per task id for eager_adapt / eager_full, from the eager_init records
        of this theta (all of them must be in the store)."""
        from ..sampler import allocate_budget

        init = {r["prompt_id"]: r for r in self.records(label("eager_init", theta))}
        M = self.cfg.max_paths
        used = [init[t.id]["n_paths"] for t in self.tasks]
        if method == "eager_adapt":
            return allocate_budget(used, M, mode="adapt")
        # eager_full: the task's exact answer is the verifier (a record's path "correct")
        correct = [any(p["correct"] for p in init[t.id]["paths"]) for t in self.tasks]
        return allocate_budget(used, M, mode="full", correct=correct)

    def run_budget(self, method: str, theta: Optional[float] = None, extras: Optional[list] = None) -> None:
        """eager_adapt / eager_full: the init stage (eager_init records of this theta, run
        first when missing), the suite-wide allocation (or `extras`, extra paths per task
        id computed elsewhere: the Ray runner's workers get the driver's), then the extra
        stages."""
        mode = {"eager_adapt": "adapt", "eager_full": "full"}[method]
        lab, init_lab = label(method, theta), label("eager_init", theta)
        th = self.cfg.theta if theta is None else theta
        if self._pending(init_lab):
            self.run_simple("eager_init", theta)
        init = {r["prompt_id"]: r for r in self.records(init_lab)}
        if extras is None:
            extras = self.allocate(method, theta)
        pending = self._pending(lab)
        bar = self._bar(lab, len(self.tasks), len(self.tasks) - len(pending))

        def finish(t, extra_paths, extra_tokens, extra_batch, extra_branches=0):
            r0 = init[t.id]
            paths = [dict(p) for p in r0["paths"]] + extra_paths
            rec = self._record(lab, t, paths, list(r0["batches"]) + ([extra_batch] if extra_batch else []), [])
            rec["tokens"] = r0["tokens"] + extra_tokens
            rec["branch_events"] = r0["branch_events"] + extra_branches
            rec["extra_paths_allocated"] = extras[t.id]
            return rec

        # Prompts with no extra paths are complete already.
        zero = [t for t in pending if extras[t.id] == 0]
        if zero:
            self.store.add([finish(t, [], 0, None) for t in zero])
            bar.update(len(zero))
        spent = sum(b["tokens"] for b in _unique_batches(self.records(lab)))
        self._postfix(bar, lab, spent)
        for n_extra, chunk in self.budget_calls(pending, extras):
            bid = f"{lab}/{mode}/{chunk[0].id}-{chunk[-1].id}:{len(chunk)}x{n_extra}"
            out, wall = self._call([self.prompt_ids[t.id] for t in chunk], self._paper(th, n_extra, 1),
                                   [t.id for t in chunk])
            info = self._batch_info(bid, out, wall, len(chunk))
            recs = []
            for j, t in enumerate(chunk):
                r = out.results[j]
                paths = [_path_record(p, t, mode, self.suite.judge) for p in r.paths]
                recs.append(finish(t, paths, tree_tokens([p.token_ids for p in r.paths]), info,
                                   int(r.branch_events)))
            self.store.add(recs)
            spent += info["tokens"]
            bar.update(len(chunk))
            self._postfix(bar, lab, spent)
        bar.close()

    def budget_calls(self, tasks: list, extras: list) -> list:
        """The extra stages' generate() calls as (extra paths, tasks): the tasks with extra
        paths grouped by their number, each group in chunks of batch_size x M paths."""
        groups = {}
        for t in tasks:
            if extras[t.id] > 0:
                groups.setdefault(extras[t.id], []).append(t)
        M = self.cfg.max_paths
        return [(n_extra, chunk) for n_extra, group in sorted(groups.items())
                for chunk in self._chunks(group, max(1, (self.cfg.batch_size * M) // n_extra))]

    def label(self, method: str, theta: Optional[float] = None) -> str:
        """The record label; a sweep theta equal to the main theta reuses the main records."""
        if theta is not None and theta == self.cfg.theta:
            theta = None
        return label(method, theta if method in ("eager_init", "eager_adapt", "eager_full") else None)

    def run(self, method: str, theta: Optional[float] = None) -> None:
        if theta is not None and theta == self.cfg.theta:
            theta = None
        if method in ("eager_adapt", "eager_full"):
            self.run_budget(method, theta)
        elif method in METHODS:
            self.run_simple(method, theta if method == "eager_init" else None)
        else:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def _unique_batches(records: list) -> list:
    seen, out = set(), []
    for r in records:
        for b in r["batches"]:
            if b["id"] not in seen:
                seen.add(b["id"])
                out.append(b)
    return out


def summarize(records: list) -> dict:
    """One method's numbers over its records (the prompts completed so far).

    tokens / wall_s: sums over the distinct generate() calls behind the records (an
    adapt / full record counts its init call too); sequences: paths over all prompts;
    pass_at_k: fraction of prompts with any correct path; pass_rate: mean over prompts of
    the fraction of correct paths; answer_acc: fraction of prompts whose chosen path (best
    log-prob per token) is correct; majority_acc: fraction whose majority-vote answer over
    the paths is correct; "<column>_ci": 95% bootstrap intervals over prompts of those four.
    """
    n = len(records)
    batches = _unique_batches(records)
    if n == 0:
        return {"prompts": 0}
    return {
        "prompts": n,
        "tokens": sum(b["tokens"] for b in batches),
        "tokens_per_prompt": sum(b["tokens"] for b in batches) / n,
        "sequences": sum(r["n_paths"] for r in records),
        "sequences_per_prompt": sum(r["n_paths"] for r in records) / n,
        "pass_at_k": sum(bool(r["pass_at_k"]) for r in records) / n,
        "pass_rate": sum(r["pass_rate"] for r in records) / n,
        "answer_acc": sum(bool(r["answer_correct"]) for r in records) / n,
        "majority_acc": sum(bool(r.get("majority_correct", False)) for r in records) / n,
        "branch_events": sum(b.get("branch_events", 0) for b in batches),
        "wall_s": sum(b["wall_s"] for b in batches),
        **accuracy_cis(records),
    }
