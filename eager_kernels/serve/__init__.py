"""`eager-kernels serve`: an OpenAI-compatible HTTP server over any engine (docs/serving.md).

    eager-kernels serve [--engine auto|transformers|llamacpp|vllm] [--model DIR | --gguf FILE]
                        [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--max-queue N] ...

protocol.py checks requests and builds responses, worker.py runs them (each request joins
the running batch at the next decode step), app.py is the FastAPI layer, server.py the
uvicorn server that drains before it exits, cli.py the command line. Needs the `serve`
extra: pip install "eager-kernels[serve]" (fastapi, uvicorn, prometheus_client); this
package imports it only when create_app, State or DrainingServer is first used.
"""
from __future__ import annotations

from .cli import KV_LAYOUTS, build_parser, load_engine, main
from .protocol import APIError, Settings

__all__ = ["APIError", "DrainingServer", "KV_LAYOUTS", "Settings", "State", "build_parser", "create_app",
           "load_engine", "main"]


def __getattr__(name):
    """The names that need the `serve` extra, imported on first use."""
    if name in ("create_app", "State"):
        from . import app

        return getattr(app, name)
    if name == "DrainingServer":
        from .server import DrainingServer

        return DrainingServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
