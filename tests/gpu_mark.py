"""The `gpu` mark (declared in pyproject.toml; docs/testing.md) on the tests that run on CUDA.

`pytest -m gpu` selects them, `pytest -m "not gpu"` leaves them out. Three kinds:

- tests written for CUDA only: `@needs_cuda` (the mark, and a skip without a GPU);
- tests that run on CUDA when a GPU is present and on the CPU otherwise:
  `@cuda_when_present` (the mark only where they run on CUDA);
- cases whose backend runs on CUDA when a GPU is present: conftest.BACKENDS holds
  ("triton", "cuda") and ("torch", "cuda") there, ("triton", "cpu") through the Triton
  interpreter otherwise. `on_cuda(params)` marks the parameter sets holding a CUDA pair,
  `sweep` is conftest.sweep with them marked, and `backend_fixture(pairs)` is conftest's
  `backend` fixture with those pairs marked (a module overrides it with `backend =
  backend_fixture(BACKENDS)`). Without a GPU no CUDA pair exists, so the interpreted cases
  stay unmarked and run in the ordinary suite.

Kept out of conftest.py: a module imports what it marks.
"""
import pytest
import torch

import conftest

HAS_CUDA = torch.cuda.is_available()
GPU = pytest.mark.gpu


def needs_cuda(test):
    """A test written for CUDA only: marked gpu, skipped without a GPU."""
    return GPU(pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")(test))


def cuda_when_present(test):
    """A test that runs on CUDA when a GPU is present (else on the CPU, Triton through its
    interpreter): marked gpu only where it runs on CUDA."""
    return GPU(test) if HAS_CUDA else test


def is_cuda_pair(value) -> bool:
    """A (backend, device) pair of conftest.BACKENDS whose device is CUDA."""
    return isinstance(value, tuple) and len(value) == 2 and value[1] == "cuda"


def on_cuda(params: list) -> list:
    """Parameter sets (pytest.param, as conftest.sweep makes them), the gpu mark added to
    each one holding a (backend, "cuda") pair; the others unchanged."""
    out = []
    for p in params:
        if any(is_cuda_pair(v) for v in p.values):
            p = pytest.param(*p.values, marks=(*p.marks, GPU), id=p.id)
        out.append(p)
    return out


def sweep(*axes, **kwargs) -> list:
    """conftest.sweep(*axes, **kwargs), the sets holding a CUDA pair marked gpu."""
    return on_cuda(conftest.sweep(*axes, **kwargs))


def backend_fixture(pairs: list):
    """A `backend` fixture over (backend, device) pairs with conftest's ids, the CUDA pairs
    marked gpu."""
    params = [pytest.param(p, id=f"{p[0]}-{p[1]}", marks=GPU if is_cuda_pair(p) else ()) for p in pairs]

    @pytest.fixture(params=params, name="backend")
    def backend(request):
        return request.param

    return backend
