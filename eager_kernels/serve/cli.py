"""The command line of `eager-kernels serve` (docs/serving.md): its options, loading the
engine, and main(), which starts the server (serve/server.py) on the app (serve/app.py)."""
from __future__ import annotations

import argparse
import logging
import os
import time

from ..engines.select import ENGINES
from ..sampler.options import add_config_arguments
from .protocol import Settings

KV_LAYOUTS = {"auto": None, "unified": True, "streams": False}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eager-kernels serve",
                                description="An OpenAI-compatible HTTP server for EAGer generation (docs/serving.md).")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="the inference stack (default auto: llama.cpp when llama-cpp-python is installed)")
    p.add_argument("--model", default=None, help="a transformers model directory (default: SmolLM2-135M-Instruct)")
    p.add_argument("--gguf", default=None, help="a GGUF file for the llama.cpp engine (default: SmolLM2-135M-Instruct)")
    p.add_argument("--served-model-name", default=None,
                   help="the name clients send as `model` (default: the model's name); others get 404")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("EAGER_KERNELS_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $EAGER_KERNELS_API_KEY, else none)")
    defaults = Settings()
    eager = p.add_argument_group("EAGer", "the settings of every request (--policy, --max-paths: where its "
                                 "`eager` object does not say)")
    add_config_arguments(eager, ["policy", "max_paths_per_prompt", "backend", "batch_invariant"],
                         defaults=dict(policy=defaults.policy, max_paths_per_prompt=defaults.max_paths,
                                       backend=defaults.backend, batch_invariant=defaults.batch_invariant),
                         help=dict(batch_invariant="let prompts of a batch share engine calls even on an engine "
                                   "that is not batch-invariant (faster; a response may then move in the last "
                                   "bits with its batch)"))
    p.add_argument("--max-paths-limit", type=int, default=32, help="the largest eager.max_paths accepted (32)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting for the worker; beyond it 429 with Retry-After (64)")
    p.add_argument("--max-batch", type=int, default=16, help="prompts in one generate() call (16)")
    p.add_argument("--max-batch-rows", type=int, default=256,
                   help="prompts x max_paths in one generate() call (256, llama.cpp's sequence slots)")
    p.add_argument("--batch-window-ms", type=float, default=10.0,
                   help="how long the worker waits for more requests after the first of a batch (10 ms)")
    p.add_argument("--kv-layout", choices=sorted(KV_LAYOUTS), default="auto",
                   help="llama.cpp KV layout (default auto: the engine's choice, one shared cache up to 4 prompts "
                        "per call; unified; streams: one KV stream per row); docs/serving.md")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of torch and llama.cpp")
    p.add_argument("--drain-timeout", type=float, default=60.0,
                   help="on SIGTERM / SIGINT: seconds to finish the requests in flight before exiting (60)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def load_engine(args):
    """(engine or model, tokenizer, served name, context length) for the parsed options."""
    from ..engines.select import load, resolve

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    engine = resolve(args.engine, model_dir=args.model)
    model, tok, _, _ = load(engine, model_dir=args.model, gguf=args.gguf, threads=args.threads,
                            kv_unified=KV_LAYOUTS[args.kv_layout], batch_invariant=args.batch_invariant)
    if engine == "llamacpp":
        ctx = model.n_ctx or model.n_ctx_train
    elif engine == "vllm":
        ctx = model.max_model_len
    else:
        ctx = getattr(getattr(model, "model", model).config, "max_position_embeddings", None)
    if args.gguf:
        name = os.path.splitext(os.path.basename(args.gguf))[0]
    elif args.model:
        name = os.path.basename(os.path.normpath(str(args.model)))
    else:
        name = "SmolLM2-135M-Instruct"
    return model, tok, name, ctx


def _check_args(args):
    for opt in ("max_paths", "max_paths_limit", "max_queue", "max_batch", "max_batch_rows"):
        if getattr(args, opt) < 1:
            raise ValueError(f"--{opt.replace('_', '-')}: expected an int >= 1, got {getattr(args, opt)}")
    if args.max_paths > args.max_paths_limit:
        raise ValueError(f"--max-paths ({args.max_paths}) exceeds --max-paths-limit ({args.max_paths_limit})")
    if args.batch_window_ms < 0 or args.drain_timeout < 0:
        raise ValueError("--batch-window-ms and --drain-timeout: expected numbers >= 0")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    from ..errors import require

    for module, package in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("prometheus_client", "prometheus_client")):
        require(module, package=package, extra="serve", purpose="eager-kernels serve")
    import uvicorn

    from .app import State, create_app
    from .server import DrainingServer

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    log = logging.getLogger("eager_kernels.serve")
    t0 = time.perf_counter()
    engine, tok, name, ctx = load_engine(args)
    settings = Settings(model_name=args.served_model_name or name, policy=args.policy, max_paths=args.max_paths,
                        max_paths_limit=args.max_paths_limit, max_prompts=args.max_batch, context=ctx,
                        backend=args.backend, batch_invariant=args.batch_invariant)
    state = State()
    app = create_app(engine, tok, settings, api_key=args.api_key, max_queue=args.max_queue,
                     window_s=args.batch_window_ms / 1000, max_batch=args.max_batch,
                     max_batch_rows=args.max_batch_rows, state=state)
    invariant = getattr(engine, "batch_invariant", False)
    log.info("model %s (%s engine, context %s) loaded in %.1f s; batch-invariant responses: %s; requests share "
             "decode steps: %s", settings.model_name, getattr(engine, "name", "transformers"), ctx,
             time.perf_counter() - t0, "yes" if args.batch_invariant or invariant else "no",
             "yes" if invariant or not args.batch_invariant else "no (each request decodes alone)")
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=max(1, int(args.drain_timeout)))
    server = DrainingServer(config, state, args.drain_timeout)
    server.run()
    return 0
