"""`eager-kernels serve` under load, against llama.cpp's own server and llama-cpp-python's.

Every server runs on 127.0.0.1 on the same GGUF (default: SmolLM2-135M-Instruct, the
engine's default weight type) with the same CPU threads. A "request" is one chat prompt
answered with M paths:

- eager-kernels serve: one POST /v1/chat/completions with eager.max_paths = M (the paper
  policy); its generated tokens are usage.completion_tokens (every token on every path).
  `--eager-root DIR` runs each variant a second time from another checkout of the project
  (the server subprocess runs in DIR with PYTHONPATH=DIR), so that two versions of the
  server are measured in the same run with the same settings.
- `--anchor llama-server`: llama.cpp's server, built by this script from the llama.cpp
  source vendored in llama-cpp-python's sdist (same version as the installed package, the
  CPU flags of eager_kernels/engines/llamacpp_build.py; cached under
  ~/.cache/eager-kernels/llama-server/<hash>; a few minutes on 2 cores the first time),
  run with --parallel 16 --cont-batching: a request is one POST with n = M (its n_cmpl:
  the prompt is evaluated once, the M samples decode in M slots, seeds seed..seed+M-1).
  Its usage counts the first sample only, so its generated tokens are read from its
  /metrics (llamacpp:tokens_predicted_total) before and after each level.
- `--anchor llama-cpp-server`: `python -m llama_cpp.server`, which drops `n` and serves
  one request at a time behind a lock, so M samples are M requests sent together; its
  server extra (sse-starlette, starlette-context, pydantic-settings, python-dotenv) is
  installed by this script into ~/.cache/eager-kernels/llama-cpp-server-extra (not into
  the environment) when the environment lacks it.

The anchors sample at temperature 0.6 (the paper policy's) with their servers' other
sampling defaults; a request's latency is until its M answers are in.

Loads, for every server: closed loop at each concurrency c (--concurrency, default 1 4
16): c clients send requests back to back, max(2, --requests x c) requests in all; open
loop at each rate (--rates, requests/s): --rate-requests requests arrive as a Poisson
process (the same seeded arrival times for every server), none after --rate-time-limit
seconds; the latency counts from the arrival. Reported per level: requests/s and generated
tokens/s (from the first arrival to the last answer), tokens per request, p50 / p95
latency, the 1-minute load average before and after. --rounds N repeats the whole set,
alternating the servers (every odd round in reverse order); with N > 1 a table of the
medians over rounds follows. Figures, not a test.

    python benchmarks/bench_serve.py                       # eager-kernels serve + llama-server, c = 1 4 16
    python benchmarks/bench_serve.py --concurrency 16 --rates 0.5 1 2 --variants '' '--no-batch-invariant ' \\
        --eager-root ../other-checkout --anchor llama-server --rounds 2
    python benchmarks/bench_serve.py --only anchor --anchor llama-server llama-cpp-server
    python benchmarks/bench_serve.py --build-llama-server  # only build (or find) the llama-server binary

Results are appended to benchmarks/results/serve.txt with the machine, date and command.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import http.client
import json
import os
import platform
import random
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Explain why the sky is blue.", "Write a short poem about the sea.", "What is 17 + 25? Think step by step.",
    "Give three tips for learning a language.", "Describe how a bicycle works.", "Why do cats purr?",
    "Summarise the story of Little Red Riding Hood.", "How do vaccines work?",
]
ANCHOR_TEMPERATURE = 0.6  # the paper policy's
LLAMA_SERVER_SLOTS = 16
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "eager-kernels"
SERVER_EXTRA = ["pydantic-settings>=2.0.1", "python-dotenv", "sse-starlette>=1.6.1", "starlette-context>=0.3.6,<0.4"]


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "-"


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


# -- the anchors' setup ---------------------------------------------------------------------

def _llama_server_cmake_args() -> list[str]:
    cpu = subprocess.run([sys.executable, str(ROOT / "eager_kernels/engines/llamacpp_build.py"), "cmake-args"],
                         capture_output=True, text=True, check=True).stdout.split()
    args = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=OFF", *cpu,
            # one static binary (the cache keeps it alone), no tests / examples / web UI download / TLS
            "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF"]
    return list(dict.fromkeys(args))


def llama_server_binary(spec: str | None = None, jobs: int = 2) -> Path:
    """The llama-server binary built from the llama.cpp vendored in llama-cpp-python's sdist
    (`spec`, default the installed version), built once per spec and CMake options."""
    spec = spec or f"llama-cpp-python=={_version('llama_cpp_python')}"
    cmake_args = _llama_server_cmake_args()
    key = hashlib.sha256(" ".join([spec, *cmake_args]).encode()).hexdigest()[:16]
    home = CACHE / "llama-server" / key
    binary = home / "llama-server"
    if binary.exists():
        return binary
    sdists = CACHE / "llama-server" / "sdist"
    sdists.mkdir(parents=True, exist_ok=True)
    name = spec.split("==")[0].replace("-", "_")
    found = sorted(sdists.glob(f"{name}-{spec.split('==')[-1]}.tar.gz"))
    if not found:
        print(f"llama-server: pip download {spec} (sdist) into {sdists}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", spec,
                        "-d", str(sdists)], check=True)
        found = sorted(sdists.glob(f"{name}-*.tar.gz"))
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home) as tmp:
        with tarfile.open(found[-1]) as tar:
            members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name]
            tar.extractall(tmp, members=members, filter="data")
        src = next(Path(tmp).glob("*/vendor/llama.cpp"))
        build = Path(tmp) / "build"
        log = home / "build.log"
        print(f"llama-server: building {src.relative_to(tmp)} of {found[-1].name} (-j{jobs}; log {log})", flush=True)
        t0 = time.monotonic()
        with open(log, "w") as f:
            f.write(f"{spec}\ncmake {' '.join(cmake_args)}\n")
            f.flush()
            subprocess.run(["cmake", "-S", str(src), "-B", str(build), *cmake_args], stdout=f, stderr=f, check=True)
            subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", f"-j{jobs}"],
                           stdout=f, stderr=f, check=True)
        shutil.copy2(build / "bin" / "llama-server", binary)
        print(f"llama-server: built in {time.monotonic() - t0:.0f} s: {binary}", flush=True)
    return binary


def llama_cpp_server_path() -> str | None:
    """A PYTHONPATH entry with llama-cpp-python's server extra, or None if the environment has it."""
    probe = [sys.executable, "-c", "import llama_cpp.server.app"]
    if subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return None
    target = CACHE / "llama-cpp-server-extra"
    env = {**os.environ, "PYTHONPATH": str(target)}
    if subprocess.run(probe, capture_output=True, env=env, check=False).returncode != 0:
        print(f"llama_cpp.server: pip install --target {target} {' '.join(SERVER_EXTRA)}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                        *SERVER_EXTRA], check=True)
        subprocess.run(probe, env=env, check=True)
    return str(target)


# -- the servers ------------------------------------------------------------------------------

def _git(root: Path) -> str:
    def run(*a):
        return subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True, check=False).stdout.strip()

    head = run("rev-parse", "--short", "HEAD") or "?"
    return head + ("+local changes" if run("status", "--porcelain", "--", "eager_kernels") else "")


class Server:
    """One server to measure: kind eager (options, root), llama-server or llama-cpp-server."""

    def __init__(self, kind: str, options: str = "", root: Path | None = None):
        self.kind, self.options, self.root = kind, options.strip(), root or ROOT
        self.proc = self.port = self.argv = None
        self.code = _git(self.root) if kind == "eager" else None

    @property
    def name(self) -> str:
        if self.kind == "eager":
            where = "" if self.root == ROOT else f" ({self.root})"
            return f"eager-kernels serve @{self.code}{where}" + (f" {self.options}" if self.options else "")
        if self.kind == "llama-server":
            return f"llama-server --parallel {LLAMA_SERVER_SLOTS} --cont-batching (n = M)"
        return "llama_cpp.server (M requests)"

    def command(self, gguf: str, threads: int, port: int, args) -> tuple[list, dict, Path, str]:
        """(argv, environment, cwd, health path)."""
        env = dict(os.environ)
        if self.kind == "eager":
            cmd = [sys.executable, "-m", "eager_kernels", "serve", "--port", str(port), "--threads", str(threads),
                   "--log-level", "warning", "--max-queue", "256", "--gguf", gguf, *self.options.split()]
            env["PYTHONPATH"] = str(self.root)
            return cmd, env, self.root, "/health"
        if self.kind == "llama-server":
            ctx = LLAMA_SERVER_SLOTS * args.anchor_ctx_per_slot
            cmd = [str(llama_server_binary()), "-m", gguf, "--host", "127.0.0.1", "--port", str(port),
                   "-t", str(threads), "-tb", str(threads), "--parallel", str(LLAMA_SERVER_SLOTS), "--cont-batching",
                   "-c", str(ctx), "-fa", "on", "--no-webui", "--metrics", *shlex.split(args.llama_server_options)]
            return cmd, env, ROOT, "/health"
        extra = llama_cpp_server_path()
        if extra:
            env["PYTHONPATH"] = extra
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port", str(port),
               "--n_threads", str(threads), "--n_ctx", "2048", "--verbose", "False"]
        return cmd, env, ROOT, "/v1/models"

    def start(self, gguf: str, threads: int, args, log=None):
        port = free_port()
        cmd, env, cwd, health = self.command(gguf, threads, port, args)
        self.argv = cmd
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log or subprocess.DEVNULL,
                                     stderr=log or subprocess.DEVNULL)
        self.port = port
        try:
            wait_up(self.proc, port, health)
        except BaseException:
            self.stop()
            raise

    def generated_tokens(self) -> int | None:
        """llama-server: every sample's generated tokens so far (its usage counts the first
        sample of an n > 1 request only); None for the others."""
        if self.kind != "llama-server":
            return None
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            c.request("GET", "/metrics")
            for line in c.getresponse().read().decode().splitlines():
                if line.startswith("llamacpp:tokens_predicted_total "):
                    return int(float(line.split()[1]))
        finally:
            c.close()
        raise RuntimeError("llama-server /metrics: no llamacpp:tokens_predicted_total")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


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


# -- the load -----------------------------------------------------------------------------------

def one_request(kind, port, i, M, max_tokens, theta=None, timeout=600):
    """Generated tokens of request i (M paths or samples of prompt i mod 8)."""
    msgs = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
    if kind == "eager":
        r = post(port, "/v1/chat/completions", {"messages": msgs, "max_tokens": max_tokens, "seed": i,
                                                 "eager": {"max_paths": M, **({} if theta is None else
                                                                              {"theta": theta})}}, timeout)
        return r["usage"]["completion_tokens"]
    body = {"messages": msgs, "max_tokens": max_tokens, "temperature": ANCHOR_TEMPERATURE}
    if kind == "llama-server":
        r = post(port, "/v1/chat/completions", {**body, "n": M, "seed": i * M}, timeout)
        if len(r["choices"]) != M:
            raise RuntimeError(f"llama-server answered {len(r['choices'])} choices for n = {M}")
        return r["usage"]["completion_tokens"]
    with ThreadPoolExecutor(M) as pool:
        rs = list(pool.map(lambda s: post(port, "/v1/chat/completions", {**body, "seed": i * M + s}, timeout),
                           range(M)))
    return sum(r["usage"]["completion_tokens"] for r in rs)


def _row(level, results, t_first, t_last, load0, tokens=None):
    """results: (latency s or None if it failed, tokens) per request; tokens: the level's
    generated tokens where the server counts them (llama-server), else their sum."""
    ok = [r for r in results if r[0] is not None]
    lat = sorted(r[0] for r in ok)
    wall = max(t_last - t_first, 1e-9)
    tokens = sum(r[1] for r in ok) if tokens is None else tokens
    return {**level, "requests": len(ok), "failed": len(results) - len(ok), "wall_s": wall,
            "req_s": len(ok) / wall, "tok_s": tokens / wall, "tokens": tokens,
            "p50_s": statistics.median(lat) if lat else float("nan"),
            "p95_s": lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))] if lat else float("nan"),
            "load0": load0, "load1": _load()}


def _delta(before, after):
    return None if before is None else after - before


def run_closed(server, c, n_requests, args):
    load0, count0 = _load(), server.generated_tokens()

    def timed(i):
        t = time.perf_counter()
        try:
            tokens = one_request(server.kind, server.port, i, args.paths, args.max_tokens, args.theta, args.timeout)
        except Exception as e:  # noqa: BLE001 - a failed request is counted, the level goes on
            print(f"  request {i} failed: {e}", flush=True)
            return None, 0, t, time.perf_counter()
        return time.perf_counter() - t, tokens, t, time.perf_counter()

    with ThreadPoolExecutor(c) as pool:
        res = list(pool.map(timed, range(n_requests)))
    return _row({"load": f"c = {c}"}, [r[:2] for r in res], min(r[2] for r in res), max(r[3] for r in res), load0,
                _delta(count0, server.generated_tokens()))


def arrivals(rate, n, limit, seed=0):
    """Poisson arrival times (s) of at most n requests at `rate` per second, none after `limit`."""
    rng = random.Random(f"{seed}:{rate}")
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        if t > limit:
            break
        out.append(t)
    return out


def run_open(server, rate, args):
    times = arrivals(rate, args.rate_requests, args.rate_time_limit)
    load0, count0 = _load(), server.generated_tokens()
    results = [None] * len(times)
    t0 = time.perf_counter()

    def send(i):
        delay = t0 + times[i] - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        try:
            tokens = one_request(server.kind, server.port, i, args.paths, args.max_tokens, args.theta, args.timeout)
            results[i] = (time.perf_counter() - (t0 + times[i]), tokens, time.perf_counter())
        except Exception as e:  # noqa: BLE001
            print(f"  request {i} failed: {e}", flush=True)
            results[i] = (None, 0, time.perf_counter())

    threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(len(times))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    last = max((r[2] for r in results), default=t0)
    return _row({"load": f"{rate:g} req/s"}, [r[:2] for r in results], t0 + (times[0] if times else 0.0), last,
                load0, _delta(count0, server.generated_tokens()))


# -- the run --------------------------------------------------------------------------------------

def _print_row(r):
    fail = f", {r['failed']} failed" if r["failed"] else ""
    print(f"{r['server']:<60} {r['load']:<12} {r['req_s']:6.2f} req/s {r['tok_s']:7.1f} tok/s p50 {r['p50_s']:6.2f} s "
          f"p95 {r['p95_s']:6.2f} s ({r['requests']} requests{fail}, {r['tokens']} tokens; load {r['load0']:.1f}"
          f" -> {r['load1']:.1f})", flush=True)


def measure(server, gguf, args, round_):
    rows = []
    server.start(gguf, args.threads, args)
    try:
        one_request(server.kind, server.port, 0, args.paths, 4, timeout=args.timeout)  # warm up
        for c in args.concurrency:
            r = run_closed(server, c, max(2, round(args.requests * c)), args)
            rows.append({**r, "server": server.name, "round": round_})
            _print_row(rows[-1])
        for rate in args.rates:
            r = run_open(server, rate, args)
            rows.append({**r, "server": server.name, "round": round_})
            _print_row(rows[-1])
    finally:
        server.stop()
    return rows


def _servers(args) -> list[Server]:
    out = []
    if args.only in (None, "eager"):
        for v in args.variants:
            out.append(Server("eager", v))
            if args.eager_root:
                out.append(Server("eager", v, Path(args.eager_root).resolve()))
    if args.only in (None, "anchor"):
        out += [Server(a) for a in args.anchor]
    return out


def _tables(rows, rounds):
    head = ("| server | load | round | requests | requests/s | generated tokens/s | tokens/request | "
            "p50 latency (s) | p95 latency (s) | load avg before / after |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    table = head
    for r in rows:
        done = f"{r['requests']}" + (f" ({r['failed']} failed)" if r["failed"] else "")
        table += (f"| {r['server']} | {r['load']} | {r['round']} | {done} | {r['req_s']:.2f} | {r['tok_s']:.1f} | "
                  f"{r['tokens'] / max(r['requests'], 1):.0f} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | "
                  f"{r['load0']:.1f} / {r['load1']:.1f} |\n")
    if rounds < 2:
        return table
    table += ("\nMedians over the rounds:\n\n| server | load | requests/s | generated tokens/s | p50 latency (s) | "
              "p95 latency (s) |\n|---|---|---:|---:|---:|---:|\n")
    keys = list(dict.fromkeys((r["server"], r["load"]) for r in rows))
    for key in keys:
        rs = [r for r in rows if (r["server"], r["load"]) == key]
        med = {k: statistics.median(r[k] for r in rs) for k in ("req_s", "tok_s", "p50_s", "p95_s")}
        table += (f"| {key[0]} | {key[1]} | {med['req_s']:.2f} | {med['tok_s']:.1f} | {med['p50_s']:.2f} | "
                  f"{med['p95_s']:.2f} |\n")
    return table


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["eager", "anchor"], default=None)
    ap.add_argument("--anchor", nargs="*", choices=["llama-server", "llama-cpp-server"], default=["llama-server"],
                    help="the anchor servers (default llama-server; none with a bare --anchor)")
    ap.add_argument("--eager-root", default=None,
                    help="another checkout of the project: each variant runs from it too (cwd and PYTHONPATH)")
    ap.add_argument("--gguf", default=None, help="default: the default model's GGUF (models.default_gguf_path)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--paths", type=int, default=8, help="M, paths (samples) per request")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--theta", type=float, default=None,
                    help="eager.theta of the requests (default: the paper policy's 2.2; lower: trees nearer M paths)")
    ap.add_argument("--concurrency", type=int, nargs="*", default=[1, 4, 16])
    ap.add_argument("--requests", type=float, default=1.0, help="closed loop: requests per level = max(2, this x c)")
    ap.add_argument("--rates", type=float, nargs="*", default=[], help="open loop: Poisson arrival rates, requests/s")
    ap.add_argument("--rate-requests", type=int, default=24, help="open loop: requests per rate (24)")
    ap.add_argument("--rate-time-limit", type=float, default=120.0,
                    help="open loop: no arrival after this many seconds of a rate (120)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take (600)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the servers, alternating (1)")
    ap.add_argument("--variants", nargs="+", default=[""],
                    help="eager-kernels serve option strings, one server each (default: one with no "
                         "options); quote each, with a space inside ('--no-batch-invariant ') so that argparse "
                         "does not read it as an option")
    ap.add_argument("--anchor-ctx-per-slot", type=int, default=256,
                    help="llama-server: context cells per slot (-c = 16 x this; prompt + max_tokens must fit)")
    ap.add_argument("--llama-server-options", default="", help="more llama-server options (one string)")
    ap.add_argument("--build-llama-server", action="store_true", help="build (or find) llama-server and exit")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/serve.txt"))
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.build_llama_server:
        print(llama_server_binary())
        return
    gguf = args.gguf
    if gguf is None:
        sys.path.insert(0, str(ROOT))
        from eager_kernels.engines.models import default_gguf_path

        gguf = str(default_gguf_path())
    servers = _servers(args)
    if any(s.kind == "llama-server" for s in servers):
        llama_server_binary()  # before any timing: the first build takes minutes
    start = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_start = _load()
    rows, argvs = [], {}
    failed = []
    for round_ in range(1, args.rounds + 1):
        for server in (servers if round_ % 2 else servers[::-1]):
            try:
                rows += measure(server, gguf, args, round_)
            except Exception as e:  # noqa: BLE001 - the other servers' figures are kept
                print(f"{server.name}: round {round_} failed: {e}", flush=True)
                failed.append(f"{server.name} (round {round_}): {type(e).__name__}: {e}")
            if getattr(server, "argv", None):
                argvs[server.name] = server.argv
    end = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M UTC")
    versions = ", ".join(f"{d} {_version(d)}" for d in ("llama_cpp_python", "fastapi", "uvicorn", "torch"))
    head = (f"## {start} - {end}  {platform.node()}  {platform.processor() or platform.machine()}  "
            f"{os.cpu_count()} CPUs (load {load_start:.1f} at the start, {_load():.1f} at the end); {versions}\n"
            f"command: python benchmarks/bench_serve.py {shlex.join(argv if argv is not None else sys.argv[1:])}\n"
            f"GGUF {Path(gguf).name}, {args.threads} threads per server, M = {args.paths}, max_tokens = "
            f"{args.max_tokens}, eager.theta = {args.theta if args.theta is not None else 'the policy default'}, "
            f"anchors at temperature {ANCHOR_TEMPERATURE}; closed loop: max(2, {args.requests:g} x c) requests; "
            f"open loop: {args.rate_requests} Poisson arrivals per rate, none after {args.rate_time_limit:g} s\n")
    for name, cmd in argvs.items():
        shown = [Path(a).name if a == sys.executable or a == gguf or a.endswith("llama-server") else a for a in cmd]
        head += f"server: {name}: {shlex.join(shown)}\n"
    head += "".join(f"failed: {f}\n" for f in failed)
    table = _tables(rows, args.rounds)
    print("\n" + head + "\n" + table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(head + "\n" + table + "\n")


if __name__ == "__main__":
    main()
