"""Fixtures of the launcher tests.

``aws`` gives each test a clean account on the session's moto server (``moto_url``, in the root
``conftest.py``), reached through ``AWS_ENDPOINT_URL`` as boto3 and the SageMaker SDK honour it,
with telemetry off; ``pushed`` is that account after ``make build push`` and ``make upload-data``.
"""

from __future__ import annotations

import urllib.request

import boto3
import pytest
from aws_helpers import ACCOUNT, BUCKET, REGION, put_fake_image

from scripts.containers import images


@pytest.fixture
def aws(moto_url, monkeypatch, tmp_path) -> str:
    """A clean moto account reached through the standard variables; returns the endpoint URL."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")).close()
    sdk_config = tmp_path / "sagemaker-config.yaml"
    sdk_config.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n"
                          "      TelemetryOptOut: true\n")
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "ROLE_ARN", "BUCKET",
                 "S3_PREFIX", "LAUNCH_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)  # what plain boto3 clients read
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(sdk_config))
    monkeypatch.chdir(tmp_path)  # no stray launch.toml, outputs land in tmp
    return moto_url




@pytest.fixture
def pushed(aws) -> dict[str, str]:
    """An account after `make build push` and `make upload-data`: both images in ECR under
    ``latest``, the bucket with data in it. Returns each image's digest-pinned URI by kind."""
    ecr = boto3.client("ecr")
    uris = {}
    for kind in sorted(images.REPOSITORIES):
        ecr.create_repository(repositoryName=images.repository(kind))
        digest = put_fake_image(ecr, images.repository(kind), "latest")
        uris[kind] = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{images.repository(kind)}@{digest}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="sagemaker-classifier/data/dogImages/train/001.A/0.jpg", Body=b"x")
    return uris
