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
PIP        := $(PY) -m pip --disable-pip-version-check

# Everything the stack writes (vLLM, inductor, Triton, HF, Ray temp) goes under this folder;
# gdn_serve.paths derives each cache location from it.
export GDN_SERVE_CACHE := $(CACHE)

PYTEST_ARGS ?=

.PHONY: help setup run test lint lock bench-stack operator-generate envtest clean

help:
	@echo "make run          set up, then serve the tiny Qwen3.5 model locally (Ctrl-C stops it)"
	@echo "make test         set up, then lint and run the test suite"
	@echo "make lint         ruff + mypy"
	@echo "make bench-stack  vLLM's OpenAI server vs our Ray Serve stack, same machine, one run"
	@echo "make lock         re-resolve requirements/cpu-dev.lock after changing pins"
	@echo "make operator-generate  rewrite the chart's CRD and docs/crd-reference.md from the source"
	@echo "make envtest      operator tests against a real API server (KUBEBUILDER_ASSETS=dir)"
	@echo "make clean        remove .cache (venv, models, caches)"

setup: $(STAMP)

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
test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench-stack: $(STAMP)
	$(VENV)/bin/gdn-serve bench-stack

operator-generate: $(STAMP)
	$(PY) tools/operator_generate.py

envtest: $(STAMP)
	@test -n "$$KUBEBUILDER_ASSETS" || { echo "set KUBEBUILDER_ASSETS to a folder with etcd and kube-apiserver"; exit 2; }
	$(PY) -m pytest tests/operator/test_operator_envtest.py

lock:
	@test -x $(PY) || $(BOOT_PY) -m venv $(VENV)
	$(PY) tools/lock.py

clean:
	rm -rf $(CACHE)
