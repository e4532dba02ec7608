"""Moved to eager_kernels.engines.models; this name stays for code that imports it (the same
module object: its attributes, and patches of them, are the new module's)."""
import sys

from .engines import models as _moved

sys.modules[__name__] = _moved
