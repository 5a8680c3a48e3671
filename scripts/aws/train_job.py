"""One SageMaker training job on our image, with spot checkpoints, and SageMaker Debugger if asked.

    python -m scripts.aws.train_job [--hyperparameters-file runs/aws/best-hyperparameters.json]
                                [--sagemaker-debugger] [--no-wait] [-- --epochs 20 ...]

Hyperparameters come from the tuner's result file (or any JSON object of them), then from the
``--name value`` pairs after ``--``, which win; the trainer's parser checks them first.

By default the job carries no SageMaker Debugger or profiler settings, so it runs on every
account (AWS closed Debugger to new customers on 2026-07-30): the trainer records its own
evidence (its smdebug hook's tensors, step timings, resource samples, epochs) in the output data
folder that SageMaker uploads, and ``make report JOB=`` runs this project's rules on it.
``--sagemaker-debugger`` adds, for accounts that have Debugger, the hook configuration, the
built-in rules, this project's rules as custom rules (``scripts/report/rules.py``, uploaded
beside the job outputs), system profiling and the ProfilerReport rule.

SDK v3's ``ModelTrainer`` cannot attach Debugger settings, so the CreateTrainingJob request is
built here by a pure function (``training_job_request``) and sent with boto3. Where the job's
outputs will be is printed before it starts, and the job is recorded in
``runs/aws/last-training-job.json``, which ``scripts.aws.deploy`` reads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import botocore.exceptions

from classifier import sagemaker_env
from classifier.artifact import LIVE_EVIDENCE_DIR
from classifier.hyperparameters import build_parser
from scripts.aws import custom_rules, debugger_config, ecr, jobs, settings
from scripts.aws.jobs import JobResources
from scripts.aws.settings import AwsContext, LaunchError

JOB_BASE_NAME = "classifier-train"
CHECKPOINT_LOCAL_PATH = str(PurePosixPath(sagemaker_env.DEFAULT_BASE_DIR) / "checkpoints")
DEFAULT_SAVE_INTERVAL = build_parser().get_default("debugger_save_interval")


@dataclass(frozen=True)
class TrainingJobSpec:
    """Everything a training job is made of; ``training_job_request`` turns it into the API call."""

    job_name: str
    image_uri: str
    role_arn: str
    region: str
    data_uri: str
    output_uri: str
    checkpoint_uri: str
    hyperparameters: dict[str, str] = field(default_factory=dict)
    resources: JobResources = field(default_factory=JobResources)
    input_mode: str = "File"  # or FastFile (jobs.INPUT_MODES)
    debugger_save_interval: int = DEFAULT_SAVE_INTERVAL  # the SageMaker Debugger hook's
    # SageMaker Debugger: the hook, the five built-in rules, system profiling and ProfilerReport
    sagemaker_debugger: bool = False
    # s3:// URI of scripts/report/rules.py: this project's rules run beside the built-in ones
    custom_rules_source: str | None = None

    def __post_init__(self):
        if self.custom_rules_source and not self.sagemaker_debugger:
            raise LaunchError("custom rules run in SageMaker Debugger: they need sagemaker_debugger")

    def locations(self) -> dict[str, str]:
        """Where SageMaker puts what this job produces (its conventions under the output path)."""
        job = f"{self.output_uri.rstrip('/')}/{self.job_name}"
        rule_output = f"{job}/rule-output"
        locations = {
            "model": f"{job}/output/model.tar.gz",
            "output_data": f"{job}/output/output.tar.gz",  # the trainer's evidence, once the job ends
            "checkpoints": self.checkpoint_uri,
            "live_evidence": f"{self.checkpoint_uri.rstrip('/')}/{LIVE_EVIDENCE_DIR}",  # while it runs
        }
        if self.sagemaker_debugger:
            locations["debugger_tensors"] = f"{job}/debug-output"
            locations["rule_output"] = rule_output
            locations["profiler_data"] = f"{job}/profiler-output"
            locations["profiler_report"] = (
                f"{rule_output}/{debugger_config.PROFILER_REPORT_RULE}/profiler-output/profiler-report.html"
            )
        return locations


def training_job_request(spec: TrainingJobSpec) -> dict:
    """The CreateTrainingJob parameters (pure: no AWS call)."""
    resources = spec.resources
    request = {
        "TrainingJobName": spec.job_name,
        "RoleArn": spec.role_arn,
        "AlgorithmSpecification": {
            **jobs.algorithm_specification(spec.image_uri, spec.input_mode),
            "EnableSageMakerMetricsTimeSeries": True,
        },
        "HyperParameters": {
            **spec.hyperparameters,
            **resources.distribution_hyperparameters(jobs.batch_sizes(spec.hyperparameters)),
        },
        "InputDataConfig": jobs.input_data_config(
            spec.data_uri, spec.input_mode, resources.s3_data_distribution
        ),
        "OutputDataConfig": {"S3OutputPath": spec.output_uri},
        "ResourceConfig": resources.resource_config(),
        "StoppingCondition": resources.stopping_condition(),
        "EnableManagedSpotTraining": resources.spot,
        # Synced to S3 while the job runs; a spot job interrupted and restarted resumes from it.
        "CheckpointConfig": {"S3Uri": spec.checkpoint_uri, "LocalPath": CHECKPOINT_LOCAL_PATH},
    }
    if not spec.sagemaker_debugger:
        return request
    # SageMaker appends <job>/debug-output and <job>/profiler-output to these paths itself
    # (locations() names the results), so both get the job's output path.
    request["DebugHookConfig"] = debugger_config.debug_hook_config(
        spec.output_uri, spec.debugger_save_interval
    )
    request["DebugRuleConfigurations"] = debugger_config.debug_rule_configurations(spec.region)
    if spec.custom_rules_source:
        request["DebugRuleConfigurations"] += custom_rules.debug_rule_configurations(
            spec.custom_rules_source, spec.region
        )
        hook = request["DebugHookConfig"]
        hook["CollectionConfigurations"] = custom_rules.losses_every_step(hook["CollectionConfigurations"])
    request["ProfilerConfig"] = debugger_config.profiler_config(spec.output_uri)
    request["ProfilerRuleConfigurations"] = debugger_config.profiler_rule_configurations(spec.region)
    return request


DEBUGGER_REFUSED = re.compile(r"debug|profil|rule", re.IGNORECASE)


def refusal_message(error: botocore.exceptions.ClientError, spec: TrainingJobSpec) -> str:
    """AWS's refusal in one line; when it is about SageMaker Debugger, what to do instead."""
    text = " ".join(str(error).split())
    if spec.sagemaker_debugger and DEBUGGER_REFUSED.search(text):
        return (f"{text}; this account cannot use SageMaker Debugger (closed to new customers since "
                "2026-07-30): drop --sagemaker-debugger, the trainer's own evidence and make report JOB= "
                "work without it")
    return text


def merged_hyperparameters(file: Path | None, overrides: dict[str, str]) -> dict[str, str]:
    """The file's hyperparameters with the command line's on top, checked by the trainer's parser."""
    values = jobs.read_hyperparameters_file(file) if file else {}
    return jobs.check_hyperparameters({**values, **overrides})


def start(context: AwsContext, spec: TrainingJobSpec) -> dict:
    """Creates the job; returns what ``scripts.aws.deploy`` and the report need to find its outputs."""
    context.client("sagemaker").create_training_job(**training_job_request(spec))
    return {
        "training_job": spec.job_name,
        "region": spec.region,
        "hyperparameters": spec.hyperparameters,
        "locations": spec.locations(),
    }


def wait(context: AwsContext, job_name: str) -> dict:
    """Waits for the job to end (Ctrl-C stops waiting, not the job); raises unless it completed."""
    sagemaker = context.client("sagemaker")
    waiter = sagemaker.get_waiter("training_job_completed_or_stopped")
    # A failed job ends the wait with an error; its status and reason are read below.
    with contextlib.suppress(botocore.exceptions.WaiterError):
        waiter.wait(TrainingJobName=job_name, WaiterConfig={"Delay": 60, "MaxAttempts": 24 * 60})
    description = sagemaker.describe_training_job(TrainingJobName=job_name)
    status = description["TrainingJobStatus"]
    if status != "Completed":
        reason = description.get("FailureReason", "see its CloudWatch log, /aws/sagemaker/TrainingJobs")
        raise LaunchError(f"training job {job_name} is {status}: {reason}")
    return description


def describe_rules(description: dict) -> list[str]:
    """One line per Debugger/profiler rule evaluation: its name and status."""
    statuses = description.get("DebugRuleEvaluationStatuses", []) + description.get(
        "ProfilerRuleEvaluationStatuses", [])
    return [f"{s['RuleConfigurationName']}: {s.get('RuleEvaluationStatus', 'unknown')}"
            + (f" ({s['StatusDetails']})" if s.get("StatusDetails") else "") for s in statuses]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hyperparameters-file", type=Path,
                        help="JSON: the tuner's result file, or an object of hyperparameters")
    parser.add_argument("--job-name", help=f"default: {JOB_BASE_NAME}-<timestamp>")
    parser.add_argument("--sagemaker-debugger", action="store_true",
                        help="add SageMaker Debugger: its hook, the built-in rules, this project's rules "
                             "(scripts/report/rules.py, uploaded beside the job outputs) as custom rules, "
                             "system profiling and ProfilerReport (closed to accounts new since 2026-07-30; "
                             "without it the trainer records its own evidence for make report)")
    parser.add_argument("--debugger-save-interval", type=int, default=DEFAULT_SAVE_INTERVAL,
                        help="with --sagemaker-debugger: training steps between the tensors its hook saves "
                             "(the trainer's own hook: the debugger-save-interval hyperparameter)")
    parser.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                        help="wait for the job and print its rule evaluations")
    parser.add_argument("--record", type=Path, default=settings.LAST_TRAINING_JOB_FILE,
                        help="where the job's name and output locations are written")
    jobs.add_job_arguments(parser)
    settings.add_config_arguments(parser)
    args = parser.parse_args(argv)
    try:
        hyperparameters = merged_hyperparameters(args.hyperparameters_file,
                                                 jobs.hyperparameter_args(args.hyperparameters))
        resources = jobs.resources_from_args(args)
        resources.distribution_hyperparameters(jobs.batch_sizes(hyperparameters))  # fails before anything
        context = settings.connect(args, needs=("role_arn", "bucket"))
        config = context.config
        job_name = args.job_name or settings.timestamped_name(JOB_BASE_NAME)
        custom_rules_source = (
            custom_rules.upload_rules_source(context.client("s3"), config.s3_uri("debug-rules", job_name))
            if args.sagemaker_debugger else None
        )
        spec = TrainingJobSpec(
            job_name=job_name,
            image_uri=ecr.image_for(context, "train", args.image_tag),
            role_arn=config.role_arn,
            region=config.region,
            data_uri=jobs.require_s3_prefix(context, args.data or config.data_uri()),
            output_uri=config.output_uri("training"),
            checkpoint_uri=config.checkpoint_uri(job_name),
            hyperparameters=hyperparameters,
            resources=resources,
            input_mode=args.input_mode,
            debugger_save_interval=args.debugger_save_interval,
            sagemaker_debugger=args.sagemaker_debugger,
            custom_rules_source=custom_rules_source,
        )
        try:
            record = start(context, spec)
        except botocore.exceptions.ClientError as error:
            raise LaunchError(refusal_message(error, spec)) from error
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps(record, indent=2) + "\n")
        print(f"started training job {job_name} on {spec.image_uri}", file=sys.stderr)
        print(f"hyperparameters: {json.dumps(hyperparameters)}", file=sys.stderr)
        for what, where in record["locations"].items():
            print(f"  {what:17} {where}", file=sys.stderr)
        print(f"debugging report (while it runs, too): make report JOB={job_name}", file=sys.stderr)
        if args.wait:
            description = wait(context, job_name)
            print(f"training job {job_name} completed; model at "
                  f"{description['ModelArtifacts']['S3ModelArtifacts']}", file=sys.stderr)
            for line in describe_rules(description):
                print(f"  rule {line}", file=sys.stderr)
    except settings.USER_ERRORS as error:
        sys.exit(f"error: {error}")
    print(job_name)


if __name__ == "__main__":
    main()
