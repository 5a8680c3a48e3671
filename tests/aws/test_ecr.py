"""Amazon ECR: login tokens, repositories, registry names."""

import base64

import boto3
import pytest
from moto import mock_aws

from scripts.aws import ecr
from scripts.containers import images


def test_decode_authorization_token():
    assert ecr.decode_authorization_token(base64.b64encode(b"AWS:secret:with:colons").decode()) == (
        "AWS", "secret:with:colons",
    )  # fmt: skip
    with pytest.raises(ValueError, match="password"):
        ecr.decode_authorization_token(base64.b64encode(b"nothing").decode())


@mock_aws
def test_ensure_repositories_creates_only_the_missing_ones_and_login_uses_the_token(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    client = boto3.client("ecr", region_name="eu-west-1")
    client.create_repository(repositoryName=images.repository("train"))

    created = ecr.ensure_repositories(client, [images.repository("train"), images.repository("serve")])

    assert created == [images.repository("serve")]
    names = {repo["repositoryName"] for repo in client.describe_repositories()["repositories"]}
    assert names == {images.repository("train"), images.repository("serve")}
    user, password = ecr.login_credentials(client)
    assert user == "AWS" and password
