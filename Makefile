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

# ---------------------------------------------------------------- containers
# Images: names and tags from scripts/images.py. Docker engine: the one that answers, else (as root)
# a private dockerd under ~/.cache/sagemaker-classifier/docker, stopped again after each target.
# Build options (variables or environment): BASE_IMAGE, PIP_CERT (a CA for pip, passed as a BuildKit
# secret), PIP_INDEX_URL, WHEELHOUSE, TORCH_CPU_INDEX, PRETRAINED_MODELS="resnet50" (bakes ImageNet
# weights into the training image), HTTP(S)_PROXY. Push: ACCOUNT and REGION, else the AWS configuration.
export BASE_IMAGE PIP_CERT PIP_INDEX_URL WHEELHOUSE TORCH_CPU_INDEX PRETRAINED_MODELS ACCOUNT REGION GPUS
PORT ?= 8080

.PHONY: build
build: ## build both images for linux/amd64, tagged with the git short SHA and latest
	$(PYTHON) -m scripts.docker_build train serve

.PHONY: push
push: $(DEV_ENV) ## create missing ECR repositories, log in, tag and push both images (ACCOUNT=, REGION=)
	$(DEV_PY) -m scripts.ecr push train serve

.PHONY: local-train
local-train: ## train in the training container: make local-train DATA=<train/ valid/ test/> OUT=<dir> HP="--epochs 2"
	@test -n "$(DATA)" -a -n "$(OUT)" || { echo "usage: make local-train DATA=<folder> OUT=<folder> [HP=...]"; exit 2; }
	$(PYTHON) -m scripts.local_mode train --data "$(DATA)" --out "$(OUT)" $(HP)

.PHONY: local-serve
local-serve: ## serve a model.tar.gz in the serving container: make local-serve MODEL=<model.tar.gz> PORT=8080
	@test -n "$(MODEL)" || { echo "usage: make local-serve MODEL=<model.tar.gz or folder> [PORT=8080]"; exit 2; }
	$(PYTHON) -m scripts.local_mode serve --model "$(MODEL)" --port $(PORT)

.PHONY: demo
demo: $(DEV_ENV) ## end to end in containers: sample data (or DATA=dogImages), build, train, serve, predict top-5
	$(DEV_PY) -m scripts.demo $(if $(DATA),--data "$(DATA)") $(if $(HP),-- $(HP))

.PHONY: engine-stop
engine-stop: ## stop the private Docker engine if one was left running
	$(PYTHON) -m scripts.docker_engine stop
