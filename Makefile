# The front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
TRAIN_PY := $(VENV)/train/bin/python
SERVE_PY := $(VENV)/serve/bin/python
DEV_PY := $(VENV)/dev/bin/python
# The serving image's CPU-only torch: from PyTorch's CPU index, or a local wheelhouse (TORCH_FIND_LINKS).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_FIND_LINKS ?=
export PYTHONPATH := $(CURDIR)/code:$(CURDIR)

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

# ---------------------------------------------------------------- environments
# Each environment is built from a hash-locked requirements file and rebuilt when that file's
# content changes (the stamp's name carries its hash; mtimes from git checkouts mean nothing).
# train: the training image's Python; serve: the serving image's; dev: tests, launchers, report.
stamp = $(VENV)/$(1)/.installed-$(shell sha256sum $(2) | cut -c1-16)
TRAIN_ENV := $(call stamp,train,docker/train/requirements.txt)
SERVE_ENV := $(call stamp,serve,docker/serve/requirements.txt)
DEV_ENV := $(call stamp,dev,tests/requirements.txt)

define make_venv
	rm -rf $(VENV)/$(1)
	$(PYTHON) -m venv $(VENV)/$(1)
	$(VENV)/$(1)/bin/pip install --quiet --disable-pip-version-check --require-hashes --no-deps $(3) -r $(2)
	touch $@
endef

$(TRAIN_ENV):
	$(call make_venv,train,docker/train/requirements.txt,)

$(SERVE_ENV):
	$(call make_venv,serve,docker/serve/requirements.txt,--extra-index-url $(TORCH_CPU_INDEX) $(if $(TORCH_FIND_LINKS),--find-links $(TORCH_FIND_LINKS)))

$(DEV_ENV):
	$(call make_venv,dev,tests/requirements.txt,)

.PHONY: setup
setup: $(TRAIN_ENV) $(SERVE_ENV) $(DEV_ENV) ## create the train, serve and dev environments (idempotent)

LOCK := uv pip compile --quiet --generate-hashes --no-header --python-version 3.11 --python-platform x86_64-manylinux_2_28 --index-url https://pypi.org/simple
.PHONY: lock
lock: ## re-resolve the pinned requirements files from their .in files (needs uv)
	$(LOCK) docker/train/requirements.in -o docker/train/requirements.txt
	$(LOCK) --extra-index-url $(TORCH_CPU_INDEX) $(if $(TORCH_FIND_LINKS),--find-links $(TORCH_FIND_LINKS)) docker/serve/requirements.in -o docker/serve/requirements.txt
	cd tests && $(LOCK) requirements.in -o requirements.txt

# ---------------------------------------------------------------- checks
.PHONY: test
test: setup ## run the whole test suite (Docker tests included)
	$(DEV_PY) -m pytest $(PYTEST_ARGS)

.PHONY: lint
lint: $(DEV_ENV) ## ruff
	$(VENV)/dev/bin/ruff check code scripts tests

# ---------------------------------------------------------------- debugging report
REPORT ?= report.html
.PHONY: report
report: $(DEV_ENV) ## HTML debugging report: make report RUN=<OUT folder> | JOB=<training job name> [REPORT=report.html]
	@test -n "$(RUN)$(JOB)" || { echo "usage: make report RUN=<OUT folder of a local run> | JOB=<training job name> [REPORT=file.html]" >&2; exit 2; }
	$(DEV_PY) -m scripts.report $(if $(RUN),--run $(RUN),--job $(JOB)) --out $(REPORT) $(if $(REGION),--region $(REGION)) $(if $(TENSORS_CACHE),--tensors-cache $(TENSORS_CACHE))
