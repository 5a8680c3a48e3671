"""Hyperparameter tuning on SageMaker with our training image.

    python -m scripts.aws.tune [--strategy Bayesian|Random|Hyperband] [--max-jobs 8]
                           [--max-parallel-jobs 2] [--no-wait] [-- --model-name resnet50 ...]
    python -m scripts.aws.tune --attach <tuning job name>     wait for a job and write its result

The search space is ``classifier.hyperparameters.SEARCH_SPACE``; the objective is
``classifier.metrics.OBJECTIVE_METRIC``, read from the job's log with the regexes of
``classifier.metrics.METRIC_DEFINITIONS``. Hyperparameters after ``--`` are static (the same for
every trial). When the job ends, the best training job, its objective value and its full
hyperparameters are written to ``--output`` (default ``runs/aws/best-hyperparameters.json``),
which ``scripts.aws.train_job --hyperparameters-file`` reads.

Hyperband tunes the number of epochs itself: ``epochs`` leaves the ranges, its range becomes
Hyperband's min/max resource and the trials run with its maximum; SageMaker's per-job early
stopping is then off, as Hyperband requires.

The CreateHyperParameterTuningJob request is built by a pure function (``tuning_job_request``)
and sent with boto3, as ``scripts.aws.train_job`` does for training jobs: the launchers need no
more of the SageMaker SDK than its Debugger rule configurations.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import botocore.exceptions

from classifier import metrics
from classifier.hyperparameters import SEARCH_SPACE, CategoricalValues, ContinuousRange, IntegerRange
from scripts.aws import ecr, jobs, settings
from scripts.aws.jobs import JobResources
from scripts.aws.settings import AwsContext, LaunchError

STRATEGIES = ("Bayesian", "Random", "Hyperband")
HYPERBAND_RESOURCE = "epochs"  # the hyperparameter Hyperband allocates
TUNING_JOB_NAME_LIMIT = 32
JOB_BASE_NAME = "classifier-tune"
POLL_SECONDS = 30
FINISHED = ("Completed", "Stopped")  # a stopped job may still have a best training job
FAILED = ("Failed",)


def tuned_space(strategy: str, search_space=SEARCH_SPACE) -> dict:
    """The search space a strategy tunes (Hyperband leaves the epochs to its own schedule)."""
    if strategy not in STRATEGIES:
        raise LaunchError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if strategy == "Hyperband":
        return {name: r for name, r in search_space.items() if name != HYPERBAND_RESOURCE}
    return dict(search_space)


def parameter_ranges(space: Mapping) -> dict[str, list[dict]]:
    """The API's ParameterRanges for a search space of ``classifier.hyperparameters`` ranges."""
    ranges: dict[str, list[dict]] = {
        "ContinuousParameterRanges": [], "IntegerParameterRanges": [], "CategoricalParameterRanges": [],
    }
    for name, spec in space.items():
        match spec:
            case ContinuousRange(min_value=low, max_value=high, scaling=scaling):
                ranges["ContinuousParameterRanges"].append(
                    {"Name": name, "MinValue": str(low), "MaxValue": str(high), "ScalingType": scaling})
            case IntegerRange(min_value=low, max_value=high, scaling=scaling):
                ranges["IntegerParameterRanges"].append(
                    {"Name": name, "MinValue": str(low), "MaxValue": str(high), "ScalingType": scaling})
            case CategoricalValues(values=values):
                ranges["CategoricalParameterRanges"].append(
                    {"Name": name, "Values": [str(value) for value in values]})
            case _:
                raise LaunchError(f"search space entry {name!r} has an unknown range type {spec!r}")
    return ranges


def hyperband_resource_range(search_space=SEARCH_SPACE) -> IntegerRange:
    resource = search_space.get(HYPERBAND_RESOURCE)
    if not isinstance(resource, IntegerRange):
        raise LaunchError(f"Hyperband needs an integer {HYPERBAND_RESOURCE!r} range in the search space")
    return resource


def static_hyperparameters(strategy: str, given: dict[str, str], search_space=SEARCH_SPACE) -> dict[str, str]:
    """The hyperparameters every trial gets: the user's, checked, plus Hyperband's epoch budget."""
    tuned = set(tuned_space(strategy, search_space))
    clash = sorted(tuned & set(given))
    if clash:
        raise LaunchError(f"{clash} are tuned; remove them from the static hyperparameters")
    values = dict(given)
    if strategy == "Hyperband":
        if HYPERBAND_RESOURCE in values:
            raise LaunchError(f"Hyperband sets {HYPERBAND_RESOURCE!r} from the search space; do not pass it")
        values[HYPERBAND_RESOURCE] = str(hyperband_resource_range(search_space).max_value)
    return jobs.check_hyperparameters(values)


def check_limits(max_jobs: int, max_parallel_jobs: int) -> None:
    if max_jobs < 1 or max_parallel_jobs < 1:
        raise LaunchError("--max-jobs and --max-parallel-jobs must be at least 1")
    if max_parallel_jobs > max_jobs:
        raise LaunchError(f"--max-parallel-jobs ({max_parallel_jobs}) exceeds --max-jobs ({max_jobs})")


def early_stopping_type(strategy: str, requested: str | None) -> str:
    """``Auto`` unless asked otherwise; always ``Off`` for Hyperband, which stops trials itself."""
    if strategy == "Hyperband":
        if requested == "Auto":
            raise LaunchError("Hyperband stops trials itself: --early-stopping Auto is not allowed with it")
        return "Off"
    return requested or "Auto"


@dataclass(frozen=True)
class TuningJobSpec:
    """Everything a tuning job is made of; ``tuning_job_request`` turns it into the API call."""

    job_name: str
    image_uri: str
    role_arn: str
    data_uri: str
    output_uri: str
    strategy: str = "Bayesian"
    static_hyperparameters: dict[str, str] = field(default_factory=dict)
    resources: JobResources = field(default_factory=JobResources)
    max_jobs: int = 8
    max_parallel_jobs: int = 2
    early_stopping: str | None = None  # None: Auto, or Off for Hyperband
    search_space: Mapping = field(default_factory=lambda: SEARCH_SPACE)
    input_mode: str = "File"  # or FastFile (jobs.INPUT_MODES), for every trial

    def __post_init__(self):
        tuned_space(self.strategy, self.search_space)  # a known strategy
        check_limits(self.max_jobs, self.max_parallel_jobs)
        early_stopping_type(self.strategy, self.early_stopping)


def tuning_job_request(spec: TuningJobSpec) -> dict:
    """The CreateHyperParameterTuningJob parameters (pure: no AWS call).

    Each trial is a training job like ``scripts.aws.train_job``'s without Debugger settings (no
    tuning job can carry them) and without a checkpoint location (trials would share it).
    """
    resources = spec.resources
    config = {
        "Strategy": spec.strategy,
        "HyperParameterTuningJobObjective": {
            "Type": metrics.OBJECTIVE_TYPE, "MetricName": metrics.OBJECTIVE_METRIC,
        },
        "ResourceLimits": {
            "MaxNumberOfTrainingJobs": spec.max_jobs, "MaxParallelTrainingJobs": spec.max_parallel_jobs,
        },
        "ParameterRanges": parameter_ranges(tuned_space(spec.strategy, spec.search_space)),
        "TrainingJobEarlyStoppingType": early_stopping_type(spec.strategy, spec.early_stopping),
    }
    if spec.strategy == "Hyperband":
        resource = hyperband_resource_range(spec.search_space)
        config["StrategyConfig"] = {"HyperbandStrategyConfig": {
            "MinResource": resource.min_value, "MaxResource": resource.max_value}}
    # Each trial on several instances is one data-parallel job: every batch size the search may
    # pick must divide among them.
    batch_sizes = jobs.batch_sizes(spec.static_hyperparameters, tuned_space(spec.strategy, spec.search_space))
    definition = {
        "StaticHyperParameters": {
            **spec.static_hyperparameters, **resources.distribution_hyperparameters(batch_sizes),
        },
        "AlgorithmSpecification": jobs.algorithm_specification(spec.image_uri, spec.input_mode),
        "RoleArn": spec.role_arn,
        "InputDataConfig": jobs.input_data_config(
            spec.data_uri, spec.input_mode, resources.s3_data_distribution
        ),
        "OutputDataConfig": {"S3OutputPath": spec.output_uri},
        "ResourceConfig": resources.resource_config(),
        "StoppingCondition": resources.stopping_condition(),
        "EnableManagedSpotTraining": resources.spot,
    }
    return {
        "HyperParameterTuningJobName": spec.job_name,
        "HyperParameterTuningJobConfig": config,
        "TrainingJobDefinition": definition,
    }


def best_result(description: dict) -> dict:
    """The tuning job's winner from DescribeHyperParameterTuningJob: what ``train_job`` needs."""
    name = description["HyperParameterTuningJobName"]
    best = description.get("BestTrainingJob")
    if not best:
        status = description.get("HyperParameterTuningJobStatus")
        raise LaunchError(f"tuning job {name} has no best training job (status {status}): "
                          f"{description.get('FailureReason') or 'no trial reported the objective metric'}")
    definition = description["TrainingJobDefinition"]
    tuned = best.get("TunedHyperParameters", {})
    output = definition["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    objective = best.get("FinalHyperParameterTuningJobObjectiveMetric", {})
    return {
        "tuning_job": name,
        "best_training_job": best["TrainingJobName"],
        "objective": {"metric": objective.get("MetricName"), "type": objective.get("Type"),
                      "value": objective.get("Value")},
        "tuned_hyperparameters": tuned,
        "hyperparameters": {**definition.get("StaticHyperParameters", {}), **tuned},
        "model_data": f"{output}/{best['TrainingJobName']}/output/model.tar.gz",
    }


def write_result(description: dict, output: Path) -> dict:
    """Writes the winner of a finished tuning job to ``output`` (JSON); returns it."""
    result = best_result(description)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    return result


def progress(description: dict) -> str:
    """One line on a tuning job: its status, its trials by status and the best objective so far."""
    counters = description.get("TrainingJobStatusCounters", {})
    trials = ", ".join(f"{counters[key]} {word}" for key, word in (
        ("Completed", "completed"), ("InProgress", "running"), ("Stopped", "stopped"),
        ("RetryableError", "retrying"), ("NonRetryableError", "failed")) if counters.get(key))
    name, status = description["HyperParameterTuningJobName"], description["HyperParameterTuningJobStatus"]
    line = f"tuning job {name}: {status}"
    if trials:
        line += f"; trials: {trials}"
    objective = description.get("BestTrainingJob", {}).get("FinalHyperParameterTuningJobObjectiveMetric")
    if objective:
        line += f"; best {objective['MetricName']} so far {objective['Value']}"
    return line


def wait_for(context: AwsContext, job_name: str, poll_seconds: float = POLL_SECONDS,
             sleep: Callable[[float], None] = time.sleep) -> dict:
    """Waits until the tuning job ends, printing each change; returns its last description.

    A failed job raises with SageMaker's reason; a completed or stopped one is returned.
    """
    sagemaker = context.client("sagemaker")
    last_line = None
    while True:
        description = sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=job_name)
        line = progress(description)
        if line != last_line:
            print(line, file=sys.stderr, flush=True)
            last_line = line
        status = description["HyperParameterTuningJobStatus"]
        if status in FAILED:
            reason = description.get("FailureReason", "no reason given")
            raise LaunchError(f"tuning job {job_name} failed: {reason}")
        if status in FINISHED:
            return description
        sleep(poll_seconds)


def start(context: AwsContext, spec: TuningJobSpec) -> None:
    """Creates the tuning job."""
    try:
        context.client("sagemaker").create_hyper_parameter_tuning_job(**tuning_job_request(spec))
    except botocore.exceptions.ClientError as error:
        raise LaunchError(f"SageMaker refused tuning job {spec.job_name}: {error}") from error


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--strategy", choices=STRATEGIES, default="Bayesian")
    parser.add_argument("--max-jobs", type=int, default=8)
    parser.add_argument("--max-parallel-jobs", type=int, default=2)
    parser.add_argument("--early-stopping", choices=("Auto", "Off"), default=None,
                        help="SageMaker's per-trial early stopping (default Auto; Off for Hyperband)")
    parser.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                        help="wait for the tuning job and write the result file")
    parser.add_argument("--job-name", help=f"default: {JOB_BASE_NAME}-<timestamp>")
    parser.add_argument("--attach", metavar="JOB", help="wait for an existing tuning job, write its result")
    parser.add_argument("--output", type=Path, default=settings.BEST_HYPERPARAMETERS_FILE,
                        help="the result JSON file")
    jobs.add_job_arguments(parser)
    settings.add_config_arguments(parser)
    args = parser.parse_args(argv)
    job_name = args.attach
    try:
        if args.attach:
            context = settings.connect(args)
        else:
            static = static_hyperparameters(args.strategy, jobs.hyperparameter_args(args.hyperparameters))
            resources = jobs.resources_from_args(args)
            check_limits(args.max_jobs, args.max_parallel_jobs)
            resources.distribution_hyperparameters(  # fails before anything is created
                jobs.batch_sizes(static, tuned_space(args.strategy)))
            early_stopping_type(args.strategy, args.early_stopping)
            context = settings.connect(args, needs=("role_arn", "bucket"))
            job_name = args.job_name or settings.timestamped_name(JOB_BASE_NAME, TUNING_JOB_NAME_LIMIT)
            spec = TuningJobSpec(
                job_name=job_name,
                image_uri=ecr.image_for(context, "train", args.image_tag),
                role_arn=context.config.role_arn,
                data_uri=jobs.require_s3_prefix(context, args.data or context.config.data_uri()),
                output_uri=context.config.output_uri("tuning"),
                strategy=args.strategy,
                static_hyperparameters=static,
                resources=resources,
                max_jobs=args.max_jobs,
                max_parallel_jobs=args.max_parallel_jobs,
                early_stopping=args.early_stopping,
                input_mode=args.input_mode,
            )
            start(context, spec)
            print(f"started tuning job {job_name} ({args.strategy}, {args.max_jobs} trials "
                  f"on {spec.image_uri})", file=sys.stderr)
            if not args.wait:
                print(f"when it ends: python -m scripts.aws.tune --attach {job_name}", file=sys.stderr)
                print(job_name)
                return
        try:
            description = wait_for(context, job_name)
        except KeyboardInterrupt:
            sys.exit(f"\nstopped waiting; the tuning job goes on: "
                     f"python -m scripts.aws.tune --attach {job_name}")
        result = write_result(description, args.output)
    except settings.USER_ERRORS as error:
        sys.exit(f"error: {error}")
    print(f"best training job {result['best_training_job']}: {result['objective']['metric']} = "
          f"{result['objective']['value']}; hyperparameters written to {args.output}", file=sys.stderr)
    print(job_name)


if __name__ == "__main__":
    main()
