"""Hyperparameter tuning on SageMaker with our training image (SageMaker Python SDK v3).

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
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from classifier import metrics
from classifier.hyperparameters import SEARCH_SPACE, CategoricalValues, ContinuousRange, IntegerRange
from scripts.aws import ecr, jobs, settings
from scripts.aws.jobs import JobResources
from scripts.aws.settings import AwsContext, LaunchError

STRATEGIES = ("Bayesian", "Random", "Hyperband")
HYPERBAND_RESOURCE = "epochs"  # the hyperparameter Hyperband allocates
TUNING_JOB_NAME_LIMIT = 32
JOB_BASE_NAME = "classifier-tune"


def tuned_space(strategy: str, search_space=SEARCH_SPACE) -> dict:
    """The search space a strategy tunes (Hyperband leaves the epochs to its own schedule)."""
    if strategy not in STRATEGIES:
        raise LaunchError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if strategy == "Hyperband":
        return {name: r for name, r in search_space.items() if name != HYPERBAND_RESOURCE}
    return dict(search_space)


def parameter_ranges(space: dict) -> dict:
    """SageMaker SDK parameter ranges for a search space of ``classifier.hyperparameters`` ranges."""
    from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter, IntegerParameter

    ranges = {}
    for name, spec in space.items():
        match spec:
            case ContinuousRange(min_value=low, max_value=high, scaling=scaling):
                ranges[name] = ContinuousParameter(low, high, scaling)
            case IntegerRange(min_value=low, max_value=high, scaling=scaling):
                ranges[name] = IntegerParameter(low, high, scaling)
            case CategoricalValues(values=values):
                ranges[name] = CategoricalParameter(list(values))
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


def early_stopping_type(strategy: str, requested: str | None) -> str:
    """``Auto`` unless asked otherwise; always ``Off`` for Hyperband, which stops trials itself."""
    if strategy == "Hyperband":
        if requested == "Auto":
            raise LaunchError("Hyperband stops trials itself: --early-stopping Auto is not allowed with it")
        return "Off"
    return requested or "Auto"


def build_tuner(context: AwsContext, image_uri: str, strategy: str, static: dict[str, str],
                resources: JobResources, max_jobs: int, max_parallel_jobs: int,
                early_stopping: str | None = None):
    """A v3 ``HyperparameterTuner`` over a ``ModelTrainer`` on our image (nothing is sent yet)."""
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.shapes import HyperbandStrategyConfig, HyperParameterTuningJobStrategyConfig
    from sagemaker.core.training.configs import Compute, OutputDataConfig, StoppingCondition
    from sagemaker.train import ModelTrainer
    from sagemaker.train.tuner import HyperparameterTuner

    if max_parallel_jobs > max_jobs:
        raise LaunchError(f"--max-parallel-jobs ({max_parallel_jobs}) exceeds --max-jobs ({max_jobs})")
    condition = resources.stopping_condition()
    trainer = ModelTrainer(
        sagemaker_session=Session(boto_session=context.session),
        role=context.config.role_arn,
        training_image=image_uri,
        compute=Compute(
            instance_type=resources.instance_type,
            instance_count=resources.instance_count,
            volume_size_in_gb=resources.volume_gb,
            enable_managed_spot_training=resources.spot,
        ),
        stopping_condition=StoppingCondition(
            max_runtime_in_seconds=condition["MaxRuntimeInSeconds"],
            max_wait_time_in_seconds=condition.get("MaxWaitTimeInSeconds"),
        ),
        output_data_config=OutputDataConfig(s3_output_path=context.config.output_uri("tuning")),
        hyperparameters=static,
        base_job_name=JOB_BASE_NAME,
    )
    strategy_config = None
    if strategy == "Hyperband":
        resource = hyperband_resource_range()
        strategy_config = HyperParameterTuningJobStrategyConfig(
            hyperband_strategy_config=HyperbandStrategyConfig(
                min_resource=resource.min_value, max_resource=resource.max_value
            )
        )
    return HyperparameterTuner(
        model_trainer=trainer,
        objective_metric_name=metrics.OBJECTIVE_METRIC,
        objective_type=metrics.OBJECTIVE_TYPE,
        hyperparameter_ranges=parameter_ranges(tuned_space(strategy)),
        metric_definitions=[dict(d) for d in metrics.METRIC_DEFINITIONS],
        strategy=strategy,
        strategy_config=strategy_config,
        max_jobs=max_jobs,
        max_parallel_jobs=max_parallel_jobs,
        early_stopping_type=early_stopping_type(strategy, early_stopping),
    )


def input_channels(resources: JobResources, data_uri: str) -> list:
    """The trials' input channels as SDK v3 shapes, from the request part ``jobs`` builds."""
    from sagemaker.core.shapes import Channel, DataSource, S3DataSource

    return [
        Channel(channel_name=channel["ChannelName"], data_source=DataSource(s3_data_source=S3DataSource(
            s3_data_type=source["S3DataType"], s3_uri=source["S3Uri"],
            s3_data_distribution_type=source["S3DataDistributionType"],
        )))
        for channel in resources.input_data_config(data_uri)
        for source in [channel["DataSource"]["S3DataSource"]]
    ]


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


def write_result(context: AwsContext, job_name: str, output: Path) -> dict:
    description = context.client("sagemaker").describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=job_name
    )
    result = best_result(description)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    return result


def wait_for(context: AwsContext, job_name: str) -> None:
    """Waits until the tuning job ends; a failed job is reported with SageMaker's reason."""
    from sagemaker.core.resources import HyperParameterTuningJob
    from sagemaker.core.utils.exceptions import FailedStatusError

    job = HyperParameterTuningJob.get(job_name, session=context.session, region=context.config.region)
    try:
        job.wait(poll=30)
    except FailedStatusError as error:
        raise LaunchError(f"tuning job {job_name} failed: {error}") from error


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
    try:
        if args.attach:
            context = settings.connect(args)
            job_name = args.attach
        else:
            static = static_hyperparameters(args.strategy, jobs.hyperparameter_args(args.hyperparameters))
            resources = jobs.resources_from_args(args)
            static.update(resources.distribution_hyperparameters(
                jobs.batch_sizes(static, tuned_space(args.strategy))))
            early_stopping_type(args.strategy, args.early_stopping)
            context = settings.connect(args, needs=("role_arn", "bucket"))
            data = jobs.require_s3_prefix(context, args.data or context.config.data_uri())
            image = ecr.image_for(context, "train", args.image_tag)
            job_name = args.job_name or settings.timestamped_name(JOB_BASE_NAME, TUNING_JOB_NAME_LIMIT)
            tuner = build_tuner(context, image, args.strategy, static, resources, args.max_jobs,
                                args.max_parallel_jobs, args.early_stopping)
            tuner.tune(inputs=input_channels(resources, data), job_name=job_name, wait=False)
            print(f"started tuning job {job_name} ({args.strategy}, {args.max_jobs} trials on {image})",
                  file=sys.stderr)
            if not args.wait:
                print(f"when it ends: python -m scripts.aws.tune --attach {job_name}", file=sys.stderr)
                print(job_name)
                return
        wait_for(context, job_name)
        result = write_result(context, job_name, args.output)
    except settings.USER_ERRORS as error:
        sys.exit(f"error: {error}")
    print(f"best training job {result['best_training_job']}: {result['objective']['metric']} = "
          f"{result['objective']['value']}; hyperparameters written to {args.output}", file=sys.stderr)
    print(job_name)


if __name__ == "__main__":
    main()
