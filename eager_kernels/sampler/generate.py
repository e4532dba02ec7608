"""generate(): inputs, the budget stages, and the results."""
from __future__ import annotations

import warnings
from typing import Optional, Sequence, Union

import torch

from ..engines import as_engine
from ..engines.base import chat_token_ids, union_token_ids
from .budget import allocate_budget
from .config import EagerConfig, EagerOutput, Metrics, Path, PromptResult
from .scheduler import Scheduler, Unit
from .keys import check_prompt_keys, stage_key
from .tokens import check_token_ids


def _as_token_lists(inputs, tokenizer, attention_mask, chat_template) -> list:
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() == 1:
            inputs = inputs[None, :]
        if inputs.dim() != 2 or inputs.dtype not in (torch.int64, torch.int32):
            raise ValueError("input_ids: expected an integer tensor [prompts, length]")
        rows = inputs.cpu().tolist()
        if attention_mask is not None:
            mask = attention_mask.cpu().tolist()
            rows = [[t for t, m in zip(r, mr) if m] for r, mr in zip(rows, mask)]
        return rows
    inputs = list(inputs)
    if not inputs:
        raise ValueError("generate: no prompts")
    if all(isinstance(x, str) for x in inputs):
        if tokenizer is None:
            raise ValueError("generate: text prompts need tokenizer=")
        use_chat = chat_template if chat_template is not None else bool(getattr(tokenizer, "chat_template", None))
        out = []
        for text in inputs:
            if use_chat:
                out.append(chat_token_ids(tokenizer, [{"role": "user", "content": text}]))
            else:
                out.append([int(t) for t in tokenizer(text)["input_ids"]])
        return out
    if all(isinstance(x, (list, tuple)) for x in inputs):
        return [[int(t) for t in x] for x in inputs]
    raise TypeError("generate: expected input_ids (tensor or lists of ints) or a list of strings")


def eos_ids(cfg, tokenizer, engine) -> list:
    if cfg.eos_token_id is not None:
        e = cfg.eos_token_id
        return [int(e)] if isinstance(e, int) else [int(x) for x in e]
    return union_token_ids([getattr(tokenizer, "eos_token_id", None), engine.eos_token_ids or None])


def stop_sequences(cfg, tokenizer) -> list:
    seqs = [list(map(int, s)) for s in (cfg.stop_branching_ids or [])]
    strings = cfg.stop_branching_at
    if isinstance(strings, str):
        strings = [strings]
    for s in strings or []:
        if tokenizer is None:
            raise ValueError("stop_branching_at needs tokenizer= (or give stop_branching_ids)")
        # Matched on token ids: the string as it encodes alone and after a space (BPE
        # vocabularies often merge the space into the first token, e.g. " </" + "think" + ">").
        for variant in (s, " " + s):
            ids = [int(i) for i in tokenizer.encode(variant, add_special_tokens=False)]
            if ids and ids not in seqs:
                seqs.append(ids)
    return seqs


def best_path(paths) -> Optional[Path]:
    best = None
    for p in paths:  # first of equal scores wins
        if best is None or p.score > best.score:
            best = p
    return best


def prepare(engine, inputs, cfg, tokenizer, attention_mask, chat_template, prompt_keys):
    """Token ids, prompt keys, EOS ids and stop sequences, all checked against the engine's
    vocabulary before anything is decoded."""
    prompts = _as_token_lists(inputs, tokenizer, attention_mask, chat_template)
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate: a prompt is empty (at least one token is needed)")
    keys = check_prompt_keys(prompt_keys, len(prompts))
    V = engine.vocab_size
    check_token_ids(prompts, V)
    eos = eos_ids(cfg, tokenizer, engine)
    check_token_ids([eos], V, "eos_token_id")
    stops = stop_sequences(cfg, tokenizer)
    check_token_ids(stops, V, "stop_branching_at / stop_branching_ids")
    return prompts, keys, eos, stops


def isolates_prompts(engine, cfg) -> bool:
    """True when each prompt must decode in engine calls of its own: batch-invariant mode
    (cfg.batch_invariant) on an engine whose logits for a row depend on the other rows of
    its call (engine.batch_invariant False, see engines/base.py)."""
    return bool(cfg.batch_invariant) and not getattr(engine, "batch_invariant", False)


def _stage(engine, prompts, keys, which, caps, name, cfg, eos, stops, tokenizer, metrics, progress,
           all_paths, peaks, events):
    """One budget stage for the prompts `which` (caps: paths each), keyed by the stage's name,
    as one scheduler unit. In batch-invariant mode on an engine that is not batch-invariant,
    one exclusive unit per prompt: the batch each of its rows sees is then its own prompt's
    rows, a function of that prompt alone."""
    stop_t = [torch.tensor(s, dtype=torch.int64, device=engine.device) for s in stops if len(s) > 0]
    isolate = isolates_prompts(engine, cfg)
    groups = [[j] for j in range(len(which))] if isolate else [list(range(len(which)))]
    sched = Scheduler(engine)

    def collect(group):
        def done(unit, paths):
            for j, raw, peak, ev in zip(group, paths, unit.peak, unit.events):
                i = which[j]
                peaks[i] = max(peaks[i], peak)
                events[i] += ev
                for d in raw:
                    text = tokenizer.decode(d["token_ids"], skip_special_tokens=True) if tokenizer is not None else None
                    all_paths[i].append(Path(prompt_index=i, stage=name, text=text, **d))
        return done

    for group in groups:
        sched.add(Unit(prompts=[prompts[which[j]] for j in group], caps=[caps[j] for j in group], cfg=cfg,
                       seed=stage_key(cfg.seed, name), keys=[keys[which[j]] for j in group], eos=eos,
                       stops=stop_t, metrics=metrics, progress=bool(progress), exclusive=isolate,
                       on_done=collect(group)))
    sched.run()
    metrics.stages.append(name)


def generate_stage(model, inputs, config: EagerConfig, *, stage: str, caps: Sequence[int], tokenizer=None,
                   prompt_keys: Optional[Sequence[int]] = None, chat_template: Optional[bool] = None,
                   progress: bool = False) -> EagerOutput:
    """One budget stage on its own: a tree of at most caps[i] paths for prompt i, drawn
    with the stage's key (config.seed and the stage's name, "init" or config.budget) and
    each prompt's key. generate(budget=...) is generate_stage("init", [M] * G), then
    generate_stage(config.budget, extras) for the prompts that get extra paths; running the
    stages apart (e.g. on Ray workers, with the allocation computed in between) gives the
    same paths."""
    cfg = config
    cfg.validate()
    engine = as_engine(model, tokenizer)
    if tokenizer is None:
        tokenizer = engine.tokenizer
    prompts, keys, eos, stops = prepare(engine, inputs, cfg, tokenizer, None, chat_template, prompt_keys)
    G = len(prompts)
    caps = [int(c) for c in caps]
    if len(caps) != G or any(c < 1 for c in caps):
        raise ValueError(f"caps: expected {G} ints >= 1 (paths per prompt), got {caps}")
    metrics = Metrics()
    all_paths = [[] for _ in range(G)]
    peaks, events = [0] * G, [0] * G
    with torch.inference_mode():
        _stage(engine, prompts, keys, list(range(G)), caps, stage, cfg, eos, stops, tokenizer, metrics,
               progress, all_paths, peaks, events)
    results = [PromptResult(paths=p, answer=best_path(p), branch_events=events[i]) for i, p in enumerate(all_paths)]
    metrics.paths_per_prompt = [len(p) for p in all_paths]
    metrics.max_active_per_prompt = peaks
    return EagerOutput(results=results, metrics=metrics, config=cfg, prompt_ids=prompts, tokenizer=tokenizer)


def generate(model, inputs: Union[torch.Tensor, Sequence, str], config: Optional[EagerConfig] = None, *,
             tokenizer=None, attention_mask: Optional[torch.Tensor] = None,
             chat_template: Optional[bool] = None, progress: bool = False,
             prompt_keys: Optional[Sequence[int]] = None) -> EagerOutput:
    """Entropy-aware generation on a transformers causal LM or any engine.

    Args:
        model: a transformers causal LM (any device; the ops run where its logits are;
            wrapped in engines.TransformersEngine) or an eager_kernels.engines.Engine such as
            LlamaCppEngine(path), which brings its own tokenizer.
        inputs: input_ids ([prompts, length] tensor, with `attention_mask` if padded; or a
            list of token-id lists), or a list of strings with a tokenizer.
        config: an EagerConfig (default: EagerConfig() = the paper policy).
        tokenizer: decodes path texts, tokenizes string prompts and stop strings (default:
            the engine's own, if it has one).
        chat_template: wrap string prompts in the tokenizer's chat template (None: when the
            tokenizer has one).
        progress: show a tqdm bar over decode steps.
        prompt_keys: one int per prompt (default: its position in this call). A prompt's
            paths depend only on (config.seed, its key, the model), never on the other
            prompts of the call or its place among them: give each prompt a stable key
            (e.g. its index in the dataset) to get the same result in any batch or shard.

    Returns an EagerOutput: results[i].paths / .answer per prompt, and metrics.
    """
    cfg = config if config is not None else EagerConfig()
    cfg.validate()
    if cfg.budget != "init" and cfg.temperature == 0:
        warnings.warn(f"budget={cfg.budget!r} with temperature 0: the extra trees are greedy and repeat "
                      "the first pass's paths; use sampling (the paper policy) for budget stages",
                      RuntimeWarning, stacklevel=2)
    engine = as_engine(model, tokenizer)
    if tokenizer is None:
        tokenizer = engine.tokenizer
    prompts, keys, eos, stops = prepare(engine, inputs, cfg, tokenizer, attention_mask, chat_template,
                                         prompt_keys)
    G, M = len(prompts), cfg.max_paths_per_prompt
    metrics = Metrics()
    all_paths = [[] for _ in range(G)]
    peaks = [0] * G
    events = [0] * G

    def stage(name, which, caps):
        _stage(engine, prompts, keys, which, caps, name, cfg, eos, stops, tokenizer, metrics, progress,
               all_paths, peaks, events)

    with torch.inference_mode():
        stage("init", list(range(G)), [M] * G)
        if cfg.budget != "init":
            used = [len(p) for p in all_paths]
            partial = [PromptResult(paths=list(p), answer=best_path(p)) for p in all_paths]
            extras = allocate_budget(used, M, mode=cfg.budget, verifier=cfg.verifier, results=partial,
                                     adapt_factor=cfg.adapt_factor)
            which = [i for i in range(G) if extras[i] > 0]
            if which:
                stage(cfg.budget, which, [extras[i] for i in which])

    results = []
    for i in range(G):
        paths = all_paths[i]
        results.append(PromptResult(paths=paths, answer=best_path(paths), branch_events=events[i]))
    metrics.paths_per_prompt = [len(p) for p in all_paths]
    metrics.max_active_per_prompt = peaks
    return EagerOutput(results=results, metrics=metrics, config=cfg, prompt_ids=prompts, tokenizer=tokenizer)
