"""Shared pieces of the benchmarks: the plain-torch step a user would write (the speed
baseline), timers (median of many runs), the read floor, and the environment stamp stored
beside every result row.

The baseline is deliberately not eager_kernels.kernels.reference (which is written for clarity
and bit-exact randomness): each part is in its fastest plain-torch form.
"""
from __future__ import annotations

import datetime
import platform
import statistics
import time

import torch
import torch.nn.functional as F

# The one prompt of the end-to-end decode benchmarks (bench --decode, its vLLM variant).
PROMPT = "What is 17 + 25?"


def plain_entropy(x, top_k=None):
    """-(p * log(p + 1e-10)).sum(-1) with p = F.softmax (float32 accumulation, no upcast
    copy); top-K: torch.topk first, then the same on the K values."""
    if top_k is not None:
        x = torch.topk(x, top_k, dim=-1).values
    p = F.softmax(x, dim=-1, dtype=torch.float32)
    return -(p * torch.log(p + 1e-10)).sum(-1)


def plain_topk_logprobs(x, k):
    return torch.log_softmax(x, dim=-1, dtype=torch.float32).topk(k, dim=-1)


def plain_sample(x, temperature):
    """Gumbel arg-max with torch.rand (faster than torch.multinomial on CPU); argmax at T=0."""
    if temperature == 0:
        return x.argmax(-1)
    gumbel = -torch.log(-torch.log(torch.rand(x.shape, dtype=torch.float32, device=x.device)))
    return (x.float() / temperature + gumbel).argmax(-1)


def plain_threshold(hist, group, q, theta):
    """torch.quantile over each group's history [G, N], clamped at theta, per row."""
    return torch.quantile(hist, q / 100.0, dim=-1).clamp_min(theta)[group]


def plain_torch_step(logits, hist, group, *, k, temperature, entropy_top_k, q, theta):
    """One EAGer step as a user writes it with plain torch, each part in its fastest form
    (the functions above). The history is a fixed [G, N] tensor and is not appended to:
    the baseline is spared that work."""
    entropy = plain_entropy(logits, entropy_top_k)
    threshold = plain_threshold(hist, group, q, theta)
    branch = entropy > threshold
    token = plain_sample(logits, temperature)
    cand_logprobs, cand_ids = plain_topk_logprobs(logits, k)
    return entropy, threshold, branch, token, cand_ids, cand_logprobs


def realistic_logits(rows, vocab, dtype, device, seed=0):
    """Logits shaped like a language model's: a normal bulk (std 2) with a heavy upper tail
    (a few hundred tokens raised by up to 12), so the top of the distribution is peaked
    the way real next-token distributions are."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, vocab, generator=g) * 2.0
    n_tail = min(vocab, 256)
    cols = torch.randint(0, vocab, (rows, n_tail), generator=g)
    x.scatter_add_(1, cols, torch.rand(rows, n_tail, generator=g) * 12.0)
    return x.to(dtype=dtype, device=device)


DISTRIBUTIONS = ("randn3", "peaked", "llm")


def bench_logits(rows, vocab, dtype, device, dist="randn3", seed=0):
    """Benchmark logits. randn3: 3 * randn, flat (about 8 nats of entropy), the hard case
    for the sampling kernels' Gumbel shortcut; peaked: randn3 with +14 on five tokens per
    row; llm: realistic_logits."""
    if dist == "llm":
        return realistic_logits(rows, vocab, dtype, device, seed=seed)
    if dist not in DISTRIBUTIONS:
        raise ValueError(f"dist: expected one of {DISTRIBUTIONS}, got {dist!r}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, vocab, generator=g) * 3
    if dist == "peaked":
        idx = torch.randint(0, vocab, (rows, 5), generator=g)
        x.scatter_add_(1, idx, torch.full((rows, 5), 14.0))
    return x.to(dtype=dtype, device=device)


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_stats(fn, *, device="cpu", min_runs=20, min_seconds=0.3, max_seconds=None, warmup=3):
    """Times fn(): (median s, minimum s, runs). Runs at least min_runs times and min_seconds;
    with max_seconds, stops once that much time is spent (after at least 3 runs), for slow
    calls. On CUDA each run is timed with events around it (device time)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    start = time.perf_counter()
    cuda = torch.device(device).type == "cuda"

    def more() -> bool:
        spent = time.perf_counter() - start
        if max_seconds is not None and spent >= max_seconds and len(times) >= 3:
            return False
        return len(times) < min_runs or spent < min_seconds

    while more():
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), len(times)


def kernel_seconds(fn, *, runs=20, warmup=3) -> float:
    """CUDA only: the GPU time of fn()'s kernels (and copies) per call, from the profiler's
    device-side records, averaged over `runs` calls. Unlike time_stats, whose events also
    count the GPU waiting for the host to launch the next kernel, this is what the kernels
    cost the device: the figure that bandwidth (GB/s, % of copy bandwidth) is taken from."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            fn()
        torch.cuda.synchronize()
    total_us = sum(evt.time_range.elapsed_us() for evt in prof.events()
                   if evt.device_type == torch.autograd.DeviceType.CUDA)  # kernels, copies, memsets
    if total_us <= 0:  # no device records (profiler without CUPTI): no figure rather than 0
        return float("nan")
    return total_us / runs / 1e6


def time_fn(fn, *, device="cpu", min_runs=20, min_seconds=0.3, warmup=3) -> float:
    """Median wall time of fn() in seconds over at least min_runs runs and min_seconds."""
    return time_stats(fn, device=device, min_runs=min_runs, min_seconds=min_seconds, warmup=warmup)[0]


def read_floor_seconds(logits) -> float:
    """The time of one logits.amax(-1) pass: the least any op reading the logits costs."""
    return time_fn(lambda: logits.amax(-1), device=logits.device)


def copy_bandwidth(device, nbytes=1 << 30) -> float:
    """Measured device copy bandwidth in bytes/s (read + write counted)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device=device, min_runs=10)
    return 2 * nbytes / t


def environment() -> dict:
    """Device, versions and date, stored beside each result row."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = cpu_name()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return {
        "device": device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
    }


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def write_csv(rows, path, fields=None) -> None:
    """rows (dicts) to a CSV file at path (its folder made), columns `fields` or the first
    row's keys."""
    import csv
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields or rows[0]))
        w.writeheader()
        w.writerows(rows)
