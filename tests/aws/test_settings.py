"""Launcher configuration: sources, precedence, and clear errors before anything is created."""

import argparse

import pytest
from aws_helpers import ACCOUNT, BUCKET, REGION, ROLE_ARN, put_fake_image

from scripts import REPO_ROOT
from scripts.aws import ecr, settings
from scripts.aws.settings import ConfigError, LaunchConfig
from scripts.containers import images, push


def parse(argv):
    parser = argparse.ArgumentParser()
    settings.add_config_arguments(parser)
    return parser.parse_args(argv)


def test_options_beat_environment_which_beats_the_file():
    values = settings.resolve_settings(
        {"region": "eu-west-1", "bucket": None, "role_arn": ""},
        {"AWS_REGION": "us-west-2", "BUCKET": "env-bucket", "AWS_DEFAULT_REGION": "ap-south-1"},
        {"region": "sa-east-1", "bucket": "file-bucket", "role_arn": ROLE_ARN, "prefix": "p"},
    )
    assert values == {"region": "eu-west-1", "bucket": "env-bucket", "role_arn": ROLE_ARN, "prefix": "p"}


def test_aws_region_wins_over_aws_default_region_and_blank_values_are_unset():
    values = settings.resolve_settings({}, {"AWS_REGION": " ", "AWS_DEFAULT_REGION": "eu-central-1"}, {})
    assert values == {"region": "eu-central-1"}


def test_validate_lists_every_missing_setting_at_once():
    with pytest.raises(ConfigError) as error:
        settings.validate({}, needs=("role_arn", "bucket"))
    message = str(error.value)
    assert "AWS_REGION" in message and "ROLE_ARN" in message and "BUCKET" in message


@pytest.mark.parametrize(("values", "expected"), [
    ({"role_arn": "my-role"}, "not an IAM role ARN"),
    ({"bucket": "s3://my-bucket/data"}, "use 'my-bucket'"),
    ({"bucket": "My_Bucket"}, "not a valid S3 bucket name"),
])
def test_validate_names_malformed_values(values, expected):
    with pytest.raises(ConfigError, match=expected):
        settings.validate({"region": REGION, **values})


def test_validate_builds_the_config_and_s3_uris():
    values = {"region": REGION, "role_arn": ROLE_ARN, "bucket": BUCKET, "prefix": "/exp/"}
    config = settings.validate(values, needs=("role_arn", "bucket"))
    assert config == LaunchConfig(region=REGION, role_arn=ROLE_ARN, bucket=BUCKET, prefix="exp")
    assert config.s3_uri("data", "dogImages/") == f"s3://{BUCKET}/exp/data/dogImages"


def test_config_file_is_read_and_checked(tmp_path):
    good = tmp_path / "launch.toml"
    good.write_text(f'region = "{REGION}"\nrole_arn = "{ROLE_ARN}"\nbucket = "{BUCKET}"\n')
    assert settings.read_config_file(good)["bucket"] == BUCKET
    bad = tmp_path / "bad.toml"
    bad.write_text('bucket = "b"\nrole = "x"\n')
    with pytest.raises(ConfigError, match=r"unknown keys \['role'\]"):
        settings.read_config_file(bad)
    with pytest.raises(ConfigError, match="not found"):
        settings.read_config_file(tmp_path / "missing.toml")


def test_example_config_file_holds_only_known_settings():
    values = settings.read_config_file(REPO_ROOT / "launch.example.toml")
    settings.validate(values, needs=("role_arn", "bucket"))


def test_connect_reads_launch_toml_and_finds_the_account(aws, tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    toml = f'region = "{REGION}"\nrole_arn = "{ROLE_ARN}"\nbucket = "{BUCKET}"\n'
    (tmp_path / "launch.toml").write_text(toml)
    context = settings.connect(parse([]), needs=("role_arn", "bucket"))
    assert context.account == ACCOUNT
    assert context.config.bucket == BUCKET and context.config.region == REGION


def test_connect_without_credentials_fails_before_any_call(aws, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match="no AWS credentials found"):
        settings.connect(parse(["--role-arn", ROLE_ARN, "--bucket", BUCKET]), needs=("role_arn", "bucket"))


def test_connect_with_an_unknown_profile_names_it(aws):
    with pytest.raises(ConfigError, match="'nobody' not found"):
        settings.connect(parse(["--profile", "nobody"]))


def test_timestamped_names_fit_the_limit():
    name = settings.timestamped_name("a-very-long-tuning-job-base-name", max_length=32)
    assert len(name) <= 32 and name.startswith("a-very-long-")


def test_pushed_images_resolve_to_their_digest_and_missing_ones_are_named(aws):
    client = settings.connect(parse([])).client("ecr")
    client.create_repository(repositoryName=images.repository("train"))
    digest = put_fake_image(client, images.repository("train"), "latest")
    uri = ecr.pinned_image_uri(client, ACCOUNT, REGION, "train", "latest")
    assert uri == f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{images.repository('train')}@{digest}"
    with pytest.raises(settings.LaunchError, match=r"sagemaker-classifier-train:v2 is not in ECR"):
        ecr.pinned_image_uri(client, ACCOUNT, REGION, "train", "v2")
    with pytest.raises(settings.LaunchError, match="make build push"):
        ecr.pinned_image_uri(client, ACCOUNT, REGION, "serve", "latest")


def test_make_push_pushes_where_the_launchers_launch(aws, tmp_path, monkeypatch, capsys):
    """push reads the launchers' settings: launch.toml's region here, the account from STS."""
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    (tmp_path / "launch.toml").write_text('region = "eu-west-1"\n')
    monkeypatch.setenv("DOCKER", str(tmp_path / "no-docker"))  # stop at Docker, after the settings
    with pytest.raises(SystemExit, match="no-docker is not an executable Docker client"):
        push.main(["serve"])
    assert f"[push] to {ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com" in capsys.readouterr().err


def test_make_push_without_a_region_says_so_before_touching_docker(aws, monkeypatch):
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(SystemExit, match="error: no AWS region: set AWS_REGION"):
        push.main([])
