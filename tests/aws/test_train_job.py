"""The training launcher: the pure CreateTrainingJob builder, and the job on a moto server."""

import json
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from aws_helpers import ACCOUNT, BUCKET, REGION, ROLE_ARN, RecordingSession, validate_against_api
from train_helpers import RULE_COLLECTIONS

from classifier import metrics
from scripts import REPO_ROOT
from scripts.aws import jobs, settings, train_job
from scripts.aws.settings import AwsContext, LaunchConfig, LaunchError
from scripts.containers import images
from scripts.report import rules

CONFIG = LaunchConfig(region=REGION, role_arn=ROLE_ARN, bucket=BUCKET)
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{images.repository('train')}@sha256:{'a' * 64}"
# The rule evaluator accounts AWS documents for these regions (debugger-docker-images-rules).
RULE_IMAGES = {
    "us-east-1": "503895931360.dkr.ecr.us-east-1.amazonaws.com/sagemaker-debugger-rules:latest",
    "eu-west-1": "929884845733.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-debugger-rules:latest",
    "us-west-2": "895741380848.dkr.ecr.us-west-2.amazonaws.com/sagemaker-debugger-rules:latest",
}
DEBUGGER_SETTINGS = {
    "DebugHookConfig", "DebugRuleConfigurations", "ProfilerConfig", "ProfilerRuleConfigurations",
}


def spec(region=REGION, spot=True, **changes):
    values = dict(
        job_name="classifier-train-test", image_uri=IMAGE, role_arn=ROLE_ARN, region=region,
        data_uri=CONFIG.data_uri(), output_uri=CONFIG.output_uri("training"),
        checkpoint_uri=CONFIG.checkpoint_uri("classifier-train-test"),
        hyperparameters={"epochs": "3", "learning-rate": "0.01"},
        resources=jobs.JobResources(instance_type="ml.g4dn.xlarge", max_run_seconds=7200, spot=spot),
        debugger_save_interval=50,
    )
    values.update(changes)
    return train_job.TrainingJobSpec(**values)


@pytest.mark.parametrize("region", sorted(RULE_IMAGES))
def test_with_sagemaker_debugger_the_request_has_the_rules_their_collections_and_the_regions_image(region):
    request = train_job.training_job_request(spec(region=region, sagemaker_debugger=True))
    validate_against_api("CreateTrainingJob", request)
    rules = {rule["RuleConfigurationName"]: rule for rule in request["DebugRuleConfigurations"]}
    assert sorted(rules) == sorted(RULE_COLLECTIONS)
    for name, rule in rules.items():
        assert rule["RuleEvaluatorImage"] == RULE_IMAGES[region]
        assert rule["RuleParameters"]["rule_to_invoke"] == name
    hook = request["DebugHookConfig"]
    collections = {c["CollectionName"]: c["CollectionParameters"] for c in hook["CollectionConfigurations"]}
    for collection in RULE_COLLECTIONS.values():
        assert collections[collection]["save_interval"] == "50"
    assert collections["relu_input"]["include_regex"] == ".*relu_input"
    assert collections["losses"]["eval.save_interval"] == "1"  # Overfit compares validation loss
    # SageMaker writes the tensors to <S3OutputPath>/<job>/debug-output.
    assert hook["S3OutputPath"] == CONFIG.output_uri("training")
    assert hook["LocalPath"] == "/opt/ml/output/tensors"
    profiler_rules = request["ProfilerRuleConfigurations"]
    assert profiler_rules == [{
        "RuleConfigurationName": "ProfilerReport",
        "RuleEvaluatorImage": RULE_IMAGES[region],
        "RuleParameters": {"rule_to_invoke": "ProfilerReport"},
    }]
    assert request["ProfilerConfig"]["S3OutputPath"] == CONFIG.output_uri("training")
    assert request["ProfilerConfig"]["ProfilingIntervalInMilliseconds"] == 500


def test_request_has_image_hyperparameters_data_spot_and_checkpoints():
    request = train_job.training_job_request(spec())
    assert request["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert request["HyperParameters"] == {"epochs": "3", "learning-rate": "0.01"}
    channel = request["InputDataConfig"][0]
    assert channel["ChannelName"] == "training" and channel["InputMode"] == "File"
    assert request["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{BUCKET}/sagemaker-classifier/data/dogImages"
    assert request["OutputDataConfig"] == {"S3OutputPath": f"s3://{BUCKET}/sagemaker-classifier/training"}
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 14400}
    assert request["CheckpointConfig"] == {
        "S3Uri": f"s3://{BUCKET}/sagemaker-classifier/checkpoints/classifier-train-test",
        "LocalPath": "/opt/ml/checkpoints"}

    on_demand = train_job.training_job_request(spec(spot=False))
    validate_against_api("CreateTrainingJob", on_demand)
    assert on_demand["EnableManagedSpotTraining"] is False
    assert on_demand["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200}


def test_fast_file_input_mode_streams_the_data_channel_from_s3():
    request = train_job.training_job_request(spec(input_mode="FastFile"))
    validate_against_api("CreateTrainingJob", request)
    assert request["AlgorithmSpecification"]["TrainingInputMode"] == "FastFile"
    assert request["InputDataConfig"][0]["InputMode"] == "FastFile"
    with pytest.raises(LaunchError, match="input mode 'Pipe' is not supported"):
        train_job.training_job_request(spec(input_mode="Pipe"))


def test_metric_regexes_in_the_request_read_the_trainers_lines():
    definitions = train_job.training_job_request(spec())["AlgorithmSpecification"]["MetricDefinitions"]
    log = "\n".join([
        metrics.format_epoch_line(1, 0.75, 0.5, 0.625, 0.5625, 0.875),
        metrics.format_test_line(0.5, 0.875, 0.9375),
    ])
    read = {d["Name"]: [float(v) for v in re.findall(d["Regex"], log)] for d in definitions}
    assert read == {"train:loss": [0.75], "train:accuracy": [0.5], "validation:loss": [0.625],
                    "validation:accuracy": [0.5625], "validation:top5_accuracy": [0.875],
                    "test:loss": [0.5], "test:accuracy": [0.875], "test:top5_accuracy": [0.9375]}


def test_output_locations_follow_sagemakers_layout():
    where = {"job_name": "job-1", "output_uri": "s3://b/p/training/", "checkpoint_uri": "s3://b/p/checkpoints/job-1"}
    locations = spec(**where, sagemaker_debugger=True).locations()
    assert locations["model"] == "s3://b/p/training/job-1/output/model.tar.gz"
    assert locations["debugger_tensors"] == "s3://b/p/training/job-1/debug-output"
    assert locations["profiler_report"] == (
        "s3://b/p/training/job-1/rule-output/ProfilerReport/profiler-output/profiler-report.html")
    assert locations["checkpoints"] == "s3://b/p/checkpoints/job-1"
    # Without Debugger: the trainer's own evidence, in output.tar.gz and live beside the checkpoint.
    assert spec(**where).locations() == {
        "model": "s3://b/p/training/job-1/output/model.tar.gz",
        "output_data": "s3://b/p/training/job-1/output/output.tar.gz",
        "checkpoints": "s3://b/p/checkpoints/job-1",
        "live_evidence": "s3://b/p/checkpoints/job-1/evidence",
    }


def test_by_default_the_request_carries_no_debugger_or_profiler_settings():
    request = train_job.training_job_request(spec())
    validate_against_api("CreateTrainingJob", request)
    assert not DEBUGGER_SETTINGS & set(request)
    with_debugger = train_job.training_job_request(spec(sagemaker_debugger=True))
    assert set(with_debugger) >= DEBUGGER_SETTINGS
    with pytest.raises(LaunchError, match="need sagemaker_debugger"):
        spec(custom_rules_source="s3://b/rules.py")


def test_hyperparameters_from_the_tuner_file_with_command_line_overrides(tmp_path):
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"tuning_job": "t", "hyperparameters": {
        "learning-rate": "0.02", "batch-size": "128", "epochs": "6", "model-name": "resnet50"}}))
    merged = train_job.merged_hyperparameters(best, {"epochs": "12"})
    assert merged == {"learning-rate": "0.02", "batch-size": "128", "epochs": "12", "model-name": "resnet50"}
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"epochs": 2, "pretrained": False}))
    assert train_job.merged_hyperparameters(plain, {}) == {"epochs": "2", "pretrained": "false"}
    with pytest.raises(LaunchError, match="epochs"):
        train_job.merged_hyperparameters(None, {"epochs": "zero"})
    with pytest.raises(LaunchError, match="not found"):
        train_job.merged_hyperparameters(tmp_path / "none.json", {})


def test_rule_statuses_are_listed():
    description = {"DebugRuleEvaluationStatuses": [
        {"RuleConfigurationName": "Overfit", "RuleEvaluationStatus": "IssuesFound",
         "StatusDetails": "RuleEvaluationConditionMet: Evaluation of the rule Overfit at step 500"}],
        "ProfilerRuleEvaluationStatuses": [
        {"RuleConfigurationName": "ProfilerReport", "RuleEvaluationStatus": "NoIssuesFound"}]}
    lines = train_job.describe_rules(description)
    assert lines[0].startswith("Overfit: IssuesFound (RuleEvaluationConditionMet")
    assert lines[1] == "ProfilerReport: NoIssuesFound"


def test_start_sends_exactly_the_built_request(pushed):
    recording = RecordingSession()
    context = AwsContext(config=CONFIG, session=recording.session, account=ACCOUNT)
    job = spec(image_uri=pushed["train"])
    record = train_job.start(context, job)
    assert recording.only("CreateTrainingJob") == train_job.training_job_request(job)
    stored = recording.session.client("sagemaker").describe_training_job(TrainingJobName=job.job_name)
    assert stored["AlgorithmSpecification"]["TrainingImage"] == pushed["train"]
    assert "DebugHookConfig" not in stored and "DebugRuleConfigurations" not in stored
    assert stored["CheckpointConfig"]["LocalPath"] == "/opt/ml/checkpoints"
    assert record["locations"]["model"] == stored["ModelArtifacts"]["S3ModelArtifacts"]


def recording_cli_session(monkeypatch) -> RecordingSession:
    """The launcher's boto3 session, recording every request it sends (moto answers them)."""
    recording = RecordingSession()
    monkeypatch.setattr(settings, "open_session", lambda profile, region: recording.session)
    return recording


def test_cli_trains_with_the_tuned_hyperparameters_and_records_the_job(pushed, tmp_path, capsys, monkeypatch):
    recording = recording_cli_session(monkeypatch)
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"hyperparameters": {"learning-rate": "0.02", "batch-size": "64"}}))
    record = tmp_path / "job.json"
    train_job.main(["--hyperparameters-file", str(best), "--job-name", "classifier-train-cli",
                    "--record", str(record), "--no-spot", "--role-arn", ROLE_ARN, "--bucket", BUCKET,
                    "--", "--epochs", "4"])
    captured = capsys.readouterr()
    assert captured.out.strip() == "classifier-train-cli"
    stored = boto3.client("sagemaker").describe_training_job(TrainingJobName="classifier-train-cli")
    assert stored["HyperParameters"] == {"learning-rate": "0.02", "batch-size": "64", "epochs": "4"}
    assert stored["AlgorithmSpecification"]["TrainingImage"] == pushed["train"]
    assert stored["EnableManagedSpotTraining"] is False
    assert stored["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    recorded = json.loads(record.read_text())
    assert recorded["training_job"] == "classifier-train-cli"
    for where in recorded["locations"].values():
        assert where in captured.err  # every location is printed
    assert f"model at {stored['ModelArtifacts']['S3ModelArtifacts']}" in captured.err
    assert "make report JOB=classifier-train-cli" in captured.err
    assert not DEBUGGER_SETTINGS & set(recording.only("CreateTrainingJob"))  # works on every account


def test_make_train_sends_no_debugger_settings_unless_asked(pushed, tmp_path):
    def make_train(name: str, *train_args: str) -> dict:
        arguments = " ".join(["--no-wait", "--job-name", name, "--record", str(tmp_path / f"{name}.json"),
                              *train_args])
        result = subprocess.run(
            ["make", "--no-print-directory", "train", f"ROLE_ARN={ROLE_ARN}", f"BUCKET={BUCKET}",
             f"TRAIN_ARGS={arguments}"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return boto3.client("sagemaker").describe_training_job(TrainingJobName=name)

    plain = make_train("classifier-train-make")
    assert "DebugHookConfig" not in plain and "DebugRuleConfigurations" not in plain
    with_debugger = make_train("classifier-train-make-debugger", "--sagemaker-debugger")
    rules = {rule["RuleConfigurationName"] for rule in with_debugger["DebugRuleConfigurations"]}
    assert set(RULE_COLLECTIONS) | {"CustomOverfit"} <= rules and with_debugger["DebugHookConfig"]


def test_aws_refusing_debugger_says_in_one_line_to_drop_the_flag(pushed, tmp_path, monkeypatch):
    recording = recording_cli_session(monkeypatch)

    def refuse(params, **_):  # what AWS answers an account that may not use Debugger, at the boundary
        if "DebugHookConfig" in json.loads(params["body"]):
            message = "SageMaker Debugger is not available for this account.\nDebugHookConfig refused"
            error = {"Code": "ValidationException", "Message": message}
            return SimpleNamespace(status_code=400, headers={}), {"Error": error}
        return None

    recording.session.events.register("before-call.sagemaker.CreateTrainingJob", refuse)
    with pytest.raises(SystemExit) as exit_info:
        train_job.main(["--sagemaker-debugger", "--no-wait", "--job-name", "classifier-train-refused",
                        "--record", str(tmp_path / "job.json"), "--role-arn", ROLE_ARN, "--bucket", BUCKET])
    message = str(exit_info.value.code)
    assert "\n" not in message and "drop --sagemaker-debugger" in message
    assert "not available for this account" in message
    assert boto3.client("sagemaker").list_training_jobs()["TrainingJobSummaries"] == []


@pytest.mark.parametrize(("argv", "message"), [
    (["--bucket", BUCKET], "no SageMaker execution role"),
    (["--role-arn", ROLE_ARN], "no S3 bucket"),
    (["--role-arn", ROLE_ARN, "--bucket", BUCKET, "--", "--batch-size", "-1"], "batch-size"),
    (["--role-arn", ROLE_ARN, "--bucket", BUCKET, "--image-tag", "v9"], "sagemaker-classifier-train:v9"),
    (["--role-arn", ROLE_ARN, "--bucket", "sagemaker-nobody"], "bucket 'sagemaker-nobody' does not exist"),
    (["--role-arn", ROLE_ARN, "--bucket", BUCKET, "--max-run-hours", "2", "--max-wait-hours", "1"],
     "spot wait limit"),
])
def test_cli_errors_come_before_any_job_is_created(pushed, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        train_job.main(argv)
    assert message in str(exit_info.value.code)
    assert boto3.client("sagemaker").list_training_jobs()["TrainingJobSummaries"] == []


def test_custom_rules_run_beside_the_built_in_ones_with_losses_saved_every_step():
    source = f"s3://{BUCKET}/debug-rules/job/debug_rules.py"
    request = train_job.training_job_request(spec(custom_rules_source=source, sagemaker_debugger=True))
    validate_against_api("CreateTrainingJob", request)
    names = [rule["RuleConfigurationName"] for rule in request["DebugRuleConfigurations"]]
    assert set(RULE_COLLECTIONS) <= set(names)
    custom = [rule for rule in request["DebugRuleConfigurations"]
              if rule["RuleConfigurationName"].startswith("Custom")]
    assert sorted(rule["RuleParameters"]["rule_to_invoke"] for rule in custom) == sorted(
        ["LossNotDecreasing", "Overfit", "VanishingGradient", "PoorWeightInitialization"])
    assert {rule["RuleParameters"]["source_s3_uri"] for rule in custom} == {source}
    collections = {c["CollectionName"]: c["CollectionParameters"]
                   for c in request["DebugHookConfig"]["CollectionConfigurations"]}
    assert collections["losses"]["save_interval"] == "1"
    without = train_job.training_job_request(spec(sagemaker_debugger=True))["DebugRuleConfigurations"]
    assert "CustomOverfit" not in str(without)


def test_cli_sagemaker_debugger_uploads_the_rules_file_and_attaches_our_rules(pushed, tmp_path):
    train_job.main(["--job-name", "classifier-train-custom", "--sagemaker-debugger", "--no-wait",
                    "--record", str(tmp_path / "job.json"), "--role-arn", ROLE_ARN, "--bucket", BUCKET])
    stored = boto3.client("sagemaker").describe_training_job(TrainingJobName="classifier-train-custom")
    sources = {rule["RuleParameters"]["source_s3_uri"] for rule in stored["DebugRuleConfigurations"]
               if rule["RuleConfigurationName"].startswith("Custom")}
    assert len(sources) == 1
    bucket, key = sources.pop().removeprefix("s3://").split("/", 1)
    uploaded = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    assert uploaded == Path(rules.__file__).read_bytes()


def test_two_instances_make_one_data_parallel_job():
    resources = jobs.JobResources(instance_type="ml.g5.12xlarge", instance_count=2,
                                  s3_data_distribution="ShardedByS3Key")
    request = train_job.training_job_request(spec(resources=resources))
    validate_against_api("CreateTrainingJob", request)
    assert request["ResourceConfig"]["InstanceCount"] == 2
    # What the SDK sets for distribution={"torch_distributed": {"enabled": True}}; the toolkit reads it.
    assert request["HyperParameters"] == {"epochs": "3", "learning-rate": "0.01",
                                          "sagemaker_torch_distributed_enabled": "true"}
    source = request["InputDataConfig"][0]["DataSource"]["S3DataSource"]
    assert source["S3DataDistributionType"] == "ShardedByS3Key"
    one = train_job.training_job_request(spec())
    one_source = one["InputDataConfig"][0]["DataSource"]["S3DataSource"]
    assert one_source["S3DataDistributionType"] == "FullyReplicated"
    # One instance: no setting; the container runs one process per GPU when it has several.
    assert "sagemaker_torch_distributed_enabled" not in one["HyperParameters"]
    with pytest.raises(LaunchError, match=r"batch-size 64 .* 3 training processes .* use 63 or 66"):
        train_job.training_job_request(
            spec(resources=jobs.JobResources(instance_count=3), hyperparameters={}))
    with pytest.raises(LaunchError, match="2 instances need data-parallel training"):
        jobs.JobResources(instance_count=2, data_parallel=False)


def test_cli_two_instances_on_moto(pushed, tmp_path):
    train_job.main(["--job-name", "classifier-train-ddp", "--no-wait", "--record", str(tmp_path / "job.json"),
                    "--instance-count", "2", "--instance-type", "ml.g5.12xlarge", "--role-arn", ROLE_ARN,
                    "--bucket", BUCKET, "--", "--batch-size", "128"])
    stored = boto3.client("sagemaker").describe_training_job(TrainingJobName="classifier-train-ddp")
    assert stored["ResourceConfig"]["InstanceCount"] == 2
    assert stored["ResourceConfig"]["InstanceType"] == "ml.g5.12xlarge"
    assert stored["HyperParameters"] == {"batch-size": "128", "sagemaker_torch_distributed_enabled": "true"}
    source = stored["InputDataConfig"][0]["DataSource"]["S3DataSource"]
    assert source["S3DataDistributionType"] == "FullyReplicated"
