"""Same as `eager-kernels bench --decode`: see eager_kernels/bench/decode.py for what it measures.

    python benchmarks/bench_decode.py --help
"""
import sys

from eager_kernels.bench.decode import main

if __name__ == "__main__":
    sys.exit(main())
