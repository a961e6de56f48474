# qwen35-stack: `make run` serves the embedded default locally, `make test` runs the suite.
# Both set everything up first. Everything the project writes lives under .cache/.

SHELL := /bin/bash
.DEFAULT_GOAL := help

CACHE      := $(CURDIR)/.cache
VENV       := $(CACHE)/venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
BOOT_PY    ?= $(shell command -v python3.11 || command -v python3)
LOCK       := requirements/cpu-dev.lock
PROMETHEUS := /usr/bin/prometheus
PIP        := $(PY) -m pip --disable-pip-version-check

# Everything the stack writes (vLLM, inductor, Triton, HF, Ray temp) goes under this folder;
# gdn_serve.paths derives each cache location from it.
export GDN_SERVE_CACHE := $(CACHE)

PYTEST_ARGS ?=

.PHONY: help setup run test test-gpu lint lock images push bench-stack loadtest operator-generate envtest clean

help:
	@echo "make run          set up, then serve the tiny Qwen3.5 model locally (Ctrl-C stops it)"
	@echo "make test         set up, then lint and run the test suite"
	@echo "make lint         ruff + mypy"
	@echo "make test-gpu     on a GPU machine: the CUDA vLLM engine tests (tests/gpu; docs/gpu-engine.md)"
	@echo "make bench-stack  vLLM's OpenAI server vs our Ray Serve stack, same machine, one run"
	@echo "make loadtest     Locust against the local stack, or URL= API_KEY= (ARGS=: docs/loadtest.md)"
	@echo "make lock         re-resolve the locks in requirements/ after changing pins (LOCKS=\"cpu-dev operator\": some)"
	@echo "make images       build the operator, CUDA and CPU serving images (Docker, Podman or Buildah; REGISTRY=, TAG=)"
	@echo "make push         push them to REGISTRY (default: images/images.toml's)"
	@echo "make operator-generate  rewrite the chart's CRD and docs/crd-reference.md from the source"
	@echo "make envtest      operator tests against a real API server (KUBEBUILDER_ASSETS=dir)"
	@echo "make clean        remove .cache (venv, models, caches)"

setup: $(STAMP) $(PROMETHEUS)

# Debian's prometheus package brings `prometheus` and `promtool` for the monitoring tests (rule
# checks and unit tests, a real scrape of the local stack). Not on PyPI; installing needs root,
# which developers' machines and CI have here. Its service is not started (no init system).
$(PROMETHEUS):
	@command -v apt-get >/dev/null || { echo "install Debian's prometheus package (promtool)"; exit 2; }
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus

# Re-runs only when the lock or the project metadata changes; otherwise `make` sees the stamp
# and setup costs nothing.
$(STAMP): $(LOCK) pyproject.toml gdn_serve/compat/torchvision_cpu.py
	@test -x $(PY) || $(BOOT_PY) -m venv $(VENV)
	$(PIP) install --quiet --no-deps -r $(LOCK)
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m gdn_serve.compat.torchvision_cpu --install
	@# a reinstall re-maps the editable packages; mypy's cache of the old mapping then reports
	@# modules without their attributes (seen: "gdn_operator has no attribute crd")
	rm -rf $(CACHE)/mypy
	touch $@

run: $(STAMP)
	$(VENV)/bin/gdn-serve run

# Lint first: a change that is not ruff- and mypy-clean does not pass the suite.
test: lint $(PROMETHEUS)
	$(PY) -m pytest $(PYTEST_ARGS)

# On a GPU machine (no venv there): vLLM 0.32 from tools/gpu_engine_prep.sh's pieces, unpacked
# by tools/gpu_engine_device.sh, then the engine tests with the machine's own Python.
test-gpu:
	bash tools/gpu_engine_device.sh -- python3 -m pytest tests/gpu $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench-stack: $(STAMP)
	$(VENV)/bin/gdn-serve bench-stack

# A headless Locust run: against a local stack it starts and stops, or URL= with API_KEY= (the
# key travels in the environment, never on a command line). ARGS go to Locust and the load test.
LOADTEST_ARGS ?= --request-count 200 --warmup-requests 8
loadtest: $(STAMP)
	OPENAI_API_KEY="$${API_KEY:-$$OPENAI_API_KEY}" $(PY) -m gdn_serve.loadtest \
		$(if $(URL),--url $(URL)) $(LOADTEST_ARGS) $(ARGS)

operator-generate: $(STAMP)
	$(PY) tools/operator_generate.py

envtest: $(STAMP)
	@test -n "$$KUBEBUILDER_ASSETS" || { echo "set KUBEBUILDER_ASSETS to a folder with etcd and kube-apiserver"; exit 2; }
	$(PY) -m pytest tests/operator/test_envtest.py

# Every lock (the dev venv's and one per image), or LOCKS="name ..."; the CUDA one needs a
# Python 3.12 (PATH or pyenv) to evaluate its markers.
lock:
	@test -x $(PY) || $(BOOT_PY) -m venv $(VENV)
	$(PY) tools/lock.py $(LOCK_ARGS) $(LOCKS)

# Names, Dockerfiles and locks from images/images.toml; exits 2 with a message where no
# container engine works.
images:
	$(BOOT_PY) tools/images.py build $(IMAGES)

push:
	$(BOOT_PY) tools/images.py push $(IMAGES)

clean:
	rm -rf $(CACHE)
