"""transformers-native entry points (needs transformers).

- eager_generate: EAGer as model.generate(custom_generate=eager_generate, eager_config=...).
- CUSTOM_GENERATE_DIR: the same loop as a custom_generate/generate.py folder, for
  model.generate(custom_generate=CUSTOM_GENERATE_DIR, trust_remote_code=True, ...).
- EntropyMonitor: a LogitsProcessor recording entropies (and EAGer's threshold and branch
  decisions) inside any generate(); also a llama-cpp-python logits processor.
"""
import os

from .generate import EagerGenerateOutput, eager_generate
from .monitor import EntropyMonitor

# A directory holding custom_generate/generate.py (this package's own folder).
CUSTOM_GENERATE_DIR = os.path.dirname(os.path.abspath(__file__))

__all__ = ["CUSTOM_GENERATE_DIR", "EagerGenerateOutput", "EntropyMonitor", "eager_generate"]
