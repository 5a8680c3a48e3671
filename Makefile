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
# sdk: SageMaker Python SDK v2 local mode, the client one Docker test drives the training image with.
SDK_ENV := $(call stamp,sdk,tests/containers/sdk-requirements.txt)

define make_venv
	rm -rf $(VENV)/$(1)
	$(PYTHON) -m venv $(VENV)/$(1)
	$(VENV)/$(1)/bin/pip install --quiet --disable-pip-version-check --require-hashes --no-deps $(3) -r $(2)
	touch $@
endef

$(TRAIN_ENV):
	$(call make_venv,train,docker/train/requirements.txt,)

# PyTorch's CPU index only when no local wheel (pip's find-links, TORCH_FIND_LINKS) has the pinned torch.
SERVE_TORCH_INDEX = $(shell PIP_FIND_LINKS="$(TORCH_FIND_LINKS) $$PIP_FIND_LINKS" $(PYTHON) -m scripts.containers.build serve --print-torch-index $(TORCH_CPU_INDEX))
$(SERVE_ENV):
	$(call make_venv,serve,docker/serve/requirements.txt,$(if $(SERVE_TORCH_INDEX),--extra-index-url $(SERVE_TORCH_INDEX)) $(if $(TORCH_FIND_LINKS),--find-links $(TORCH_FIND_LINKS)))

$(DEV_ENV):
	$(call make_venv,dev,tests/requirements.txt,)

$(SDK_ENV):
	$(call make_venv,sdk,tests/containers/sdk-requirements.txt,)

.PHONY: setup
setup: $(TRAIN_ENV) $(SERVE_ENV) $(DEV_ENV) ## create the train, serve and dev environments (idempotent)

LOCK := uv pip compile --quiet --generate-hashes --no-header --python-version 3.11 --python-platform x86_64-manylinux_2_28 --index-url https://pypi.org/simple
.PHONY: lock
lock: ## re-resolve the pinned requirements files from their .in files (needs uv)
	$(LOCK) docker/train/requirements.in -o docker/train/requirements.txt
	$(LOCK) --extra-index-url $(TORCH_CPU_INDEX) $(if $(TORCH_FIND_LINKS),--find-links $(TORCH_FIND_LINKS)) docker/serve/requirements.in -o docker/serve/requirements.txt
	cd tests && $(LOCK) requirements.in -o requirements.txt
	cd tests/containers && $(LOCK) sdk-requirements.in -o sdk-requirements.txt

# ---------------------------------------------------------------- checks
.PHONY: test
test: setup $(SDK_ENV) ## run the whole test suite (Docker tests included)
	$(DEV_PY) -m pytest $(PYTEST_ARGS)

.PHONY: lint
lint: $(DEV_ENV) ## ruff
	$(VENV)/dev/bin/ruff check code scripts tests

.PHONY: bench
bench: bench-train bench-serve ## every benchmark: results in benchmarks/*.md (summarised in the README)

# ---------------------------------------------------------------- serving
.PHONY: serve-local
serve-local: $(SERVE_ENV) ## serve an artifact on the host with the real model server: MODEL=<folder> [PORT=8080]
	@test -d "$(MODEL)" || { echo "usage: make serve-local MODEL=<artifact folder (model.pt2, classes.json, ...)> [PORT=8080]" >&2; exit 2; }
	SAGEMAKER_BIND_TO_PORT=$(or $(PORT),8080) SERVE_BIND_HOST=$${SERVE_BIND_HOST:-127.0.0.1} \
		exec $(SERVE_PY) code/serve.py serve --model-dir "$(MODEL)"

.PHONY: bench-serve
bench-serve: $(DEV_ENV) $(SERVE_ENV) ## serving latency vs bare forward, throughput per workers, startup: benchmarks/serve.md [MODEL=]
	$(DEV_PY) -m scripts.bench.serve run $(if $(MODEL),--model-dir "$(MODEL)")

# ---------------------------------------------------------------- on AWS (README "On AWS")
# Settings: AWS_PROFILE, AWS_REGION, ROLE_ARN, BUCKET (and S3_PREFIX), as variables
# (make tune ROLE_ARN=... BUCKET=...), environment variables, or launch.toml (launch.example.toml).
# Every launcher checks them, the credentials, the image and the data before it creates anything.
ENDPOINT ?= sagemaker-classifier
HP_FILE ?= $(wildcard runs/aws/best-hyperparameters.json)

.PHONY: upload-data
upload-data: $(DEV_ENV) ## put dogImages in S3: downloaded, or DATA=<ImageFolder folder or .zip>; resumable
	$(DEV_PY) -m scripts.aws.upload_data $(if $(DATA),--data "$(DATA)",--download)

# INSTANCE_TYPE=ml.g5.12xlarge INSTANCE_COUNT=2: a job (or each tuning trial) on several GPUs and instances.
JOB_COMPUTE = $(if $(INSTANCE_TYPE),--instance-type $(INSTANCE_TYPE)) $(if $(INSTANCE_COUNT),--instance-count $(INSTANCE_COUNT))

.PHONY: tune
tune: $(DEV_ENV) ## SageMaker tuning job: TUNE_ARGS="--strategy Hyperband --max-jobs 12 --no-wait", HP= static
	$(DEV_PY) -m scripts.aws.tune $(JOB_COMPUTE) $(TUNE_ARGS) -- $(HP)

.PHONY: train
train: $(DEV_ENV) ## SageMaker training job, Debugger + profiler + spot: HP_FILE=<tuner result> HP="--epochs 20" TRAIN_ARGS= [INSTANCE_COUNT=2]
	$(DEV_PY) -m scripts.aws.train_job $(if $(HP_FILE),--hyperparameters-file "$(HP_FILE)") $(JOB_COMPUTE) $(TRAIN_ARGS) -- $(HP)

.PHONY: deploy
deploy: $(DEV_ENV) ## create or update ENDPOINT from the last `make train` (or TRAINING_JOB=, MODEL_DATA=s3://, MODEL=<tar.gz>)
	scripts/deploy.sh deploy --endpoint "$(ENDPOINT)" $(if $(TRAINING_JOB),--training-job "$(TRAINING_JOB)") \
		$(if $(MODEL_DATA),--model-data "$(MODEL_DATA)") $(if $(MODEL),--model-tar "$(MODEL)") $(DEPLOY_ARGS)

.PHONY: invoke
invoke: $(DEV_ENV) ## top-k breeds of IMAGE=<file> from ENDPOINT (or from URL=http://127.0.0.1:8080), K=5
	@test -n "$(IMAGE)" || { echo "usage: make invoke IMAGE=<image file> [ENDPOINT=... | URL=...] [K=3]"; exit 2; }
	$(DEV_PY) -m scripts.aws.invoke "$(IMAGE)" $(if $(URL),--url "$(URL)",--endpoint "$(ENDPOINT)") $(if $(K),--k $(K))

.PHONY: teardown
teardown: $(DEV_ENV) ## delete ENDPOINT, its endpoint config and its model
	scripts/deploy.sh teardown --endpoint "$(ENDPOINT)"

# ---------------------------------------------------------------- debugging report
# Written next to a local run's outputs, or under runs/aws/ (git-ignored) for a SageMaker job.
REPORT ?= $(if $(RUN),$(patsubst %/,%,$(RUN))/report.html,runs/aws/$(JOB)-report.html)
.PHONY: report
report: $(DEV_ENV) ## HTML debugging report: make report RUN=<OUT folder> | JOB=<training job name> [REPORT=file.html]
	@test -n "$(RUN)$(JOB)" || { echo "usage: make report RUN=<OUT folder of a local run> | JOB=<training job name> [REPORT=file.html]" >&2; exit 2; }
	$(DEV_PY) -m scripts.report $(if $(RUN),--run $(RUN),--job $(JOB)) --out $(REPORT) $(if $(TENSORS_CACHE),--tensors-cache $(TENSORS_CACHE))

# ---------------------------------------------------------------- training (code/train.py)
.PHONY: train-local
train-local: $(TRAIN_ENV) ## train on the host as SageMaker would: make train-local DATA=dir OUT=dir [NPROC=2] HP="--epochs 2 ..."
	@test -n "$(DATA)" -a -n "$(OUT)" || { echo 'usage: make train-local DATA=<folder with train/ valid/ test/> OUT=<folder> [NPROC=2] HP="--epochs 2 --model-name resnet18"' >&2; exit 2; }
	$(TRAIN_PY) -m scripts.local.train --data "$(DATA)" --out "$(OUT)" $(if $(NPROC),--nproc $(NPROC)) $(HP)

.PHONY: bench-train
bench-train: $(TRAIN_ENV) ## training benchmark (smdebug hook cost, loader vs model step) -> benchmarks/train.md
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

.PHONY: push
push: $(DEV_ENV) ## create missing ECR repositories, log in, tag and push both images (AWS settings as for train)
	$(DEV_PY) -m scripts.containers.push train serve

.PHONY: local-train
local-train: ## train in the training container: make local-train DATA=<train/ valid/ test/> OUT=<dir> [INSTANCES=2] HP="--epochs 2"
	@test -n "$(DATA)" -a -n "$(OUT)" || { echo "usage: make local-train DATA=<folder> OUT=<folder> [INSTANCES=2] [HP=...]"; exit 2; }
	$(PYTHON) -m scripts.containers.local_mode train --data "$(DATA)" --out "$(OUT)" $(if $(INSTANCES),--instances $(INSTANCES)) $(HP)

.PHONY: local-serve
local-serve: ## serve a model.tar.gz in the serving container: make local-serve MODEL=<model.tar.gz> PORT=8080
	@test -n "$(MODEL)" || { echo "usage: make local-serve MODEL=<model.tar.gz or folder> [PORT=8080]"; exit 2; }
	$(PYTHON) -m scripts.containers.local_mode serve --model "$(MODEL)" --port $(PORT)

.PHONY: demo
demo: $(DEV_ENV) ## end to end in containers: sample data (or DATA=dogImages), build, train, serve, predict top-5
	$(DEV_PY) -m scripts.demo $(if $(DATA),--data "$(DATA)") $(if $(HP),-- $(HP))

.PHONY: engine-stop
engine-stop: ## stop the private Docker engine if one was left running
	$(PYTHON) -m scripts.engine stop
