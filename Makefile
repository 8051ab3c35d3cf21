# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# llama-cpp-python (the dev extra's OpenAI-compatible test server) compiles llama.cpp from source. A native
# build uses every instruction the CPU advertises, AMX included, which some VMs do not allow: the server
# then dies with "Illegal instruction" at its first real prompt. It is built once for a portable AVX2
# target and the wheel kept, so a fresh venv (and CI) installs it without compiling again.
LLAMA_VERSION := 0.3.36
LLAMA_WHEELS := $(HOME)/.cache/autointerp/wheels-llama-avx2
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

.PHONY: demo test setup lint install chromium

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch pinned: the CPU build; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q "torch==2.13.0"
	ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || CMAKE_ARGS="$(LLAMA_CMAKE)" \
		$(BIN)/pip wheel -q --no-cache-dir --no-deps -w $(LLAMA_WHEELS) "llama-cpp-python==$(LLAMA_VERSION)"
	$(BIN)/pip install -q --find-links $(LLAMA_WHEELS) --only-binary llama-cpp-python \
		-e ".[local,openai,anthropic,viewer,dev,scale]"
	touch $(STAMP)

install: $(STAMP)

setup: install
	$(BIN)/autointerp setup

demo: setup
	$(BIN)/autointerp demo

# The viewer's browser tests drive Debian's chromium (Playwright's own browser download is not used).
chromium:
	@test -x /usr/bin/chromium || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium)

test: setup chromium
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .
