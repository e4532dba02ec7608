"""Builds the C++ CPU extension eager_kernels.kernels._C at install time.

Set EAGER_KERNELS_SKIP_CPP=1 to install without it (the package then falls back to the
torch reference on CPU, with one warning). Install with --no-build-isolation so that the
extension is compiled against the torch already installed.

No hardware probing here: csrc/kernels_avx512.cpp and csrc/kernels_avx2.cpp carry their
own target pragmas, and csrc/ops.cpp picks the tier at run time: AVX-512 on CPUs that
report it, except AMD Zen 4, which gets the AVX2 tier (faster there); AVX2 + FMA + F16C
otherwise; csrc/kernels_scalar.cpp, the portable path, on anything else
(EAGER_KERNELS_CPU_ISA forces a tier; docs/cpu_tiers.md). -ffp-contract=off keeps the Gumbel score x - T * log(E) rounded as the
reference rounds it (the kernels write their fused multiply-adds explicitly).
"""
import glob
import os

from setuptools import setup

ext_modules = []
cmdclass = {}
sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
if sources and os.environ.get("EAGER_KERNELS_SKIP_CPP") != "1":
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    ext_modules.append(
        CppExtension(
            "eager_kernels.kernels._C",
            sources,
            depends=sorted(glob.glob(os.path.join("csrc", "*.h"))),
            extra_compile_args=["-O3", "-fopenmp", "-std=c++17", "-ffp-contract=off"],
            extra_link_args=["-fopenmp"],
        )
    )
    cmdclass["build_ext"] = BuildExtension

setup(ext_modules=ext_modules, cmdclass=cmdclass)
