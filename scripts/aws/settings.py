"""Where the launchers act: the AWS profile and region, the SageMaker role and the S3 bucket.

Each setting is read from the first place that has it:

1. a command-line option (``--region``, ``--role-arn``, ``--bucket``, ``--prefix``, ``--profile``);
2. an environment variable (``AWS_REGION`` or ``AWS_DEFAULT_REGION``, ``ROLE_ARN``, ``BUCKET``,
   ``S3_PREFIX``, ``AWS_PROFILE``), which is how ``make tune ROLE_ARN=... BUCKET=...`` passes them;
3. a TOML file: ``--config FILE``, else ``$LAUNCH_CONFIG``, else ``launch.toml`` in the current
   folder when it exists (see ``launch.example.toml``);
4. for the region only, the AWS profile's own region.

``connect`` checks everything (settings, then credentials with STS) before a launcher creates
anything, and names every problem at once.
"""

from __future__ import annotations

import argparse
import os
import re
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import boto3
import botocore.exceptions

DEFAULT_PREFIX = "sagemaker-classifier"
DEFAULT_DATASET = "dogImages"
DEFAULT_CONFIG_FILE = "launch.toml"
# What the launchers record on this machine (git-ignored): the last training job, the tuner's result.
RUNS_DIR = Path("runs/aws")
LAST_TRAINING_JOB_FILE = RUNS_DIR / "last-training-job.json"
BEST_HYPERPARAMETERS_FILE = RUNS_DIR / "best-hyperparameters.json"
CONFIG_FILE_VARIABLE = "LAUNCH_CONFIG"

# Setting -> the environment variables that carry it, first one wins.
ENVIRONMENT_VARIABLES: dict[str, tuple[str, ...]] = {
    "profile": ("AWS_PROFILE",),
    "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "role_arn": ("ROLE_ARN",),
    "bucket": ("BUCKET",),
    "prefix": ("S3_PREFIX",),
}
SETTINGS = tuple(ENVIRONMENT_VARIABLES)

# The patterns of the SageMaker API (RoleArn) and of S3 bucket names.
ROLE_ARN_PATTERN = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$")
BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


class LaunchError(Exception):
    """A problem the user can fix; the launchers print it and exit without a traceback."""


class ConfigError(LaunchError):
    pass


# What a launcher's command line reports as one "error: ..." line instead of a traceback:
# our own checks, and AWS refusing a call (access denied, validation, throttling, no network).
USER_ERRORS = (LaunchError, botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)


@dataclass(frozen=True)
class LaunchConfig:
    region: str
    role_arn: str | None = None
    bucket: str | None = None
    prefix: str = DEFAULT_PREFIX
    profile: str | None = None

    def s3_uri(self, *parts: str) -> str:
        """``s3://<bucket>/<prefix>/<parts...>``."""
        if not self.bucket:
            raise ConfigError("no S3 bucket configured (BUCKET)")
        keys = [self.prefix.strip("/"), *(part.strip("/") for part in parts)]
        return "s3://" + "/".join([self.bucket, *(key for key in keys if key)])

    # The project's S3 layout under s3://<bucket>/<prefix>/, defined here once.
    def data_uri(self, dataset: str = DEFAULT_DATASET) -> str:
        """The uploaded ImageFolder dataset (``train/``, ``valid/``, ``test/``)."""
        return self.s3_uri("data", dataset)

    def output_uri(self, purpose: str) -> str:
        """Job outputs (``training`` or ``tuning``); SageMaker adds ``<job name>/...`` below."""
        return self.s3_uri(purpose)

    def checkpoint_uri(self, job_name: str) -> str:
        return self.s3_uri("checkpoints", job_name)

    def model_upload_uri(self, digest: str) -> str:
        """Where a local ``model.tar.gz`` is uploaded for deployment, keyed by its content."""
        return self.s3_uri("models", digest, "model.tar.gz")


@dataclass(frozen=True)
class AwsContext:
    """A checked configuration with the session and account it resolved to."""

    config: LaunchConfig
    session: boto3.Session
    account: str

    def client(self, service: str):
        return self.session.client(service, region_name=self.config.region)


def read_config_file(path: str | Path) -> dict[str, str]:
    """The settings of a TOML file: top-level keys among ``SETTINGS``, string values."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as error:
        raise ConfigError(f"config file not found: {path}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from error
    unknown = sorted(set(data) - set(SETTINGS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown keys {unknown}; expected some of {list(SETTINGS)}")
    not_strings = sorted(key for key, value in data.items() if not isinstance(value, str))
    if not_strings:
        raise ConfigError(f"config file {path}: values of {not_strings} must be strings")
    return data


def config_file_path(option: str | None, environ: Mapping[str, str]) -> Path | None:
    """The config file to read: the option, else ``$LAUNCH_CONFIG``, else ``launch.toml`` if present."""
    if option:
        return Path(option)
    if environ.get(CONFIG_FILE_VARIABLE):
        return Path(environ[CONFIG_FILE_VARIABLE])
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def resolve_settings(
    options: Mapping[str, str | None], environ: Mapping[str, str], file_values: Mapping[str, str]
) -> dict[str, str]:
    """Merges the three sources (options, then environment, then file); empty values count as unset."""
    settings = {}
    for name, variables in ENVIRONMENT_VARIABLES.items():
        candidates = [options.get(name), *(environ.get(v) for v in variables), file_values.get(name)]
        value = next((c.strip() for c in candidates if c and c.strip()), None)
        if value is not None:
            settings[name] = value
    return settings


def validate(settings: Mapping[str, str], needs: Iterable[str] = ()) -> LaunchConfig:
    """A ``LaunchConfig`` from resolved settings, or one ``ConfigError`` listing every problem.

    ``needs`` names the settings this launcher cannot do without (``role_arn``, ``bucket``).
    """
    problems = []
    if not settings.get("region"):
        problems.append("no AWS region: set AWS_REGION (or a region in your AWS profile, or --region)")
    role_arn, bucket = settings.get("role_arn"), settings.get("bucket")
    if "role_arn" in needs and not role_arn:
        problems.append(
            "no SageMaker execution role: set ROLE_ARN=arn:aws:iam::<account>:role/<name> (or --role-arn)"
        )
    if role_arn and not ROLE_ARN_PATTERN.match(role_arn):
        problems.append(f"ROLE_ARN {role_arn!r} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)")
    if "bucket" in needs and not bucket:
        problems.append("no S3 bucket: set BUCKET=<bucket name> (or --bucket)")
    if bucket and bucket.startswith("s3://"):
        problems.append(f"BUCKET must be a bucket name, not a URI: use {bucket[5:].split('/')[0]!r}")
    elif bucket and not BUCKET_PATTERN.match(bucket):
        problems.append(f"BUCKET {bucket!r} is not a valid S3 bucket name")
    if problems:
        raise ConfigError("; ".join(problems))
    return LaunchConfig(
        region=settings["region"],
        role_arn=role_arn,
        bucket=bucket,
        prefix=settings.get("prefix", DEFAULT_PREFIX).strip("/"),
        profile=settings.get("profile"),
    )


def open_session(profile: str | None, region: str | None) -> boto3.Session:
    try:
        return boto3.Session(profile_name=profile, region_name=region)
    except botocore.exceptions.ProfileNotFound as error:
        raise ConfigError(f"AWS profile {profile!r} not found in your AWS config files") from error


def caller_account(session: boto3.Session, region: str) -> str:
    """The account of the session's credentials, checked with STS (a call that creates nothing)."""
    if session.get_credentials() is None:
        raise ConfigError(
            "no AWS credentials found: run `aws configure` (or `aws sso login`), "
            "or set AWS_PROFILE / AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    try:
        return session.client("sts", region_name=region).get_caller_identity()["Account"]
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
        raise ConfigError(f"the AWS credentials were refused by STS: {error}") from error


def connect(args: argparse.Namespace, needs: Iterable[str] = ()) -> AwsContext:
    """Resolves, validates and checks the configuration of a launcher's parsed arguments."""
    options = {name: getattr(args, name, None) for name in SETTINGS}
    path = config_file_path(getattr(args, "config", None), os.environ)
    file_values = read_config_file(path) if path else {}
    settings = resolve_settings(options, os.environ, file_values)
    session = open_session(settings.get("profile"), settings.get("region"))
    if not settings.get("region") and session.region_name:
        settings["region"] = session.region_name
    config = validate(settings, needs)
    return AwsContext(config=config, session=session, account=caller_account(session, config.region))


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every launcher takes (each also readable from the environment or the file)."""
    group = parser.add_argument_group("AWS configuration (options, else environment, else config file)")
    group.add_argument("--config", help=f"TOML file with the settings (default: ${CONFIG_FILE_VARIABLE} "
                                        f"or ./{DEFAULT_CONFIG_FILE})")
    group.add_argument("--profile", help="AWS profile (AWS_PROFILE)")
    group.add_argument("--region", help="AWS region (AWS_REGION)")
    group.add_argument("--role-arn", help="SageMaker execution role ARN (ROLE_ARN)")
    group.add_argument("--bucket", help="S3 bucket name (BUCKET)")
    group.add_argument("--prefix", help=f"S3 key prefix in the bucket (S3_PREFIX, default {DEFAULT_PREFIX})")


def timestamped_name(base: str, max_length: int = 63) -> str:
    """``<base>-YYYYmmdd-HHMMSS`` (UTC), cut to SageMaker's name limits."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{base[: max_length - len(stamp) - 1].rstrip('-')}-{stamp}"
