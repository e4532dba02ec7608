"""The FastAPI application of `eager-kernels serve`: a thin HTTP layer over the batcher.

Endpoints: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health,
GET /metrics (Prometheus text); GET /openapi.json describes them, the request bodies as
protocol.parse checks them (protocol.py's schemas). Every error is {"error": {"message",
"type", "param", "code"}} with its HTTP status (400 bad request, 401 no or wrong API key,
404 unknown model or route, 405 another method (with Allow), 429 queue full with
Retry-After, 503 shutting down, 500 a failure of the call).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .worker import QueueFull, StepWorker
from .page import index_page
from .protocol import (ERROR_SCHEMA, APIError, Settings, build, chat_request_schema, completion_request_schema, parse,
                       response_schema, stream_chunks)

log = logging.getLogger("eager_kernels.serve")


class ServeMetrics:
    """The Prometheus series, in a registry of their own (several apps in one process stay apart)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("eager_serve_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.prompt_tokens = Counter("eager_serve_prompt_tokens", "prompt tokens of the answered requests",
                                     registry=r)
        self.generated_tokens = Counter("eager_serve_generated_tokens",
                                        "tokens generated on every path of the answered requests", registry=r)
        self.paths = Counter("eager_serve_paths", "paths explored for the answered requests", registry=r)
        self.branch_events = Counter("eager_serve_branch_events", "branch events of the answered requests",
                                     registry=r)
        self.dropped = Counter("eager_serve_dropped", "requests dropped because their client disconnected",
                               registry=r)
        self.queue_depth = Gauge("eager_serve_queue_depth", "requests waiting for the worker", registry=r)
        self.running = Gauge("eager_serve_running", "requests in the generate() call under way", registry=r)
        self.batch_requests = Histogram("eager_serve_batch_requests", "requests the worker took together",
                                        buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.batch_prompts = Histogram("eager_serve_batch_prompts", "prompts per generate() call",
                                       buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.batch_seconds = Histogram("eager_serve_batch_seconds", "seconds per generate() call", registry=r,
                                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.latency = Histogram("eager_serve_request_latency_seconds", "request latency (answered requests)",
                                 registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class State:
    """What the signal handler and the endpoints share."""

    def __init__(self):
        self.draining = False
        self.in_flight = 0
        self.lock = threading.Lock()


class Service:
    """What the endpoints do, FastAPI's routing aside: the API key check, a request's way
    through parse -> worker -> build, the metrics and the OpenAI error objects."""

    def __init__(self, batcher, tokenizer, settings: Settings, metrics: ServeMetrics, state: State, *, api_key=None,
                 poll_s: float = 0.1):
        self.batcher, self.tokenizer, self.settings = batcher, tokenizer, settings
        self.metrics, self.state, self.api_key, self.poll_s = metrics, state, api_key, poll_s

    def error(self, e: APIError, endpoint: str):
        self.metrics.requests.labels(endpoint, str(e.status)).inc()
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    def check_key(self, request: Request):
        if self.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        if auth != f"Bearer {self.api_key}":
            raise APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def wait(self, job, request: Request):
        """The job's results, or None when the client went away first (the job is then dropped)."""
        fut = asyncio.wrap_future(job.future)
        while True:
            done, _ = await asyncio.wait({fut}, timeout=self.poll_s)
            if done:
                return fut.result()
            if await request.is_disconnected():
                self.batcher.cancel(job)
                return None

    async def complete(self, request: Request, kind: str, endpoint: str):
        """A completions (kind "completion") or chat ("chat") request, answered; every failure
        an OpenAI error object (a bug of ours too: 500, and the server goes on)."""
        with self.state.lock:
            self.state.in_flight += 1
        try:
            return await self._answer(request, kind, endpoint)
        except APIError as e:
            return self.error(e, endpoint)
        except Exception as e:
            log.exception("request failed")
            return self.error(APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error",
                                       code="internal_error"), endpoint)
        finally:
            with self.state.lock:
                self.state.in_flight -= 1

    async def _answer(self, request: Request, kind: str, endpoint: str):
        if self.state.draining:
            raise APIError(503, "the server is shutting down", type="service_unavailable",
                           code="shutting_down", headers={"Retry-After": "5", "Connection": "close"})
        self.check_key(request)
        req = parse(await _json_body(request), kind, self.tokenizer, self.settings)
        t0 = time.perf_counter()
        try:
            job = self.batcher.submit(req)
        except QueueFull:
            raise APIError(429, f"the server's queue is full ({self.batcher.max_queue} requests waiting); retry "
                           "later", type="rate_limit_exceeded", code="queue_full", headers={"Retry-After": "1"})
        results = await self.wait(job, request)
        if results is None:
            self.metrics.requests.labels(endpoint, "499").inc()
            return Response(status_code=499)
        out = build(req, results, self.settings, self.tokenizer)
        self._count(out, time.perf_counter() - t0, endpoint)
        return _response(req, out)

    def _count(self, out: dict, seconds: float, endpoint: str):
        """The metrics of an answered request."""
        m, u, e = self.metrics, out["usage"], out["eager"]
        m.prompt_tokens.inc(u["prompt_tokens"])
        m.generated_tokens.inc(u["completion_tokens"])
        m.paths.inc(e["paths_explored"])
        m.branch_events.inc(e["branch_events"])
        m.latency.observe(seconds)
        m.requests.labels(endpoint, "200").inc()

    def models(self, request: Request):
        try:
            self.check_key(request)
        except APIError as e:
            return self.error(e, "/v1/models")
        self.metrics.requests.labels("/v1/models", "200").inc()
        s = self.settings
        return {"object": "list", "data": [{"id": s.model_name, "object": "model", "created": 0,
                                            "owned_by": "eager-kernels", "max_model_len": s.context}]}


async def _json_body(request: Request):
    raw = await request.body()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json")
    except RecursionError:  # [[[... thousands deep: Python's JSON reader gives up
        raise APIError(400, "the request body nests arrays or objects too deeply", code="invalid_json")


def _response(req, out: dict):
    """The response body as JSON, or as server-sent events when the request streams."""
    if not req.stream:
        return JSONResponse(out)
    chunks = stream_chunks(req, out)

    async def sse():
        for c in chunks:
            yield f"data: {json.dumps(c)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(sse(), media_type="text/event-stream")


def create_app(engine, tokenizer, settings: Settings, *, api_key=None, max_queue=64, window_s=0.01,
               max_batch=16, max_batch_rows=256, state: State = None, poll_s: float = 0.1):
    """The ASGI app serving `engine` (its worker thread starts now)."""
    metrics = ServeMetrics()
    state = state or State()
    # Requests join the running batch at the next decode step (worker.py): window_s and
    # max_batch, the batch window of earlier versions, are accepted and not used.
    batcher = StepWorker(engine, tokenizer, max_rows=max_batch_rows, max_queue=max_queue, metrics=metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.stop()  # after uvicorn's graceful shutdown: no request is left

    app = FastAPI(title="eager-kernels", description="EAGer entropy-aware generation, OpenAI-compatible",
                  lifespan=lifespan)
    app.state.batcher, app.state.metrics, app.state.serve = batcher, metrics, state
    service = Service(batcher, tokenizer, settings, metrics, state, api_key=api_key, poll_s=poll_s)
    _add_routes(app, service)
    _describe(app, service)
    return app


def _add_routes(app, service: Service):
    """The endpoints (the module's docstring), each a call of `service`."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):  # unknown routes and methods, OpenAI-style too (405 with its Allow)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return service.error(APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                      code=code, headers=getattr(exc, "headers", None)), "other")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await service.complete(request, "completion", "/v1/completions")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await service.complete(request, "chat", "/v1/chat/completions")

    @app.get("/v1/models", responses={401: _error_response("no or a wrong API key (--api-key)")})
    async def models(request: Request):
        return service.models(request)

    @app.get("/", response_class=HTMLResponse)
    async def index():  # the tree view's page: a prompt box that calls this server's API
        return HTMLResponse(index_page(service.settings))

    @app.get("/health", responses={503: {"description": "shutting down: {\"status\": \"draining\"}"}})
    async def health():
        if service.state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        return PlainTextResponse(service.metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")


ERRORS = {400: "a malformed request (the message and `param` say what)",
          401: "no or a wrong API key (--api-key)", 404: "another model than the served one",
          429: "the queue is full (--max-queue); Retry-After", 500: "the generation failed",
          503: "the server is shutting down; Retry-After"}


# One server-sent event (OpenAPI 3.1: the schema of text/event-stream describes each event)
SSE_EVENT = {"type": "object", "required": ["data"], "properties": {
    "data": {"type": "string", "description": "an OpenAI chunk as JSON; the last event: [DONE]"}}}


def _error_response(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}


def _describe(app, service: Service):
    """GET /openapi.json with the completions endpoints described: their request bodies
    (the endpoints read the raw body and protocol.parse checks it), their answers (JSON, or
    server-sent events with stream) and their OpenAI error objects. Written into FastAPI's
    document as they are: its own schema model reads every bound as a float, and a seed's
    2**63 - 1 would come out as 2**63."""
    from fastapi.openapi.utils import get_openapi

    s = service.settings
    vocab = getattr(service.batcher.engine, "vocab_size", None)
    vocab = vocab if isinstance(vocab, int) and not isinstance(vocab, bool) else None
    ops = {"/v1/completions": (completion_request_schema(s, vocab), response_schema("completion")),
           "/v1/chat/completions": (chat_request_schema(s), response_schema("chat"))}

    def openapi():
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, openapi_version=app.openapi_version,
                              description=app.description, routes=app.routes)
            for path, (body, answer) in ops.items():
                op = doc["paths"][path]["post"]
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
                ok = {"description": "the completion; server-sent events (OpenAI chunks, then [DONE]) with stream",
                      "content": {"application/json": {"schema": answer}, "text/event-stream": {"schema": SSE_EVENT}}}
                op["responses"] = {"200": ok, **{str(k): _error_response(d) for k, d in ERRORS.items()}}
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
