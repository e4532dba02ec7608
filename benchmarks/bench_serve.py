"""`eager-kernels serve` under load, against llama-cpp-python's own OpenAI server.

Both servers run on 127.0.0.1 on the same GGUF (default: SmolLM2-135M-Instruct, the
engine's default weight type) with the same CPU threads. A "request" is one chat prompt
answered with M paths:

- eager-kernels serve: one POST /v1/chat/completions with eager.max_paths = M (the paper
  policy); its generated tokens are usage.completion_tokens (every token on every path);
- the anchor, `python -m llama_cpp.server`: it drops `n` and serves one request at a time
  behind a lock, so M samples are M requests (sent together, seeds 0..M-1, temperature 0.6
  as the paper policy); the request's latency is until its M answers are in.

At each concurrency c (1, 4, 16) c clients send requests back to back; reported:
requests/s, generated tokens/s, p50 / p95 latency. Figures, not a test.

    python benchmarks/bench_serve.py                       # both servers, c = 1 4 16
    python benchmarks/bench_serve.py --only eager --variants "" "--no-batch-invariant --kv-layout unified"
    python benchmarks/bench_serve.py --only anchor

The anchor needs llama-cpp-python's server extra (fastapi, uvicorn, sse-starlette,
starlette-context, pydantic-settings): pip install "llama-cpp-python[server]".
Results are appended to benchmarks/results/serve.txt with the machine, date and command.
"""
from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Explain why the sky is blue.", "Write a short poem about the sea.", "What is 17 + 25? Think step by step.",
    "Give three tips for learning a language.", "Describe how a bicycle works.", "Why do cats purr?",
    "Summarise the story of Little Red Riding Hood.", "How do vaccines work?",
]


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "-"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body, timeout=600):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = json.loads(r.read())
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {data}")
        return data
    finally:
        c.close()


def wait_up(proc, port, path, timeout=300):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not start")


def start(kind, gguf, threads, options="", log=None):
    port = free_port()
    if kind == "eager":
        cmd = [sys.executable, "-m", "eager_kernels", "serve", "--port", str(port), "--threads", str(threads),
               "--log-level", "warning", "--max-queue", "256", *options.split()]
        if gguf:
            cmd += ["--gguf", gguf]
        health = "/health"
    else:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port", str(port),
               "--n_threads", str(threads), "--n_ctx", "2048", "--verbose", "False"]
        health = "/v1/models"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log or subprocess.DEVNULL, stderr=log or subprocess.DEVNULL)
    wait_up(proc, port, health)
    return proc, port


def one_request(kind, port, i, M, max_tokens, theta=None):
    """(latency s, generated tokens) of request i."""
    msgs = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
    t0 = time.perf_counter()
    if kind == "eager":
        r = post(port, "/v1/chat/completions", {"messages": msgs, "max_tokens": max_tokens, "seed": i,
                                                 "eager": {"max_paths": M, **({} if theta is None else
                                                                              {"theta": theta})}})
        tokens = r["usage"]["completion_tokens"]
    else:
        with ThreadPoolExecutor(M) as pool:
            rs = list(pool.map(lambda s: post(port, "/v1/chat/completions",
                                              {"messages": msgs, "max_tokens": max_tokens, "seed": s,
                                               "temperature": 0.6}), range(M)))
        tokens = sum(r["usage"]["completion_tokens"] for r in rs)
    return time.perf_counter() - t0, tokens


def run_level(kind, port, c, n_requests, M, max_tokens, theta):
    t0 = time.perf_counter()
    with ThreadPoolExecutor(c) as pool:
        res = list(pool.map(lambda i: one_request(kind, port, i, M, max_tokens, theta), range(n_requests)))
    wall = time.perf_counter() - t0
    lat = sorted(r[0] for r in res)
    tokens = sum(r[1] for r in res)
    p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]
    return {"c": c, "requests": n_requests, "wall_s": wall, "req_s": n_requests / wall, "tok_s": tokens / wall,
            "tokens": tokens, "p50_s": statistics.median(lat), "p95_s": p95}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["eager", "anchor"], default=None)
    ap.add_argument("--gguf", default=None, help="default: the default model's GGUF (models.default_gguf_path)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--paths", type=int, default=8, help="M, paths (samples) per request")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--theta", type=float, default=None,
                    help="eager.theta of the requests (default: the paper policy's 2.2; lower: trees nearer M paths)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=float, default=1.0, help="requests per level = max(2, this x c)")
    ap.add_argument("--variants", nargs="+", default=[""],
                    help="eager-kernels serve option strings, one server each (default: one with no "
                         "options); quote each, with a space inside ('--no-batch-invariant ') so that argparse "
                         "does not read it as an option")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/serve.txt"))
    args = ap.parse_args(argv)
    gguf = args.gguf
    if gguf is None:
        sys.path.insert(0, str(ROOT))
        from eager_kernels.engines.models import default_gguf_path

        gguf = str(default_gguf_path())
    runs = []
    if args.only in (None, "eager"):
        runs += [("eager", v) for v in args.variants]
    if args.only in (None, "anchor"):
        runs.append(("anchor", None))
    rows = []
    for kind, options in runs:
        proc, port = start(kind, gguf, args.threads, options or "")
        try:
            one_request(kind, port, 0, args.paths, 4)  # warm up
            for c in args.concurrency:
                n = max(2, int(round(args.requests * c)))
                r = run_level(kind, port, c, n, args.paths, args.max_tokens, args.theta)
                r["server"] = ("eager-kernels serve" + (f" {options}" if options else "") if kind == "eager"
                               else "llama_cpp.server (M requests)")
                rows.append(r)
                print(f"{r['server']:<42} c={c:<3} {r['req_s']:6.2f} req/s {r['tok_s']:7.1f} tok/s "
                      f"p50 {r['p50_s']:6.2f} s p95 {r['p95_s']:6.2f} s ({r['requests']} requests, "
                      f"{r['tokens']} tokens)", flush=True)
        finally:
            proc.terminate()
            proc.wait(60)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    versions = ", ".join(f"{d} {_version(d)}" for d in ("llama_cpp_python", "fastapi", "uvicorn", "torch"))
    head = (f"## {now}  {platform.node()}  {platform.processor() or platform.machine()}  "
            f"{os.cpu_count()} CPUs (load {load:.1f} at the end); {versions}\n"
            f"command: python benchmarks/bench_serve.py {shlex.join(argv if argv is not None else sys.argv[1:])}\n"
            f"GGUF {Path(gguf).name}, {args.threads} threads per server, M = {args.paths}, max_tokens = "
            f"{args.max_tokens}, eager.theta = {args.theta if args.theta is not None else 'the policy default'}\n\n")
    table = ("| server | concurrency | requests | requests/s | generated tokens/s | tokens/request | "
             "p50 latency (s) | p95 latency (s) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
    for r in rows:
        table += (f"| {r['server']} | {r['c']} | {r['requests']} | {r['req_s']:.2f} | {r['tok_s']:.1f} | "
                  f"{r['tokens'] / r['requests']:.0f} | "
                  f"{r['p50_s']:.2f} | {r['p95_s']:.2f} |\n")
    print("\n" + head + table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(head + table + "\n")


if __name__ == "__main__":
    main()
