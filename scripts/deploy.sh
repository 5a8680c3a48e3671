#!/usr/bin/env bash
# Deploy the classifier to a SageMaker endpoint (create or update, wait, smoke test), or tear it down.
#
#   scripts/deploy.sh [--model-data s3://.../model.tar.gz | --model-tar FILE | --training-job NAME]
#                     [--endpoint NAME] [--instance-type ml.m5.large] [--image-tag latest]
#   scripts/deploy.sh teardown [--endpoint NAME]
#
# Settings: AWS_PROFILE, AWS_REGION, ROLE_ARN, BUCKET (or launch.toml). All the work is done by
# scripts/aws/deploy.py (python -m scripts.aws.deploy --help); this is its shell entry point.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${LAUNCH_PY:-$root/.venv/launch/bin/python}"  # make setup-launch
export PYTHONPATH="$root/code:$root${PYTHONPATH:+:$PYTHONPATH}"
command=deploy
if [[ "${1:-}" == "teardown" || "${1:-}" == "deploy" ]]; then
    command="$1"
    shift
fi
exec "$python" -m scripts.aws.deploy "$command" "$@"
