"""Command line: `eager-kernels <command>` or `python -m eager_kernels <command>`.

    generate "prompt" [--engine auto|transformers|llamacpp|vllm] [--model DIR | --gguf FILE]
              [--policy seed|paper] [--max-new-tokens N] [--backend B]
    demo      the kernel checks, then generate "What is 17 + 25?" on the default model
    bench     the kernel benchmark grid (every op, every backend here); --decode: the
              end-to-end decode comparison on the default model
    eval      greedy / parallel / EAGer variants on the built-in task suite
    serve     an OpenAI-compatible HTTP server (docs/serving.md; the `serve` extra)

The package's own errors (a bad option value, a missing file or optional extra, a KV cache
that does not fit) print as one line, `eager-kernels <command>: error: <message>`, with
exit code 2, as argparse's own errors do. `--debug` (anywhere on the line) or
EAGER_KERNELS_DEBUG=1 shows the traceback instead. Unexpected exceptions keep theirs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path as FsPath

from .engines.select import ENGINES
from .sampler.options import add_config_arguments, config_kwargs

DEMO_PROMPT = "What is 17 + 25?"
# generate's EAGer options (sampler/options.py), in the order of its --help
GENERATE_OPTIONS = ("policy", "max_new_tokens", "max_paths_per_prompt", "temperature", "backend", "seed", "budget",
                    "stop_branching_at", "batch_invariant")


def _load(model_dir, batch_invariant=False):
    """(transformers model, or its batch-invariant engine: select.load; tokenizer, name, load seconds)."""
    from .engines.select import load

    return load("transformers", model_dir=model_dir, batch_invariant=batch_invariant)


def _load_llamacpp(gguf, threads, model_dir=None, batch_invariant=False):
    """(LlamaCppEngine, its tokenizer, name, load seconds); batch_invariant: select.load."""
    from .engines.select import load

    return load("llamacpp", model_dir=model_dir, gguf=gguf, threads=threads, batch_invariant=batch_invariant)


def _short(text: str, width: int) -> str:
    text = repr(text)[1:-1]
    return text if len(text) <= width else text[: width - 3] + "..."


def print_output(out, prompts, *, show: int = 12, file=None) -> None:
    """The explored paths (best first), where they branched, the answer and the metrics."""
    file = file or sys.stdout
    w = file.write
    for i, r in enumerate(out.results):
        w(f"\nPrompt {i}: {prompts[i]!r}\n")
        paths = sorted(r.paths, key=lambda p: -p.score)
        w(f"{len(paths)} paths explored; branch points per path shown as token positions "
          f"(0 = first generated token). Best {min(show, len(paths))} by log-prob per token:\n")
        w(f"  {'#':>3} {'score':>7} {'logprob':>8} {'tok':>4} {'end':>6}  {'branched at':<16} text\n")
        for j, p in enumerate(paths[:show]):
            steps = ",".join(map(str, p.branch_steps)) or "-"
            mark = "*" if p is r.answer else " "
            w(f" {mark}{j + 1:>3} {p.score:>7.3f} {p.logprob:>8.2f} {p.num_tokens:>4} {p.finished:>6}  "
              f"{_short(steps, 16):<16} {_short(p.text if p.text is not None else str(p.token_ids), 70)}\n")
        if len(paths) > show:
            w(f"  ... {len(paths) - show} more (--show N)\n")
        if r.answer is not None:
            a = r.answer
            w(f"Answer (best log-prob per token, {a.score:.3f}): "
              f"{a.text if a.text is not None else a.token_ids}\n")
    m = out.metrics
    rate = m.tokens_generated / m.decode_s if m.decode_s > 0 else float("nan")
    w("\nMetrics:\n")
    w(f"  tokens generated  {m.tokens_generated} (prompt and padding excluded)\n")
    w(f"  forward passes    {m.forward_passes} (1 prefill + {m.forward_passes - 1} decode steps)\n")
    w(f"  branch events     {m.branch_events}\n")
    w(f"  paths per prompt  {m.paths_per_prompt} (peak active rows {m.max_active_per_prompt})\n")
    w(f"  prefill           {m.prefill_s * 1e3:.1f} ms\n")
    w(f"  decode            {m.decode_s:.2f} s ({rate:.1f} tokens/s)\n")


def _threads(args) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _check_backend_here(backend: str) -> None:
    """The CLI loads models on the CPU: say now, not after loading, if `backend` cannot run there."""
    import torch

    from .kernels import registry as _registry

    _registry.resolve(backend, torch.device("cpu"))


def cmd_generate(args) -> int:
    from . import EagerConfig, generate

    from .engines.select import resolve

    _threads(args)
    cfg = EagerConfig(**config_kwargs(args, GENERATE_OPTIONS))  # bad values fail here, before the model loads
    _check_backend_here(cfg.backend)
    if getattr(args, "plot", None):
        from .errors import require

        require("matplotlib", extra="bench", purpose="--plot")
    engine = resolve(getattr(args, "engine", "auto"), model_dir=args.model)
    gguf = getattr(args, "gguf", None)
    if engine == "llamacpp":
        model, tok, name, load_s = _load_llamacpp(gguf, args.threads, args.model, cfg.batch_invariant)
    elif engine == "vllm":
        from .engines.select import load

        model, tok, name, load_s = load("vllm", model_dir=args.model, gguf=gguf)
    elif gguf:
        raise ValueError("--gguf needs --engine llamacpp (or auto with llama-cpp-python installed)")
    else:
        model, tok, name, load_s = _load(args.model, cfg.batch_invariant)
    progress = args.progress if args.progress is not None else args.max_new_tokens > 32
    print(f"model: {name} (loaded in {load_s:.1f} s); policy: {cfg.policy}; backend: {cfg.backend}; "
          f"M = {cfg.max_paths_per_prompt}; max_new_tokens = {cfg.max_new_tokens}")
    out = generate(model, list(args.prompt), cfg, tokenizer=tok,
                   chat_template=False if args.no_chat_template else None, progress=progress)
    print_output(out, list(args.prompt), show=args.show)
    if args.json:
        data = {"metrics": out.metrics.as_dict(),
                "results": [{"answer": r.answer.text if r.answer else None,
                             "paths": [p.__dict__ for p in r.paths]} for r in out.results]}
        FsPath(args.json).write_text(json.dumps(data, indent=1))
        print(f"wrote {args.json}")
    if getattr(args, "html", None):
        out.to_html(args.html, title=f"EAGer tree: {name}")
        print(f"wrote {args.html}")
    if getattr(args, "plot", None):
        out.plot(args.plot)
        print(f"wrote {args.plot}")
    return 0


def cmd_demo(args) -> int:
    from . import demo

    _check_backend_here(args.backend)
    checks_ok = demo.run_kernel_checks()
    print(f"\n== EAGer generate on the default model: {DEMO_PROMPT!r}, seed policy, 32 new tokens ==")
    argv = ["generate", DEMO_PROMPT, "--policy", "seed", "--max-new-tokens", "32", "--backend", args.backend,
            "--engine", args.engine]
    if args.model:
        argv += ["--model", args.model]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    status = cmd_generate(build_parser().parse_args(argv))
    return status if checks_ok else 1


def cmd_bench(args) -> int:
    from .bench import main as bench_main

    return bench_main(list(args.rest)) or 0


def cmd_eval(args) -> int:
    from .evaluation import main as eval_main

    return eval_main(list(args.rest)) or 0


def cmd_serve(args) -> int:
    from .serve import main as serve_main

    return serve_main(list(args.rest)) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eager-kernels", description="Entropy-aware (EAGer) generation with fused kernels.",
        epilog="--debug (anywhere) or EAGER_KERNELS_DEBUG=1: show the traceback of an error "
               "instead of its one-line message.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="explore paths for one or more prompts and print them")
    g.add_argument("prompt", nargs="+", help="prompt text(s)")
    g.add_argument("--engine", choices=ENGINES, default="auto",
                   help="the inference stack (default auto: llama.cpp when llama-cpp-python is installed, the "
                        "faster one here; else transformers; vllm: docs/vllm.md)")
    g.add_argument("--model", help="a local transformers model directory (default: SmolLM2-135M-Instruct)")
    g.add_argument("--gguf", default=None,
                   help="a GGUF file for the llama.cpp engine (default: SmolLM2-135M-Instruct, see models.py)")
    add_config_arguments(g, GENERATE_OPTIONS, defaults=dict(policy="seed", max_new_tokens=64))
    g.add_argument("--no-chat-template", action="store_true", help="feed the prompt text as is")
    g.add_argument("--show", type=int, default=12, help="paths to print per prompt")
    g.add_argument("--json", default=None, help="also write all paths and metrics to this file")
    g.add_argument("--html", default=None, help="also write the tree as a self-contained HTML page to this file")
    g.add_argument("--plot", default=None, help="also plot entropy along each path to this image file (matplotlib)")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads of torch and llama.cpp (1 is often faster on a machine shared with other jobs)")
    g.add_argument("--progress", dest="progress", action="store_true", default=None)
    g.add_argument("--no-progress", dest="progress", action="store_false")
    g.set_defaults(func=cmd_generate)

    d = sub.add_parser("demo", help="kernel checks, then generate on the default model")
    d.add_argument("--model", default=None)
    d.add_argument("--engine", choices=ENGINES, default="auto")
    add_config_arguments(d, ["backend"])
    d.add_argument("--threads", type=int, default=None, help="torch CPU threads for the generate part")
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("bench", add_help=False,
                       help="kernel benchmark grid; --decode: decode comparison (eager-kernels bench --help)")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=cmd_bench)

    e = sub.add_parser("eval", add_help=False,
                       help="evaluate greedy / parallel / EAGer variants on the built-in task suite "
                            "(eager-kernels eval --help)")
    e.add_argument("rest", nargs=argparse.REMAINDER)
    e.set_defaults(func=cmd_eval)

    s = sub.add_parser("serve", add_help=False,
                       help="an OpenAI-compatible HTTP server (eager-kernels serve --help; docs/serving.md)")
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_serve)
    return parser


def user_errors() -> tuple:
    """The exception types that are the user's to fix: reported in one line, no traceback."""
    from .errors import MissingExtraError
    from .sampler import EagerMemoryError

    return (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            EagerMemoryError, MissingExtraError)


def _debug_requested(argv: list) -> bool:
    return "--debug" in argv or os.environ.get("EAGER_KERNELS_DEBUG", "") not in ("", "0")


def _run(argv: list) -> int:
    if argv[:1] in (["eval"], ["bench"], ["serve"]):
        # their own parsers take every option (argparse.REMAINDER drops a leading --help)
        return {"eval": cmd_eval, "bench": cmd_bench, "serve": cmd_serve}[argv[0]](argparse.Namespace(rest=argv[1:]))
    args = build_parser().parse_args(argv)
    return args.func(args)


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = _debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        return _run(argv)
    except user_errors() as exc:
        if debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in message:
            message = f"{message}: {exc.filename}"
        where = f"eager-kernels {command}" if command else "eager-kernels"
        print(f"{where}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
