"""EAGer (entropy-aware generation) as a transformers custom_generate folder.

transformers loads this file from a local directory or a Hub repository that holds
custom_generate/generate.py:

    model.generate(input_ids, custom_generate=eager_kernels.hf.CUSTOM_GENERATE_DIR,
                   trust_remote_code=True, eager_config=EagerConfig(...), max_new_tokens=64)

It needs the eager-kernels package installed (custom_generate/requirements.txt); the loop is
eager_kernels.hf.eager_generate, the same one the callable form runs.
"""
from eager_kernels.hf.generate import generate_from_folder


def generate(*args, model, **kwargs):
    return generate_from_folder(*args, model=model, **kwargs)
