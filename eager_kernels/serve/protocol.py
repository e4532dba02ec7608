"""The OpenAI request and response shapes of `eager-kernels serve`, checked at the edge.

A request body is parsed by hand (not by pydantic models) so that every mistake becomes an
OpenAI-style error object with HTTP 400 and the name of the field at fault:
{"error": {"message", "type", "param", "code"}}. What is checked here needs only the
tokenizer and the server's limits; the worker (worker.py) never sees a malformed request.
"""
from __future__ import annotations

import math
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Optional

from ..engines.base import chat_token_ids
from ..errors import ConfigError
from ..sampler import EagerConfig
from ..sampler.keys import mix_int
from ..sampler.options import OPTIONS, default
from ..viz import path_view

# The fields of the `eager` extension object (docs/serving.md): the EAGer settings, each with
# the EagerConfig field it sets (sampler/options.py: their choices and defaults), then what
# the response carries.
EAGER_SETTINGS = {"policy": "policy", "max_paths": "max_paths_per_prompt", "theta": "theta", "q": "q",
                  "entropy_top_k": "entropy_top_k", "budget": "budget", "stop_branching_at": "stop_branching_at"}
RESPONSE_FIELDS = ("return_tree", "return_entropies")
EAGER_FIELDS = (*EAGER_SETTINGS, *RESPONSE_FIELDS)
# The request field that sets each EagerConfig field: the `param` of an error EagerConfig
# raises about it (ConfigError.field).
CONFIG_PARAMS = {**{f: f"eager.{name}" for name, f in EAGER_SETTINGS.items()}, "initial_threshold": "eager.theta",
                 "max_new_tokens": "max_tokens", "temperature": "temperature"}
MAX_STOP = 4  # as OpenAI: up to 4 stop sequences
ROLES = ("system", "developer", "user", "assistant")  # of a chat message ("developer": a system message)
_INT64 = (-(1 << 63), (1 << 63) - 1)


class APIError(Exception):
    """An error a client sees as {"error": {...}} with `status`."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: Optional[str] = None, code: Optional[str] = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass
class Settings:
    """What the server allows and assumes (the `serve` command's options)."""

    model_name: str = "eager-kernels"
    policy: str = default("policy")
    max_paths: int = 8  # M when a request gives none
    max_paths_limit: int = 32  # the most a request may ask for
    max_prompts: int = 16  # prompts in one completions request
    context: Optional[int] = None  # prompt + max_tokens must fit (None: unchecked here)
    default_max_tokens: int = 16  # completions, as OpenAI
    default_chat_max_tokens: int = 256  # chat (at most the room left in the context)
    backend: str = default("backend")
    batch_invariant: bool = True


@dataclass
class Parsed:
    """A checked request: what the worker runs and what the response needs."""

    kind: str  # "completion" or "chat"
    prompts: list  # token-id lists
    config: EagerConfig  # seed 0: the request's randomness is its prompt keys
    keys: list  # one per prompt, from the request's seed
    seed: int
    n: int
    stop: list
    stream: bool
    include_usage: bool
    return_tree: bool
    return_entropies: bool
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(body, name, lo=None, hi=None, param=None):
    v = body[name]
    param = param or name
    if not _is_int(v):
        raise bad(f"{param}: expected an integer, got {type(v).__name__} {v!r}", param, "invalid_type")
    if lo is not None and v < lo:
        raise bad(f"{param}: expected an integer >= {lo}, got {v}", param)
    if hi is not None and v > hi:
        raise bad(f"{param}: expected an integer <= {hi}, got {v}", param)
    return v


def _num(body, name, lo=None, hi=None, param=None):
    v = body[name]
    param = param or name
    if not _is_num(v):
        raise bad(f"{param}: expected a number, got {type(v).__name__} {v!r}", param, "invalid_type")
    if not math.isfinite(v):  # 1e999 (JSON reads it as inf), NaN, Infinity: the kernels refuse them mid-batch
        raise bad(f"{param}: expected a finite number, got {v}", param)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise bad(f"{param}: expected a number in [{lo}, {hi}], got {v}", param)
    return float(v)


def _bool(body, name, param=None):
    v = body[name]
    if not isinstance(v, bool):
        raise bad(f"{param or name}: expected true or false, got {v!r}", param or name, "invalid_type")
    return v


def _prompts(body, tokenizer, settings: Settings) -> list:
    """The `prompt` of a completions request as token-id lists: a string, a list of strings,
    a list of token ids or a list of such lists (OpenAI's four forms); never empty."""
    if "prompt" not in body or body["prompt"] is None:
        raise bad("prompt: required", "prompt", "missing_required_parameter")
    p = body["prompt"]
    if isinstance(p, str):
        items = [p]
    elif isinstance(p, list) and p and all(_is_int(t) for t in p):
        items = [p]
    elif isinstance(p, list):
        items = p
    else:
        raise bad(f"prompt: expected a string, a list of strings or of token ids, got {type(p).__name__}",
                  "prompt", "invalid_type")
    if not items:
        raise bad("prompt: empty list", "prompt", "empty_prompt")
    if len(items) > settings.max_prompts:
        raise bad(f"prompt: at most {settings.max_prompts} prompts per request, got {len(items)}", "prompt")
    out = []
    for it in items:
        if isinstance(it, str):
            if not it:
                raise bad("prompt: empty string", "prompt", "empty_prompt")
            try:
                ids = [int(t) for t in tokenizer(it)["input_ids"]]
            except UnicodeError as e:  # a lone surrogate ("\ud800" in the JSON): no UTF-8 encodes it
                raise bad(f"prompt: {e}", "prompt")
        elif isinstance(it, list) and all(_is_int(t) for t in it):
            ids = list(it)
        else:
            raise bad("prompt: expected strings or lists of token ids", "prompt", "invalid_type")
        if not ids:
            raise bad("prompt: no tokens", "prompt", "empty_prompt")
        out.append(ids)
    return out


def _content(m, i) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in c:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise bad(f"messages[{i}].content: only text parts are supported", f"messages[{i}].content",
                          "invalid_type")
            parts.append(part["text"])
        return "".join(parts)
    raise bad(f"messages[{i}].content: expected a string or a list of text parts", f"messages[{i}].content",
              "invalid_type")


def _chat_prompt(body, tokenizer) -> list:
    if "messages" not in body or body["messages"] is None:
        raise bad("messages: required", "messages", "missing_required_parameter")
    msgs = body["messages"]
    if not isinstance(msgs, list):
        raise bad(f"messages: expected a list, got {type(msgs).__name__}", "messages", "invalid_type")
    if not msgs:
        raise bad("messages: empty list", "messages", "empty_prompt")
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}]: expected an object", f"messages[{i}]", "invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"messages[{i}].role: expected system, developer, user or assistant, got {role!r}",
                      f"messages[{i}].role")
        clean.append({"role": "system" if role == "developer" else role, "content": _content(m, i)})
    if not any(m["content"] for m in clean):
        raise bad("messages: every content is empty", "messages", "empty_prompt")
    if not getattr(tokenizer, "chat_template", None):
        raise bad("this model has no chat template: use /v1/completions", "messages", "no_chat_template")
    try:
        ids = chat_token_ids(tokenizer, clean)
    except ValueError as e:
        raise bad(f"messages: {e}", "messages")
    return [ids]


def _eager(body, settings: Settings) -> dict:
    e = body.get("eager")
    if e is None:
        return {}
    if not isinstance(e, dict):
        raise bad(f"eager: expected an object, got {type(e).__name__}", "eager", "invalid_type")
    unknown = [k for k in e if k not in EAGER_FIELDS]
    if unknown:
        raise bad(f"eager.{unknown[0]}: unknown field (known: {', '.join(EAGER_FIELDS)})", f"eager.{unknown[0]}",
                  "unknown_parameter")
    out = {}
    if e.get("policy") is not None:
        policies = OPTIONS["policy"].choices
        if e["policy"] not in policies:
            raise bad(f"eager.policy: expected one of {', '.join(policies)}, got {e['policy']!r}", "eager.policy")
        out["policy"] = e["policy"]
    if e.get("max_paths") is not None:
        out["max_paths"] = _int(e, "max_paths", 1, settings.max_paths_limit, "eager.max_paths")
    if e.get("theta") is not None:
        out["theta"] = _num(e, "theta", 0, None, "eager.theta")
    if e.get("q") is not None:
        out["q"] = _num(e, "q", 0, 100, "eager.q")
    if "entropy_top_k" in e:  # null = the full-vocabulary entropy
        out["entropy_top_k"] = None if e["entropy_top_k"] is None else _int(e, "entropy_top_k", 1, 64,
                                                                             "eager.entropy_top_k")
    if e.get("budget") is not None:
        modes = OPTIONS["budget"].choices  # not full EAGer: it needs a verifier
        if e["budget"] not in modes:
            raise bad(f"eager.budget: expected one of {', '.join(modes)}, got {e['budget']!r}", "eager.budget")
        out["budget"] = e["budget"]
    if e.get("stop_branching_at") is not None:
        s = e["stop_branching_at"]
        if not (isinstance(s, str) and s):
            raise bad("eager.stop_branching_at: expected a non-empty string", "eager.stop_branching_at",
                      "invalid_type")
        out["stop_branching_at"] = s
    for flag in ("return_tree", "return_entropies"):
        if e.get(flag) is not None:
            out[flag] = _bool(e, flag, f"eager.{flag}")
    return out


def request_key(seed: int, index: int) -> int:
    """The prompt key of prompt `index` of a request with `seed` (keys.py's SplitMix64)."""
    return mix_int(seed, index)


def parse(body, kind: str, tokenizer, settings: Settings) -> Parsed:
    """Check a decoded JSON body of /v1/completions (kind "completion") or
    /v1/chat/completions ("chat"); raise APIError on the first mistake."""
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, got {type(body).__name__}", None, "invalid_type")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("model: expected a string", "model", "invalid_type")
    if model and model != settings.model_name:
        raise APIError(404, f"The model '{model}' does not exist (this server serves '{settings.model_name}')",
                       param="model", code="model_not_found")
    prompts = _prompts(body, tokenizer, settings) if kind == "completion" else _chat_prompt(body, tokenizer)
    ext = _eager(body, settings)
    policy = ext.get("policy", settings.policy)
    M = ext.get("max_paths", settings.max_paths)
    n = _int(body, "n", 1) if body.get("n") is not None else 1
    if n > M:
        raise bad(f"n: at most max_paths = {M} paths are explored per prompt, got n = {n} (raise eager.max_paths, "
                  f"up to {settings.max_paths_limit})", "n")
    longest = max(len(p) for p in prompts)
    room = settings.context - longest if settings.context else None
    if room is not None and room < 1:
        raise bad(f"the prompt takes {longest} tokens, the whole context ({settings.context})", "prompt",
                  "context_length_exceeded")
    if body.get("max_tokens") is not None or body.get("max_completion_tokens") is not None:
        name = "max_tokens" if body.get("max_tokens") is not None else "max_completion_tokens"
        max_tokens = _int(body, name, 1)
        if room is not None and max_tokens > room:
            raise bad(f"{name}: the prompt ({longest} tokens) plus {name} ({max_tokens}) exceed the model's "
                      f"context of {settings.context} tokens", name, "context_length_exceeded")
    elif kind == "completion":
        max_tokens = settings.default_max_tokens if room is None else min(settings.default_max_tokens, room)
    else:
        max_tokens = settings.default_chat_max_tokens if room is None else min(settings.default_chat_max_tokens,
                                                                                room)
    temperature = _num(body, "temperature", 0, 2) if body.get("temperature") is not None else None
    if body.get("seed") is not None:
        seed = _int(body, "seed", *_INT64)
    else:  # no seed: a fresh draw, like any OpenAI server
        seed = secrets.randbits(63)
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)):
        raise bad("stop: expected a non-empty string or a list of them", "stop", "invalid_type")
    if len(stop) > MAX_STOP:
        raise bad(f"stop: at most {MAX_STOP} sequences", "stop")
    stream = _bool(body, "stream") if body.get("stream") is not None else False
    so = body.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise bad("stream_options: expected an object", "stream_options", "invalid_type")
    include_usage = bool(so and so.get("include_usage"))

    overrides = dict(max_new_tokens=max_tokens, max_paths_per_prompt=M, seed=0, backend=settings.backend,
                     batch_invariant=settings.batch_invariant)
    if temperature is not None:
        overrides["temperature"] = temperature
    for k, f in EAGER_SETTINGS.items():
        if k in ext and k not in ("policy", "max_paths"):  # those two: above
            overrides[f] = ext[k]
    if "theta" in ext:  # the threshold before any history is the floor too
        overrides["initial_threshold"] = ext["theta"]
    if ext.get("budget", "init") != "init" and temperature == 0:
        raise bad("eager.budget: extra trees need sampling (temperature > 0)", "eager.budget")
    try:
        cfg = EagerConfig(policy=policy, **overrides)
    except ConfigError as e:
        raise bad(f"eager: {e}", CONFIG_PARAMS.get(e.field, f"eager.{e.field}"))
    return Parsed(kind=kind, prompts=prompts, config=cfg, keys=[request_key(seed, i) for i in range(len(prompts))],
                  seed=seed, n=n, stop=stop, stream=stream, include_usage=include_usage,
                  return_tree=ext.get("return_tree", False), return_entropies=ext.get("return_entropies", False))


# ---------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------


def _cut(text: str, stop: list):
    """(text up to the first stop sequence, whether one was found)."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def tokens_generated(paths) -> int:
    """Tokens generated for one prompt: every token on every path, a prefix shared by
    paths of one tree counted once (a child repeats its parent's tokens up to the fork)."""
    seen = set()
    for p in paths:
        ids = tuple(p.token_ids)
        for j in range(1, len(ids) + 1):
            seen.add((p.stage, ids[:j]))
    return len(seen)


def _finish(path, stopped: bool) -> str:
    return "stop" if stopped or path.finished == "eos" else "length"


def build(req: Parsed, results: list, settings: Settings, tokenizer=None) -> dict:
    """The response body for `results` (one PromptResult per prompt of the request):
    choices = the n best paths per prompt by score (the answer first), usage, eager. With
    eager.return_tree, eager.tree lists every explored path as the tree view draws it
    (viz.path_view: per-token text, entropy, threshold and log-probability, decoded with
    `tokenizer`)."""
    choices, info, tree = [], [], []
    completion_tokens = explored = events = 0
    for i, r in enumerate(results):
        ranked = sorted(r.paths, key=lambda p: -p.score)  # stable: ties keep the sampler's order
        explored += len(r.paths)
        events += r.branch_events
        completion_tokens += tokens_generated(r.paths)
        for j, p in enumerate(ranked[:req.n]):
            text, stopped = _cut(p.text or "", req.stop)
            index = i * req.n + j
            fin = _finish(p, stopped)
            if req.kind == "chat":
                choices.append({"index": index, "message": {"role": "assistant", "content": text},
                                "logprobs": None, "finish_reason": fin})
            else:
                choices.append({"index": index, "text": text, "logprobs": None, "finish_reason": fin})
            d = {"index": index, "prompt_index": i, "branch_positions": list(p.branch_steps),
                 "logprob": p.logprob, "score": p.score, "tokens": p.num_tokens, "stage": p.stage}
            if req.return_entropies:
                d["entropies"] = list(p.entropies)
            info.append(d)
        if req.return_tree:
            for j, p in enumerate(r.paths):
                tree.append({**path_view(p, tokenizer, j), "prompt_index": i, "text": p.text,
                             "branch_positions": list(p.branch_steps), "finish_reason": _finish(p, False)})
    prompt_tokens = sum(len(p) for p in req.prompts)
    cfg = req.config
    eager = {"policy": cfg.policy, "max_paths": cfg.max_paths_per_prompt, "seed": req.seed,
             "paths_explored": explored, "branch_events": events, "choices": info}
    if req.return_tree:
        eager["tree"] = tree
    return {"id": ("chatcmpl-" if req.kind == "chat" else "cmpl-") + req.id,
            "object": "chat.completion" if req.kind == "chat" else "text_completion",
            "created": req.created, "model": settings.model_name, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "eager": eager}


def stream_chunks(req: Parsed, body: dict) -> list:
    """The finished response as OpenAI server-sent-event chunks (without `data: ` and the
    final [DONE]): per returned path, its text then its finish reason; the `eager` field on
    the last chunk that carries a choice; a usage chunk (choices []) when
    stream_options.include_usage."""
    chat = req.kind == "chat"
    obj = "chat.completion.chunk" if chat else "text_completion"
    base = {"id": body["id"], "object": obj, "created": body["created"], "model": body["model"]}
    chunks = []
    for c in body["choices"]:
        if chat:
            text = c["message"]["content"]
            chunks.append({**base, "choices": [{"index": c["index"], "delta": {"role": "assistant", "content": ""},
                                                "logprobs": None, "finish_reason": None}]})
            chunks.append({**base, "choices": [{"index": c["index"], "delta": {"content": text},
                                                "logprobs": None, "finish_reason": None}]})
            chunks.append({**base, "choices": [{"index": c["index"], "delta": {}, "logprobs": None,
                                                "finish_reason": c["finish_reason"]}]})
        else:
            chunks.append({**base, "choices": [{"index": c["index"], "text": c["text"], "logprobs": None,
                                                "finish_reason": None}]})
            chunks.append({**base, "choices": [{"index": c["index"], "text": "", "logprobs": None,
                                                "finish_reason": c["finish_reason"]}]})
    if chunks:
        chunks[-1]["eager"] = body["eager"]
    if req.include_usage:
        chunks.append({**base, "choices": [], "usage": body["usage"]})
    return chunks


# ---------------------------------------------------------------------------------------
# The OpenAPI description (GET /openapi.json)
# ---------------------------------------------------------------------------------------
# JSON Schemas of what parse() accepts, for the server's OpenAPI document: a description,
# not a second check (parse() stays the check, and its errors the OpenAI error objects). A
# null field is a field left out, other OpenAI fields are accepted and ignored, an unknown
# `eager` field is refused. What no schema here says, parse() and the worker still answer
# with a 400: n above the request's max_paths (`param` n), a prompt that with max_tokens
# passes the context (code context_length_exceeded), a budget stage other than init at
# temperature 0, a text that is not valid Unicode (a lone surrogate), a number beyond a
# float's range (1e999), an integer written with a fraction (2.0: an integer to JSON Schema,
# a float to parse()); and a `model` other than the served one gets a 404.


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


def _bounded(kind: str, lo=None, hi=None, description: Optional[str] = None) -> dict:
    s = {"type": kind}
    if lo is not None:
        s["minimum"] = lo
    if hi is not None:
        s["maximum"] = hi
    if description:
        s["description"] = description
    return s


def eager_schema(settings: Settings) -> dict:
    """The `eager` extension object: every field optional, no other field."""
    props = {
        "policy": {"type": "string", "enum": list(OPTIONS["policy"].choices),
                   "description": f"default {settings.policy} (--policy)"},
        "max_paths": _bounded("integer", 1, settings.max_paths_limit,
                              f"M, the most paths per prompt; default {settings.max_paths}"),
        "theta": _bounded("number", 0, None, "the threshold's floor, in nats"),
        "q": _bounded("number", 0, 100, "the percentile of the entropy history"),
        "entropy_top_k": _bounded("integer", 1, 64, "K of the top-K entropy; null: the full vocabulary"),
        "budget": {"type": "string", "enum": list(OPTIONS["budget"].choices)},
        "stop_branching_at": {"type": "string", "minLength": 1},
        "return_tree": {"type": "boolean"},
        "return_entropies": {"type": "boolean"},
    }
    return _nullable({"type": "object", "properties": {k: _nullable(props[k]) for k in EAGER_FIELDS},
                      "additionalProperties": False, "description": "the EAGer extension (docs/serving.md)"})


def _common_fields(settings: Settings, max_tokens: dict) -> dict:
    """The request fields of both endpoints."""
    return {
        "model": {"enum": [settings.model_name, "", None],
                  "description": "the served model (another name: 404 model_not_found); may be left out"},
        "max_tokens": _nullable(max_tokens),
        # read only where max_tokens is left out or null (the `if` of the body's schema)
        "max_completion_tokens": {"description": "max_tokens' other name, read when max_tokens is left out"},
        "temperature": _nullable(_bounded("number", 0, 2)),
        "n": _nullable(_bounded("integer", 1, settings.max_paths_limit,
                                "paths returned per prompt, at most the request's max_paths")),
        "seed": _nullable(_bounded("integer", *_INT64)),
        "stop": {"anyOf": [{"type": "string", "minLength": 1},
                           {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": MAX_STOP},
                           {"type": "null"}]},
        "stream": _nullable({"type": "boolean"}),
        "stream_options": _nullable({"type": "object", "properties": {
            "include_usage": {"description": "any true value: a last chunk with the usage"}}}),
        "eager": eager_schema(settings),
    }


def _body(settings: Settings, required: str, field_schema: dict) -> dict:
    lo_hi = (1, settings.context - 1 if settings.context else None)
    max_tokens = _bounded("integer", *lo_hi, "the most tokens of one path; prompt + it within the context")
    return {"type": "object", "required": [required],
            "properties": {required: field_schema, **_common_fields(settings, max_tokens)},
            "additionalProperties": True,
            "if": {"properties": {"max_tokens": {"type": "null"}}},
            "then": {"properties": {"max_completion_tokens": _nullable(max_tokens)}}}


def completion_request_schema(settings: Settings, vocab_size: Optional[int] = None) -> dict:
    """The body of POST /v1/completions; `vocab_size`: token ids below it (None: unbounded)."""
    ids = {"type": "integer", "minimum": 0}
    if vocab_size:
        ids["maximum"] = vocab_size - 1
    tokens = {"type": "array", "items": ids, "minItems": 1}
    if settings.context:
        tokens["maxItems"] = settings.context - 1
    text = {"type": "string", "minLength": 1}
    prompt = {"anyOf": [text, tokens, {"type": "array", "items": {"anyOf": [text, tokens]}, "minItems": 1,
                                        "maxItems": settings.max_prompts}],
              "description": f"a string, token ids, or a list of up to {settings.max_prompts} of either"}
    return _body(settings, "prompt", prompt)


def chat_request_schema(settings: Settings) -> dict:
    """The body of POST /v1/chat/completions."""
    part = {"type": "object", "required": ["type", "text"],
            "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}
    content = {"anyOf": [{"type": "string"}, {"type": "array", "items": part}]}
    message = {"type": "object", "required": ["role", "content"],
               "properties": {"role": {"enum": list(ROLES)}, "content": content}}
    said = {"anyOf": [{"type": "string", "minLength": 1},
                      {"type": "array", "contains": {"properties": {"text": {"minLength": 1}}}}]}
    messages = {"type": "array", "items": message, "minItems": 1,
                "contains": {"properties": {"content": said}},
                "description": "rendered with the model's chat template; some content not empty"}
    return _body(settings, "messages", messages)


ERROR_SCHEMA = {
    "type": "object", "required": ["error"], "additionalProperties": False,
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"], "additionalProperties": False,
        "properties": {"message": {"type": "string", "minLength": 1}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
    "description": "an OpenAI error object"}


def response_schema(kind: str) -> dict:
    """The JSON body of a 200 of /v1/completions ("completion") or /v1/chat/completions ("chat")."""
    count = {"type": "integer", "minimum": 0}
    said = {"message": {"type": "object", "required": ["role", "content"],
                        "properties": {"role": {"const": "assistant"}, "content": {"type": "string"}}}} \
        if kind == "chat" else {"text": {"type": "string"}}
    choice = {"type": "object", "required": ["index", *said, "logprobs", "finish_reason"],
              "properties": {"index": count, **said, "finish_reason": {"enum": ["stop", "length"]}}}
    path = {"type": "object", "required": ["index", "prompt_index", "branch_positions", "logprob", "score", "tokens",
                                           "stage"],
            "properties": {"index": count, "prompt_index": count, "tokens": count, "stage": {"type": "string"},
                           "branch_positions": {"type": "array", "items": count}}}
    eager = {"type": "object", "required": ["policy", "max_paths", "seed", "paths_explored", "branch_events",
                                            "choices"],
             "properties": {"policy": {"type": "string"}, "max_paths": count, "seed": {"type": "integer"},
                            "paths_explored": count, "branch_events": count,
                            "choices": {"type": "array", "items": path}, "tree": {"type": "array"}}}
    usage = {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
             "properties": {"prompt_tokens": count, "completion_tokens": count, "total_tokens": count}}
    return {"type": "object", "required": ["id", "object", "created", "model", "choices", "usage", "eager"],
            "properties": {"id": {"type": "string"},
                           "object": {"const": "chat.completion" if kind == "chat" else "text_completion"},
                           "created": {"type": "integer"}, "model": {"type": "string"},
                           "choices": {"type": "array", "items": choice}, "usage": usage, "eager": eager}}
