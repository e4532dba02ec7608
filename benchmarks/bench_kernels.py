"""Same as `eager-kernels bench`: see eager_kernels/bench/kernels.py for what it measures.

    python benchmarks/bench_kernels.py --help
"""
import sys

from eager_kernels.bench.kernels import main

if __name__ == "__main__":
    sys.exit(main())
