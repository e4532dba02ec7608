"""Moved: EAGer generation on Ray is eager_kernels.sampler.ray, the evaluation on Ray
eager_kernels.evaluation.ray, the model factory eager_kernels.engines.select. This name
stays for code that imports it."""
from .engines.select import _ModelFactory, default_model_factory  # noqa: F401
from .evaluation.ray import RayEvalRunner, _EvalActor, _memory_store  # noqa: F401
from .sampler.ray import (DONE, _allocate, _pool, _ray, _read_parts, _run_stage, _StageActor,  # noqa: F401
                          _write_part, generate_ray, init_ray, load_results, read_prompts)
