"""Builds the C++ CPU extension eager_kernels._C at install time.

Set EAGER_KERNELS_SKIP_CPP=1 to install without it (the package then falls back to the
torch reference on CPU, with one warning). Install with --no-build-isolation so that the
extension is compiled against the torch already installed.

No hardware probing here: csrc/kernels_avx512.cpp carries its own target pragma and is
chosen at run time only on CPUs that report AVX-512; csrc/kernels_scalar.cpp is the
portable path. -ffp-contract=off keeps the Gumbel score x - T * log(E) rounded as the
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
            "eager_kernels._C",
            sources,
            depends=sorted(glob.glob(os.path.join("csrc", "*.h"))),
            extra_compile_args=["-O3", "-fopenmp", "-std=c++17", "-ffp-contract=off"],
            extra_link_args=["-fopenmp"],
        )
    )
    cmdclass["build_ext"] = BuildExtension

setup(ext_modules=ext_modules, cmdclass=cmdclass)
