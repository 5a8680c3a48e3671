"""The tuning launcher: pure range/hyperparameter builders, and the exact request on a moto server."""

import json
import re

import boto3
import pytest
from aws_helpers import ACCOUNT, BUCKET, REGION, ROLE_ARN, RecordingSession

from classifier import metrics
from classifier.hyperparameters import SEARCH_SPACE
from scripts.aws import jobs, train_job, tune
from scripts.aws.settings import AwsContext, LaunchConfig, LaunchError

CONFIG = LaunchConfig(region=REGION, role_arn=ROLE_ARN, bucket=BUCKET)


def test_search_space_becomes_sdk_ranges():
    ranges = tune.parameter_ranges(tune.tuned_space("Bayesian"))
    assert ranges["learning-rate"].as_tuning_range("learning-rate") == {
        "Name": "learning-rate", "MinValue": "0.001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}
    assert ranges["batch-size"].as_tuning_range("batch-size") == {
        "Name": "batch-size", "Values": ["32", "64", "128", "256", "512"]}
    epochs = SEARCH_SPACE["epochs"]
    assert ranges["epochs"].__name__ == "Integer"
    assert (ranges["epochs"].min_value, ranges["epochs"].max_value) == (epochs.min_value, epochs.max_value)


def test_hyperband_leaves_epochs_to_its_schedule():
    assert "epochs" not in tune.tuned_space("Hyperband")
    static = tune.static_hyperparameters("Hyperband", {"model-name": "resnet50"})
    assert static == {"model-name": "resnet50", "epochs": str(SEARCH_SPACE["epochs"].max_value)}
    assert tune.early_stopping_type("Hyperband", None) == "Off"
    with pytest.raises(LaunchError, match="Hyperband stops trials itself"):
        tune.early_stopping_type("Hyperband", "Auto")
    assert tune.early_stopping_type("Random", None) == "Auto"


def test_static_hyperparameters_are_checked_with_the_trainer_parser():
    with pytest.raises(LaunchError, match="are tuned"):
        tune.static_hyperparameters("Bayesian", {"learning-rate": "0.01"})
    with pytest.raises(LaunchError, match="unrecognized arguments: --learning_rate"):
        tune.static_hyperparameters("Bayesian", {"learning_rate": "0.01"})
    with pytest.raises(LaunchError, match="model-name"):
        tune.static_hyperparameters("Bayesian", {"model-name": "vgg16"})
    assert tune.static_hyperparameters("Random", {"pretrained": False}) == {"pretrained": "false"}


def test_best_result_merges_static_and_tuned_hyperparameters():
    description = {
        "HyperParameterTuningJobName": "classifier-tune-1",
        "HyperParameterTuningJobStatus": "Completed",
        "TrainingJobDefinition": {
            "StaticHyperParameters": {"model-name": "resnet50", "epochs": "10"},
            "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/p/tuning/"},
        },
        "BestTrainingJob": {
            "TrainingJobName": "classifier-tune-1-003-abc",
            "TunedHyperParameters": {"learning-rate": "0.0123", "batch-size": "64"},
            "FinalHyperParameterTuningJobObjectiveMetric": {
                "Type": "Minimize", "MetricName": "validation:loss", "Value": 0.42},
        },
    }
    result = tune.best_result(description)
    assert result["hyperparameters"] == {"model-name": "resnet50", "epochs": "10",
                                         "learning-rate": "0.0123", "batch-size": "64"}
    assert result["objective"] == {"metric": "validation:loss", "type": "Minimize", "value": 0.42}
    assert result["model_data"] == f"s3://{BUCKET}/p/tuning/classifier-tune-1-003-abc/output/model.tar.gz"
    # The training launcher reads it back (and checks it with the trainer's parser).
    assert jobs.check_hyperparameters(result["hyperparameters"])["batch-size"] == "64"


def test_a_tuning_job_without_a_winner_is_reported():
    with pytest.raises(LaunchError, match="no best training job"):
        tune.best_result({"HyperParameterTuningJobName": "t", "HyperParameterTuningJobStatus": "Failed",
                          "TrainingJobDefinition": {}})


def test_tuning_request_carries_image_ranges_static_hyperparameters_metrics_and_spot(pushed):
    recording = RecordingSession()
    context = AwsContext(config=CONFIG, session=recording.session, account=ACCOUNT)
    static = tune.static_hyperparameters("Bayesian", {"model-name": "resnet50", "pretrained": "true"})
    resources = jobs.JobResources(instance_type="ml.g4dn.xlarge", max_run_seconds=3600, spot=True)
    tuner = tune.build_tuner(context, pushed["train"], "Bayesian", static, resources,
                             max_jobs=6, max_parallel_jobs=3)
    tuner.tune(inputs={jobs.CHANNEL: CONFIG.data_uri()}, job_name="classifier-tune-test", wait=False)

    request = recording.only("CreateHyperParameterTuningJob")
    config = request["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Bayesian"
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Minimize", "MetricName": "validation:loss"}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 6, "MaxParallelTrainingJobs": 3}
    assert config["TrainingJobEarlyStoppingType"] == "Auto"
    ranges = config["ParameterRanges"]
    assert ranges["ContinuousParameterRanges"] == [
        {"Name": "learning-rate", "MinValue": "0.001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}]
    assert ranges["CategoricalParameterRanges"] == [
        {"Name": "batch-size", "Values": ["32", "64", "128", "256", "512"]}]
    assert ranges["IntegerParameterRanges"] == [{
        "Name": "epochs", "MinValue": str(SEARCH_SPACE["epochs"].min_value),
        "MaxValue": str(SEARCH_SPACE["epochs"].max_value), "ScalingType": "Auto"}]

    definition = request["TrainingJobDefinition"]
    assert definition["AlgorithmSpecification"]["TrainingImage"] == pushed["train"]
    assert definition["StaticHyperParameters"] == {"model-name": "resnet50", "pretrained": "true"}
    assert definition["RoleArn"] == ROLE_ARN
    assert definition["InputDataConfig"][0]["ChannelName"] == "training"
    assert definition["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == CONFIG.data_uri()
    assert definition["OutputDataConfig"]["S3OutputPath"] == CONFIG.output_uri("tuning")
    assert definition["ResourceConfig"] == {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1,
                                            "VolumeSizeInGB": jobs.DEFAULT_VOLUME_GB}
    assert definition["EnableManagedSpotTraining"] is True
    assert definition["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert "CheckpointConfig" not in definition  # trials share no checkpoint prefix

    # The regexes sent read the trainer's metric lines back; the objective is the validation loss.
    # They are the training job's too, which test_launch_train checks on a real training log.
    sent = definition["AlgorithmSpecification"]["MetricDefinitions"]
    assert sent == train_job.training_job_request(train_job.TrainingJobSpec(
        "j", "image", ROLE_ARN, REGION, "s3://b/d", "s3://b/o", "s3://b/c", debugger=False, profiler=False,
    ))["AlgorithmSpecification"]["MetricDefinitions"]
    log = "\n".join([
        "epoch noise",
        metrics.format_epoch_line(1, 2.5, 0.25, 2.125, 0.375),
        metrics.format_epoch_line(2, 1.5, 0.5, 1.0625, 0.625),
        metrics.format_test_line(1.25, 0.5),
    ])
    read = {d["Name"]: [float(v) for v in re.findall(d["Regex"], log)] for d in sent}
    assert read[config["HyperParameterTuningJobObjective"]["MetricName"]] == [2.125, 1.0625]
    assert read["train:accuracy"] == [0.25, 0.5] and read["test:loss"] == [1.25]

    # moto stored the job as sent.
    stored = recording.session.client("sagemaker").describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName="classifier-tune-test")
    assert stored["TrainingJobDefinition"]["AlgorithmSpecification"]["TrainingImage"] == pushed["train"]


def test_hyperband_request_sets_its_resource_and_turns_early_stopping_off(pushed):
    recording = RecordingSession()
    context = AwsContext(config=CONFIG, session=recording.session, account=ACCOUNT)
    static = tune.static_hyperparameters("Hyperband", {})
    tuner = tune.build_tuner(context, pushed["train"], "Hyperband", static, jobs.JobResources(spot=False),
                             max_jobs=4, max_parallel_jobs=2)
    tuner.tune(inputs={jobs.CHANNEL: CONFIG.data_uri()}, job_name="classifier-tune-hb", wait=False)
    request = recording.only("CreateHyperParameterTuningJob")
    config = request["HyperParameterTuningJobConfig"]
    epochs = SEARCH_SPACE["epochs"]
    assert config["Strategy"] == "Hyperband"
    assert config["StrategyConfig"] == {"HyperbandStrategyConfig": {
        "MinResource": epochs.min_value, "MaxResource": epochs.max_value}}
    assert config["TrainingJobEarlyStoppingType"] == "Off"
    assert config["ParameterRanges"].get("IntegerParameterRanges", []) == []
    definition = request["TrainingJobDefinition"]
    assert definition["StaticHyperParameters"] == {"epochs": str(epochs.max_value)}
    assert definition.get("EnableManagedSpotTraining", False) is False
    assert "MaxWaitTimeInSeconds" not in definition["StoppingCondition"]


def test_cli_tunes_waits_and_writes_the_result_file(pushed, tmp_path, capsys):
    result_file = tmp_path / "best.json"
    tune.main(["--strategy", "Random", "--max-jobs", "2", "--max-parallel-jobs", "1", "--job-name",
               "classifier-tune-cli", "--output", str(result_file), "--role-arn", ROLE_ARN,
               "--bucket", BUCKET, "--", "--model-name", "resnet18"])
    assert capsys.readouterr().out.strip() == "classifier-tune-cli"
    stored = boto3.client("sagemaker").describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName="classifier-tune-cli")
    assert stored["HyperParameterTuningJobConfig"]["Strategy"] == "Random"
    assert stored["TrainingJobDefinition"]["StaticHyperParameters"] == {"model-name": "resnet18"}
    result = json.loads(result_file.read_text())
    # moto answers with a placeholder best job; the file records it with the static values merged in.
    assert result["tuning_job"] == "classifier-tune-cli"
    assert result["best_training_job"] == stored["BestTrainingJob"]["TrainingJobName"]
    assert result["hyperparameters"]["model-name"] == "resnet18"


def test_cli_without_waiting_prints_the_job_then_attach_writes_the_result(pushed, tmp_path, capsys):
    result_file = tmp_path / "best.json"
    tune.main(["--no-wait", "--job-name", "classifier-tune-nw", "--output", str(result_file),
               "--role-arn", ROLE_ARN, "--bucket", BUCKET])
    assert capsys.readouterr().out.strip() == "classifier-tune-nw"
    assert not result_file.exists()
    tune.main(["--attach", "classifier-tune-nw", "--output", str(result_file)])
    assert json.loads(result_file.read_text())["tuning_job"] == "classifier-tune-nw"


@pytest.mark.parametrize(("argv", "message"), [
    (["--bucket", BUCKET], "no SageMaker execution role"),
    (["--role-arn", ROLE_ARN, "--bucket", BUCKET, "--image-tag", "nope"], "sagemaker-classifier-train:nope"),
    (["--role-arn", ROLE_ARN, "--bucket", BUCKET, "--data", f"s3://{BUCKET}/empty"], "no data under"),
    (["--role-arn", ROLE_ARN, "--bucket", BUCKET, "--", "--epochs", "3"], "are tuned"),
])
def test_cli_errors_come_before_any_job_is_created(pushed, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        tune.main(argv)
    assert message in str(exit_info.value.code)
    listed = boto3.client("sagemaker").list_hyper_parameter_tuning_jobs()
    assert listed["HyperParameterTuningJobSummaries"] == []


def test_trials_on_two_instances_carry_the_distribution_settings(pushed):
    recording = RecordingSession()
    context = AwsContext(config=CONFIG, session=recording.session, account=ACCOUNT)
    resources = jobs.JobResources(instance_type="ml.g5.12xlarge", instance_count=2, spot=False,
                                  s3_data_distribution="ShardedByS3Key")
    static = tune.static_hyperparameters("Bayesian", {})
    batch_sizes = jobs.batch_sizes(static, tune.tuned_space("Bayesian"))
    static.update(resources.distribution_hyperparameters(batch_sizes))
    tuner = tune.build_tuner(context, pushed["train"], "Bayesian", static, resources, max_jobs=2,
                             max_parallel_jobs=1)
    tuner.tune(inputs=tune.input_channels(resources, CONFIG.data_uri()), job_name="classifier-tune-ddp",
               wait=False)
    definition = recording.only("CreateHyperParameterTuningJob")["TrainingJobDefinition"]
    assert definition["ResourceConfig"]["InstanceCount"] == 2
    assert definition["StaticHyperParameters"] == {"sagemaker_torch_distributed_enabled": "true"}
    source = definition["InputDataConfig"][0]["DataSource"]["S3DataSource"]
    assert (source["S3Uri"], source["S3DataDistributionType"]) == (CONFIG.data_uri(), "ShardedByS3Key")
    # Every batch size the search may pick must divide among the instances.
    with pytest.raises(LaunchError, match=r"batch-size 32 .* 3 training processes"):
        jobs.JobResources(instance_count=3).distribution_hyperparameters(batch_sizes)
