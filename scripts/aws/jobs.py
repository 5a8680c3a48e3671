"""What tuning and training jobs share: image, compute, stopping condition, data, hyperparameters.

Data reaches the container in ``File`` input mode (copied to the instance's volume before the
job starts) or ``FastFile`` (mounted: each file streams from S3 when first read, so training starts
at once and the volume need not hold the dataset). The trainer reads both the same way.

Hyperparameters are checked with the trainer's own parser before a job is created, so a typo
fails here in a second instead of in a container ten minutes later.

Several instances make one data-parallel job (``classifier.distribution``): the request carries the
distribution settings the training toolkit reads, and the data goes to every instance
(``FullyReplicated``) or a share of its files to each (``ShardedByS3Key``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from classifier import metrics
from classifier.dataset import COMBINED_CHANNEL
from classifier.distribution import (
    S3_DATA_DISTRIBUTIONS,
    S3_FULLY_REPLICATED,
    distribution_hyperparameters,
    per_rank_batch_size,
)
from classifier.hyperparameters import as_sagemaker_strings, build_parser, parse_name_value_pairs
from scripts.aws.settings import AwsContext, LaunchError
from scripts.containers import images

DEFAULT_INSTANCE_TYPE = "ml.g4dn.xlarge"  # one T4 GPU, the cheapest GPU training instance
DEFAULT_VOLUME_GB = 30
DEFAULT_MAX_RUN_HOURS = 3.0
CHANNEL = COMBINED_CHANNEL
INPUT_MODES = ("File", "FastFile")  # Pipe streams records, not the files of an image folder


@dataclass(frozen=True)
class JobResources:
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = 1  # several: one data-parallel job over all of them
    volume_gb: int = DEFAULT_VOLUME_GB
    max_run_seconds: int = int(DEFAULT_MAX_RUN_HOURS * 3600)
    spot: bool = True
    max_wait_seconds: int | None = None  # spot only: run time plus time waiting for capacity
    # torchrun on every instance, one process per GPU; None: on when there are several instances
    # (a one-instance job then uses all its GPUs anyway, the container decides by their number).
    data_parallel: bool | None = None
    s3_data_distribution: str = S3_FULLY_REPLICATED

    def __post_init__(self):
        if self.spot and self.max_wait_seconds is not None and self.max_wait_seconds < self.max_run_seconds:
            raise LaunchError("the spot wait limit must be at least the run limit (--max-wait-hours)")
        if self.instance_count < 1:
            raise LaunchError(f"--instance-count must be at least 1, got {self.instance_count}")
        if self.data_parallel is False and self.instance_count > 1:
            raise LaunchError(
                f"{self.instance_count} instances need data-parallel training: drop --no-data-parallel "
                "(each instance would otherwise train a model of its own)"
            )
        if self.s3_data_distribution not in S3_DATA_DISTRIBUTIONS:
            raise LaunchError(
                f"unknown S3 data distribution {self.s3_data_distribution!r}; "
                f"expected one of {S3_DATA_DISTRIBUTIONS}"
            )

    def distribution_hyperparameters(self, batch_sizes: Iterable[int] = ()) -> dict[str, str]:
        """The ``sagemaker_*`` settings the toolkit reads, after checking that every global batch
        size the job may run with divides among the instances (each instance's GPUs must divide
        it further: the trainer says so if they do not)."""
        for batch_size in batch_sizes:
            try:
                per_rank_batch_size(int(batch_size), self.instance_count)
            except ValueError as error:
                raise LaunchError(f"{error} ({self.instance_count} instances)") from error
        enabled = self.data_parallel if self.data_parallel is not None else self.instance_count > 1
        return distribution_hyperparameters(enabled) if enabled or self.data_parallel is False else {}

    def resource_config(self) -> dict:
        """The API's ResourceConfig."""
        return {"InstanceType": self.instance_type, "InstanceCount": self.instance_count,
                "VolumeSizeInGB": self.volume_gb}

    def stopping_condition(self) -> dict[str, int]:
        """The API's StoppingCondition; spot jobs wait up to twice their run time unless told."""
        condition = {"MaxRuntimeInSeconds": self.max_run_seconds}
        if self.spot:
            condition["MaxWaitTimeInSeconds"] = self.max_wait_seconds or 2 * self.max_run_seconds
        return condition


def check_input_mode(input_mode: str) -> str:
    if input_mode not in INPUT_MODES:
        raise LaunchError(f"input mode {input_mode!r} is not supported; expected one of {INPUT_MODES}")
    return input_mode


def algorithm_specification(image_uri: str, input_mode: str = "File") -> dict:
    """Our image, in ``input_mode``, with the regexes SageMaker reads the trainer's metric lines with."""
    return {
        "TrainingImage": image_uri,
        "TrainingInputMode": check_input_mode(input_mode),
        "MetricDefinitions": [dict(definition) for definition in metrics.METRIC_DEFINITIONS],
    }


def input_data_config(
    data_uri: str, input_mode: str = "File", distribution: str = S3_FULLY_REPLICATED
) -> list[dict]:
    """The one data channel: the dataset's S3 prefix, copied to the instances before the job starts
    (``File``) or streamed from S3 as files are read (``FastFile``); every file to every instance, or
    each file to one of them (``ShardedByS3Key``)."""
    return [{
        "ChannelName": CHANNEL,
        "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": data_uri, "S3DataDistributionType": distribution,
        }},
        "InputMode": check_input_mode(input_mode),
    }]


def resources_from_args(args: argparse.Namespace) -> JobResources:
    return JobResources(
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        volume_gb=args.volume_gb,
        max_run_seconds=int(args.max_run_hours * 3600),
        spot=args.spot,
        max_wait_seconds=int(args.max_wait_hours * 3600) if args.max_wait_hours else None,
        data_parallel=args.data_parallel,
        s3_data_distribution=args.s3_data_distribution,
    )


def batch_sizes(
    hyperparameters: Mapping[str, str], search_space: Mapping[str, object] | None = None
) -> list[int]:
    """The global batch sizes a job may train with: the tuned values, else the given or default one."""
    tuned = (search_space or {}).get("batch-size")
    if tuned is not None:
        return [int(value) for value in getattr(tuned, "values", ())]
    return [int(hyperparameters.get("batch-size", build_parser().get_default("batch_size")))]


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """Options common to tuning and training jobs; hyperparameters come after ``--``."""
    group = parser.add_argument_group("job")
    group.add_argument("--data", help="S3 URI of the dataset (default: the upload_data location)")
    group.add_argument("--image-tag", default=images.LATEST,
                       help="tag of the pushed training image; the job runs its digest")
    group.add_argument("--instance-type", default=DEFAULT_INSTANCE_TYPE)
    group.add_argument("--instance-count", type=int, default=1,
                       help="instances per job (a tuning trial's too): several train one model together "
                            "(data-parallel, one process per GPU on each)")
    group.add_argument("--data-parallel", action=argparse.BooleanOptionalAction, default=None,
                       help="torchrun on every instance, one process per GPU (default: on for several "
                            "instances; a one-instance job uses all its GPUs anyway)")
    group.add_argument("--s3-data-distribution", choices=S3_DATA_DISTRIBUTIONS, default=S3_FULLY_REPLICATED,
                       help="every file to each instance, or each file to one instance (huge datasets)")
    group.add_argument("--volume-gb", type=int, default=DEFAULT_VOLUME_GB)
    group.add_argument("--max-run-hours", type=float, default=DEFAULT_MAX_RUN_HOURS)
    group.add_argument("--spot", action=argparse.BooleanOptionalAction, default=True,
                       help="managed spot training")
    group.add_argument("--max-wait-hours", type=float, default=None,
                       help="spot: run time plus waiting for capacity (default: twice --max-run-hours)")
    group.add_argument("--input-mode", choices=INPUT_MODES, default="File",
                       help="File: the data is copied to the instance before training; FastFile: files "
                            "stream from S3 on first read (large datasets: no copy, no volume to size)")
    parser.add_argument("hyperparameters", nargs=argparse.REMAINDER,
                        help="after --: trainer hyperparameters as '--name value' pairs")


def hyperparameter_args(remainder: list[str]) -> dict[str, str]:
    """The ``-- --name value ...`` tail of the command line as a mapping."""
    args = remainder[1:] if remainder[:1] == ["--"] else remainder
    try:
        return parse_name_value_pairs(args)
    except ValueError as error:
        raise LaunchError(str(error)) from error


def check_hyperparameters(values: Mapping[str, object]) -> dict[str, str]:
    """Validates names and values with the trainer's parser; returns them as SageMaker strings."""
    strings = as_sagemaker_strings(values)
    parser = build_parser()

    def refuse(message: str):
        raise LaunchError(f"invalid hyperparameters {strings}: {message}")

    parser.error = refuse  # argparse would print usage and exit
    parser.parse_args([item for name, value in strings.items() for item in (f"--{name}", value)])
    return strings


def read_hyperparameters_file(path: str | Path) -> dict[str, str]:
    """Hyperparameters from a JSON file: the tuner's result (its ``hyperparameters``) or a plain mapping."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as error:
        raise LaunchError(f"hyperparameters file not found: {path}") from error
    except json.JSONDecodeError as error:
        raise LaunchError(f"hyperparameters file {path} is not JSON: {error}") from error
    values = data.get("hyperparameters", data) if isinstance(data, dict) else None
    if not isinstance(values, dict):
        raise LaunchError(f"{path}: expected a JSON object of hyperparameters")
    return check_hyperparameters(values)


def require_s3_prefix(context: AwsContext, uri: str) -> str:
    """Checks that ``uri`` (an S3 prefix) holds objects, so a job is not started on missing data."""
    if not uri.startswith("s3://"):
        raise LaunchError(f"expected an s3:// URI for the data, got {uri!r}")
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    s3 = context.client("s3")
    try:
        found = s3.list_objects_v2(Bucket=bucket, Prefix=prefix.rstrip("/") + "/", MaxKeys=1)
    except s3.exceptions.NoSuchBucket as error:
        raise LaunchError(f"bucket {bucket!r} does not exist: run `make upload-data` first") from error
    if not found.get("KeyCount"):
        raise LaunchError(f"no data under {uri}: run `make upload-data` first (or pass --data)")
    return uri
