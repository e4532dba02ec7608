"""Moved to eager_kernels.kernels.history; this name stays for code that imports it (the same
module object: its attributes, and patches of them, are the new module's)."""
import sys

from .kernels import history as _moved

sys.modules[__name__] = _moved
