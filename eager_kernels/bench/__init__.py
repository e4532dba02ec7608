"""`eager-kernels bench`: the kernel grid (bench.kernels) or, with --decode, the
end-to-end decode comparison on the default model (bench.decode)."""
from __future__ import annotations


def main(argv=None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--decode" in argv:
        from .decode import main as decode_main

        argv.remove("--decode")
        return decode_main(argv)
    from .kernels import main as kernels_main

    return kernels_main(argv)
