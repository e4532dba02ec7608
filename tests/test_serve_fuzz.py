"""eager-kernels serve under bad input at scale: fuzzed from its own OpenAPI schema.

The server (tests/test_serve.py's Server: a subprocess on a free 127.0.0.1 port) runs with
small limits (FLAGS: M = 1 by default, at most 2; 2 prompts a request) so that the requests
the fuzz makes valid are cheap.

Fast: GET /openapi.json describes both request bodies with the server's own limits, and
agrees with the server on test_serve's good and bad bodies; inputs that were 500s (a lone
surrogate in a prompt, a non-finite theta, JSON nested thousands deep) get a 400; a
method the route does not take gets a 405 that names the one it does.
Slow: schemathesis (`st run`, a subprocess) fuzzes every operation from the schema
(examples, coverage and fuzzing phases, valid and invalid bodies, MAX_EXAMPLES each, a
per-request timeout): no 5xx, every error an OpenAI error object, responses as declared,
valid bodies accepted and invalid ones refused; then the server is alive and answers a
known request as before.

This file is also the hooks module of that `st run` (SCHEMATHESIS_HOOKS: the hooks at its
end, registered only there).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_serve import BAD, GOOD, MODEL, Server, _assert_error, _missing, _same

pytestmark = pytest.mark.skipif(bool(_missing), reason=f"eager-kernels serve tests need {', '.join(_missing)} "
                                "(pip install -e '.[serve,llamacpp]'; make installs them)")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_M, M_LIMIT, MAX_PROMPTS = 1, 2, 2
FLAGS = ("--max-paths", str(DEFAULT_M), "--max-paths-limit", str(M_LIMIT), "--max-batch", str(MAX_PROMPTS),
         "--max-queue", "8")
FUZZ_MAX_TOKENS = 4  # the valid requests of the fuzz: at most 4 tokens a path,
FUZZ_PROMPT = 64  # from prompts of at most 64 token ids or characters (the hooks' before_call)
MAX_EXAMPLES = int(os.environ.get("EAGER_FUZZ_EXAMPLES", "60"))  # per operation, in the fuzzing phase
SEED = int(os.environ.get("EAGER_FUZZ_SEED", "35"))
REQUEST_TIMEOUT_S, MAX_RESPONSE_S = 30, 20  # a hang; a response too slow
POSTS = {"/v1/completions": "prompt", "/v1/chat/completions": "messages"}
GOOD_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 3, "seed": 2}


@pytest.fixture(scope="module")
def server():
    s = Server(*FLAGS)
    yield s
    s.stop()


def _body_schema(doc: dict, path: str) -> dict:
    body = doc["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    return body["content"]["application/json"]["schema"]


def _validator(schema: dict):
    """A JSON Schema 2020-12 validator (jsonschema-rs comes with schemathesis, jsonschema
    with ray), or a skip."""
    if importlib.util.find_spec("jsonschema_rs") is not None:
        import jsonschema_rs

        return jsonschema_rs.Draft202012Validator(schema)
    if importlib.util.find_spec("jsonschema") is not None:
        import jsonschema

        return jsonschema.Draft202012Validator(schema)
    pytest.skip("no JSON Schema validator (pip install schemathesis)")


def test_the_schema_describes_the_request_bodies(server):
    from eager_kernels.serve.protocol import EAGER_FIELDS, MAX_STOP

    status, doc = server.get("/openapi.json")
    assert status == 200
    context = server.get("/v1/models")[1]["data"][0]["max_model_len"]
    for path, required in POSTS.items():
        body = _body_schema(doc, path)
        assert body["required"] == [required] and body["additionalProperties"] is True  # others ignored
        props = body["properties"]
        eager = props["eager"]["anyOf"][0]
        assert tuple(eager["properties"]) == EAGER_FIELDS and eager["additionalProperties"] is False
        bounds = {k: {b: eager["properties"][k]["anyOf"][0].get(b) for b in ("minimum", "maximum")}
                  for k in ("max_paths", "q", "entropy_top_k", "theta")}
        assert bounds == {"max_paths": {"minimum": 1, "maximum": M_LIMIT}, "q": {"minimum": 0, "maximum": 100},
                          "entropy_top_k": {"minimum": 1, "maximum": 64}, "theta": {"minimum": 0, "maximum": None}}
        assert eager["properties"]["budget"]["anyOf"][0]["enum"] == ["init", "adapt", "entropy"]
        assert props["max_tokens"]["anyOf"][0]["maximum"] == context - 1
        assert props["n"]["anyOf"][0]["maximum"] == M_LIMIT
        assert props["seed"]["anyOf"][0]["maximum"] == 2 ** 63 - 1  # an int, not FastAPI's float 2**63
        assert props["stop"]["anyOf"][1]["maxItems"] == MAX_STOP
        assert props["model"]["enum"] == [MODEL, "", None]
        responses = doc["paths"][path]["post"]["responses"]
        assert {"200", "400", "404", "429", "503"} <= set(responses)
        error = responses["400"]["content"]["application/json"]["schema"]
        assert error["properties"]["error"]["required"] == ["message", "type", "param", "code"]
    prompt = _body_schema(doc, "/v1/completions")["properties"]["prompt"]["anyOf"]
    assert prompt[2]["maxItems"] == MAX_PROMPTS and prompt[1]["items"]["maximum"] > 0  # the vocabulary


def test_the_schema_agrees_with_the_server(server):
    """test_serve's bodies: the good ones valid and answered, the bad ones invalid and refused."""
    doc = server.get("/openapi.json")[1]
    valid = {path: _validator(_body_schema(doc, path)) for path in POSTS}
    goods = [("/v1/completions", GOOD), ("/v1/chat/completions", GOOD_CHAT),
             ("/v1/completions", {**GOOD, "prompt": [[1, 2], "two"], "eager": {"max_paths": 2, "entropy_top_k": None},
                                  "n": 2, "max_tokens": None, "max_completion_tokens": 2, "top_p": 0.5}),
             ("/v1/chat/completions", {**GOOD_CHAT, "messages": [{"role": "developer", "content": ""},
                                                                 {"role": "user", "content": [{"type": "text",
                                                                                               "text": "hi"}]}],
                                       "stop": [], "stream": None, "user": "x"})]
    for path, body in goods:
        assert valid[path].is_valid(body), body
        assert server.post(path, body)[0] == 200, body
    bads = [(b, status) for b, status, _ in BAD if isinstance(b, dict)]
    bads += [({**GOOD, "max_tokens": 2, "max_completion_tokens": 0}, 200),  # read only without max_tokens
             ({"prompt": "hi", "max_completion_tokens": 0}, 400)]
    for body, status in bads:
        assert valid["/v1/completions"].is_valid(body) == (status == 200), body
        assert server.post("/v1/completions", body)[0] == status, body
    chat_bad = [{"messages": []}, {"messages": [{"role": "tool", "content": "x"}]},
                {"messages": [{"role": "user", "content": ""}, {"role": "user", "content": [{"type": "text",
                                                                                              "text": ""}]}]},
                {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
                {**GOOD_CHAT, "eager": {"return_tree": 1}}]
    for body in chat_bad:
        assert not valid["/v1/chat/completions"].is_valid(body), body
        _assert_error(*server.post("/v1/chat/completions", body), 400)


def test_inputs_that_were_500s_get_400(server):
    """What the fuzz and its follow-up probes found: each was a 500 (the last one failed
    the whole running batch, mid-step); the server answers as before after each."""
    good = server.post("/v1/completions", GOOD)[1]
    cases = [  # (raw body, path, param)
        (json.dumps({**GOOD, "prompt": "\ud800"}), "/v1/completions", "prompt"),  # a lone surrogate
        (json.dumps({**GOOD, "prompt": ["ok", "a\udc00"]}), "/v1/completions", "prompt"),
        (b"[" * 100_000 + b"]" * 100_000, "/v1/completions", None),  # RecursionError in json.loads
        (b'{"prompt": "hi", "eager": {"theta": 1e999}}', "/v1/completions", "eager.theta"),  # inf
        (b'{"prompt": "hi", "eager": {"theta": NaN}}', "/v1/completions", "eager.theta"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "eager": {"theta": Infinity}}', "/v1/chat/completions",
         "eager.theta"),
    ]
    for raw, path, param in cases:
        _assert_error(*server.post(path, raw), 400, param)
        s, again = server.post("/v1/completions", GOOD)
        assert s == 200 and _same(again) == _same(good), raw[:80]
    # a lone surrogate elsewhere was a 400 already: a chat message, eager.stop_branching_at
    _assert_error(*server.post("/v1/chat/completions", json.dumps({**GOOD_CHAT, "messages": [
        {"role": "user", "content": "\ud800"}]})), 400, "messages")
    _assert_error(*server.post("/v1/completions", json.dumps({**GOOD, "eager": {"stop_branching_at": "\ud800"}})),
                  400)


def test_another_method_gets_405_with_allow(server):
    status, headers, body = server.request("DELETE", "/v1/completions")
    _assert_error(status, body, 405)
    assert headers["allow"] == "POST"
    status, headers, body = server.request("POST", "/health")
    _assert_error(status, body, 405)
    assert headers["allow"] == "GET"


@pytest.mark.slow
def test_schemathesis_fuzz_finds_nothing(server, tmp_path):
    if importlib.util.find_spec("schemathesis") is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    before = [server.post("/v1/completions", GOOD), server.post("/v1/chat/completions", GOOD_CHAT)]
    assert [s for s, _ in before] == [200, 200]
    env = dict(os.environ, SCHEMATHESIS_HOOKS=str(Path(__file__).resolve()),
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"http://127.0.0.1:{server.port}/openapi.json",
           "--phases", "examples,coverage,fuzzing", "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
           "--workers", "1", "--request-timeout", str(REQUEST_TIMEOUT_S), "--max-response-time", str(MAX_RESPONSE_S),
           "--generation-database", "none",
           "--checks", "all", "--output-sanitize", "false", "--no-color",
           "--report", "har", "--report-har-path", str(tmp_path / "fuzz.har")]
    t0 = time.monotonic()
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540)
    took = time.monotonic() - t0
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-12000:]
    entries = json.loads((tmp_path / "fuzz.har").read_text())["log"]["entries"]
    statuses = [e["response"]["status"] for e in entries]
    assert len(entries) >= 300 and all(s < 500 for s in statuses), (len(entries), sorted(set(statuses)))
    assert statuses.count(200) >= 50 and statuses.count(400) >= 50, sorted(set(statuses))
    for e in entries:
        if e["response"]["status"] >= 400:
            _assert_error(e["response"]["status"], json.loads(e["response"]["content"]["text"]),
                          e["response"]["status"])
    print(f"schemathesis: {len(entries)} requests in {took:.0f} s, statuses "
          f"{ {s: statuses.count(s) for s in sorted(set(statuses))} }")
    # the server is alive and answers as before
    assert server.get("/health") == (200, {"status": "ok"})
    after = [server.post("/v1/completions", GOOD), server.post("/v1/chat/completions", GOOD_CHAT)]
    assert [(s, _same(b)) for s, b in after] == [(s, _same(b)) for s, b in before]
    assert server.metric("eager_serve_queue_depth") == 0 and server.metric("eager_serve_running") == 0


# ---- the hooks of the `st run` above (this file is its SCHEMATHESIS_HOOKS module) -------------
#
# - before_call: a valid body (generation mode positive) is sent with max_tokens at most
#   FUZZ_MAX_TOKENS (the one the server reads: max_tokens, else max_completion_tokens; set
#   where neither is) and its prompts and message texts cut to FUZZ_PROMPT token ids or
#   characters (the schema allows 8191 token ids: a prefill of 30 s and more on one thread),
#   so that valid requests stay cheap and valid; invalid bodies go as generated.
# - filter_failure: "schema-valid request rejected" (positive_data_acceptance) is dropped for
#   what the schema cannot say (protocol.py lists it), each checked on the body: n above the
#   request's max_paths, budget adapt/entropy at temperature 0, an integer written as 95.0
#   (JSON Schema's integer includes it, the server reads a float). Any other 400 to a valid
#   body stays a failure (the context cannot run out: prompts are cut, max_tokens is small).
# - openai_error: every 4xx and 5xx is an OpenAI error object.


def _cheap(body: dict) -> None:
    """A valid `body` made cheap to answer, and still valid (the hooks' before_call)."""
    name = "max_tokens" if body.get("max_tokens") is not None or body.get("max_completion_tokens") is None \
        else "max_completion_tokens"
    v = body.get(name)
    body[name] = min(v, FUZZ_MAX_TOKENS) if isinstance(v, int) and not isinstance(v, bool) else FUZZ_MAX_TOKENS
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        body["prompt"] = [p[:FUZZ_PROMPT] for p in prompt]
    elif isinstance(prompt, (str, list)):
        body["prompt"] = prompt[:FUZZ_PROMPT]
    for m in body.get("messages") or []:
        if isinstance(m.get("content"), str):
            m["content"] = m["content"][:FUZZ_PROMPT]
        for part in m.get("content") if isinstance(m.get("content"), list) else []:
            part["text"] = part["text"][:FUZZ_PROMPT]


def _integral_float(value) -> bool:
    if isinstance(value, list):
        return any(_integral_float(v) for v in value)
    return isinstance(value, float) and value.is_integer()


def _unsayable(body, error: dict) -> bool:
    """Whether `error` (a 400's) is one of the rules the schema cannot say, true of `body`."""
    if not isinstance(body, dict):
        return False
    field = body
    for name in (error["param"] or "").split("."):
        field = field.get(name) if isinstance(field, dict) else None
    if _integral_float(field):  # (in a prompt: parse() takes the list for a list of prompts)
        return True
    eager = body.get("eager") if isinstance(body.get("eager"), dict) else {}
    m = eager.get("max_paths") if eager.get("max_paths") is not None else DEFAULT_M
    if error["param"] == "n":
        return isinstance(body.get("n"), int) and body["n"] > m
    if error["param"] == "eager.budget":
        return eager.get("budget") in ("adapt", "entropy") and body.get("temperature") == 0
    return False


if __name__ == "_schemathesis_hooks":  # loaded by schemathesis from SCHEMATHESIS_HOOKS
    import schemathesis

    @schemathesis.hook
    def before_call(context, case, kwargs):
        meta = case.meta
        if meta is not None and meta.generation.mode.is_positive and isinstance(case.body, dict):
            _cheap(case.body)

    @schemathesis.hook
    def filter_failure(context, failure, case, response):
        if getattr(failure, "code", None) != "ST202" or response.status_code != 400:
            return True
        try:
            error = json.loads(response.content)["error"]
        except (ValueError, KeyError, TypeError):
            return True
        return not _unsayable(case.body, error)

    @schemathesis.check
    def openai_error(ctx, response, case):
        if response.status_code < 400:
            return None
        body = json.loads(response.content)
        assert isinstance(body, dict) and set(body) == {"error"}, f"not an OpenAI error object: {body!r}"
        err = body["error"]
        assert set(err) == {"message", "type", "param", "code"}, f"not an OpenAI error object: {body!r}"
        assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str), body
        assert all(err[k] is None or isinstance(err[k], str) for k in ("param", "code")), body
        return None
