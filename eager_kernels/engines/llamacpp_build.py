"""The x86 instruction sets llama.cpp is built with, and a build checked against this CPU.

llama.cpp's own default build (GGML_NATIVE=ON) compiles ggml with -march=native. On a CPU
that lists AMX (Intel Sapphire Rapids and later) that turns on ggml's AMX int8 kernels, and
the weights of every quantised GGUF are then repacked into AMX buffers whose first tile
instruction can fault (SIGILL: the process dies on the first decode) where the virtual
machine or the kernel does not hand the tile state to the process; the GGML_AMX_* options
cannot switch it off under -march=native. A native build also cannot move to another CPU
(pip's wheel cache, a shared image). docs/engines.md#building-llamacpp says more.

So the Makefile builds llama.cpp non-native, with the instruction sets of the build
machine listed one by one (this module's `cmake-args` command) and AMX never among them;
LlamaCppEngine checks at load time that the build's instruction sets are ones this CPU
has (a clear error instead of SIGILL) and loads a build that has AMX anyway (a user's own
build) without the extra weight buffers, the AMX ones among them.

Runs as a script with no third-party import (the Makefile calls it before llama.cpp is
built):  python eager_kernels/engines/llamacpp_build.py cmake-args
"""
from __future__ import annotations

import platform
import sys
from pathlib import Path

# ggml's CMake options for x86 (ggml/src/ggml-cpu/CMakeLists.txt, non-MSVC branch) and
# the /proc/cpuinfo flags each one's compiler flags need.
GGML_X86_OPTIONS = {
    "GGML_SSE42": ("sse4_2",),
    "GGML_AVX": ("avx",),
    "GGML_AVX2": ("avx2",),
    "GGML_FMA": ("fma",),
    "GGML_F16C": ("f16c",),
    "GGML_BMI2": ("bmi2",),
    "GGML_AVX_VNNI": ("avx_vnni",),
    # -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "GGML_AVX512_VBMI": ("avx512vbmi",),
    "GGML_AVX512_VNNI": ("avx512_vnni",),
    "GGML_AVX512_BF16": ("avx512_bf16",),
}
# Never turned on, whatever the CPU lists (module docstring).
GGML_X86_NEVER = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")

# The features llama_print_system_info() reports for the CPU backend (compile-time: what
# the build uses) and the /proc/cpuinfo flags each needs.
BUILD_FEATURE_FLAGS = {
    "SSE3": ("pni",),
    "SSSE3": ("ssse3",),
    "AVX": ("avx",),
    "AVX_VNNI": ("avx_vnni",),
    "AVX2": ("avx2",),
    "F16C": ("f16c",),
    "FMA": ("fma",),
    "BMI2": ("bmi2",),
    "AVX512": ("avx512f",),
    "AVX512_VBMI": ("avx512vbmi",),
    "AVX512_VNNI": ("avx512_vnni",),
    "AVX512_BF16": ("avx512_bf16",),
}
AMX_FEATURE = "AMX_INT8"


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str] | None:
    """The CPU's instruction-set flags from /proc/cpuinfo (its first `flags` line), or None
    where there is no such file (not Linux) or no flags line (not x86)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return None


def cmake_args(flags: frozenset[str]) -> list[str]:
    """-D options for a non-native x86 build of ggml that uses exactly the listed
    instruction sets this CPU has, AMX excepted."""
    args = ["-DGGML_NATIVE=OFF"]
    for option, needs in GGML_X86_OPTIONS.items():
        args.append(f"-D{option}={'ON' if set(needs) <= flags else 'OFF'}")
    args += [f"-D{option}=OFF" for option in GGML_X86_NEVER]
    return args


def build_features(system_info: str) -> frozenset[str]:
    """The CPU backend's features in llama_print_system_info()'s text ("AVX2 = 1 | ...")."""
    features = set()
    for item in system_info.replace("\n", "|").split("|"):
        name, sep, value = item.rpartition("=")
        name = name.split(":")[-1].strip()  # "CPU : SSE3" -> "SSE3"
        if sep and name and value.strip() not in ("", "0"):
            features.add(name)
    return frozenset(features)


def missing_instruction_sets(features: frozenset[str], flags: frozenset[str]) -> list[str]:
    """The build's instruction sets that this CPU lacks (executing any of them: SIGILL).
    AMX is left out: ggml asks the kernel for it at run time and does without it."""
    return sorted(f for f, needs in BUILD_FEATURE_FLAGS.items() if f in features and not set(needs) <= flags)


def main(argv: list[str]) -> int:
    if argv[1:] != ["cmake-args"]:
        print(f"usage: {argv[0]} cmake-args", file=sys.stderr)
        return 2
    flags = cpu_flags()
    if flags is None or platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386"):
        return 0  # not x86 Linux: llama.cpp's own defaults (nothing printed)
    print(" ".join(cmake_args(flags)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
