# The front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
TRAIN_PY := $(VENV)/train/bin/python
SERVE_PY := $(VENV)/serve/bin/python
DEV_PY := $(VENV)/dev/bin/python
LAUNCH_PY := $(VENV)/launch/bin/python
LAUNCH_TEST_PY := $(VENV)/launch-test/bin/python
# The serving image's CPU-only torch: from PyTorch's CPU index, or a local wheelhouse (TORCH_FIND_LINKS).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_FIND_LINKS ?=
export PYTHONPATH := $(CURDIR)/code:$(CURDIR)

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

# ---------------------------------------------------------------- environments
# Each environment is built from hash-locked requirements files and rebuilt when their content
# changes (the stamp's name carries their hash; mtimes from git checkouts mean nothing).
# train: the training image's Python; serve: the serving image's; dev: the trainer, serving, container
# and report tests; launch: the launchers, the report and the demo (no torch: any Linux or macOS machine);
# launch-test: the launch lock plus pytest and moto, where the launcher tests run.
stamp = $(VENV)/$(1)/.installed-$(shell cat $(2) | sha256sum | cut -c1-16)
TRAIN_ENV := $(call stamp,train,docker/train/requirements.txt)
# The host's serve environment is the serving image's torch variant: it serves every SERVE_ENGINE.
SERVE_ENV := $(call stamp,serve,docker/serve/requirements-torch.txt)
DEV_ENV := $(call stamp,dev,tests/requirements.txt)
LAUNCH_ENV := $(call stamp,launch,scripts/requirements.txt)
LAUNCH_TEST_ENV := $(call stamp,launch-test,scripts/requirements.txt tests/requirements-launch.txt)
# sdk: SageMaker Python SDK v2 local mode, the client one Docker test drives the training image with.
SDK_ENV := $(call stamp,sdk,tests/containers/sdk-requirements.txt)

# make_venv,<env>,<requirements files>,<pip options>,<venv_support options>[,<peer env>]: with a peer
# (train and dev pin the same CUDA torch), the new environment's identical big files become hard links
# to the peer's (scripts/engine/venv_links.py): 5 GB less on disk.
define make_venv
	rm -rf $(VENV)/$(1)
	$(PYTHON) -m scripts.engine.venv_support $(4)
	$(PYTHON) -m venv $(VENV)/$(1)
	$(VENV)/$(1)/bin/pip install --quiet --disable-pip-version-check --require-hashes --no-deps $(3) $(addprefix -r ,$(2))
	$(if $(5),$(PYTHON) -m scripts.engine.venv_links $(VENV)/$(1) $(VENV)/$(5))
	touch $@
endef

$(TRAIN_ENV):
	$(call make_venv,train,docker/train/requirements.txt,,--compiles,dev)

# PyTorch's CPU index only when no local wheel (pip's find-links, TORCH_FIND_LINKS) has the pinned torch.
SERVE_TORCH_INDEX = $(shell PIP_FIND_LINKS="$(TORCH_FIND_LINKS) $$PIP_FIND_LINKS" $(PYTHON) -m scripts.containers.build serve --print-torch-index $(TORCH_CPU_INDEX))
$(SERVE_ENV):
	$(call make_venv,serve,docker/serve/requirements-torch.txt,$(if $(SERVE_TORCH_INDEX),--extra-index-url $(SERVE_TORCH_INDEX)) $(if $(TORCH_FIND_LINKS),--find-links $(TORCH_FIND_LINKS)))

$(DEV_ENV):
	$(call make_venv,dev,tests/requirements.txt,,--compiles,train)

$(SDK_ENV):
	$(call make_venv,sdk,tests/containers/sdk-requirements.txt,)

# The launch lock has wheels for Python 3.11 and 3.12 only (smdebug's numpy<2 has none for 3.13).
# --no-compile: modules are byte-compiled when first imported, not all 110 MB of them at install.
check_launch_python = @$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] in ((3, 11), (3, 12)) else \
	f"the launch environment needs Python 3.11 or 3.12 ({sys.executable} is {sys.version.split()[0]}): make setup-launch PYTHON=python3.12")'
$(LAUNCH_ENV):
	$(check_launch_python)
	$(call make_venv,launch,scripts/requirements.txt,--no-compile)

$(LAUNCH_TEST_ENV):
	$(check_launch_python)
	$(call make_venv,launch-test,scripts/requirements.txt tests/requirements-launch.txt,--no-compile)

.PHONY: setup setup-launch
setup: $(TRAIN_ENV) $(SERVE_ENV) $(DEV_ENV) $(LAUNCH_ENV) $(LAUNCH_TEST_ENV) ## create every environment (idempotent)

setup-launch: $(LAUNCH_ENV) ## create only the launchers' environment (no torch; Linux or macOS): enough for AWS and make demo

LOCK := uv pip compile --quiet --generate-hashes --no-header --python-version 3.11 --python-platform x86_64-manylinux_2_28 --index-url https://pypi.org/simple
# The launch lock and its test tools' lock are universal: one file for Linux and macOS, x86_64 and arm64.
UNIVERSAL_LOCK := uv pip compile --quiet --generate-hashes --no-header --python-version 3.11 --universal --index-url https://pypi.org/simple
# Declared dependencies the launchers never import, left out of the launch lock (why: scripts/requirements.in).
LAUNCH_LEFT_OUT := scipy pyinstrument pyinstrument-cext
LAUNCH_PLATFORMS := x86_64-manylinux_2_28 aarch64-manylinux_2_28 x86_64-apple-darwin aarch64-apple-darwin
.PHONY: lock check-launch-lock
lock: ## re-resolve the pinned requirements files from their .in files (needs uv)
	$(LOCK) docker/train/requirements.in -o docker/train/requirements.txt
	$(LOCK) docker/serve/requirements.in -o docker/serve/requirements.txt
	$(LOCK) --extra-index-url $(TORCH_CPU_INDEX) $(if $(TORCH_FIND_LINKS),--find-links $(TORCH_FIND_LINKS)) \
		-c docker/serve/requirements.txt docker/serve/requirements-torch.in -o docker/serve/requirements-torch.txt
	$(UNIVERSAL_LOCK) $(addprefix --no-emit-package ,$(LAUNCH_LEFT_OUT)) scripts/requirements.in -o scripts/requirements.txt
	cd tests && $(UNIVERSAL_LOCK) -c ../scripts/requirements.txt \
		$$(sed -n 's/^\([A-Za-z0-9._-]*\)==.*/--no-emit-package \1/p' ../scripts/requirements.txt) \
		requirements-launch.in -o requirements-launch.txt
	cd tests && $(LOCK) -c ../scripts/requirements.txt requirements.in -o requirements.txt
	cd tests/containers && $(LOCK) sdk-requirements.in -o sdk-requirements.txt
	$(MAKE) --no-print-directory check-launch-lock

check-launch-lock: ## check that every launch pin has a wheel for Linux and macOS, x86_64 and arm64 (needs uv)
	@rm -rf build/lock-check
	@for python in 3.11 3.12; do for platform in $(LAUNCH_PLATFORMS); do \
		uv pip install --quiet --dry-run --no-deps --only-binary :all: --require-hashes --index-url https://pypi.org/simple \
			--python-version $$python --python-platform $$platform --target build/lock-check \
			-r scripts/requirements.txt || exit 1; \
		echo "launch lock: a wheel for every pin on $$platform, Python $$python"; \
	done; done; rm -rf build/lock-check

# ---------------------------------------------------------------- checks
# The launcher tests run in .venv/launch-test (the launch lock plus pytest and moto: no torch), so they
# prove the launchers work where users run them; everything else runs in .venv/dev. Both runs go on
# when one fails, and the target fails if either did. PYTEST_ARGS: options for both (-x, -k ..., not paths);
# a run that selects no test (pytest's exit 5) is no failure.
LAUNCHER_TESTS := tests/test_launch_environment.py tests/aws tests/classifier tests/report/test_report_job.py
define run_tests
	@status=0; \
	for run in "$(LAUNCH_TEST_PY) -m pytest $(LAUNCHER_TESTS)" "$(DEV_PY) -m pytest $(addprefix --ignore=,$(LAUNCHER_TESTS))"; do \
		echo "==> $$run $(1)"; \
		eval "$$run $(1)"; code=$$?; \
		if [ $$code -ne 0 ] && [ $$code -ne 5 ]; then status=$$code; fi; \
	done; \
	exit $$status
endef

.PHONY: test test-fast
test: setup $(SDK_ENV) ## run the whole test suite (Docker tests included); PYTEST_ARGS="-x -k ..." for both runs
	$(call run_tests,$(PYTEST_ARGS))

test-fast: setup ## everything but the Docker tests (the inner loop)
	$(call run_tests,-m 'not docker' $(PYTEST_ARGS))

# runs/, old image tags (all but latest and the git SHA) and, confirmed, the private engine's data.
.PHONY: clean
clean: ## remove runs/ and old image tags; the private Docker engine's data if you confirm (CONFIRM=yes|no)
	$(PYTHON) -m scripts.clean $(if $(CONFIRM),--engine-data $(CONFIRM))

.PHONY: lint
lint: $(DEV_ENV) ## ruff
	$(VENV)/dev/bin/ruff check code scripts tests

.PHONY: bench
bench: bench-train bench-serve bench-engines ## every benchmark: results in benchmarks/*.md (summarised in the README)

# ---------------------------------------------------------------- serving
# Local servers listen on this machine only; BIND_HOST=0.0.0.0 exposes them to the network.
BIND_HOST ?= 127.0.0.1

.PHONY: serve-local
serve-local: $(SERVE_ENV) ## serve an artifact on the host with the real model server: MODEL=<folder> [PORT=8080] [BIND_HOST=]
	@test -d "$(MODEL)" || { echo "usage: make serve-local MODEL=<artifact folder (model.pt2, classes.json, ...)> [PORT=8080] [BIND_HOST=127.0.0.1]" >&2; exit 2; }
	SAGEMAKER_BIND_TO_PORT=$(or $(PORT),8080) SERVE_BIND_HOST=$(BIND_HOST) \
		exec $(SERVE_PY) code/serve.py serve --model-dir "$(MODEL)"

.PHONY: bench-serve
bench-serve: $(DEV_ENV) $(SERVE_ENV) $(TRAIN_ENV) ## torch vs default (int8) engine side by side, images, int8 accuracy: benchmarks/serve.md [MODEL=]
	$(DEV_PY) -m scripts.bench.serve run $(if $(MODEL),--model-dir "$(MODEL)") $(BENCH_ARGS)

.PHONY: bench-engines
bench-engines: $(DEV_ENV) $(SERVE_ENV) ## ONNX Runtime vs OpenVINO, fp32 and int8 (why OpenVINO): benchmarks/engines.md
	$(DEV_PY) -m scripts.bench.engines

# ---------------------------------------------------------------- on AWS (README "On AWS")
# Settings: AWS_PROFILE, AWS_REGION, ROLE_ARN, BUCKET (and S3_PREFIX), as variables
# (make tune ROLE_ARN=... BUCKET=...), environment variables, or launch.toml (launch.example.toml).
# Every launcher checks them, the credentials, the image and the data before it creates anything.
ENDPOINT ?= sagemaker-classifier
HP_FILE ?= $(wildcard runs/aws/best-hyperparameters.json)

.PHONY: upload-data
upload-data: $(LAUNCH_ENV) ## put dogImages in S3: downloaded, or DATA=<ImageFolder folder or .zip>; resumable
	$(LAUNCH_PY) -m scripts.aws.upload_data $(if $(DATA),--data "$(DATA)",--download)

# INSTANCE_TYPE=ml.g5.12xlarge INSTANCE_COUNT=2: a job (or each tuning trial) on several GPUs and instances.
JOB_COMPUTE = $(if $(INSTANCE_TYPE),--instance-type $(INSTANCE_TYPE)) $(if $(INSTANCE_COUNT),--instance-count $(INSTANCE_COUNT))

.PHONY: tune
tune: $(LAUNCH_ENV) ## SageMaker tuning job: TUNE_ARGS="--strategy Hyperband --max-jobs 12 --no-wait", HP= static
	$(LAUNCH_PY) -m scripts.aws.tune $(JOB_COMPUTE) $(TUNE_ARGS) -- $(HP)

.PHONY: train
train: $(LAUNCH_ENV) ## SageMaker training job on spot, its evidence for make report: HP_FILE=<tuner result> HP="--epochs 20" TRAIN_ARGS=--sagemaker-debugger [INSTANCE_COUNT=2]
	$(LAUNCH_PY) -m scripts.aws.train_job $(if $(HP_FILE),--hyperparameters-file "$(HP_FILE)") $(JOB_COMPUTE) $(TRAIN_ARGS) -- $(HP)

.PHONY: deploy
deploy: $(LAUNCH_ENV) ## create or update ENDPOINT from the last `make train` (or TRAINING_JOB=, MODEL_DATA=s3://, MODEL=<tar.gz>)
	LAUNCH_PY=$(LAUNCH_PY) scripts/deploy.sh deploy --endpoint "$(ENDPOINT)" $(if $(TRAINING_JOB),--training-job "$(TRAINING_JOB)") \
		$(if $(MODEL_DATA),--model-data "$(MODEL_DATA)") $(if $(MODEL),--model-tar "$(MODEL)") $(DEPLOY_ARGS)

.PHONY: invoke
invoke: $(LAUNCH_ENV) ## top-k breeds of IMAGE=<file> from ENDPOINT (or from URL=http://127.0.0.1:8080), K=5
	@test -n "$(IMAGE)" || { echo "usage: make invoke IMAGE=<image file> [ENDPOINT=... | URL=...] [K=3]"; exit 2; }
	$(LAUNCH_PY) -m scripts.aws.invoke "$(IMAGE)" $(if $(URL),--url "$(URL)",--endpoint "$(ENDPOINT)") $(if $(K),--k $(K))

.PHONY: teardown
teardown: $(LAUNCH_ENV) ## delete ENDPOINT, its endpoint config and its model
	LAUNCH_PY=$(LAUNCH_PY) scripts/deploy.sh teardown --endpoint "$(ENDPOINT)"

# ---------------------------------------------------------------- debugging report
# Written next to a local run's outputs, or under runs/aws/ (git-ignored) for a SageMaker job.
REPORT ?= $(if $(RUN),$(patsubst %/,%,$(RUN))/report.html,runs/aws/$(JOB)-report.html)
.PHONY: report
report: $(LAUNCH_ENV) ## HTML debugging report: make report RUN=<OUT folder> | JOB=<training job name> [REPORT=file.html] [REPORT_CACHE=dir]
	@test -n "$(RUN)$(JOB)" || { echo "usage: make report RUN=<OUT folder of a local run> | JOB=<training job name> [REPORT=file.html]" >&2; exit 2; }
	$(LAUNCH_PY) -m scripts.report $(if $(RUN),--run $(RUN),--job $(JOB)) --out $(REPORT) $(if $(REPORT_CACHE),--cache $(REPORT_CACHE))

# ---------------------------------------------------------------- training (code/train.py)
.PHONY: train-local
train-local: $(TRAIN_ENV) ## train on the host as SageMaker would: make train-local DATA=dir OUT=dir [NPROC=2] HP="--epochs 2 ..."
	@test -n "$(DATA)" -a -n "$(OUT)" || { echo 'usage: make train-local DATA=<folder with train/ valid/ test/> OUT=<folder> [NPROC=2] HP="--epochs 2 --model-name resnet18"' >&2; exit 2; }
	$(TRAIN_PY) -m scripts.local.train --data "$(DATA)" --out "$(OUT)" $(if $(NPROC),--nproc $(NPROC)) $(HP)

.PHONY: bench-train
bench-train: $(TRAIN_ENV) ## from-scratch recipe vs a plain loop, start-up on 100k images, hook cost -> benchmarks/train.md
	$(TRAIN_PY) -m scripts.bench.train --out benchmarks/train.md

# ---------------------------------------------------------------- containers
# Images: names and tags from scripts/containers/images.py. Docker engine: the one that answers, else (as root)
# a private dockerd under ~/.cache/sagemaker-classifier/docker, stopped again after each target.
# Build options (variables or environment): BASE_IMAGE, PIP_CERT (a CA for pip, passed as a BuildKit
# secret), PIP_INDEX_URL, WHEELHOUSE, TORCH_CPU_INDEX, PRETRAINED_MODELS="resnet50" (bakes ImageNet
# weights into the training image), HTTP(S)_PROXY. Push: to the account and AWS_REGION of the AWS settings.
# (Variables given on make's command line reach the scripts' environment by themselves.)
PORT ?= 8080

.PHONY: build
build: ## build both images for linux/amd64, tagged with the git short SHA and latest
	$(PYTHON) -m scripts.containers.build train serve

.PHONY: build-torch
build-torch: ## the serving image's torch variant (SERVE_ENGINE=torch, older artifacts), tags <sha>-torch and latest-torch
	$(PYTHON) -m scripts.containers.build serve --serve-variant torch

.PHONY: push
push: $(LAUNCH_ENV) ## create missing ECR repositories, log in, tag and push both images (AWS settings as for train)
	$(LAUNCH_PY) -m scripts.containers.push train serve

.PHONY: local-train
local-train: ## train in the training container: make local-train DATA=<train/ valid/ test/> OUT=<dir> [INSTANCES=2] HP="--epochs 2"
	@test -n "$(DATA)" -a -n "$(OUT)" || { echo "usage: make local-train DATA=<folder> OUT=<folder> [INSTANCES=2] [HP=...]"; exit 2; }
	$(PYTHON) -m scripts.containers.local_mode train --data "$(DATA)" --out "$(OUT)" $(if $(INSTANCES),--instances $(INSTANCES)) $(HP)

.PHONY: local-serve
local-serve: ## serve a model.tar.gz in the serving container: make local-serve MODEL=<model.tar.gz> PORT=8080 [BIND_HOST=]
	@test -n "$(MODEL)" || { echo "usage: make local-serve MODEL=<model.tar.gz or folder> [PORT=8080] [BIND_HOST=127.0.0.1]"; exit 2; }
	$(PYTHON) -m scripts.containers.local_mode serve --model "$(MODEL)" --port $(PORT) --bind-host "$(BIND_HOST)"

.PHONY: demo
demo: $(LAUNCH_ENV) ## end to end in containers: sample data (or DATA=dogImages), build, train, serve, predict top-5
	$(LAUNCH_PY) -m scripts.demo $(if $(DATA),--data "$(DATA)") $(if $(HP),-- $(HP))

.PHONY: engine-stop
engine-stop: ## stop the private Docker engine if one was left running
	$(PYTHON) -m scripts.engine stop
