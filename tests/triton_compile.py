"""Compile the Triton kernels for NVIDIA GPUs on a machine without one.

    python tests/triton_compile.py [--arch 90 80] [--fallback-topk] [--ptxas-info] [--loop-instructions]

The Triton interpreter (how the tests run the kernels without CUDA) is lenient where the
compiler is not: loop-carried values that change type, non-constexpr globals, branches
that yield different types. This script takes every launch variant the launchers in
eager_kernels/triton_kernels.py make (entropy full and top-K, top-k log-probabilities at
several k, sampling with scalar and per-row temperatures and tensor counters, eager_step at
several batch sizes, V = 1 where Triton specialises ints equal to 1; float32, bfloat16 and
float16 logits) and runs Triton's real compiler (Python -> TTIR -> TTGIR -> LLVM -> PTX ->
cubin with the bundled ptxas) for each target, through the launchers themselves: the
tensors live on the meta device, a stand-in driver reports the target, and each kernel is
compiled with `warmup=True` (the argument specialisation is Triton's own), never launched.

--fallback-topk compiles the path for Triton releases without tl.topk; --ptxas-info adds
each kernel's registers, spills and shared memory (ptxas -v); --loop-instructions adds the
instructions per logit of the partial kernel's main loop (the loop over a chunk's blocks),
read from its SASS (the bundled nvdisasm) by tests/sass_paths.py: per path through one
iteration, divided by the logits one thread holds per iteration (block / (32 * warps)).
The paths: `min`, a block that changes nothing on its optional parts (no top-K candidate
and, when sampling, no random numbers needed); `filter`, the shortest path through the
top-K candidate slots (a block with candidates, no merge); `merge`, the shortest path
through a merge of the top-K buffer; `first`, a chunk's first block (its bound, slots and
merge); `noise`, the shortest path through the Philox noise; `max`, the longest path (every
branch taken; the top-K's extra rounds, for ties or a block without a bound, counted once). Prints one line
per variant and exits 1 if any failed. tests/test_triton_compile.py runs it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

os.environ.pop("TRITON_INTERPRET", None)  # the real compiler, not the interpreter

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver as _driver  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

META = torch.device("meta")


class _TargetOnlyDriver:
    """Enough of a Triton driver for JITFunction.run(warmup=True): the target to compile
    for, device 0, no stream."""

    def __init__(self, target):
        self.target = target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


class _CompileOnly:
    """Stands in for a kernel: kernel[grid](...) compiles (warm-up) instead of launching."""

    def __init__(self, fn):
        self.fn = fn
        self.compiled = []

    def __getitem__(self, grid):
        def go(*args, **kwargs):
            kernel = self.fn.run(*args, grid=grid, warmup=True, **kwargs)
            if kernel is None or "cubin" not in kernel.asm:
                raise RuntimeError(f"{self.fn.__name__}: no cubin produced")
            # logits one thread holds per loop iteration (the partial kernel's blocks)
            kernel.logits_per_thread = kwargs.get("BLOCK", 0) / (32 * kwargs.get("num_warps", 4))
            self.compiled.append(kernel)
            return kernel
        return go


def _bundled(tool: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)


# Opcodes that mark a path through one loop iteration (tests/sass_paths.py): the atomic
# that hands out the top-K candidate slots; two volatile loads (the candidate count, then
# the top-K buffer read back for a merge); the integer sum of the first block's bound (its
# bucket maxima ranked); the 32-bit high multiplies of Philox.
LOOP_MARKS = {
    "filter": r"ATOMG\..*|ATOM\..*|RED\..*",
    "merge": (r"LDG\.E\.(STRONG|VOLATILE).*|LD\.E\.(STRONG|VOLATILE).*", 2),
    "first": r"REDUX\.SUM.*",
    "noise": r"IMAD\.HI\.U32|IMAD\.WIDE\.U32",
}


def _sass(kernel) -> str:
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    try:
        return subprocess.run([_bundled("nvdisasm"), "-c", f.name], capture_output=True, text=True,
                              check=True).stdout
    finally:
        os.unlink(f.name)


def _loop_info(kernel, sass_dir=None, name="") -> str:
    """Instructions per logit on the paths through the main loop of a compiled kernel."""
    import re

    import sass_paths

    sass = _sass(kernel)
    if sass_dir:
        os.makedirs(sass_dir, exist_ok=True)
        with open(os.path.join(sass_dir, re.sub(r"[^\w.=-]+", "_", name) + ".sass"), "w") as f:
            f.write(sass)
    try:
        paths = sass_paths.main_loop(sass_paths.blocks(sass), LOOP_MARKS)
    except ValueError as exc:
        return f"{kernel.name}: {exc}"
    per = kernel.logits_per_thread or 1

    def fmt(n):
        return "-" if n is None else f"{n / per:.1f}"

    parts = [f"min {fmt(paths.shortest)}"]
    parts += [f"{label} {fmt(n)}" for label, n in paths.through.items() if n is not None]
    parts.append(f"max {fmt(paths.longest)}")
    return (f"{kernel.name} loop: {per:g} logits/thread/iteration; instructions per logit: " + ", ".join(parts)
            + f" (body {paths.body_instructions} instructions{'' if not paths.inner_loops else ', inner loops'})")


def _ptxas_info(kernel, arch) -> str:
    """Registers, spills and shared memory of a compiled kernel: `ptxas -v` on its PTX
    with the options Triton compiled it with (--regAllocOptLevel=2, --fmad=false when
    contraction is off; without them ptxas allocates otherwise), by the first of
    Triton's bundled ptxas binaries that accepts the PTX version, checked against the
    cubin Triton built (cuobjdump -res-usage: registers and local memory)."""
    import glob
    import re
    import subprocess
    import tempfile

    bins = sorted(glob.glob(_bundled("ptxas*")))
    m = re.search(r"\.target\s+(\S+)", kernel.asm["ptx"])
    gpu = m.group(1) if m else f"sm_{arch}"
    flags = ["--regAllocOptLevel=2"] + ([] if kernel.metadata.enable_fp_fusion else ["--fmad=false"])
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(kernel.asm["ptx"])
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as c:
        c.write(kernel.asm["cubin"])
    try:
        usage = subprocess.run([_bundled("cuobjdump"), "-res-usage", c.name], capture_output=True, text=True).stdout
        built = re.search(r"REG:(\d+).*?LOCAL:(\d+)", usage)
        for exe in bins:
            proc = subprocess.run([exe, "-v", *flags, "--gpu-name", gpu, f.name, "-o", os.devnull], capture_output=True,
                                  text=True)
            if proc.returncode == 0:
                regs = re.search(r"Used (\d+) registers", proc.stderr)
                spill = re.search(r"(\d+) bytes spill stores", proc.stderr)
                same = built and regs and built.group(1) == regs.group(1)
                return (f"{kernel.name}: {regs.group(1) if regs else '?'} registers, "
                        f"{spill.group(1) if spill else '?'} bytes spilled, "
                        f"{kernel.metadata.shared} bytes shared, {kernel.metadata.num_warps} warps"
                        + ("" if same else f" (the built cubin: {built.group(1) if built else '?'} registers, "
                                           f"{built.group(2) if built else '?'} bytes local)"))
        return f"{kernel.name}: no bundled ptxas accepted the PTX"
    finally:
        os.unlink(f.name)
        os.unlink(c.name)


def _variants(tk):
    """(name, thunk) for every launch shape the launchers make."""
    out = []

    def logits(rows, vocab, dtype):
        return torch.empty(rows, vocab, dtype=dtype, device=META)

    def history(groups, cap, rows):
        return (torch.empty(groups, cap, device=META), torch.empty(groups, dtype=torch.int64, device=META),
                torch.empty(groups, dtype=torch.bool, device=META), torch.empty(rows, dtype=torch.int64, device=META))

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        d = str(dtype).replace("torch.", "")
        out.append((f"entropy full {d}", lambda dt=dtype: tk.entropy(logits(8, 152064, dt), None)))
        out.append((f"entropy top-20 {d}", lambda dt=dtype: tk.entropy(logits(8, 152064, dt), 20)))
        out.append((f"topk_logprobs k=4 {d}", lambda dt=dtype: tk.topk_logprobs(logits(8, 152064, dt), 4)))
        out.append((f"sample T=0.6 {d}", lambda dt=dtype: tk.sample(logits(8, 152064, dt), 0.6, 1, 0)))

        def step(rows, dt=dtype, k=4, top=20, temp=0.6, vocab=152064):
            values, count, overflow, group = history(8, 4096, rows)
            return tk.eager_step(logits(rows, vocab, dt), values, count, overflow, group, k, temp, top, 99.0, 2.0,
                                 5.0, 1, 0)
        out.append((f"eager_step B=8 {d}", lambda s=step: s(8)))
    f32 = torch.float32
    out += [
        ("topk_logprobs k=1", lambda: tk.topk_logprobs(logits(3, 1000, f32), 1)),
        ("topk_logprobs k=64", lambda: tk.topk_logprobs(logits(3, 50000, f32), 64)),
        ("entropy V=1 (ints equal to 1 are specialised)", lambda: tk.entropy(logits(1, 1, f32), None)),
        ("sample V=7 B=1", lambda: tk.sample(logits(1, 7, f32), 1.0, 0, 0)),
        ("sample T=0 (greedy)", lambda: tk.sample(logits(4, 32000, f32), 0.0, 0, 0)),
        ("sample per-row T, tensor counters",
         lambda: tk.sample(logits(4, 32000, f32), torch.empty(4, device=META),
                           torch.empty((), dtype=torch.int64, device=META),
                           torch.empty((), dtype=torch.int64, device=META))),
        ("sample seed and offset beyond int32", lambda: tk.sample(logits(4, 32000, f32), 0.6, 2**62 + 5, 2**40)),
        ("sample per-row seeds (a key per row), int offset",
         lambda: tk.sample(logits(4, 32000, f32), 0.6, torch.empty(4, dtype=torch.int64, device=META), 3)),
        ("eager_step per-row seeds, tensor offset",
         lambda: tk.eager_step(logits(16, 49152, f32), *history(4, 256, 16), 3, 0.6, 20, 80.0, 2.2, 2.2,
                               torch.empty(16, dtype=torch.int64, device=META),
                               torch.empty((), dtype=torch.int64, device=META))),
    ]
    for rows in (1, 64, 300):
        values, count, overflow, group = history(8, 1 << 16, rows)
        out.append((f"eager_step B={rows}",
                    lambda r=rows, h=(values, count, overflow, group): tk.eager_step(
                        logits(r, 128256, f32), *h, 4, 0.6, 20, 99.0, 2.0, 5.0, 1, 0)))
    out += [
        ("eager_step greedy, full entropy",
         lambda: tk.eager_step(logits(2, 49152, f32), *history(2, 64, 2), 3, 0.0, None, 80.0, 0.0, 5.0, 0, 0)),
        ("eager_step V=1 k=1", lambda: tk.eager_step(logits(1, 1, f32), *history(1, 8, 1), 1, 0.6, None, 50.0,
                                                     0.0, 1.0, 0, 0)),
    ]

    def prepared(rows, dt):
        """ops.PreparedStep's launches: state on the device, the error flag, the offset
        counted on by launch 2."""
        values, count, overflow, group = history(8, 4096, rows)
        plan = tk._Plan(rows, 152064, META, entropy_top_k=20, want_entropy=True, k=4, sample=True, history=values)
        i32, i64 = dict(dtype=torch.int32, device=META), dict(dtype=torch.int64, device=META)
        plan.launch(plan.arguments(logits(rows, 152064, dt), torch.empty(rows, device=META), torch.empty(rows, **i64),
                                   torch.empty((), **i64), (values, count, overflow), group, 99.0, 2.0, 5.0,
                                   torch.empty(8, **i32), torch.empty(1, **i32), next_offset=True))
    out.append(("prepared step B=8 bfloat16", lambda: prepared(8, torch.bfloat16)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[90], help="CUDA compute capabilities (90 = H100/H200)")
    ap.add_argument("--fallback-topk", action="store_true", help="compile the path without tl.topk")
    ap.add_argument("--ptxas-info", action="store_true", help="also print registers and spills per kernel")
    ap.add_argument("--loop-instructions", action="store_true",
                    help="also print the partial kernel's main-loop instructions per logit (from its SASS)")
    ap.add_argument("--sass-dir", help="with --loop-instructions: also write each partial kernel's SASS there")
    ap.add_argument("--only", help="compile only the variants whose name contains this")
    args = ap.parse_args(argv)

    from eager_kernels.kernels import triton as tk

    if args.fallback_topk:
        tk._HAS_TL_TOPK = tl.constexpr(False)
    tk._partial_kernel = _CompileOnly(tk._partial_kernel)
    tk._finalize_kernel = _CompileOnly(tk._finalize_kernel)
    tk._check_status = lambda status: None  # reads the (meta) status: nothing to check here
    failed = 0
    for arch in args.arch:
        _driver.set_active(_TargetOnlyDriver(GPUTarget("cuda", arch, 32)))
        # JIT caches are per device id; the stand-in reports device 0 for every target.
        for kernel in (tk._partial_kernel.fn, tk._finalize_kernel.fn):
            kernel.device_caches.clear()
        for name, thunk in _variants(tk):
            if args.only and args.only not in name:
                continue
            t0 = time.perf_counter()
            n0 = len(tk._partial_kernel.compiled), len(tk._finalize_kernel.compiled)
            try:
                thunk()
                print(f"ok      sm_{arch} {name} ({time.perf_counter() - t0:.1f} s)", flush=True)
                if args.ptxas_info:
                    for kernel in tk._partial_kernel.compiled[n0[0]:] + tk._finalize_kernel.compiled[n0[1]:]:
                        print(f"          {_ptxas_info(kernel, arch)}", flush=True)
                if args.loop_instructions:
                    for kernel in tk._partial_kernel.compiled[n0[0]:]:
                        print(f"          {_loop_info(kernel, args.sass_dir, f'sm_{arch} {name}')}", flush=True)
            except Exception as exc:  # report every variant, then fail
                failed += 1
                cause = exc.__cause__ or exc
                print(f"FAILED  sm_{arch} {name}: {type(exc).__name__}: {cause}", flush=True)
                traceback.print_exception(exc, limit=2, file=sys.stdout)
    print(f"{'all variants compiled' if not failed else f'{failed} variants failed'} "
          f"(triton {triton.__version__}, tl.topk {'fallback' if args.fallback_topk else 'native'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
