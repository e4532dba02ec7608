"""Moved to eager_kernels.bench.common; this name stays for code that imports it (the same
module object: its attributes, and patches of them, are the new module's)."""
import sys

from .bench import common as _moved

sys.modules[__name__] = _moved
